//! Replace a file so that after a crash at any instant it holds either its old bytes or
//! its new bytes, never a mix: write a temporary file in the same directory, fsync it,
//! rename it over the target, fsync the directory so the rename itself is durable.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A file being written that becomes visible at `target` only on [`AtomicFile::commit`].
/// Dropped without commit, it removes its temporary file and leaves `target` untouched.
pub struct AtomicFile {
    file: Option<File>,
    tmp: PathBuf,
    target: PathBuf,
}

impl AtomicFile {
    /// Starts the replacement of `target`. Temporary files an earlier process left
    /// for the same target (a crash, a power cut) are removed first, so they never pile
    /// up on a small partition.
    pub fn create(target: impl AsRef<Path>) -> io::Result<AtomicFile> {
        AtomicFile::create_with_mode(target, 0o666)
    }

    /// [`AtomicFile::create`], the temporary file created with `mode` (less the umask)
    /// from its first byte: a secret written with `0o600` is never readable by others,
    /// not even before a `chmod` could run.
    pub fn create_with_mode(target: impl AsRef<Path>, mode: u32) -> io::Result<AtomicFile> {
        use std::os::unix::fs::OpenOptionsExt;
        let target = target.as_ref().to_path_buf();
        let name = target.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "target has no file name")
        })?;
        remove_stale_temps(&target, name)?;
        let mut tmp_name = std::ffi::OsString::from(".");
        tmp_name.push(name);
        tmp_name.push(format!(".tmp.{}", std::process::id()));
        let tmp = target.with_file_name(tmp_name);
        // A temporary of the same name can only be our own process's from an earlier
        // attempt; remove it so `create_new` applies `mode` to a file made now.
        let _ = fs::remove_file(&tmp);
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        Ok(AtomicFile {
            file: Some(file),
            tmp,
            target,
        })
    }

    pub fn file(&mut self) -> &mut File {
        self.file.as_mut().expect("present until commit")
    }

    /// Makes the new content durable and visible at the target path.
    pub fn commit(mut self) -> io::Result<()> {
        let file = self.file.take().expect("present until commit");
        file.sync_all()?;
        fs::rename(&self.tmp, &self.target)?;
        // On vfat (the boot partition) a file's size and first cluster live in its
        // directory entry, which rename writes as empty and fills in only when the
        // inode is written back: without this second fsync a power cut after the rename
        // leaves a zero-length file (seen under QEMU: U-Boot read 0 bytes of slot.env).
        file.sync_all()?;
        drop(file);
        sync_parent(&self.target)
    }
}

impl Write for AtomicFile {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.file().write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file().flush()
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.file.take().is_some() {
            let _ = fs::remove_file(&self.tmp);
        }
    }
}

/// Atomically replaces `target` with `bytes`.
pub fn write(target: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create(target)?;
    file.write_all(bytes)?;
    file.commit()
}

/// Atomically replaces `target` with `bytes` readable and writable by the owner only
/// (mode 0600 from the first byte): keys and tokens.
pub fn write_private(target: impl AsRef<Path>, bytes: &[u8]) -> io::Result<()> {
    let mut file = AtomicFile::create_with_mode(target, 0o600)?;
    file.write_all(bytes)?;
    file.commit()
}

/// fsyncs the directory that holds `path`, making a rename or create in it durable.
pub fn sync_parent(path: &Path) -> io::Result<()> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    File::open(parent)?.sync_all()
}

/// Removes `.NAME.tmp.*` siblings of `target`: what [`AtomicFile`]s of earlier processes
/// left behind when they died before commit.
fn remove_stale_temps(target: &Path, name: &std::ffi::OsStr) -> io::Result<()> {
    let dir = match target.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let prefix = format!(".{}.tmp.", name.to_string_lossy());
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().starts_with(&prefix) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_private_file_is_never_readable_by_others_not_even_before_commit() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("release.key.json");
        let mut file = AtomicFile::create_with_mode(&target, 0o600).unwrap();
        let mode = |m: fs::Metadata| m.permissions().mode() & 0o777;
        assert_eq!(
            mode(file.file().metadata().unwrap()),
            0o600,
            "the temporary"
        );
        file.write_all(b"secret").unwrap();
        file.commit().unwrap();
        assert_eq!(mode(fs::metadata(&target).unwrap()), 0o600);
        write_private(&target, b"rotated").unwrap();
        assert_eq!(mode(fs::metadata(&target).unwrap()), 0o600);
    }

    #[test]
    fn replaces_content_and_leaves_no_temp_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        write(&target, b"old").unwrap();
        write(&target, b"new").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn dropping_without_commit_keeps_the_old_content() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("state.json");
        write(&target, b"old").unwrap();
        let mut f = AtomicFile::create(&target).unwrap();
        f.write_all(b"half-writ").unwrap();
        drop(f);
        assert_eq!(fs::read(&target).unwrap(), b"old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn temporary_files_left_by_a_dead_writer_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("vmlinuz");
        std::fs::write(dir.path().join(".vmlinuz.tmp.4242"), b"half").unwrap();
        std::fs::write(dir.path().join(".initrd.tmp.4242"), b"other").unwrap();
        write(&target, b"new").unwrap();
        let mut left: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        left.sort();
        assert_eq!(left, [".initrd.tmp.4242", "vmlinuz"]);
    }
}
