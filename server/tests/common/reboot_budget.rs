//! The reboot-budget scenario, run on SQLite and on PostgreSQL (there with two servers on
//! one database): five devices of one cluster with a budget of one never reboot at once,
//! and a device that dies mid-reboot frees its lease when the lease expires.

use std::time::{Duration, Instant};

use cairn_server_api::{paths, RebootLease, ReportedState};
use serde_json::json;

use super::device::SimDevice;
use super::{Admin, Releases, COMPATIBLE};

const CAMPAIGN: &str = "one-node-at-a-time";
/// Short, so the dead device's lease expires within the test.
const LEASE_SECS: u64 = 3;
/// How long a simulated reboot holds its lease.
const REBOOT: Duration = Duration::from_millis(300);

/// What one device saw: when its lease arrived and when it sent its verdict.
struct Reboot {
    device: String,
    granted: Instant,
    verdict_sent: Instant,
}

/// `device_urls`: the servers devices talk to, in turn (one, or several sharing a
/// database). `admin` is any of them.
pub async fn one_node_at_a_time(admin: &Admin, device_urls: &[String], releases: &Releases) {
    let (status, body) = admin.upload(&releases.v2).await;
    assert_eq!(status, 200, "{body}");
    // Five devices on line 3, one on line 4.
    let mut fleet: Vec<SimDevice> = (0..6)
        .map(|i| {
            let url = &device_urls[i % device_urls.len()];
            SimDevice::new(url, &format!("node-{i}"), releases.v1_images.clone())
        })
        .collect();
    let mut csv = String::from("device_id,public_key,compatible,tags\n");
    for (i, d) in fleet.iter().enumerate() {
        let line = if i < 5 {
            "cluster=line-3"
        } else {
            "cluster=line-4"
        };
        csv.push_str(&format!("{}\n", d.factory_line(&format!("k3s;{line}"))));
    }
    admin.ok("/admin/v1/devices/import", csv).await;
    for d in fleet.iter_mut() {
        assert_eq!(d.enroll().await.status, 200);
        d.login().await;
    }
    let policy = json!({
        "selector": { "compatible": COMPATIBLE, "tags": ["k3s"] },
        "waves": [{ "percent": 100.0 }],
        "min_success_ratio": 0.5,
        "bake_secs": 0,
        "failure_threshold": 0.5,
        "reboot_budget": { "max_rebooting": 1, "group_by": "cluster", "lease_secs": LEASE_SECS },
    });
    let release_id = format!("{COMPATIBLE}@2.0.0");
    let body = json!({ "id": CAMPAIGN, "release_id": release_id, "policy": policy });
    admin.ok("/admin/v1/campaigns", body.to_string()).await;
    admin
        .ok(&format!("/admin/v1/campaigns/{CAMPAIGN}/start"), "")
        .await;

    // Everyone downloads and installs; nobody has rebooted yet.
    let mut deployments = Vec::new();
    for d in &fleet {
        let assignment = d.check_in().await.expect("assigned");
        let id = assignment.deployment_id;
        d.report(&id, "r1", ReportedState::Downloading, None).await;
        d.report(&id, "r2", ReportedState::Installing, None).await;
        d.report(&id, "r3", ReportedState::Rebooting, None).await;
        deployments.push(id);
    }

    // node-0 takes line 3's lease and dies in its reboot: no verdict ever comes.
    let dead = Instant::now();
    assert_eq!(
        ask(&fleet[0], &deployments[0]).await,
        RebootLease::Granted {
            expires_in_secs: Some(LEASE_SECS)
        }
    );
    // Line 4 has a budget of its own.
    assert!(matches!(
        ask(&fleet[5], &deployments[5]).await,
        RebootLease::Granted { .. }
    ));
    match ask(&fleet[1], &deployments[1]).await {
        RebootLease::Wait {
            group,
            in_use,
            budget,
            retry_after_secs,
        } => {
            assert_eq!((group.as_str(), in_use, budget), ("cluster=line-3", 1, 1));
            assert!((1..=LEASE_SECS + 1).contains(&retry_after_secs));
        }
        other => panic!("node-1 must wait for node-0's lease, got {other:?}"),
    }
    let status = admin.campaign(CAMPAIGN).await;
    let held: Vec<&str> = status["reboot_leases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(held, ["node-0", "node-5"], "{status}");

    // node-1 .. node-4 all want to reboot at once; a watcher checks the budget meanwhile.
    let watching = tokio::spawn(watch_leases(
        Admin {
            url: admin.url.clone(),
            http: reqwest::Client::new(),
        },
        Instant::now() + Duration::from_secs(LEASE_SECS) + REBOOT * 4 + Duration::from_secs(3),
    ));
    let tasks: Vec<_> = (1..5)
        .map(|i| {
            let device = fleet[i].clone();
            let deployment = deployments[i].clone();
            tokio::spawn(async move { reboot_when_leased(device, deployment).await })
        })
        .collect();
    let mut reboots = Vec::new();
    for t in tasks {
        reboots.push(t.await.unwrap());
    }
    let most_at_once = watching.await.unwrap();
    assert_eq!(most_at_once, 1, "leases held at once on line 3");

    reboots.sort_by_key(|r| r.granted);
    let first = &reboots[0];
    assert!(
        first.granted.duration_since(dead)
            >= Duration::from_secs(LEASE_SECS) - Duration::from_millis(500),
        "{} got the lease {:?} after the dead node took it; the lease is {LEASE_SECS} s",
        first.device,
        first.granted.duration_since(dead)
    );
    for pair in reboots.windows(2) {
        let (a, b) = (&pair[0], &pair[1]);
        let ended = a.verdict_sent;
        assert!(
            b.granted >= ended,
            "{} was granted {:?} before {} sent its verdict",
            b.device,
            ended.duration_since(b.granted),
            a.device
        );
    }

    // The dead node's history says what happened; its deployment is decided by nobody.
    let (_, history) = admin.get("/admin/v1/devices/node-0").await;
    assert!(
        history.to_string().contains("reboot lease expired"),
        "{history}"
    );
    // A decided deployment has nothing to lease.
    let answer = fleet[1]
        .post_json(&paths::reboot_lease(&deployments[1]), &json!({}), &[])
        .await;
    assert_eq!(answer.status, 409, "{}", answer.body);
    assert_eq!(answer.body["error"], "deployment-decided");
    // The dashboard shows the budget.
    let (_, status) = admin.get(&format!("/admin/v1/campaigns/{CAMPAIGN}")).await;
    assert_eq!(
        status["campaign"]["policy"]["reboot_budget"]["max_rebooting"],
        1
    );
}

async fn ask(device: &SimDevice, deployment: &str) -> RebootLease {
    let answer = device
        .post_json(&paths::reboot_lease(deployment), &json!({}), &[])
        .await;
    assert_eq!(
        answer.status, 200,
        "lease for {}: {}",
        device.id, answer.body
    );
    serde_json::from_value(answer.body).unwrap()
}

/// A device's side: ask until granted (every 100 ms: faster than a real one), reboot,
/// say it committed.
async fn reboot_when_leased(device: SimDevice, deployment: String) -> Reboot {
    loop {
        if let RebootLease::Granted { .. } = ask(&device, &deployment).await {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let granted = Instant::now();
    tokio::time::sleep(REBOOT).await;
    let verdict_sent = Instant::now();
    device
        .report(&deployment, "r4", ReportedState::Committed, None)
        .await;
    Reboot {
        device: device.id.clone(),
        granted,
        verdict_sent,
    }
}

/// The most leases line 3 held at once in `campaign status`, polled until `until`.
async fn watch_leases(admin: Admin, until: Instant) -> usize {
    let mut most = 0;
    while Instant::now() < until {
        let status = admin.campaign(CAMPAIGN).await;
        let on_line_3 = status["reboot_leases"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|l| l["group"] == "cluster=line-3")
            .count();
        most = most.max(on_line_3);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    most
}
