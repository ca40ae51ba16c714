//! The simulated fleet on SQLite (the default database).

mod common;

use common::cli;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_goes_through_waves_pauses_on_failures_resumes_and_aborts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let outcome = common::fleet::run_campaign_through_waves(&url).await;
    outcome.server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_server_counts_devices_that_are_ahead_of_it_at_their_next_check_in() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_path_buf();
    let db_url = format!("sqlite://{}", d.join("cairn.db").display());
    let backup = {
        let d = d.clone();
        move || {
            let out = cli(&d, &["backup", "nightly.db"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // A restore never replaces the database under a running server.
            let refused = cli(&d, &["restore", "nightly.db"]);
            let stderr = String::from_utf8_lossy(&refused.stderr);
            assert!(!refused.status.success());
            assert!(stderr.contains("a cairn-server is serving"), "{stderr}");
        }
    };
    let restore = move || {
        let out = cli(&d, &["restore", "nightly.db"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let restored: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            [
                &restored["devices"],
                &restored["releases"],
                &restored["campaigns"]
            ],
            [3, 1, 1],
            "{restored}"
        );
    };
    let blobs = dir.path().join("blobs");
    common::fleet::devices_ahead_of_a_restored_server(&db_url, &blobs, backup, restore).await;
}
