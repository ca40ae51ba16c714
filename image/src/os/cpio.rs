//! A reproducible newc cpio writer (the initramfs format): every entry is owned by root,
//! dated `mtime`, and numbered in the order given, so the same entries give the same bytes.
//! Written here rather than with cpio(1) because device nodes (/dev/console) need no
//! privileges this way and nothing of the build machine leaks into the archive.

use std::io::{self, Write};

pub enum Entry {
    Dir {
        path: String,
        mode: u32,
    },
    File {
        path: String,
        mode: u32,
        data: Vec<u8>,
    },
    Symlink {
        path: String,
        target: String,
    },
    CharDevice {
        path: String,
        mode: u32,
        major: u32,
        minor: u32,
    },
}

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFLNK: u32 = 0o120000;
const S_IFCHR: u32 = 0o020000;

pub fn write(out: &mut impl Write, entries: &[Entry], mtime: u32) -> io::Result<()> {
    for (ino, entry) in (1u32..).zip(entries) {
        let (path, mode, data, nlink, rdev): (&str, u32, &[u8], u32, (u32, u32)) = match entry {
            Entry::Dir { path, mode } => (path, S_IFDIR | mode, &[], 2, (0, 0)),
            Entry::File { path, mode, data } => (path, S_IFREG | mode, data, 1, (0, 0)),
            Entry::Symlink { path, target } => {
                (path, S_IFLNK | 0o777, target.as_bytes(), 1, (0, 0))
            }
            Entry::CharDevice {
                path,
                mode,
                major,
                minor,
            } => (path, S_IFCHR | mode, &[], 1, (*major, *minor)),
        };
        header(out, ino, mode, nlink, mtime, data.len(), rdev, path)?;
        out.write_all(data)?;
        pad(out, data.len())?;
    }
    header(out, 0, 0, 1, 0, 0, (0, 0), "TRAILER!!!")?;
    Ok(())
}

#[allow(clippy::too_many_arguments)]
fn header(
    out: &mut impl Write,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    size: usize,
    rdev: (u32, u32),
    path: &str,
) -> io::Result<()> {
    let name_len = path.len() + 1;
    let text = format!(
        "070701{ino:08x}{mode:08x}{uid:08x}{gid:08x}{nlink:08x}{mtime:08x}{size:08x}\
         {maj:08x}{min:08x}{rmaj:08x}{rmin:08x}{name_len:08x}{check:08x}",
        uid = 0,
        gid = 0,
        maj = 0,
        min = 0,
        rmaj = rdev.0,
        rmin = rdev.1,
        check = 0,
    );
    out.write_all(text.as_bytes())?;
    out.write_all(path.as_bytes())?;
    out.write_all(&[0])?;
    pad(out, 110 + name_len)
}

fn pad(out: &mut impl Write, len: usize) -> io::Result<()> {
    let rem = len % 4;
    if rem != 0 {
        out.write_all(&[0u8; 4][..4 - rem])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archives_are_byte_identical_and_aligned() {
        let entries = vec![
            Entry::Dir {
                path: "bin".into(),
                mode: 0o755,
            },
            Entry::File {
                path: "bin/x".into(),
                mode: 0o755,
                data: b"abc".to_vec(),
            },
            Entry::Symlink {
                path: "bin/y".into(),
                target: "x".into(),
            },
        ];
        let mut first = Vec::new();
        write(&mut first, &entries, 7).unwrap();
        let mut second = Vec::new();
        write(&mut second, &entries, 7).unwrap();
        assert_eq!(first, second);
        assert_eq!(first.len() / 4 * 4, first.len());
        assert!(first.starts_with(b"070701"));
        let trailer = first.windows(10).position(|w| w == b"TRAILER!!!");
        assert!(trailer.is_some());
    }

    #[test]
    fn cpio_tool_reads_what_we_write() {
        // cpio(1) cross-checks the format; the kernel is the real reader (QEMU tests).
        let entries = vec![Entry::File {
            path: "hello".into(),
            mode: 0o644,
            data: b"hello world\n".to_vec(),
        }];
        let mut archive = Vec::new();
        write(&mut archive, &entries, 0).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("cpio")
            .args(["-i", "--quiet"])
            .current_dir(dir.path())
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&archive).unwrap();
        assert!(child.wait().unwrap().success());
        assert_eq!(
            std::fs::read(dir.path().join("hello")).unwrap(),
            b"hello world\n"
        );
    }
}
