//! A signed server override on the data partition, as the real `cairn status` sees it:
//! taken when the device's trust root signed it for this device, refused (with the reason,
//! the image's server kept) when a foreign key signed it, it was edited, it names other
//! devices, or what it names would not pass system.toml's own checks.

mod common;

use std::fs;

use cairn_bundle::{SignedServerOverride, SigningKey};
use cairn_testkit::TestCa;
use common::*;

const IMAGE_URL: &str = "https://updates.example:8443";
const SITE_URL: &str = "https://site-3.example:8443";

fn device() -> (Device, tempfile::TempDir) {
    let d = Device::new(&Release::new("1.0.0", 1));
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("image-ca.pem");
    TestCa::new("image CA").write_cert(&ca);
    d.use_server(IMAGE_URL, &ca, "dev-override-1");
    fs::create_dir_all(d.path("data/cairn")).unwrap();
    (d, dir)
}

fn write_override(d: &Device, o: &SignedServerOverride) {
    fs::write(d.path("data/cairn/server-override.json"), o.to_json()).unwrap();
}

fn signed(
    key: &SigningKey,
    url: &str,
    ca_pem: Option<String>,
    devices: &[&str],
) -> SignedServerOverride {
    let devices = devices.iter().map(|d| d.to_string()).collect();
    let mut o = SignedServerOverride::new(url, ca_pem, devices);
    o.sign(key).unwrap();
    o
}

/// (server URL in effect, override outcome, its detail) from `cairn status --json`.
fn server_in_effect(d: &Device) -> (String, String, String) {
    let s = d.status();
    (
        s["server"].as_str().unwrap_or_default().to_string(),
        s["server_override"]["outcome"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        s["server_override"]["detail"].to_string(),
    )
}

#[test]
fn without_an_override_the_image_server_is_used() {
    let (d, _ca) = device();
    assert_eq!(server_in_effect(&d).0, IMAGE_URL);
    assert_eq!(server_in_effect(&d).1, "absent");
}

#[test]
fn an_override_signed_by_the_trust_root_replaces_url_and_ca() {
    let (d, _ca) = device();
    let site_ca = TestCa::new("site CA").cert_pem();
    write_override(
        &d,
        &signed(&d.key, SITE_URL, Some(site_ca), &["dev-override-1"]),
    );
    let (url, outcome, _) = server_in_effect(&d);
    assert_eq!((url.as_str(), outcome.as_str()), (SITE_URL, "applied"));
    let text = d.cairn_ok(&["status"]);
    assert!(text.contains("signed server override"), "{text}");
}

#[test]
fn a_foreign_edited_misdirected_or_invalid_override_is_refused_and_the_image_server_stays() {
    let (d, _ca) = device();
    let foreign = SigningKey::generate().unwrap();
    let mut edited = signed(&d.key, SITE_URL, None, &[]);
    edited.signed.url = "https://attacker.example".into();
    let cases = [
        (
            signed(&foreign, SITE_URL, None, &[]),
            "not in the trust root",
        ),
        (edited, "signature"),
        (
            signed(&d.key, SITE_URL, None, &["dev-other"]),
            "not for dev-override-1",
        ),
        (
            signed(&d.key, "http://site-3.example", None, &[]),
            "plain http",
        ),
        (
            signed(&d.key, SITE_URL, Some("not a certificate".into()), &[]),
            "no PEM certificate",
        ),
    ];
    for (o, reason) in cases {
        write_override(&d, &o);
        let (url, outcome, detail) = server_in_effect(&d);
        assert_eq!(url, IMAGE_URL, "{detail}");
        assert_eq!(outcome, "refused", "{detail}");
        assert!(
            detail.to_lowercase().contains(&reason.to_lowercase()),
            "{detail} should say {reason}"
        );
    }
    fs::write(d.path("data/cairn/server-override.json"), b"{ not json").unwrap();
    let (url, outcome, detail) = server_in_effect(&d);
    assert_eq!((url.as_str(), outcome.as_str()), (IMAGE_URL, "refused"));
    assert!(detail.contains("server override"), "{detail}");
    let text = d.cairn_ok(&["status"]);
    assert!(text.contains("server override REFUSED"), "{text}");
}
