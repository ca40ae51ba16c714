//! Device identity and enrollment: what binds a device to its keys (ed25519 key, TPM
//! endorsement key), the operator's lifecycle decisions on it, and what an outsider can
//! learn or exhaust through the enrollment endpoints.

mod common;

use std::process::Command;

use cairn_server_api::{paths, ReportedState, RotateKeyRequest, TokenRequest, TpmEnrollRequest};
use common::device::now;
use common::device::SimDevice;
use common::tpm::{ak_public, ek_public};
use common::TestServer;
use ed25519_dalek::SigningKey;

struct Setup {
    dir: tempfile::TempDir,
    db_url: String,
    server: TestServer,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let server = TestServer::start(&db_url, None).await;
    Setup {
        dir,
        db_url,
        server,
    }
}

impl Setup {
    /// A device pre-authorized by a factory import, enrolled and logged in.
    async fn device(&self, id: &str) -> SimDevice {
        let mut d = SimDevice::new(&self.server.url, id, vec![]);
        let csv = format!(
            "device_id,public_key,compatible,tags\n{}\n",
            d.factory_line("")
        );
        self.server
            .admin()
            .ok("/admin/v1/devices/import", csv)
            .await;
        assert_eq!(d.enroll().await.status, 200);
        d.login().await;
        d
    }

    /// Runs a `cairn-server` subcommand on this server's database; must succeed.
    fn cli(&self, args: &[&str]) -> serde_json::Value {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-server"))
            .args(["--db", &self.db_url, "--blobs"])
            .arg(self.dir.path().join("blobs"))
            .args(args)
            .env("RUST_LOG", "warn")
            .env("USER", "alice")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null)
    }

    async fn sql(&self, statement: &str, id: &str) {
        sqlx::query(statement)
            .bind(id)
            .execute(&self.server.state.db.pool)
            .await
            .unwrap();
    }
}

fn fresh_key() -> SigningKey {
    let mut seed = [0u8; 32];
    getrandom::getrandom(&mut seed).unwrap();
    SigningKey::from_bytes(&seed)
}

fn error_code(body: &serde_json::Value) -> &str {
    body["error"].as_str().unwrap_or("<no error code>")
}

async fn tpm_enroll(d: &SimDevice, ek: u8, ak: u8) -> (u16, String) {
    let request = TpmEnrollRequest {
        ek_public: ek_public(ek),
        ek_certificate: None,
        ak_public: ak_public(ak),
    };
    let answer = d.post_json(paths::TPM_ENROLL, &request, &[]).await;
    (answer.status, error_code(&answer.body).to_string())
}

#[tokio::test]
async fn a_device_cannot_swap_its_tpm_endorsement_key_by_re_enrolling_an_attestation_key() {
    let s = setup().await;
    let d = s.device("dev-tpm").await;
    assert_eq!(tpm_enroll(&d, 1, 1).await.0, 200);
    // The AK passed its challenge (ActivateCredential needs the EK's private key, which
    // this test does not have; the server's record of it is what matters here).
    s.sql("UPDATE devices SET ak_trusted_at = 1 WHERE id = $1", &d.id)
        .await;

    // EK1 with a new AK2 (a wiped data partition): the same TPM, accepted.
    assert_eq!(tpm_enroll(&d, 1, 2).await.0, 200);
    // Then EK2: another TPM. Refused, although the re-enrollment cleared the AK's trust.
    assert_eq!(tpm_enroll(&d, 2, 2).await, (409, "ek-changed".into()));
    assert_eq!(tpm_enroll(&d, 2, 3).await, (409, "ek-changed".into()));
    assert_eq!(
        tpm_enroll(&d, 1, 3).await.0,
        200,
        "EK1 is still the bound one"
    );

    // The operator unbinds it; the next enrollment binds EK2.
    s.cli(&["device", "reset-tpm", &d.id]);
    assert_eq!(tpm_enroll(&d, 2, 2).await.0, 200);
    assert_eq!(tpm_enroll(&d, 1, 1).await, (409, "ek-changed".into()));

    let audit = s.cli(&["device", "audit"]);
    assert_eq!(audit[0]["action"], "reset-tpm", "{audit}");
    assert_eq!(audit[0]["device_id"], d.id);
    assert_eq!(audit[0]["actor"], "cli:alice");
    let (_, shown) = s
        .server
        .admin()
        .get(&format!("/admin/v1/devices/{}", d.id))
        .await;
    let history = shown["history"].as_array().unwrap();
    assert!(history.iter().any(|h| h["event"] == "reset-tpm"), "{shown}");
}

