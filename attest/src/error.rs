//! The one error type of the verifier side.

use crate::event::EventKind;

/// Why an input was refused. Each verification failure the server must tell apart has its
/// own variant; `Malformed` covers everything that does not even parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AttestError {
    /// Truncated, oversized, trailing or otherwise unparseable bytes.
    #[error("malformed {structure}: {detail}")]
    Malformed {
        structure: &'static str,
        detail: String,
    },
    /// Well-formed, but an algorithm or key type Cairn does not accept.
    #[error("unsupported {structure}: {detail}")]
    Unsupported {
        structure: &'static str,
        detail: String,
    },
    /// The attestation key's public area is not that of a restricted signing key.
    #[error("not an attestation key: {0}")]
    NotAttestationKey(String),
    /// The endorsement key's public area is not that of a storage/decryption EK.
    #[error("not an endorsement key: {0}")]
    NotEndorsementKey(String),
    /// The quote's signature does not verify with the attestation key.
    #[error("quote signature does not verify with the attestation key")]
    BadSignature,
    /// The quote does not carry the nonce the verifier sent (stale or replayed quote).
    #[error("quote nonce mismatch (replayed or stale quote)")]
    NonceMismatch,
    /// The quote covers other PCRs or another bank than SHA-256 {CAIRN_PCR}.
    #[error("quote PCR selection is not exactly sha256:{pcr}: {detail}", pcr = crate::CAIRN_PCR)]
    WrongPcrSelection { detail: String },
    /// The event log does not replay to the PCR digest the TPM signed.
    #[error("event log does not replay to the quoted PCR digest")]
    PcrDigestMismatch,
    /// An event's recorded digest is not the digest of its kind and value.
    #[error("event {index}: recorded digest does not match its kind and value")]
    EventDigestMismatch { index: usize },
    /// An event's value is not valid for its kind.
    #[error("event {index}: invalid {kind} value: {detail}")]
    InvalidEventValue {
        index: usize,
        kind: EventKind,
        detail: String,
    },
    /// The log lacks an event kind the verifier needs.
    #[error("event log has no {0} event")]
    MissingEvent(EventKind),
    /// The log measures the same kind twice, which would make "the" value ambiguous.
    #[error("event log has more than one {0} event")]
    DuplicateEvent(EventKind),
    /// The log has the UEFI path's events and a U-Boot path's `kind` event too.
    #[error("event log mixes the UEFI path's events with a {0} event")]
    MixedBootPaths(EventKind),
    /// systemd-boot measured its command line before Linux started: anywhere else in the
    /// log, the event cannot be what the PCR holds.
    #[error("event log's loader-cmdline event is not its first")]
    LoaderCmdlineNotFirst,
    /// The release pins PCR 4 (the boot loader and UKI the firmware started), PCR 7 (its
    /// Secure Boot policy) and PCR 11 (the UKI's sections, measured by systemd-stub), and
    /// the quote does not cover them, or the PCRs it covers do not hash to the release's
    /// values and the log's PCR 12.
    #[error("the quote does not prove the release's PCR 4, PCR 7 and PCR 11: {detail}")]
    UefiPcrs { detail: String },
    /// The secret handed to `make_credential` does not fit the EK's name digest.
    #[error("credential secret must be 1..={max} bytes, got {len}")]
    SecretSize { len: usize, max: usize },
    /// The operating system's random generator or the RSA encryption failed.
    #[error("crypto failure: {0}")]
    Crypto(String),
    /// The EK certificate does not chain to the given CA or does not certify this EK.
    #[error("EK certificate rejected: {0}")]
    EkCertificate(String),
}

impl AttestError {
    pub(crate) fn malformed(structure: &'static str, detail: impl Into<String>) -> Self {
        AttestError::Malformed {
            structure,
            detail: detail.into(),
        }
    }

    pub(crate) fn unsupported(structure: &'static str, detail: impl Into<String>) -> Self {
        AttestError::Unsupported {
            structure,
            detail: detail.into(),
        }
    }
}

pub type Result<T, E = AttestError> = std::result::Result<T, E>;
