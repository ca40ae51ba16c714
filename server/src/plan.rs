//! Which payload each image of a release a device would download: a delta when the
//! device reports holding the delta's source image, else the full payload.

use cairn_bundle::{choose_payload, Choice, Manifest};
use cairn_server_api::InstalledImage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlan {
    pub image: String,
    /// `full`, `delta`, or `chunked` (the device fetches only the chunks it lacks).
    pub kind: String,
    /// For a delta: sha256 of the image it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sha256: Option<String>,
    /// What it downloads; for `chunked`, at most this (its index and every chunk).
    pub bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PayloadPlan {
    pub images: Vec<ImagePlan>,
    pub total_bytes: u64,
}

pub fn plan(manifest: &Manifest, installed: &[InstalledImage]) -> PayloadPlan {
    let mut out = PayloadPlan::default();
    for image in &manifest.images {
        let held = |s: &cairn_bundle::Source| {
            installed
                .iter()
                .any(|i| i.sha256 == s.sha256 && i.size == s.size)
        };
        // A release with an unusable full payload cannot be uploaded; count it as full.
        let choice = choose_payload(image, held).unwrap_or(Choice::Full(&image.full));
        let (kind, from) = match choice {
            Choice::Delta(d) => ("delta", d.source.as_ref().map(|s| s.sha256.clone())),
            Choice::Chunked(_) => ("chunked", None),
            Choice::Full(_) => ("full", None),
        };
        out.total_bytes += choice.max_bytes();
        out.images.push(ImagePlan {
            image: image.name.clone(),
            kind: kind.into(),
            from_sha256: from,
            bytes: choice.max_bytes(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_bundle::{Image, Payload, Source};

    fn payload(size: u64, source: Option<(&str, u64)>) -> Payload {
        Payload {
            method: if source.is_some() {
                "zstd-patch"
            } else {
                "zstd"
            }
            .into(),
            offset: 0,
            size,
            sha256: "0".repeat(64),
            blake3: None,
            source: source.map(|(sha256, size)| Source {
                sha256: sha256.repeat(64),
                size,
            }),
        }
    }

    fn manifest() -> Manifest {
        let rootfs = Image {
            kind: cairn_bundle::ImageKind::Slot,
            name: "rootfs".into(),
            size: 1000,
            sha256: "1".repeat(64),
            blake3: None,
            verity: None,
            pcr11: None,
            pcr4: None,
            pcr7: None,
            full: payload(900, None),
            deltas: vec![
                payload(50, Some(("a", 1000))),
                payload(60, Some(("b", 1000))),
            ],
            chunked: None,
        };
        let kernel = Image {
            kind: cairn_bundle::ImageKind::Slot,
            name: "kernel".into(),
            size: 100,
            sha256: "2".repeat(64),
            blake3: None,
            verity: None,
            pcr11: None,
            pcr4: None,
            pcr7: None,
            full: payload(80, None),
            deltas: vec![],
            // At most 10 + 75 bytes: a bit more than the full payload.
            chunked: Some(cairn_bundle::Chunked {
                index: Payload {
                    method: "chunk-index".into(),
                    ..payload(10, None)
                },
                data: Payload {
                    method: "zstd-chunks".into(),
                    ..payload(75, None)
                },
            }),
        };
        Manifest {
            compatible: "c".into(),
            version: "2.0.0".parse().unwrap(),
            security_version: 1,
            created: time::OffsetDateTime::UNIX_EPOCH,
            expires: time::OffsetDateTime::UNIX_EPOCH + time::Duration::days(1),
            description: None,
            images: vec![rootfs, kernel],
        }
    }

    fn held(sha: &str, size: u64) -> InstalledImage {
        InstalledImage {
            name: "rootfs".into(),
            sha256: sha.repeat(64),
            size,
        }
    }

    #[test]
    fn a_device_holding_a_delta_source_gets_that_delta() {
        let p = plan(&manifest(), &[held("b", 1000)]);
        assert_eq!(p.images[0].kind, "delta");
        assert_eq!(p.images[0].from_sha256, Some("b".repeat(64)));
        assert_eq!(p.images[1].kind, "chunked");
        assert_eq!(p.total_bytes, 60 + 85);
    }

    #[test]
    fn anything_else_gets_the_full_payload() {
        assert_eq!(plan(&manifest(), &[]).total_bytes, 900 + 85);
        // The right hash with the wrong size is not the source.
        let p = plan(&manifest(), &[held("a", 999)]);
        assert_eq!(p.images[0].kind, "full");
    }
}
