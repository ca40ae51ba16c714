//! Per-test disk copies and the edits scenarios make to them (on the host, before boot):
//! flipping bytes in a partition, replacing files on the FAT boot partition or the ext4
//! data partition, reading the boot state back after the VM is gone, and foreign disks
//! (a USB stick stand-in with partitions of its own).

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_boot::copies;
use cairn_image::os::disk::{layout, Partition};
use cairn_image::os::profile::Profile;

pub struct TestDisk {
    pub path: PathBuf,
    partitions: Vec<Partition>,
}

impl TestDisk {
    /// A sparse copy of `image` in `dir`.
    pub fn copy_of(image: &Path, profile: &Profile, dir: &Path) -> Result<TestDisk> {
        let path = dir.join("disk.img");
        let status = Command::new("cp")
            .arg("--sparse=always")
            .arg(image)
            .arg(&path)
            .status()?;
        if !status.success() {
            bail!("copying {}", image.display());
        }
        Ok(TestDisk {
            path,
            partitions: layout(profile),
        })
    }

    /// A disk image a test made itself (no copy).
    pub fn at(path: &Path, profile: &Profile) -> Result<TestDisk> {
        Ok(TestDisk {
            path: path.to_path_buf(),
            partitions: layout(profile),
        })
    }

    pub fn partition(&self, label: &str) -> Result<&Partition> {
        self.partitions
            .iter()
            .find(|p| p.label == label)
            .with_context(|| format!("no partition {label}"))
    }

