//! HPACK (RFC 7541), both directions, as little as a gRPC client needs.
//!
//! Encoding (our request headers) uses static-table indexes and literals without
//! indexing, so the server's decoder never has to remember anything of ours. Decoding
//! (the server's response headers and trailers) is complete: static and dynamic table,
//! table size updates, Huffman-coded strings. gRPC servers use all of it (grpc-go
//! indexes `content-type` and `grpc-status` and Huffman-codes most strings), and the
//! dynamic table lives as long as the connection, across every header block.

use std::collections::VecDeque;

use crate::huffman;

/// The size our SETTINGS leave at its default: the server's encoder may not exceed it.
const MAX_TABLE_SIZE: usize = 4096;
/// No header field we care about is anywhere near this long.
const MAX_STRING: usize = 64 << 10;

/// RFC 7541 Appendix A, index 1 to 61.
const STATIC_TABLE: [(&str, &str); 61] = [
    (":authority", ""),
    (":method", "GET"),
    (":method", "POST"),
    (":path", "/"),
    (":path", "/index.html"),
    (":scheme", "http"),
    (":scheme", "https"),
    (":status", "200"),
    (":status", "204"),
    (":status", "206"),
    (":status", "304"),
    (":status", "400"),
    (":status", "404"),
    (":status", "500"),
    ("accept-charset", ""),
    ("accept-encoding", "gzip, deflate"),
    ("accept-language", ""),
    ("accept-ranges", ""),
    ("accept", ""),
    ("access-control-allow-origin", ""),
    ("age", ""),
    ("allow", ""),
    ("authorization", ""),
    ("cache-control", ""),
    ("content-disposition", ""),
    ("content-encoding", ""),
    ("content-language", ""),
    ("content-length", ""),
    ("content-location", ""),
    ("content-range", ""),
    ("content-type", ""),
    ("cookie", ""),
    ("date", ""),
    ("etag", ""),
    ("expect", ""),
    ("expires", ""),
    ("from", ""),
    ("host", ""),
    ("if-match", ""),
    ("if-modified-since", ""),
    ("if-none-match", ""),
    ("if-range", ""),
    ("if-unmodified-since", ""),
    ("last-modified", ""),
    ("link", ""),
    ("location", ""),
    ("max-forwards", ""),
    ("proxy-authenticate", ""),
    ("proxy-authorization", ""),
    ("range", ""),
    ("referer", ""),
    ("refresh", ""),
    ("retry-after", ""),
    ("server", ""),
    ("set-cookie", ""),
    ("strict-transport-security", ""),
    ("transfer-encoding", ""),
    ("user-agent", ""),
    ("vary", ""),
    ("via", ""),
    ("www-authenticate", ""),
];

pub type Header = (String, String);

