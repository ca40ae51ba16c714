//! Where a bundle comes from: a local file (USB stick, offline) or an HTTP(S) URL.

use std::io::{self, Read};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use cairn_bundle::header::{Header, HEADER_LEN};
use cairn_bundle::{BundleFile, Payload, UnverifiedBundle};

use super::http::HttpBundle;
use super::InstallError;
use crate::transport::Transport;

/// Bytes fetched in the first request: enough for the metadata of any ordinary bundle.
const FIRST_FETCH: u64 = 64 << 10;

pub enum BundleSource {
    Local(Box<BundleFile>),
    Http { bundle: HttpBundle, file_len: u64 },
}

impl BundleSource {
    /// Opens `location` (a path, or an https:// URL, or http:// where `transport` allows
    /// it) and reads its metadata.
    pub fn open(
        location: &str,
        transport: &Transport,
    ) -> Result<(BundleSource, UnverifiedBundle), InstallError> {
        if location.contains("://") {
            transport.check_url(location)?;
            let bundle =
                HttpBundle::new(location, transport).map_err(InstallError::download(location))?;
            let metadata = fetch_metadata(&bundle).map_err(|e| match e {
                FetchError::Io(e) => InstallError::download(location)(e),
                FetchError::Bundle(e) => InstallError::Bundle(e),
            })?;
            let file_len = metadata.header.file_len();
            Ok((BundleSource::Http { bundle, file_len }, metadata))
        } else {
            let file = BundleFile::open(location)?;
            let metadata = file.bundle.clone();
            Ok((BundleSource::Local(Box::new(file)), metadata))
        }
    }

    /// A reader over exactly `payload`'s bytes.
    pub fn payload(
        &self,
        header: &Header,
        payload: &Payload,
    ) -> Result<Box<dyn Read + Send>, InstallError> {
        self.payload_part(header, payload, 0..payload.size)
    }

    /// A reader over bytes `part` of `payload`: one Range request over HTTP.
    pub fn payload_part(
        &self,
        header: &Header,
        payload: &Payload,
        part: Range<u64>,
    ) -> Result<Box<dyn Read + Send>, InstallError> {
        Ok(match self {
            BundleSource::Local(file) => Box::new(file.payload_part(payload, part)?),
            BundleSource::Http { bundle, file_len } => Box::new(io::BufReader::with_capacity(
                256 << 10,
                bundle.range(
                    header.payload_area_offset + payload.offset + part.start,
                    part.end.min(payload.size).saturating_sub(part.start),
                    Some(*file_len),
                ),
            )),
        })
    }
}

impl BundleSource {
    /// For a local file, hashes each payload `plan` will read before anything is
    /// written, so a corrupt or truncated file never touches a slot. A download is checked
    /// while it streams instead (reading it twice would double the transfer); its target
    /// slot is unbootable from before the first byte.
    ///
    /// One payload is hashed with its reading on a second thread; several are spread over
    /// two threads. Failures are reported in `payloads` order.
    pub fn precheck(&self, payloads: &[(&str, &Payload)]) -> Result<(), InstallError> {
        let BundleSource::Local(file) = self else {
            return Ok(());
        };
        let check = |image: &str, payload: &Payload| -> Result<(), InstallError> {
            let reader = file.payload_reader(payload)?;
            let (algorithm, expected) = payload.checked_digest();
            let (digest, len) = if payloads.len() == 1 {
                cairn_bundle::hash_reader_overlapped(algorithm, reader)
            } else {
                cairn_bundle::digest::hash_reader(algorithm, &mut { reader })
            }
            .map_err(InstallError::ReadBundle)?;
            if len != payload.size {
                return Err(cairn_bundle::Error::PayloadTruncated {
                    image: image.to_string(),
                    missing: payload.size.saturating_sub(len),
                }
                .into());
            }
            if digest != expected {
                return Err(cairn_bundle::Error::PayloadHashMismatch {
                    image: image.to_string(),
                    expected: format!("{} {expected}", algorithm.name()),
                    actual: digest,
                }
                .into());
            }
            Ok(())
        };
        if payloads.len() <= 1 {
            return payloads.iter().try_for_each(|(i, p)| check(i, p));
        }
        // Two workers take payloads in turn; each result lands in its payload's place.
        let next = AtomicUsize::new(0);
        let results: Vec<Mutex<Option<Result<(), InstallError>>>> =
            payloads.iter().map(|_| Mutex::new(None)).collect();
        std::thread::scope(|scope| {
            for _ in 0..2 {
                scope.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some((image, payload)) = payloads.get(i) else {
                        return;
                    };
                    let result = check(image, payload);
                    let failed = result.is_err();
                    *results[i].lock().expect("not poisoned") = Some(result);
                    if failed {
                        // Stop the other worker from starting more.
                        next.store(payloads.len(), Ordering::Relaxed);
                        return;
                    }
                });
            }
        });
        for result in results {
            if let Some(Err(e)) = result.into_inner().expect("not poisoned") {
                return Err(e);
            }
        }
        Ok(())
    }
}

enum FetchError {
    Io(io::Error),
    Bundle(cairn_bundle::Error),
}

/// One request for the first 64 KiB; a second only when the metadata is larger.
fn fetch_metadata(bundle: &HttpBundle) -> Result<UnverifiedBundle, FetchError> {
    let mut head = vec![0u8; HEADER_LEN];
    let mut first = bundle.range(0, FIRST_FETCH, None);
    first.read_exact(&mut head).map_err(FetchError::Io)?;
    let header = Header::decode(&head).map_err(FetchError::Bundle)?;
    let end = header.metadata_end();
    let mut rest = vec![0u8; (end - HEADER_LEN as u64) as usize];
    if end <= FIRST_FETCH {
        first.read_exact(&mut rest).map_err(FetchError::Io)?;
    } else {
        drop(first);
        let mut second = bundle.range(
            HEADER_LEN as u64,
            end - HEADER_LEN as u64,
            Some(header.file_len()),
        );
        second.read_exact(&mut rest).map_err(FetchError::Io)?;
    }
    head.extend_from_slice(&rest);
    UnverifiedBundle::parse(&head).map_err(FetchError::Bundle)
}
