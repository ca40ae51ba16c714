//! Every way a bundle can be rejected, each naming what is wrong.

use std::io;

/// Why a bundle, a trust root or a payload was rejected.
///
/// Messages are written for the operator who reads them in a log or a server report:
/// they say which part of the input is wrong and by how much.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("I/O error while {context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("bundle is truncated: {what} needs {needed} bytes but only {available} are there")]
    Truncated {
        what: &'static str,
        needed: u64,
        available: u64,
    },
    #[error("not a Cairn bundle: bad magic bytes {0:02x?}")]
    BadMagic([u8; 8]),
    #[error("unsupported bundle format version {found} (this build reads version {supported})")]
    UnsupportedFormatVersion { found: u32, supported: u32 },
    #[error("bundle header is corrupt: checksum {found:08x}, computed {computed:08x}")]
    HeaderChecksum { found: u32, computed: u32 },
    #[error("bundle header is corrupt: {0}")]
    HeaderLayout(String),
    #[error("{section} section is {len} bytes, more than the limit of {max}")]
    SectionTooLarge {
        section: &'static str,
        len: u64,
        max: u64,
    },
    #[error("{what} is not valid: {source}")]
    Json {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("manifest is invalid: {0}")]
    ManifestInvalid(String),
    #[error("payload {payload} of image {image} lies outside the payload area ({detail})")]
    PayloadOutOfBounds {
        image: String,
        payload: String,
        detail: String,
    },
    #[error("payloads overlap: {first} and {second}")]
    PayloadOverlap { first: String, second: String },
    #[error("{what} signatures: {valid} valid of the {threshold} required ({details})")]
    SignatureThreshold {
        what: &'static str,
        valid: usize,
        threshold: usize,
        details: String,
    },
    #[error("{what} expired at {expires}")]
    Expired { what: String, expires: String },
    #[error("trust root rotation from version {from} to {to} rejected: {reason}")]
    RootRotation { from: u64, to: u64, reason: String },
    #[error("bundle is for '{bundle}', this device is '{device}'")]
    Incompatible { bundle: String, device: String },
    #[error("bundle security_version {bundle} is below this device's floor {floor}")]
    BelowSecurityFloor { bundle: u64, floor: u64 },
    #[error("image {image}: payload hash mismatch (expected {expected}, got {actual})")]
    PayloadHashMismatch {
        image: String,
        expected: String,
        actual: String,
    },
    #[error("image {image}: decoded image hash mismatch (expected {expected}, got {actual})")]
    ImageHashMismatch {
        image: String,
        expected: String,
        actual: String,
    },
    #[error("image {image}: payload decodes to {actual} bytes, the manifest says {expected}")]
    ImageSizeMismatch {
        image: String,
        expected: u64,
        actual: u64,
    },
    #[error("image {image}: payload ends {missing} bytes early (truncated bundle or download)")]
    PayloadTruncated { image: String, missing: u64 },
    #[error("image {image}: payload is corrupt: {detail}")]
    PayloadCorrupt { image: String, detail: String },
    #[error("image {image}: no payload this device can install ({detail})")]
    NoUsablePayload { image: String, detail: String },
    #[error("key error: {0}")]
    Key(String),
}

impl Error {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn invalid(msg: impl Into<String>) -> Error {
        Error::ManifestInvalid(msg.into())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
