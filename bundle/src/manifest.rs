//! The signed manifest: what a bundle contains and what each image must hash to.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};

/// Payloads start at multiples of this, relative to the payload area.
pub const PAYLOAD_ALIGN: u64 = 4096;
/// Upper bounds checked before anything is allocated or written.
pub const MAX_IMAGES: usize = 32;
pub const MAX_DELTAS_PER_IMAGE: usize = 32;
pub const MAX_IMAGE_SIZE: u64 = 1 << 40;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Which devices may install this bundle, e.g. `cairn-qemu-arm64`.
    pub compatible: String,
    /// The release's version, for people and for ordering releases.
    pub version: semver::Version,
    /// Anti-rollback counter, independent of `version`: a device refuses bundles below
    /// its floor, and raises the floor only when it commits a bundle.
    pub security_version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub created: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub images: Vec<Image>,
}

/// One image, as it must end up in its slot (rootfs, kernel, initrd, ...).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub name: String,
    /// What the image is; absent: a slot image.
    #[serde(default, skip_serializing_if = "ImageKind::is_slot")]
    pub kind: ImageKind,
    /// Size of the image in the slot, in bytes.
    pub size: u64,
    /// SHA-256 of those `size` bytes.
    pub sha256: String,
    /// BLAKE3 of the same bytes; when present, what a device checks (`digest.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// dm-verity parameters when the image carries its own hash tree after `data_size`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verity: Option<Verity>,
    /// When the image is a unified kernel image: the SHA-256 PCR 11 value systemd-stub
    /// leaves after it measured the image (64 hex digits; docs/UEFI.md). Signed with the
    /// rest, so a verifier learns from the release what a device that booted it quotes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr11: Option<String>,
    /// With `pcr11`: the SHA-256 PCR 4 value UEFI firmware leaves when it starts the
    /// image's systemd-boot and then this image (64 hex digits; docs/UEFI.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr4: Option<String>,
    /// With `pcr11`: the SHA-256 PCR 7 value UEFI firmware leaves when its Secure Boot
    /// variables are those the device image enrolls and it authorized systemd-boot and
    /// this image with their db certificates (64 hex digits; docs/UEFI.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pcr7: Option<String>,
    /// Always present: installs on any device.
    pub full: Payload,
    /// Optional: each installs only on a device that holds the named source image.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deltas: Vec<Payload>,
    /// Optional: the image as chunks, for devices that build it from the blocks they
    /// hold and fetch only the rest (see [`crate::chunked`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunked: Option<Chunked>,
}

/// A chunked image's two payloads: the index (every block's hash, every frame's length),
/// fetched whole, and the frames, fetched by ranges.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunked {
    pub index: Payload,
    pub data: Payload,
}

impl Chunked {
    /// Whether this build can install from it.
    pub fn is_known(&self) -> bool {
        self.index.method == crate::chunked::INDEX_METHOD
            && [
                crate::chunked::METHOD,
                crate::chunked::METHOD_WINDOWED,
                crate::chunked::METHOD_GROUPED,
            ]
            .contains(&self.data.method.as_str())
    }
}

/// What an image is, and so what a device does with it besides storing it in its slot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ImageKind {
    /// Booted from or read by the slot's software (root filesystem, kernel, initramfs).
    #[default]
    Slot,
    /// An OCI image layout archive of container images (the next version's system
    /// containers): stored in the slot like any image, and imported into the device's
    /// container runtime before the reboot into the release, so nothing has to be pulled
    /// after it.
    OciArchive,
    /// A file for a device that installs releases with its own client (a `.swu` for
    /// SWUpdate, a RAUC bundle) and speaks hawkBit DDI to the server: served to it as is,
    /// never installed by cairnd.
    Artifact,
}

impl ImageKind {
    pub fn is_slot(&self) -> bool {
        *self == ImageKind::Slot
    }
}

