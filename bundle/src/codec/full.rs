//! `zstd`: the full image as one zstd stream.

use std::io::{self, BufRead, Read, Write};

use crate::chunks::copy_buffered;

pub const METHOD: &str = "zstd";

/// The encoder's window; the decoder refuses anything larger, which bounds the memory a
/// hostile payload can make a device allocate.
pub const WINDOW_LOG: u32 = 23;
pub const MAX_WINDOW_LOG: u32 = 24;

/// Compresses all of `input` into `out`.
pub fn encode(input: &mut impl Read, out: impl Write, level: i32) -> io::Result<()> {
    let mut encoder = zstd::stream::write::Encoder::new(out, level)?;
    encoder.window_log(WINDOW_LOG)?;
    encoder.include_checksum(false)?; // the manifest's sha256 covers the payload
    encoder.include_contentsize(false)?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    encoder.multithread(threads)?;
    io::copy(input, &mut encoder)?;
    encoder.finish()?.flush()
}

/// Decodes the stream from `input` into `out` with bounded memory.
pub fn decode(input: impl Read, out: &mut impl Write) -> io::Result<()> {
    let mut decoder = zstd::stream::read::Decoder::new(input)?;
    decoder.window_log_max(MAX_WINDOW_LOG)?;
    copy_buffered(&mut decoder, out)
}

/// The decoder `decode` uses, over input that is already buffered.
pub(crate) fn decoder<R: BufRead>(input: R) -> io::Result<zstd::stream::read::Decoder<'static, R>> {
    let mut decoder = zstd::stream::read::Decoder::with_buffer(input)?;
    decoder.window_log_max(MAX_WINDOW_LOG)?;
    Ok(decoder)
}