    /// Flips every bit of one byte at `offset` inside partition `label`.
    pub fn flip_byte(&self, label: &str, offset: u64) -> Result<()> {
        let at = self.partition(label)?.start + offset;
        let mut file = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)?;
        let mut byte = [0u8];
        file.seek(SeekFrom::Start(at))?;
        file.read_exact(&mut byte)?;
        byte[0] ^= 0xff;
        file.seek(SeekFrom::Start(at))?;
        file.write_all(&byte)?;
        file.sync_all()?;
        Ok(())
    }

    fn boot_image(&self) -> Result<String> {
        Ok(format!(
            "{}@@{}",
            self.path.display(),
            self.partition("boot")?.start
        ))
    }

    /// Replaces (or creates) `name` on the boot partition with `bytes`.
    pub fn put_boot_file(&self, name: &str, bytes: &[u8], scratch: &Path) -> Result<()> {
        let local = scratch.join("boot-file");
        fs::write(&local, bytes)?;
        let status = Command::new("mcopy")
            .arg("-o")
            .arg("-i")
            .arg(self.boot_image()?)
            .arg(&local)
            .arg(format!("::{name}"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .status()?;
        if !status.success() {
            bail!("mcopy to ::{name} failed");
        }
        Ok(())
    }

    pub fn boot_file(&self, name: &str) -> Result<Vec<u8>> {
        let output = Command::new("mtype")
            .arg("-i")
            .arg(self.boot_image()?)
            .arg(format!("::{name}"))
            .env("MTOOLS_SKIP_CHECK", "1")
            .output()?;
        if !output.status.success() {
            bail!(
                "mtype ::{name}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(output.stdout)
    }

    /// The newest valid boot-state copy, as U-Boot and cairnd read it.
    pub fn boot_state(&self) -> Result<BTreeMap<String, String>> {
        let read = |name: &str| self.boot_file(name).map_err(|e| e.to_string());
        copies::newest([read("bootstate.0"), read("bootstate.1")])
            .map(|copy| copy.vars)
            .context("neither boot-state copy is valid")
    }

    /// Overwrites both copies with `vars` (as a fresh disk would have them).
    pub fn set_boot_state(&self, vars: &BTreeMap<String, String>, scratch: &Path) -> Result<()> {
        let [newer, older] = copies::fresh_copies(vars)?;
        self.put_boot_file("bootstate.0", &newer, scratch)?;
        self.put_boot_file("bootstate.1", &older, scratch)?;
        Ok(())
    }

    /// Replaces (or creates) `path` (relative, its directory must exist) on the ext4 data
    /// partition with `bytes`, through debugfs at the partition's offset (no mount).
    pub fn put_data_file(&self, path: &str, bytes: &[u8], scratch: &Path) -> Result<()> {
        let local = scratch.join("data-file");
        fs::write(&local, bytes)?;
        let image = format!(
            "{}?offset={}",
            self.path.display(),
            self.partition("data")?.start
        );
        // debugfs's `write` refuses an existing name; `rm` of a missing one is harmless.
        let _ = debugfs(&image, &format!("rm {path}"), true);
        debugfs(&image, &format!("write {} {path}", local.display()), true)?;
        let back = debugfs(&image, &format!("cat {path}"), false)?;
        if back != bytes {
            bail!("debugfs did not write {path} on the data partition");
        }
        Ok(())
    }
}

/// Reads `path` (relative to the file system's root) from the ext4 partition named
/// `data` in `disk`'s GPT, without mounting, whatever profile made the disk. A guest
/// that lost power leaves recent writes in the ext4 journal only: they are replayed on a
/// copy of the partition (the disk itself stays as the power cut left it).
pub fn data_file_of(disk: &Path, path: &str) -> Result<Vec<u8>> {
    let (start, size) = cairn_image::provision::partition(disk, "data")?;
    let copy = tempfile::NamedTempFile::new()?;
    let mut from = fs::File::open(disk)?;
    std::io::Seek::seek(&mut from, std::io::SeekFrom::Start(start))?;
    std::io::copy(
        &mut std::io::Read::take(from, size),
        &mut fs::File::create(copy.path())?,
    )?;
    // Exit status 1 means "journal replayed": fine; the read below says whether it worked.
    let _ = Command::new("e2fsck")
        .args(["-E", "journal_only", "-y"])
        .arg(copy.path())
        .output();
    debugfs(
        &copy.path().display().to_string(),
        &format!("cat {path}"),
        false,
    )
}

fn debugfs(image: &str, request: &str, write: bool) -> Result<Vec<u8>> {
    let mut command = Command::new("debugfs");
    if write {
        command.arg("-w");
    }
    let output = command.arg("-R").arg(request).arg(image).output()?;
    if !output.status.success() {
        bail!(
            "debugfs -R {request:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(output.stdout)
}

/// A disk that is not the device's (a USB stick stand-in) at `path`: a GPT with one
/// 16 MiB partition per entry of `partitions`, named as given; a partition with a tree
/// gets an ext4 filesystem made from it, one without stays zeros.
pub fn foreign_disk(path: &Path, partitions: &[(&str, Option<&Path>)]) -> Result<()> {
    const MIB: u64 = 1024 * 1024;
    const SIZE: u64 = 16 * MIB;
    let total = MIB + SIZE * partitions.len() as u64 + MIB;
    fs::File::create(path)?.set_len(total)?;
    let mut script = String::from("label: gpt\nfirst-lba: 2048\n");
    for (index, (name, _)) in partitions.iter().enumerate() {
        let start = MIB + SIZE * index as u64;
        script.push_str(&format!(
            "start={}, size={}, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=\"{name}\"\n",
            start / 512,
            SIZE / 512
        ));
    }
    cairn_image::os::disk::sfdisk(path, &script)?;
    for (index, (_, tree)) in partitions.iter().enumerate() {
        let Some(tree) = tree else { continue };
        let start = MIB + SIZE * index as u64;
        let status = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-E"])
            .arg(format!("offset={start},root_owner=0:0"))
            .arg("-d")
            .arg(tree)
            .arg(path)
            .arg(format!("{}k", SIZE / 1024))
            .status()?;
        if !status.success() {
            bail!("mkfs.ext4 for partition {index} of {}", path.display());
        }
    }
    Ok(())
}
