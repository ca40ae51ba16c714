//! The simulated-fleet scenario, run on SQLite and on PostgreSQL: a campaign goes through
//! its waves, trips its failure threshold and pauses, resumes, and is aborted.

use std::collections::BTreeSet;

use cairn_server_api::ReportedState;
use serde_json::json;

use super::device::SimDevice;
use super::{Releases, TestServer, COMPATIBLE};

pub const CAMPAIGN: &str = "rollout-2";
pub const FLEET: usize = 20;

pub struct Outcome {
    pub server: TestServer,
    pub releases: Releases,
    /// A device whose update rolled back.
    pub rolled_back: String,
    /// A device that runs 2.0.0 now.
    pub updated: String,
}

fn ids(devices: &[serde_json::Value]) -> BTreeSet<String> {
    devices
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_string())
        .collect()
}

pub async fn run_campaign_through_waves(db_url: &str) -> Outcome {
    let releases = Releases::build();
    let server = TestServer::start(db_url, Some(&releases.root)).await;
    let admin = server.admin();

    let (status, v1) = admin.upload(&releases.v1).await;
    assert_eq!(status, 200, "{v1}");
    let (status, v2) = admin.upload(&releases.v2).await;
    assert_eq!(status, 200, "{v2}");
    let v2_rootfs = &v2["images"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "rootfs")
        .unwrap();
    assert_eq!(
        v2_rootfs["delta_sources"],
        json!([releases.v1_images[0].sha256])
    );

    // Eighteen devices in the EU (targeted), two in the US (not).
    let mut fleet: Vec<SimDevice> = (0..FLEET)
        .map(|i| {
            SimDevice::new(
                &server.url,
                &format!("dev-{i:04}"),
                releases.v1_images.clone(),
            )
        })
        .collect();
    let mut csv = String::from("device_id,public_key,compatible,tags\n");
    for (i, d) in fleet.iter().enumerate() {
        csv.push_str(&d.factory_line(if i < 18 { "eu;shop" } else { "us" }));
        csv.push('\n');
    }
    assert_eq!(
        admin.ok("/admin/v1/devices/import", csv).await["imported"],
        20
    );
    for d in fleet.iter_mut() {
        let answer = d.enroll().await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        assert_eq!(answer.body["status"], "approved");
        d.login().await;
        assert_eq!(d.check_in().await, None, "no campaign yet");
    }

    let policy = json!({
        "selector": { "compatible": COMPATIBLE, "tags": ["eu"] },
        "waves": [{ "count": 4 }, { "percent": 100.0 }],
        "min_success_ratio": 0.75,
        "bake_secs": 0,
        "failure_threshold": 0.25,
    });
    let body =
        json!({ "id": CAMPAIGN, "release_id": format!("{COMPATIBLE}@2.0.0"), "policy": policy });
    admin.ok("/admin/v1/campaigns", body.to_string()).await;

    // Dry run: who is in which wave and what each would download.
    let (status, dry) = admin
        .get(&format!("/admin/v1/campaigns/{CAMPAIGN}/dry-run"))
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["devices"], 18);
    let wave0 = ids(dry["waves"][0]["devices"].as_array().unwrap());
    let wave1 = ids(dry["waves"][1]["devices"].as_array().unwrap());
    assert_eq!(wave0.len() + wave1.len(), 18);
    assert!(
        wave1.len() >= 7,
        "wave sizes {} / {}",
        wave0.len(),
        wave1.len()
    );
    let mut bytes = 0;
    for d in dry["waves"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|w| w["devices"].as_array().unwrap())
    {
        assert_eq!(
            d["summary"], "rootfs: delta from 1.0.0, kernel: full",
            "{d}"
        );
        bytes += d["plan"]["total_bytes"].as_u64().unwrap();
    }
    assert_eq!(dry["total_bytes"].as_u64().unwrap(), bytes);
    assert!(bytes > 0);

    admin
        .ok(&format!("/admin/v1/campaigns/{CAMPAIGN}/start"), "")
        .await;

    // Only wave 0 gets the update, exactly the devices the dry run named.
    let mut assigned = BTreeSet::new();
    let mut assignments = std::collections::HashMap::new();
    for d in &fleet {
        if let Some(a) = d.check_in().await {
            assert_eq!(a.release_version, "2.0.0");
            assigned.insert(d.id.clone());
            assignments.insert(d.id.clone(), a);
        }
    }
    assert_eq!(assigned, wave0);

    // The bundle is served with Range support: the device reads the header first.
    let first = assignments.values().next().cloned();
    if let Some(a) = &first {
        let r = reqwest::Client::new()
            .get(&a.bundle_url)
            .header("range", "bytes=0-63")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 206);
        let head = r.bytes().await.unwrap();
        assert_eq!(head.len(), 64);
        assert_eq!(&head[..8], b"CAIRNBDL");
    }

    // "Installed" is not success: the gate stays shut until devices commit after reboot.
    for d in fleet.iter().filter(|d| wave0.contains(&d.id)) {
        let a = &assignments[&d.id];
        d.report(&a.deployment_id, "r1", ReportedState::Downloading, None)
            .await;
        d.report(&a.deployment_id, "r2", ReportedState::Installing, None)
            .await;
        d.report(&a.deployment_id, "r3", ReportedState::Rebooting, None)
            .await;
    }
    admin
        .ok(&format!("/admin/v1/campaigns/{CAMPAIGN}/evaluate"), "")
        .await;
    let status = admin.campaign(CAMPAIGN).await;
    assert_eq!(status["campaign"]["opened_waves"], 1);
    assert_eq!(status["waves"][0]["succeeded"], 0);

    let mut updated = None;
    for d in fleet.iter_mut().filter(|d| wave0.contains(&d.id)) {
        let a = &assignments[&d.id];
        d.version = "2.0.0".into();
        d.report(&a.deployment_id, "r4", ReportedState::Committed, None)
            .await;
        updated = Some(d.id.clone());
    }
    // Gate met (bake time 0): the next evaluation opens wave 1.
    let status = admin
        .ok(&format!("/admin/v1/campaigns/{CAMPAIGN}/evaluate"), "")
        .await;
    assert_eq!(status["campaign"]["opened_waves"], 2, "{status}");
    assert_eq!(
        status["waves"][0]["succeeded"].as_u64().unwrap() as usize,
        wave0.len()
    );

    // Updated devices report 2.0.0 and get nothing more.
    for d in fleet.iter().filter(|d| wave0.contains(&d.id)) {
        assert_eq!(d.check_in().await, None);
    }

    // Wave 1: everyone checks in and is assigned.
    let wave1_devices: Vec<usize> = (0..FLEET)
        .filter(|&i| wave1.contains(&fleet[i].id))
        .collect();
    for &i in &wave1_devices {
        let a = fleet[i].check_in().await.expect("wave 1 device assigned");
        assignments.insert(fleet[i].id.clone(), a);
    }
    for us in &fleet[FLEET - 2..] {
        assert_eq!(us.check_in().await, None, "US devices are not targeted");
    }

    // One device starts before things go wrong; five roll back: 5 > 25 % of 18.
    let in_flight = wave1_devices[5];
    let held_back = wave1_devices[6];
    let ids_by_index: Vec<String> = fleet.iter().map(|d| d.id.clone()).collect();
    let dep = |i: usize| assignments[&ids_by_index[i]].deployment_id.clone();
    fleet[in_flight]
        .report(&dep(in_flight), "r1", ReportedState::Downloading, None)
        .await;
    for (n, &i) in wave1_devices[..5].iter().enumerate() {
        let a = assignments[&fleet[i].id].clone();
        fleet[i].install(&a, false).await;
        let state = admin.campaign(CAMPAIGN).await["campaign"]["state"].clone();
        let expected = if n < 4 { "running" } else { "paused" };
        assert_eq!(state, expected, "after {} failures", n + 1);
    }
    let status = admin.campaign(CAMPAIGN).await;
    assert!(
        status["campaign"]["state_reason"]
            .as_str()
            .unwrap()
            .contains("failure threshold"),
        "{status}"
    );

    // Paused: a device that had not started is held back; one in flight may finish.
    assert_eq!(fleet[held_back].check_in().await, None);
    let a = fleet[in_flight]
        .check_in()
        .await
        .expect("in-flight deployment stays");
    fleet[in_flight]
        .report(&a.deployment_id, "r2", ReportedState::Installing, None)
        .await;
    fleet[in_flight]
        .report(&a.deployment_id, "r3", ReportedState::Rebooting, None)
        .await;
    fleet[in_flight].version = "2.0.0".into();
    fleet[in_flight]
        .report(&a.deployment_id, "r4", ReportedState::Committed, None)
        .await;
    // Its next check-in says it runs 2.0.0, which is what records the version. When the
    // dry run put no device in wave 0 this is the one `Outcome::updated` names, so it
    // must not be left out (devices_are_found_by_every_filter failed on that).
    assert_eq!(fleet[in_flight].check_in().await, None);

    // Resume: the held-back device gets its assignment again and succeeds.
    admin
        .ok(&format!("/admin/v1/campaigns/{CAMPAIGN}/resume"), "")
        .await;
    let a = fleet[held_back]
        .check_in()
        .await
        .expect("assignment after resume");
    fleet[held_back].install(&a, true).await;
    let status = admin.campaign(CAMPAIGN).await;
    assert_eq!(status["campaign"]["state"], "running", "{status}");
    assert_eq!(status["waves"][1]["succeeded"], 2);
    assert_eq!(status["waves"][1]["failed"], 5);

    // Abort: deployments not started are cancelled; those devices get nothing.
    let status = admin
        .ok(&format!("/admin/v1/campaigns/{CAMPAIGN}/abort"), "")
        .await;
    assert_eq!(status["campaign"]["state"], "aborted");
    let untouched = wave1_devices.len() - 7;
    assert_eq!(
        status["waves"][1]["cancelled"].as_u64().unwrap() as usize,
        untouched,
        "{status}"
    );
    for &i in &wave1_devices[7..] {
        assert_eq!(fleet[i].check_in().await, None);
        let late = fleet[i]
            .report_raw(&dep(i), "r1", ReportedState::Downloading, None)
            .await;
        assert_eq!(
            late.status, 409,
            "a cancelled deployment takes no progress: {}",
            late.body
        );
    }

    // The rolled-back device's history names the reason.
    let rolled_back = fleet[wave1_devices[0]].id.clone();
    let (_, detail) = admin.get(&format!("/admin/v1/devices/{rolled_back}")).await;
    let history = detail["history"].to_string();
    assert!(
        history.contains("rolled back: health check failed: k3s not ready"),
        "{history}"
    );
    server.state.writer.flush().await;

    Outcome {
        server,
        releases,
        rolled_back,
        updated: updated.unwrap_or_else(|| fleet[in_flight].id.clone()),
    }
}

