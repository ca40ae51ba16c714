//! The `cairn-server` binary: `serve` with no set-up, and the operator subcommands.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::device::SimDevice;
use common::{cli, Releases};

const BIN: &str = env!("CARGO_BIN_EXE_cairn-server");

/// Runs a subcommand that must succeed and prints JSON.
fn json(dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = cli(dir, args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{args:?}: {e}: {}", String::from_utf8_lossy(&out.stdout)))
}

#[test]
fn serve_works_with_nothing_but_a_database_url_and_a_blob_dir() {
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(BIN)
        .current_dir(dir.path())
        .args([
            "serve",
            "--db",
            "sqlite://cairn.db",
            "--blobs",
            "./blobs",
            "--log-format",
            "json",
            "--listen",
        ])
        .arg(format!("127.0.0.1:{port}"))
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let answered = loop {
        if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) {
            use std::io::{Read, Write};
            s.write_all(b"GET /admin/v1/devices HTTP/1.0\r\n\r\n")
                .unwrap();
            let mut text = String::new();
            s.read_to_string(&mut text).unwrap();
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "server did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    child.kill().unwrap();
    let logs = child.wait_with_output().unwrap().stderr;
    // --log-format json: every line one JSON object, for a log collector.
    let logs = String::from_utf8(logs).unwrap();
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["message"].as_str().is_some()),
        "{logs}"
    );
    assert!(answered.starts_with("HTTP/1.0 401"), "{answered}");
    assert!(answered.contains("no-admin-token"), "{answered}");
    assert!(dir.path().join("cairn.db").exists());
    assert!(dir.path().join("blobs").is_dir());
    // The admin token was created on first start and can be read back.
    let token = String::from_utf8(cli(dir.path(), &["admin-token"]).stdout).unwrap();
    assert_eq!(token.trim().len(), 64, "{token}");
}

