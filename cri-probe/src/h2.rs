//! Just enough HTTP/2 (RFC 9113) for one gRPC unary call on a fresh connection: client
//! preface, SETTINGS, one HEADERS + DATA on stream 1, then frames until the stream ends.
//!
//! What a real server (containerd's grpc-go) sends and how it is handled: SETTINGS
//! (acknowledged), PING (answered), WINDOW_UPDATE and PRIORITY (nothing to do: the
//! request is 5 bytes), response HEADERS and trailing HEADERS, either possibly continued
//! in CONTINUATION frames, decoded with the connection's HPACK state (`hpack.rs`); a
//! trailers-only reply (one HEADERS with END_STREAM, as for an unknown method); DATA,
//! padded or not, split over any number of frames (each one's flow-control credit is
//! handed back); RST_STREAM and GOAWAY. The call succeeds only with `:status` 200 and
//! `grpc-status` 0.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use crate::hpack;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PUSH_PROMISE: u8 = 0x5;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const ACK: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY_FLAG: u8 = 0x20;
const SETTINGS_ENABLE_PUSH: u16 = 0x2;
/// Refuse absurd replies instead of growing without bound.
const MAX_REPLY: usize = 1 << 20;
/// Our SETTINGS keep the default SETTINGS_MAX_FRAME_SIZE, so a server may not exceed it.
const MAX_FRAME: usize = 16_384;

#[derive(Debug)]
pub enum CallError {
    Io(io::Error),
    Timeout,
    Protocol(String),
    Grpc { code: u32, message: String },
}

impl From<io::Error> for CallError {
    fn from(e: io::Error) -> Self {
        match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => CallError::Timeout,
            _ => CallError::Io(e),
        }
    }
}

fn protocol(message: impl Into<String>) -> CallError {
    CallError::Protocol(message.into())
}

/// A byte stream whose reads and writes can be bounded in time.
pub trait Transport: Read + Write {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()>;
}

impl Transport for UnixStream {
    fn set_timeout(&mut self, timeout: Duration) -> io::Result<()> {
        self.set_read_timeout(Some(timeout))?;
        self.set_write_timeout(Some(timeout))
    }
}

/// Every read and write gets only what is left until `deadline`.
struct Conn<'a, T: Transport> {
    io: &'a mut T,
    deadline: Instant,
}

