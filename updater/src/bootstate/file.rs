//! `file` backend: boot state as JSON in a plain directory, for development and for
//! machines whose bootloader integration is done elsewhere. Atomic by rename.

use std::fs;
use std::path::PathBuf;

use super::{BootState, BootStateError, BootStateStore};

pub struct FileStore {
    path: PathBuf,
}

impl FileStore {
    pub fn new(dir: impl Into<PathBuf>) -> FileStore {
        FileStore {
            path: dir.into().join("bootstate.json"),
        }
    }
}

impl BootStateStore for FileStore {
    fn load(&self) -> Result<BootState, BootStateError> {
        let bytes = fs::read(&self.path).map_err(|source| BootStateError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        serde_json::from_slice(&bytes)
            .map_err(|e| BootStateError::Invalid(format!("{}: {e}", self.path.display())))
    }

    fn store(&mut self, state: &BootState) -> Result<BootState, BootStateError> {
        let mut written = state.clone();
        written.seq = self.load().map_or(state.seq, |s| s.seq) + 1;
        let bytes = serde_json::to_vec_pretty(&written).expect("boot state serialises");
        cairn_atomic::write(&self.path, &bytes).map_err(|source| BootStateError::Io {
            path: self.path.display().to_string(),
            source,
        })?;
        Ok(written)
    }
}
