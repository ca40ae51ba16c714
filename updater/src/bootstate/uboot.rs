//! `uboot-env` backend: two env-format copies on the FAT boot partition
//! (`bootstate.0`, `bootstate.1`), each with a CRC and a sequence number. A write goes to
//! the copy that is not the newest, so a torn write never loses the last good state
//! (INVARIANTS.md 7). U-Boot's fatwrite is not power-safe; this scheme does not need it
//! to be.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use super::envblob::{self, ENV_SIZE};
use super::{BootState, BootStateError, BootStateStore};

pub const COPY_NAMES: [&str; 2] = ["bootstate.0", "bootstate.1"];

pub struct UbootEnvStore {
    dir: PathBuf,
}

/// One copy as read from disk.
struct Copy {
    index: usize,
    vars: BTreeMap<String, String>,
    state: BootState,
}

impl UbootEnvStore {
    /// `dir` is where the boot partition is mounted (usually `/boot`).
    pub fn new(dir: impl Into<PathBuf>) -> UbootEnvStore {
        UbootEnvStore { dir: dir.into() }
    }

    pub fn copy_path(&self, index: usize) -> PathBuf {
        self.dir.join(COPY_NAMES[index])
    }

    fn read_copy(&self, index: usize) -> Result<Copy, String> {
        let path = self.copy_path(index);
        let blob = fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let vars = envblob::decode(&blob).map_err(|e| format!("{}: {e}", path.display()))?;
        let state = BootState::from_vars(&vars).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Copy { index, vars, state })
    }

    /// The valid copy with the highest sequence number, and why the others were not used.
    fn newest(&self) -> Result<Copy, BootStateError> {
        let mut problems = Vec::new();
        let mut best: Option<Copy> = None;
        for index in 0..COPY_NAMES.len() {
            match self.read_copy(index) {
                Ok(copy) if best.as_ref().is_none_or(|b| copy.state.seq > b.state.seq) => {
                    best = Some(copy)
                }
                Ok(_) => {}
                Err(problem) => problems.push(problem),
            }
        }
        best.ok_or_else(|| BootStateError::NoValidCopy(problems.join("; ")))
    }
}

impl BootStateStore for UbootEnvStore {
    fn load(&self) -> Result<BootState, BootStateError> {
        Ok(self.newest()?.state)
    }

    fn store(&mut self, state: &BootState) -> Result<BootState, BootStateError> {
        let (target, mut vars, seq) = match self.newest() {
            Ok(newest) => (1 - newest.index, newest.vars, newest.state.seq + 1),
            Err(_) => (0, BTreeMap::new(), state.seq + 1),
        };
        let mut written = state.clone();
        written.seq = seq;
        written.to_vars(&mut vars);
        let blob = envblob::encode(&vars).map_err(|e| BootStateError::Invalid(e.to_string()))?;
        write_in_place(&self.copy_path(target), &blob)?;
        Ok(written)
    }
}

/// Overwrites the file's bytes and fsyncs. In place rather than rename: the copy being
/// replaced is the older one, and FAT renames are no safer than a torn write here.
fn write_in_place(path: &Path, blob: &[u8]) -> Result<(), BootStateError> {
    debug_assert_eq!(blob.len(), ENV_SIZE);
    let io = |source| BootStateError::Io {
        path: path.display().to_string(),
        source,
    };
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(io)?;
    file.write_all(blob).map_err(io)?;
    file.set_len(blob.len() as u64).map_err(io)?;
    file.sync_all().map_err(io)?;
    cairn_atomic::sync_parent(path).map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bootstate::SlotId;

    #[test]
    fn writes_alternate_and_a_torn_write_keeps_the_previous_state() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = UbootEnvStore::new(dir.path());
        let first = store.store(&BootState::factory()).unwrap();
        let mut next = first.clone();
        next.prepare_install(SlotId::B);
        let second = store.store(&next).unwrap();
        assert_eq!(second.seq, first.seq + 1);
        assert!(store.copy_path(0).exists() && store.copy_path(1).exists());
        assert_eq!(store.load().unwrap(), second);

        // Tear the newest copy (the one just written): the older state is read back.
        let newest = if second.seq % 2 == first.seq % 2 {
            0
        } else {
            1
        };
        let path = store.copy_path(newest);
        let mut blob = fs::read(&path).unwrap();
        blob[100..200].fill(0xff);
        fs::write(&path, blob).unwrap();
        let loaded = store.load().unwrap();
        assert!(loaded == first || loaded == second, "{loaded:?}");
        // The next write must not touch the surviving copy.
        let mut third = loaded.clone();
        third.arm_trial(SlotId::B);
        store.store(&third).unwrap();
        assert_eq!(store.load().unwrap().order[0], SlotId::B);
    }
}
