//! Just enough HTTP/2 (RFC 9113) for one gRPC unary call on a fresh connection: client
//! preface, SETTINGS, one HEADERS + DATA on stream 1, then frames until the stream ends.
//! Request headers use HPACK literals without indexing, so no HPACK state is needed; the
//! response's headers are not decoded (the message or its absence tells enough).

use std::io::{self, Read, Write};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const PING: u8 = 0x6;
const GOAWAY: u8 = 0x7;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const ACK: u8 = 0x1;
/// Refuse absurd replies instead of growing without bound.
const MAX_REPLY: usize = 1 << 20;

pub fn unary_call(
    stream: &mut (impl Read + Write),
    path: &str,
    message: &[u8],
) -> io::Result<Vec<u8>> {
    let mut out = PREFACE.to_vec();
    frame(&mut out, SETTINGS, 0, 0, &[]);
    frame(&mut out, HEADERS, END_HEADERS, 1, &request_headers(path));
    let mut body = vec![0u8]; // not compressed
    body.extend_from_slice(&(message.len() as u32).to_be_bytes());
    body.extend_from_slice(message);
    frame(&mut out, DATA, END_STREAM, 1, &body);
    stream.write_all(&out)?;

    let mut data = Vec::new();
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head)?;
        let len = u32::from_be_bytes([0, head[0], head[1], head[2]]) as usize;
        let (kind, flags) = (head[3], head[4]);
        let stream_id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]) & 0x7fff_ffff;
        if len > MAX_REPLY || data.len() > MAX_REPLY {
            return Err(io::Error::other("reply too large"));
        }
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload)?;
        match kind {
            SETTINGS if flags & ACK == 0 => {
                let mut ack = Vec::new();
                frame(&mut ack, SETTINGS, ACK, 0, &[]);
                stream.write_all(&ack)?;
            }
            PING if flags & ACK == 0 => {
                let mut pong = Vec::new();
                frame(&mut pong, PING, ACK, 0, &payload);
                stream.write_all(&pong)?;
            }
            DATA if stream_id == 1 => {
                data.extend_from_slice(strip_padding(flags, &payload)?);
                if flags & END_STREAM != 0 {
                    break;
                }
            }
            HEADERS if stream_id == 1 && flags & END_STREAM != 0 => break,
            RST_STREAM => return Err(io::Error::other("the server reset the stream")),
            GOAWAY => return Err(io::Error::other("the server closed the connection")),
            _ => {}
        }
    }
    grpc_message(&data)
}

/// The one message of a unary reply: 1 byte compressed flag, 4 bytes length, bytes.
fn grpc_message(data: &[u8]) -> io::Result<Vec<u8>> {
    if data.len() < 5 {
        return Err(io::Error::other(
            "no reply message (method unknown or failed)",
        ));
    }
    if data[0] != 0 {
        return Err(io::Error::other("compressed reply"));
    }
    let len = u32::from_be_bytes([data[1], data[2], data[3], data[4]]) as usize;
    data.get(5..5 + len)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| io::Error::other("truncated reply message"))
}

fn strip_padding(flags: u8, payload: &[u8]) -> io::Result<&[u8]> {
    const PADDED: u8 = 0x8;
    if flags & PADDED == 0 {
        return Ok(payload);
    }
    let pad = *payload
        .first()
        .ok_or_else(|| io::Error::other("bad padding"))? as usize;
    payload
        .get(1..payload.len().saturating_sub(pad))
        .ok_or_else(|| io::Error::other("bad padding"))
}

fn frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
    out.push(kind);
    out.push(flags);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
}

/// HPACK (RFC 7541): static-table indexes for :method POST (3) and :scheme http (6);
/// the rest as literals without indexing, names by static index where there is one.
fn request_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86];
    literal_indexed_name(&mut block, 4, path); // :path
    literal_indexed_name(&mut block, 1, "localhost"); // :authority
    literal_indexed_name(&mut block, 31, "application/grpc"); // content-type
    block.push(0x00); // literal without indexing, new name
    string(&mut block, "te");
    string(&mut block, "trailers");
    block
}

fn literal_indexed_name(block: &mut Vec<u8>, index: usize, value: &str) {
    integer(block, 0x00, 4, index);
    string(block, value);
}

fn string(block: &mut Vec<u8>, value: &str) {
    integer(block, 0x00, 7, value.len()); // no Huffman coding
    block.extend_from_slice(value.as_bytes());
}

fn integer(block: &mut Vec<u8>, first_bits: u8, prefix: u32, mut value: usize) {
    let max = (1usize << prefix) - 1;
    if value < max {
        block.push(first_bits | value as u8);
        return;
    }
    block.push(first_bits | max as u8);
    value -= max;
    while value >= 128 {
        block.push((value % 128 + 128) as u8);
        value /= 128;
    }
    block.push(value as u8);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hpack_integers_follow_rfc7541_examples() {
        let mut b = Vec::new();
        integer(&mut b, 0, 5, 10);
        assert_eq!(b, [10]);
        let mut b = Vec::new();
        integer(&mut b, 0, 5, 1337);
        assert_eq!(b, [31, 154, 10]);
        let mut b = Vec::new();
        integer(&mut b, 0, 4, 31);
        assert_eq!(b, [0x0f, 0x10]);
    }

    /// A scripted server: checks what the client sent, answers SETTINGS, a response
    /// HEADERS, one DATA frame and trailers.
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

    #[test]
    fn a_unary_call_returns_the_reply_message() {
        let mut reply = Vec::new();
        frame(&mut reply, SETTINGS, 0, 0, &[]);
        frame(&mut reply, HEADERS, END_HEADERS, 1, &[0x88]);
        frame(&mut reply, DATA, 0, 1, &[0, 0, 0, 0, 2, 0xaa, 0xbb]);
        frame(&mut reply, HEADERS, END_HEADERS | END_STREAM, 1, &[0x00]);
        let mut script = Script {
            input: io::Cursor::new(reply),
            sent: Vec::new(),
        };
        let message = unary_call(&mut script, "/x.Y/Z", &[]).unwrap();
        assert_eq!(message, [0xaa, 0xbb]);
        assert!(script.sent.starts_with(PREFACE));
        assert!(script.sent.windows(6).any(|w| w == b"/x.Y/Z"));
        // The server's SETTINGS was acknowledged.
        assert!(script.sent.ends_with(&[0, 0, 0, SETTINGS, ACK, 0, 0, 0, 0]));
    }

    #[test]
    fn a_reset_stream_is_an_error() {
        let mut reply = Vec::new();
        frame(&mut reply, RST_STREAM, 0, 1, &[0, 0, 0, 2]);
        let mut script = Script {
            input: io::Cursor::new(reply),
            sent: Vec::new(),
        };
        assert!(unary_call(&mut script, "/x.Y/Z", &[]).is_err());
    }
}
