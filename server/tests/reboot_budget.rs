//! Reboot budgets on SQLite (the PostgreSQL run, with two servers, is in postgres.rs).

mod common;

use common::{Releases, TestServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_of_one_cluster_with_a_budget_of_one_never_reboot_at_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let releases = Releases::build();
    let server = TestServer::start(&url, Some(&releases.root)).await;
    let device_urls = [server.url.clone()];
    common::reboot_budget::one_node_at_a_time(&server.admin(), &device_urls, &releases).await;
    server.stop().await;
}