/// The request header block of a gRPC call to `path`.
pub fn request_headers(path: &str) -> Vec<u8> {
    let mut block = vec![0x83, 0x86]; // :method POST (3), :scheme http (6)
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

pub(crate) fn integer(block: &mut Vec<u8>, first_bits: u8, prefix: u32, mut value: usize) {
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

/// One connection's decoding state.
pub struct Decoder {
    /// Newest first: dynamic index 62 is `table[0]`.
    table: VecDeque<Header>,
    size: usize,
    max_size: usize,
}

impl Default for Decoder {
    fn default() -> Self {
        Decoder {
            table: VecDeque::new(),
            size: 0,
            max_size: MAX_TABLE_SIZE,
        }
    }
}

impl Decoder {
    /// Decodes one complete header block (HEADERS plus any CONTINUATION fragments).
    pub fn decode(&mut self, mut block: &[u8]) -> Result<Vec<Header>, String> {
        let mut headers = Vec::new();
        while let Some(&first) = block.first() {
            if first & 0x80 != 0 {
                // Indexed header field.
                let index = decode_integer(&mut block, 7)?;
                headers.push(self.get(index)?);
            } else if first & 0x40 != 0 {
                // Literal with incremental indexing.
                let header = self.literal(&mut block, 6)?;
                self.insert(header.clone());
                headers.push(header);
            } else if first & 0x20 != 0 {
                // Dynamic table size update.
                let size = decode_integer(&mut block, 5)?;
                if size > MAX_TABLE_SIZE {
                    return Err(format!("HPACK table size {size} above {MAX_TABLE_SIZE}"));
                }
                self.max_size = size;
                self.evict();
            } else {
                // Literal without indexing (0000) or never indexed (0001).
                headers.push(self.literal(&mut block, 4)?);
            }
        }
        Ok(headers)
    }

    fn literal(&self, block: &mut &[u8], prefix: u32) -> Result<Header, String> {
        let index = decode_integer(block, prefix)?;
        let name = if index == 0 {
            decode_string(block)?
        } else {
            self.get(index)?.0
        };
        let value = decode_string(block)?;
        Ok((name, value))
    }

    fn get(&self, index: usize) -> Result<Header, String> {
        let found = match index {
            0 => None,
            1..=61 => {
                let (name, value) = STATIC_TABLE[index - 1];
                Some((name.to_string(), value.to_string()))
            }
            _ => self.table.get(index - 62).cloned(),
        };
        found.ok_or_else(|| format!("HPACK index {index} out of range"))
    }

    fn insert(&mut self, header: Header) {
        let size = entry_size(&header);
        self.table.push_front(header);
        self.size += size;
        // An entry larger than the whole table empties it and is not kept (RFC 7541 4.4).
        self.evict();
    }

    fn evict(&mut self) {
        while self.size > self.max_size {
            match self.table.pop_back() {
                Some(old) => self.size -= entry_size(&old),
                None => break,
            }
        }
    }
}

fn entry_size((name, value): &Header) -> usize {
    name.len() + value.len() + 32
}

fn decode_integer(block: &mut &[u8], prefix: u32) -> Result<usize, String> {
    let (&first, rest) = block.split_first().ok_or("truncated HPACK integer")?;
    *block = rest;
    let max = (1usize << prefix) - 1;
    let mut value = usize::from(first) & max;
    if value < max {
        return Ok(value);
    }
    for shift in (0..28).step_by(7) {
        let (&byte, rest) = block.split_first().ok_or("truncated HPACK integer")?;
        *block = rest;
        value += usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Ok(value);
        }
    }
    Err("HPACK integer too large".into())
}

fn decode_string(block: &mut &[u8]) -> Result<String, String> {
    let huffman = block.first().is_some_and(|b| b & 0x80 != 0);
    let len = decode_integer(block, 7)?;
    if len > MAX_STRING || len > block.len() {
        return Err("truncated HPACK string".into());
    }
    let (raw, rest) = block.split_at(len);
    *block = rest;
    let bytes = if huffman {
        huffman_decode(raw)?
    } else {
        raw.to_vec()
    };
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// Bit by bit through the canonical code; tiny inputs (a few header values) make the
/// linear search per completed code length cheap enough.
fn huffman_decode(raw: &[u8]) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(raw.len() * 8 / 5);
    let (mut code, mut len) = (0u32, 0u8);
    for byte in raw {
        for bit in (0..8).rev() {
            code = (code << 1) | u32::from((byte >> bit) & 1);
            len += 1;
            if len > 30 {
                return Err("bad Huffman code".into());
            }
            if let Some(symbol) =
                (0..256).find(|&s| huffman::LENGTHS[s] == len && huffman::CODES[s] == code)
            {
                out.push(symbol as u8);
                (code, len) = (0, 0);
            }
        }
    }
    // Padding: fewer than 8 bits, all ones (a prefix of EOS).
    if len > 7 || code != (1u32 << len) - 1 {
        return Err("bad Huffman padding".into());
    }
    Ok(out)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Huffman-encodes `s` (for building server-side header blocks in tests).
    pub fn huffman_encode(s: &str) -> Vec<u8> {
        let (mut out, mut acc, mut bits) = (Vec::new(), 0u64, 0u32);
        for &b in s.as_bytes() {
            acc = (acc << huffman::LENGTHS[b as usize]) | u64::from(huffman::CODES[b as usize]);
            bits += u32::from(huffman::LENGTHS[b as usize]);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            out.push(((acc << (8 - bits)) | ((1 << (8 - bits)) - 1)) as u8);
        }
        out
    }

    /// A literal header field with a new name; `first` picks the kind (0x40 incremental
    /// indexing, 0x00 without indexing, 0x10 never indexed); values Huffman-coded.
    pub fn literal(block: &mut Vec<u8>, first: u8, name: &str, value: &str) {
        block.push(first);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        let coded = huffman_encode(value);
        integer(block, 0x80, 7, coded.len());
        block.extend_from_slice(&coded);
    }

    #[test]
    fn integers_follow_rfc7541_examples() {
        let mut b = Vec::new();
        integer(&mut b, 0, 5, 10);
        assert_eq!(b, [10]);
        let mut b = Vec::new();
        integer(&mut b, 0, 5, 1337);
        assert_eq!(b, [31, 154, 10]);
        assert_eq!(decode_integer(&mut &b[..], 5).unwrap(), 1337);
        let mut b = Vec::new();
        integer(&mut b, 0, 4, 31);
        assert_eq!(b, [0x0f, 0x10]);
    }

    /// RFC 7541 C.4: three requests with Huffman coding sharing one dynamic table.
    #[test]
    fn rfc7541_c4_requests_with_huffman_and_dynamic_table() {
        let hex = |s: &str| -> Vec<u8> {
            (0..s.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
                .collect()
        };
        let mut d = Decoder::default();
        let first = d
            .decode(&hex("828684418cf1e3c2e5f23a6ba0ab90f4ff"))
            .unwrap();
        assert_eq!(first[3], (":authority".into(), "www.example.com".into()));
        let second = d.decode(&hex("828684be5886a8eb10649cbf")).unwrap();
        assert_eq!(second[3], (":authority".into(), "www.example.com".into()));
        assert_eq!(second[4], ("cache-control".into(), "no-cache".into()));
        let third = d
            .decode(&hex("828785bf408825a849e95ba97d7f8925a849e95bb8e8b4bf"))
            .unwrap();
        assert_eq!(third[1], (":scheme".into(), "https".into()));
        assert_eq!(third[4], ("custom-key".into(), "custom-value".into()));
        assert_eq!(d.size, 164);
    }

    #[test]
    fn huffman_round_trips_and_rejects_bad_padding() {
        for s in [
            "",
            "0",
            "grpc-status",
            "Network plugin returns error: cni %",
        ] {
            assert_eq!(huffman_decode(&huffman_encode(s)).unwrap(), s.as_bytes());
        }
        // '0' is 00000 (5 bits): padding with zeros instead of ones is invalid.
        assert!(huffman_decode(&[0x00]).is_err());
    }

    #[test]
    fn table_size_update_evicts() {
        let mut d = Decoder::default();
        let mut block = Vec::new();
        literal(&mut block, 0x40, "grpc-status", "0");
        d.decode(&block).unwrap();
        assert_eq!(d.decode(&[0xbe]).unwrap()[0].1, "0"); // index 62
        d.decode(&[0x20]).unwrap(); // size 0
        assert!(d.decode(&[0xbe]).is_err());
    }
}
