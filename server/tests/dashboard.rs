//! The dashboard as a person sees it: pages rendered by headless Chromium after the
//! simulated fleet ran its campaign.

mod common;

use std::path::Path;
use std::process::Command;

/// Debian's chromium, installed when missing.
fn chromium() -> &'static str {
    let installed = Path::new("/usr/bin/chromium").exists();
    if !installed {
        let status = Command::new("apt-get")
            .args([
                "install",
                "-y",
                "-qq",
                "--no-install-recommends",
                "chromium",
            ])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .expect("running apt-get");
        assert!(status.success(), "installing chromium failed");
    }
    "/usr/bin/chromium"
}

/// The DOM after the page loaded, as `chromium --dump-dom` prints it.
fn dump_dom(url: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new(chromium())
        .args(common::webdriver::CHROMIUM_ARGS)
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("--dump-dom")
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// With `CAIRN_DASHBOARD_SHOTS=<dir>` the test also saves screenshots there, to look at.
fn screenshot(url: &str, name: &str) {
    let Ok(dir) = std::env::var("CAIRN_DASHBOARD_SHOTS") else {
        return;
    };
    let profile = tempfile::tempdir().unwrap();
    let status = Command::new(chromium())
        .args(common::webdriver::CHROMIUM_ARGS)
        .arg("--window-size=1200,900")
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!("--screenshot={dir}/{name}.png"))
        .arg(url)
        .output()
        .expect("running chromium");
    assert!(status.status.success());
}

/// Text a person reads, roughly: tags dropped, white space collapsed.
fn visible_text(dom: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    let mut in_style = false;
    for (i, c) in dom.char_indices() {
        match c {
            '<' => {
                in_tag = true;
                in_style = dom[i..].starts_with("<style")
                    || (in_style && !dom[i..].starts_with("</style"));
                text.push(' ');
            }
            '>' => in_tag = false,
            c if !in_tag && !in_style => text.push(c),
            _ => {}
        }
    }
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_shows_campaign_waves_devices_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let outcome = common::fleet::run_campaign_through_waves(&url).await;
    let base = outcome.server.url.clone();
    let token = common::ADMIN_TOKEN;
    let (rolled_back, updated) = (outcome.rolled_back.clone(), outcome.updated.clone());

    let device_page = format!("{base}/ui/devices/{rolled_back}?token={token}");
    let campaign_page = format!("{base}/ui/campaigns/rollout-2?token={token}");
    let pages = tokio::task::spawn_blocking(move || {
        let pages = (
            visible_text(&dump_dom(&format!("{base}/"))),
            visible_text(&dump_dom(&format!("{base}/?token={token}"))),
            visible_text(&dump_dom(&format!("{base}/ui/devices?token={token}"))),
            visible_text(&dump_dom(&device_page)),
            visible_text(&dump_dom(&campaign_page)),
        );
        screenshot(&format!("{base}/?token={token}"), "campaigns");
        screenshot(&format!("{base}/ui/devices?token={token}"), "devices");
        screenshot(&device_page, "device");
        screenshot(&campaign_page, "campaign");
        pages
    })
    .await
    .unwrap();
    let (anonymous, campaigns, devices, history, campaign) = pages;

    assert!(anonymous.contains("Sign in"), "{anonymous}");
    assert!(!anonymous.contains("rollout-2"), "{anonymous}");

    assert!(campaigns.contains("rollout-2"), "{campaigns}");
    assert!(
        campaigns.contains("Release cairn-qemu-arm64@2.0.0"),
        "{campaigns}"
    );
    assert!(campaigns.contains("state aborted"), "{campaigns}");
    assert!(campaigns.contains("2 of 2 waves open"), "{campaigns}");
    // Wave 2's row: open, its size, 2 succeeded, 5 failed, nothing in progress.
    let wave2 = campaigns
        .split(" 2 open ")
        .nth(1)
        .expect("a row for wave 2");
    let numbers: Vec<&str> = wave2.split(' ').take(4).collect();
    assert_eq!(&numbers[1..], ["2", "5", "0"], "{campaigns}");

    assert!(devices.contains("dev-0000"), "{devices}");
    assert!(
        devices.contains(&format!(
            "{updated} approved cairn-qemu-arm64 eu, shop 2.0.0 A / A"
        )),
        "{devices}"
    );
    assert!(
        devices.contains(&format!(
            "{updated} approved cairn-qemu-arm64 eu, shop 2.0.0 A / A succeeded"
        )),
        "{devices}"
    );
    assert!(
        devices.contains(&format!(
            "{rolled_back} approved cairn-qemu-arm64 eu, shop 1.0.0 A / A failed"
        )),
        "{devices}"
    );
    assert!(
        devices.contains("dev-0019 approved cairn-qemu-arm64 us 1.0.0 A / A idle"),
        "{devices}"
    );

    assert!(
        history.contains(&format!("Device {rolled_back}")),
        "{history}"
    );
    assert!(
        history.contains("rolled back: health check failed: k3s not ready"),
        "{history}"
    );
    assert!(
        history.contains("assigned campaign rollout-2: release 2.0.0 (rootfs delta, kernel full"),
        "{history}"
    );
    assert!(campaign.contains("Campaign rollout-2"), "{campaign}");
    assert!(
        campaign.contains(&format!(
            "{rolled_back} 2 failed rolled back: health check failed: k3s not ready"
        )),
        "{campaign}"
    );
    assert!(
        campaign.contains("cancelled campaign aborted"),
        "{campaign}"
    );
    fleet_overview_matches_the_registry(&outcome).await;
    outcome.server.stop().await;
}

/// `/ui/fleet` against what the admin API says: today's bar counts each version's
/// approved devices, the release's success rate is its campaign's, and a device whose
/// last check-in is two days old is counted as not seen.
async fn fleet_overview_matches_the_registry(outcome: &common::fleet::Outcome) {
    let server = &outcome.server;
    let admin = server.admin();
    let (_, listed) = admin.get("/admin/v1/devices?approval=approved").await;
    let mut expected = std::collections::BTreeMap::<String, u64>::new();
    for d in listed.as_array().unwrap() {
        *expected
            .entry(d["version"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    sqlx::query("UPDATE devices SET last_checkin = 0 WHERE id = 'dev-0019'")
        .execute(&server.state.db.pool)
        .await
        .unwrap();
    let page = server.page("/ui/fleet").await;
    let today = page.rsplit("<text").nth(1).expect("bars");
    for (version, n) in &expected {
        let bar = format!("data-version=\"{version}\" data-devices=\"{n}\"");
        assert!(page.contains(&bar), "{bar} in today's bar: {today}");
    }
    assert_eq!(page.matches("<text").count(), 14, "two weeks of days");
    let status = admin.campaign("rollout-2").await;
    let (mut ok, mut failed) = (0, 0);
    for w in status["waves"].as_array().unwrap() {
        ok += w["succeeded"].as_u64().unwrap();
        failed += w["failed"].as_u64().unwrap();
    }
    let rate = format!(
        "<td class=\"rate\">{:.0}%</td>",
        ok as f64 * 100.0 / (ok + failed) as f64
    );
    assert!(page.contains(&rate), "{rate}: {page}");
    assert!(
        page.contains(">1 approved devices</a> not seen for a day"),
        "{page}"
    );
}