#[test]
fn operator_subcommands_add_releases_import_devices_and_run_a_campaign() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let releases = Releases::build();
    let root = releases.root_path.to_str().unwrap();

    let v1 = json(
        d,
        &[
            "release",
            "add",
            releases.v1.to_str().unwrap(),
            "--root",
            root,
        ],
    );
    assert_eq!(v1["id"], "cairn-qemu-arm64@1.0.0");
    json(
        d,
        &[
            "release",
            "add",
            releases.v2.to_str().unwrap(),
            "--root",
            root,
        ],
    );
    let list = json(d, &["release", "list"]);
    assert_eq!(list.as_array().unwrap().len(), 2);

    // A bundle that fails verification: refused, with the reason, nothing recorded.
    let mut bytes = std::fs::read(&releases.v2).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 1;
    let bad = d.join("bad.cairn");
    std::fs::write(&bad, bytes).unwrap();
    let out = cli(
        d,
        &["release", "add", bad.to_str().unwrap(), "--root", root],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bundle failed verification"));
    assert_eq!(json(d, &["release", "list"]).as_array().unwrap().len(), 2);

    let fleet: Vec<SimDevice> = (0..3)
        .map(|i| SimDevice::new("http://unused", &format!("cli-{i}"), vec![]))
        .collect();
    let csv: String = std::iter::once("device_id,public_key,compatible,tags\n".to_string())
        .chain(fleet.iter().map(|d| format!("{}\n", d.factory_line("lab"))))
        .collect();
    std::fs::write(d.join("factory.csv"), csv).unwrap();
    let out = cli(d, &["device", "import", "factory.csv"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let devices = json(d, &["device", "list"]);
    assert_eq!(devices.as_array().unwrap().len(), 3);
    assert_eq!(devices[0]["tags"], serde_json::json!(["lab"]));
    let tagged = json(d, &["device", "tag", "cli-0", "lab", "canary"]);
    assert_eq!(tagged["tags"], serde_json::json!(["canary", "lab"]));

    let created = json(
        d,
        &[
            "campaign",
            "create",
            "lab-2",
            "--release",
            "cairn-qemu-arm64@2.0.0",
            "--tag",
            "lab",
            "--waves",
            "1,100%",
            "--bake-secs",
            "60",
        ],
    );
    assert_eq!(created["state"], "draft");
    let dry = json(d, &["campaign", "dry-run", "lab-2"]);
    assert_eq!(dry["devices"], 3);
    assert_eq!(dry["waves"].as_array().unwrap().len(), 2);
    assert_eq!(json(d, &["campaign", "start", "lab-2"])["state"], "running");
    assert_eq!(json(d, &["campaign", "pause", "lab-2"])["state"], "paused");
    let out = cli(d, &["campaign", "pause", "lab-2"]);
    assert!(!out.status.success(), "pausing twice is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("it is paused"));
    assert_eq!(
        json(d, &["campaign", "resume", "lab-2"])["state"],
        "running"
    );
    let status = json(d, &["campaign", "status", "lab-2"]);
    assert_eq!(status["campaign"]["opened_waves"], 1);
    assert_eq!(json(d, &["campaign", "abort", "lab-2"])["state"], "aborted");
    assert_eq!(json(d, &["campaign", "list"]).as_array().unwrap().len(), 1);
}

/// The operator works with the subcommands on the database while `serve` runs on it:
/// the server picks the changes up and devices get their update.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_server_sees_what_the_subcommands_change() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let releases = Releases::build();
    let root = releases.root_path.to_str().unwrap();
    let db_url = format!("sqlite://{}", d.join("cairn.db").display());
    json(d, &["release", "list"]); // creates the database before the server starts
    let server =
        common::ServerProcess::start_with_blobs(&db_url, &releases.root_path, &d.join("blobs"))
            .await;

    json(
        d,
        &[
            "release",
            "add",
            releases.v2.to_str().unwrap(),
            "--root",
            root,
        ],
    );
    let mut device = SimDevice::new(&server.url, "live-1", releases.v1_images.clone());
    std::fs::write(
        d.join("factory.json"),
        format!(
            r#"[{{"device_id":"live-1","public_key":"{}","compatible":"{}"}}]"#,
            device.public_key(),
            common::COMPATIBLE
        ),
    )
    .unwrap();
    assert!(cli(d, &["device", "import", "factory.json"])
        .status
        .success());
    assert_eq!(device.enroll().await.status, 200);
    device.login().await;
    assert_eq!(device.check_in().await, None);

    json(
        d,
        &[
            "campaign",
            "create",
            "live",
            "--release",
            "cairn-qemu-arm64@2.0.0",
            "--bake-secs",
            "0",
        ],
    );
    json(d, &["campaign", "start", "live"]);
    // The server trusts its copy of the campaigns for at most a second.
    let started = std::time::Instant::now();
    let assignment = loop {
        if let Some(a) = device.check_in().await {
            break a;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the running server never saw the campaign"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let bundle = reqwest::get(&assignment.bundle_url).await.unwrap();
    assert_eq!(bundle.status().as_u16(), 200, "{}", assignment.bundle_url);
    assert_eq!(
        bundle.bytes().await.unwrap().len() as u64,
        assignment.bundle_size
    );

    json(d, &["campaign", "pause", "live"]);
    let started = std::time::Instant::now();
    while device.check_in().await.is_some() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "pause not seen"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    server.stop().await;
}

/// A backup of `d`'s database with one release and its blob, made through the CLI.
fn backed_up_server(d: &Path) -> (Releases, serde_json::Value) {
    let releases = Releases::build();
    let v1 = json(
        d,
        &[
            "release",
            "add",
            releases.v1.to_str().unwrap(),
            "--root",
            releases.root_path.to_str().unwrap(),
        ],
    );
    let out = cli(d, &["backup", "backup.db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (releases, v1)
}

fn restore_err(d: &Path, file: &str) -> String {
    let out = cli(d, &["restore", file]);
    assert!(!out.status.success(), "restoring {file} must fail");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn restore_refuses_damaged_and_foreign_files_and_leaves_the_database_alone() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_releases, v1) = backed_up_server(d);
    let before = std::fs::read(d.join("cairn.db")).unwrap();

    std::fs::write(d.join("notes.txt"), "not a database at all\n".repeat(200)).unwrap();
    let err = restore_err(d, "notes.txt");
    assert!(err.contains("is not a SQLite database"), "{err}");

    // The backup with one of its b-tree pages overwritten.
    let mut bytes = std::fs::read(d.join("backup.db")).unwrap();
    let page = u16::from_be_bytes([bytes[16], bytes[17]]) as usize;
    assert!(bytes.len() >= 3 * page);
    bytes[page..2 * page].fill(0x5a);
    std::fs::write(d.join("damaged.db"), bytes).unwrap();
    let err = restore_err(d, "damaged.db");
    assert!(err.contains("is damaged"), "{err}");

    // Some other program's SQLite database.
    let foreign = d.join("foreign.db");
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use sqlx::Connection as _;
        sqlx::any::install_default_drivers();
        let url = format!("sqlite://{}?mode=rwc", foreign.display());
        let mut conn = sqlx::AnyConnection::connect(&url).await.unwrap();
        sqlx::query("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
            .execute(&mut conn)
            .await
            .unwrap();
        conn.close().await.unwrap();
    });
    let err = restore_err(d, "foreign.db");
    assert!(err.contains("not a cairn-server one"), "{err}");

    let err = restore_err(d, "missing.db");
    assert!(err.contains("missing.db"), "{err}");
    assert_eq!(
        std::fs::read(d.join("cairn.db")).unwrap(),
        before,
        "a refused restore changes nothing"
    );
    // The good backup restores, and the release is back.
    let restored = json(d, &["restore", "backup.db"]);
    assert_eq!(restored["releases"], 1, "{restored}");
    let list = json(d, &["release", "list"]);
    assert_eq!(list[0]["id"], v1["id"]);
}

#[test]
fn serve_refuses_to_start_when_a_releases_blob_is_missing_and_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (_releases, v1) = backed_up_server(d);
    let blob = v1["blob_name"].as_str().unwrap().to_string();
    // Restored without the blob directory: the database names a bundle that is gone.
    std::fs::remove_file(d.join("blobs").join(&blob)).unwrap();
    let out = cli(d, &["serve", "--listen", "127.0.0.1:0"]);
    assert!(!out.status.success(), "serve must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("release {}: {blob}", v1["id"].as_str().unwrap())),
        "{stderr}"
    );
    assert!(stderr.contains("Restore the blob directory"), "{stderr}");
}
