//! Device authentication: a device proves it holds its ed25519 key by signing a short,
//! domain-separated message with a timestamp and a one-time nonce; the server answers a
//! signed token request with a short-lived bearer token used on every other request.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain separation: a signature made for one purpose can never be replayed for another.
pub const ENROLL_CONTEXT: &[u8] = b"cairn-device-enroll-v1\0";
pub const TOKEN_CONTEXT: &[u8] = b"cairn-device-token-v1\0";
pub const ROTATE_KEY_CONTEXT: &[u8] = b"cairn-device-rotate-key-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{what} is not valid hex of {len} bytes")]
    BadHex { what: &'static str, len: usize },
    #[error("public key is not a valid ed25519 point")]
    BadKey,
    #[error("signature does not verify")]
    BadSignature,
}

/// First contact: "this is my id, my key and my device type".
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrollRequest {
    pub device_id: String,
    /// Hex of the 32 raw ed25519 public-key bytes.
    pub public_key: String,
    pub compatible: String,
    /// Seconds since the Unix epoch; the server refuses clocks more than 5 minutes off.
    pub timestamp: i64,
    /// 16 to 64 hex digits, never reused by this device.
    pub nonce: String,
    /// Hex of the 64-byte signature over [`enroll_message`].
    pub signature: String,
}

/// "Give me a bearer token": signed with the enrolled key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRequest {
    pub device_id: String,
    pub timestamp: i64,
    pub nonce: String,
    /// Hex of the 64-byte signature over [`token_message`].
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenResponse {
    /// Opaque; sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// Seconds since the Unix epoch after which the server refuses the token.
    pub expires_at: i64,
}

/// "Replace my key with this one", like a TUF root rotation: the enrolled (old) key
/// signs to prove the request comes from the device, the new key signs the same message
/// to prove the device holds it. After it the server accepts only the new key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RotateKeyRequest {
    pub device_id: String,
    /// Hex of the 32 raw ed25519 public-key bytes of the new key.
    pub new_public_key: String,
    pub timestamp: i64,
    /// 16 to 64 hex digits, never reused by this device.
    pub nonce: String,
    /// Hex of the old (enrolled) key's signature over [`rotate_key_message`].
    pub old_signature: String,
    /// Hex of the new key's signature over the same message.
    pub new_signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RotateKeyResponse {
    pub device_id: String,
    /// The key the server accepts from now on (lowercase hex).
    pub public_key: String,
}

/// `ROTATE_KEY_CONTEXT ‖ device_id ‖ 0 ‖ old_public_key ‖ 0 ‖ new_public_key ‖ 0 ‖
/// timestamp ‖ 0 ‖ nonce`, keys in lowercase hex, the timestamp in decimal ASCII. Naming
/// the old key makes the new key's signature consent to replacing that key only.
pub fn rotate_key_message(
    device_id: &str,
    old_public_key: &str,
    new_public_key: &str,
    timestamp: i64,
    nonce: &str,
) -> Vec<u8> {
    join(
        ROTATE_KEY_CONTEXT,
        &[
            device_id,
            old_public_key,
            new_public_key,
            &timestamp.to_string(),
            nonce,
        ],
    )
}

/// `ENROLL_CONTEXT ‖ device_id ‖ 0 ‖ public_key ‖ 0 ‖ compatible ‖ 0 ‖ timestamp ‖ 0 ‖ nonce`,
/// the timestamp in decimal ASCII.
pub fn enroll_message(
    device_id: &str,
    public_key: &str,
    compatible: &str,
    timestamp: i64,
    nonce: &str,
) -> Vec<u8> {
    join(
        ENROLL_CONTEXT,
        &[
            device_id,
            public_key,
            compatible,
            &timestamp.to_string(),
            nonce,
        ],
    )
}

/// `TOKEN_CONTEXT ‖ device_id ‖ 0 ‖ timestamp ‖ 0 ‖ nonce`, the timestamp in decimal ASCII.
pub fn token_message(device_id: &str, timestamp: i64, nonce: &str) -> Vec<u8> {
    join(TOKEN_CONTEXT, &[device_id, &timestamp.to_string(), nonce])
}

fn join(context: &[u8], fields: &[&str]) -> Vec<u8> {
    let mut out = context.to_vec();
    for (i, field) in fields.iter().enumerate() {
        if i > 0 {
            out.push(0);
        }
        out.extend_from_slice(field.as_bytes());
    }
    out
}

impl EnrollRequest {
    pub fn sign(
        key: &SigningKey,
        device_id: &str,
        compatible: &str,
        timestamp: i64,
        nonce: &str,
    ) -> EnrollRequest {
        let public_key = hex::encode(key.verifying_key().as_bytes());
        let message = enroll_message(device_id, &public_key, compatible, timestamp, nonce);
        EnrollRequest {
            device_id: device_id.into(),
            public_key,
            compatible: compatible.into(),
            timestamp,
            nonce: nonce.into(),
            signature: hex::encode(key.sign(&message).to_bytes()),
        }
    }

    /// Checks the signature against the key the request itself names (proof of possession).
    pub fn verify(&self) -> Result<VerifyingKey, SignError> {
        let key = parse_public_key(&self.public_key)?;
        let message = enroll_message(
            &self.device_id,
            &self.public_key,
            &self.compatible,
            self.timestamp,
            &self.nonce,
        );
        verify(&key, &message, &self.signature)?;
        Ok(key)
    }
}

