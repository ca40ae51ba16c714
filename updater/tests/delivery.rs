//! How a bundle reaches the device: over HTTP from a real server on loopback (with
//! dropped connections), and every kind of bad bundle, which must be refused with an
//! error naming the problem and must leave the slots and the boot state as they were.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cairn_bundle::BundleFile;
use cairn_testkit::{copy_key, new_key};
use cairn_updater::bootstate::SlotId;
use common::http::{serve, Faults};
use common::*;
use time::{Duration, OffsetDateTime};

/// Where the payloads start in a bundle file.
fn payload_area(bundle: &Path) -> u64 {
    BundleFile::open(bundle)
        .unwrap()
        .bundle
        .header
        .payload_area_offset
}

fn flipped(original: &Path, at: u64, name: &str) -> PathBuf {
    let mut bytes = fs::read(original).unwrap();
    bytes[at as usize] ^= 0x40;
    let out = original.with_file_name(format!("{name}.cairn"));
    fs::write(&out, bytes).unwrap();
    out
}

/// The bytes an install must not change.
#[derive(PartialEq, Eq)]
struct Untouched {
    boot_copies: (Option<Vec<u8>>, Option<Vec<u8>>),
    slot_a: Vec<u8>,
    slot_b: Vec<u8>,
    kernel_b_exists: bool,
}

impl Untouched {
    fn of(d: &Device) -> Untouched {
        Untouched {
            boot_copies: (
                fs::read(d.path("boot/bootstate.0")).ok(),
                fs::read(d.path("boot/bootstate.1")).ok(),
            ),
            slot_a: fs::read(d.path("dev/rootfs-a")).unwrap(),
            slot_b: fs::read(d.path("dev/rootfs-b")).unwrap(),
            kernel_b_exists: d.path("boot/b/vmlinuz").exists(),
        }
    }
}

#[test]
fn every_bad_bundle_is_refused_and_nothing_is_written() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let key = || copy_key(&d.key);
    let good = d.bundle(&v2, None);
    let area = payload_area(&good);
    let len = fs::metadata(&good).unwrap().len();
    let truncated = good.with_file_name("truncated.cairn");
    fs::write(
        &truncated,
        &fs::read(&good).unwrap()[..(len * 6 / 10) as usize],
    )
    .unwrap();
    let stranger = new_key();

    let cases: Vec<(&str, PathBuf, &[&str])> = vec![
        ("truncated file", truncated, &["truncated"]),
        (
            "flipped header byte",
            flipped(&good, 41, "header"),
            &["header", "crc"],
        ),
        (
            "flipped manifest byte",
            flipped(&good, 64 + 40, "manifest"),
            &["manifest", "signature", "header"],
        ),
        (
            "flipped payload byte",
            flipped(&good, area + 1000, "payload"),
            &["payload", "hash"],
        ),
        (
            "unsigned",
            d.bundle_with(&v2, None, "unsigned", &[], |_| {}),
            &["signature"],
        ),
        (
            "signed by a key the device does not trust",
            d.bundle_with(&v2, None, "stranger", &[stranger], |_| {}),
            &["signature", "key"],
        ),
        (
            "built for another device type",
            d.bundle_with(&v2, None, "foreign", &[key()], |s| {
                s.compatible = "other-board".into()
            }),
            &["other-board"],
        ),
        (
            "expired",
            d.bundle_with(&v2, None, "expired", &[key()], |s| {
                s.created = OffsetDateTime::now_utc() - Duration::days(20);
                s.expires = OffsetDateTime::now_utc() - Duration::days(1);
            }),
            &["expired"],
        ),
        (
            "below the security floor (downgrade)",
            d.bundle_with(&v2, None, "downgrade", &[key()], |s| s.security_version = 0),
            &["security"],
        ),
    ];
    // The device has committed a release with security_version 1 before.
    let state_path = d.path("data/cairn/state.json");
    d.cairnd_once(); // first boot: cairnd writes its state
    let mut state: serde_json::Value =
        serde_json::from_slice(&fs::read(&state_path).unwrap()).unwrap();
    state["security_floor"] = 1.into();
    fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();

    for (what, bundle, words) in cases {
        let before = Untouched::of(&d);
        let err = d.cairn_err(&["install", bundle.to_str().unwrap()]);
        let last = err
            .lines()
            .find(|l| l.starts_with("Error:"))
            .unwrap_or_default()
            .to_lowercase();
        eprintln!("{what:45} -> {last}");
        assert!(
            words.iter().any(|w| last.contains(w)),
            "{what}: the error should name the problem ({words:?}):\n{err}"
        );
        assert!(
            before == Untouched::of(&d),
            "{what}: a slot or the boot state changed"
        );
        let s = d.status();
        assert_eq!(phase(&s), "committed", "{what}: {s:#}");
    }
    // And the good bundle still installs afterwards.
    d.cairn_ok(&["install", good.to_str().unwrap()]);
    assert!(d.holds(SlotId::B, &v2));
}

