//! TPM2_MakeCredential in software (TPM 2.0 Part 1 §24, "Credential Protection"), for an
//! RSA endorsement key with a SHA-256 name algorithm and AES-CFB symmetric parameters
//! (the TCG default RSA-2048 EK template, L-1).
//!
//! - seed: random, as long as the EK nameAlg's digest (32 bytes);
//! - encrypted secret: RSA-OAEP(EK, seed), hash = EK nameAlg, label `"IDENTITY\0"`;
//! - symmetric key: KDFa(nameAlg, seed, "STORAGE", Name(AK), "", EK symmetric keyBits);
//! - encIdentity: AES-CFB(symmetric key, IV = 0, TPM2B_DIGEST(secret));
//! - HMAC key: KDFa(nameAlg, seed, "INTEGRITY", "", "", digest bits);
//! - outer HMAC: HMAC(HMAC key, encIdentity || Name(AK));
//! - credential blob: TPM2B_ID_OBJECT = u16 size || TPM2B_DIGEST(outer HMAC) || encIdentity.
//!
//! Only the TPM holding the EK's private key recovers the seed, and it releases the secret
//! only for an object whose Name is `ak_name` loaded on that same TPM.

use aes::{Aes128, Aes256};
use cfb_mode::cipher::{AsyncStreamCipher, BlockCipher, BlockEncryptMut, KeyInit, KeyIvInit};
use hmac::{Hmac, Mac};
use rsa::Oaep;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::error::{AttestError, Result};
use crate::public::{attr, RsaPublicArea};
use crate::wire::*;

type HmacSha256 = Hmac<Sha256>;

/// What the verifier sends the device; both fields are the TPM's own wire format
/// (`tpm2_activatecredential -i` reads the concatenation of the two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Challenge {
    /// TPM2B_ID_OBJECT.
    #[serde(with = "hex::serde")]
    pub credential_blob: Vec<u8>,
    /// TPM2B_ENCRYPTED_SECRET.
    #[serde(with = "hex::serde")]
    pub encrypted_secret: Vec<u8>,
}

/// KDFa with HMAC-SHA256 (TPM 2.0 Part 1 §11.4.10.2): counter mode, `label` is
/// NUL-terminated here, output truncated to `bits` (a multiple of 8).
pub fn kdfa_sha256(
    key: &[u8],
    label: &str,
    context_u: &[u8],
    context_v: &[u8],
    bits: u32,
) -> Vec<u8> {
    let len = (bits / 8) as usize;
    let mut out = Vec::with_capacity(len + 32);
    let mut counter: u32 = 0;
    while out.len() < len {
        counter += 1;
        // HMAC accepts keys of any length, so this cannot fail.
        let mut mac = <HmacSha256 as Mac>::new_from_slice(key).expect("HMAC takes any key length");
        mac.update(&counter.to_be_bytes());
        mac.update(label.as_bytes());
        mac.update(&[0]);
        mac.update(context_u);
        mac.update(context_v);
        mac.update(&bits.to_be_bytes());
        out.extend_from_slice(&mac.finalize().into_bytes());
    }
    out.truncate(len);
    out
}

fn cfb_encrypt<C>(key: &[u8], buf: &mut [u8]) -> Result<()>
where
    C: BlockEncryptMut + BlockCipher + KeyInit,
{
    let iv = vec![0u8; C::block_size()];
    cfb_mode::Encryptor::<C>::new_from_slices(key, &iv)
        .map_err(|e| AttestError::Crypto(format!("AES-CFB key: {e}")))?
        .encrypt(buf);
    Ok(())
}

/// Checks an EK public area is one `make_credential` can target: RSA, restricted
/// decryption key, SHA-256 name, AES-128/256-CFB symmetric parameters.
fn check_endorsement_key(ek: &RsaPublicArea) -> Result<u16> {
    let bad = |s: String| Err(AttestError::NotEndorsementKey(s));
    if !ek.has(attr::RESTRICTED | attr::DECRYPT) || ek.has(attr::SIGN) {
        return bad(format!(
            "objectAttributes {:#010x} are not a restricted decryption key's",
            ek.object_attributes
        ));
    }
    if ek.name_alg != TPM_ALG_SHA256 {
        return bad(format!("nameAlg {:#06x}, only SHA-256", ek.name_alg));
    }
    match ek.symmetric {
        Some(s)
            if s.algorithm == TPM_ALG_AES
                && s.mode == TPM_ALG_CFB
                && matches!(s.key_bits, 128 | 256) =>
        {
            Ok(s.key_bits)
        }
        other => bad(format!("symmetric {other:?}, need AES-128/256-CFB")),
    }
}

