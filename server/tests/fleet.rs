//! The simulated fleet on SQLite (the default database).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_goes_through_waves_pauses_on_failures_resumes_and_aborts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let outcome = common::fleet::run_campaign_through_waves(&url).await;
    outcome.server.stop().await;
}

/// `cairn-server` run as an operator would, on the database of `dir`.
fn cli(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_cairn-server"))
        .current_dir(dir)
        .args(["--db", "sqlite://cairn.db", "--blobs", "./blobs"])
        .args(args)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap()
}

/// Backup while serving, a campaign to success, restore: the restored server still
/// thinks every device is downloading. Each device's next check-in (it runs 2.0.0,
/// committed) counts it, and the campaign completes with no operator step and no
/// report replayed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_counts_devices_that_are_ahead_of_it_at_their_next_check_in() {
    use cairn_server_api::ReportedState;
    use common::device::SimDevice;

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let db_url = format!("sqlite://{}", d.join("cairn.db").display());
    let blobs = d.join("blobs");
    let releases = common::Releases::build();
    let server =
        common::ServerProcess::start_with_blobs(&db_url, &releases.root_path, &blobs).await;
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
    let policy = serde_json::json!({
        "selector": { "compatible": common::COMPATIBLE },
        "waves": [{ "percent": 100.0 }],
        "min_success_ratio": 1.0,
        "bake_secs": 0,
        "failure_threshold": 0.0,
    });
    let body = serde_json::json!({
        "id": "c-v2",
        "release_id": format!("{}@2.0.0", common::COMPATIBLE),
        "policy": policy,
    });
    admin.ok("/admin/v1/campaigns", body.to_string()).await;
    admin.ok("/admin/v1/campaigns/c-v2/start", "").await;
    let mut deployments = Vec::new();
    for dev in &fleet {
        let a = dev.check_in().await.expect("assigned");
        dev.report(&a.deployment_id, "r1", ReportedState::Downloading, None)
            .await;
        deployments.push(a);
    }

    // The backup is taken while the server serves and every device is downloading.
    let out = cli(d, &["backup", "nightly.db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    for (dev, a) in fleet.iter_mut().zip(&deployments) {
        dev.report(&a.deployment_id, "r2", ReportedState::Installing, None)
            .await;
        dev.report(&a.deployment_id, "r3", ReportedState::Rebooting, None)
            .await;
        dev.version = "2.0.0".into();
        dev.report(&a.deployment_id, "r4", ReportedState::Committed, None)
            .await;
    }
    admin.ok("/admin/v1/campaigns/c-v2/evaluate", "").await;
    let status = admin.campaign("c-v2").await;
    assert_eq!(status["waves"][0]["succeeded"], 3, "{status}");

    // A restore never replaces the database under a running server.
    let refused = cli(d, &["restore", "nightly.db"]);
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(!refused.status.success());
    assert!(stderr.contains("a cairn-server is serving"), "{stderr}");
    server.stop().await;
    let out = cli(d, &["restore", "nightly.db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        (
            &restored["devices"],
            &restored["releases"],
            &restored["campaigns"]
        ),
        (
            &serde_json::json!(3),
            &serde_json::json!(1),
            &serde_json::json!(1)
        ),
        "{restored}"
    );

    let server =
        common::ServerProcess::start_with_blobs(&db_url, &releases.root_path, &blobs).await;
    let admin = server.admin();
    let status = admin.campaign("c-v2").await;
    assert_eq!(
        status["waves"][0]["succeeded"], 0,
        "the backup's view: {status}"
    );
    for (dev, a) in fleet.iter_mut().zip(&deployments) {
        dev.url = server.url.clone();
        // The device is ahead: its check-in moves the deployment on.
        let answer = dev.check_in().await;
        assert_eq!(answer, None, "{}: nothing left to do", dev.id);
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
