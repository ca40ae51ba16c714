//! The fixed 64-byte header at the start of every bundle.
//!
//! It only locates the sections; nothing in it is trusted beyond that. Every field is
//! checked against hard limits before any section is read, so a hostile header cannot make
//! a reader allocate or seek far.

use crate::error::{Error, Result};
use crate::manifest::PAYLOAD_ALIGN;

pub const MAGIC: [u8; 8] = *b"CAIRNBDL";
pub const FORMAT_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 64;

pub const MAX_MANIFEST_LEN: u64 = 1 << 20;
pub const MAX_SIGNATURES_LEN: u64 = 64 << 10;
pub const MAX_ROOTS_LEN: u64 = 1 << 20;

/// The byte ranges of a bundle's sections, decoded from its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub manifest_len: u32,
    pub signatures_len: u32,
    pub roots_len: u32,
    pub payload_area_offset: u64,
    pub payload_area_len: u64,
}

impl Header {
    /// Lays out sections of the given lengths; the payload area starts at the next
    /// 4 KiB boundary after them.
    pub fn layout(
        manifest_len: usize,
        signatures_len: usize,
        roots_len: usize,
        payload_area_len: u64,
    ) -> Result<Header> {
        let header = Header {
            manifest_len: to_u32("manifest", manifest_len)?,
            signatures_len: to_u32("signatures", signatures_len)?,
            roots_len: to_u32("roots", roots_len)?,
            payload_area_offset: align_up(
                (HEADER_LEN + manifest_len + signatures_len + roots_len) as u64,
            ),
            payload_area_len,
        };
        header.check_limits()?;
        Ok(header)
    }

    /// Length of header plus metadata sections (what a device fetches first).
    pub fn metadata_end(&self) -> u64 {
        HEADER_LEN as u64
            + self.manifest_len as u64
            + self.signatures_len as u64
            + self.roots_len as u64
    }

    /// Total bundle size.
    pub fn file_len(&self) -> u64 {
        self.payload_area_offset + self.payload_area_len
    }

    pub fn manifest_range(&self) -> std::ops::Range<usize> {
        HEADER_LEN..HEADER_LEN + self.manifest_len as usize
    }

    pub fn signatures_range(&self) -> std::ops::Range<usize> {
        let start = self.manifest_range().end;
        start..start + self.signatures_len as usize
    }

    pub fn roots_range(&self) -> std::ops::Range<usize> {
        let start = self.signatures_range().end;
        start..start + self.roots_len as usize
    }

    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut b = [0u8; HEADER_LEN];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
        b[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
        b[16..20].copy_from_slice(&self.manifest_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.signatures_len.to_le_bytes());
        b[24..28].copy_from_slice(&self.roots_len.to_le_bytes());
        b[32..40].copy_from_slice(&self.payload_area_offset.to_le_bytes());
        b[40..48].copy_from_slice(&self.payload_area_len.to_le_bytes());
        let crc = crc32fast::hash(&b[..60]);
        b[60..64].copy_from_slice(&crc.to_le_bytes());
        b
    }

    /// Decodes and checks a header. `bytes` may be longer than the header (a device reads
    /// the first few KiB at once); shorter is a truncated bundle.
    pub fn decode(bytes: &[u8]) -> Result<Header> {
        if bytes.len() < HEADER_LEN {
            return Err(Error::Truncated {
                what: "header",
                needed: HEADER_LEN as u64,
                available: bytes.len() as u64,
            });
        }
        let b = &bytes[..HEADER_LEN];
        let magic: [u8; 8] = b[0..8].try_into().expect("8 bytes");
        if magic != MAGIC {
            return Err(Error::BadMagic(magic));
        }
        // The version is checked before the checksum: a future format may lay out its
        // header differently, and "unsupported version" is the message that helps.
        let version = u32_at(b, 8);
        if version != FORMAT_VERSION {
            return Err(Error::UnsupportedFormatVersion {
                found: version,
                supported: FORMAT_VERSION,
            });
        }
        let (found, computed) = (u32_at(b, 60), crc32fast::hash(&b[..60]));
        if found != computed {
            return Err(Error::HeaderChecksum { found, computed });
        }
        if u32_at(b, 12) as usize != HEADER_LEN
            || u32_at(b, 28) != 0
            || b[48..60].iter().any(|&x| x != 0)
        {
            return Err(Error::HeaderLayout(
                "header length or reserved fields are not as version 1 defines them".into(),
            ));
        }
        let header = Header {
            manifest_len: u32_at(b, 16),
            signatures_len: u32_at(b, 20),
            roots_len: u32_at(b, 24),
            payload_area_offset: u64_at(b, 32),
            payload_area_len: u64_at(b, 40),
        };
        header.check_limits()?;
        Ok(header)
    }

    fn check_limits(&self) -> Result<()> {
        for (section, len, max) in [
            ("manifest", self.manifest_len as u64, MAX_MANIFEST_LEN),
            ("signatures", self.signatures_len as u64, MAX_SIGNATURES_LEN),
            ("roots", self.roots_len as u64, MAX_ROOTS_LEN),
        ] {
            if len > max {
                return Err(Error::SectionTooLarge { section, len, max });
            }
        }
        if self.manifest_len == 0 {
            return Err(Error::HeaderLayout("manifest section is empty".into()));
        }
        let expected = align_up(self.metadata_end());
        if self.payload_area_offset != expected {
            return Err(Error::HeaderLayout(format!(
                "payload area starts at {}, expected {expected}",
                self.payload_area_offset
            )));
        }
        if self
            .payload_area_offset
            .checked_add(self.payload_area_len)
            .is_none()
        {
            return Err(Error::HeaderLayout("payload area length overflows".into()));
        }
        Ok(())
    }
}

pub fn align_up(n: u64) -> u64 {
    n.div_ceil(PAYLOAD_ALIGN) * PAYLOAD_ALIGN
}

fn to_u32(section: &'static str, len: usize) -> Result<u32> {
    u32::try_from(len).map_err(|_| Error::SectionTooLarge {
        section,
        len: len as u64,
        max: u32::MAX as u64,
    })
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let h = Header::layout(1000, 200, 0, 8192).unwrap();
        assert_eq!(h.payload_area_offset, 4096);
        assert_eq!(Header::decode(&h.encode()).unwrap(), h);
    }

    #[test]
    fn every_single_bit_flip_is_rejected() {
        let bytes = Header::layout(1000, 200, 0, 8192).unwrap().encode();
        for bit in 0..HEADER_LEN * 8 {
            let mut b = bytes;
            b[bit / 8] ^= 1 << (bit % 8);
            assert!(Header::decode(&b).is_err(), "bit {bit} flip accepted");
        }
    }
}
