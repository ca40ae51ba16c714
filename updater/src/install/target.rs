//! Writing one image into its place in a slot.

use std::fs::{File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_atomic::AtomicFile;

use crate::config::Target;
use crate::slot::resolve_device;

/// Where one image of the inactive slot is being written. Bytes go straight to a
/// partition (it is unbootable while this runs), or to a temporary file that replaces
/// the target file only when every byte is written and synced.
pub struct SlotWriter {
    out: Output,
    cancel: Arc<AtomicBool>,
    written: u64,
    /// Where write-back was last started (partition targets).
    flushed: u64,
    on_write: Box<dyn FnMut(u64) + Send>,
}

enum Output {
    Device { file: File, path: PathBuf },
    File(AtomicFile),
}

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Slot(#[from] crate::slot::SlotError),
    #[error("image {image} is {size} bytes but {path} holds only {capacity}")]
    TooLarge {
        image: String,
        size: u64,
        path: String,
        capacity: u64,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TargetError + '_ {
    move |source| TargetError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// The local path behind a target.
pub fn target_path(target: &Target) -> Result<PathBuf, TargetError> {
    Ok(match target {
        Target::Device(spec) => resolve_device(spec)?,
        Target::File(path) => path.clone(),
    })
}

/// Fails before anything is written when `size` cannot fit in a partition target.
pub fn check_capacity(target: &Target, image: &str, size: u64) -> Result<(), TargetError> {
    if let Target::Device(_) = target {
        let path = target_path(target)?;
        let capacity = File::open(&path)
            .and_then(|mut f| f.seek(SeekFrom::End(0)))
            .map_err(io_err(&path))?;
        if size > capacity {
            return Err(TargetError::TooLarge {
                image: image.into(),
                size,
                path: path.display().to_string(),
                capacity,
            });
        }
    }
    Ok(())
}

impl SlotWriter {
    pub fn open(
        target: &Target,
        cancel: Arc<AtomicBool>,
        on_write: Box<dyn FnMut(u64) + Send>,
    ) -> Result<SlotWriter, TargetError> {
        let path = target_path(target)?;
        let out = match target {
            Target::Device(_) => Output::Device {
                file: OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .map_err(io_err(&path))?,
                path,
            },
            Target::File(_) => {
                if let Some(dir) = path.parent() {
                    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
                }
                Output::File(AtomicFile::create(&path).map_err(io_err(&path))?)
            }
        };
        Ok(SlotWriter {
            out,
            cancel,
            written: 0,
            flushed: 0,
            on_write,
        })
    }

    /// Whether the target is written in place (a partition): what it held before the
    /// install is still there where nothing has been written yet, and may be skipped.
    pub fn in_place(&self) -> bool {
        matches!(self.out, Output::Device { .. })
    }

    /// Moves past `len` bytes that already hold what they must; only in place.
    pub fn skip(&mut self, len: u64) -> io::Result<()> {
        if self.cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("install cancelled"));
        }
        let Output::Device { file, .. } = &mut self.out else {
            return Err(io::Error::other("a file target cannot skip bytes"));
        };
        self.written += len;
        file.seek(SeekFrom::Start(self.written))?;
        (self.on_write)(self.written);
        Ok(())
    }

    /// Makes every written byte durable; for file targets, also swaps the file in.
    pub fn finish(self) -> Result<(), TargetError> {
        match self.out {
            Output::Device { file, path } => file.sync_all().map_err(io_err(&path)),
            Output::File(file) => file.commit().map_err(|source| TargetError::Io {
                path: "image file".into(),
                source,
            }),
        }
    }
}

impl Write for SlotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.cancel.load(Ordering::Relaxed) {
            // Not `Interrupted`: `write_all` and `io::copy` retry that kind forever.
            return Err(io::Error::other("install cancelled"));
        }
        let n = match &mut self.out {
            Output::Device { file, .. } => file.write(buf)?,
            Output::File(file) => file.write(buf)?,
        };
        self.written += n as u64;
        if let Output::Device { file, .. } = &self.out {
            if self.written - self.flushed >= WRITEBACK_STEP {
                start_writeback(file, self.flushed, self.written - self.flushed);
                self.flushed = self.written;
            }
        }
        (self.on_write)(self.written);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        match &mut self.out {
            Output::Device { file, .. } => file.flush(),
            Output::File(file) => file.flush(),
        }
    }
}

/// How often the partition writer asks the kernel to start writing back what it wrote.
const WRITEBACK_STEP: u64 = 8 << 20;

/// Starts (does not wait for) write-back of a range just written, so the disk works
/// while the next bytes decode and the final `sync_all` has only the tail left. Only a
/// hint: `sync_all` still makes every byte durable and reports any error.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; no memory is passed.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

/// Read-only map of the first `len` bytes of a target (the running slot's image), used
/// as the source of a delta without reading it into the heap.
pub fn map_source(target: &Target, len: u64) -> Result<memmap2::Mmap, TargetError> {
    let path = target_path(target)?;
    let file = File::open(&path).map_err(io_err(&path))?;
    // SAFETY: the source is the committed slot, which nothing writes while it is
    // committed (INVARIANTS.md 1). Should it change anyway, the decoded image's hash
    // would not match and the install would fail rather than trust it.
    unsafe { memmap2::MmapOptions::new().len(len as usize).map(&file) }.map_err(io_err(&path))
}
