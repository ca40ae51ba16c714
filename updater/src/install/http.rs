//! Bundles over HTTP(S): one Range request for the metadata, then one per payload, each
//! resumed from the last byte received when the connection drops.

use std::io::{self, Read};
use std::time::Duration;

use reqwest::blocking::{Client, Response};

use crate::transport::{error_chain, Transport};
use reqwest::header::{CONTENT_RANGE, RANGE};
use reqwest::StatusCode;

/// How many times one range is re-requested after a failure before the install fails.
const MAX_RETRIES: u32 = 8;
const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(30);

#[derive(Clone)]
pub struct HttpBundle {
    client: Client,
    url: String,
}

impl HttpBundle {
    pub fn new(url: &str, transport: &Transport) -> io::Result<HttpBundle> {
        let client = transport
            .client()
            .connect_timeout(Duration::from_secs(15))
            .tcp_keepalive(Duration::from_secs(15))
            .build()
            .map_err(io::Error::other)?;
        Ok(HttpBundle {
            client,
            url: url.to_string(),
        })
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// A reader over bytes `start..start+len` of the bundle that survives dropped
    /// connections. `total` is checked against the server's idea of the file size when
    /// known, so a truncated file on the server is noticed.
    pub fn range(&self, start: u64, len: u64, total: Option<u64>) -> RangeReader {
        RangeReader {
            bundle: self.clone(),
            next: start,
            end: start + len,
            total,
            body: None,
            retries: 0,
            resumed: 0,
        }
    }

    fn request(&self, start: u64, end: u64) -> io::Result<Response> {
        let response = self
            .client
            .get(&self.url)
            .header(RANGE, format!("bytes={start}-{}", end - 1))
            .timeout(request_timeout(end - start))
            .send()
            .map_err(|e| {
                io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    format!("GET {}: {}", self.url, error_chain(&e)),
                )
            })?;
        match response.status() {
            StatusCode::PARTIAL_CONTENT => Ok(response),
            StatusCode::RANGE_NOT_SATISFIABLE => Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "{}: bytes {start}.. are past the end of the file (truncated bundle?)",
                    self.url
                ),
            )),
            status if status.is_server_error() => Err(io::Error::new(
                io::ErrorKind::ConnectionAborted,
                format!("GET {}: {status}", self.url),
            )),
            status => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "GET {}: {status} (the server must answer Range requests with 206)",
                    self.url
                ),
            )),
        }
    }
}

/// The blocking client has no read timeout, only a whole-request one: allow the range
/// at a slow 32 KiB/s plus a minute, so a stalled connection is cut and resumed instead of
/// hanging the install.
fn request_timeout(len: u64) -> Duration {
    Duration::from_secs(60 + len / (32 << 10))
}

pub struct RangeReader {
    bundle: HttpBundle,
    next: u64,
    end: u64,
    total: Option<u64>,
    body: Option<Response>,
    retries: u32,
    /// How many times the stream was resumed after a failure (for logs and tests).
    pub resumed: u32,
}

impl RangeReader {
    fn open(&mut self) -> io::Result<()> {
        let response = self.bundle.request(self.next, self.end)?;
        if let (Some(total), Some(range)) = (self.total, response.headers().get(CONTENT_RANGE)) {
            let served = range
                .to_str()
                .ok()
                .and_then(|r| r.rsplit('/').next())
                .and_then(|t| t.parse::<u64>().ok());
            if served.is_some_and(|s| s != total) {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!(
                        "server has {} bytes of the bundle, its header says {total}",
                        served.unwrap_or(0)
                    ),
                ));
            }
        }
        self.body = Some(response);
        Ok(())
    }

    /// Transient failures (connection reset, timeout, early end, 5xx) are retried with
    /// exponential backoff; a client error or a wrong file is not.
    fn retryable(e: &io::Error) -> bool {
        matches!(
            e.kind(),
            io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionReset
                | io::ErrorKind::TimedOut
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::Other
        ) && !e.to_string().contains("past the end")
    }

    fn backoff(&mut self, e: io::Error) -> io::Result<()> {
        self.body = None;
        if !Self::retryable(&e) || self.retries >= MAX_RETRIES {
            return Err(e);
        }
        let delay = (FIRST_BACKOFF * 2u32.pow(self.retries)).min(MAX_BACKOFF);
        tracing::warn!(error = %e, at = self.next, retry = self.retries + 1, ?delay, "download interrupted; resuming");
        std::thread::sleep(delay);
        self.retries += 1;
        self.resumed += 1;
        Ok(())
    }
}

impl Read for RangeReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if self.next >= self.end {
                return Ok(0);
            }
            if self.body.is_none() {
                if let Err(e) = self.open() {
                    self.backoff(e)?;
                    continue;
                }
            }
            let want = buf.len().min((self.end - self.next) as usize);
            let body = self.body.as_mut().expect("opened above");
            match body.read(&mut buf[..want]) {
                Ok(0) => {
                    let e =
                        io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-range");
                    self.backoff(e)?;
                }
                Ok(n) => {
                    self.next += n as u64;
                    self.retries = 0; // progress was made: the budget is per stall
                    return Ok(n);
                }
                Err(e) => self.backoff(e)?,
            }
        }
    }
}
