//! The device identity file: an id and an ed25519 secret key as JSON, kept on the device's
//! data partition (`<data_dir>/identity.json`, mode 0600). cairnd makes one on first use;
//! `cairn-image provision` makes them at the factory. One format, owned here; the I/O
//! lives with each writer.

use ed25519_dalek::SigningKey;
use serde::{Deserialize, Serialize};

pub struct DeviceIdentity {
    pub device_id: String,
    pub key: SigningKey,
}

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct IdentityFile {
    device_id: String,
    /// The 32-byte ed25519 secret key, hex.
    secret_key: String,
}

#[derive(Debug, thiserror::Error)]
#[error("not a device identity: {0}")]
pub struct IdentityFormatError(String);

impl DeviceIdentity {
    /// The identity of `secret` (32 random bytes); `device_id` overrides the id derived
    /// from the public key (`dev-` and its first 16 hex digits).
    pub fn from_secret(secret: [u8; 32], device_id: Option<&str>) -> DeviceIdentity {
        let key = SigningKey::from_bytes(&secret);
        let device_id = device_id.map(str::to_string).unwrap_or_else(|| {
            format!("dev-{}", &hex::encode(key.verifying_key().as_bytes())[..16])
        });
        DeviceIdentity { device_id, key }
    }

    pub fn from_json(bytes: &[u8]) -> Result<DeviceIdentity, IdentityFormatError> {
        let file: IdentityFile =
            serde_json::from_slice(bytes).map_err(|e| IdentityFormatError(e.to_string()))?;
        let secret: [u8; 32] = hex::decode(&file.secret_key)
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| IdentityFormatError("secret_key is not 64 hex digits".into()))?;
        Ok(DeviceIdentity {
            device_id: file.device_id,
            key: SigningKey::from_bytes(&secret),
        })
    }

    pub fn to_json(&self) -> Vec<u8> {
        let file = IdentityFile {
            device_id: self.device_id.clone(),
            secret_key: hex::encode(self.key.to_bytes()),
        };
        serde_json::to_vec_pretty(&file).expect("an identity serialises")
    }

    pub fn public_key_hex(&self) -> String {
        hex::encode(self.key.verifying_key().as_bytes())
    }
}
