//! A full data partition must not stop an update or a rollback. cairnd keeps a
//! [`RESERVE_BYTES`] file of real blocks next to its state; when an atomic write of its
//! own files fails for lack of space, the reserve is given up and the write retried, and
//! the reserve is made again once there is room. Workloads filling `/data` (even as root,
//! past ext4's reserved blocks) then cost cairnd nothing it needs.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::Path;

/// Far more than cairnd's state, roots and floor files need for one round of writes.
pub const RESERVE_BYTES: usize = 1 << 20;
const RESERVE_FILE: &str = "space.reserve";

/// `cairn_atomic::write`, falling back on the reserve kept in the file's directory (cairnd's
/// data dir: its files all live there) when the disk is full.
pub fn write(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let data_dir = path.parent().unwrap_or(Path::new("."));
    let written = match cairn_atomic::write(path, bytes) {
        Err(e) if is_full(&e) => {
            let reserve = data_dir.join(RESERVE_FILE);
            if fs::remove_file(&reserve).is_err() {
                return Err(e);
            }
            tracing::warn!(
                "{} is full: writing {} from cairnd's space reserve",
                data_dir.display(),
                path.display()
            );
            cairn_atomic::write(path, bytes)
        }
        other => other,
    };
    if written.is_ok() {
        ensure(data_dir);
    }
    written
}

/// Makes the reserve if it is missing and there is room (best effort, fsynced).
pub fn ensure(data_dir: &Path) {
    let reserve = data_dir.join(RESERVE_FILE);
    if fs::metadata(&reserve).is_ok_and(|m| m.len() == RESERVE_BYTES as u64) {
        return;
    }
    let made = File::create(&reserve).and_then(|mut file| {
        // Real zeros, not set_len: a sparse file reserves nothing.
        file.write_all(&vec![0u8; RESERVE_BYTES])?;
        file.sync_all()
    });
    if made.is_err() {
        let _ = fs::remove_file(&reserve);
    }
}

fn is_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// A 4 MiB tmpfs, unmounted on drop (the suite runs as root).
    struct SmallDisk(tempfile::TempDir);

    impl SmallDisk {
        fn new() -> SmallDisk {
            let dir = tempfile::tempdir().unwrap();
            let ok = Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
                .arg(dir.path())
                .status()
                .unwrap()
                .success();
            assert!(ok, "mounting a tmpfs (needs root)");
            SmallDisk(dir)
        }

        fn fill(&self) {
            let mut file = File::create(self.0.path().join("workload-filler")).unwrap();
            let block = vec![0x5au8; 64 << 10];
            while file.write_all(&block).is_ok() {}
            let _ = file.sync_all();
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0.path()).status();
        }
    }

    #[test]
    fn a_full_data_partition_still_takes_cairnds_state_from_the_reserve() {
        let disk = SmallDisk::new();
        let dir = disk.0.path();
        ensure(dir);
        assert_eq!(
            fs::metadata(dir.join(RESERVE_FILE)).unwrap().len(),
            RESERVE_BYTES as u64
        );
        disk.fill();
        let state = vec![b'{'; 64 << 10];
        // Without the reserve the write fails: the disk really is full.
        let err = cairn_atomic::write(dir.join("other.json"), &state).unwrap_err();
        assert!(is_full(&err), "{err}");
        write(&dir.join("state.json"), &state).expect("written from the reserve");
        assert_eq!(fs::read(dir.join("state.json")).unwrap(), state);
        // Once the workload frees space, the reserve comes back.
        fs::remove_file(dir.join("workload-filler")).unwrap();
        write(&dir.join("state.json"), b"{}").unwrap();
        assert!(dir.join(RESERVE_FILE).exists());
    }
}
