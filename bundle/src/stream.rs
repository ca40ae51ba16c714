//! Hashing adapters for the streaming install path: the payload is hashed as it is read
//! and the decoded image as it is written, and neither is trusted before both match.

use std::io::{self, Read, Write};

use sha2::{Digest, Sha256};

use crate::codec::{full, zstd_patch, Method};
use crate::error::{Error, Result};
use crate::manifest::{Image, Payload};

/// Buffer size for moving decoded bytes to the slot: big enough for sequential writes to
/// run at device speed, small enough for the memory budget.
pub const COPY_BUF: usize = 1 << 20;

/// Reads exactly a payload's bytes and hashes them on the way.
pub struct PayloadReader<R> {
    inner: R,
    hasher: Sha256,
    remaining: u64,
    read_failed: bool,
}

impl<R: Read> PayloadReader<R> {
    pub fn new(inner: R, size: u64) -> Self {
        PayloadReader {
            inner,
            hasher: Sha256::new(),
            remaining: size,
            read_failed: false,
        }
    }

    /// Reads what the codec left unread and returns the digest of all payload bytes, or
    /// the error and how many bytes were still missing.
    fn finish(mut self) -> Result<String, (io::Error, u64)> {
        io::copy(&mut self, &mut io::sink()).map_err(|e| (e, self.remaining))?;
        Ok(hex::encode(self.hasher.finalize()))
    }
}

impl<R: Read> Read for PayloadReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(self.remaining.min(usize::MAX as u64) as usize);
        let n = self
            .inner
            .read(&mut buf[..want])
            .inspect_err(|_| self.read_failed = true)?;
        if n == 0 {
            self.read_failed = true;
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("payload ends {} bytes early", self.remaining),
            ));
        }
        self.hasher.update(&buf[..n]);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// Writes a decoded image, hashing it and refusing a single byte past its declared size.
pub struct ImageSink<W> {
    inner: W,
    hasher: Sha256,
    written: u64,
    limit: u64,
    overflowed: bool,
    write_failed: bool,
}

impl<W: Write> ImageSink<W> {
    pub fn new(inner: W, limit: u64) -> Self {
        ImageSink {
            inner,
            hasher: Sha256::new(),
            written: 0,
            limit,
            overflowed: false,
            write_failed: false,
        }
    }
}

impl<W: Write> Write for ImageSink<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.written + buf.len() as u64 > self.limit {
            self.overflowed = true;
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "image larger than declared",
            ));
        }
        let n = self
            .inner
            .write(buf)
            .inspect_err(|_| self.write_failed = true)?;
        self.hasher.update(&buf[..n]);
        self.written += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.write_failed = true)
    }
}

pub(crate) fn copy_buffered(input: &mut impl Read, out: &mut impl Write) -> io::Result<()> {
    let mut buf = vec![0u8; COPY_BUF];
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        out.write_all(&buf[..n])?;
    }
}

/// Decodes `payload` of `image` from `input` into `out` and checks both hashes.
///
/// `input` yields the payload's bytes (from the bundle file, or an HTTP body). `source`
/// is the current image that a delta applies to; the caller has checked its hash against
/// `payload.source`. On success `out` holds exactly the image the manifest describes; on
/// any error the bytes written so far must not be trusted.
pub fn decode_payload<R: Read, W: Write>(
    image: &Image,
    payload: &Payload,
    input: R,
    source: Option<&[u8]>,
    out: W,
) -> Result<W> {
    let mut reader = PayloadReader::new(input, payload.size);
    let mut sink = ImageSink::new(out, image.size);
    let decoded = match (Method::parse(&payload.method), source) {
        (Method::Zstd, _) => full::decode(&mut reader, &mut sink),
        (Method::ZstdPatch, Some(source)) => {
            zstd_patch::decode(&mut reader, source, image.size, &mut sink)
        }
        (Method::ZstdPatch, None) => {
            return Err(Error::NoUsablePayload {
                image: image.name.clone(),
                detail: "zstd-patch needs the source image".into(),
            })
        }
        (Method::Unknown(m), _) => {
            return Err(Error::NoUsablePayload {
                image: image.name.clone(),
                detail: format!("unknown method '{m}'"),
            })
        }
    };
    let result = decoded.and_then(|()| sink.flush());
    classify(image, &reader, &sink, result)?;
    let payload_digest = reader.finish().map_err(|(e, missing)| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            Error::PayloadTruncated {
                image: image.name.clone(),
                missing,
            }
        } else {
            Error::io(format!("reading payload of image {}", image.name))(e)
        }
    })?;
    if payload_digest != payload.sha256 {
        return Err(Error::PayloadHashMismatch {
            image: image.name.clone(),
            expected: payload.sha256.clone(),
            actual: payload_digest,
        });
    }
    if sink.written != image.size {
        return Err(Error::ImageSizeMismatch {
            image: image.name.clone(),
            expected: image.size,
            actual: sink.written,
        });
    }
    let image_digest = hex::encode(sink.hasher.finalize());
    if image_digest != image.sha256 {
        return Err(Error::ImageHashMismatch {
            image: image.name.clone(),
            expected: image.sha256.clone(),
            actual: image_digest,
        });
    }
    Ok(sink.inner)
}

/// Turns a failed decode into the error that names the real cause: the network or disk,
/// an image that grew past its size, a payload cut short, or corrupt payload bytes.
fn classify<R, W>(
    image: &Image,
    reader: &PayloadReader<R>,
    sink: &ImageSink<W>,
    result: io::Result<()>,
) -> Result<()> {
    let Err(e) = result else { return Ok(()) };
    let name = image.name.clone();
    Err(if sink.overflowed {
        Error::ImageSizeMismatch {
            image: name,
            expected: image.size,
            actual: image.size + 1,
        }
    } else if sink.write_failed {
        Error::io(format!("writing image {name}"))(e)
    } else if reader.read_failed && reader.remaining > 0 && e.kind() == io::ErrorKind::UnexpectedEof
    {
        Error::PayloadTruncated {
            image: name,
            missing: reader.remaining,
        }
    } else if reader.read_failed {
        Error::io(format!("reading payload of image {name}"))(e)
    } else {
        Error::PayloadCorrupt {
            image: name,
            detail: e.to_string(),
        }
    })
}

/// SHA-256 of everything `input` yields, and how many bytes that was.
pub fn sha256_reader(input: &mut impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        let n = match input.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        total += n as u64;
    }
    Ok((hex::encode(hasher.finalize()), total))
}
