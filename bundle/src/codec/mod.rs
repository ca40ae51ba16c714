//! Payload codecs and the method registry.
//!
//! A payload's `method` string selects its codec. Devices skip delta payloads whose
//! method they do not know, so a newer delta engine can ship next to these without
//! breaking devices that predate it.

pub mod block_bsdiff;
pub mod full;
mod source_dict;
pub mod zstd_patch;

/// The codecs this build knows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Method {
    /// Whole image, one zstd stream.
    Zstd,
    /// Delta against a source image: zstd frames that use the source as reference
    /// prefix (`zstd --patch-from`), one frame per fixed-size chunk of the target.
    ZstdPatch,
    /// Delta against a source image: copies of unchanged source blocks and bsdiff diffs
    /// of the changed runs, in one zstd stream.
    BlockBsdiff,
    /// A method from a newer Cairn; skipped when choosing a payload.
    Unknown(String),
}

impl Method {
    pub fn parse(name: &str) -> Method {
        match name {
            full::METHOD => Method::Zstd,
            zstd_patch::METHOD => Method::ZstdPatch,
            block_bsdiff::METHOD => Method::BlockBsdiff,
            other => Method::Unknown(other.to_string()),
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Method::Zstd => full::METHOD,
            Method::ZstdPatch => zstd_patch::METHOD,
            Method::BlockBsdiff => block_bsdiff::METHOD,
            Method::Unknown(name) => name,
        }
    }

    pub fn is_known(&self) -> bool {
        !matches!(self, Method::Unknown(_))
    }
}
