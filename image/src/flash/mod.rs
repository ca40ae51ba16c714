//! `cairn-image flash`: writes a disk image to a block device or file using its block map
//! ([`crate::bmap`]), then proves the write by reading every mapped range back.
//!
//! Order, and why:
//! 1. The target is checked ([`Target::check`]): mounted, in use, the host's root disk,
//!    the image itself or too small is refused before anything is opened for writing.
//! 2. The image is checked against the map's checksums, so a corrupt or wrong image is
//!    refused with the target untouched.
//! 3. Only mapped ranges are written (a block device's other blocks keep their contents; a
//!    file target is recreated sparse), hashing again while writing in case the image
//!    changed since step 2.
//! 4. After `fsync`, the target's cached pages are dropped and every mapped range is read
//!    back from the medium and compared with the map: a card that acknowledges writes it
//!    did not keep is caught at the bench, not in the field.

mod target;

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use crate::bmap::{Bmap, MappedRange};
pub use target::{host_root_device, Target};

const BUFFER: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum FlashError {
    #[error("refusing to flash {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error(
        "the image is {actual} bytes but its bmap describes {expected}: wrong bmap for this image"
    )]
    ImageSize { expected: u64, actual: u64 },
    #[error("the image does not match its bmap in blocks {first}-{last} (corrupt image or wrong bmap); nothing was written")]
    ImageMismatch { first: u64, last: u64 },
    #[error(
        "the image changed while it was written (blocks {first}-{last}); the target is incomplete"
    )]
    ImageChanged { first: u64, last: u64 },
    #[error("read-back of blocks {first}-{last} from {path} does not match what was written: the medium lost the write (faulty or fake card?)")]
    Verify {
        path: PathBuf,
        first: u64,
        last: u64,
    },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
}

impl FlashError {
    fn io(what: impl Into<String>, source: io::Error) -> Self {
        FlashError::Io {
            what: what.into(),
            source,
        }
    }

    fn refused(path: &Path, reason: impl Into<String>) -> Self {
        FlashError::Refused {
            path: path.to_path_buf(),
            reason: reason.into(),
        }
    }
}

/// The three passes over the mapped bytes, for progress.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    CheckImage,
    Write,
    Verify,
}

impl Pass {
    pub fn name(self) -> &'static str {
        match self {
            Pass::CheckImage => "check image",
            Pass::Write => "write",
            Pass::Verify => "verify",
        }
    }
}

/// What a finished flash did.
#[derive(Debug)]
pub struct FlashReport {
    pub image_size: u64,
    pub mapped_bytes: u64,
    pub check: Duration,
    pub write: Duration,
    pub verify: Duration,
}

/// Flashes `image` to `target` following `bmap`. `progress(pass, done, total)` is called
/// after every buffer (the caller rate-limits what it prints).
pub fn flash(
    image: &Path,
    bmap: &Bmap,
    target: &Path,
    progress: &mut dyn FnMut(Pass, u64, u64),
) -> Result<FlashReport, FlashError> {
    let mut source =
        File::open(image).map_err(|e| FlashError::io(format!("opening {}", image.display()), e))?;
    let actual = source
        .metadata()
        .map_err(|e| FlashError::io(format!("reading {}", image.display()), e))?
        .len();
    if actual != bmap.image_size {
        return Err(FlashError::ImageSize {
            expected: bmap.image_size,
            actual,
        });
    }
    let target = Target::check(target, image, bmap.image_size)?;
    let total = bmap.mapped_bytes();
    let mut buffer = vec![0u8; BUFFER];

    let started = Instant::now();
    let mut done = 0;
    for range in &bmap.ranges {
        let digest = hash_range(&mut source, bmap, range, &mut buffer, &mut |n| {
            done += n;
            progress(Pass::CheckImage, done, total)
        })
        .map_err(|e| FlashError::io(format!("reading {}", image.display()), e))?;
        if digest != range.sha256 {
            return Err(FlashError::ImageMismatch {
                first: range.first,
                last: range.last,
            });
        }
    }
    let check = started.elapsed();

    let started = Instant::now();
    let mut out = open_target(&target, bmap.image_size)?;
    let path = target.path();
    let written = |e| FlashError::io(format!("writing {}", path.display()), e);
    let mut done = 0;
    for range in &bmap.ranges {
        let (offset, len) = bmap.byte_range(range);
        source
            .seek(SeekFrom::Start(offset))
            .and_then(|_| out.seek(SeekFrom::Start(offset)))
            .map_err(written)?;
        let mut hasher = Sha256::new();
        let mut left = len;
        while left > 0 {
            let n = left.min(BUFFER as u64) as usize;
            source
                .read_exact(&mut buffer[..n])
                .map_err(|e| FlashError::io(format!("reading {}", image.display()), e))?;
            hasher.update(&buffer[..n]);
            out.write_all(&buffer[..n]).map_err(written)?;
            left -= n as u64;
            done += n as u64;
            progress(Pass::Write, done, total);
        }
        if <[u8; 32]>::from(hasher.finalize()) != range.sha256 {
            return Err(FlashError::ImageChanged {
                first: range.first,
                last: range.last,
            });
        }
    }
    out.sync_all().map_err(written)?;
    let write = started.elapsed();

    let started = Instant::now();
    drop_cached_pages(&out).map_err(written)?;
    let mut done = 0;
    for range in &bmap.ranges {
        let digest = hash_range(&mut out, bmap, range, &mut buffer, &mut |n| {
            done += n;
            progress(Pass::Verify, done, total)
        })
        .map_err(|e| FlashError::io(format!("reading back {}", path.display()), e))?;
        if digest != range.sha256 {
            return Err(FlashError::Verify {
                path: path.to_path_buf(),
                first: range.first,
                last: range.last,
            });
        }
    }
    Ok(FlashReport {
        image_size: bmap.image_size,
        mapped_bytes: total,
        check,
        write,
        verify: started.elapsed(),
    })
}

fn open_target(target: &Target, image_size: u64) -> Result<File, FlashError> {
    let opened = |e| FlashError::io(format!("opening {}", target.path().display()), e);
    match target {
        Target::File(path) => {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(opened)?;
            file.set_len(image_size).map_err(opened)?;
            Ok(file)
        }
        // O_EXCL on a block device: the kernel refuses it while anything has it mounted
        // or claimed, closing the gap between the check and the open.
        Target::BlockDevice { path, .. } => OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_EXCL)
            .open(path)
            .map_err(|e| match e.raw_os_error() {
                Some(libc::EBUSY) => FlashError::refused(path, "it is busy (mounted or claimed)"),
                _ => opened(e),
            }),
    }
}

/// Drops the file's clean cached pages so the verify pass reads the medium.
fn drop_cached_pages(file: &File) -> io::Result<()> {
    // SAFETY: a plain syscall on a descriptor we own; no memory is passed.
    let rc = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

fn hash_range(
    file: &mut File,
    bmap: &Bmap,
    range: &MappedRange,
    buffer: &mut [u8],
    advanced: &mut dyn FnMut(u64),
) -> io::Result<[u8; 32]> {
    let (offset, len) = bmap.byte_range(range);
    file.seek(SeekFrom::Start(offset))?;
    let mut hasher = Sha256::new();
    let mut left = len;
    while left > 0 {
        let n = left.min(buffer.len() as u64) as usize;
        file.read_exact(&mut buffer[..n])?;
        hasher.update(&buffer[..n]);
        left -= n as u64;
        advanced(n as u64);
    }
    Ok(hasher.finalize().into())
}
