//! Device side of Cairn's TPM use, on tss-esapi (Debian's libtss2). Synchronous, like
//! cairnd. The verifier side, and the event-log types, are in `cairn-attest`.
//!
//! # What this crate does with the TPM
//! - **Measurement**: [`Tpm::measure`] extends PCR [`CAIRN_PCR`] (12), SHA-256 bank, with
//!   an event digest and appends the event to the caller's [`EventLog`]; the caller
//!   persists the log. See `cairn_attest::event` for the digest formula.
//! - **Identity**: the EK is the TCG default RSA-2048 EK (template L-1, endorsement
//!   hierarchy), re-derived on demand; its certificate, if provisioned, is read from NV
//!   [`EK_CERT_NV_INDEX`] (0x01c00002). [`Tpm::create_ak`] makes an RSA-2048 restricted
//!   signing key (RSASSA-SHA256) under the EK; the caller stores the [`AkBlob`].
//! - **Enrollment**: [`Tpm::activate_credential`] answers the server's MakeCredential
//!   challenge.
//! - **Attestation**: [`Tpm::quote`] signs SHA-256 {12} with the server's nonce.
//! - **Anti-rollback**: [`Tpm::security_floor`] / [`Tpm::raise_security_floor`] keep the
//!   security-version floor in NV indices [`FLOOR_COUNTER_NV_INDEX`] (0x0100CA10) and
//!   [`FLOOR_BASE_NV_INDEX`] (0x0100CA11); see [`floor`] for the design and its limits.
//!
//! Every call flushes the transient objects and sessions it created (EK, AK, policy
//! sessions): a TPM has only a few slots.
//!
//! # Wire formats
//! Every blob is the TPM's own marshalled structure, so tpm2-tools read them:
//! EK/AK public TPM2B_PUBLIC, AK private TPM2B_PRIVATE, quote TPMS_ATTEST +
//! TPMT_SIGNATURE, credential TPM2B_ID_OBJECT + TPM2B_ENCRYPTED_SECRET, EK certificate
//! DER. JSON forms ([`AkBlob`], [`Quote`]) hold them as hex.
//!
//! # Tests
//! [`swtpm::Swtpm`] starts a private swtpm for a test (TCTI `swtpm:host=...,port=...`).

mod blob;
mod error;
pub mod floor;
mod keys;
mod nv;
pub mod swtpm;

use std::str::FromStr;

pub use blob::{AkBlob, Quote};
pub use cairn_attest::{Event, EventKind, EventLog, CAIRN_PCR};
pub use error::TpmError;
pub use floor::{FloorProtection, FLOOR_BASE_NV_INDEX, FLOOR_COUNTER_NV_INDEX, MAX_FLOOR_STEP};
pub use keys::EK_CERT_NV_INDEX;

use error::Op;
use tss_esapi::handles::PcrHandle;
use tss_esapi::interface_types::algorithm::HashingAlgorithm;
use tss_esapi::structures::{Digest, DigestValues, PcrSelectionListBuilder, PcrSlot};
use tss_esapi::tcti_ldr::TctiNameConf;
use tss_esapi::Context;

/// An open connection to a TPM.
pub struct Tpm {
    ctx: Context,
}

impl Tpm {
    /// Opens a TPM by TCTI string: `"device:/dev/tpmrm0"`,
    /// `"swtpm:host=127.0.0.1,port=2321"`, ...
    pub fn open(tcti: &str) -> Result<Self, TpmError> {
        let conf = TctiNameConf::from_str(tcti).op("parse TCTI")?;
        Ok(Tpm {
            ctx: Context::new(conf).op("open TPM")?,
        })
    }

    /// Extends [`CAIRN_PCR`] (SHA-256 bank) with the event's digest, then appends the
    /// event to `log`. The caller persists the log. Fails before touching the TPM if the
    /// value is invalid for its kind.
    pub fn measure(
        &mut self,
        log: &mut EventLog,
        kind: EventKind,
        value: &str,
    ) -> Result<(), TpmError> {
        let event = Event::new(kind, value)?;
        let mut digests = DigestValues::new();
        digests.set(
            HashingAlgorithm::Sha256,
            Digest::try_from(event.digest().to_vec()).op("event digest")?,
        );
        self.ctx
            .execute_with_nullauth_session(|ctx| ctx.pcr_extend(PcrHandle::Pcr12, digests))
            .op("extend PCR")?;
        log.push(event);
        Ok(())
    }

    /// The SHA-256 bank value of PCR `pcr` (0..=23).
    pub fn read_pcr(&mut self, pcr: u8) -> Result<[u8; 32], TpmError> {
        let slot = 1u32
            .checked_shl(u32::from(pcr))
            .filter(|_| pcr < 24)
            .and_then(|bit| PcrSlot::try_from(bit).ok())
            .ok_or_else(|| TpmError::invalid("PCR", format!("{pcr} is not 0..=23")))?;
        let selection = PcrSelectionListBuilder::new()
            .with_selection(HashingAlgorithm::Sha256, &[slot])
            .build()
            .op("PCR selection")?;
        let (_, _, digests) = self
            .ctx
            .execute_without_session(|ctx| ctx.pcr_read(selection))
            .op("read PCR")?;
        let value = digests
            .value()
            .first()
            .ok_or_else(|| TpmError::invalid("PCR", "the TPM has no SHA-256 bank"))?;
        value
            .value()
            .try_into()
            .map_err(|_| TpmError::invalid("PCR", format!("{} bytes, not 32", value.len())))
    }
}
