//! The PCR values a release pins in its signed manifest for its unified kernel image, so
//! the server can attest a device on the UEFI path without asking it what to expect
//! (docs/UEFI.md):
//! - PCR 11, from the UKI alone ([`uki::pcr11_sha256`]);
//! - PCR 4, from the Authenticode digests of the signed systemd-boot the device image
//!   ships and of the signed UKI ([`uki::pcr4_after_firmware`]);
//! - PCR 7, from the firmware variables the device image enrolls and the db entries that
//!   authorize those two files ([`pcr7::pcr7_after_verification`]).
//!
//! PCR 4 and PCR 7 need the device image's [`BootChain`]; without it only PCR 11 is known.

use std::path::Path;

use anyhow::{Context, Result};

use super::pcr7::{self, SecureBootVariables};
use super::pe::authenticode;
use super::uki;

/// What the device image puts before the UKI: its signed systemd-boot, and the firmware
/// variable store with its Secure Boot keys enrolled.
pub struct BootChain {
    /// The signed systemd-boot, as the ESP holds it.
    pub loader: Vec<u8>,
    pub vars: Option<SecureBootVariables>,
}

impl BootChain {
    /// Reads a profile's `systemd-boot.efi` and, when given, its `efi-vars.fd`.
    pub fn read(loader: &Path, vars: Option<&Path>) -> Result<BootChain> {
        Ok(BootChain {
            loader: std::fs::read(loader)
                .with_context(|| format!("reading the boot loader {}", loader.display()))?,
            vars: vars.map(SecureBootVariables::read).transpose()?,
        })
    }
}

/// The values pinned for one UKI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedPcrs {
    pub pcr11: [u8; 32],
    /// With a [`BootChain`].
    pub pcr4: Option<[u8; 32]>,
    /// With a [`BootChain`] that has firmware variables.
    pub pcr7: Option<[u8; 32]>,
}

/// The values to pin for `image`, or `None` when it is not a unified kernel image.
pub fn for_image(image: &[u8], chain: Option<&BootChain>) -> Result<Option<PinnedPcrs>> {
    let Ok(pcr11) = uki::pcr11_sha256(image) else {
        return Ok(None);
    };
    let Some(chain) = chain else {
        return Ok(Some(PinnedPcrs {
            pcr11,
            pcr4: None,
            pcr7: None,
        }));
    };
    let loaded = [
        authenticode::sha256(&chain.loader).context("the boot loader")?,
        authenticode::sha256(image).context("the unified kernel image")?,
    ];
    let pcr7 = match &chain.vars {
        Some(vars) => {
            let authorities = [
                vars.authority_for(&chain.loader)
                    .context("the boot loader's signer")?,
                vars.authority_for(image)
                    .context("the unified kernel image's signer")?,
            ];
            Some(pcr7::pcr7_after_verification(vars, &authorities))
        }
        None => None,
    };
    Ok(Some(PinnedPcrs {
        pcr11,
        pcr4: Some(uki::pcr4_after_firmware(&loaded)),
        pcr7,
    }))
}
