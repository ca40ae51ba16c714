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

    // The dashboard's releases page: v2's rootfs deltas start from v1's rootfs, which the
    // server names once it has v1 too.
    let page = server.page("/ui/releases").await;
    assert!(page.contains(&format!("{COMPATIBLE}@2.0.0")), "{page}");
    assert!(page.contains("unknown image"), "{page}");
    assert!(page.contains(cdn), "{page}");
    let (status, _) = admin.upload(&releases.v1).await;
    assert_eq!(status, 200);
    let page = server.page("/ui/releases").await;
    assert!(
        page.contains("<td class=\"sources\">1.0.0 rootfs</td>"),
        "{page}"
    );

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

/// What `cairnd` will do with an assignment, against the served bundle: read the header
/// and metadata with Range requests, verify them, pick the rootfs delta for the image it
/// holds, fetch only that payload's range and decode it into the new image.
#[tokio::test]
async fn a_device_installs_a_delta_from_ranges_of_the_served_bundle() {
    use cairn_bundle::header::HEADER_LEN;
    use cairn_bundle::{choose_payload, decode_payload, Header, Policy, UnverifiedBundle};

    let dir = tempfile::tempdir().unwrap();
    let releases = Releases::build();
    let server = TestServer::start(
        &format!("sqlite://{}", dir.path().join("c.db").display()),
        Some(&releases.root),
    )
    .await;
    let (status, release) = server.admin().upload(&releases.v2).await;
    assert_eq!(status, 200);
    let url = format!(
        "{}/blobs/{}.cairn",
        server.url,
        release["bundle_sha256"].as_str().unwrap()
    );
    let http = reqwest::Client::new();
    let range = |start: u64, len: u64| {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let r = http
                .get(&url)
                .header("range", format!("bytes={start}-{}", start + len - 1))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status().as_u16(), 206);
            r.bytes().await.unwrap().to_vec()
        }
    };

    let head = range(0, HEADER_LEN as u64).await;
    let header = Header::decode(&head).unwrap();
    let metadata = range(0, header.metadata_end()).await;
    let bundle = UnverifiedBundle::parse(&metadata).unwrap();
    let policy = Policy {
        compatible: Some(COMPATIBLE.into()),
        security_floor: 1,
        now: time::OffsetDateTime::now_utc(),
    };
    let verified = bundle.verify(&releases.root, &policy).unwrap();
    let rootfs = verified.manifest.image("rootfs").unwrap();
    let held = &releases.v1_images[0];
    let choice =
        choose_payload(rootfs, |s| s.sha256 == held.sha256 && s.size == held.size).unwrap();
    let cairn_bundle::Choice::Delta(payload) = choice else {
        panic!("the delta, not {choice:?}");
    };
    let bytes = range(header.payload_area_offset + payload.offset, payload.size).await;
    let source = std::fs::read(releases.dir.path().join("rootfs-1")).unwrap();
    let image =
        decode_payload(rootfs, payload, bytes.as_slice(), Some(&source), Vec::new()).unwrap();
    assert_eq!(
        image,
        std::fs::read(releases.dir.path().join("rootfs-2")).unwrap()
    );

    // The server counted exactly the bytes of its three Range answers.
    let metrics = server.admin().metrics().await.text().await.unwrap();
    let served = metrics
        .lines()
        .find_map(|l| l.strip_prefix("cairn_bundle_bytes_served_total "))
        .unwrap_or_else(|| panic!("no bundle byte count in {metrics}"));
    assert_eq!(
        served,
        (HEADER_LEN as u64 + header.metadata_end() + payload.size).to_string()
    );
    server.stop().await;
}
