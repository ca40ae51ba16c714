//! The two boot-state copies on the boot partition (`bootstate.0`, `bootstate.1`), each
//! an [`env`](crate::env) blob with a CRC and a sequence number (INVARIANTS.md 7, at the
//! repository root).
//!
//! Reading, on every side: a copy counts only if its size, CRC and variables are right;
//! the valid copy with the higher `CAIRN_SEQ` wins, copy 0 on a tie. Writing: never the
//! copy just read as newest, always the other one, with the newest sequence number + 1.
//! A torn write therefore leaves the newest valid copy intact, and U-Boot's `fatwrite`,
//! which is not power-safe, need not be.

use std::collections::BTreeMap;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::env::{self, EnvError, ENV_SIZE};
use crate::layout::BOOT_STATE_COPIES;
use crate::state::{BootState, BootStateError};

/// Where boot state lives. `store` must be atomic with respect to power loss: after a
/// crash at any instant, `load` returns either the old or the new state.
pub trait BootStateStore: Send {
    fn load(&self) -> Result<BootState, BootStateError>;
    /// Persists `state` with the next sequence number and returns what was written.
    fn store(&mut self, state: &BootState) -> Result<BootState, BootStateError>;
}

/// One valid copy as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidCopy {
    /// 0 for `bootstate.0`, 1 for `bootstate.1`.
    pub index: usize,
    /// Every variable of the copy, also those that are not ours.
    pub vars: BTreeMap<String, String>,
    pub state: BootState,
}

/// Parses copy `index` from its bytes.
pub fn parse_copy(index: usize, blob: &[u8]) -> Result<ValidCopy, BootStateError> {
    let vars = env::decode(blob).map_err(|e| BootStateError::Invalid(e.to_string()))?;
    let state = BootState::from_vars(&vars)?;
    Ok(ValidCopy { index, vars, state })
}

/// The copy that counts: the valid one with the highest sequence number, copy 0 on a tie.
/// `copies` holds each copy's bytes, or why they could not be read.
pub fn newest(copies: [Result<Vec<u8>, String>; 2]) -> Result<ValidCopy, BootStateError> {
    let mut problems = Vec::new();
    let mut best: Option<ValidCopy> = None;
    for (index, bytes) in copies.into_iter().enumerate() {
        let name = BOOT_STATE_COPIES[index];
        match bytes.and_then(|b| parse_copy(index, &b).map_err(|e| e.to_string())) {
            Ok(copy) if best.as_ref().is_none_or(|b| copy.state.seq > b.state.seq) => {
                best = Some(copy)
            }
            Ok(_) => {}
            Err(problem) => problems.push(format!("{name}: {problem}")),
        }
    }
    best.ok_or_else(|| BootStateError::NoValidCopy(problems.join("; ")))
}

/// Both copies of a freshly made disk: the same `vars`, `bootstate.0` with sequence 1 and
/// `bootstate.1` with sequence 0, so the disk has two valid copies from the start.
pub fn fresh_copies(vars: &BTreeMap<String, String>) -> Result<[Vec<u8>; 2], EnvError> {
    let with_seq = |seq: &str| {
        let mut vars = vars.clone();
        vars.insert("CAIRN_SEQ".into(), seq.into());
        env::encode(&vars)
    };
    Ok([with_seq("1")?, with_seq("0")?])
}

/// The `uboot-env` store: both copies as files in the directory the boot partition is
/// mounted at (usually `/boot`).
pub struct UbootEnvStore {
    dir: PathBuf,
}

impl UbootEnvStore {
    pub fn new(dir: impl Into<PathBuf>) -> UbootEnvStore {
        UbootEnvStore { dir: dir.into() }
    }

    pub fn copy_path(&self, index: usize) -> PathBuf {
        self.dir.join(BOOT_STATE_COPIES[index])
    }

    fn newest(&self) -> Result<ValidCopy, BootStateError> {
        let read = |index: usize| {
            let path = self.copy_path(index);
            fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))
        };
        newest([read(0), read(1)])
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
        let blob = env::encode(&vars).map_err(|e| BootStateError::Invalid(e.to_string()))?;
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
    use crate::state::SlotId;

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

    #[test]
    fn the_newer_valid_copy_wins_and_a_torn_one_is_ignored() {
        let vars = |seq: u64| {
            let mut s = BootState::factory();
            s.seq = seq;
            s.vars()
        };
        let old = env::encode(&vars(4)).unwrap();
        let new = env::encode(&vars(5)).unwrap();
        let pick = |a: &[u8], b: &[u8]| newest([Ok(a.to_vec()), Ok(b.to_vec())]);
        assert_eq!(pick(&old, &new).unwrap().index, 1);
        assert_eq!(pick(&new, &old).unwrap().index, 0);
        assert_eq!(pick(&new, &new).unwrap().index, 0, "copy 0 wins a tie");
        let mut torn = new.clone();
        torn[100] ^= 0xff;
        assert_eq!(pick(&old, &torn).unwrap().index, 0);
        let err = pick(&torn[..10], &torn).unwrap_err().to_string();
        assert!(
            err.contains("bootstate.0") && err.contains("bootstate.1"),
            "{err}"
        );
    }

    #[test]
    fn a_fresh_disk_has_two_valid_copies_and_copy_0_is_newest() {
        let [copy0, copy1] = fresh_copies(&BootState::factory().vars()).unwrap();
        let newest = newest([Ok(copy0), Ok(copy1.clone())]).unwrap();
        assert_eq!((newest.index, newest.state.seq), (0, 1));
        assert_eq!(parse_copy(1, &copy1).unwrap().state.seq, 0);
    }
}
