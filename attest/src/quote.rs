//! TPMS_ATTEST (quote) and TPMT_SIGNATURE parsing, and quote verification.

use rsa::Pkcs1v15Sign;
use sha2::{Digest, Sha256};

use crate::error::{AttestError, Result};
use crate::event::{EventLog, Measured};
use crate::public::RsaPublicArea;
use crate::wire::*;
use crate::CAIRN_PCR;

/// One TPMS_PCR_SELECTION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PcrSelection {
    pub hash: u16,
    /// Bitmap: bit `n % 8` of byte `n / 8` selects PCR `n`.
    pub select: Vec<u8>,
}

impl PcrSelection {
    /// The selected PCR numbers, ascending.
    pub fn pcrs(&self) -> Vec<u32> {
        let mut out = Vec::new();
        for (i, byte) in self.select.iter().enumerate() {
            for bit in 0..8 {
                if byte & (1 << bit) != 0 {
                    // i < 256 (sizeofSelect is a u8), so this fits.
                    out.push(i as u32 * 8 + bit);
                }
            }
        }
        out
    }
}

/// A parsed TPMS_ATTEST of type TPM_ST_ATTEST_QUOTE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuoteAttest {
    pub qualified_signer: Vec<u8>,
    /// The caller's qualifying data: Cairn's nonce.
    pub extra_data: Vec<u8>,
    pub clock: u64,
    pub reset_count: u32,
    pub restart_count: u32,
    pub safe: bool,
    pub firmware_version: u64,
    pub pcr_selections: Vec<PcrSelection>,
    pub pcr_digest: Vec<u8>,
}

impl QuoteAttest {
    /// Parses TPMS_ATTEST bytes (what the TPM signs; `tpm2_quote -m` writes the same).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let mut r = Reader::new(bytes, "TPMS_ATTEST");
        let magic = r.u32("magic")?;
        if magic != TPM_GENERATED_VALUE {
            return Err(r.error(format!("magic {magic:#010x}, not TPM_GENERATED_VALUE")));
        }
        let tag = r.u16("type")?;
        if tag != TPM_ST_ATTEST_QUOTE {
            return Err(r.error(format!("type {tag:#06x}, not TPM_ST_ATTEST_QUOTE")));
        }
        // TPM2B_NAME: a handle (4) or a digest with its algorithm (2 + 64 at most).
        let qualified_signer = r.tpm2b("qualifiedSigner", 66)?.to_vec();
        let extra_data = r.tpm2b("extraData", 64)?.to_vec();
        let clock = r.u64("clockInfo.clock")?;
        let reset_count = r.u32("clockInfo.resetCount")?;
        let restart_count = r.u32("clockInfo.restartCount")?;
        let safe = match r.u8("clockInfo.safe")? {
            0 => false,
            1 => true,
            other => return Err(r.error(format!("clockInfo.safe {other}, not a TPMI_YES_NO"))),
        };
        let firmware_version = r.u64("firmwareVersion")?;
        let count = r.u32("pcrSelect.count")?;
        // TPM implementations have a handful of banks; 16 is generous.
        if count > 16 {
            return Err(r.error(format!("pcrSelect.count {count} exceeds 16")));
        }
        let mut pcr_selections = Vec::new();
        for _ in 0..count {
            let hash = r.u16("pcrSelections.hash")?;
            let size = r.u8("pcrSelections.sizeofSelect")?;
            let select = r
                .bytes(usize::from(size), "pcrSelections.pcrSelect")?
                .to_vec();
            pcr_selections.push(PcrSelection { hash, select });
        }
        let pcr_digest = r.tpm2b("pcrDigest", 64)?.to_vec();
        r.finish()?;
        Ok(QuoteAttest {
            qualified_signer,
            extra_data,
            clock,
            reset_count,
            restart_count,
            safe,
            firmware_version,
            pcr_selections,
            pcr_digest,
        })
    }

    /// Checks the selection is exactly SHA-256 {CAIRN_PCR}.
    /// The SHA-256 PCRs the quote selects, in ascending order (the order the TPM hashes
    /// their values into pcrDigest); one bank only.
    fn sha256_pcrs(&self) -> Result<Vec<u32>> {
        let wrong = |detail: String| Err(AttestError::WrongPcrSelection { detail });
        let [only] = self.pcr_selections.as_slice() else {
            return wrong(format!("{} banks selected", self.pcr_selections.len()));
        };
        if only.hash != TPM_ALG_SHA256 {
            return wrong(format!("bank {:#06x}", only.hash));
        }
        Ok(only.pcrs())
    }

    fn check_cairn_selection(&self) -> Result<()> {
        let wrong = |detail: String| Err(AttestError::WrongPcrSelection { detail });
        let [only] = self.pcr_selections.as_slice() else {
            return wrong(format!("{} banks selected", self.pcr_selections.len()));
        };
        if only.hash != TPM_ALG_SHA256 {
            return wrong(format!("bank {:#06x}", only.hash));
        }
        let pcrs = only.pcrs();
        if pcrs != [u32::from(CAIRN_PCR)] {
            return wrong(format!("PCRs {pcrs:?}"));
        }
        Ok(())
    }
}

/// A TPMT_SIGNATURE with RSASSA-SHA256, the only kind Cairn's AK makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsassaSignature {
    pub signature: Vec<u8>,
}

