//! The bundle tests' fixture: a key, its trust root and a directory of images and
//! bundles; and the one way tests forge a correctly signed but hostile bundle.
//! Images, keys and specs come from cairn-testkit.

#![allow(dead_code)] // each test binary uses a different part

pub mod erofs;

use std::fs;
use std::path::{Path, PathBuf};

use cairn_bundle::writer::{self, BundleSpec};
use cairn_bundle::{canonical, Manifest, SigningKey, TrustRoot};
use cairn_testkit::{
    bundle_spec, image_bytes, image_inputs, in_days, new_key, root_with, sign_bundle,
};

pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: SigningKey,
    pub root: TrustRoot,
}

impl Fixture {
    pub fn new() -> Fixture {
        let key = new_key();
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
            security_version: 5,
            images: image_inputs(images),
            ..bundle_spec("cairn-test", "1.2.3")
        }
    }

    pub fn build(
        &self,
        spec: &BundleSpec,
        keys: &[&SigningKey],
        name: &str,
    ) -> (PathBuf, Manifest) {
        let out = self.path(name);
        let manifest = sign_bundle(spec, keys, &out);
        (out, manifest)
    }

    /// A signed bundle with a kernel and a rootfs image.
    pub fn standard_bundle(&self) -> PathBuf {
        let rootfs = self.image("rootfs.img", 3 << 20, 1);
        let kernel = self.image("kernel.img", 300 << 10, 2);
        let spec = self.spec(&[("rootfs", &rootfs), ("kernel", &kernel)]);
        self.build(&spec, &[&self.key], "bundle.cairn").0
    }
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
