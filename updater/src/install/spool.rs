//! Deltas are downloaded to the data partition before they are applied, so that a
//! download cut by a power loss, a kill or a dropped network resumes where it stopped.
//!
//! A static delta is one zstd stream (`bundle/FORMAT.md`): its decoding cannot restart in
//! the middle, but its download can. Nothing spooled is trusted without hashing it again:
//! the whole file is checked against the payload's signed digest before a byte of it is
//! decoded. A file that does not match after a resumed download (a write lost in a power
//! cut, say) is fetched again from its first byte, once, in the same install; so a
//! damaged spool costs bandwidth, never a wrong verdict on the bundle. Only a fresh
//! download that does not match is the bundle's fault, and refused as it is when
//! streamed.
//!
//! When the data partition cannot hold the delta (full, read-only), the delta is
//! streamed into the slot as before: the spool is an optimisation, never a requirement.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use cairn_bundle::header::Header;
use cairn_bundle::Payload;

use super::source::BundleSource;
use super::InstallError;

/// Spooled bytes are flushed to disk at least every [`SYNC_EVERY`] bytes and every
/// [`SYNC_INTERVAL`], so a power cut loses at most that much of the download: a second on
/// a slow link, where a resume saves the most, 4 MiB on a fast one.
const SYNC_EVERY: u64 = 4 << 20;
const SYNC_INTERVAL: Duration = Duration::from_secs(1);

/// The spool directory, `<data_dir>/spool`: the deltas of one install (the install lock's
/// holder's), each named by its signed digest.
pub struct Spool {
    dir: PathBuf,
}

/// Why a spooled download could not be used.
enum Failure {
    /// The network: the install stops here, and the next try resumes.
    Download(io::Error),
    /// The data partition: stream the delta instead.
    Disk(io::Error),
}

impl Spool {
    pub fn new(data_dir: &Path) -> Spool {
        Spool {
            dir: data_dir.join("spool"),
        }
    }

    /// The spool file of `payload`, named by its digest (`None` if the digest is not hex,
    /// which a signed manifest never has).
    fn path(&self, payload: &Payload) -> Option<PathBuf> {
        let (algorithm, digest) = payload.checked_digest();
        (!digest.is_empty() && digest.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join(format!("{}-{digest}", algorithm.name())))
    }

    /// Downloads `payload` of image `image` into the spool, continuing what an earlier
    /// try left there, and returns the file, checked against the payload's digest and
    /// positioned at its start. `None`: the spool is not used (a local bundle) or cannot
    /// be used here; stream instead.
    pub fn fetch(
        &self,
        source: &BundleSource,
        header: &Header,
        image: &str,
        payload: &Payload,
        cancel: &AtomicBool,
    ) -> Result<Option<File>, InstallError> {
        let Some(path) = self.path(payload) else {
            return Ok(None);
        };
        let BundleSource::Http { bundle, .. } = source else {
            return Ok(None); // a local file needs no spool
        };
        let download = InstallError::download(bundle.url());
        let disk = |e: io::Error| {
            tracing::warn!(image = %image, error = %e, "cannot spool the delta on the data partition; streaming it");
            // A partial file on a full partition would only take space others need.
            let _ = fs::remove_file(&path);
            Ok(None)
        };
        if let Err(e) = fs::create_dir_all(&self.dir) {
            return disk(e);
        }
        let mut file = match OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
        {
            Ok(file) => file,
            Err(e) => return disk(e),
        };
        let mut resumed = match file.metadata() {
            Ok(meta) => meta.len().min(payload.size),
            Err(e) => return disk(e),
        };
        loop {
            if resumed == payload.size {
                tracing::info!(image = %image, size = payload.size, "the delta is already spooled");
            } else if resumed > 0 {
                tracing::info!(
                    image = %image,
                    resumed,
                    size = payload.size,
                    "resuming the delta's download"
                );
            }
            match download_rest(source, header, payload, &mut file, resumed, cancel) {
                Ok(()) => {}
                Err(Failure::Download(e)) => return Err(download(e)),
                Err(Failure::Disk(e)) => return disk(e),
            }
            let (algorithm, expected) = payload.checked_digest();
            let checked = file.seek(SeekFrom::Start(0)).and_then(|_| {
                cairn_bundle::digest::hash_reader(algorithm, &mut io::BufReader::new(&file))
            });
            let (digest, len) = match checked {
                Ok(checked) => checked,
                Err(e) => return disk(e),
            };
            if digest == expected && len == payload.size {
                file.seek(SeekFrom::Start(0))
                    .map_err(InstallError::ReadBundle)?;
                return Ok(Some(file));
            }
            if let Err(e) = file.set_len(0) {
                return disk(e);
            }
            if resumed == 0 {
                // Every byte came from this download: the bundle's payload is wrong.
                let _ = fs::remove_file(&path);
                return Err(cairn_bundle::Error::PayloadHashMismatch {
                    image: image.to_string(),
                    expected: format!("{} {expected}", algorithm.name()),
                    actual: digest,
                }
                .into());
            }
            tracing::warn!(
                image = %image,
                resumed,
                "the spooled delta does not match its digest; downloading it again"
            );
            resumed = 0;
        }
    }

