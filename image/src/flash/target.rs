//! What a flash target is, and whether it may be written: not mounted, not in use, not
//! the disk the host runs from, not the image itself, big enough. Linux sysfs and procfs
//! are the source of truth; nothing here writes.

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::FlashError;

/// A block device's `major:minor`, as sysfs and mountinfo print it.
type DevNum = (u64, u64);

/// A target that passed every check.
#[derive(Debug)]
pub enum Target {
    /// A regular file (created if missing): it becomes a copy of the image, sparse where
    /// the image is unmapped.
    File(PathBuf),
    /// A block device of `size` bytes; its unmapped blocks are left as they are.
    BlockDevice { path: PathBuf, size: u64 },
}

impl Target {
    pub fn path(&self) -> &Path {
        match self {
            Target::File(path) | Target::BlockDevice { path, .. } => path,
        }
    }

    /// Checks `path` as a target for an image of `image_size` bytes read from `image`.
    pub fn check(path: &Path, image: &Path, image_size: u64) -> Result<Target, FlashError> {
        let meta = match fs::metadata(path) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Target::File(path.to_path_buf()))
            }
            Err(e) => return Err(FlashError::io(format!("reading {}", path.display()), e)),
        };
        let image_meta = fs::metadata(image)
            .map_err(|e| FlashError::io(format!("reading {}", image.display()), e))?;
        if meta.dev() == image_meta.dev() && meta.ino() == image_meta.ino() {
            return Err(FlashError::refused(path, "it is the image itself"));
        }
        if meta.is_file() {
            return Ok(Target::File(path.to_path_buf()));
        }
        if !meta.file_type().is_block_device() {
            return Err(FlashError::refused(
                path,
                "not a regular file or a block device",
            ));
        }
        let dev = (major(meta.rdev()), minor(meta.rdev()));
        let disk = whole_disk(dev);
        if host_root_disks().contains(&disk) {
            return Err(FlashError::refused(
                path,
                "it holds the host's root file system",
            ));
        }
        for member in with_partitions(dev) {
            if let Some(mount_point) = mount_point_of(member) {
                return Err(FlashError::refused(
                    path,
                    format!("it is mounted (on {mount_point}); unmount it first"),
                ));
            }
            if let Some(holder) = first_holder(member) {
                return Err(FlashError::refused(
                    path,
                    format!("it is in use by {holder} (device-mapper, RAID or similar)"),
                ));
            }
            if is_swap(member) {
                return Err(FlashError::refused(path, "it is used as swap"));
            }
        }
        let size = device_size(dev).ok_or_else(|| {
            FlashError::refused(path, "its size cannot be read from /sys/dev/block")
        })?;
        if size < image_size {
            return Err(FlashError::refused(
                path,
                format!("it holds {size} bytes, the image needs {image_size}"),
            ));
        }
        Ok(Target::BlockDevice {
            path: path.to_path_buf(),
            size,
        })
    }
}

fn major(rdev: u64) -> u64 {
    ((rdev >> 32) & 0xffff_f000) | ((rdev >> 8) & 0xfff)
}

fn minor(rdev: u64) -> u64 {
    ((rdev >> 12) & 0xffff_ff00) | (rdev & 0xff)
}

fn sys_dir(dev: DevNum) -> PathBuf {
    PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1))
}

fn read_dev_file(path: &Path) -> Option<DevNum> {
    let text = fs::read_to_string(path).ok()?;
    let (major, minor) = text.trim().split_once(':')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// The disk a partition belongs to (the device itself when it is not a partition).
fn whole_disk(dev: DevNum) -> DevNum {
    let dir = sys_dir(dev);
    if dir.join("partition").exists() {
        if let Some(parent) = fs::canonicalize(&dir)
            .ok()
            .and_then(|d| read_dev_file(&d.join("../dev")))
        {
            return parent;
        }
    }
    dev
}

/// The device and its partitions (their sysfs directories are children of the disk's).
fn with_partitions(dev: DevNum) -> Vec<DevNum> {
    let mut out = vec![dev];
    if let Ok(entries) = fs::read_dir(sys_dir(dev)) {
        for entry in entries.flatten() {
            let path = entry.path();
            if path.join("partition").exists() {
                out.extend(read_dev_file(&path.join("dev")));
            }
        }
    }
    out
}

/// The disks under the host's root file system, through partitions and stacked devices
/// (device-mapper, RAID: their `slaves`).
fn host_root_disks() -> BTreeSet<DevNum> {
    let mut disks = BTreeSet::new();
    let Ok(meta) = fs::metadata("/") else {
        return disks;
    };
    let mut pending = vec![(major(meta.dev()), minor(meta.dev()))];
    while let Some(dev) = pending.pop() {
        let slaves: Vec<DevNum> = fs::read_dir(sys_dir(dev).join("slaves"))
            .map(|entries| {
                entries
                    .flatten()
                    .filter_map(|e| read_dev_file(&e.path().join("dev")))
                    .collect()
            })
            .unwrap_or_default();
        if slaves.is_empty() {
            disks.insert(whole_disk(dev));
        }
        pending.extend(slaves.into_iter().filter(|s| !disks.contains(s)));
    }
    disks
}

/// Where `dev` is mounted, from /proc/self/mountinfo (field 3 is `major:minor`).
fn mount_point_of(dev: DevNum) -> Option<String> {
    let wanted = format!("{}:{}", dev.0, dev.1);
    let info = fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let mut fields = line.split(' ');
        let number = fields.nth(2)?;
        let mount_point = fields.nth(1)?;
        (number == wanted).then(|| mount_point.to_string())
    })
}

fn first_holder(dev: DevNum) -> Option<String> {
    fs::read_dir(sys_dir(dev).join("holders"))
        .ok()?
        .flatten()
        .next()
        .map(|e| e.file_name().to_string_lossy().into_owned())
}

fn is_swap(dev: DevNum) -> bool {
    let Ok(swaps) = fs::read_to_string("/proc/swaps") else {
        return false;
    };
    swaps.lines().skip(1).any(|line| {
        line.split_whitespace()
            .next()
            .and_then(|path| fs::metadata(path).ok())
            .is_some_and(|m| {
                m.file_type().is_block_device() && (major(m.rdev()), minor(m.rdev())) == dev
            })
    })
}

/// Size in bytes: sysfs counts 512-byte sectors whatever the logical block size.
fn device_size(dev: DevNum) -> Option<u64> {
    let sectors: u64 = fs::read_to_string(sys_dir(dev).join("size"))
        .ok()?
        .trim()
        .parse()
        .ok()?;
    sectors.checked_mul(512)
}

/// The block device holding the host's root file system, if there is one (for tests and
/// for the message of a refused flash).
pub fn host_root_device() -> Option<PathBuf> {
    let disk = *host_root_disks().iter().next()?;
    let name = fs::canonicalize(sys_dir(disk)).ok()?;
    Some(Path::new("/dev").join(name.file_name()?))
}
