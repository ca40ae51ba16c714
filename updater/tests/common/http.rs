//! A real HTTP/1.1 server on loopback that serves files with Range support, and can
//! misbehave on purpose: drop a connection part-way through a payload, or trickle bytes.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

#[derive(Default)]
pub struct Faults {
    /// Close the connection after sending this many body bytes of a response whose
    /// range starts at or after `drop_from` (once per `drops` count).
    pub drop_after: u64,
    pub drop_from: u64,
    pub drops: AtomicUsize,
    /// Sleep this long after each 64 KiB of body (0: full speed).
    pub trickle: Duration,
}

pub struct Server {
    pub port: u16,
    pub requests: Arc<AtomicUsize>,
    pub body_bytes: Arc<AtomicU64>,
}

impl Server {
    pub fn url(&self, name: &str) -> String {
        format!("{}/{name}", self.base())
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

pub fn serve(dir: PathBuf, faults: Arc<Faults>) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicUsize::new(0));
    let body_bytes = Arc::new(AtomicU64::new(0));
    let (r, b) = (requests.clone(), body_bytes.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let (dir, faults, r, b) = (dir.clone(), faults.clone(), r.clone(), b.clone());
            std::thread::spawn(move || {
                let _ = handle(stream, &dir, &faults, &r, &b);
            });
        }
    });
    Server {
        port,
        requests,
        body_bytes,
    }
}

fn handle(
    stream: TcpStream,
    dir: &std::path::Path,
    faults: &Faults,
    requests: &AtomicUsize,
    body_bytes: &AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        requests.fetch_add(1, Ordering::SeqCst);
        let path = line
            .split_whitespace()
            .nth(1)
            .unwrap_or("/")
            .trim_start_matches('/')
            .to_string();
        let mut range = None;
        loop {
            let mut h = String::new();
            reader.read_line(&mut h)?;
            if h.trim().is_empty() {
                break;
            }
            if let Some(v) = h.to_ascii_lowercase().strip_prefix("range: bytes=") {
                let (a, b) = v.trim().split_once('-').unwrap();
                range = Some((a.parse::<u64>().unwrap(), b.parse::<u64>().ok()));
            }
        }
        let mut out = stream.try_clone()?;
        let Ok(data) = std::fs::read(dir.join(&path)) else {
            write!(out, "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        };
        let len = data.len() as u64;
        let (start, end) = match range {
            Some((a, b)) => (a, b.map_or(len - 1, |b| b.min(len - 1))),
            None => (0, len - 1),
        };
        if start >= len {
            write!(out, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */{len}\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        }
        let status = if range.is_some() {
            "206 Partial Content"
        } else {
            "200 OK"
        };
        write!(
            out,
            "HTTP/1.1 {status}\r\nContent-Length: {}\r\nContent-Range: bytes {start}-{end}/{len}\r\nAccept-Ranges: bytes\r\n\r\n",
            end - start + 1
        )?;
        let body = &data[start as usize..=end as usize];
        let drop_here = start >= faults.drop_from
            && faults.drop_after > 0
            && faults.drops.load(Ordering::SeqCst) > 0
            && (body.len() as u64) > faults.drop_after;
        let limit = if drop_here {
            faults.drop_after as usize
        } else {
            body.len()
        };
        for chunk in body[..limit].chunks(64 << 10) {
            out.write_all(chunk)?;
            body_bytes.fetch_add(chunk.len() as u64, Ordering::SeqCst);
            if !faults.trickle.is_zero() {
                std::thread::sleep(faults.trickle);
            }
        }
        if drop_here {
            faults.drops.fetch_sub(1, Ordering::SeqCst);
            let _ = out.shutdown(std::net::Shutdown::Both);
            return Ok(());
        }
    }
}