/// Where a payload's bytes are and how to turn them into the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Payload {
    /// Codec name from the method registry (see [`crate::codec::Method`]). A device that
    /// does not know a delta method skips that delta.
    pub method: String,
    /// Offset from the start of the payload area; a multiple of [`PAYLOAD_ALIGN`].
    pub offset: u64,
    pub size: u64,
    /// SHA-256 of the payload's `size` bytes as stored.
    pub sha256: String,
    /// BLAKE3 of the same bytes; when present, what a device checks (`digest.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    /// For deltas: the image the delta applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<Source>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Source {
    pub sha256: String,
    pub size: u64,
}

/// dm-verity parameters (`veritysetup format` output) for an image whose hash tree
/// follows its data at `data_size`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verity {
    pub root_hash: String,
    pub salt: String,
    pub hash_algorithm: String,
    pub data_block_size: u32,
    pub hash_block_size: u32,
    /// Bytes of filesystem data; the hash tree starts here.
    pub data_size: u64,
}

impl Image {
    /// The digest a device checks the decoded image against.
    pub fn checked_digest(&self) -> (crate::digest::Algorithm, &str) {
        crate::digest::checked(&self.sha256, self.blake3.as_deref())
    }
}

impl Payload {
    /// The digest a device checks the payload's bytes against.
    pub fn checked_digest(&self) -> (crate::digest::Algorithm, &str) {
        crate::digest::checked(&self.sha256, self.blake3.as_deref())
    }
}

impl Manifest {
    pub fn image(&self, name: &str) -> Option<&Image> {
        self.images.iter().find(|i| i.name == name)
    }

    /// Structural checks that need no key: names, sizes, and that every payload lies
    /// inside a payload area of `area_len` bytes without overlapping another.
    pub fn validate(&self, area_len: u64) -> Result<()> {
        check_name("compatible", &self.compatible, 128)?;
        if self.expires <= self.created {
            return Err(Error::invalid("expires is not after created"));
        }
        if self.images.is_empty() || self.images.len() > MAX_IMAGES {
            return Err(Error::invalid(format!(
                "{} images (allowed: 1 to {MAX_IMAGES})",
                self.images.len()
            )));
        }
        let mut names = BTreeSet::new();
        for image in &self.images {
            image.validate()?;
            if !names.insert(image.name.as_str()) {
                return Err(Error::invalid(format!(
                    "image {} appears twice",
                    image.name
                )));
            }
        }
        self.check_payload_placement(area_len)
    }

    fn check_payload_placement(&self, area_len: u64) -> Result<()> {
        let mut spans = Vec::new();
        for image in &self.images {
            for (label, p) in image.payloads() {
                let out = |detail: String| Error::PayloadOutOfBounds {
                    image: image.name.clone(),
                    payload: label.clone(),
                    detail,
                };
                if !p.offset.is_multiple_of(PAYLOAD_ALIGN) {
                    return Err(out(format!(
                        "offset {} is not {PAYLOAD_ALIGN}-aligned",
                        p.offset
                    )));
                }
                let end = p.offset.checked_add(p.size).filter(|&e| e <= area_len);
                let end = end.ok_or_else(|| {
                    out(format!(
                        "offset {} + size {} > area {area_len}",
                        p.offset, p.size
                    ))
                })?;
                spans.push((p.offset, end, format!("{}/{label}", image.name)));
            }
        }
        spans.sort();
        for pair in spans.windows(2) {
            if pair[1].0 < pair[0].1 {
                return Err(Error::PayloadOverlap {
                    first: pair[0].2.clone(),
                    second: pair[1].2.clone(),
                });
            }
        }
        Ok(())
    }
}

impl Image {
    /// The full payload, then the deltas, then the chunked image's index and data, each
    /// with a label for messages.
    pub fn payloads(&self) -> impl Iterator<Item = (String, &Payload)> {
        let chunked = self.chunked.iter().flat_map(|c| {
            [
                ("chunked.index".to_string(), &c.index),
                ("chunked.data".to_string(), &c.data),
            ]
        });
        std::iter::once(("full".to_string(), &self.full))
            .chain(
                self.deltas
                    .iter()
                    .enumerate()
                    .map(|(i, d)| (format!("delta[{i}]"), d)),
            )
            .chain(chunked)
    }