/// TPM2_MakeCredential: wraps `secret` (1..=32 bytes) so that only the TPM holding the
/// EK `ek_public` (TPM2B_PUBLIC) can recover it, and only for the object named `ak_name`.
///
/// This does not look at the AK itself; a verifier should use [`challenge_ak`], which
/// first checks the AK is a restricted signing key.
pub fn make_credential(ek_public: &[u8], ak_name: &[u8], secret: &[u8]) -> Result<Challenge> {
    let ek = RsaPublicArea::parse(ek_public)?;
    let sym_bits = check_endorsement_key(&ek)?;
    const DIGEST: usize = 32; // SHA-256, checked above
    if secret.is_empty() || secret.len() > DIGEST {
        return Err(AttestError::SecretSize {
            len: secret.len(),
            max: DIGEST,
        });
    }
    if ak_name.is_empty() || ak_name.len() > 2 + 64 {
        return Err(AttestError::malformed(
            "TPM2B_NAME",
            format!("{} bytes", ak_name.len()),
        ));
    }

    let mut seed = [0u8; DIGEST];
    getrandom::getrandom(&mut seed)
        .map_err(|e| AttestError::Crypto(format!("random seed: {e}")))?;
    let encrypted_seed = ek
        .rsa_key()?
        .encrypt(
            &mut rsa::rand_core::OsRng,
            Oaep::new_with_label::<Sha256, _>("IDENTITY\0"),
            &seed,
        )
        .map_err(|e| AttestError::Crypto(format!("RSA-OAEP: {e}")))?;

    let sym_key = kdfa_sha256(&seed, "STORAGE", ak_name, &[], u32::from(sym_bits));
    let mut enc_identity = tpm2b(secret)?;
    match sym_bits {
        128 => cfb_encrypt::<Aes128>(&sym_key, &mut enc_identity)?,
        _ => cfb_encrypt::<Aes256>(&sym_key, &mut enc_identity)?,
    }

    let hmac_key = kdfa_sha256(&seed, "INTEGRITY", &[], &[], 8 * DIGEST as u32);
    let mut mac =
        <HmacSha256 as Mac>::new_from_slice(&hmac_key).expect("HMAC takes any key length");
    mac.update(&enc_identity);
    mac.update(ak_name);
    let outer_hmac = mac.finalize().into_bytes();

    let mut id_object = tpm2b(&outer_hmac)?;
    id_object.extend_from_slice(&enc_identity);
    Ok(Challenge {
        credential_blob: tpm2b(&id_object)?,
        encrypted_secret: tpm2b(&encrypted_seed)?,
    })
}

/// The verifier's enrollment challenge: checks `ak_public` (TPM2B_PUBLIC) is a restricted
/// signing key that cannot leave its TPM, computes its Name and calls [`make_credential`].
pub fn challenge_ak(ek_public: &[u8], ak_public: &[u8], secret: &[u8]) -> Result<Challenge> {
    let ak = RsaPublicArea::parse(ak_public)?;
    ak.check_attestation_key()?;
    make_credential(ek_public, &ak.name()?, secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kdfa_lengths_and_determinism() {
        let a = kdfa_sha256(b"seed", "STORAGE", b"name", b"", 128);
        assert_eq!(a.len(), 16);
        assert_eq!(a, kdfa_sha256(b"seed", "STORAGE", b"name", b"", 128));
        // The bit count is hashed in, so a longer output is not an extension.
        let b = kdfa_sha256(b"seed", "STORAGE", b"name", b"", 256);
        assert_eq!(b.len(), 32);
        assert_ne!(&b[..16], &a[..]);
        assert_eq!(kdfa_sha256(b"k", "X", b"", b"", 520).len(), 65);
    }
}
