//! An SNTP client (RFC 4330): one request to an NTP server, the clock's offset from its
//! answer. What `[clock] ntp_servers` uses; the image's busybox has no `ntpd` applet, and
//! one exchange per hour needs no daemon.
//!
//! A request carries only our transmit time; an answer counts only when it echoes that
//! time (so a stray or forged packet that did not see the request is ignored), is a
//! server's (mode 4) from a synchronised source (stratum 1-15, leap not "unknown"), and
//! came back within the timeout. The offset is the usual
//! `((T2 - T1) + (T3 - T4)) / 2`: T1 sent, T2 received by the server, T3 sent by it, T4
//! received here. NTP itself is not authenticated (no NTS here): see SECURITY.md for what
//! an on-path attacker can do with that and what the time floor bounds.

use std::net::{SocketAddr, ToSocketAddrs, UdpSocket};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Seconds from the NTP epoch (1900) to the Unix epoch (1970).
const NTP_TO_UNIX: u64 = 2_208_988_800;
const PACKET: usize = 48;
pub const DEFAULT_PORT: u16 = 123;

#[derive(Debug, thiserror::Error)]
pub enum SntpError {
    #[error("{server}: cannot resolve: {reason}")]
    Resolve { server: String, reason: String },
    #[error("{server}: {source}")]
    Io {
        server: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{server}: {reason}")]
    BadAnswer { server: String, reason: String },
}

/// A server's answer, read against our clock.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// Seconds to add to our clock to match the server's.
    pub offset: f64,
    /// The exchange's round trip minus the server's own processing time, in seconds.
    pub delay: f64,
}

/// Asks `server` (`host` or `host:port`) once, waiting at most `timeout` for the answer.
pub fn query(server: &str, timeout: Duration) -> Result<Sample, SntpError> {
    let addr = resolve(server)?;
    let io = |source| SntpError::Io {
        server: server.to_string(),
        source,
    };
    let local: SocketAddr = if addr.is_ipv4() {
        "0.0.0.0:0".parse().expect("a valid address")
    } else {
        "[::]:0".parse().expect("a valid address")
    };
    let socket = UdpSocket::bind(local).map_err(io)?;
    // connect(): the kernel drops datagrams from any other address, and an ICMP
    // "port unreachable" ends the wait at once instead of at the timeout.
    socket.connect(addr).map_err(io)?;
    socket.set_read_timeout(Some(timeout)).map_err(io)?;
    let t1 = now();
    let request = request(t1);
    socket.send(&request).map_err(io)?;
    let mut answer = [0u8; 512];
    let n = socket.recv(&mut answer).map_err(io)?;
    let t4 = now();
    read_answer(&answer[..n], t1, t4).map_err(|reason| SntpError::BadAnswer {
        server: server.to_string(),
        reason,
    })
}

fn resolve(server: &str) -> Result<SocketAddr, SntpError> {
    let resolved = match server.to_socket_addrs() {
        Ok(addrs) => Ok(addrs),
        // No port given.
        Err(_) => (server.trim_matches(['[', ']']), DEFAULT_PORT).to_socket_addrs(),
    };
    resolved
        .map_err(|e| e.to_string())
        .and_then(|mut addrs| addrs.next().ok_or_else(|| "no address".to_string()))
        .map_err(|reason| SntpError::Resolve {
            server: server.to_string(),
            reason,
        })
}

/// Our clock as an NTP timestamp (seconds since 1900 in the high 32 bits, fraction in
/// the low 32). A clock before 1970 reads as 1970.
fn now() -> u64 {
    let since_unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    to_ntp(since_unix)
}

fn to_ntp(since_unix: Duration) -> u64 {
    let secs = (since_unix.as_secs() + NTP_TO_UNIX) & 0xffff_ffff;
    let frac = (u64::from(since_unix.subsec_nanos()) << 32) / 1_000_000_000;
    (secs << 32) | frac
}

/// Seconds since the Unix epoch of an NTP timestamp. Era 0 ends in 2036; a seconds field
/// below 2^31 is read as era 1 (2036-2104), since no answer can come from before 1968.
fn ntp_to_unix_secs(ts: u64) -> f64 {
    let mut secs = ts >> 32;
    if secs < 0x8000_0000 {
        secs += 1 << 32;
    }
    let frac = (ts & 0xffff_ffff) as f64 / 4_294_967_296.0;
    (secs as f64 - NTP_TO_UNIX as f64) + frac
}

/// A client request (version 4, mode 3) with `t1` as its transmit time.
fn request(t1: u64) -> [u8; PACKET] {
    let mut packet = [0u8; PACKET];
    packet[0] = (4 << 3) | 3;
    packet[40..48].copy_from_slice(&t1.to_be_bytes());
    packet
}

fn timestamp(packet: &[u8], at: usize) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&packet[at..at + 8]);
    u64::from_be_bytes(bytes)
}

