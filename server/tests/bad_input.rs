//! Bad input of every kind is refused with a clear status and message, and changes
//! nothing.

mod common;

use cairn_bundle::TrustRoot;
use cairn_server_api::{paths, ReportedState, TokenRequest};
use cairn_testkit::{new_key, root_for};
use common::device::{now, SimDevice};
use common::{Releases, TestServer, COMPATIBLE};
use serde_json::json;

struct Setup {
    _dir: tempfile::TempDir,
    releases: Releases,
    server: TestServer,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let releases = Releases::build();
    let server = TestServer::start(&url, Some(&releases.root)).await;
    Setup {
        _dir: dir,
        releases,
        server,
    }
}

/// Imports, enrolls and logs in `n` devices.
async fn devices(s: &Setup, n: usize) -> Vec<SimDevice> {
    let mut out: Vec<SimDevice> = (0..n)
        .map(|i| {
            SimDevice::new(
                &s.server.url,
                &format!("dev-{i}"),
                s.releases.v1_images.clone(),
            )
        })
        .collect();
    let csv: String = std::iter::once("device_id,public_key,compatible,tags\n".to_string())
        .chain(out.iter().map(|d| format!("{}\n", d.factory_line(""))))
        .collect();
    s.server.admin().ok("/admin/v1/devices/import", csv).await;
    for d in out.iter_mut() {
        assert_eq!(d.enroll().await.status, 200);
        d.login().await;
    }
    out
}

/// v2 released and a one-wave campaign running for every device.
async fn running_campaign(s: &Setup) {
    let admin = s.server.admin();
    assert_eq!(admin.upload(&s.releases.v2).await.0, 200);
    let policy = json!({
        "selector": { "compatible": COMPATIBLE },
        "waves": [{ "percent": 100.0 }],
        "min_success_ratio": 1.0, "bake_secs": 0, "failure_threshold": 1.0,
    });
    let body = json!({ "id": "c", "release_id": format!("{COMPATIBLE}@2.0.0"), "policy": policy });
    admin.ok("/admin/v1/campaigns", body.to_string()).await;
    admin.ok("/admin/v1/campaigns/c/start", "").await;
}

fn error_code(body: &serde_json::Value) -> &str {
    body["error"].as_str().unwrap_or("<no error code>")
}

#[tokio::test]
async fn malformed_json_is_refused_with_a_message() {
    let s = setup().await;
    let d = &devices(&s, 1).await[0];
    let http = reqwest::Client::new();
    for body in ["{not json", "{\"version\": 5}", "[]", ""] {
        let r = http
            .post(format!("{}{}", s.server.url, paths::CHECK_IN))
            .bearer_auth(d.token.as_ref().unwrap())
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400, "body {body:?}");
        let answer: serde_json::Value = r.json().await.unwrap();
        assert_eq!(error_code(&answer), "bad-json");
        assert!(answer["message"].as_str().unwrap().contains("request body"));
    }
    // Unknown fields are refused too: a typo must not pass as "nothing reported".
    let mut state = serde_json::to_value(d.state()).unwrap();
    state["verison"] = json!("1.0.0");
    assert_eq!(d.post_json(paths::CHECK_IN, &state, &[]).await.status, 400);
    let (status, body) = s
        .server
        .admin()
        .post("/admin/v1/campaigns", "{\"id\": 1}")
        .await;
    assert_eq!((status, error_code(&body)), (400, "bad-json"));
}

