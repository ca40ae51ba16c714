//! Finding devices: the admin API's and the dashboard's device filters after a real
//! 20-device campaign (18 tagged `eu`+`shop`, 2 `us`; some updated to 2.0.0). The same
//! checks run on PostgreSQL in `postgres.rs`.

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn devices_are_found_by_approval_version_tag_id_last_seen_and_attestation() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let outcome = common::fleet::run_campaign_through_waves(&url).await;
    common::fleet::devices_are_found_by_every_filter(&outcome).await;
    outcome.server.stop().await;
}
