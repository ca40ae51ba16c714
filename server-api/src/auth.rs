//! Device authentication: a device proves it holds its ed25519 key by signing a short,
//! domain-separated message with a timestamp and a one-time nonce; the server answers a
//! signed token request with a short-lived bearer token used on every other request.

use ed25519_dalek::{Signer, SigningKey, VerifyingKey};
use serde::{Deserialize, Serialize};

/// Domain separation: a signature made for one purpose can never be replayed for another.
pub const ENROLL_CONTEXT: &[u8] = b"cairn-device-enroll-v1\0";
pub const TOKEN_CONTEXT: &[u8] = b"cairn-device-token-v1\0";

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
    fn field_boundaries_are_unambiguous() {
        // Without separators both would sign "dev-1123".
        assert_ne!(
            token_message("dev-1", 12, "3"),
            token_message("dev-11", 2, "3")
        );
    }
}
