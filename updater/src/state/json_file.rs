//! A small JSON record cairnd keeps beside its state (the reboot hooks' status, the
//! container preload plan, why a reboot waits for its lease): read whole, replaced
//! atomically (through the space reserve, `reserve.rs`), removed when done.

use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::Serialize;

pub struct JsonFile<T> {
    path: PathBuf,
    record: PhantomData<T>,
}

impl<T: Serialize + DeserializeOwned> JsonFile<T> {
    pub fn new(path: PathBuf) -> JsonFile<T> {
        JsonFile {
            path,
            record: PhantomData,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `None` when absent. An unreadable file is logged and read as absent: it is only
    /// ever replaced atomically, so unreadable means damaged by something else.
    pub fn load(&self) -> Option<T> {
        let bytes = match std::fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            Err(e) => {
                tracing::error!(path = %self.path.display(), "unreadable, ignored: {e}");
                return None;
            }
        };
        serde_json::from_slice(&bytes)
            .map_err(|e| tracing::error!(path = %self.path.display(), "unreadable, ignored: {e}"))
            .ok()
    }

    pub fn save(&self, record: &T) -> io::Result<()> {
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        let bytes = serde_json::to_vec_pretty(record)?;
        super::reserve::write(&self.path, &bytes)
    }

    /// Removes the record; absent already is fine.
    pub fn clear(&self) -> io::Result<()> {
        match std::fs::remove_file(&self.path) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }
}
