//! Conversions between tss-esapi types and the TPM wire formats Cairn stores and sends.

use serde::{Deserialize, Serialize};
use tss_esapi::structures::{Private, Public};
use tss_esapi::traits::{Marshall, UnMarshall};

use crate::error::{Op, TpmError};

/// An attestation key as the TPM exported it: both fields are the TPM's own marshalled
/// structures (`tpm2_load -r PRIVATE -u PUBLIC` accepts them as files). The private part
/// is encrypted by the EK's seed and useless off this TPM. JSON: hex strings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AkBlob {
    /// TPM2B_PRIVATE.
    #[serde(with = "hex::serde")]
    pub private: Vec<u8>,
    /// TPM2B_PUBLIC: what the server enrolls.
    #[serde(with = "hex::serde")]
    pub public: Vec<u8>,
}

/// A quote: TPMS_ATTEST as signed, and TPMT_SIGNATURE (`tpm2_checkquote -m/-s` read them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quote {
    #[serde(with = "hex::serde")]
    pub attest: Vec<u8>,
    #[serde(with = "hex::serde")]
    pub signature: Vec<u8>,
}

/// u16 big-endian size, then the bytes.
pub(crate) fn tpm2b(body: &[u8]) -> Result<Vec<u8>, TpmError> {
    let size = u16::try_from(body.len())
        .map_err(|_| TpmError::invalid("TPM2B", format!("{} bytes exceed u16", body.len())))?;
    let mut out = size.to_be_bytes().to_vec();
    out.extend_from_slice(body);
    Ok(out)
}

/// The body of a buffer holding exactly one TPM2B.
pub(crate) fn tpm2b_body<'a>(buf: &'a [u8], what: &'static str) -> Result<&'a [u8], TpmError> {
    let (size, body) = buf
        .split_first_chunk::<2>()
        .ok_or_else(|| TpmError::invalid(what, "shorter than its size field"))?;
    let size = usize::from(u16::from_be_bytes(*size));
    if body.len() != size {
        return Err(TpmError::invalid(
            what,
            format!("size field says {size} bytes, {} follow", body.len()),
        ));
    }
    Ok(body)
}

pub(crate) fn public_to_tpm2b(public: &Public) -> Result<Vec<u8>, TpmError> {
    tpm2b(&public.marshall().op("marshal TPMT_PUBLIC")?)
}

pub(crate) fn public_from_tpm2b(buf: &[u8]) -> Result<Public, TpmError> {
    Public::unmarshall(tpm2b_body(buf, "TPM2B_PUBLIC")?).op("unmarshal TPMT_PUBLIC")
}

pub(crate) fn private_to_tpm2b(private: &Private) -> Result<Vec<u8>, TpmError> {
    tpm2b(private.value())
}

pub(crate) fn private_from_tpm2b(buf: &[u8]) -> Result<Private, TpmError> {
    Private::try_from(tpm2b_body(buf, "TPM2B_PRIVATE")?.to_vec()).op("TPM2B_PRIVATE size")
}