impl RsassaSignature {
    /// Parses TPMT_SIGNATURE bytes (`tpm2_quote -s` writes the same); any other scheme
    /// or hash is `Unsupported`.
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        const S: &str = "TPMT_SIGNATURE";
        let mut r = Reader::new(bytes, S);
        let sig_alg = r.u16("sigAlg")?;
        if sig_alg != TPM_ALG_RSASSA {
            return Err(AttestError::unsupported(
                S,
                format!("sigAlg {sig_alg:#06x}, only RSASSA ({TPM_ALG_RSASSA:#06x})"),
            ));
        }
        let hash = r.u16("hash")?;
        if hash != TPM_ALG_SHA256 {
            return Err(AttestError::unsupported(
                S,
                format!("hash {hash:#06x}, only SHA-256 ({TPM_ALG_SHA256:#06x})"),
            ));
        }
        let signature = r.tpm2b("sig", 512)?.to_vec();
        r.finish()?;
        Ok(RsassaSignature { signature })
    }
}

/// Verifies a quote from an enrolled AK against a nonce and the device's event log, and
/// returns what the log says booted.
///
/// In order: the AK is an RSA restricted signing key; the signature is RSASSA-PKCS1-v1_5
/// SHA-256 over `attest` with the AK (`BadSignature`); `attest` is a quote
/// (`Malformed`); its extraData is `expected_nonce` (`NonceMismatch`); it selects exactly
/// SHA-256 {CAIRN_PCR} (`WrongPcrSelection`); its pcrDigest is sha256 of the PCR value the
/// log replays to (`PcrDigestMismatch`); the log holds each event kind once.
///
/// With `uefi`, the values the release pins for a UEFI boot (docs/UEFI.md), the quote
/// must instead select exactly SHA-256 {4, 7, 11, CAIRN_PCR}, and its pcrDigest be
/// sha256(`pcr4` || `pcr7` || `pcr11` || replayed PCR 12) (`UefiPcrs`): a device whose
/// firmware started another boot loader or UKI, or holds other Secure Boot keys, or whose
/// kernel, initramfs or command line differs from the release's, fails, whatever its log
/// says.
pub fn verify_quote(
    ak_public: &[u8],
    attest: &[u8],
    signature: &[u8],
    expected_nonce: &[u8],
    log: &EventLog,
    uefi: Option<&UefiPcrs>,
) -> Result<Measured> {
    let ak = RsaPublicArea::parse(ak_public)?;
    ak.check_attestation_key()?;
    let sig = RsassaSignature::parse(signature)?;
    ak.rsa_key()?
        .verify(
            Pkcs1v15Sign::new::<Sha256>(),
            &Sha256::digest(attest),
            &sig.signature,
        )
        .map_err(|_| AttestError::BadSignature)?;

    let quote = QuoteAttest::parse(attest)?;
    if quote.extra_data != expected_nonce {
        return Err(AttestError::NonceMismatch);
    }
    let pcr = log.replay()?;
    match uefi {
        None => {
            quote.check_cairn_selection()?;
            if quote.pcr_digest.as_slice() != Sha256::digest(pcr).as_slice() {
                return Err(AttestError::PcrDigestMismatch);
            }
        }
        Some(release) => {
            let pcrs = quote.sha256_pcrs()?;
            let wanted = [FIRMWARE_PCR, SECURE_BOOT_PCR, UKI_PCR, u32::from(CAIRN_PCR)];
            if pcrs != wanted {
                return Err(AttestError::UefiPcrs {
                    detail: format!("the quote selects PCRs {pcrs:?}, not {wanted:?}"),
                });
            }
            let mut h = Sha256::new();
            h.update(release.pcr4);
            h.update(release.pcr7);
            h.update(release.pcr11);
            h.update(pcr);
            if quote.pcr_digest.as_slice() != h.finalize().as_slice() {
                return Err(AttestError::UefiPcrs {
                    detail: "PCRs 4, 7, 11 and 12 are not the release's PCR 4, PCR 7 and \
                             PCR 11 and the log's PCR 12"
                        .into(),
                });
            }
        }
    }
    log.measured()
}

/// The PCR UEFI firmware measures the EFI applications it starts into (Authenticode
/// digests: systemd-boot, then the UKI).
pub const FIRMWARE_PCR: u32 = 4;

/// The PCR UEFI firmware measures its Secure Boot policy into: the variables that hold the
/// keys, then the db entries that authorized what it started.
pub const SECURE_BOOT_PCR: u32 = 7;

/// The PCR systemd-stub measures a unified kernel image's sections into.
pub const UKI_PCR: u32 = 11;

/// What a UEFI boot leaves before anything of Cairn runs, as a release pins it
/// (docs/UEFI.md): functions of signed files and firmware variables the release's builder
/// knows, so the server knows them without asking the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UefiPcrs {
    /// [`FIRMWARE_PCR`] after the firmware started the image's systemd-boot and then the
    /// release's UKI.
    pub pcr4: [u8; 32],
    /// [`SECURE_BOOT_PCR`] after the firmware measured its Secure Boot variables and the
    /// db entries that authorized systemd-boot and the UKI.
    pub pcr7: [u8; 32],
    /// [`UKI_PCR`] after systemd-stub measured the UKI's sections.
    pub pcr11: [u8; 32],
}
