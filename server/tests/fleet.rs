//! The simulated fleet on SQLite (the default database).

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn campaign_goes_through_waves_pauses_on_failures_resumes_and_aborts_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let outcome = common::fleet::run_campaign_through_waves(&url).await;
    outcome.server.stop().await;
}
