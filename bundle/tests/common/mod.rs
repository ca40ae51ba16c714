//! Shared fixtures: keys, roots, image files and bundles made with the real writer.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};

use cairn_bundle::writer::{self, BundleSpec, DeltaSource, ImageInput};
use cairn_bundle::{canonical, Manifest, SignedRoot, SigningKey, TrustRoot};
use time::{Duration, OffsetDateTime};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub root: TrustRoot,
}

impl Fixture {
    pub fn new() -> Fixture {
        let key = SigningKey::generate().unwrap();
        let root = root_with(&[&key], 1, 1, in_days(365));
        Fixture {
            dir: tempfile::tempdir().unwrap(),
            key,
            root: TrustRoot::anchor(root).unwrap(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Writes `len` bytes of an image that compresses somewhat and differs by `seed`.
    pub fn image(&self, name: &str, len: usize, seed: u8) -> PathBuf {
        let path = self.path(name);
        fs::write(&path, image_bytes(len, seed)).unwrap();
        path
    }

    pub fn spec(&self, images: &[(&str, &Path)]) -> BundleSpec {
        BundleSpec {
            compatible: "cairn-test".into(),
            version: "1.2.3".parse().unwrap(),
            security_version: 5,
            created: OffsetDateTime::now_utc() - Duration::hours(1),
            expires: in_days(30),
            description: None,
            images: images
                .iter()
                .map(|(name, path)| ImageInput {
                    name: name.to_string(),
                    path: path.to_path_buf(),
                    verity: None,
                })
                .collect(),
            delta_sources: Vec::new(),
            level: 3,
            roots: Vec::new(),
        }
    }

    pub fn build(
        &self,
        spec: &BundleSpec,
        keys: &[&SigningKey],
        name: &str,
    ) -> (PathBuf, Manifest) {
        let out = self.path(name);
        let keys: Vec<SigningKey> = keys
            .iter()
            .map(|k| SigningKey::from_json(&k.to_json()).unwrap())
            .collect();
        let manifest = writer::create(spec, &keys, &out, &mut |_| {}).unwrap();
        (out, manifest)
    }

    /// A signed bundle with a kernel and a rootfs image.
    pub fn standard_bundle(&self) -> PathBuf {
        let rootfs = self.image("rootfs.img", 3 << 20, 1);
        let kernel = self.image("kernel.img", 300 << 10, 2);
        let spec = self.spec(&[("rootfs", &rootfs), ("kernel", &kernel)]);
        self.build(&spec, &[&self.key], "bundle.cairn").0
    }

    pub fn delta_source(image: &str, path: &Path) -> DeltaSource {
        DeltaSource {
            image: image.into(),
            path: path.to_path_buf(),
        }
    }
}

pub fn in_days(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::days(days)
}

pub fn root_with(
    keys: &[&SigningKey],
    version: u64,
    threshold: usize,
    expires: OffsetDateTime,
) -> SignedRoot {
    let mut root = SignedRoot::new(
        version,
        expires,
        threshold,
        keys.iter().map(|k| k.public()).collect(),
    );
    for key in keys {
        root.sign(key).unwrap();
    }
    root
}

pub fn image_bytes(len: usize, seed: u8) -> Vec<u8> {
    // Text-like runs with a seed-dependent sprinkling: compressible, but not trivially.
    let mut state = 0x2545_f491_4f6c_dd1d_u64 ^ seed as u64;
    (0..len)
        .map(|i| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            if i % 64 < 48 {
                b"cairn edge os image "[i % 20]
            } else {
                (state >> 24) as u8
            }
        })
        .collect()
}

/// Rewrites a bundle's manifest with `edit`, signs it with `key`, keeps the payloads.
/// This is how tests build a bundle that is correctly signed but hostile.
pub fn resign_with_edit(
    bundle: &Path,
    key: &SigningKey,
    out: &Path,
    edit: impl FnOnce(&mut serde_json::Value),
) {
    use std::io::{Seek, SeekFrom};
    let parsed = cairn_bundle::BundleFile::open(bundle).unwrap();
    let header = parsed.bundle.header;
    let mut value: serde_json::Value =
        serde_json::from_slice(&parsed.bundle.manifest_bytes).unwrap();
    edit(&mut value);
    let bytes = canonical::value_to_vec(&value);
    let mut msg = b"cairn-manifest-v1\0".to_vec();
    msg.extend_from_slice(&bytes);
    let sig = key.sign(&msg);
    let mut file = fs::File::open(bundle).unwrap();
    file.seek(SeekFrom::Start(header.payload_area_offset))
        .unwrap();
    writer::assemble(out, &bytes, &[sig], &[], &mut file, header.payload_area_len).unwrap();
}

pub fn flip_byte(path: &Path, offset: u64) {
    let mut bytes = fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x40;
    fs::write(path, bytes).unwrap();
}