#[tokio::test]
async fn token_requests_do_not_tell_unknown_device_ids_from_bad_signatures() {
    let s = setup().await;
    let mut d = s.device("dev-known").await;
    let mut stranger = SimDevice::new(&s.server.url, "dev-unknown", vec![]);

    // Correctly signed by a key nobody enrolled, for an id nobody has.
    let request = stranger.token_request();
    let unknown = stranger.post_json(paths::TOKEN, &request, &[]).await;
    // Signed by the wrong key, for an id that exists.
    let request = d.token_request();
    let forged = TokenRequest::sign(&stranger.key, &d.id, request.timestamp, &request.nonce);
    let known = d.post_json(paths::TOKEN, &forged, &[]).await;
    assert_eq!((unknown.status, &unknown.body), (known.status, &known.body));
    assert_eq!(
        (known.status, error_code(&known.body)),
        (401, "unknown-device")
    );

    // A malformed signature reads the same for both too.
    let mut garbled = stranger.token_request();
    garbled.signature = "00".into();
    let unknown = stranger.post_json(paths::TOKEN, &garbled, &[]).await;
    garbled.device_id = d.id.clone();
    let known = d.post_json(paths::TOKEN, &garbled, &[]).await;
    assert_eq!((unknown.status, &unknown.body), (known.status, &known.body));
    // The device itself still gets its token.
    d.login().await;
}