#[tokio::test]
async fn unknown_devices_bad_signatures_replays_and_stale_requests_are_refused() {
    let s = setup().await;
    let mut d = devices(&s, 1).await.remove(0);

    let mut stranger = SimDevice::new(&s.server.url, "dev-unknown", vec![]);
    let request = stranger.token_request();
    let answer = stranger.post_json(paths::TOKEN, &request, &[]).await;
    // Answered like a bad signature: the endpoint does not tell which ids exist.
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "unknown-device")
    );

    // Signed by another key: refused, and the nonce is not burned by the forger.
    let request = d.token_request();
    let forged = TokenRequest::sign(&stranger.key, &d.id, request.timestamp, &request.nonce);
    let answer = d.post_json(paths::TOKEN, &forged, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "unknown-device")
    );
    let answer = d.post_json(paths::TOKEN, &request, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);

    // The same signed request again: a replay.
    let answer = d.post_json(paths::TOKEN, &request, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "replayed-request")
    );

    let nonce = d.nonce();
    let stale = TokenRequest::sign(&d.key, &d.id, now() - 3600, &nonce);
    let answer = d.post_json(paths::TOKEN, &stale, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "stale-request")
    );

    // Without a token, with a token for another device, with a tampered one.
    d.token = None;
    assert_eq!(d.check_in_raw(None).await.status, 401);
    d.login().await;
    let genuine = d.token.clone().unwrap();
    d.token = Some(genuine.replacen("dev-0", "dev-1", 1));
    let answer = d.check_in_raw(None).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "bad-token")
    );
    let mut tampered = genuine.clone();
    let last = tampered.pop().unwrap();
    tampered.push(if last == '0' { '1' } else { '0' });
    d.token = Some(tampered);
    assert_eq!(d.check_in_raw(None).await.status, 401);
}

#[tokio::test]
async fn enrollment_needs_a_preauthorized_or_approved_key() {
    let s = setup().await;
    let admin = s.server.admin();
    let mut newcomer = SimDevice::new(&s.server.url, "dev-new", vec![]);
    let answer = newcomer.enroll().await;
    assert_eq!(
        (answer.status, answer.body["status"].as_str()),
        (202, Some("pending"))
    );
    let request = newcomer.token_request();
    let answer = newcomer.post_json(paths::TOKEN, &request, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (403, "not-approved")
    );
    admin.ok("/admin/v1/devices/dev-new/approve", "").await;
    newcomer.login().await;

    // A pre-authorized id presented with another key is refused and keeps its key.
    let owner = &devices(&s, 1).await[0];
    let mut impostor = SimDevice::new(&s.server.url, &owner.id, vec![]);
    let answer = impostor.enroll().await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (403, "key-mismatch")
    );
    let (_, shown) = admin.get(&format!("/admin/v1/devices/{}", owner.id)).await;
    assert_eq!(shown["device"]["public_key"], owner.public_key());
    // And a factory import cannot silently re-key it either.
    let csv = format!(
        "device_id,public_key,compatible,tags\n{}\n",
        impostor.factory_line("")
    );
    let (status, body) = admin.post("/admin/v1/devices/import", csv).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["imported"], 0);
    assert_eq!(body["refused"][0]["device_id"], owner.id.as_str());
    let (_, shown) = admin.get(&format!("/admin/v1/devices/{}", owner.id)).await;
    assert_eq!(shown["device"]["public_key"], owner.public_key());

    // The admin API itself needs its token.
    let r = reqwest::Client::new()
        .get(format!("{}/admin/v1/devices", s.server.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = reqwest::Client::new()
        .get(format!("{}/admin/v1/devices", s.server.url))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
}

#[tokio::test]
async fn reports_for_someone_elses_or_unknown_deployments_change_nothing() {
    let s = setup().await;
    let fleet = devices(&s, 2).await;
    running_campaign(&s).await;
    let mine = fleet[0].check_in().await.unwrap();
    let theirs = fleet[1].check_in().await.unwrap();

    let answer = fleet[1]
        .report_raw(
            &mine.deployment_id,
            "x1",
            ReportedState::Failed,
            Some("sabotage"),
        )
        .await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (403, "not-your-deployment")
    );
    let answer = fleet[0]
        .report_raw("dep-nonexistent", "x1", ReportedState::Downloading, None)
        .await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (404, "unknown-deployment")
    );
    // Committing without having rebooted is not a success.
    let answer = fleet[0]
        .report_raw(&mine.deployment_id, "x2", ReportedState::Committed, None)
        .await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (409, "report-conflict")
    );

    let again = fleet[0].check_in().await.unwrap();
    assert_eq!(again.deployment_id, mine.deployment_id);
    assert_eq!(again.state, cairn_server_api::DeploymentState::Assigned);
    assert_eq!(fleet[1].check_in().await.unwrap(), theirs);
    let status = s.server.admin().campaign("c").await;
    assert_eq!(status["waves"][0]["failed"], 0);
    assert_eq!(status["waves"][0]["succeeded"], 0);
    // A refused report is not remembered as applied: the same id works once it fits.
    fleet[0]
        .report(&mine.deployment_id, "x2", ReportedState::Downloading, None)
        .await;
}

