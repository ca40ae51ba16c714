//! The PostgreSQL path, against a real PostgreSQL cluster started for these tests.

mod common;

use cairn_server::db::Db;
use cairn_server_api::ReportedState;
use common::device::SimDevice;
use common::postgres::PgCluster;
use common::{Releases, ServerProcess, COMPATIBLE};
use serde_json::json;
use sqlx::Row as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_goes_through_waves_pauses_on_failures_resumes_and_aborts_on_postgres() {
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = pg.create_database("fleet");
    let outcome = common::fleet::run_campaign_through_waves(&url).await;
    common::fleet::devices_are_found_by_every_filter(&outcome).await;
    outcome.server.stop().await;
    drop(pg);
}

/// The reboot budget with devices spread over two servers on one database: the lease
/// slots, not either server's memory, keep the budget.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_of_one_cluster_with_a_budget_of_one_never_reboot_at_once_on_postgres() {
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = pg.create_database("budget");
    let releases = Releases::build();
    let db = Db::connect(&url).await.unwrap();
    let a = ServerProcess::start(&url, &releases.root_path).await;
    let b = ServerProcess::start(&url, &releases.root_path).await;
    let device_urls = [a.url.clone(), b.url.clone()];
    common::reboot_budget::one_node_at_a_time(&a.admin(), &device_urls, &releases).await;
    a.stop().await;
    b.stop().await;
    db.pool.close().await;
    drop(pg);
}

/// Two server processes on one database, every device talking to both at once: one
/// deployment per device, every report applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_on_one_postgres_never_double_assign_or_lose_a_report() {
    let pg = tokio::task::spawn_blocking(PgCluster::start).await.unwrap();
    let url = pg.create_database("pair");
    let releases = Releases::build();
    // Migrations first, so the two processes do not both start on an empty database.
    let db = Db::connect(&url).await.unwrap();
    let a = ServerProcess::start(&url, &releases.root_path).await;
    let b = ServerProcess::start(&url, &releases.root_path).await;
    let (status, body) = a.admin().upload(&releases.v2).await;
    assert_eq!(status, 200, "{body}");

    const N: usize = 30;
    let mut on_a: Vec<SimDevice> = (0..N)
        .map(|i| SimDevice::new(&a.url, &format!("pair-{i:03}"), releases.v1_images.clone()))
        .collect();
    let csv: String = std::iter::once("device_id,public_key,compatible,tags\n".to_string())
        .chain(on_a.iter().map(|d| format!("{}\n", d.factory_line(""))))
        .collect();
    b.admin().ok("/admin/v1/devices/import", csv).await;
    for d in on_a.iter_mut() {
        assert_eq!(d.enroll().await.status, 200);
        d.login().await;
    }
    // Tokens from server A are good on server B: both hold the key from the database.
    let on_b: Vec<SimDevice> = on_a
        .iter()
        .map(|d| SimDevice {
            url: b.url.clone(),
            ..d.clone()
        })
        .collect();

    let policy = json!({
        "selector": { "compatible": COMPATIBLE },
        "waves": [{ "percent": 100.0 }],
        "min_success_ratio": 1.0, "bake_secs": 0, "failure_threshold": 1.0,
    });
    let body =
        json!({ "id": "pair", "release_id": format!("{COMPATIBLE}@2.0.0"), "policy": policy });
    a.admin().ok("/admin/v1/campaigns", body.to_string()).await;
    b.admin().ok("/admin/v1/campaigns/pair/start", "").await;

    let mut tasks = Vec::new();
    for (da, db) in on_a.into_iter().zip(on_b) {
        tasks.push(tokio::spawn(async move {
            let (x, y) = tokio::join!(da.check_in(), db.check_in());
            let (x, y) = (x.expect("assigned via A"), y.expect("assigned via B"));
            assert_eq!(
                x.deployment_id, y.deployment_id,
                "{} got two deployments",
                da.id
            );
            let d = x.deployment_id;
            // The same report through both servers at once: applied once.
            let (r1, r2) = tokio::join!(
                da.report(&d, "r1", ReportedState::Downloading, None),
                db.report(&d, "r1", ReportedState::Downloading, None)
            );
            assert_ne!(r1["duplicate"], r2["duplicate"], "{r1} {r2}");
            // Different reports racing through both servers: both kept, state moves on.
            tokio::join!(
                da.report(&d, "r2", ReportedState::Installing, None),
                db.report(&d, "r3", ReportedState::Rebooting, None)
            );
            let (c1, c2) = tokio::join!(
                da.report(&d, "r4", ReportedState::Committed, None),
                db.report(&d, "r4", ReportedState::Committed, None)
            );
            assert_eq!(c1["deployment_state"], "succeeded");
            assert_eq!(c2["deployment_state"], "succeeded");
            d
        }));
    }
    let mut deployments = Vec::new();
    for t in tasks {
        deployments.push(t.await.unwrap());
    }
    deployments.sort();
    deployments.dedup();
    assert_eq!(deployments.len(), N, "one deployment per device");

    // Stopping writes what each server still holds of the check-ins.
    let status = b.admin().campaign("pair").await;
    assert_eq!(status["waves"][0]["succeeded"], N as u64);
    a.stop().await;
    b.stop().await;
    let pool = &db.pool;
    let count = |sql: &'static str| async move {
        sqlx::query(sql)
            .fetch_one(pool)
            .await
            .unwrap()
            .try_get::<i64, _>("n")
            .unwrap()
    };
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM deployments").await,
        N as i64
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM reports").await,
        4 * N as i64
    );
    assert_eq!(
        count("SELECT COUNT(*) AS n FROM deployments WHERE state = 'succeeded'").await,
        N as i64
    );
    drop(pg);
}

/// The restore path on PostgreSQL, with its own tools (README, Backup and restore):
/// `cairn-server backup` says to use them, `pg_dump -Fc` while the server serves,
/// `pg_restore --clean --if-exists` once it stopped, and devices ahead of the restored
/// server are counted at their next check-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_restored_with_pg_restore_counts_devices_ahead_of_it() {
    let pg = std::sync::Arc::new(tokio::task::spawn_blocking(PgCluster::start).await.unwrap());
    let url = pg.create_database("restored");
    let blobs = tempfile::tempdir().unwrap();
    let dump = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let backup = {
        let (pg, url, dump) = (pg.clone(), url.clone(), dump.clone());
        move || {
            let ours = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-server"))
                .args(["--db", &url, "backup", "/nonexistent/backup.db"])
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&ours.stderr);
            assert!(!ours.status.success());
            assert!(stderr.contains("pg_dump -Fc"), "{stderr}");
            let out = pg
                .tool("pg_dump")
                .args(["-Fc", "-d", "restored"])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            *dump.lock().unwrap() = out.stdout;
        }
    };
    let restore = {
        let pg = pg.clone();
        move || {
            use std::io::Write as _;
            let mut child = pg
                .tool("pg_restore")
                .args(["--clean", "--if-exists", "-d", "restored"])
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            let bytes = std::mem::take(&mut *dump.lock().unwrap());
            assert!(!bytes.is_empty());
            child.stdin.take().unwrap().write_all(&bytes).unwrap();
            let out = child.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    };
    common::fleet::devices_ahead_of_a_restored_server(&url, blobs.path(), backup, restore).await;
}
