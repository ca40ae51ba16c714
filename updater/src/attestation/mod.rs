//! The device's TPM: measuring the booted slot into PCR 12 ([`measure`]), enrolling an
//! attestation key (AK) with the server and answering its quote requests ([`enroll`]), and
//! holding the security floor in NV where a wiped data partition cannot lower it
//! ([`floor`]).

pub mod enroll;
pub mod floor;
pub mod measure;

use std::path::{Path, PathBuf};

use serde::Deserialize;

use cairn_attest::CAIRN_PCR;

use crate::fleet::FleetError;

pub use enroll::{enrollment_path, on_check_in, Enrollment};
pub use floor::{effective_floor, sync_floor};
pub use measure::{boot_events, measure_boot, read_log};

/// `[tpm]` in system.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmConfig {
    /// TSS2 TCTI: `device:/dev/tpmrm0` on a device, `swtpm:host=...,port=...` in tests.
    pub tcti: String,
    /// The measurement log of this boot; on a tmpfs, since the PCRs reset with it.
    #[serde(default = "default_event_log")]
    pub event_log: PathBuf,
}

fn default_event_log() -> PathBuf {
    "/run/cairn/measurements.json".into()
}

#[derive(Debug, thiserror::Error)]
pub enum AttestationError {
    #[error("TPM: {0}")]
    Tpm(#[from] cairn_tpm::TpmError),
    #[error("measurement log: {0}")]
    Log(#[from] cairn_attest::AttestError),
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Boot(String),
    #[error(
        "PCR {CAIRN_PCR} holds a value the measurement log does not explain: something else \
         extended it this boot, so this boot cannot be attested"
    )]
    PcrUnexplained,
    #[error(transparent)]
    Fleet(#[from] FleetError),
}

pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> AttestationError + '_ {
    move |source| AttestationError::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn json(path: &Path) -> impl FnOnce(serde_json::Error) -> AttestationError + '_ {
    move |e| io(path)(e.into())
}