/// Backup while serving, a campaign to success, restore: the restored server still
/// thinks every device is downloading. Each device's next check-in (it runs 2.0.0,
/// committed) counts it, and the campaign completes with no operator step. `backup` runs
/// while the server serves and devices download; `restore` once it has stopped; both
/// blocking, as an operator's tools are.
pub async fn devices_ahead_of_a_restored_server(
    db_url: &str,
    blobs: &std::path::Path,
    backup: impl FnOnce() + Send + 'static,
    restore: impl FnOnce() + Send + 'static,
) {
    use super::ServerProcess;

    let releases = Releases::build();
    let server = ServerProcess::start_with_blobs(db_url, &releases.root_path, blobs).await;
    let admin = server.admin();
    assert_eq!(admin.upload(&releases.v2).await.0, 200);
    let mut fleet: Vec<SimDevice> = (0..3)
        .map(|i| SimDevice::new(&server.url, &format!("dev-{i}"), releases.v1_images.clone()))
        .collect();
    let mut csv = String::from("device_id,public_key,compatible,tags\n");
    for dev in &fleet {
        csv.push_str(&dev.factory_line("eu"));
        csv.push('\n');
    }
    admin.ok("/admin/v1/devices/import", csv).await;
    for dev in fleet.iter_mut() {
        assert_eq!(dev.enroll().await.status, 200);
        dev.login().await;
    }
    let policy = json!({
        "selector": { "compatible": COMPATIBLE },
        "waves": [{ "percent": 100.0 }],
        "min_success_ratio": 1.0,
        "bake_secs": 0,
        "failure_threshold": 0.0,
    });
    let body =
        json!({ "id": "c-v2", "release_id": format!("{COMPATIBLE}@2.0.0"), "policy": policy });
    admin.ok("/admin/v1/campaigns", body.to_string()).await;
    admin.ok("/admin/v1/campaigns/c-v2/start", "").await;
    let mut deployments = Vec::new();
    for dev in &fleet {
        let a = dev.check_in().await.expect("assigned");
        dev.report(&a.deployment_id, "r1", ReportedState::Downloading, None)
            .await;
        deployments.push(a);
    }
    tokio::task::spawn_blocking(backup).await.unwrap();

    for (dev, a) in fleet.iter_mut().zip(&deployments) {
        dev.report(&a.deployment_id, "r2", ReportedState::Installing, None)
            .await;
        dev.report(&a.deployment_id, "r3", ReportedState::Rebooting, None)
            .await;
        dev.version = "2.0.0".into();
        dev.report(&a.deployment_id, "r4", ReportedState::Committed, None)
            .await;
    }
    let status = admin.ok("/admin/v1/campaigns/c-v2/evaluate", "").await;
    assert_eq!(status["waves"][0]["succeeded"], 3, "{status}");
    server.stop().await;
    tokio::task::spawn_blocking(restore).await.unwrap();

    let server = ServerProcess::start_with_blobs(db_url, &releases.root_path, blobs).await;
    let admin = server.admin();
    let status = admin.campaign("c-v2").await;
    assert_eq!(
        status["waves"][0]["succeeded"], 0,
        "the backup's view: {status}"
    );
    for (dev, a) in fleet.iter_mut().zip(&deployments) {
        dev.url = server.url.clone();
        // The device is ahead: its check-in moves the deployment on.
        assert_eq!(dev.check_in().await, None, "{}: nothing left to do", dev.id);
        // A report the device still had queued (sent to the old server first) is now a
        // repeat of the end and changes nothing.
        let ack = dev
            .report(&a.deployment_id, "r4", ReportedState::Committed, None)
            .await;
        assert_eq!(ack["deployment_state"], "succeeded", "{ack}");
        // A deployment this server never had: a code the device acts on.
        let unknown = dev
            .report_raw(
                "dep-lost-in-the-restore",
                "r1",
                ReportedState::Committed,
                None,
            )
            .await;
        assert_eq!(
            (unknown.status, unknown.body["error"].as_str()),
            (404, Some(cairn_server_api::codes::UNKNOWN_DEPLOYMENT))
        );
    }
    let status = admin.ok("/admin/v1/campaigns/c-v2/evaluate", "").await;
    assert_eq!(status["waves"][0]["succeeded"], 3, "{status}");
    assert_eq!(status["campaign"]["state"], "completed", "{status}");
    let (_, device) = admin.get("/admin/v1/devices/dev-0").await;
    assert!(
        device["history"].to_string().contains("caught-up"),
        "{device:#}"
    );
    assert_eq!(device["device"]["version"], "2.0.0");
    server.stop().await;
}