#[tokio::test]
async fn a_nonce_purged_at_the_edge_of_the_window_is_not_accepted_again() {
    use cairn_server::auth::{consume_nonce, purge_nonces, CLOCK_SKEW_SECS};
    use cairn_server::db::{now_ms, Db};

    let dir = tempfile::tempdir().unwrap();
    let db = Db::connect(&format!("sqlite://{}", dir.path().join("n.db").display()))
        .await
        .unwrap();
    // Early in a second (with time to spare before the next one), a request stamped
    // exactly the window's width ago: its nonce's expiry is this second's first
    // millisecond, so the purge drops it now.
    while !(100..600).contains(&(now_ms() % 1000)) {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    let timestamp = now_ms() / 1000 - CLOCK_SKEW_SECS;
    let nonce = "00112233445566778899aabbccddeeff";
    let first = consume_nonce(&db, "dev-1", timestamp, nonce).await;
    purge_nonces(&db).await.unwrap();
    let second = consume_nonce(&db, "dev-1", timestamp, nonce).await;
    assert!(
        first.is_err() || second.is_err(),
        "the same signed request was accepted twice"
    );
}

#[tokio::test]
async fn a_revoked_device_is_refused_on_every_endpoint_and_shown_as_revoked() {
    let s = setup().await;
    let admin = s.server.admin();
    let mut d = s.device("dev-stolen").await;
    assert_eq!(d.check_in_raw(None).await.status, 200);

    let (status, shown) = admin
        .post(&format!("/admin/v1/devices/{}/revoke", d.id), "")
        .await;
    assert_eq!(status, 200, "{shown}");
    assert_eq!(shown["device"]["approval"], "revoked");

    // The token it holds was issued before: still refused, everywhere.
    let revoked = (403, "revoked".to_string());
    let answer = d.check_in_raw(None).await;
    assert_eq!(
        (answer.status, error_code(&answer.body).to_string()),
        revoked
    );
    let answer = d
        .report_raw("dep-any", "r1", ReportedState::Downloading, None)
        .await;
    assert_eq!(
        (answer.status, error_code(&answer.body).to_string()),
        revoked
    );
    assert_eq!(tpm_enroll(&d, 1, 1).await, revoked);
    let evidence = cairn_server_api::AttestationEvidence {
        nonce: "00".into(),
        quote: "00".into(),
        signature: "00".into(),
        event_log: serde_json::json!({ "events": [] }),
    };
    let answer = d
        .post_json(&paths::attestation("dep-any"), &evidence, &[])
        .await;
    assert_eq!(
        (answer.status, error_code(&answer.body).to_string()),
        revoked
    );
    let request = d.token_request();
    let answer = d.post_json(paths::TOKEN, &request, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body).to_string()),
        revoked
    );
    let answer = d.enroll().await;
    assert_eq!(
        (answer.status, error_code(&answer.body).to_string()),
        revoked
    );

    // Revoked for good: approving it again is refused, revoking again too.
    let (status, body) = admin
        .post(&format!("/admin/v1/devices/{}/approve", d.id), "")
        .await;
    assert_eq!((status, error_code(&body)), (409, "revoked"));
    let (status, body) = admin
        .post(&format!("/admin/v1/devices/{}/revoke", d.id), "")
        .await;
    assert_eq!((status, error_code(&body)), (409, "already-revoked"));

    let (_, listed) = admin.get("/admin/v1/devices").await;
    assert_eq!(listed[0]["approval"], "revoked");
    let page = s.server.page("/ui/devices").await;
    assert!(page.contains("<td>revoked</td>"), "{page}");
    let (_, audit) = admin.get("/admin/v1/audit").await;
    assert_eq!(
        (&audit[0]["action"], &audit[0]["actor"]),
        (
            &serde_json::json!("revoke"),
            &serde_json::json!("admin-api")
        )
    );
    // The same entry on the dashboard's audit page.
    let page = s.server.page("/ui/audit").await;
    let row = format!(
        "<td>admin-api</td><td>revoke</td><td><a href=\"/ui/devices/{id}\">{id}</a></td>",
        id = d.id
    );
    assert!(page.contains(&row), "{page}");
    let anonymous = reqwest::get(format!("{}/ui/audit", s.server.url))
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 401);
}

#[tokio::test]
async fn a_rejected_enrollment_cannot_enroll_again_until_an_operator_approves_it() {
    let s = setup().await;
    let mut newcomer = SimDevice::new(&s.server.url, "dev-new", vec![]);
    assert_eq!(newcomer.enroll().await.status, 202);
    let shown = s.cli(&["device", "reject", "dev-new"]);
    assert_eq!(shown["approval"], "rejected");

    let answer = newcomer.enroll().await;
    assert_eq!((answer.status, error_code(&answer.body)), (403, "rejected"));
    let request = newcomer.token_request();
    let answer = newcomer.post_json(paths::TOKEN, &request, &[]).await;
    assert_eq!((answer.status, error_code(&answer.body)), (403, "rejected"));
    // Nor can another key take the id over.
    let mut other = SimDevice::new(&s.server.url, "dev-new", vec![]);
    let answer = other.enroll().await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (403, "key-mismatch")
    );
    // Only pending enrollments can be rejected.
    let d = s.device("dev-known").await;
    let (status, body) = s
        .server
        .admin()
        .post(&format!("/admin/v1/devices/{}/reject", d.id), "")
        .await;
    assert_eq!((status, error_code(&body)), (409, "not-pending"));

    // The operator changes their mind.
    s.server
        .admin()
        .ok("/admin/v1/devices/dev-new/approve", "")
        .await;
    assert_eq!(newcomer.enroll().await.status, 200);
    newcomer.login().await;
    let log = s.cli(&["device", "audit"]);
    let actions: Vec<(&str, &str)> = log
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["action"].as_str().unwrap(), e["actor"].as_str().unwrap()))
        .collect();
    assert_eq!(
        &actions[..2],
        [("approve", "admin-api"), ("reject", "cli:alice")],
        "newest first: the change of mind, then the rejection"
    );
}

