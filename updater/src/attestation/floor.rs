//! The security floor in TPM NV memory, next to the one in cairnd's state: an install
//! must respect the higher of the two, and a commit raises both (INVARIANTS.md 12).

use cairn_tpm::{FloorProtection, Tpm};

use super::AttestationError;
use crate::config::SystemConfig;

/// The security floor an install must respect: the higher of cairnd's state and the
/// TPM's NV floor (which survives a wiped data partition).
pub fn effective_floor(config: &SystemConfig, state_floor: u64) -> Result<u64, AttestationError> {
    let Some(tpm) = &config.tpm else {
        return Ok(state_floor);
    };
    Ok(state_floor.max(Tpm::open(&tpm.tcti)?.security_floor()?))
}

/// Moves the TPM's floor up to cairnd's committed floor (never down). Called after every
/// start, so a crash between a commit and this write is repaired on the next start.
/// Returns the TPM's floor and how well it resists deletion (`None` without a TPM).
pub fn sync_floor(
    config: &SystemConfig,
    state_floor: u64,
) -> Result<Option<(u64, FloorProtection)>, AttestationError> {
    let Some(tpm) = &config.tpm else {
        return Ok(None);
    };
    let mut tpm = Tpm::open(&tpm.tcti)?;
    let floor = tpm.raise_security_floor(state_floor)?;
    Ok(Some((floor, tpm.floor_protection()?)))
}