impl TokenRequest {
    pub fn sign(key: &SigningKey, device_id: &str, timestamp: i64, nonce: &str) -> TokenRequest {
        let message = token_message(device_id, timestamp, nonce);
        TokenRequest {
            device_id: device_id.into(),
            timestamp,
            nonce: nonce.into(),
            signature: hex::encode(key.sign(&message).to_bytes()),
        }
    }

    /// Checks the signature against the device's enrolled key (hex).
    pub fn verify(&self, enrolled_public_key: &str) -> Result<(), SignError> {
        let key = parse_public_key(enrolled_public_key)?;
        let message = token_message(&self.device_id, self.timestamp, &self.nonce);
        verify(&key, &message, &self.signature)
    }
}

impl RotateKeyRequest {
    pub fn sign(
        old: &SigningKey,
        new: &SigningKey,
        device_id: &str,
        timestamp: i64,
        nonce: &str,
    ) -> RotateKeyRequest {
        let old_public_key = hex::encode(old.verifying_key().as_bytes());
        let new_public_key = hex::encode(new.verifying_key().as_bytes());
        let message = rotate_key_message(
            device_id,
            &old_public_key,
            &new_public_key,
            timestamp,
            nonce,
        );
        RotateKeyRequest {
            device_id: device_id.into(),
            new_public_key,
            timestamp,
            nonce: nonce.into(),
            old_signature: hex::encode(old.sign(&message).to_bytes()),
            new_signature: hex::encode(new.sign(&message).to_bytes()),
        }
    }

    /// Checks both signatures: the old one against the device's enrolled key (hex), the
    /// new one against the key the request names. Returns the new key.
    pub fn verify(&self, enrolled_public_key: &str) -> Result<VerifyingKey, SignError> {
        let old = parse_public_key(enrolled_public_key)?;
        let new = parse_public_key(&self.new_public_key)?;
        let message = rotate_key_message(
            &self.device_id,
            &enrolled_public_key.to_ascii_lowercase(),
            &self.new_public_key.to_ascii_lowercase(),
            self.timestamp,
            &self.nonce,
        );
        verify(&old, &message, &self.old_signature)?;
        verify(&new, &message, &self.new_signature)?;
        Ok(new)
    }
}

pub fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, SignError> {
    let bytes: [u8; 32] = decode_array(hex_key, "public key")?;
    VerifyingKey::from_bytes(&bytes).map_err(|_| SignError::BadKey)
}

fn verify(key: &VerifyingKey, message: &[u8], signature: &str) -> Result<(), SignError> {
    let bytes: [u8; 64] = decode_array(signature, "signature")?;
    let sig = ed25519_dalek::Signature::from_bytes(&bytes);
    // verify_strict refuses malleable signatures and small-order keys.
    key.verify_strict(message, &sig)
        .map_err(|_| SignError::BadSignature)
}

fn decode_array<const N: usize>(s: &str, what: &'static str) -> Result<[u8; N], SignError> {
    let bad = || SignError::BadHex { what, len: N };
    let bytes = hex::decode(s).map_err(|_| bad())?;
    bytes.try_into().map_err(|_| bad())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(seed: u8) -> SigningKey {
        SigningKey::from_bytes(&[seed; 32])
    }

    #[test]
    fn signed_token_request_verifies_only_with_the_signing_key() {
        let request = TokenRequest::sign(&key(1), "dev-1", 1_700_000_000, "00112233445566778899");
        let own = hex::encode(key(1).verifying_key().as_bytes());
        let other = hex::encode(key(2).verifying_key().as_bytes());
        assert!(request.verify(&own).is_ok());
        assert!(matches!(
            request.verify(&other),
            Err(SignError::BadSignature)
        ));
    }

    #[test]
    fn any_changed_field_breaks_the_signature() {
        let request = EnrollRequest::sign(&key(3), "dev-1", "cairn-test", 5, "abcdabcdabcdabcd");
        assert!(request.verify().is_ok());
        let mut moved = request.clone();
        moved.device_id = "dev-2".into();
        assert!(moved.verify().is_err());
        let mut later = request.clone();
        later.timestamp = 6;
        assert!(later.verify().is_err());
        let mut other_type = request;
        other_type.compatible = "cairn-other".into();
        assert!(other_type.verify().is_err());
    }

    #[test]
    fn a_key_rotation_needs_both_the_old_and_the_new_key() {
        let old = hex::encode(key(1).verifying_key().as_bytes());
        let request = RotateKeyRequest::sign(&key(1), &key(2), "dev-1", 7, "abcdabcdabcdabcd");
        let new = request.verify(&old).expect("both signatures");
        assert_eq!(new, key(2).verifying_key());
        // The new key alone (an attacker's key), or the old key alone, is not enough.
        let by_new_only = RotateKeyRequest::sign(&key(3), &key(2), "dev-1", 7, "abcdabcdabcdabcd");
        assert!(by_new_only.verify(&old).is_err());
        let mut by_old_only = request.clone();
        by_old_only.new_signature = hex::encode(key(3).sign(b"other").to_bytes());
        assert!(by_old_only.verify(&old).is_err());
        // Pointed at another new key, or replayed for another device: broken.
        let mut swapped = request.clone();
        swapped.new_public_key = hex::encode(key(3).verifying_key().as_bytes());
        assert!(swapped.verify(&old).is_err());
        let mut moved = request;
        moved.device_id = "dev-2".into();
        assert!(moved.verify(&old).is_err());
    }

    #[test]
    fn field_boundaries_are_unambiguous() {
        // Without separators both would sign "dev-1123".
        assert_ne!(
            token_message("dev-1", 12, "3"),
            token_message("dev-11", 2, "3")
        );
    }
}
