//! The busybox initramfs: /init from `boot/initramfs/init`, busybox with its applet links,
//! the early kernel modules, and dmsetup (+ its libraries) to open the slot with dm-verity.

use std::fs;
use std::path::Path;

use anyhow::{Context, Result};

use super::arch::Arch;
use super::cpio::{self, Entry};
use super::elf;

pub struct Inputs<'a> {
    /// The Debian tree the binaries come from.
    pub tree: &'a Path,
    pub busybox_applets: &'a [String],
    /// A root holding `lib/modules/<release>` with the early modules and depmod output.
    pub modules_root: &'a Path,
    /// Loaded in this order by /init.
    pub modules: &'a [String],
    /// Directories under /data that /init mounts with exec (`etc/data-exec`, one a line).
    pub data_exec: &'a [String],
    pub init: &'a Path,
    /// Paths inside `tree`.
    pub binaries: &'a [String],
    pub arch: Arch,
    pub mtime: u32,
}

/// Builds the archive; returns its bytes (uncompressed: the kernel reads it directly and
/// a few MB more on the FAT partition cost less than decompressing under TCG).
pub fn build(inputs: &Inputs) -> Result<Vec<u8>> {
    let mut entries = Vec::new();
    let lib_dir = format!("lib/{}", inputs.arch.triplet());
    let interpreter_dir = inputs.arch.interpreter_dir();
    let mut dirs = vec!["bin", "dev", "etc", "lib", &lib_dir];
    if interpreter_dir != "lib" {
        dirs.push(interpreter_dir);
    }
    for dir in dirs.into_iter().chain([
        "newroot", "proc", "run", "sbin", "sys", "tmp", "usr", "usr/bin", "usr/sbin",
    ]) {
        entries.push(Entry::Dir {
            path: dir.into(),
            mode: 0o755,
        });
    }
    // The kernel opens /dev/console for /init before anything can mount devtmpfs.
    entries.push(Entry::CharDevice {
        path: "dev/console".into(),
        mode: 0o600,
        major: 5,
        minor: 1,
    });
    entries.push(file(inputs.init, "init", 0o755)?);
    entries.push(Entry::File {
        path: "etc/modules".into(),
        mode: 0o644,
        data: (inputs.modules.join("\n") + "\n").into_bytes(),
    });
    entries.push(Entry::File {
        path: "etc/data-exec".into(),
        mode: 0o644,
        data: inputs
            .data_exec
            .iter()
            .map(|name| format!("{name}\n"))
            .collect::<String>()
            .into_bytes(),
    });

    entries.push(file(
        &inputs.tree.join("bin/busybox"),
        "bin/busybox",
        0o755,
    )?);
    for applet in inputs.busybox_applets {
        if applet == "bin/busybox" {
            continue;
        }
        entries.push(Entry::Symlink {
            path: applet.clone(),
            target: "/bin/busybox".into(),
        });
    }

    let mut libraries = std::collections::BTreeMap::new();
    for binary in inputs.binaries {
        let source = inputs.tree.join(binary);
        entries.push(file(&source, binary, 0o755)?);
        for (soname, path) in elf::needed_libraries(inputs.tree, &source, inputs.arch)? {
            libraries.insert(soname, path);
        }
    }
    for (soname, path) in &libraries {
        entries.push(file(path, &format!("{lib_dir}/{soname}"), 0o755)?);
        if soname.starts_with("ld-linux") {
            // The program interpreter is looked up at /lib/ld-linux-aarch64.so.1 or
            // /lib64/ld-linux-x86-64.so.2.
            entries.push(file(path, &format!("{interpreter_dir}/{soname}"), 0o755)?);
        }
    }

    add_tree(&mut entries, inputs.modules_root, "lib/modules")?;

    let mut archive = Vec::new();
    cpio::write(&mut archive, &entries, inputs.mtime)?;
    Ok(archive)
}

fn file(source: &Path, path: &str, mode: u32) -> Result<Entry> {
    Ok(Entry::File {
        path: path.into(),
        mode,
        data: fs::read(source).with_context(|| format!("reading {}", source.display()))?,
    })
}

/// Adds `root/rel` recursively, in sorted order (reproducible).
fn add_tree(entries: &mut Vec<Entry>, root: &Path, rel: &str) -> Result<()> {
    let dir = root.join(rel);
    entries.push(Entry::Dir {
        path: rel.into(),
        mode: 0o755,
    });
    let mut children: Vec<_> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .collect::<std::io::Result<_>>()?;
    children.sort_by_key(|e| e.file_name());
    for child in children {
        let name = child.file_name();
        let name = name
            .to_str()
            .context("non-UTF-8 file name in the modules tree")?;
        let child_rel = format!("{rel}/{name}");
        let kind = child.file_type()?;
        if kind.is_dir() {
            add_tree(entries, root, &child_rel)?;
        } else if kind.is_symlink() {
            let target = fs::read_link(child.path())?;
            entries.push(Entry::Symlink {
                path: child_rel,
                target: target.to_string_lossy().into_owned(),
            });
        } else {
            entries.push(file(&child.path(), &child_rel, 0o644)?);
        }
    }
    Ok(())
}
