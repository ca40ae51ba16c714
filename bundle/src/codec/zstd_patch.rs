//! `zstd-patch`: a delta that decodes one bounded chunk at a time.
//!
//! Layout (little-endian):
//! ```text
//! "CZPATCH1"  chunk_size:u32  reserved:u32 (0)  target_size:u64
//! then, for each chunk of the target, in order:  frame_len:u32  zstd frame
//! ```
//! Each frame holds `chunk_size` bytes of the target (the last one the remainder) and is
//! compressed with the whole source image as its reference prefix, the way
//! `zstd --patch-from` does. The source is memory-mapped on both sides, so the device's
//! heap holds one chunk and one frame at a time whatever the image size.

use std::io::{self, Read, Write};

pub const METHOD: &str = "zstd-patch";
pub const MAGIC: [u8; 8] = *b"CZPATCH1";
pub const HEADER_LEN: usize = 24;
pub const DEFAULT_CHUNK: u32 = 8 << 20;
pub const MAX_CHUNK: u32 = 64 << 20;
const MIN_CHUNK: u32 = 64 << 10;
/// zstd's largest window on 64-bit: source plus one chunk must fit in it.
const MAX_WINDOW_LOG: u32 = 31;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

fn zstd_err(code: usize) -> io::Error {
    invalid(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

/// The window a frame needs to reach back over the whole source.
fn window_log_for(source_len: u64, chunk: u32) -> io::Result<u32> {
    let span = source_len + chunk as u64;
    let log = (64 - span.saturating_sub(1).leading_zeros()).max(10);
    if log > MAX_WINDOW_LOG {
        return Err(invalid(format!(
            "source of {source_len} bytes is too large for zstd-patch"
        )));
    }
    Ok(log)
}

/// Encodes `target` as a delta against `source`.
pub fn encode(
    source: &[u8],
    target: &[u8],
    level: i32,
    chunk: u32,
    out: &mut impl Write,
) -> io::Result<()> {
    use zstd::zstd_safe::{CCtx, CParameter};
    let mut cctx = CCtx::create();
    for param in [
        CParameter::CompressionLevel(level),
        CParameter::WindowLog(window_log_for(source.len() as u64, chunk)?),
        CParameter::EnableLongDistanceMatching(true),
        CParameter::ContentSizeFlag(true),
        CParameter::ChecksumFlag(false),
    ] {
        cctx.set_parameter(param).map_err(zstd_err)?;
    }
    out.write_all(&MAGIC)?;
    out.write_all(&chunk.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(target.len() as u64).to_le_bytes())?;
    let mut frame = Vec::with_capacity(zstd::zstd_safe::compress_bound(chunk as usize));
    for piece in target.chunks(chunk as usize) {
        frame.clear();
        cctx.ref_prefix(source).map_err(zstd_err)?; // applies to the next frame only
        cctx.compress2(&mut frame, piece).map_err(zstd_err)?;
        out.write_all(&(frame.len() as u32).to_le_bytes())?;
        out.write_all(&frame)?;
    }
    Ok(())
}

/// Decodes a delta from `input` against `source` into `out`. `expected_size` is the
/// image size from the signed manifest; the payload must agree with it.
pub fn decode(
    input: &mut impl Read,
    source: &[u8],
    expected_size: u64,
    out: &mut impl Write,
) -> io::Result<()> {
    use zstd::zstd_safe::{DCtx, DParameter};
    let mut header = [0u8; HEADER_LEN];
    input.read_exact(&mut header)?;
    if header[0..8] != MAGIC {
        return Err(invalid("not a zstd-patch payload (bad magic)"));
    }
    let chunk = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let target_size = u64::from_le_bytes(header[16..24].try_into().expect("8 bytes"));
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) || header[12..16] != [0; 4] {
        return Err(invalid(format!(
            "chunk size {chunk} outside {MIN_CHUNK}..={MAX_CHUNK}"
        )));
    }
    if target_size != expected_size {
        return Err(invalid(format!(
            "delta produces {target_size} bytes, the manifest says {expected_size}"
        )));
    }
    let max_frame = zstd::zstd_safe::compress_bound(chunk as usize);
    let mut frame = Vec::with_capacity(max_frame);
    let mut buf = Vec::with_capacity(chunk as usize);
    let mut dctx = DCtx::create();
    dctx.set_parameter(DParameter::WindowLogMax(MAX_WINDOW_LOG))
        .map_err(zstd_err)?;
    let mut remaining = target_size;
    while remaining > 0 {
        let want = remaining.min(chunk as u64) as usize;
        let mut len = [0u8; 4];
        input.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > max_frame {
            return Err(invalid(format!(
                "frame of {len} bytes exceeds the bound {max_frame}"
            )));
        }
        frame.resize(len, 0);
        input.read_exact(&mut frame)?;
        buf.clear();
        dctx.ref_prefix(source).map_err(zstd_err)?;
        let n = dctx.decompress(&mut buf, &frame).map_err(zstd_err)?;
        if n != want {
            return Err(invalid(format!(
                "frame decoded to {n} bytes, expected {want}"
            )));
        }
        out.write_all(&buf)?;
        remaining -= want as u64;
    }
    Ok(())
}