    /// The deltas only.
    pub fn delta_payloads(&self) -> impl Iterator<Item = (String, &Payload)> {
        self.payloads()
            .filter(|(label, _)| label.starts_with("delta"))
    }

    fn validate(&self) -> Result<()> {
        check_name("image name", &self.name, 64)?;
        let ctx = |msg: String| Error::invalid(format!("image {}: {msg}", self.name));
        if self.size == 0 || self.size > MAX_IMAGE_SIZE {
            return Err(ctx(format!(
                "size {} is outside 1..={MAX_IMAGE_SIZE}",
                self.size
            )));
        }
        check_sha256(&self.sha256).map_err(ctx)?;
        if let Some(b) = &self.blake3 {
            check_sha256(b).map_err(|e| ctx(format!("blake3: {e}")))?;
        }
        if let Some(pcr11) = &self.pcr11 {
            check_sha256(pcr11).map_err(|e| ctx(format!("pcr11: {e}")))?;
            if self.kind != ImageKind::Slot {
                return Err(ctx(format!("pcr11 on an image of kind {:?}", self.kind)));
            }
        }
        for (field, value) in [("pcr4", &self.pcr4), ("pcr7", &self.pcr7)] {
            if let Some(value) = value {
                check_sha256(value).map_err(|e| ctx(format!("{field}: {e}")))?;
                if self.pcr11.is_none() {
                    return Err(ctx(format!(
                        "{field} on an image without pcr11 (not a UKI)"
                    )));
                }
            }
        }
        if self.full.source.is_some() {
            return Err(ctx("the full payload names a source".into()));
        }
        if self.deltas.len() > MAX_DELTAS_PER_IMAGE {
            return Err(ctx(format!(
                "{} deltas, at most {MAX_DELTAS_PER_IMAGE}",
                self.deltas.len()
            )));
        }
        for (label, p) in self.payloads() {
            check_name("method", &p.method, 32).map_err(|e| ctx(format!("{label}: {e}")))?;
            check_sha256(&p.sha256).map_err(|e| ctx(format!("{label}: {e}")))?;
            if let Some(b) = &p.blake3 {
                check_sha256(b).map_err(|e| ctx(format!("{label}: blake3: {e}")))?;
            }
            if p.size == 0 {
                return Err(ctx(format!("{label} is empty")));
            }
        }
        for (i, d) in self.deltas.iter().enumerate() {
            let source = d
                .source
                .as_ref()
                .ok_or_else(|| ctx(format!("delta[{i}] names no source")))?;
            check_sha256(&source.sha256).map_err(|e| ctx(format!("delta[{i}] source: {e}")))?;
        }
        if let Some(c) = &self.chunked {
            if c.index.source.is_some() || c.data.source.is_some() {
                return Err(ctx("the chunked image names a source".into()));
            }
            if c.index.size > crate::chunked::MAX_INDEX_LEN {
                return Err(ctx(format!(
                    "chunk index of {} bytes is over the limit of {}",
                    c.index.size,
                    crate::chunked::MAX_INDEX_LEN
                )));
            }
        }
        if let Some(v) = &self.verity {
            check_hex(&v.root_hash).map_err(|e| ctx(format!("verity root hash {e}")))?;
            if v.data_size >= self.size {
                return Err(ctx(
                    "verity data_size leaves no room for the hash tree".into()
                ));
            }
        }
        Ok(())
    }
}

fn check_name(what: &str, s: &str, max: usize) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if !ok {
        return Err(Error::invalid(format!(
            "{what} '{s}' must be 1 to {max} characters of [A-Za-z0-9._-]"
        )));
    }
    Ok(())
}

fn check_hex(s: &str) -> Result<(), String> {
    if s.is_empty()
        || !s.len().is_multiple_of(2)
        || !s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    {
        return Err(format!("'{s}' is not lowercase hex"));
    }
    Ok(())
}

fn check_sha256(s: &str) -> Result<(), String> {
    check_hex(s)?;
    if s.len() != 64 {
        return Err(format!("sha256 '{s}' is not 64 hex digits"));
    }
    Ok(())
}
