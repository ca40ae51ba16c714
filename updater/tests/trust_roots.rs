//! Trust-root rotation on the device: only roots that verified are ever kept.

mod common;

use std::fs;

use cairn_bundle::{SignedRoot, SigningKey};
use common::{Device, Release};
use time::{Duration, OffsetDateTime};

fn root(version: u64, keys: &[&SigningKey], signers: &[&SigningKey]) -> SignedRoot {
    let mut root = SignedRoot::new(
        version,
        OffsetDateTime::now_utc() + Duration::days(30),
        1,
        keys.iter().map(|k| k.public()).collect(),
    );
    for key in signers {
        root.sign(key).unwrap();
    }
    root
}

fn copy(key: &SigningKey) -> SigningKey {
    SigningKey::from_json(&key.to_json()).unwrap()
}

/// Installs `bundle`, reboots into it and lets cairnd commit it.
fn install_and_commit(d: &mut Device, bundle: &std::path::Path) {
    d.cairn_ok(&["install", bundle.to_str().unwrap()]);
    d.reboot();
    let out = d.cairnd_once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(common::phase(&d.status()), "committed");
}

#[test]
fn an_unverified_future_root_is_never_stored_and_never_blocks_later_installs() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let v3 = Release::new("3.0.0", 5);
    let mut d = Device::new(&v1);
    d.health_check("ok", "kind = \"command\"\ncommand = [\"true\"]\n");
    // The device trusts root v1 (d.key). Root v2 (key2) is a proper rotation, signed by
    // both; "v3" is signed only by its own key, as an attacker or a mistake would make it.
    let key2 = SigningKey::generate().unwrap();
    let stranger = SigningKey::generate().unwrap();
    let good_v2 = root(2, &[&key2], &[&d.key, &key2]);
    let unsigned_v3 = root(3, &[&stranger], &[&stranger]);
    let carrying_both = d.bundle_with(&v2, None, "2.0.0", &[copy(&key2)], |spec| {
        spec.roots = vec![good_v2.clone(), unsigned_v3.clone()]
    });
    install_and_commit(&mut d, &carrying_both);

    let stored: Vec<SignedRoot> =
        serde_json::from_slice(&fs::read(d.path("data/cairn/roots.json")).unwrap()).unwrap();
    assert_eq!(stored, vec![good_v2], "only the root that verified is kept");

    // A later bundle signed under v2 installs: the bad v3 left nothing behind to trip on.
    let next = d.bundle_with(&v3, None, "3.0.0", &[copy(&key2)], |_| {});
    install_and_commit(&mut d, &next);
    assert_eq!(d.status()["slots"]["A"]["version"], "3.0.0");
}
