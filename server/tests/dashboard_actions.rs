//! Acting from the dashboard in a real headless Chromium (WebDriver): an operator signs
//! in, approves a pending device, uploads a release (a damaged file is refused), creates a
//! campaign from the form, reads its dry run, starts it and watches it complete; a viewer sees no forms and is refused when posting
//! anyway; a form posted without its CSRF token is refused and changes nothing; every
//! action is in the audit log under the user's name.

mod common;

use cairn_server::users::{self, Role};
use common::device::SimDevice;
use common::webdriver::Browser;
use common::{Releases, TestServer, COMPATIBLE};
use serde_json::Value;

const OLGA: (&str, &str) = ("olga", "correct horse battery");
const VIC: (&str, &str) = ("vic", "viewer staple 12345");

/// Posts a form from inside the page (same origin, the browser's cookie), with the
/// fields given; returns the status and the page text.
async fn post_from_page(browser: &Browser, path: &str, fields: &str) -> (u64, String) {
    let script = format!(
        "const done = arguments[arguments.length - 1];\
         fetch('{path}', {{method: 'POST', body: new URLSearchParams({fields}), redirect: 'manual'}})\
         .then(r => r.text().then(t => done([r.status, t])))"
    );
    let answer: Value = browser.run_async(&script).await;
    (
        answer[0].as_u64().unwrap(),
        answer[1].as_str().unwrap().to_string(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_a_campaign_from_the_browser_and_a_viewer_cannot_act() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let releases = Releases::build();
    let server = TestServer::start(&url, Some(&releases.root)).await;
    let admin = server.admin();
    assert_eq!(admin.upload(&releases.v1).await.0, 200);
    let db = &server.state.db;
    users::add(db, OLGA.0, OLGA.1, Role::Operator, "test")
        .await
        .unwrap();
    users::add(db, VIC.0, VIC.1, Role::Viewer, "test")
        .await
        .unwrap();
    // Two devices from the factory manifest, one that enrolled on its own (pending).
    let mut fleet: Vec<SimDevice> = ["shop-1", "shop-2", "walk-in"]
        .iter()
        .map(|id| SimDevice::new(&server.url, id, releases.v1_images.clone()))
        .collect();
    let csv = format!(
        "device_id,public_key,compatible,tags\n{}\n{}\n",
        fleet[0].factory_line("shop"),
        fleet[1].factory_line("shop")
    );
    admin.ok("/admin/v1/devices/import", csv).await;
    for d in fleet.iter_mut() {
        d.enroll().await;
    }
    assert_eq!(fleet[2].enroll().await.body["status"], "pending");

    let browser = Browser::start().await;
    let base = &server.url;

    // A wrong password is refused; the right one signs in.
    browser.sign_in(base, OLGA.0, "not the password").await;
    browser.wait_for("Wrong name or password").await;
    browser.sign_in(base, OLGA.0, OLGA.1).await;
    browser.wait_for("user:olga</b> (operator)").await;

    // Approve the device that enrolled on its own.
    browser.open(&format!("{base}/ui/devices/walk-in")).await;
    browser.click("#approve").await;
    browser.wait_for("by user:olga").await;
    browser.type_into("#tags", "shop, cluster=line-3").await;
    browser.click("#set-tags").await;
    browser
        .wait_for("tags set to shop, cluster=line-3 (by user:olga)")
        .await;
    assert!(
        !browser.has("#approve").await,
        "approved: no approve button any more"
    );
    for d in fleet.iter_mut() {
        d.login().await;
    }

    // v2 uploaded from the releases page; a damaged file first, refused and not kept.
    let damaged = dir.path().join("damaged.cairn");
    let mut bytes = std::fs::read(&releases.v2).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&damaged, bytes).unwrap();
    browser.open(&format!("{base}/ui/releases")).await;
    browser.choose_file("#bundle", &damaged).await;
    browser.click("#upload-button").await;
    browser.wait_for("bundle failed verification").await;
    assert_eq!(
        admin
            .get("/admin/v1/releases")
            .await
            .1
            .as_array()
            .unwrap()
            .len(),
        1
    );
    browser.open(&format!("{base}/ui/releases")).await;
    browser.choose_file("#bundle", &releases.v2).await;
    browser.click("#upload-button").await;
    browser.wait_for(&format!(">{COMPATIBLE}@2.0.0</td>")).await;

    // A campaign from the form: a draft whose page shows the dry run, then started.
    browser.open(&format!("{base}/ui/campaigns/new")).await;
    browser.type_into("#id", "from-the-browser").await;
    browser
        .run_async(&format!(
            "document.getElementById('release').value = '{COMPATIBLE}@2.0.0'; arguments[0](null)"
        ))
        .await;
    browser.type_into("#tags", "").await;
    browser.type_into("#waves", "100%").await;
    browser.type_into("#min_success", "1").await;
    browser.type_into("#bake_secs", "0").await;
    browser.type_into("#failure_threshold", "0.5").await;
    browser.click("#create").await;
    let page = browser.wait_for("Dry run").await;
    assert!(browser
        .url()
        .await
        .ends_with("/ui/campaigns/from-the-browser"));
    assert!(page.contains("3 devices"), "{page}");
    assert!(page.contains("draft"), "{page}");
    browser.click("#start").await;
    browser.wait_for("<b class=\"state\">running</b>").await;

    // The fleet updates; the operator watches the campaign complete.
    for d in fleet.iter_mut() {
        let assignment = d.check_in().await.expect("assigned");
        d.install(&assignment, true).await;
    }
    admin
        .ok("/admin/v1/campaigns/from-the-browser/evaluate", "")
        .await;
    browser
        .open(&format!("{base}/ui/campaigns/from-the-browser"))
        .await;
    browser.wait_for("<b class=\"state\">completed</b>").await;
    assert!(!browser.has("#start").await && !browser.has("#pause").await);

    // A form posted without its CSRF token does nothing, whoever sends it.
    let (status, text) = post_from_page(&browser, "/ui/devices/shop-1/revoke", "{}").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("CSRF token is missing"), "{text}");
    let (status, text) =
        post_from_page(&browser, "/ui/devices/shop-1/revoke", "{csrf: 'deadbeef'}").await;
    assert_eq!(status, 403, "{text}");
    let (_, shop1) = admin.get("/admin/v1/devices/shop-1").await;
    assert_eq!(shop1["device"]["approval"], "approved");

    // A viewer reads, sees no forms, and is refused when posting anyway.
    browser.sign_in(base, VIC.0, VIC.1).await;
    browser.wait_for("user:vic</b> (viewer)").await;
    browser.open(&format!("{base}/ui/devices/shop-1")).await;
    assert!(!browser.has("#revoke").await, "no forms for a viewer");
    let (status, text) = post_from_page(&browser, "/ui/devices/shop-1/revoke", "{}").await;
    assert_eq!(status, 403, "{text}");
    assert!(text.contains("needs the role operator"), "{text}");
    browser.open(&format!("{base}/ui/campaigns/new")).await;
    browser.wait_for("needs the role operator").await;

    // Everything the operator did, under her name.
    browser.open(&format!("{base}/ui/audit")).await;
    let page = browser.wait_for("campaign-start").await;
    for action in [
        "approve",
        "release-add",
        "campaign-create",
        "campaign-start",
    ] {
        assert!(
            page.contains(action),
            "{action} missing from the audit log: {page}"
        );
    }
    let (_, log) = admin.get("/admin/v1/audit").await;
    let olga = log
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["actor"] == "user:olga")
        .count();
    assert_eq!(olga, 5, "{log:#}");
    drop(browser);
    server.stop().await;
}

