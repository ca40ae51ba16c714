//! Hashing adapters for the streaming install path: the payload is hashed as it is read
//! and the decoded image as it is written, and neither is trusted before both match.

use std::io::{self, BufRead, Read, Write};
use std::sync::mpsc;
use std::thread;

use crate::chunks::COPY_BUF;
use crate::codec::{block_bsdiff, full, zstd_patch, Method};
use crate::digest::{Algorithm, Hasher};
use crate::error::{Error, Result};
use crate::manifest::{Image, Payload};

/// Buffers queued for each hasher thread. Each side (payload, image) owns at most
/// `HASH_DEPTH + 2` buffers of [`COPY_BUF`]: queued, being hashed, and being filled.
const HASH_DEPTH: usize = 2;

/// A hash ([`Algorithm`]) on its own thread, fed owned buffers that it hands back for
/// reuse, so that hashing overlaps decoding and writing on another core. Bytes are hashed
/// in the order they are sent.
struct HashThread<'scope> {
    full: Option<mpsc::SyncSender<(Vec<u8>, usize)>>,
    free: mpsc::Receiver<Vec<u8>>,
    /// Buffers that may still be allocated before waiting for one to come back.
    spare: usize,
    handle: thread::ScopedJoinHandle<'scope, String>,
}

impl<'scope> HashThread<'scope> {
    fn spawn(scope: &'scope thread::Scope<'scope, '_>, algorithm: Algorithm) -> Self {
        let (full, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(HASH_DEPTH);
        let (free_tx, free) = mpsc::channel();
        let handle = scope.spawn(move || {
            let mut hasher = Hasher::new(algorithm);
            for (buf, len) in full_rx {
                hasher.update(&buf[..len]);
                let _ = free_tx.send(buf);
            }
            hasher.finalize_hex()
        });
        HashThread {
            full: Some(full),
            free,
            spare: HASH_DEPTH + 2,
            handle,
        }
    }

    /// An empty buffer of [`COPY_BUF`] bytes: a returned one, a new one while the budget
    /// allows, else the next one the hasher is done with.
    fn buffer(&mut self) -> Vec<u8> {
        if let Ok(buf) = self.free.try_recv() {
            return buf;
        }
        if self.spare > 0 {
            self.spare -= 1;
            return vec![0u8; COPY_BUF];
        }
        // Only fails if the hasher panicked; `finish` reports that.
        self.free.recv().unwrap_or_else(|_| vec![0u8; COPY_BUF])
    }

    /// Hashes `buf[..len]` after everything sent before.
    fn send(&mut self, buf: Vec<u8>, len: usize) {
        if let Some(full) = &self.full {
            let _ = full.send((buf, len));
        }
    }

    fn finish(mut self) -> String {
        self.full = None;
        match self.handle.join() {
            Ok(digest) => digest,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// The payload side of `decode_payload`: reads exactly a payload's bytes into buffers
/// that it serves to the codec (as a `BufRead`, without another copy) and then hands to
/// a hasher thread.
struct HashedInput<'scope, R> {
    inner: R,
    hash: HashThread<'scope>,
    buf: Vec<u8>,
    pos: usize,
    len: usize,
    remaining: u64,
    read_failed: bool,
}

impl<'scope, R: Read> HashedInput<'scope, R> {
    fn new(inner: R, size: u64, hash: HashThread<'scope>) -> Self {
        HashedInput {
            inner,
            hash,
            buf: Vec::new(),
            pos: 0,
            len: 0,
            remaining: size,
            read_failed: false,
        }
    }

    /// Reads what the codec left unread and returns the digest of all payload bytes, or
    /// the error and how many bytes were still missing.
    fn finish(mut self) -> Result<String, (io::Error, u64)> {
        loop {
            match self.fill_buf() {
                Ok([]) => break,
                Ok(rest) => {
                    let n = rest.len();
                    self.consume(n);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err((e, self.remaining)),
            }
        }
        if self.len > 0 {
            self.hash.send(std::mem::take(&mut self.buf), self.len);
        }
        Ok(self.hash.finish())
    }
}

impl<R: Read> BufRead for HashedInput<'_, R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        if self.pos == self.len && self.remaining > 0 {
            if self.len > 0 {
                let done = std::mem::replace(&mut self.buf, self.hash.buffer());
                self.hash.send(done, self.len);
                (self.pos, self.len) = (0, 0);
            } else if self.buf.is_empty() {
                self.buf = self.hash.buffer();
            }
            let want = (self.buf.len() as u64).min(self.remaining) as usize;
            let n = self
                .inner
                .read(&mut self.buf[..want])
                .inspect_err(|_| self.read_failed = true)?;
            if n == 0 {
                self.read_failed = true;
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("payload ends {} bytes early", self.remaining),
                ));
            }
            self.remaining -= n as u64;
            self.len = n;
        }
        Ok(&self.buf[self.pos..self.len])
    }

    fn consume(&mut self, amt: usize) {
        self.pos = (self.pos + amt).min(self.len);
    }
}

