//! The Cairn update bundle.
//!
//! One file (`*.cairn`) carries a release: a fixed header, a signed manifest, optional
//! trust-root rotations, then payloads at 4 KiB-aligned offsets (see `FORMAT.md`). This
//! crate is shared by the image builder that writes bundles, the server that stores and
//! serves them, and the device that verifies and installs them; it depends on no other
//! Cairn crate except `cairn-atomic`.
//!
//! Device flow: [`UnverifiedBundle::read_from`] → [`UnverifiedBundle::verify`] against the
//! [`TrustRoot`] and [`Policy`] → pick a payload per image with [`choose_payload`] →
//! stream it through [`decode_payload`] into the slot. Nothing is trusted before its hash
//! matches.

pub mod canonical;
pub mod chunked;
mod chunks;
pub mod codec;
pub mod digest;
mod error;
mod file;
pub mod header;
pub mod keys;
pub mod manifest;
mod root;
pub mod server_override;
mod signatures;
mod stream;
mod verify;
pub mod writer;

pub use chunks::COPY_BUF;
pub use error::{Error, Result};
pub use file::BundleFile;
pub use header::Header;
pub use keys::{KeyId, PublicKey, Signature, SigningKey};
pub use manifest::{Chunked, Image, ImageKind, Manifest, Payload, Source, Verity};
pub use root::{RootBody, SignedRoot, TrustRoot};
pub use server_override::SignedServerOverride;
pub use stream::{decode_payload, hash_reader_overlapped, sha256_reader};
pub use verify::{Policy, UnverifiedBundle, VerifiedBundle};

use codec::Method;

/// How a device installs an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Choice<'a> {
    /// A delta against an image the device holds.
    Delta(&'a Payload),
    /// From the blocks it holds in any slot, fetching the chunks it lacks.
    Chunked(&'a Chunked),
    /// The whole image.
    Full(&'a Payload),
}

impl Choice<'_> {
    /// The most this choice downloads: a chunked install fetches at most its index and
    /// all its frames.
    pub fn max_bytes(&self) -> u64 {
        match self {
            Choice::Delta(p) | Choice::Full(p) => p.size,
            Choice::Chunked(c) => c.index.size + c.data.size,
        }
    }
}

/// Which way to install `image`, in order of preference: the first delta with a known
/// method whose source the device holds (`has_source`), else the chunked image when this
/// build knows its methods, else the full payload.
pub fn choose_payload(image: &Image, has_source: impl Fn(&Source) -> bool) -> Result<Choice<'_>> {
    let delta = image.deltas.iter().find(|d| {
        Method::parse(&d.method).is_known() && d.source.as_ref().is_some_and(&has_source)
    });
    if let Some(delta) = delta {
        return Ok(Choice::Delta(delta));
    }
    if let Some(chunked) = image.chunked.as_ref().filter(|c| c.is_known()) {
        return Ok(Choice::Chunked(chunked));
    }
    match Method::parse(&image.full.method) {
        Method::Zstd => Ok(Choice::Full(&image.full)),
        other => Err(Error::NoUsablePayload {
            image: image.name.clone(),
            detail: format!("full payload method '{}' is not supported", other.name()),
        }),
    }
}

/// Entry point for the fuzzer: parse untrusted metadata bytes, never panic.
#[doc(hidden)]
pub fn fuzz_parse(data: &[u8]) {
    let _ = UnverifiedBundle::parse(data);
    let _ = SignedRoot::parse(data);
}
