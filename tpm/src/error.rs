//! The device side's error type.

use cairn_attest::AttestError;

#[derive(Debug, thiserror::Error)]
pub enum TpmError {
    /// A TSS/TPM call failed; `op` says which step.
    #[error("TPM {op}: {source}")]
    Tss {
        op: &'static str,
        #[source]
        source: tss_esapi::Error,
    },
    /// An event value was invalid or a blob from cairn-attest's formats did not parse.
    #[error(transparent)]
    Attest(#[from] AttestError),
    /// An argument the caller passed cannot be used (bad blob, oversized nonce, ...).
    #[error("invalid {what}: {detail}")]
    InvalidInput { what: &'static str, detail: String },
    /// The NV indices holding the security floor are in a state Cairn never leaves them
    /// in (deleted, counter below base): someone with owner authorisation meddled.
    #[error("security floor NV state is inconsistent: {0}")]
    FloorTampered(String),
    /// The floor cannot be read right now, and answering 0 could allow a downgrade.
    #[error("security floor unavailable: {0}")]
    FloorUnavailable(String),
    /// Raising the floor by more than [`crate::MAX_FLOOR_STEP`] in one call.
    #[error("raising the security floor from {from} to {to} exceeds the step limit {max}")]
    FloorStepTooLarge { from: u64, to: u64, max: u64 },
}

impl TpmError {
    pub(crate) fn invalid(what: &'static str, detail: impl Into<String>) -> Self {
        TpmError::InvalidInput {
            what,
            detail: detail.into(),
        }
    }
}

/// Attaches the step name to a TSS error.
pub(crate) trait Op<T> {
    fn op(self, op: &'static str) -> Result<T, TpmError>;
}

impl<T> Op<T> for Result<T, tss_esapi::Error> {
    fn op(self, op: &'static str) -> Result<T, TpmError> {
        self.map_err(|source| TpmError::Tss { op, source })
    }
}
