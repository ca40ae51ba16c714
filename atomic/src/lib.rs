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

/// Clears `.NAME.tmp.*` siblings of `target`: what [`AtomicFile`]s of earlier processes
/// left behind when they died before commit, or inside it.
///
/// On FAT (the boot partition) a rename is not atomic: vfat writes the target's directory
/// entry and removes the temporary's separately, so a power cut inside [`AtomicFile::commit`]
/// can leave one file under both names. Unlinking that temporary would free clusters the
/// target still uses, and the next file written there would overwrite the target. So on
/// FAT a stale temporary whose bytes equal the target's is retired (renamed to
/// `.NAME.retired.N`, which nothing removes) instead of removed: the same rule as the
/// boot entries' store (`cairn_boot::efi_store`).
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
    let stale: Vec<PathBuf> = entries
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(&prefix))
        .map(|e| e.path())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let on_fat = is_fat(dir)?;
    for path in stale {
        clear_stale_temp(&path, target, on_fat)?;
    }
    Ok(())
}

/// Removes the stale temporary `stale` of `target`, or on FAT retires it when it may be
/// the target under a second name ([`remove_stale_temps`]).
fn clear_stale_temp(stale: &Path, target: &Path, on_fat: bool) -> io::Result<()> {
    if on_fat && same_bytes(stale, target)? {
        return retire(stale, target);
    }
    fs::remove_file(stale)
}

/// Renames `stale` to the first free `.NAME.retired.N` beside `target`, durably.
fn retire(stale: &Path, target: &Path) -> io::Result<()> {
    let name = target.file_name().unwrap_or_default().to_string_lossy();
    for n in 0u32.. {
        let retired = target.with_file_name(format!(".{name}.retired.{n}"));
        match fs::symlink_metadata(&retired) {
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                fs::rename(stale, &retired)?;
                return sync_parent(&retired);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(
        "no free name to retire a temporary file to",
    ))
}

/// Whether the files at `a` and `b` both exist and hold the same bytes.
fn same_bytes(a: &Path, b: &Path) -> io::Result<bool> {
    use std::io::Read;
    let (Ok(ma), Ok(mb)) = (fs::metadata(a), fs::metadata(b)) else {
        return Ok(false);
    };
    if ma.len() != mb.len() {
        return Ok(false);
    }
    let (mut fa, mut fb) = (File::open(a)?, File::open(b)?);
    let (mut ba, mut bb) = (vec![0u8; 1 << 16], vec![0u8; 1 << 16]);
    loop {
        let n = fa.read(&mut ba)?;
        if n == 0 {
            return Ok(true);
        }
        fb.read_exact(&mut bb[..n])?;
        if ba[..n] != bb[..n] {
            return Ok(false);
        }
    }
}

/// Whether `dir` is on a FAT file system (vfat, msdos), whose renames are not atomic.
fn is_fat(dir: &Path) -> io::Result<bool> {
    use std::os::unix::ffi::OsStrExt;
    let path = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path holds a NUL byte"))?;
    // SAFETY: statfs only writes into `stat`, which is zeroed and ours; `path` is a valid
    // NUL-terminated string that outlives the call.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(path.as_ptr(), &mut stat) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(stat.f_type == libc::MSDOS_SUPER_MAGIC)
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

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    /// On FAT a stale temporary equal to its target may be the target under a second name
    /// (a torn rename): it is retired, never unlinked. One that differs is removed, and
    /// off FAT every stale temporary is. (This host cannot mount vfat; `on_fat` stands in
    /// for the file system check, which says no here.)
    #[test]
    fn on_fat_a_stale_temporary_equal_to_its_target_is_retired_not_removed() {
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_fat(dir.path()).unwrap());
        let target = dir.path().join("vmlinuz");
        fs::write(&target, b"kernel").unwrap();
        let twin = dir.path().join(".vmlinuz.tmp.142");
        let partial = dir.path().join(".vmlinuz.tmp.143");
        fs::write(&twin, b"kernel").unwrap();
        fs::write(&partial, b"kern").unwrap();
        clear_stale_temp(&twin, &target, true).unwrap();
        clear_stale_temp(&partial, &target, true).unwrap();
        assert_eq!(names(dir.path()), [".vmlinuz.retired.0", "vmlinuz"]);

        fs::write(&twin, b"kernel").unwrap();
        clear_stale_temp(&twin, &target, true).unwrap();
        assert_eq!(
            names(dir.path()),
            [".vmlinuz.retired.0", ".vmlinuz.retired.1", "vmlinuz"],
            "an earlier retired name is never renamed over"
        );

        fs::write(&twin, b"kernel").unwrap();
        clear_stale_temp(&twin, &target, false).unwrap();
        assert_eq!(
            names(dir.path()),
            [".vmlinuz.retired.0", ".vmlinuz.retired.1", "vmlinuz"]
        );
        // A retired file is not a temporary: writing the target leaves it alone.
        write(&target, b"new kernel").unwrap();
        assert_eq!(fs::read(&target).unwrap(), b"new kernel");
        assert_eq!(names(dir.path()).len(), 3);
    }
}