#[tokio::test]
async fn an_enrollment_cannot_squat_an_id_a_factory_import_brings_later() {
    let s = setup().await;
    let admin = s.server.admin();
    let owned = s.device("dev-owned").await;
    // Someone enrolls the id the factory will ship, before the manifest is imported.
    let mut squatter = SimDevice::new(&s.server.url, "dev-f1", vec![]);
    assert_eq!(squatter.enroll().await.status, 202);
    let mut rejected = SimDevice::new(&s.server.url, "dev-f3", vec![]);
    assert_eq!(rejected.enroll().await.status, 202);
    s.cli(&["device", "reject", "dev-f3"]);

    let mut real = SimDevice::new(&s.server.url, "dev-f1", vec![]);
    let fresh = SimDevice::new(&s.server.url, "dev-f2", vec![]);
    let mut real_f3 = SimDevice::new(&s.server.url, "dev-f3", vec![]);
    let impostor = SimDevice::new(&s.server.url, &owned.id, vec![]);
    let csv = format!(
        "device_id,public_key,compatible,tags\n{}\n{}\n{}\n{}\n",
        real.factory_line("eu"),
        fresh.factory_line(""),
        impostor.factory_line(""),
        real_f3.factory_line(""),
    );
    let (status, summary) = admin.post("/admin/v1/devices/import", csv).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["imported"], 3, "{summary}");
    assert_eq!(summary["replaced"], serde_json::json!(["dev-f1", "dev-f3"]));
    assert_eq!(summary["refused"].as_array().unwrap().len(), 1);
    assert_eq!(summary["refused"][0]["device_id"], owned.id.as_str());

    // The factory's device is the one that gets in.
    let answer = real.enroll().await;
    assert_eq!(
        (answer.status, &answer.body["status"]),
        (200, &serde_json::json!("approved"))
    );
    real.login().await;
    assert_eq!(real_f3.enroll().await.status, 200);
    let answer = squatter.enroll().await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (403, "key-mismatch")
    );
    let (_, shown) = admin.get(&format!("/admin/v1/devices/{}", owned.id)).await;
    assert_eq!(shown["device"]["public_key"], owned.public_key());
    let (_, audit) = admin.get("/admin/v1/audit").await;
    let replaced: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "import-replaced")
        .map(|a| a["device_id"].as_str().unwrap())
        .collect();
    assert_eq!(replaced.len(), 2, "{audit}");
}

#[tokio::test]
async fn enrollments_of_unknown_ids_are_bounded_per_source_and_in_all() {
    let dir = tempfile::tempdir().unwrap();
    let db_url = format!("sqlite://{}", dir.path().join("cairn.db").display());
    let server = TestServer::start_with(&db_url, None, |c| {
        c.enroll_limits.per_source = 2;
        c.enroll_limits.max_pending = 3;
    })
    .await;
    // Devices connecting from different loopback addresses are different sources.
    let from = |source: [u8; 4], id: &str| {
        let mut d = SimDevice::new(&server.url, id, vec![]);
        d.http = reqwest::Client::builder()
            .local_address(std::net::IpAddr::from(source))
            .build()
            .unwrap();
        d
    };
    let limited =
        |answer: &common::device::Answer| (answer.status, error_code(&answer.body).to_string());
    let mut first = from([127, 0, 0, 1], "new-1");
    assert_eq!(first.enroll().await.status, 202);
    assert_eq!(from([127, 0, 0, 1], "new-2").enroll().await.status, 202);
    let answer = from([127, 0, 0, 1], "new-3").enroll().await;
    assert_eq!(
        limited(&answer),
        (429, "enrollment-limit".into()),
        "per source"
    );
    // Enrolling again under an id already recorded is not a new id.
    assert_eq!(first.enroll().await.status, 202);

    assert_eq!(from([127, 0, 0, 2], "new-4").enroll().await.status, 202);
    let answer = from([127, 0, 0, 3], "new-5").enroll().await;
    assert_eq!(limited(&answer), (429, "enrollment-limit".into()), "in all");
    // A refused enrollment leaves nothing behind.
    let (_, listed) = server.admin().get("/admin/v1/devices").await;
    assert_eq!(listed.as_array().unwrap().len(), 3, "{listed}");

    // Pre-authorized devices are not limited, and a rejection frees a place.
    let mut known = from([127, 0, 0, 3], "factory-1");
    let csv = format!(
        "device_id,public_key,compatible,tags\n{}\n",
        known.factory_line("")
    );
    server.admin().ok("/admin/v1/devices/import", csv).await;
    assert_eq!(known.enroll().await.status, 200);
    server
        .admin()
        .ok("/admin/v1/devices/new-4/reject", "")
        .await;
    assert_eq!(from([127, 0, 0, 3], "new-5").enroll().await.status, 202);
}

