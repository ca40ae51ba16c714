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
pub use manifest::{Image, ImageKind, Manifest, Payload, Source, Verity};
pub use root::{RootBody, SignedRoot, TrustRoot};
pub use server_override::SignedServerOverride;
pub use stream::{decode_payload, hash_reader_overlapped, sha256_reader};
pub use verify::{Policy, UnverifiedBundle, VerifiedBundle};

use codec::Method;

/// Which payload of `image` to install: the first delta with a known method whose source
/// the device holds (`has_source(sha256, size)`), else the full payload.
pub fn choose_payload(image: &Image, has_source: impl Fn(&Source) -> bool) -> Result<&Payload> {
    let delta = image.deltas.iter().find(|d| {
        Method::parse(&d.method).is_known() && d.source.as_ref().is_some_and(&has_source)
    });
    if let Some(delta) = delta {
        return Ok(delta);
    }
    match Method::parse(&image.full.method) {
        Method::Zstd => Ok(&image.full),
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