/// The sample in `answer` to the request sent at `t1`, received at `t4`.
fn read_answer(answer: &[u8], t1: u64, t4: u64) -> Result<Sample, String> {
    if answer.len() < PACKET {
        return Err(format!("answer of {} bytes, want {PACKET}", answer.len()));
    }
    let leap = answer[0] >> 6;
    let version = (answer[0] >> 3) & 7;
    let mode = answer[0] & 7;
    let stratum = answer[1];
    if mode != 4 {
        return Err(format!("answer in mode {mode}, not a server's (4)"));
    }
    if !(1..=4).contains(&version) {
        return Err(format!("answer of NTP version {version}"));
    }
    if stratum == 0 || stratum > 15 {
        let code = String::from_utf8_lossy(&answer[12..16]).into_owned();
        return Err(format!(
            "server not synchronised (stratum {stratum}, code {code:?})"
        ));
    }
    if leap == 3 {
        return Err("server not synchronised (leap indicator 3)".into());
    }
    if timestamp(answer, 24) != t1 {
        return Err("answer does not echo our request's time".into());
    }
    let (t2, t3) = (timestamp(answer, 32), timestamp(answer, 40));
    if t3 == 0 {
        return Err("answer without a transmit time".into());
    }
    let [t1, t2, t3, t4] = [t1, t2, t3, t4].map(ntp_to_unix_secs);
    Ok(Sample {
        offset: ((t2 - t1) + (t3 - t4)) / 2.0,
        delay: (t4 - t1) - (t3 - t2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server's answer to `request`, as if its clock ran `ahead` seconds ahead of ours
    /// and the network took no time.
    fn answer(request: &[u8; PACKET], ahead: f64) -> [u8; PACKET] {
        let t1 = timestamp(request, 40);
        let shift = (ahead * 4_294_967_296.0) as i64;
        let server_time = (t1 as i64 + shift) as u64;
        let mut a = [0u8; PACKET];
        a[0] = (4 << 3) | 4;
        a[1] = 2;
        a[24..32].copy_from_slice(&t1.to_be_bytes());
        a[32..40].copy_from_slice(&server_time.to_be_bytes());
        a[40..48].copy_from_slice(&server_time.to_be_bytes());
        a
    }

    #[test]
    fn the_offset_of_a_server_ahead_is_positive_and_exact() {
        let t1 = to_ntp(Duration::from_secs(1_800_000_000));
        let req = request(t1);
        let sample = read_answer(&answer(&req, 86_400.5), t1, t1).unwrap();
        assert!((sample.offset - 86_400.5).abs() < 1e-6, "{sample:?}");
        assert!(sample.delay.abs() < 1e-6);
    }

    #[test]
    fn a_device_in_1970_reads_a_server_in_2026() {
        let t1 = to_ntp(Duration::from_secs(10));
        let req = request(t1);
        let sample = read_answer(&answer(&req, 1_796_177_643.0 - 10.0), t1, t1).unwrap();
        assert!((10.0 + sample.offset - 1_796_177_643.0).abs() < 1e-3);
    }

    #[test]
    fn timestamps_after_2036_are_read_in_the_next_era() {
        // 2040-01-01T00:00:00Z, whose NTP seconds field wrapped in 2036.
        let y2040 = 2_208_988_800u64;
        let ts = to_ntp(Duration::from_secs(y2040));
        assert!(ts >> 32 < 0x8000_0000);
        assert!((ntp_to_unix_secs(ts) - y2040 as f64).abs() < 1.0);
    }

    #[test]
    fn answers_that_are_not_from_a_synchronised_server_to_our_request_are_refused() {
        let t1 = to_ntp(Duration::from_secs(1_800_000_000));
        let req = request(t1);
        let good = answer(&req, 5.0);
        type Edit = fn(&mut [u8; PACKET]);
        let cases: [(Edit, &str); 5] = [
            (|a| a[0] = (4 << 3) | 3, "mode 3"),
            (|a| a[1] = 0, "stratum 0"),
            (|a| a[0] |= 3 << 6, "leap indicator 3"),
            (|a| a[24] ^= 1, "does not echo"),
            (|a| a[40..48].fill(0), "without a transmit time"),
        ];
        for (edit, named) in cases {
            let mut a = good;
            edit(&mut a);
            let err = read_answer(&a, t1, t1).unwrap_err();
            assert!(err.contains(named), "{err} should say {named}");
        }
        assert!(read_answer(&good[..40], t1, t1)
            .unwrap_err()
            .contains("40 bytes"));
    }

    #[test]
    fn a_real_exchange_over_udp_on_loopback() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = server.local_addr().unwrap();
        let serve = std::thread::spawn(move || {
            let mut buf = [0u8; PACKET];
            let (_, from) = server.recv_from(&mut buf).unwrap();
            server.send_to(&answer(&buf, -3600.0), from).unwrap();
        });
        let sample = query(&addr.to_string(), Duration::from_secs(5)).unwrap();
        serve.join().unwrap();
        assert!((sample.offset + 3600.0).abs() < 0.5, "{sample:?}");
    }

    #[test]
    fn a_closed_port_fails_fast_and_names_the_server() {
        let closed = UdpSocket::bind("127.0.0.1:0").unwrap();
        let addr = closed.local_addr().unwrap();
        drop(closed);
        let started = std::time::Instant::now();
        let err = query(&addr.to_string(), Duration::from_secs(10)).unwrap_err();
        assert!(err.to_string().contains(&addr.to_string()), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "waited for the timeout"
        );
    }
}