#[tokio::test]
async fn a_rotated_key_needs_both_keys_and_the_old_key_is_refused_after() {
    let s = setup().await;
    let mut d = s.device("dev-rotate").await;
    let old = d.key.clone();
    let new = fresh_key();
    let attacker = fresh_key();
    let rotate = |d: &mut SimDevice, by: &SigningKey, to: &SigningKey| {
        let nonce = d.nonce();
        RotateKeyRequest::sign(by, to, &d.id, now(), &nonce)
    };

    // Someone holding only a key of their own cannot rotate the device's key to it.
    let forged = rotate(&mut d, &attacker, &attacker);
    let answer = d.post_json(paths::ROTATE_KEY, &forged, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "unknown-device")
    );
    // Nor can the old key alone point the device at a key nobody proved to hold.
    let mut unproven = rotate(&mut d, &old, &new);
    unproven.new_public_key = hex::encode(attacker.verifying_key().as_bytes());
    let answer = d.post_json(paths::ROTATE_KEY, &unproven, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "unknown-device")
    );
    // An unknown id reads like a bad signature here too.
    let mut stranger = SimDevice::new(&s.server.url, "dev-nobody", vec![]);
    let request = rotate(&mut stranger, &attacker, &new);
    let answer = stranger.post_json(paths::ROTATE_KEY, &request, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "unknown-device")
    );

    let request = rotate(&mut d, &old, &new);
    let answer = d.post_json(paths::ROTATE_KEY, &request, &[]).await;
    assert_eq!(answer.status, 200, "{}", answer.body);
    assert_eq!(
        answer.body["public_key"],
        hex::encode(new.verifying_key().as_bytes())
    );
    // Replayed: the old key no longer verifies.
    let answer = d.post_json(paths::ROTATE_KEY, &request, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "unknown-device")
    );

    // The old key is refused from now on, the new one works.
    let request = d.token_request();
    let answer = d.post_json(paths::TOKEN, &request, &[]).await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (401, "unknown-device")
    );
    let answer = d.enroll().await;
    assert_eq!(
        (answer.status, error_code(&answer.body)),
        (403, "key-mismatch")
    );
    d.key = new;
    d.login().await;
    assert_eq!(d.check_in_raw(None).await.status, 200);
    assert_eq!(d.enroll().await.status, 200);
    let (_, shown) = s
        .server
        .admin()
        .get(&format!("/admin/v1/devices/{}", d.id))
        .await;
    assert_eq!(shown["device"]["public_key"], d.public_key());
    assert_eq!(shown["history"][1]["event"], "key-rotated", "{shown}");

    // A revoked device cannot rotate its way back in.
    s.cli(&["device", "revoke", &d.id]);
    let next = fresh_key();
    let key = d.key.clone();
    let request = rotate(&mut d, &key, &next);
    let answer = d.post_json(paths::ROTATE_KEY, &request, &[]).await;
    assert_eq!((answer.status, error_code(&answer.body)), (403, "revoked"));
}
