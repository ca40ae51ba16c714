//! Which payload each image of a release a device would download: a delta when the
//! device reports holding the delta's source image, else the full payload.

use cairn_bundle::{choose_payload, Manifest};
use cairn_server_api::InstalledImage;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImagePlan {
    pub image: String,
    /// `full` or `delta`.
    pub kind: String,
    /// For a delta: sha256 of the image it applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_sha256: Option<String>,
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
        let payload = choose_payload(image, held).unwrap_or(&image.full);
        let from = payload.source.as_ref().map(|s| s.sha256.clone());
        out.total_bytes += payload.size;
        out.images.push(ImagePlan {
            image: image.name.clone(),
            kind: if from.is_some() { "delta" } else { "full" }.into(),
            from_sha256: from,
            bytes: payload.size,
        });
    }
    out
}
