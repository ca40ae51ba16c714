//! The device's identity on the fleet server: an id and an ed25519 key, kept in one JSON
//! file on the data partition. Factory provisioning writes it; a device without one makes
//! its own on first use and enrolls it for an operator to approve.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a device identity: {why}")]
    Invalid { path: PathBuf, why: String },
    #[error("no randomness for a new device key: {0}")]
    Random(String),
}

pub use cairn_server_api::DeviceIdentity;

/// Reads the identity at `path`, or creates and saves one (atomically, mode 0600) when
/// the file does not exist. `device_id` overrides the derived id of a new key.
pub fn load_or_create(
    path: &Path,
    device_id: Option<&str>,
) -> Result<DeviceIdentity, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => DeviceIdentity::from_json(&bytes).map_err(|e| IdentityError::Invalid {
            path: path.into(),
            why: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => create(path, device_id),
        Err(source) => Err(IdentityError::Io {
            path: path.into(),
            source,
        }),
    }
}

fn create(path: &Path, device_id: Option<&str>) -> Result<DeviceIdentity, IdentityError> {
    let mut secret = [0u8; 32];
    getrandom::getrandom(&mut secret).map_err(|e| IdentityError::Random(e.to_string()))?;
    let identity = DeviceIdentity::from_secret(secret, device_id);
    let io = |source| IdentityError::Io {
        path: path.into(),
        source,
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    cairn_atomic::write_private(path, &identity.to_json()).map_err(io)?;
    tracing::info!(device_id = %identity.device_id, path = %path.display(), "created a device identity");
    Ok(identity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_identity_is_saved_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id/identity.json");
        let made = load_or_create(&path, None).unwrap();
        assert!(made.device_id.starts_with("dev-") && made.device_id.len() == 20);
        let mode = std::fs::metadata(&path).unwrap().permissions();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.mode() & 0o777, 0o600);
        let again = load_or_create(&path, Some("ignored")).unwrap();
        assert_eq!(again.device_id, made.device_id);
        assert_eq!(again.public_key_hex(), made.public_key_hex());
    }

    #[test]
    fn a_damaged_identity_is_an_error_not_a_new_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("identity.json");
        std::fs::write(&path, br#"{"device_id":"d","secret_key":"abcd"}"#).unwrap();
        let err = load_or_create(&path, None).err().unwrap();
        assert!(err.to_string().contains("not 64 hex digits"), "{err}");
    }
}