/// The device filters of the admin API and the dashboard, on the fleet
/// [`run_campaign_through_waves`] left.
pub async fn devices_are_found_by_every_filter(outcome: &Outcome) {
    let admin = outcome.server.admin();
    let ids = |filter: &str| {
        let admin = &admin;
        let filter = filter.to_string();
        async move {
            let (status, listed) = admin.get(&format!("/admin/v1/devices?{filter}")).await;
            assert_eq!(status, 200, "{filter}: {listed}");
            listed
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d["id"].as_str().unwrap().to_string())
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(ids("").await.len(), 20);
    assert_eq!(ids("tag=us").await, ["dev-0018", "dev-0019"]);
    assert_eq!(ids("tag=eu").await.len(), 18);
    assert!(ids("tag=sho").await.is_empty(), "a tag matches whole");
    assert_eq!(ids("approval=approved&tag=us").await.len(), 2);
    assert!(ids("approval=pending").await.is_empty());
    assert_eq!(ids("q=dev-001").await.len(), 10);
    assert!(
        ids("q=_").await.is_empty(),
        "LIKE's wildcards are taken literally"
    );
    let updated = ids("version=2.0.0").await;
    if !updated.contains(&outcome.updated) {
        // Say what the server holds.
        let (_, all) = admin.get("/admin/v1/devices").await;
        let (_, detail) = admin
            .get(&format!("/admin/v1/devices/{}", outcome.updated))
            .await;
        panic!(
            "{} not among {updated:?}\nall devices: {all}\n{detail:#}",
            outcome.updated
        );
    }
    assert!(!updated.contains(&outcome.rolled_back), "{updated:?}");
    assert!(ids("attested=true").await.is_empty());
    assert_eq!(ids("attested=false").await.len(), 20);
    assert!(
        ids("unseen_secs=3600").await.is_empty(),
        "all checked in just now"
    );
    assert_eq!(ids("unseen_secs=0&limit=5").await.len(), 5);

    for (filter, code) in [
        ("attested=maybe", "bad-filter"),
        ("unseen_secs=-1", "bad-filter"),
        ("tag=a%25b", "bad-name"),
    ] {
        let (status, body) = admin.get(&format!("/admin/v1/devices?{filter}")).await;
        assert_eq!(
            (status, body["error"].as_str()),
            (400, Some(code)),
            "{filter}"
        );
    }

    // The dashboard's form sends every field, blank ones too.
    let page = outcome
        .server
        .page("/ui/devices?q=&approval=&version=&tag=us&unseen_secs=&attested=")
        .await;
    assert!(page.contains("<p class=\"count\">2 devices</p>"), "{page}");
    assert!(page.contains("name=\"tag\" value=\"us\""), "{page}");
    assert!(page.contains("/ui/devices/dev-0019") && !page.contains("/ui/devices/dev-0001\""));
}