#[tokio::test]
async fn retried_reports_are_applied_once() {
    let s = setup().await;
    let d = devices(&s, 1).await.remove(0);
    running_campaign(&s).await;
    let a = d.check_in().await.unwrap();
    let first = d
        .report(
            &a.deployment_id,
            "r1",
            ReportedState::Downloading,
            Some("0 of 10 MB"),
        )
        .await;
    assert_eq!(first["duplicate"], false);
    for _ in 0..3 {
        let again = d
            .report(
                &a.deployment_id,
                "r1",
                ReportedState::Downloading,
                Some("0 of 10 MB"),
            )
            .await;
        assert_eq!(again["duplicate"], true);
        assert_eq!(again["deployment_state"], "downloading");
    }
    let (_, shown) = s
        .server
        .admin()
        .get(&format!("/admin/v1/devices/{}", d.id))
        .await;
    let downloads = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["event"] == "downloading")
        .count();
    assert_eq!(downloads, 1);
    // Newest first, in the order things happened even within one millisecond.
    let events: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["event"].as_str().unwrap())
        .collect();
    assert_eq!(events, ["downloading", "assigned", "version", "enrolled"]);
}

#[tokio::test]
async fn endless_reports_under_new_ids_do_not_grow_the_report_and_history_tables() {
    let s = setup().await;
    let mut fleet = devices(&s, 2).await;
    running_campaign(&s).await;
    let done = fleet[0].check_in().await.unwrap();
    fleet[0].install(&done, true).await;
    let live = fleet[1].check_in().await.unwrap();
    let pool = &s.server.state.db.pool;
    let rows = |table: &'static str, column: &'static str, value: String| async move {
        let n: i64 =
            sqlx::query_scalar(&format!("SELECT COUNT(*) FROM {table} WHERE {column} = $1"))
                .bind(value)
                .fetch_one(pool)
                .await
                .unwrap();
        n
    };
    let history_before = rows("history", "device_id", fleet[0].id.clone()).await;

    // A device that retries its final report under a new id every time.
    for i in 0..100 {
        let ack = fleet[0]
            .report(
                &done.deployment_id,
                &format!("again-{i}"),
                ReportedState::Committed,
                None,
            )
            .await;
        assert_eq!(
            (&ack["duplicate"], &ack["deployment_state"]),
            (&json!(true), &json!("succeeded"))
        );
    }
    assert_eq!(
        rows("reports", "deployment_id", done.deployment_id.clone()).await,
        4
    );
    assert_eq!(
        rows("history", "device_id", fleet[0].id.clone()).await,
        history_before
    );

    // Endless progress reports on a live deployment: kept up to a bound, then refused.
    let mut refused = 0;
    for i in 0..100 {
        let answer = fleet[1]
            .report_raw(
                &live.deployment_id,
                &format!("p-{i}"),
                ReportedState::Downloading,
                None,
            )
            .await;
        if answer.status == 409 {
            assert_eq!(error_code(&answer.body), "too-many-reports");
            refused += 1;
        } else {
            assert_eq!(answer.status, 200, "{}", answer.body);
        }
    }
    let kept = rows("reports", "deployment_id", live.deployment_id.clone()).await;
    assert!(kept <= 32, "{kept} report rows");
    assert_eq!(refused, 100 - kept);
    assert!(rows("history", "device_id", fleet[1].id.clone()).await <= 32 + 4);
}

