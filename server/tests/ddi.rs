//! hawkBit DDI against the real client: Debian's SWUpdate 2022.12 (suricatta with its
//! hawkBit server module) polls this server over loopback, installs the `.swu` a
//! campaign hands it into a file, and reports; a failing install counts against the
//! campaign's gate; an aborted campaign is cancelled on the client mid-download.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_bundle::writer::ImageInput;
use cairn_bundle::ImageKind;
use cairn_testkit::{bundle_spec, new_key, root_for, sign_bundle};
use common::TestServer;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

const BOARD: &str = "swupdate-board";

/// A server that trusts a fresh key, with the signing key and a scratch directory.
struct Setup {
    dir: tempfile::TempDir,
    key: cairn_bundle::SigningKey,
    server: TestServer,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let key = new_key();
    let root = cairn_bundle::TrustRoot::anchor(root_for(&key, 30)).unwrap();
    // One-second polls: the client's sleep comes from the server.
    let server = TestServer::start_with(&url, Some(&root), |c| c.poll_interval_secs = 1).await;
    Setup { dir, key, server }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A signed `.swu` (cpio `crc`: sw-description, its CMS signature, the payload) that
/// writes `payload` to `target`; with `wrong_hash` its sw-description names other bytes.
fn swu(dir: &Path, payload: &[u8], target: &Path, wrong_hash: bool) -> PathBuf {
    let work = dir.join("swu");
    std::fs::create_dir_all(&work).unwrap();
    if !work.join("cert.pem").exists() {
        run(Command::new("openssl")
            .current_dir(&work)
            .args(["req", "-x509", "-newkey", "rsa:2048", "-nodes"])
            .args(["-keyout", "key.pem", "-out", "cert.pem", "-days", "2"])
            .args(["-subj", "/CN=cairn-ddi-test"])
            .args(["-addext", "extendedKeyUsage=emailProtection"]));
    }
    std::fs::write(work.join("payload.bin"), payload).unwrap();
    let mut sha256 = hex::encode(Sha256::digest(payload));
    if wrong_hash {
        sha256 = hex::encode(Sha256::digest(b"other bytes"));
    }
    std::fs::write(
        work.join("sw-description"),
        format!(
            "software = {{\n  version = \"1.1.0\";\n  hardware-compatibility = [ \"1.0\" ];\n  \
             files: ( {{\n    filename = \"payload.bin\";\n    path = \"{}\";\n    \
             sha256 = \"{sha256}\";\n    properties = {{ create-destination = \"true\"; }};\n  }} );\n}};\n",
            target.display()
        ),
    )
    .unwrap();
    run(Command::new("openssl")
        .current_dir(&work)
        .args([
            "cms",
            "-sign",
            "-in",
            "sw-description",
            "-out",
            "sw-description.sig",
        ])
        .args([
            "-signer", "cert.pem", "-inkey", "key.pem", "-outform", "DER",
        ])
        .args(["-nosmimecap", "-binary"]));
    let out = dir.join("update.swu");
    let archive = Command::new("sh")
        .current_dir(&work)
        .arg("-c")
        .arg(format!(
            "printf 'sw-description\\nsw-description.sig\\npayload.bin\\n' | cpio -o -H crc > {}",
            out.display()
        ))
        .output()
        .unwrap();
    assert!(
        archive.status.success(),
        "cpio: {}",
        String::from_utf8_lossy(&archive.stderr)
    );
    out
}

/// Release 1.1.0 of [`BOARD`] carrying `swu` as its artifact `update.swu`, added, and a
/// one-wave campaign `c` of it for every device of the board, stopped by one failure.
async fn release_and_campaign(s: &Setup, swu: &Path) {
    let spec = cairn_bundle::writer::BundleSpec {
        images: vec![ImageInput {
            name: "update.swu".into(),
            path: swu.to_path_buf(),
            verity: None,
            kind: ImageKind::Artifact,
            pcr11: None,
            pcr4: None,
            pcr7: None,
        }],
        ..bundle_spec(BOARD, "1.1.0")
    };
    let bundle = s.dir.path().join("release.cairn");
    sign_bundle(&spec, &[&s.key], &bundle);
    let admin = s.server.admin();
    let (status, added) = admin.upload(&bundle).await;
    assert_eq!(status, 200, "{added}");
    let policy = json!({
        "selector": { "compatible": BOARD },
        "waves": [{ "percent": 100.0 }],
        "min_success_ratio": 1.0, "bake_secs": 0, "failure_threshold": 0.0,
    });
    let body = json!({ "id": "c", "release_id": format!("{BOARD}@1.1.0"), "policy": policy });
    admin.ok("/admin/v1/campaigns", body.to_string()).await;
    admin.ok("/admin/v1/campaigns/c/start", "").await;
}

/// Registers `id` as a DDI target; returns its token.
async fn target(s: &Setup, id: &str) -> String {
    let answer = s
        .server
        .admin()
        .ok(
            "/admin/v1/ddi/targets",
            json!({ "id": id, "compatible": BOARD, "tags": ["line=3"] }).to_string(),
        )
        .await;
    assert_eq!(answer["device_id"], id);
    answer["token"].as_str().unwrap().to_string()
}

/// `swupdate` with suricatta polling the server as `id`; killed on drop. Its own TMPDIR
/// keeps its sockets apart from any other instance's.
struct Client {
    child: Child,
    log: PathBuf,
}

impl Client {
    fn start(s: &Setup, id: &str, token: &str, extra: &str, name: &str) -> Client {
        let tmp = s.dir.path().join(format!("tmp-{name}"));
        std::fs::create_dir_all(&tmp).unwrap();
        let log = s.dir.path().join(format!("{name}.log"));
        // What the client tells the server about itself (configData).
        let config = s.dir.path().join(format!("{name}.cfg"));
        std::fs::write(
            &config,
            "globals: { };\nidentify: ( { name = \"board\"; value = \"press\"; }, \
             { name = \"serial\"; value = \"0001\"; } );\n",
        )
        .unwrap();
        let child = Command::new("swupdate")
            .env("TMPDIR", &tmp)
            .arg("-f")
            .arg(&config)
            .args(["-v", "-B", "none", "-H", "test:1.0", "-k"])
            .arg(s.dir.path().join("swu/cert.pem"))
            .arg("-u")
            .arg(format!(
                "-t DEFAULT -u {} -i {id} -k {token}{extra}",
                s.server.url
            ))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(Stdio::from(
                std::fs::File::options().append(true).open(&log).unwrap(),
            ))
            .spawn()
            .expect("running swupdate (Debian's swupdate package; `cargo xtask setup`)");
        Client { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The state of the device's deployment (each test gives a device one).
async fn deployment_state(s: &Setup, id: &str) -> String {
    cairn_server::deployments::device_view(&s.server.state.db, id)
        .await
        .unwrap()
        .and_then(|(_, deployments)| deployments.first().map(|d| d.state.as_str().to_string()))
        .unwrap_or_else(|| "none".into())
}

async fn wait_for_state(s: &Setup, id: &str, wanted: &[&str], client: &Client) -> String {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let state = deployment_state(s, id).await;
        if wanted.contains(&state.as_str()) {
            return state;
        }
        assert!(
            Instant::now() < deadline,
            "{id} still {state}, wanted {wanted:?}\n--- swupdate ---\n{}",
            client.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swupdate_installs_a_campaigns_swu_and_is_counted_once_it_confirms() {
    let s = setup().await;
    let target_file = s.dir.path().join("target/slot.img");
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let swu = swu(s.dir.path(), &payload, &target_file, false);
    let token = target(&s, "press-1").await;
    release_and_campaign(&s, &swu).await;

    let client = Client::start(&s, "press-1", &token, "", "install");
    wait_for_state(&s, "press-1", &["installing"], &client).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::fs::read(&target_file).ok().as_deref() != Some(&payload[..]) {
        assert!(
            Instant::now() < deadline,
            "target not written\n{}",
            client.log()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // Installed, not yet counted: SWUpdate confirms after the restart into the update.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(deployment_state(&s, "press-1").await, "installing");
    drop(client);

    let confirm = Client::start(&s, "press-1", &token, " -c 2", "confirm");
    wait_for_state(&s, "press-1", &["succeeded"], &confirm).await;
    // The tests' server evaluates gates on demand, not on a timer.
    let campaign = s
        .server
        .admin()
        .ok("/admin/v1/campaigns/c/evaluate", "")
        .await;
    assert_eq!(campaign["campaign"]["state"], "completed", "{campaign}");
    assert_eq!(campaign["waves"][0]["succeeded"], 1, "{campaign}");
    let (_, device) = s.server.admin().get("/admin/v1/devices/press-1").await;
    assert_eq!(device["device"]["version"], "1.1.0", "{device}");
    assert!(
        device["device"]["last_checkin"].as_i64().is_some(),
        "{device}"
    );
    let events: Vec<&str> = device["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["event"].as_str())
        .collect();
    let history = device["history"].to_string();
    assert!(
        history.contains("board=press, serial=0001"),
        "configData: {history}"
    );
    for wanted in [
        "ddi-registered",
        "config-data",
        "assigned",
        "downloading",
        "installing",
        "committed",
        "version",
    ] {
        assert!(events.contains(&wanted), "{wanted} missing from {events:?}");
    }
    // Nothing offered once it is done: the next polls find no action.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(std::fs::read(&target_file).unwrap(), payload);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_install_is_reported_with_its_reason_and_stops_the_campaign() {
    let s = setup().await;
    let target_file = s.dir.path().join("target/slot.img");
    let swu = swu(
        s.dir.path(),
        b"payload whose hash the description gets wrong",
        &target_file,
        true,
    );
    let token = target(&s, "press-2").await;
    release_and_campaign(&s, &swu).await;

    let client = Client::start(&s, "press-2", &token, "", "failing");
    wait_for_state(&s, "press-2", &["failed"], &client).await;
    let campaign = s.server.admin().campaign("c").await;
    assert_eq!(campaign["campaign"]["state"], "paused", "{campaign}");
    assert_eq!(campaign["waves"][0]["failed"], 1, "{campaign}");
    let (_, device) = s.server.admin().get("/admin/v1/devices/press-2").await;
    let history = device["history"].to_string();
    // SWUpdate's own words for it, as the reason (with the hash mismatch before them when
    // its log thread got the error out in time).
    assert!(
        history.contains("No suitable .swu image found"),
        "{history}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_campaign_is_cancelled_on_the_client_mid_download() {
    let s = setup().await;
    let target_file = s.dir.path().join("target/slot.img");
    // 4 MiB at the client's 64 KiB/s: a minute, far longer than the cancel takes.
    let payload: Vec<u8> = (0..4u32 << 20).map(|i| (i % 253) as u8).collect();
    let swu = swu(s.dir.path(), &payload, &target_file, false);
    let token = target(&s, "press-3").await;
    release_and_campaign(&s, &swu).await;

    let client = Client::start(&s, "press-3", &token, " -n 64k", "cancel");
    wait_for_state(&s, "press-3", &["downloading"], &client).await;
    s.server.admin().ok("/admin/v1/campaigns/c/abort", "").await;
    // SWUpdate stops the transfer and acknowledges 4 to 25 s later here.
    wait_for_state(&s, "press-3", &["cancelled"], &client).await;
    let (_, device) = s.server.admin().get("/admin/v1/devices/press-3").await;
    let history = device["history"].to_string();
    assert!(history.contains("cancelled on the device"), "{history}");
    assert!(!target_file.exists(), "the cancelled update was installed");
    // Acknowledged: the cancel is not offered again, and nothing else is.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(deployment_state(&s, "press-3").await, "cancelled");
}

#[tokio::test]
async fn a_wrong_token_or_tenant_is_refused_and_a_token_names_one_device() {
    let s = setup().await;
    let token = target(&s, "press-4").await;
    target(&s, "press-5").await;
    let http = reqwest::Client::new();
    let poll = |tenant: &str, id: &str, auth: Option<String>| {
        let mut r = http.get(format!("{}/{tenant}/controller/v1/{id}", s.server.url));
        if let Some(auth) = auth {
            r = r.header("Authorization", auth);
        }
        r.send()
    };
    let status = |r: reqwest::Response| r.status().as_u16();
    assert_eq!(status(poll("DEFAULT", "press-4", None).await.unwrap()), 401);
    let good = Some(format!("TargetToken {token}"));
    assert_eq!(
        status(poll("DEFAULT", "press-5", good.clone()).await.unwrap()),
        401
    );
    assert_eq!(
        status(poll("OTHER", "press-4", good.clone()).await.unwrap()),
        404
    );
    let bad = Some("TargetToken 0000".to_string());
    assert_eq!(status(poll("DEFAULT", "press-4", bad).await.unwrap()), 401);
    let answer = poll("default", "press-4", good).await.unwrap();
    assert_eq!(answer.status(), 200);
    let body: Value = answer.json().await.unwrap();
    assert_eq!(body["config"]["polling"]["sleep"], "00:00:01", "{body}");
    assert!(body["_links"]["deploymentBase"].is_null(), "{body}");
    // A device id that exists already cannot be registered again.
    let (status, _) = s
        .server
        .admin()
        .post(
            "/admin/v1/ddi/targets",
            json!({ "id": "press-4", "compatible": BOARD }).to_string(),
        )
        .await;
    assert_eq!(status, 409);
}

#[test]
fn the_cli_registers_a_target_and_never_shows_its_token_again() {
    let dir = tempfile::tempdir().unwrap();
    let add = |id: &str, version: &str| {
        common::cli(
            dir.path(),
            &[
                "device",
                "add-ddi",
                id,
                "--compatible",
                BOARD,
                "--tag",
                "line=3",
                "--version",
                version,
            ],
        )
    };
    let out = add("press-9", "1.0.0");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let registered: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(registered["device_id"], "press-9");
    let token = registered["token"].as_str().unwrap();
    assert_eq!(token.len(), 64, "{registered}");

    let again = add("press-9", "1.0.0");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already in the registry"));
    let bad = add("press-10", "one");
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("not semver"));

    let shown = common::cli(dir.path(), &["device", "show", "press-9"]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(
        shown.contains("\"1.0.0\"") && shown.contains("line=3"),
        "{shown}"
    );
    assert!(!shown.contains(token), "the token is shown again: {shown}");
}
