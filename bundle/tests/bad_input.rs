//! Every class of bad input from the foundation issue: each is rejected with an error that
//! names the problem, before a single image byte would be trusted.

mod common;

use std::fs;
use std::io::{self, Cursor};

use cairn_bundle::header::{Header, HEADER_LEN};
use cairn_bundle::{decode_payload, BundleFile, Error, Policy, TrustRoot, UnverifiedBundle};
use cairn_testkit::{image_bytes, in_days, new_key, root_with};
use common::*;
use serde_json::json;
use time::{Duration, OffsetDateTime};

fn device_policy() -> Policy {
    Policy {
        compatible: Some("cairn-test".into()),
        security_floor: 0,
        now: OffsetDateTime::now_utc(),
    }
}

/// Opens, verifies and decodes every full payload; returns the first error.
fn install_all(path: &std::path::Path, root: &TrustRoot, policy: &Policy) -> Result<(), Error> {
    let file = BundleFile::open(path)?;
    let verified = file.verify(root, policy)?;
    for image in &verified.manifest.images {
        file.extract_full(image, io::sink())?;
    }
    Ok(())
}

fn expect_err(path: &std::path::Path, root: &TrustRoot, policy: &Policy) -> Error {
    install_all(path, root, policy).expect_err("bundle must be rejected")
}

#[test]
fn a_good_bundle_installs() {
    let fx = Fixture::new();
    install_all(&fx.standard_bundle(), &fx.root, &device_policy()).unwrap();
}

#[test]
fn truncated_file_is_named_as_truncated() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let full = fs::read(&path).unwrap();
    for keep in [10, HEADER_LEN + 5, 5000, full.len() - 1] {
        fs::write(&path, &full[..keep]).unwrap();
        let err = expect_err(&path, &fx.root, &device_policy());
        assert!(matches!(err, Error::Truncated { .. }), "keep {keep}: {err}");
        assert!(err.to_string().contains("truncated"), "{err}");
    }
}

#[test]
fn truncated_stream_is_named_while_streaming() {
    // A download cut short: the metadata verified, the payload stream ends early.
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let file = BundleFile::open(&path).unwrap();
    let verified = file.verify(&fx.root, &device_policy()).unwrap();
    let image = verified.manifest.image("rootfs").unwrap();
    let bytes = fs::read(&path).unwrap();
    let start = (verified.header.payload_area_offset + image.full.offset) as usize;
    let cut = &bytes[start..start + image.full.size as usize / 2];
    let err = decode_payload(image, &image.full, Cursor::new(cut), None, io::sink()).unwrap_err();
    assert!(matches!(err, Error::PayloadTruncated { .. }), "{err}");
}

#[test]
fn flipped_header_byte_is_rejected() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    for offset in [0, 9, 17, 33, 45, 61] {
        let copy = fx.path("copy.cairn");
        fs::copy(&path, &copy).unwrap();
        flip_byte(&copy, offset);
        let err = expect_err(&copy, &fx.root, &device_policy());
        assert!(
            matches!(
                err,
                Error::BadMagic(_)
                    | Error::HeaderChecksum { .. }
                    | Error::UnsupportedFormatVersion { .. }
            ),
            "offset {offset}: {err}"
        );
    }
}

