//! Signed test bundles, made with the real writer.

use std::path::Path;

use cairn_bundle::writer::{self, BundleSpec, DeltaSource, ImageInput};
use cairn_bundle::{ImageKind, Manifest, SigningKey};
use time::{Duration, OffsetDateTime};

use crate::keys::{copy_key, in_days};

/// A spec for a release of `compatible` at `version` with the tests' defaults: security
/// version 1, created an hour ago, expiring in 30 days, zstd level 3, no images, deltas,
/// chunks, description or roots yet. Callers set the rest with struct update syntax:
/// `BundleSpec { images: image_inputs(..), ..bundle_spec("cairn-test", "1.0.0") }`.
pub fn bundle_spec(compatible: &str, version: &str) -> BundleSpec {
    BundleSpec {
        compatible: compatible.into(),
        version: version.parse().expect("a semver version"),
        security_version: 1,
        created: OffsetDateTime::now_utc() - Duration::hours(1),
        expires: in_days(30),
        description: None,
        images: Vec::new(),
        delta_sources: Vec::new(),
        level: 3,
        delta_codec: cairn_bundle::writer::DeltaCodec::default(),
        chunked: None,
        chunk_history: Vec::new(),
        roots: Vec::new(),
    }
}

/// Images by name and file, without dm-verity.
pub fn image_inputs(images: &[(&str, &Path)]) -> Vec<ImageInput> {
    images
        .iter()
        .map(|(name, path)| ImageInput {
            name: name.to_string(),
            path: path.to_path_buf(),
            verity: None,
            kind: ImageKind::Slot,
            pcr11: None,
            pcr4: None,
            pcr7: None,
        })
        .collect()
}

/// Previous versions of images, by image name and file, to make deltas from.
pub fn delta_sources(sources: &[(&str, &Path)]) -> Vec<DeltaSource> {
    sources
        .iter()
        .map(|(image, path)| DeltaSource {
            image: image.to_string(),
            path: path.to_path_buf(),
        })
        .collect()
}

/// Writes the bundle of `spec` to `out`, signed by `keys`; returns its manifest.
pub fn sign_bundle(spec: &BundleSpec, keys: &[&SigningKey], out: &Path) -> Manifest {
    let keys: Vec<SigningKey> = keys.iter().map(|k| copy_key(k)).collect();
    writer::create(spec, &keys, out, &mut |_| {})
        .unwrap_or_else(|e| panic!("writing test bundle {}: {e}", out.display()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::image_bytes;
    use crate::keys::{new_key, root_for};
    use cairn_bundle::{BundleFile, Policy, TrustRoot};

    #[test]
    fn a_signed_bundle_verifies_and_carries_the_spec() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("rootfs-1");
        let new = dir.path().join("rootfs-2");
        std::fs::write(&old, image_bytes(200 << 10, 1)).unwrap();
        let mut bytes = image_bytes(200 << 10, 1);
        bytes[1000..3000].fill(7);
        std::fs::write(&new, bytes).unwrap();
        let key = new_key();
        let spec = BundleSpec {
            security_version: 4,
            images: image_inputs(&[("rootfs", &new)]),
            delta_sources: delta_sources(&[("rootfs", &old)]),
            ..bundle_spec("cairn-test", "2.0.0")
        };
        let out = dir.path().join("v2.cairn");
        let manifest = sign_bundle(&spec, &[&key], &out);
        assert_eq!(manifest.compatible, "cairn-test");
        assert_eq!(manifest.security_version, 4);
        assert_eq!(manifest.images[0].deltas.len(), 1);
        let root = TrustRoot::anchor(root_for(&key, 1)).unwrap();
        let file = BundleFile::open(&out).unwrap();
        file.verify(&root, &Policy::any_device()).unwrap();
    }
}
