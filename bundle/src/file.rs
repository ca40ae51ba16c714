//! A bundle on local disk (USB stick, build output, server blob store).

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::digest::{hash_reader, Algorithm};
use crate::error::{Error, Result};
use crate::manifest::{Image, Payload};
use crate::stream::decode_payload;
use crate::verify::{Policy, UnverifiedBundle, VerifiedBundle};
use crate::TrustRoot;

pub struct BundleFile {
    path: PathBuf,
    file: File,
    pub bundle: UnverifiedBundle,
}

impl BundleFile {
    /// Opens a bundle and parses its metadata; checks that the file is exactly as long as
    /// its header says, so a truncated copy is named as such before anything else.
    pub fn open(path: impl AsRef<Path>) -> Result<BundleFile> {
        let path = path.as_ref().to_path_buf();
        let ctx = || format!("opening bundle {}", path.display());
        let mut file = File::open(&path).map_err(Error::io(ctx()))?;
        let len = file.metadata().map_err(Error::io(ctx()))?.len();
        let bundle = UnverifiedBundle::read_from(&mut file)?;
        let expected = bundle.header.file_len();
        if len < expected {
            return Err(Error::Truncated {
                what: "bundle file",
                needed: expected,
                available: len,
            });
        }
        if len > expected {
            return Err(Error::HeaderLayout(format!(
                "file has {} bytes after the payload area",
                len - expected
            )));
        }
        Ok(BundleFile { path, file, bundle })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn verify(&self, anchor: &TrustRoot, policy: &Policy) -> Result<VerifiedBundle> {
        self.bundle.clone().verify(anchor, policy)
    }

    /// A reader over exactly one payload's bytes. Readers use positional reads on their
    /// own handle, so several may be read at once (from different threads).
    pub fn payload_reader(&self, payload: &Payload) -> Result<impl Read> {
        self.payload_part(payload, 0..payload.size)
    }

    /// A reader over bytes `part` of `payload` (a chunked image's frames).
    pub fn payload_part(&self, payload: &Payload, part: std::ops::Range<u64>) -> Result<impl Read> {
        let file = self
            .file
            .try_clone()
            .map_err(Error::io("cloning bundle handle"))?;
        let start = self.bundle.header.payload_area_offset + payload.offset;
        let end = start + part.end.min(payload.size);
        Ok(io::BufReader::with_capacity(
            1 << 20,
            RangeReader {
                file,
                pos: (start + part.start).min(end),
                end,
            },
        ))
    }

    /// Decodes `image`'s full payload into `out`, checking both hashes.
    pub fn extract_full<W: io::Write>(&self, image: &Image, out: W) -> Result<W> {
        decode_payload(
            image,
            &image.full,
            self.payload_reader(&image.full)?,
            None,
            out,
        )
    }

    /// Checks every payload: decodes each full payload and compares the image hash, and
    /// hashes each delta payload (a delta can only be decoded against its source).
    /// Every digest the manifest gives is checked (SHA-256, and BLAKE3 where present: a
    /// device checks only one of them, so the builder's must agree). Also checks that
    /// every byte outside the payloads (alignment padding) is zero, so that a flipped
    /// byte anywhere in the file is caught.
    pub fn check_payloads(&self, mut progress: impl FnMut(&str)) -> Result<()> {
        self.check_padding()?;
        for image in &self.bundle.manifest.images {
            progress(&format!(
                "checking image {} ({} bytes)",
                image.name, image.size
            ));
            let mut sha256_only = image.clone();
            sha256_only.blake3 = None;
            sha256_only.full.blake3 = None;
            self.extract_full(&sha256_only, io::sink())?;
            if image.blake3.is_some() || image.full.blake3.is_some() {
                self.extract_full(image, io::sink())?;
            }
            for (label, delta) in image.payloads().skip(1) {
                let mut checks = vec![(Algorithm::Sha256, delta.sha256.as_str())];
                checks.extend(delta.blake3.as_deref().map(|b| (Algorithm::Blake3, b)));
                for (algorithm, expected) in checks {
                    let mut reader = self.payload_reader(delta)?;
                    let (digest, len) =
                        hash_reader(algorithm, &mut reader).map_err(Error::io("reading delta"))?;
                    if len != delta.size {
                        return Err(Error::PayloadTruncated {
                            image: image.name.clone(),
                            missing: delta.size - len,
                        });
                    }
                    if digest != expected {
                        return Err(Error::PayloadHashMismatch {
                            image: format!("{} {label}", image.name),
                            expected: format!("{} {expected}", algorithm.name()),
                            actual: digest,
                        });
                    }
                }
            }
            if let Some(chunked) = &image.chunked {
                progress(&format!("checking image {} (chunked)", image.name));
                let index = crate::chunked::read_index(
                    image,
                    chunked,
                    self.payload_reader(&chunked.index)?,
                )?;
                crate::chunked::check_all(image, &index, self.payload_reader(&chunked.data)?)?;
            }
        }
        Ok(())
    }

    fn check_padding(&self) -> Result<()> {
        let header = &self.bundle.header;
        let mut gaps = vec![(header.metadata_end(), header.payload_area_offset)];
        let mut spans: Vec<(u64, u64)> = (self.bundle.manifest.images.iter())
            .flat_map(|i| {
                i.payloads()
                    .map(|(_, p)| (p.offset, p.offset + p.size))
                    .collect::<Vec<_>>()
            })
            .collect();
        spans.sort();
        let mut at = 0;
        for (start, end) in spans {
            gaps.push((
                header.payload_area_offset + at,
                header.payload_area_offset + start,
            ));
            at = end;
        }
        gaps.push((header.payload_area_offset + at, header.file_len()));
        let mut file = self
            .file
            .try_clone()
            .map_err(Error::io("cloning bundle handle"))?;
        for (start, end) in gaps.into_iter().filter(|(s, e)| e > s) {
            file.seek(SeekFrom::Start(start))
                .map_err(Error::io("seeking to padding"))?;
            let mut pad = vec![0u8; (end - start) as usize];
            file.read_exact(&mut pad)
                .map_err(Error::io("reading padding"))?;
            if let Some(i) = pad.iter().position(|&b| b != 0) {
                return Err(Error::HeaderLayout(format!(
                    "non-zero padding byte at offset {}",
                    start + i as u64
                )));
            }
        }
        Ok(())
    }
}

/// `end - pos` bytes of a file from `pos`, read with `pread`: a cloned handle shares its
/// file offset with the original, so seeking and reading would race between threads.
struct RangeReader {
    file: File,
    pos: u64,
    end: u64,
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        use std::os::unix::fs::FileExt;
        let want = buf
            .len()
            .min((self.end - self.pos).min(usize::MAX as u64) as usize);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}
