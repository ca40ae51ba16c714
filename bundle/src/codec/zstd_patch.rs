//! `zstd-patch`: a delta that decodes one bounded chunk at a time.
//!
//! Layout (little-endian):
//! ```text
//! "CZPATCH1"  chunk_size:u32  reserved:u32 (0)  target_size:u64
//! then, for each chunk of the target, in order:  frame_len:u32  zstd frame
//! ```
//! Each frame holds `chunk_size` bytes of the target (the last one the remainder) and is
//! decoded with the whole source image as its reference prefix, the way
//! `zstd --patch-from` does. The source is memory-mapped on both sides, so the device's
//! heap holds one chunk and one frame at a time whatever the image size.
//!
//! The encoder indexes the source once and shares that index between chunks and threads
//! (`source_dict.rs` says why and what it measured); the frames are what a per-frame
//! reference prefix would give a decoder, so payloads of earlier Cairn versions and of
//! this one decode the same way.

use std::io::{self, Read, Write};
use std::sync::mpsc;

use super::source_dict::{ChunkEncoder, SourceDict};

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

/// How many chunk encoders run at once: one per core. Each holds one context, the frame
/// it is making and one frame queued for the writer, so memory is bounded by the thread
/// count, not the image size.
fn encoder_threads(chunks: usize) -> usize {
    std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, chunks.max(1))
}

/// `cairn-image bundle create`'s default level. A delta made at a higher level is never
/// bigger than one made at this level.
pub const BASELINE_LEVEL: i32 = 12;

/// The smallest of the frames `encoders` make of `piece`.
fn smallest_frame(encoders: &mut [ChunkEncoder], piece: &[u8]) -> io::Result<Vec<u8>> {
    let mut best: Option<Vec<u8>> = None;
    for encoder in encoders {
        let mut frame = Vec::new();
        encoder.encode(piece, &mut frame)?;
        if best.as_ref().is_none_or(|b| frame.len() < b.len()) {
            best = Some(frame);
        }
    }
    best.ok_or_else(|| io::Error::other("no zstd-patch encoder"))
}

/// Encodes `target` as a delta against `source`.
///
/// The source is indexed once ([`SourceDict`]) and the target's chunks are compressed on
/// one thread per core against that shared index, then written in order.
pub fn encode(
    source: &[u8],
    target: &[u8],
    level: i32,
    chunk: u32,
    out: &mut impl Write,
) -> io::Result<()> {
    encode_with(source, target, level, chunk, None, &mut |_| {}, out)
}

