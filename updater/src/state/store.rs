//! Persists [`DeviceState`] as `state.json` in the data dir, replaced atomically
//! (INVARIANTS.md 9).

use std::fs;
use std::path::{Path, PathBuf};

use super::DeviceState;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state file {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {message}")]
    Corrupt { path: String, message: String },
}

pub struct StateStore {
    path: PathBuf,
}

impl StateStore {
    pub fn new(data_dir: &Path) -> StateStore {
        StateStore {
            path: data_dir.join("state.json"),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` when the device has never written state (first boot).
    pub fn load(&self) -> Result<Option<DeviceState>, StateError> {
        let bytes = match fs::read(&self.path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateError::Io {
                    path: self.path.display().to_string(),
                    source,
                })
            }
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| StateError::Corrupt {
                path: self.path.display().to_string(),
                message: e.to_string(),
            })
    }

    pub fn save(&self, state: &DeviceState) -> Result<(), StateError> {
        let io = |source| StateError::Io {
            path: self.path.display().to_string(),
            source,
        };
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(io)?;
        }
        let bytes = serde_json::to_vec_pretty(state).expect("state serialises");
        super::reserve::write(&self.path, &bytes).map_err(io)
    }
}