#[tokio::test]
async fn polling_is_cheap_with_etags() {
    let s = setup().await;
    let d = devices(&s, 1).await.remove(0);
    let first = d.check_in_raw(None).await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body["assignment"], serde_json::Value::Null);
    let poll = first.body["poll_interval_secs"].as_u64().unwrap();
    assert!((48..=72).contains(&poll), "60 s ± 20 %: {poll}");
    let etag = first.etag.unwrap();
    let second = d.check_in_raw(Some(&etag)).await;
    assert_eq!(second.status, 304);
    assert_eq!(second.body, serde_json::Value::Null, "no body on 304");
    // Something to do: the answer changes, and so does its tag.
    running_campaign(&s).await;
    let third = d.check_in_raw(Some(&etag)).await;
    assert_eq!(third.status, 200);
    assert!(third.body["assignment"]["bundle_url"]
        .as_str()
        .unwrap()
        .starts_with(&s.server.url));
    assert_ne!(third.etag.unwrap(), etag);
    // The check-in was recorded even when answered with 304.
    s.server.state.writer.flush().await;
    let (_, shown) = s
        .server
        .admin()
        .get(&format!("/admin/v1/devices/{}", d.id))
        .await;
    assert_eq!(shown["device"]["version"], "1.0.0");
    assert_eq!(shown["device"]["images"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn bundles_failing_verification_are_rejected_and_leave_nothing_behind() {
    let s = setup().await;
    let admin = s.server.admin();
    let dir = tempfile::tempdir().unwrap();

    // Signed by a key the server's trust root does not know.
    let stranger = new_key();
    let root = root_for(&stranger, 30);
    let other = TestServer::start(
        &format!("sqlite://{}", dir.path().join("other.db").display()),
        Some(&TrustRoot::anchor(root).unwrap()),
    )
    .await;
    let (status, body) = other.admin().upload(&s.releases.v1).await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "bundle-invalid"),
        "{body}"
    );
    other.stop().await;

    // One flipped payload byte.
    let mut bytes = std::fs::read(&s.releases.v1).unwrap();
    let at = bytes.len() - 5000;
    bytes[at] ^= 0x40;
    let corrupt = dir.path().join("corrupt.cairn");
    std::fs::write(&corrupt, bytes).unwrap();
    let (status, body) = admin.upload(&corrupt).await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "bundle-invalid"),
        "{body}"
    );

    let (status, body) = admin.post("/admin/v1/releases", "not a bundle").await;
    assert_eq!(
        (status, error_code(&body)),
        (422, "bundle-invalid"),
        "{body}"
    );

    let (_, list) = admin.get("/admin/v1/releases").await;
    assert_eq!(list, json!([]));
    let leftovers: Vec<_> = std::fs::read_dir(&s.server.blobs).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The genuine bundle goes in once, and is served whole by its content address.
    let (status, v1) = admin.upload(&s.releases.v1).await;
    assert_eq!(status, 200);
    let blob = format!(
        "{}/blobs/{}.cairn",
        s.server.url,
        v1["bundle_sha256"].as_str().unwrap()
    );
    let served = reqwest::get(&blob).await.unwrap().bytes().await.unwrap();
    assert_eq!(
        served.as_ref(),
        std::fs::read(&s.releases.v1).unwrap().as_slice()
    );
    for name in [".upload-0011223344556677", "..%2Fcairn.db", "root.json"] {
        let r = reqwest::get(format!("{}/blobs/{name}", s.server.url))
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 404, "{name}");
    }
    let (status, body) = admin.upload(&s.releases.v1).await;
    assert_eq!((status, error_code(&body)), (409, "release-exists"));
    assert_eq!(std::fs::read_dir(&s.server.blobs).unwrap().count(), 1);
    // Other bytes under a version that exists: refused, and no orphan blob is left.
    let image = dir.path().join("other-rootfs");
    std::fs::write(&image, cairn_testkit::image_bytes(100 << 10, 9)).unwrap();
    let other = dir.path().join("other-1.0.0.cairn");
    common::make_bundle(&s.releases.key, "1.0.0", &[("rootfs", &image)], &[], &other);
    let (status, body) = admin.upload(&other).await;
    assert_eq!((status, error_code(&body)), (409, "release-exists"));
    assert_eq!(std::fs::read_dir(&s.server.blobs).unwrap().count(), 1);
    let (_, list) = admin.get("/admin/v1/releases").await;
    assert_eq!(list[0]["bundle_sha256"], v1["bundle_sha256"]);
}