/// `cairn-server user add NAME --role R`, the password on stdin.
fn add_user_cli(
    dir: &std::path::Path,
    name: &str,
    role: &str,
    password: &str,
) -> std::process::Output {
    use std::io::Write as _;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-server"))
        .current_dir(dir)
        .args(["--db", "sqlite://cairn.db", "--blobs", "./blobs"])
        .args(["user", "add", name, "--role", role])
        .env("RUST_LOG", "warn")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{password}").unwrap();
    child.wait_with_output().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_admin_comes_from_the_cli_and_bad_accounts_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let made = add_user_cli(dir.path(), "root", "admin", "a long enough secret");
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let user: Value = serde_json::from_slice(&made.stdout).unwrap();
    assert_eq!(user["role"], "admin");
    assert!(!String::from_utf8_lossy(&made.stdout).contains("secret"));
    for (name, role, password, why) in [
        ("root", "admin", "a long enough secret", "already exists"),
        ("short", "viewer", "too short", "at least 12 characters"),
        (
            "bad name!",
            "viewer",
            "a long enough secret",
            "user name 'bad name!'",
        ),
        (
            "who",
            "superuser",
            "a long enough secret",
            "is not viewer, operator or admin",
        ),
    ] {
        let out = add_user_cli(dir.path(), name, role, password);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && stderr.contains(why),
            "{name}: {stderr}"
        );
    }
    let db = cairn_server::db::Db::connect(&format!(
        "sqlite://{}",
        dir.path().join("cairn.db").display()
    ))
    .await
    .unwrap();
    assert!(users::verify(&db, "root", "a long enough secret")
        .await
        .unwrap()
        .is_some());
    assert!(users::verify(&db, "root", "a long enough secreT")
        .await
        .unwrap()
        .is_none());
    assert!(users::verify(&db, "nobody", "a long enough secret")
        .await
        .unwrap()
        .is_none());
    let out = common::cli(dir.path(), &["user", "disable", "root"]);
    assert!(out.status.success());
    assert!(
        users::verify(&db, "root", "a long enough secret")
            .await
            .unwrap()
            .is_none(),
        "a disabled account cannot sign in"
    );
    let stored: String = sqlx::query_scalar("SELECT password_hash FROM users WHERE name = 'root'")
        .fetch_one(&db.pool)
        .await
        .unwrap();
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    let log = cairn_server::audit::list(&db, 10).await.unwrap();
    let actions: Vec<(&str, &str)> = log
        .iter()
        .map(|e| (e.action.as_str(), e.subject.as_str()))
        .collect();
    assert_eq!(
        actions,
        [("user-change", "user:root"), ("user-add", "user:root")]
    );
}