/// [`encode`] on exactly `threads` encoder threads (`None`: one per core), telling
/// `progress` how many target bytes are encoded after each chunk. The output does not
/// depend on the thread count.
pub fn encode_with(
    source: &[u8],
    target: &[u8],
    level: i32,
    chunk: u32,
    threads: Option<usize>,
    progress: &mut dyn FnMut(u64),
    out: &mut impl Write,
) -> io::Result<()> {
    if !(MIN_CHUNK..=MAX_CHUNK).contains(&chunk) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("chunk size {chunk} outside {MIN_CHUNK}..={MAX_CHUNK}"),
        ));
    }
    let window_log = window_log_for(source.len() as u64, chunk)?;
    out.write_all(&MAGIC)?;
    out.write_all(&chunk.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(target.len() as u64).to_le_bytes())?;
    let pieces: Vec<&[u8]> = target.chunks(chunk as usize).collect();
    if pieces.is_empty() {
        return Ok(());
    }
    // Above the baseline, each chunk is also made at the baseline and the smaller frame
    // kept: zstd's stronger levels index the source differently (binary trees that reach
    // fewer old positions) and were measured 0.5% worse than level 12 on an lz4hc pair.
    let mut dicts = vec![SourceDict::new(source, level, chunk, window_log)?];
    if level > BASELINE_LEVEL {
        dicts.push(SourceDict::new(source, BASELINE_LEVEL, chunk, window_log)?);
    }
    let threads = threads.map_or_else(|| encoder_threads(pieces.len()), |n| n.max(1));
    std::thread::scope(|scope| {
        // Worker `w` encodes chunks w, w + threads, ...; reading the workers' channels
        // round-robin yields the frames in target order with at most one frame queued
        // per worker.
        let mut queues = Vec::with_capacity(threads);
        for first in 0..threads {
            let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(1);
            let (dicts, pieces) = (&dicts, &pieces);
            scope.spawn(move || {
                let encoders: io::Result<Vec<ChunkEncoder>> =
                    dicts.iter().map(ChunkEncoder::new).collect();
                let mut encoders = match encoders {
                    Ok(encoders) => encoders,
                    Err(e) => {
                        let _ = tx.send(Err(e));
                        return;
                    }
                };
                for piece in pieces.iter().skip(first).step_by(threads) {
                    let result = smallest_frame(&mut encoders, piece);
                    let failed = result.is_err();
                    // A closed channel means the writer stopped on an error.
                    if tx.send(result).is_err() || failed {
                        return;
                    }
                }
            });
            queues.push(rx);
        }
        for i in 0..pieces.len() {
            let frame = queues[i % threads]
                .recv()
                .map_err(|_| io::Error::other("a zstd-patch encoder thread stopped"))??;
            let len = u32::try_from(frame.len())
                .map_err(|_| invalid(format!("frame of {} bytes", frame.len())))?;
            out.write_all(&len.to_le_bytes())?;
            out.write_all(&frame)?;
            progress(((i as u64 + 1) * u64::from(chunk)).min(target.len() as u64));
        }
        Ok(())
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_testkit::image_bytes;

    fn pair() -> (Vec<u8>, Vec<u8>) {
        let source = image_bytes(900_000, 1);
        let mut target = source.clone();
        target[10_000..12_000].copy_from_slice(&image_bytes(2_000, 2));
        target.splice(500_000..500_000, image_bytes(30_000, 3));
        (source, target)
    }

    fn decode_to_vec(delta: &[u8], source: &[u8], size: u64) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        decode(&mut &delta[..], source, size, &mut out).map(|()| out)
    }

    #[test]
    fn the_delta_does_not_depend_on_the_thread_count() {
        let (source, target) = pair();
        let mut deltas = Vec::new();
        for threads in [1, 2, 3] {
            let mut delta = Vec::new();
            let mut seen = Vec::new();
            let mut progress = |done| seen.push(done);
            encode_with(
                &source,
                &target,
                9,
                MIN_CHUNK,
                Some(threads),
                &mut progress,
                &mut delta,
            )
            .unwrap();
            assert!(seen.windows(2).all(|w| w[0] < w[1]), "progress only rises");
            assert_eq!(seen.last(), Some(&(target.len() as u64)));
            deltas.push(delta);
        }
        assert!(deltas.iter().all(|d| *d == deltas[0]));
        let out = decode_to_vec(&deltas[0], &source, target.len() as u64).unwrap();
        assert!(out == target);
        assert!(
            deltas[0].len() * 10 < target.len(),
            "{} bytes",
            deltas[0].len()
        );
    }

    #[test]
    fn every_level_rebuilds_the_target_and_an_empty_one_too() {
        let (source, target) = pair();
        for level in [1, 3, 12, 14, 17] {
            let mut delta = Vec::new();
            encode(&source, &target, level, MIN_CHUNK, &mut delta).unwrap();
            let out = decode_to_vec(&delta, &source, target.len() as u64).unwrap();
            assert!(out == target, "level {level}");
        }
        let mut delta = Vec::new();
        encode(&source, &[], 12, DEFAULT_CHUNK, &mut delta).unwrap();
        assert_eq!(delta.len(), HEADER_LEN);
        assert!(decode_to_vec(&delta, &source, 0).unwrap().is_empty());
    }

    #[test]
    fn a_chunk_size_the_decoder_would_refuse_is_refused_when_encoding() {
        let (source, target) = pair();
        for chunk in [MIN_CHUNK - 1, MAX_CHUNK + 1] {
            let err = encode(&source, &target, 12, chunk, &mut Vec::new()).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
        }
    }
}