#[test]
fn http_install_resumes_after_the_server_drops_the_connection() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let bundle = d.bundle(&v2, None);
    let size = fs::metadata(&bundle).unwrap().len();
    let faults = Arc::new(Faults {
        drop_after: 300_000,
        drop_from: payload_area(&bundle),
        ..Faults::default()
    });
    faults.drops.store(3, Ordering::SeqCst);
    let (server, url) = d.serve_bundle(&bundle, faults.clone());

    let out = d.cairn(&["install", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(
        faults.drops.load(Ordering::SeqCst),
        0,
        "every drop happened"
    );
    assert!(stderr.contains("resuming"), "{stderr}");
    assert!(d.holds(SlotId::B, &v2));
    let fetched = server.body_bytes.load(Ordering::SeqCst);
    eprintln!(
        "bundle {size} bytes; fetched {fetched} bytes in {} requests",
        server.requests.load(Ordering::SeqCst)
    );
    assert!(
        fetched < size + size / 4,
        "resumed where it stopped instead of starting over ({fetched} of {size})"
    );
    assert_eq!(phase(&d.status()), "installed-pending");
}

#[test]
fn http_delta_install_fetches_only_the_delta_payloads() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let full_only = fs::metadata(d.bundle(&v2, None)).unwrap().len();
    let bundle = d.bundle(&v2, Some(&v1));
    let (server, url) = d.serve_bundle(&bundle, Arc::default());
    d.cairn_ok(&["install", &url]);
    assert!(d.holds(SlotId::B, &v2));
    let fetched = server.body_bytes.load(Ordering::SeqCst);
    eprintln!(
        "delta install fetched {fetched} bytes; the bundle has {} and a full-only one {full_only}",
        fs::metadata(&bundle).unwrap().len()
    );
    assert!(fetched * 3 < full_only, "{fetched} vs {full_only}");
}

#[test]
fn a_tampered_download_is_refused_and_the_slot_stays_unbootable() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = Release::new("2.0.0", 3);
    let d = Device::new(&v1);
    let good = d.bundle(&v2, None);
    let bad = flipped(&good, payload_area(&good) + 5000, "tampered");
    let server = serve(bad.parent().unwrap().to_path_buf(), Arc::default());
    d.allow_plain_http_from(&server.base());
    let boot_before = d.boot_state();
    let err = d.cairn_err(&["install", &server.url("tampered.cairn")]);
    assert!(err.to_lowercase().contains("hash"), "{err}");
    let boot = d.boot_state();
    assert_eq!(
        (boot.order[0], boot.tries_b, boot.committed),
        (boot_before.order[0], 0, SlotId::A),
        "slot B's boot state is as before: not bootable"
    );
    assert!(d.holds(SlotId::A, &v1));
    let s = d.status();
    assert_eq!(phase(&s), "failed", "{s:#}");
}