#[test]
fn flipped_manifest_byte_is_rejected() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let header = BundleFile::open(&path).unwrap().bundle.header;
    for offset in header.manifest_range().step_by(37) {
        let copy = fx.path("copy.cairn");
        fs::copy(&path, &copy).unwrap();
        flip_byte(&copy, offset as u64);
        match expect_err(&copy, &fx.root, &device_policy()) {
            Error::Json {
                what: "manifest", ..
            }
            | Error::ManifestInvalid(_) => {}
            Error::SignatureThreshold {
                what: "manifest",
                valid: 0,
                ..
            } => {}
            other => panic!("offset {offset}: unexpected {other}"),
        }
    }
    // A change that keeps the manifest well-formed is caught by the signature alone.
    let mut bytes = fs::read(&path).unwrap();
    let manifest = &mut bytes[header.manifest_range()];
    let at = manifest.windows(5).position(|w| w == b"1.2.3").unwrap();
    manifest[at + 4] = b'4';
    fs::write(&path, bytes).unwrap();
    let err = expect_err(&path, &fx.root, &device_policy());
    assert!(
        matches!(
            err,
            Error::SignatureThreshold {
                what: "manifest",
                valid: 0,
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn flipped_payload_byte_is_rejected() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let file = BundleFile::open(&path).unwrap();
    let header = file.bundle.header;
    let image = file.bundle.manifest.image("rootfs").unwrap().clone();
    for delta in [0, image.full.size / 3, image.full.size - 1] {
        let copy = fx.path("copy.cairn");
        fs::copy(&path, &copy).unwrap();
        flip_byte(
            &copy,
            header.payload_area_offset + image.full.offset + delta,
        );
        let err = expect_err(&copy, &fx.root, &device_policy());
        assert!(
            matches!(
                err,
                Error::PayloadHashMismatch { .. }
                    | Error::PayloadCorrupt { .. }
                    | Error::ImageHashMismatch { .. }
            ),
            "payload byte {delta}: {err}"
        );
    }
}

#[test]
fn missing_and_bad_signatures_are_rejected() {
    let fx = Fixture::new();
    let rootfs = fx.image("rootfs.img", 100_000, 1);
    let spec = fx.spec(&[("rootfs", &rootfs)]);
    let (unsigned, _) = fx.build(&spec, &[], "unsigned.cairn");
    let err = expect_err(&unsigned, &fx.root, &device_policy());
    assert!(err.to_string().contains("no signatures"), "{err}");

    let (signed, _) = fx.build(&spec, &[&fx.key], "signed.cairn");
    let header = BundleFile::open(&signed).unwrap().bundle.header;
    // Change one hex digit inside the signature value (the last bytes before `"}]`).
    let sig_end = header.signatures_range().end as u64;
    let mut bytes = fs::read(&signed).unwrap();
    let i = (sig_end - 4) as usize;
    bytes[i] = if bytes[i] == b'0' { b'1' } else { b'0' };
    fs::write(&signed, bytes).unwrap();
    let err = expect_err(&signed, &fx.root, &device_policy());
    assert!(
        matches!(err, Error::SignatureThreshold { valid: 0, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("does not verify"), "{err}");
}

#[test]
fn signatures_below_threshold_are_rejected() {
    let fx = Fixture::new();
    let (a, b) = (new_key(), new_key());
    let root = TrustRoot::anchor(root_with(&[&a, &b], 1, 2, in_days(10))).unwrap();
    let rootfs = fx.image("rootfs.img", 100_000, 1);
    let spec = fx.spec(&[("rootfs", &rootfs)]);
    let (one, _) = fx.build(&spec, &[&a], "one.cairn");
    let err = expect_err(&one, &root, &device_policy());
    assert!(
        matches!(
            err,
            Error::SignatureThreshold {
                valid: 1,
                threshold: 2,
                ..
            }
        ),
        "{err}"
    );
    // The same key twice is still one signer.
    let (twice, _) = fx.build(&spec, &[&a, &a], "twice.cairn");
    let err = expect_err(&twice, &root, &device_policy());
    assert!(
        matches!(err, Error::SignatureThreshold { valid: 1, .. }),
        "{err}"
    );
    let (both, _) = fx.build(&spec, &[&a, &b], "both.cairn");
    install_all(&both, &root, &device_policy()).unwrap();
}

#[test]
fn key_not_in_root_is_rejected() {
    let fx = Fixture::new();
    let stranger = new_key();
    let rootfs = fx.image("rootfs.img", 100_000, 1);
    let (path, _) = fx.build(
        &fx.spec(&[("rootfs", &rootfs)]),
        &[&stranger],
        "foreign.cairn",
    );
    let err = expect_err(&path, &fx.root, &device_policy());
    assert!(err.to_string().contains("not in the trust root"), "{err}");
}

#[test]
fn expired_manifest_is_rejected() {
    let fx = Fixture::new();
    let rootfs = fx.image("rootfs.img", 100_000, 1);
    let mut spec = fx.spec(&[("rootfs", &rootfs)]);
    spec.created = OffsetDateTime::now_utc() - Duration::days(10);
    spec.expires = OffsetDateTime::now_utc() - Duration::days(1);
    let (path, _) = fx.build(&spec, &[&fx.key], "old.cairn");
    let err = expect_err(&path, &fx.root, &device_policy());
    assert!(matches!(err, Error::Expired { .. }), "{err}");
    assert!(err.to_string().contains("manifest expired"), "{err}");
}

#[test]
fn expired_root_is_rejected() {
    let fx = Fixture::new();
    let root = TrustRoot::anchor(root_with(
        &[&fx.key],
        1,
        1,
        OffsetDateTime::now_utc() - Duration::days(1),
    ))
    .unwrap();
    let err = expect_err(&fx.standard_bundle(), &root, &device_policy());
    assert!(err.to_string().contains("trust root v1 expired"), "{err}");
}

#[test]
fn root_rotation_is_followed_forward_when_both_roots_signed_it() {
    let fx = Fixture::new();
    let new_key = new_key();
    let mut v2 = root_with(&[&new_key], 2, 1, in_days(100));
    v2.sign(&fx.key).unwrap(); // the old root's key approves the rotation
    let rootfs = fx.image("rootfs.img", 100_000, 1);
    let mut spec = fx.spec(&[("rootfs", &rootfs)]);
    spec.roots = vec![v2];
    let (path, _) = fx.build(&spec, &[&new_key], "rotated.cairn");
    let verified = BundleFile::open(&path)
        .unwrap()
        .verify(&fx.root, &device_policy())
        .unwrap();
    assert_eq!(verified.root.version(), 2);
}

#[test]
fn root_rotation_not_signed_by_old_root_is_rejected() {
    let fx = Fixture::new();
    let attacker = new_key();
    let v2 = root_with(&[&attacker], 2, 1, in_days(100)); // self-signed only
    let rootfs = fx.image("rootfs.img", 100_000, 1);
    let mut spec = fx.spec(&[("rootfs", &rootfs)]);
    spec.roots = vec![v2];
    let (path, _) = fx.build(&spec, &[&attacker], "hijack.cairn");
    let err = expect_err(&path, &fx.root, &device_policy());
    assert!(
        matches!(err, Error::RootRotation { from: 1, to: 2, .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("not signed by the current root"),
        "{err}"
    );
}

#[test]
fn root_rotation_not_signed_by_its_own_keys_is_rejected() {
    let fx = Fixture::new();
    let new_key = new_key();
    let mut v2 = cairn_bundle::SignedRoot::new(2, in_days(100), 1, vec![new_key.public()]);
    v2.sign(&fx.key).unwrap(); // old key only: the new keyholders never agreed
    let err = TrustRoot::anchor(root_with(&[&fx.key], 1, 1, in_days(10)))
        .unwrap()
        .rotate(v2)
        .unwrap_err();
    assert!(
        err.to_string().contains("not signed by its own keys"),
        "{err}"
    );
}

#[test]
fn wrong_compatible_is_rejected() {
    let fx = Fixture::new();
    let mut policy = device_policy();
    policy.compatible = Some("cairn-rpi4".into());
    let err = expect_err(&fx.standard_bundle(), &fx.root, &policy);
    assert_eq!(
        err.to_string(),
        "bundle is for 'cairn-test', this device is 'cairn-rpi4'"
    );
}

#[test]
fn security_version_below_floor_is_rejected() {
    let fx = Fixture::new();
    let mut policy = device_policy();
    policy.security_floor = 6;
    let err = expect_err(&fx.standard_bundle(), &fx.root, &policy);
    assert!(
        matches!(
            err,
            Error::BelowSecurityFloor {
                bundle: 5,
                floor: 6
            }
        ),
        "{err}"
    );
}

#[test]
fn signed_payload_offset_outside_the_file_is_rejected() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let out = fx.path("hostile.cairn");
    resign_with_edit(&path, &fx.key, &out, |m| {
        m["images"][0]["full"]["offset"] = json!(1u64 << 40);
    });
    let err = expect_err(&out, &fx.root, &device_policy());
    assert!(matches!(err, Error::PayloadOutOfBounds { .. }), "{err}");
    resign_with_edit(&path, &fx.key, &out, |m| {
        m["images"][0]["full"]["size"] = json!(u64::MAX - 10);
    });
    let err = expect_err(&out, &fx.root, &device_policy());
    assert!(matches!(err, Error::PayloadOutOfBounds { .. }), "{err}");
}

#[test]
fn signed_overlapping_payloads_are_rejected() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let out = fx.path("hostile.cairn");
    resign_with_edit(&path, &fx.key, &out, |m| {
        let first = m["images"][0]["full"]["offset"].clone();
        m["images"][1]["full"]["offset"] = first;
    });
    let err = expect_err(&out, &fx.root, &device_policy());
    assert!(matches!(err, Error::PayloadOverlap { .. }), "{err}");
}

#[test]
fn sizes_that_would_exhaust_memory_are_rejected_before_allocating() {
    // A header claiming a 4 GiB manifest is refused from the 64 header bytes alone.
    let mut header = Header::layout(100, 10, 0, 4096).unwrap().encode();
    header[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let crc = crc32(&header[..60]);
    header[60..64].copy_from_slice(&crc.to_le_bytes());
    let err = UnverifiedBundle::read_from(&mut Cursor::new(header.to_vec())).unwrap_err();
    assert!(
        matches!(
            err,
            Error::SectionTooLarge {
                section: "manifest",
                ..
            }
        ),
        "{err}"
    );

    // A signed manifest declaring a petabyte image.
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let out = fx.path("hostile.cairn");
    resign_with_edit(&path, &fx.key, &out, |m| {
        m["images"][0]["size"] = json!(1u64 << 50)
    });
    let err = expect_err(&out, &fx.root, &device_policy());
    assert!(err.to_string().contains("size"), "{err}");
}

#[test]
fn full_payload_demanding_a_huge_window_is_rejected() {
    // A zstd frame that asks for a 1 GiB window would make a device allocate 1 GiB.
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let file = BundleFile::open(&path).unwrap();
    let mut image = file.bundle.manifest.image("rootfs").unwrap().clone();
    let data = image_bytes(image.size as usize, 1);
    let mut enc = zstd::stream::write::Encoder::new(Vec::new(), 1).unwrap();
    enc.window_log(30).unwrap();
    enc.long_distance_matching(true).unwrap();
    io::copy(&mut Cursor::new(&data), &mut enc).unwrap();
    let payload = enc.finish().unwrap();
    image.full.size = payload.len() as u64;
    let err =
        decode_payload(&image, &image.full, Cursor::new(payload), None, io::sink()).unwrap_err();
    assert!(matches!(err, Error::PayloadCorrupt { .. }), "{err}");
    assert!(
        err.to_string().contains("memory") || err.to_string().contains("indow"),
        "{err}"
    );
}

#[test]
fn unknown_format_version_is_rejected() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let mut bytes = fs::read(&path).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    fs::write(&path, bytes).unwrap();
    let err = expect_err(&path, &fx.root, &device_policy());
    assert_eq!(
        err.to_string(),
        "unsupported bundle format version 2 (this build reads version 1)"
    );
}

#[test]
fn fuzz_entry_point_survives_mutations() {
    // The cargo-fuzz target runs this function; here it runs on systematic mutations so
    // the parser's robustness is checked on every `cargo test`, not only when fuzzing.
    let fx = Fixture::new();
    let bytes = fs::read(fx.standard_bundle()).unwrap();
    let meta_end = BundleFile::open(fx.path("bundle.cairn"))
        .unwrap()
        .bundle
        .header
        .metadata_end() as usize;
    let meta = &bytes[..meta_end];
    for i in 0..meta.len() {
        let mut m = meta.to_vec();
        m[i] = m[i].wrapping_add(1 + (i % 200) as u8);
        cairn_bundle::fuzz_parse(&m);
        cairn_bundle::fuzz_parse(&meta[..i]);
    }
}

fn crc32(b: &[u8]) -> u32 {
    crc32fast::hash(b)
}

/// A device checks BLAKE3 where the manifest gives it and the builder's check verifies
/// both digests, so a signed manifest whose two digests disagree is caught either way.
#[test]
fn a_blake3_digest_that_disagrees_is_caught_by_device_and_full_check() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let parsed = BundleFile::open(&path).unwrap();
    let image = &parsed.bundle.manifest.images[0];
    assert!(
        image.blake3.is_some() && image.full.blake3.is_some(),
        "the writer records BLAKE3"
    );
    let out = fx.path("hostile.cairn");
    for field in ["image", "payload"] {
        resign_with_edit(&path, &fx.key, &out, |m| {
            let target = match field {
                "image" => &mut m["images"][0]["blake3"],
                _ => &mut m["images"][0]["full"]["blake3"],
            };
            *target = json!("ab".repeat(32));
        });
        let err = expect_err(&out, &fx.root, &device_policy());
        let expected = match field {
            "image" => matches!(err, Error::ImageHashMismatch { .. }),
            _ => matches!(err, Error::PayloadHashMismatch { .. }),
        };
        assert!(expected, "{field}: {err}");
        assert!(err.to_string().contains("blake3"), "{field}: {err}");
        let full_check = BundleFile::open(&out).unwrap().check_payloads(|_| {});
        assert!(full_check.is_err(), "{field}: check_payloads must refuse");
    }
    // And a SHA-256 that disagrees while BLAKE3 matches: the device would accept the
    // bytes, so the full check (server, `bundle verify`) must refuse the bundle.
    resign_with_edit(&path, &fx.key, &out, |m| {
        m["images"][0]["sha256"] = json!("cd".repeat(32));
    });
    let full_check = BundleFile::open(&out).unwrap().check_payloads(|_| {});
    assert!(
        matches!(full_check, Err(Error::ImageHashMismatch { .. })),
        "{full_check:?}"
    );
}

/// Corrupts one byte of the file at `path`.
fn flip_byte(path: &std::path::Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}

/// `pcr11` is signed with the manifest: a well-formed value reads back as written; one
/// that is not 64 hex digits, or sits on an image that is not a slot image, is refused
/// by name before any payload is read.
#[test]
fn a_pcr11_value_must_be_a_digest_on_a_slot_image() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let out = fx.path("pcr11.cairn");
    resign_with_edit(&path, &fx.key, &out, |m| {
        m["images"][0]["pcr11"] = json!("0c".repeat(32));
    });
    let parsed = BundleFile::open(&out).unwrap();
    assert_eq!(
        parsed.bundle.manifest.images[0].pcr11.as_deref(),
        Some(&*"0c".repeat(32))
    );
    for (label, value, kind) in [
        ("short", json!("0c".repeat(31)), json!("slot")),
        ("not hex", json!("zz".repeat(32)), json!("slot")),
        ("oci", json!("0c".repeat(32)), json!("oci-archive")),
    ] {
        resign_with_edit(&path, &fx.key, &out, |m| {
            m["images"][0]["pcr11"] = value.clone();
            m["images"][0]["kind"] = kind.clone();
        });
        let err = expect_err(&out, &fx.root, &device_policy()).to_string();
        assert!(err.contains("pcr11"), "{label}: {err}");
    }
}

/// `pcr4` and `pcr7` go with `pcr11`: beside it a digest reads back as written; alone, or
/// not 64 hex digits, either is refused by name.
#[test]
fn pcr4_and_pcr7_values_must_be_digests_beside_pcr11() {
    let fx = Fixture::new();
    let path = fx.standard_bundle();
    let out = fx.path("pcr4.cairn");
    resign_with_edit(&path, &fx.key, &out, |m| {
        m["images"][0]["pcr11"] = json!("0c".repeat(32));
        m["images"][0]["pcr4"] = json!("04".repeat(32));
        m["images"][0]["pcr7"] = json!("07".repeat(32));
    });
    let parsed = BundleFile::open(&out).unwrap();
    assert_eq!(
        parsed.bundle.manifest.images[0].pcr4.as_deref(),
        Some(&*"04".repeat(32))
    );
    assert_eq!(
        parsed.bundle.manifest.images[0].pcr7.as_deref(),
        Some(&*"07".repeat(32))
    );
    for field in ["pcr4", "pcr7"] {
        for (label, value, pcr11) in [
            ("alone", json!("04".repeat(32)), serde_json::Value::Null),
            ("short", json!("04".repeat(31)), json!("0c".repeat(32))),
        ] {
            resign_with_edit(&path, &fx.key, &out, |m| {
                m["images"][0][field] = value.clone();
                m["images"][0]["pcr11"] = pcr11.clone();
            });
            let err = expect_err(&out, &fx.root, &device_policy()).to_string();
            assert!(err.contains(field), "{field} {label}: {err}");
        }
    }
}