#[tokio::test]
async fn a_server_without_a_trust_root_refuses_releases() {
    let dir = tempfile::tempdir().unwrap();
    let releases = Releases::build();
    let server = TestServer::start(
        &format!("sqlite://{}", dir.path().join("c.db").display()),
        None,
    )
    .await;
    let (status, body) = server.admin().upload(&releases.v1).await;
    assert_eq!((status, error_code(&body)), (409, "no-trust-root"));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_check_ins_record_a_version_change_once() {
    let s = setup().await;
    let mut d = devices(&s, 1).await.remove(0);
    for version in ["1.0.0", "1.1.0"] {
        d.version = version.into();
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.check_in().await })
            })
            .collect();
        for r in racers {
            assert_eq!(r.await.unwrap(), None);
        }
    }
    let (_, shown) = s
        .server
        .admin()
        .get(&format!("/admin/v1/devices/{}", d.id))
        .await;
    let versions: Vec<&str> = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["event"] == "version")
        .map(|h| h["detail"].as_str().unwrap())
        .collect();
    assert_eq!(
        versions,
        ["runs 1.1.0 (was 1.0.0)", "runs 1.0.0 (was nothing)"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_reports_on_sqlite_are_applied_once_each() {
    let s = setup().await;
    let d = devices(&s, 1).await.remove(0);
    running_campaign(&s).await;
    let a = d.check_in().await.unwrap();
    let send = |report_id: &'static str, state: ReportedState| {
        let (d, dep) = (d.clone(), a.deployment_id.clone());
        tokio::spawn(async move { d.report(&dep, report_id, state, None).await })
    };
    // The same report eight times at once: applied once.
    let same: Vec<_> = (0..8)
        .map(|_| send("r1", ReportedState::Downloading))
        .collect();
    let mut fresh = 0;
    for r in same {
        fresh += usize::from(r.await.unwrap()["duplicate"] == false);
    }
    assert_eq!(fresh, 1);
    // Different reports at once: all kept, and the state ends at the furthest one.
    let racing = [
        send("r2", ReportedState::Installing),
        send("r3", ReportedState::Rebooting),
        send("r2b", ReportedState::Downloading),
    ];
    for r in racing {
        assert_eq!(r.await.unwrap()["duplicate"], false);
    }
    let ack = d
        .report(&a.deployment_id, "r4", ReportedState::Committed, None)
        .await;
    assert_eq!(ack["deployment_state"], "succeeded");
    let (_, shown) = s
        .server
        .admin()
        .get(&format!("/admin/v1/devices/{}", d.id))
        .await;
    let reports = shown["history"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|h| h["detail"].as_str().unwrap().starts_with(&a.deployment_id))
        .count();
    assert_eq!(reports, 5, "r1, r2, r3, r2b, r4 each once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_check_ins_on_sqlite_get_one_deployment() {
    let s = setup().await;
    let fleet = devices(&s, 3).await;
    running_campaign(&s).await;
    for d in &fleet {
        let racers: Vec<_> = (0..8)
            .map(|_| {
                let d = d.clone();
                tokio::spawn(async move { d.check_in().await })
            })
            .collect();
        let mut ids = std::collections::BTreeSet::new();
        for r in racers {
            ids.insert(r.await.unwrap().expect("assigned").deployment_id);
        }
        assert_eq!(ids.len(), 1, "{} got {ids:?}", d.id);
    }
    let status = s.server.admin().campaign("c").await;
    assert_eq!(status["waves"][0]["assigned"], 3);
}

#[tokio::test]
async fn a_key_is_the_same_key_in_upper_and_lower_case_hex() {
    let s = setup().await;
    let mut d = SimDevice::new(&s.server.url, "dev-upper", vec![]);
    let line = format!("dev-upper,{},{COMPATIBLE},", d.public_key().to_uppercase());
    s.server
        .admin()
        .ok(
            "/admin/v1/devices/import",
            format!("device_id,public_key,compatible,tags\n{line}\n"),
        )
        .await;
    let answer = d.enroll().await;
    assert_eq!(
        (answer.status, answer.body["status"].as_str()),
        (200, Some("approved"))
    );
    d.login().await;
}