    /// Removes `payload`'s file once its image is written.
    pub fn remove(&self, payload: &Payload) {
        if let Some(path) = self.path(payload) {
            let _ = fs::remove_file(path);
        }
    }

    /// Removes the spool (after an install: nothing in it is needed again).
    pub fn clear(&self) {
        if let Err(e) = fs::remove_dir_all(&self.dir) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.dir.display(), error = %e, "cannot clear the spool");
            }
        }
    }

    /// Leaves in the spool only the files of `payloads`, the deltas of the install about
    /// to start: a partial download of any of them resumes, also when an image before
    /// it is written again first (each try writes every image), and a file of another
    /// bundle's delta never will.
    pub fn keep_only(&self, payloads: &[&Payload]) -> io::Result<()> {
        let keep: Vec<PathBuf> = payloads.iter().filter_map(|p| self.path(p)).collect();
        let entries = match fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        for entry in entries {
            let path = entry?.path();
            if !keep.contains(&path) {
                fs::remove_file(&path)?;
            }
        }
        Ok(())
    }
}

/// Appends `payload`'s bytes from `from` on to `file`, which holds the ones before,
/// flushing them to disk as [`SYNC_EVERY`] says and at the end.
fn download_rest(
    source: &BundleSource,
    header: &Header,
    payload: &Payload,
    file: &mut File,
    from: u64,
    cancel: &AtomicBool,
) -> Result<(), Failure> {
    file.set_len(from).map_err(Failure::Disk)?;
    if from == payload.size {
        return Ok(());
    }
    let mut reader = source
        .payload_part(header, payload, from..payload.size)
        .map_err(|e| Failure::Download(io::Error::other(e.to_string())))?;
    let mut buf = vec![0u8; 256 << 10];
    let (mut at, mut synced, mut synced_at) = (from, from, Instant::now());
    while at < payload.size {
        if cancel.load(Ordering::Relaxed) {
            return Err(Failure::Download(io::Error::other("cancelled")));
        }
        let n = match reader.read(&mut buf) {
            Ok(0) => {
                return Err(Failure::Download(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("the delta ends after {at} of {} bytes", payload.size),
                )))
            }
            Ok(n) => n.min((payload.size - at) as usize),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Failure::Download(e)),
        };
        file.write_all(&buf[..n]).map_err(Failure::Disk)?;
        at += n as u64;
        if at - synced >= SYNC_EVERY || synced_at.elapsed() >= SYNC_INTERVAL {
            file.sync_data().map_err(Failure::Disk)?;
            (synced, synced_at) = (at, Instant::now());
        }
    }
    file.sync_data().map_err(Failure::Disk)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn payload(byte: &str) -> Payload {
        Payload {
            method: "block-bsdiff".into(),
            offset: 0,
            size: 1,
            sha256: byte.repeat(32),
            blake3: None,
            source: None,
        }
    }

    #[test]
    fn keep_only_leaves_the_files_of_the_deltas_named_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::new(dir.path());
        assert!(spool.keep_only(&[]).is_ok(), "no spool directory yet");

        let (this, other, old) = (payload("aa"), payload("bb"), payload("cc"));
        fs::create_dir_all(&spool.dir).unwrap();
        for p in [&this, &other, &old] {
            fs::write(spool.path(p).unwrap(), b"partial").unwrap();
        }
        spool.keep_only(&[&this, &other]).unwrap();
        assert!(spool.path(&this).unwrap().exists());
        assert!(spool.path(&other).unwrap().exists());
        assert!(
            !spool.path(&old).unwrap().exists(),
            "another bundle's delta"
        );
    }
}