impl<T: Transport> Conn<'_, T> {
    fn arm(&mut self) -> Result<(), CallError> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(CallError::Timeout);
        }
        self.io.set_timeout(left)?;
        Ok(())
    }

    fn read_exact(&mut self, mut buf: &mut [u8]) -> Result<(), CallError> {
        while !buf.is_empty() {
            self.arm()?;
            match self.io.read(buf) {
                Ok(0) => return Err(protocol("the server closed the connection mid-call")),
                Ok(n) => buf = &mut buf[n..],
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn write_all(&mut self, bytes: &[u8]) -> Result<(), CallError> {
        self.arm()?;
        self.io.write_all(bytes)?;
        Ok(())
    }
}

/// Sends `message` to `path` and returns the one reply message, or why there is none.
pub fn unary_call(
    io: &mut impl Transport,
    path: &str,
    message: &[u8],
    deadline: Instant,
) -> Result<Vec<u8>, CallError> {
    let mut conn = Conn { io, deadline };
    let mut out = PREFACE.to_vec();
    let mut settings = SETTINGS_ENABLE_PUSH.to_be_bytes().to_vec();
    settings.extend_from_slice(&0u32.to_be_bytes());
    frame(&mut out, SETTINGS, 0, 0, &settings);
    frame(
        &mut out,
        HEADERS,
        END_HEADERS,
        1,
        &hpack::request_headers(path),
    );
    let mut body = vec![0u8]; // not compressed
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    frame(&mut out, DATA, END_STREAM, 1, &body);
    conn.write_all(&out)?;

    let mut hpack = hpack::Decoder::default();
    let mut data = Vec::new();
    // A header block being received: (stream, fragments so far, END_STREAM on its HEADERS).
    let mut block: Option<(u32, Vec<u8>, bool)> = None;
    let mut response_headers_seen = false;
    let mut grpc_status: Option<(u32, String)> = None;
    loop {
        let mut head = [0u8; 9];
        conn.read_exact(&mut head)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if len > MAX_FRAME {
            return Err(protocol(format!("{len}-byte frame exceeds the frame size")));
        }
        let mut payload = vec![0u8; len];
        conn.read_exact(&mut payload)?;
        if block.is_some() && kind != CONTINUATION {
            return Err(protocol("header block interrupted by another frame"));
        }
        let mut stream_ended = false;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                if !len.is_multiple_of(6) || stream_id != 0 {
                    return Err(protocol("malformed SETTINGS"));
                }
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                conn.write_all(&ack)?;
            }
            PING if flags & ACK == 0 => {
                let mut pong = Vec::new();
                frame(&mut pong, PING, ACK, 0, &payload);
                conn.write_all(&pong)?;
            }
            DATA => {
                if stream_id != 1 {
                    return Err(protocol(format!("DATA on stream {stream_id}")));
                }
                if !response_headers_seen {
                    return Err(protocol("DATA before response headers"));
                }
                data.extend_from_slice(strip_padding(flags, &payload)?);
                if data.len() > MAX_REPLY {
                    return Err(protocol("reply too large"));
                }
                stream_ended = flags & END_STREAM != 0;
                if len > 0 {
                    // Hand the flow-control credit back, so no reply size can stall us.
                    let increment = (len as u32).to_be_bytes();
                    let mut update = Vec::new();
                    frame(&mut update, WINDOW_UPDATE, 0, 0, &increment);
                    if !stream_ended {
                        frame(&mut update, WINDOW_UPDATE, 0, 1, &increment);
                    }
                    conn.write_all(&update)?;
                }
            }
            HEADERS => {
                let mut fragment = strip_padding(flags, &payload)?;
                if flags & PRIORITY_FLAG != 0 {
                    fragment = fragment
                        .get(5..)
                        .ok_or_else(|| protocol("malformed HEADERS priority"))?;
                }
                block = Some((stream_id, fragment.to_vec(), flags & END_STREAM != 0));
            }
            CONTINUATION => match &mut block {
                Some((id, fragments, _)) if *id == stream_id => {
                    fragments.extend_from_slice(&payload);
                    if fragments.len() > MAX_REPLY {
                        return Err(protocol("header block too large"));
                    }
                }
                _ => return Err(protocol("CONTINUATION without HEADERS")),
            },
            RST_STREAM if stream_id == 1 => {
                let code = payload
                    .get(..4)
                    .map_or(0, |c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]));
                return Err(protocol(format!(
                    "the server reset the stream (error code {code})"
                )));
            }
            GOAWAY => {
                let word = |at: usize| {
                    payload
                        .get(at..at + 4)
                        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
                };
                let last_stream = word(0).unwrap_or(0) & 0x7fff_ffff;
                let code = word(4).unwrap_or(0);
                // A graceful GOAWAY that still covers stream 1 lets the call finish.
                if last_stream < 1 || code != 0 {
                    let debug = String::from_utf8_lossy(payload.get(8..).unwrap_or_default());
                    return Err(protocol(format!(
                        "the server closed the connection (GOAWAY error code {code}) {debug}"
                    )));
                }
            }
            PUSH_PROMISE => return Err(protocol("PUSH_PROMISE although push is disabled")),
            _ => {} // PRIORITY, WINDOW_UPDATE, acks, unknown extension frames
        }
        if matches!(kind, HEADERS | CONTINUATION) && flags & END_HEADERS != 0 {
            let (id, fragments, end) = block.take().expect("a header block is open");
            // Decoded whatever the stream: the HPACK state is the connection's.
            let headers = hpack.decode(&fragments).map_err(CallError::Protocol)?;
            if id != 1 {
                return Err(protocol(format!("HEADERS on stream {id}")));
            }
            if !response_headers_seen {
                response_headers_seen = true;
                let status = header(&headers, ":status");
                if status != Some("200") {
                    return Err(protocol(format!(
                        "HTTP status {} instead of 200",
                        status.unwrap_or("(none)")
                    )));
                }
            }
            if let Some(code) = header(&headers, "grpc-status") {
                let code = code
                    .parse()
                    .map_err(|_| protocol(format!("bad grpc-status {code:?}")))?;
                let message = percent_decode(header(&headers, "grpc-message").unwrap_or(""));
                grpc_status = Some((code, message));
            }
            stream_ended = end;
        }
        if stream_ended {
            break;
        }
    }
    match grpc_status {
        None => Err(protocol("the reply ended without a grpc-status")),
        Some((0, _)) => grpc_message(&data),
        Some((code, message)) => Err(CallError::Grpc { code, message }),
    }
}

