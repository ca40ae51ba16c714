//! Ed25519 keys, their ids and the files they are kept in.

use std::fmt;

use ed25519_dalek::Signer;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, Result};

/// A key's id: hex SHA-256 of its 32 raw public-key bytes. Stable and derived, so a
/// root cannot name a key with a misleading id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct KeyId(pub String);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The first 16 hex digits are plenty for people; the full id is in the JSON.
        f.write_str(&self.0[..self.0.len().min(16)])
    }
}

/// A public key as it appears in a trust root and in `*.pub.json` files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub id: KeyId,
    pub algorithm: String,
    /// Hex of the 32 raw public-key bytes.
    pub public: String,
}

impl PublicKey {
    pub fn from_verifying_key(key: &ed25519_dalek::VerifyingKey) -> PublicKey {
        PublicKey {
            id: key_id(key),
            algorithm: ALGORITHM.to_string(),
            public: hex::encode(key.as_bytes()),
        }
    }

    /// The usable key, after checking that the algorithm is ours and the id matches.
    pub fn verifying_key(&self) -> Result<ed25519_dalek::VerifyingKey> {
        if self.algorithm != ALGORITHM {
            return Err(Error::Key(format!(
                "key {} uses algorithm '{}', only '{ALGORITHM}' is supported",
                self.id, self.algorithm
            )));
        }
        let bytes: [u8; 32] = decode_hex_array(&self.public, "public key")?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&bytes).map_err(|e| {
            Error::Key(format!("key {} is not a valid ed25519 point: {e}", self.id))
        })?;
        if key_id(&key) != self.id {
            return Err(Error::Key(format!(
                "key id {} does not match its public key (expected {})",
                self.id,
                key_id(&key).0
            )));
        }
        Ok(key)
    }

    /// Verifies `sig` over `message`. Uses `verify_strict` to refuse malleable signatures.
    pub fn verify(&self, message: &[u8], sig: &Signature) -> Result<()> {
        let key = self.verifying_key()?;
        let bytes: [u8; 64] = decode_hex_array(&sig.sig, "signature")?;
        let sig = ed25519_dalek::Signature::from_bytes(&bytes);
        key.verify_strict(message, &sig)
            .map_err(|_| Error::Key("signature does not verify".into()))
    }
}

pub const ALGORITHM: &str = "ed25519";

/// One signature over a document, by the key with id `key_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub key_id: KeyId,
    /// Hex of the 64 signature bytes.
    pub sig: String,
}

/// A secret signing key and the file format that holds it (`*.key.json`, mode 0600).
pub struct SigningKey {
    key: ed25519_dalek::SigningKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SecretKeyFile {
    #[serde(rename = "type")]
    kind: String,
    id: KeyId,
    algorithm: String,
    secret: String,
}

const SECRET_KEY_TYPE: &str = "cairn-secret-key";

impl SigningKey {
    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<SigningKey> {
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed)
            .map_err(|e| Error::Key(format!("no randomness from the OS: {e}")))?;
        Ok(SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        })
    }

    pub fn public(&self) -> PublicKey {
        PublicKey::from_verifying_key(&self.key.verifying_key())
    }

    pub fn id(&self) -> KeyId {
        key_id(&self.key.verifying_key())
    }

    pub fn sign(&self, message: &[u8]) -> Signature {
        Signature {
            key_id: self.id(),
            sig: hex::encode(self.key.sign(message).to_bytes()),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        let file = SecretKeyFile {
            kind: SECRET_KEY_TYPE.into(),
            id: self.id(),
            algorithm: ALGORITHM.into(),
            secret: hex::encode(self.key.to_bytes()),
        };
        serde_json::to_vec_pretty(&file).expect("a struct of strings always serialises")
    }

    pub fn from_json(bytes: &[u8]) -> Result<SigningKey> {
        let file: SecretKeyFile = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "secret key file",
            source,
        })?;
        if file.kind != SECRET_KEY_TYPE || file.algorithm != ALGORITHM {
            return Err(Error::Key(format!(
                "not a Cairn ed25519 secret key (type '{}', algorithm '{}')",
                file.kind, file.algorithm
            )));
        }
        let seed: [u8; 32] = decode_hex_array(&file.secret, "secret key")?;
        let key = SigningKey {
            key: ed25519_dalek::SigningKey::from_bytes(&seed),
        };
        if key.id() != file.id {
            return Err(Error::Key(format!(
                "secret key file says id {} but the key's id is {}",
                file.id,
                key.id()
            )));
        }
        Ok(key)
    }
}

pub fn key_id(key: &ed25519_dalek::VerifyingKey) -> KeyId {
    KeyId(hex::encode(Sha256::digest(key.as_bytes())))
}

fn decode_hex_array<const N: usize>(s: &str, what: &str) -> Result<[u8; N]> {
    let bytes = hex::decode(s).map_err(|e| Error::Key(format!("{what} is not hex: {e}")))?;
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| Error::Key(format!("{what} is {} bytes, expected {N}", b.len())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_key_round_trips_and_signs() {
        let key = SigningKey::generate().unwrap();
        let back = SigningKey::from_json(&key.to_json()).unwrap();
        assert_eq!(key.id(), back.id());
        let sig = back.sign(b"hello");
        key.public().verify(b"hello", &sig).unwrap();
        assert!(key.public().verify(b"hellO", &sig).is_err());
    }

    #[test]
    fn public_key_with_wrong_id_is_rejected() {
        let mut public = SigningKey::generate().unwrap().public();
        public.id = SigningKey::generate().unwrap().id();
        let err = public.verifying_key().unwrap_err().to_string();
        assert!(err.contains("does not match"), "{err}");
    }
}
