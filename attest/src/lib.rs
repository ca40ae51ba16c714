//! Verifier side of Cairn's TPM attestation, in pure Rust (no TSS library), so the fleet
//! server can link it. The device side is `cairn-tpm`.
//!
//! # What is measured
//! Cairn measures into one PCR, [`CAIRN_PCR`] = 12, SHA-256 bank only. The device extends
//! it once per [`Event`] (booted slot, rootfs dm-verity root hash, kernel SHA-256, initrd
//! SHA-256) and keeps an [`EventLog`] (JSON) of what it extended; see [`event`] for the
//! digest formula and the replay rule.
//!
//! # Enrollment
//! The device sends its EK public and a freshly created AK public; the server calls
//! [`challenge_ak`] (AK attribute check + [`make_credential`]) with a random secret and
//! sends the [`Challenge`]; the device's TPM answers with the secret only if the AK lives
//! on the same TPM as the EK. [`verify_ek_certificate`] checks the EK certificate (DER, from
//! NV 0x01c00002) against the manufacturer's CA and the EK public.
//!
//! # Attestation
//! The server sends a fresh nonce; the device returns a TPM2_Quote over SHA-256 {12} plus
//! its event log; [`verify_quote`] checks signature, nonce, selection and replay, and
//! returns the [`Measured`] values for the server to compare with the release.
//!
//! # Wire formats
//! Every binary blob is the TPM's own big-endian marshalled structure, so tpm2-tools read
//! them directly:
//! - EK and AK public: TPM2B_PUBLIC (`tpm2_readpublic -o`, `tpm2_checkquote -u`);
//! - quote message: TPMS_ATTEST (`tpm2_quote -m`, `tpm2_checkquote -m`);
//! - quote signature: TPMT_SIGNATURE (`tpm2_quote -s`, `tpm2_checkquote -s`);
//! - credential blob: TPM2B_ID_OBJECT; encrypted secret: TPM2B_ENCRYPTED_SECRET
//!   (`tpm2_makecredential -o` writes a small header, then these two concatenated);
//! - EK certificate: DER X.509.
//!
//! Parsers check every length and reject trailing bytes; malformed input is an
//! [`AttestError::Malformed`], never a panic.

pub mod credential;
pub mod ekcert;
pub mod error;
pub mod event;
pub mod public;
pub mod quote;
mod wire;

pub use credential::{challenge_ak, kdfa_sha256, make_credential, Challenge};
pub use ekcert::verify_ek_certificate;
pub use error::{AttestError, Result};
pub use event::{
    event_digest, loader_cmdline_digest, Event, EventKind, EventLog, Measured, MeasuredBoot, Slot,
};
pub use public::RsaPublicArea;
pub use quote::{
    verify_quote, PcrSelection, QuoteAttest, RsassaSignature, UefiPcrs, FIRMWARE_PCR,
    SECURE_BOOT_PCR, UKI_PCR,
};

/// The PCR Cairn extends (SHA-256 bank). PCR 12 is, by the TCG PC Client profile, free for
/// OS use and not touched by firmware, and resets only with the TPM.
pub const CAIRN_PCR: u8 = 12;