fn header<'a>(headers: &'a [hpack::Header], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// grpc-message is percent-encoded (gRPC over HTTP/2 spec).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The one message of a unary reply: 1 byte compressed flag, 4 bytes length, bytes.
fn grpc_message(data: &[u8]) -> Result<Vec<u8>, CallError> {
    if data.len() < 5 {
        return Err(protocol("grpc-status 0 but no reply message"));
    }
    if data[0] != 0 {
        return Err(protocol("compressed reply (none was offered)"));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    if data.len() != 5 + len {
        return Err(protocol(format!(
            "reply message of {len} bytes in {} bytes of DATA",
            data.len() - 5
        )));
    }
    Ok(data[5..].to_vec())
}

fn strip_padding(flags: u8, payload: &[u8]) -> Result<&[u8], CallError> {
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = *payload.first().ok_or_else(|| protocol("bad padding"))? as usize;
    if pad + 1 > payload.len() {
        return Err(protocol("bad padding"));
    }
    Ok(&payload[1..payload.len() - pad])
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hpack::tests::literal;

    /// A scripted server: plays back `input` and records what the client sent.
    struct Script {
        input: io::Cursor<Vec<u8>>,
        sent: Vec<u8>,
    }
    impl Read for Script {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            self.input.read(buf)
        }
    }
    impl Write for Script {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.sent.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    impl Transport for Script {
        fn set_timeout(&mut self, _: Duration) -> io::Result<()> {
            Ok(())
        }
    }

    fn run(reply: Vec<u8>) -> (Result<Vec<u8>, CallError>, Vec<u8>) {
        let mut script = Script {
            input: io::Cursor::new(reply),
            sent: Vec::new(),
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        let result = unary_call(&mut script, "/x.Y/Z", &[], deadline);
        (result, script.sent)
    }

    /// Response headers as grpc-go sends them: `:status 200` indexed, content-type added
    /// to the dynamic table.
    fn response_headers() -> Vec<u8> {
        let mut block = vec![0x88];
        literal(&mut block, 0x40, "content-type", "application/grpc");
        block
    }

    fn trailers(status: &str, message: &str) -> Vec<u8> {
        let mut block = Vec::new();
        literal(&mut block, 0x40, "grpc-status", status);
        if !message.is_empty() {
            literal(&mut block, 0x40, "grpc-message", message);
        }
        block
    }

    #[test]
    fn a_unary_call_returns_the_reply_message() {
        let mut reply = Vec::new();
        frame(&mut reply, SETTINGS, 0, 0, &[0, 4, 0, 0x40, 0, 0]);
        frame(&mut reply, HEADERS, END_HEADERS, 1, &response_headers());
        frame(&mut reply, DATA, 0, 1, &[0, 0, 0, 0, 2, 0xaa, 0xbb]);
        frame(
            &mut reply,
            HEADERS,
            END_HEADERS | END_STREAM,
            1,
            &trailers("0", ""),
        );
        let (result, sent) = run(reply);
        assert_eq!(result.unwrap(), [0xaa, 0xbb]);
        assert!(sent.starts_with(PREFACE));
        assert!(sent.windows(6).any(|w| w == b"/x.Y/Z"));
        // The server's SETTINGS was acknowledged.
        let mut ack = Vec::new();
        frame(&mut ack, SETTINGS, ACK, 0, &[]);
        assert!(sent.windows(9).any(|w| w == ack));
    }

    /// Everything at once: WINDOW_UPDATE, PING, a header block in three pieces, a padded
    /// and prioritised HEADERS, the message split over three DATA frames (one padded),
    /// trailers reusing the dynamic table, and a graceful GOAWAY.
    #[test]
    fn what_real_servers_send_is_handled() {
        let mut reply = Vec::new();
        frame(&mut reply, SETTINGS, 0, 0, &[]);
        frame(&mut reply, WINDOW_UPDATE, 0, 0, &[0, 0, 0x10, 0]);
        frame(&mut reply, PING, 0, 0, b"12345678");
        let headers = response_headers();
        let (a, rest) = headers.split_at(3);
        let (b, c) = rest.split_at(4);
        let mut first = vec![2]; // pad length
        first.extend_from_slice(&[0, 0, 0, 3, 16]); // priority: depends on 3, weight 16
        first.extend_from_slice(a);
        first.extend_from_slice(&[0, 0]);
        frame(&mut reply, HEADERS, PADDED | PRIORITY_FLAG, 1, &first);
        frame(&mut reply, CONTINUATION, 0, 1, b);
        frame(&mut reply, CONTINUATION, END_HEADERS, 1, c);
        frame(&mut reply, DATA, 0, 1, &[0, 0, 0]);
        frame(&mut reply, DATA, PADDED, 1, &[3, 0, 3, 0xaa, 0, 0, 0]);
        frame(&mut reply, GOAWAY, 0, 0, &[0, 0, 0, 1, 0, 0, 0, 0]);
        frame(&mut reply, DATA, 0, 1, &[0xbb, 0xcc]);
        let mut tail = trailers("0", "");
        tail.push(0xbf); // index 63: content-type, added by the response headers
        frame(&mut reply, HEADERS, END_STREAM, 1, &tail[..2]);
        frame(&mut reply, CONTINUATION, END_HEADERS, 1, &tail[2..]);
        let (result, sent) = run(reply);
        assert_eq!(result.unwrap(), [0xaa, 0xbb, 0xcc]);
        let mut pong = Vec::new();
        frame(&mut pong, PING, ACK, 0, b"12345678");
        assert!(sent.windows(pong.len()).any(|w| w == pong));
        let mut credit = Vec::new();
        frame(&mut credit, WINDOW_UPDATE, 0, 0, &[0, 0, 0, 7]);
        assert!(sent.windows(credit.len()).any(|w| w == credit));
    }

    #[test]
    fn a_nonzero_grpc_status_in_trailers_is_an_error() {
        let mut reply = Vec::new();
        frame(&mut reply, HEADERS, END_HEADERS, 1, &response_headers());
        frame(&mut reply, DATA, 0, 1, &[0, 0, 0, 0, 0]);
        let t = trailers("14", "runtime%20gone %E2%9C%93");
        frame(&mut reply, HEADERS, END_HEADERS | END_STREAM, 1, &t);
        match run(reply).0 {
            Err(CallError::Grpc { code, message }) => {
                assert_eq!(code, 14);
                assert_eq!(message, "runtime gone ✓");
            }
            other => panic!("{other:?}"),
        }
    }

    /// An unknown method: one HEADERS with END_STREAM, status and grpc-status together.
    #[test]
    fn a_trailers_only_reply_is_an_error() {
        let mut block = response_headers();
        block.extend(trailers("12", "unknown service"));
        let mut reply = Vec::new();
        frame(&mut reply, HEADERS, END_HEADERS | END_STREAM, 1, &block);
        assert!(matches!(
            run(reply).0,
            Err(CallError::Grpc { code: 12, .. })
        ));
    }

    #[test]
    fn a_reply_without_grpc_status_is_an_error() {
        let mut reply = Vec::new();
        frame(&mut reply, HEADERS, END_HEADERS, 1, &response_headers());
        frame(&mut reply, DATA, END_STREAM, 1, &[0, 0, 0, 0, 0]);
        assert!(matches!(run(reply).0, Err(CallError::Protocol(_))));
    }

    #[test]
    fn resets_goaways_and_early_close_are_errors() {
        let mut reset = Vec::new();
        frame(&mut reset, RST_STREAM, 0, 1, &[0, 0, 0, 2]);
        let mut goaway = Vec::new();
        frame(&mut goaway, GOAWAY, 0, 0, &[0, 0, 0, 0, 0, 0, 0, 2]);
        let mut cut = Vec::new();
        frame(&mut cut, HEADERS, END_HEADERS, 1, &response_headers());
        for reply in [reset, goaway, cut] {
            assert!(matches!(run(reply).0, Err(CallError::Protocol(_))));
        }
    }

    #[test]
    fn a_passed_deadline_is_a_timeout() {
        let mut script = Script {
            input: io::Cursor::new(Vec::new()),
            sent: Vec::new(),
        };
        let result = unary_call(&mut script, "/x.Y/Z", &[], Instant::now());
        assert!(matches!(result, Err(CallError::Timeout)));
    }
}
