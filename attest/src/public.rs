//! TPM2B_PUBLIC for RSA keys: the fields the verifier checks, and the key's TPM Name.

use rsa::{BigUint, RsaPublicKey};
use sha2::{Digest, Sha256};

use crate::error::{AttestError, Result};
use crate::wire::*;

const STRUCTURE: &str = "TPM2B_PUBLIC";

/// TPMA_OBJECT bits.
pub mod attr {
    pub const FIXED_TPM: u32 = 1 << 1;
    pub const FIXED_PARENT: u32 = 1 << 4;
    pub const SENSITIVE_DATA_ORIGIN: u32 = 1 << 5;
    pub const USER_WITH_AUTH: u32 = 1 << 6;
    pub const ADMIN_WITH_POLICY: u32 = 1 << 7;
    pub const RESTRICTED: u32 = 1 << 16;
    pub const DECRYPT: u32 = 1 << 17;
    pub const SIGN: u32 = 1 << 18;
}

/// TPMT_SYM_DEF_OBJECT when not TPM_ALG_NULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SymmetricDef {
    pub algorithm: u16,
    pub key_bits: u16,
    pub mode: u16,
}

/// TPMT_RSA_SCHEME when not TPM_ALG_NULL. `hash` is `None` for schemes without one (RSAES).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RsaScheme {
    pub scheme: u16,
    pub hash: Option<u16>,
}

/// A parsed RSA TPMT_PUBLIC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsaPublicArea {
    pub name_alg: u16,
    pub object_attributes: u32,
    pub auth_policy: Vec<u8>,
    pub symmetric: Option<SymmetricDef>,
    pub scheme: Option<RsaScheme>,
    pub key_bits: u16,
    /// The public exponent; the TPM's 0 ("default") is returned as 65537.
    pub exponent: u32,
    pub modulus: Vec<u8>,
    /// The TPMT_PUBLIC exactly as marshalled (the Name is computed over these bytes).
    tpmt_public: Vec<u8>,
}

impl RsaPublicArea {
    /// Parses a TPM2B_PUBLIC (u16 size, then TPMT_PUBLIC) holding an RSA key.
    pub fn parse(tpm2b_public: &[u8]) -> Result<Self> {
        let body = unwrap_tpm2b(tpm2b_public, STRUCTURE, usize::from(u16::MAX))?;
        let mut r = Reader::new(body, STRUCTURE);
        let key_type = r.u16("type")?;
        if key_type != TPM_ALG_RSA {
            return Err(AttestError::unsupported(
                STRUCTURE,
                format!("key type {key_type:#06x}, only RSA ({TPM_ALG_RSA:#06x})"),
            ));
        }
        let name_alg = r.u16("nameAlg")?;
        let object_attributes = r.u32("objectAttributes")?;
        let auth_policy = r.tpm2b("authPolicy", 64)?.to_vec();
        let symmetric = match r.u16("symmetric.algorithm")? {
            TPM_ALG_NULL => None,
            algorithm @ (TPM_ALG_AES | TPM_ALG_SM4 | TPM_ALG_CAMELLIA) => Some(SymmetricDef {
                algorithm,
                key_bits: r.u16("symmetric.keyBits")?,
                mode: r.u16("symmetric.mode")?,
            }),
            other => return Err(r.error(format!("symmetric algorithm {other:#06x}"))),
        };
        let scheme = match r.u16("scheme.scheme")? {
            TPM_ALG_NULL => None,
            TPM_ALG_RSAES => Some(RsaScheme {
                scheme: TPM_ALG_RSAES,
                hash: None,
            }),
            scheme @ (TPM_ALG_RSASSA | TPM_ALG_RSAPSS | TPM_ALG_OAEP) => Some(RsaScheme {
                scheme,
                hash: Some(r.u16("scheme.hashAlg")?),
            }),
            other => return Err(r.error(format!("RSA scheme {other:#06x}"))),
        };
        let key_bits = r.u16("keyBits")?;
        let exponent = match r.u32("exponent")? {
            0 => 65537,
            e => e,
        };
        let modulus = r.tpm2b("unique.rsa", 512)?.to_vec();
        r.finish()?;
        if modulus.is_empty() || usize::from(key_bits) != modulus.len() * 8 {
            return Err(AttestError::malformed(
                STRUCTURE,
                format!("keyBits {key_bits} but a {}-byte modulus", modulus.len()),
            ));
        }
        Ok(RsaPublicArea {
            name_alg,
            object_attributes,
            auth_policy,
            symmetric,
            scheme,
            key_bits,
            exponent,
            modulus,
            tpmt_public: body.to_vec(),
        })
    }

    /// The TPMT_PUBLIC bytes as marshalled.
    pub fn tpmt_public(&self) -> &[u8] {
        &self.tpmt_public
    }

    /// The TPM Name: nameAlg (u16 BE) || H_nameAlg(TPMT_PUBLIC). Only SHA-256 names.
    pub fn name(&self) -> Result<Vec<u8>> {
        if self.name_alg != TPM_ALG_SHA256 {
            return Err(AttestError::unsupported(
                STRUCTURE,
                format!("nameAlg {:#06x}, only SHA-256", self.name_alg),
            ));
        }
        let mut name = TPM_ALG_SHA256.to_be_bytes().to_vec();
        name.extend_from_slice(&Sha256::digest(&self.tpmt_public));
        Ok(name)
    }

    pub fn has(&self, attributes: u32) -> bool {
        self.object_attributes & attributes == attributes
    }

    /// The key as an `rsa` public key.
    pub fn rsa_key(&self) -> Result<RsaPublicKey> {
        RsaPublicKey::new(
            BigUint::from_bytes_be(&self.modulus),
            BigUint::from(self.exponent),
        )
        .map_err(|e| AttestError::unsupported(STRUCTURE, format!("RSA key: {e}")))
    }

    /// Checks this is an attestation key Cairn accepts: a restricted signing key that
    /// cannot leave its TPM (restricted, sign, fixedTPM, fixedParent; not decrypt), with a
    /// SHA-256 name and an RSASSA-SHA256 (or unset) scheme.
    pub fn check_attestation_key(&self) -> Result<()> {
        let need = [
            (attr::RESTRICTED, "restricted"),
            (attr::SIGN, "sign"),
            (attr::FIXED_TPM, "fixedTPM"),
            (attr::FIXED_PARENT, "fixedParent"),
        ];
        for (bit, name) in need {
            if !self.has(bit) {
                return Err(AttestError::NotAttestationKey(format!("{name} is not set")));
            }
        }
        if self.has(attr::DECRYPT) {
            return Err(AttestError::NotAttestationKey("decrypt is set".into()));
        }
        if self.name_alg != TPM_ALG_SHA256 {
            return Err(AttestError::NotAttestationKey(format!(
                "nameAlg {:#06x}, not SHA-256",
                self.name_alg
            )));
        }
        match self.scheme {
            None
            | Some(RsaScheme {
                scheme: TPM_ALG_RSASSA,
                hash: Some(TPM_ALG_SHA256),
            }) => Ok(()),
            Some(s) => Err(AttestError::NotAttestationKey(format!(
                "scheme {:#06x}/{:?}, not RSASSA-SHA256",
                s.scheme, s.hash
            ))),
        }
    }
}