impl<R: Read> Read for HashedInput<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = avail.len().min(out.len());
        out[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The image side of `decode_payload`: writes on the calling thread, refusing a single
/// byte past the declared size, and hashes on a hasher thread.
struct HashedSink<'scope, W> {
    inner: W,
    hash: HashThread<'scope>,
    /// Written bytes not yet sent to the hasher (`Write` path only).
    pending: Vec<u8>,
    pending_len: usize,
    written: u64,
    limit: u64,
    overflowed: bool,
    write_failed: bool,
}

impl<'scope, W: Write> HashedSink<'scope, W> {
    fn new(inner: W, limit: u64, hash: HashThread<'scope>) -> Self {
        HashedSink {
            inner,
            hash,
            pending: Vec::new(),
            pending_len: 0,
            written: 0,
            limit,
            overflowed: false,
            write_failed: false,
        }
    }

    /// Writes to the slot, refusing a single byte past the declared size; the caller
    /// hashes what was written.
    fn write_unhashed(&mut self, buf: &[u8]) -> io::Result<usize> {
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
        self.written += n as u64;
        Ok(n)
    }

    /// `write_all` without the hashing.
    fn write_all_unhashed(&mut self, mut buf: &[u8]) -> io::Result<()> {
        while !buf.is_empty() {
            match self.write_unhashed(buf) {
                Ok(0) => {
                    return Err(io::Error::new(
                        io::ErrorKind::WriteZero,
                        "failed to write whole buffer",
                    ))
                }
                Ok(n) => buf = &buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn hash_copy(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.pending.is_empty() {
                self.pending = self.hash.buffer();
            }
            let k = data.len().min(self.pending.len() - self.pending_len);
            self.pending[self.pending_len..self.pending_len + k].copy_from_slice(&data[..k]);
            self.pending_len += k;
            data = &data[k..];
            if self.pending_len == self.pending.len() {
                self.send_pending();
            }
        }
    }

    fn send_pending(&mut self) {
        if self.pending_len > 0 {
            let buf = std::mem::take(&mut self.pending);
            self.hash.send(buf, self.pending_len);
            self.pending_len = 0;
        }
    }

    /// What `copy_buffered` into this sink does, but the codec decodes straight into the
    /// buffers that then go to the hasher. A buffer is written before a read error is
    /// returned, and filling stops once it holds more than the declared size, so errors
    /// come out as they would from `copy_buffered`.
    fn fill_from(&mut self, input: &mut impl Read) -> io::Result<()> {
        self.send_pending();
        loop {
            let mut buf = self.hash.buffer();
            let (mut len, mut eof, mut failed) = (0, false, None);
            while len < buf.len() && self.written + len as u64 <= self.limit {
                match input.read(&mut buf[len..]) {
                    Ok(0) => {
                        eof = true;
                        break;
                    }
                    Ok(n) => len += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            self.write_all_unhashed(&buf[..len])?;
            self.hash.send(buf, len);
            if let Some(e) = failed {
                return Err(e);
            }
            if eof {
                return Ok(());
            }
        }
    }

    /// The digest of every byte written.
    fn finish(mut self) -> (W, String) {
        self.send_pending();
        (self.inner, self.hash.finish())
    }
}

impl<W: Write> Write for HashedSink<'_, W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.write_unhashed(buf)?;
        self.hash_copy(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().inspect_err(|_| self.write_failed = true)
    }
}

/// Decodes `payload` of `image` from `input` into `out` and checks both hashes.
///
/// `input` yields the payload's bytes (from the bundle file, or an HTTP body). `source`
/// is the current image that a delta applies to; the caller has checked its hash against
/// `payload.source`. On success `out` holds exactly the image the manifest describes; on
/// any error the bytes written so far must not be trusted.
///
/// Reading, decoding and writing run on the calling thread; the payload and the image are
/// hashed on two helper threads, a few MiB behind.
pub fn decode_payload<R: Read, W: Write>(
    image: &Image,
    payload: &Payload,
    input: R,
    source: Option<&[u8]>,
    out: W,
) -> Result<W> {
    let method = Method::parse(&payload.method);
    let source = match (&method, source) {
        (Method::Zstd, _) => None,
        (Method::ZstdPatch | Method::BlockBsdiff, Some(source)) => Some(source),
        (Method::ZstdPatch | Method::BlockBsdiff, None) => {
            return Err(Error::NoUsablePayload {
                image: image.name.clone(),
                detail: format!("{} needs the source image", method.name()),
            })
        }
        (Method::Unknown(m), _) => {
            return Err(Error::NoUsablePayload {
                image: image.name.clone(),
                detail: format!("unknown method '{m}'"),
            })
        }
    };
    thread::scope(|scope| {
        let (payload_algorithm, payload_expected) = payload.checked_digest();
        let (image_algorithm, image_expected) = image.checked_digest();
        let payload_hash = HashThread::spawn(scope, payload_algorithm);
        let mut reader = HashedInput::new(input, payload.size, payload_hash);
        let image_hash = HashThread::spawn(scope, image_algorithm);
        let mut sink = HashedSink::new(out, image.size, image_hash);
        let decoded = match source {
            None => full::decoder(&mut reader).and_then(|mut d| sink.fill_from(&mut d)),
            Some(source) if method == Method::BlockBsdiff => {
                block_bsdiff::decode(&mut reader, source, image.size, &mut sink)
            }
            Some(source) => zstd_patch::decode(&mut reader, source, image.size, &mut sink),
        };
        let result = decoded.and_then(|()| sink.flush());
        classify(
            image,
            Flags {
                overflowed: sink.overflowed,
                write_failed: sink.write_failed,
                read_failed: reader.read_failed,
                remaining: reader.remaining,
            },
            result,
        )?;
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
        if payload_digest != payload_expected {
            return Err(Error::PayloadHashMismatch {
                image: image.name.clone(),
                expected: format!("{} {payload_expected}", payload_algorithm.name()),
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
        let (out, image_digest) = sink.finish();
        if image_digest != image_expected {
            return Err(Error::ImageHashMismatch {
                image: image.name.clone(),
                expected: format!("{} {image_expected}", image_algorithm.name()),
                actual: image_digest,
            });
        }
        Ok(out)
    })
}

/// What the reader and the sink saw when a decode failed.
struct Flags {
    overflowed: bool,
    write_failed: bool,
    read_failed: bool,
    remaining: u64,
}

/// Turns a failed decode into the error that names the real cause: the network or disk,
/// an image that grew past its size, a payload cut short, or corrupt payload bytes.
fn classify(image: &Image, flags: Flags, result: io::Result<()>) -> Result<()> {
    let Err(e) = result else { return Ok(()) };
    let name = image.name.clone();
    Err(if flags.overflowed {
        Error::ImageSizeMismatch {
            image: name,
            expected: image.size,
            actual: image.size + 1,
        }
    } else if flags.write_failed {
        Error::io(format!("writing image {name}"))(e)
    } else if flags.read_failed && flags.remaining > 0 && e.kind() == io::ErrorKind::UnexpectedEof {
        Error::PayloadTruncated {
            image: name,
            missing: flags.remaining,
        }
    } else if flags.read_failed {
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
    crate::digest::hash_reader(Algorithm::Sha256, input)
}

/// [`crate::digest::hash_reader`] with the reading on a helper thread, so that copying
/// the bytes in overlaps hashing them. At most a few [`COPY_BUF`] buffers are in flight.
pub fn hash_reader_overlapped<R: Read + Send>(
    algorithm: Algorithm,
    mut input: R,
) -> io::Result<(String, u64)> {
    let (full_tx, full_rx) = mpsc::sync_channel::<io::Result<(Vec<u8>, usize)>>(HASH_DEPTH);
    let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
    thread::scope(|scope| {
        scope.spawn(move || {
            let mut spare = HASH_DEPTH + 2;
            loop {
                let buf = match free_rx.try_recv() {
                    Ok(buf) => Some(buf),
                    Err(_) if spare > 0 => {
                        spare -= 1;
                        Some(vec![0u8; COPY_BUF])
                    }
                    Err(_) => free_rx.recv().ok(),
                };
                // No buffer: the hashing side stopped.
                let Some(mut buf) = buf else { return };
                let item = loop {
                    match input.read(&mut buf) {
                        Ok(0) => return,
                        Ok(n) => break Ok((buf, n)),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => break Err(e),
                    }
                };
                let failed = item.is_err();
                if full_tx.send(item).is_err() || failed {
                    return;
                }
            }
        });
        let mut hasher = Hasher::new(algorithm);
        let mut total = 0u64;
        for item in full_rx {
            let (buf, n) = item?;
            hasher.update(&buf[..n]);
            total += n as u64;
            let _ = free_tx.send(buf);
        }
        Ok((hasher.finalize_hex(), total))
    })
}
