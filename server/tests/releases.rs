//! Releases: what the server records of a bundle, and bundles served from elsewhere.

mod common;

use common::device::SimDevice;
use common::{Releases, TestServer, COMPATIBLE};
use serde_json::json;

#[tokio::test]
async fn a_release_records_its_manifest_and_can_be_served_from_an_external_url() {
    let dir = tempfile::tempdir().unwrap();
    let releases = Releases::build();
    let server = TestServer::start(
        &format!("sqlite://{}", dir.path().join("c.db").display()),
        Some(&releases.root),
    )
    .await;
    let admin = server.admin();
    let cdn = "https://cdn.example.com/cairn/v2.cairn";
    let (status, release) = admin
        .post(
            &format!("/admin/v1/releases?external_url={cdn}"),
            std::fs::read(&releases.v2).unwrap(),
        )
        .await;
    assert_eq!(status, 200, "{release}");
    assert_eq!(release["compatible"], COMPATIBLE);
    assert_eq!(release["version"], "2.0.0");
    assert_eq!(release["security_version"], 1);
    assert_eq!(
        release["bundle_size"],
        std::fs::metadata(&releases.v2).unwrap().len()
    );
    assert_eq!(release["external_url"], cdn);
    let names: Vec<&str> = release["images"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["rootfs", "kernel"]);
    // Not kept here: the bytes live on the CDN.
    assert_eq!(std::fs::read_dir(&server.blobs).unwrap().count(), 0);

    let mut device = SimDevice::new(&server.url, "dev-cdn", releases.v1_images.clone());
    let csv = format!(
        "device_id,public_key,compatible,tags\n{}\n",
        device.factory_line("")
    );
    admin.ok("/admin/v1/devices/import", csv).await;
    device.enroll().await;
    device.login().await;
    let policy = json!({
        "selector": { "compatible": COMPATIBLE, "device_ids": ["dev-cdn"] },
        "waves": [{ "percent": 100.0 }],
        "min_success_ratio": 1.0, "bake_secs": 0, "failure_threshold": 1.0,
    });
    let body =
        json!({ "id": "cdn", "release_id": format!("{COMPATIBLE}@2.0.0"), "policy": policy });
    admin.ok("/admin/v1/campaigns", body.to_string()).await;
    admin.ok("/admin/v1/campaigns/cdn/start", "").await;
    let assignment = device.check_in().await.expect("assigned");
    assert_eq!(assignment.bundle_url, cdn);
    assert_eq!(
        assignment.bundle_sha256,
        release["bundle_sha256"].as_str().unwrap()
    );
    server.stop().await;
}
