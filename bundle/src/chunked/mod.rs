//! Chunked images (`zstd-chunks`): the image cut into fixed-size chunks, each compressed
//! as its own zstd frame, with a signed index of every block's hash.
//!
//! This is what lets a device install a release with no delta made for it: it hashes the
//! blocks it already holds (in either slot, or written by an install a power cut stopped),
//! and fetches with HTTP Range requests only the frames of chunks that hold a block it has
//! nowhere. Every block is checked against the index before it is written, so nothing
//! found on the disk is trusted without being hashed again. RAUC's adaptive
//! `block-hash-index` and casync work the same way; see `FORMAT.md` for the bytes.
//!
//! - `mod.rs`: the index (parse, encode, queries) and the check of one decoded frame;
//! - `encode.rs`: the builder's side;
//! - `plan.rs`: which block comes from where, given what a device found (no I/O).

mod encode;
pub mod plan;

use std::io::Read;
use std::ops::Range;

use crate::digest::{Algorithm, Hasher};
use crate::error::{Error, Result};
use crate::manifest::{Chunked, Image};

pub use encode::{encode, Layout};

/// The method of a chunked image's data payload.
pub const METHOD: &str = "zstd-chunks";
/// The method of its index payload.
pub const INDEX_METHOD: &str = "chunk-index";
pub const INDEX_MAGIC: [u8; 8] = *b"CAIRNCIX";
/// Version 1 has no window (the field is reserved, 0); version 2 gives one.
const INDEX_VERSION: u32 = 1;
const INDEX_VERSION_WINDOWED: u32 = 2;
/// The data method of a chunked image whose frames reference the bytes before their
/// chunk (an index of version 2). A separate name, so that a device that predates it
/// takes the full payload instead.
pub const METHOD_WINDOWED: &str = "zstd-chunks-windowed";
/// What a zstd dictionary starts with (little-endian 0xEC30A437); bytes that do not are
/// raw content to zstd.
const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xA4, 0x30, 0xEC];
/// Largest window: bounds what a device keeps of the image it is building.
pub const MAX_WINDOW: u32 = 8 << 20;
const INDEX_HEADER_LEN: usize = 32;
/// Bytes per block hash (BLAKE3).
pub const HASH_LEN: usize = 32;
/// Largest chunk: bounds the device's buffers (one chunk and one frame at a time).
pub const MAX_CHUNK_LEN: u64 = 4 << 20;
/// Largest index a device loads: 64 MiB covers an 8 GiB image at 4 KiB blocks.
pub const MAX_INDEX_LEN: u64 = 64 << 20;
const MIN_BLOCK: u32 = 512;
const MAX_BLOCK: u32 = 1 << 20;

/// BLAKE3 of one block.
pub type BlockHash = [u8; HASH_LEN];

pub fn block_hash(bytes: &[u8]) -> BlockHash {
    *blake3::hash(bytes).as_bytes()
}

/// The index of a chunked image: block size, chunk size, every block's hash and where
/// each chunk's frame lies in the data payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub block_size: u32,
    pub chunk_blocks: u32,
    /// Bytes before a chunk that its frame references (0: none).
    pub window: u32,
    pub image_size: u64,
    hashes: Vec<BlockHash>,
    /// Start of each chunk's frame in the data payload, then the payload's end.
    frame_starts: Vec<u64>,
}

fn corrupt(image: &str, detail: impl Into<String>) -> Error {
    Error::PayloadCorrupt {
        image: image.to_string(),
        detail: detail.into(),
    }
}

impl ChunkIndex {
    /// Builds an index from its parts (the encoder's side).
    pub(crate) fn new(
        block_size: u32,
        chunk_blocks: u32,
        window: u32,
        image_size: u64,
        hashes: Vec<BlockHash>,
        frame_lens: &[u32],
    ) -> ChunkIndex {
        let mut frame_starts = Vec::with_capacity(frame_lens.len() + 1);
        let mut at = 0u64;
        frame_starts.push(0);
        for &len in frame_lens {
            at += len as u64;
            frame_starts.push(at);
        }
        ChunkIndex {
            block_size,
            chunk_blocks,
            window,
            image_size,
            hashes,
            frame_starts,
        }
    }

    /// Parses and checks an index against the image it describes and the size of its
    /// data payload. The bytes must already have matched the manifest's signed digest;
    /// this catches a builder that wrote something inconsistent.
    pub fn parse(bytes: &[u8], image: &Image, data_size: u64) -> Result<ChunkIndex> {
        let name = &image.name;
        let bad = |detail: String| corrupt(name, format!("chunk index: {detail}"));
        if bytes.len() < INDEX_HEADER_LEN || bytes[..8] != INDEX_MAGIC {
            return Err(bad("bad magic or shorter than its header".into()));
        }
        let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
        let version = u32_at(8);
        let window = match version {
            INDEX_VERSION => 0,
            INDEX_VERSION_WINDOWED => u32_at(20),
            _ => {
                return Err(bad(format!(
                "version {version}, this build reads {INDEX_VERSION} and {INDEX_VERSION_WINDOWED}"
            )))
            }
        };
        if version == INDEX_VERSION_WINDOWED && !(1..=MAX_WINDOW).contains(&window) {
            return Err(bad(format!(
                "a window of {window} bytes (allowed: 1 to {MAX_WINDOW})"
            )));
        }
        let (block_size, chunk_blocks) = (u32_at(12), u32_at(16));
        let image_size = u64::from_le_bytes(bytes[24..32].try_into().expect("8"));
        if !block_size.is_power_of_two() || !(MIN_BLOCK..=MAX_BLOCK).contains(&block_size) {
            return Err(bad(format!(
                "block size {block_size} is not a power of two in {MIN_BLOCK}..={MAX_BLOCK}"
            )));
        }
        let chunk_len = block_size as u64 * chunk_blocks as u64;
        if chunk_blocks == 0 || chunk_len > MAX_CHUNK_LEN {
            return Err(bad(format!(
                "{chunk_blocks} blocks per chunk: a chunk must be 1 block to {MAX_CHUNK_LEN} bytes"
            )));
        }
        if image_size != image.size {
            return Err(bad(format!(
                "describes {image_size} bytes, the image has {}",
                image.size
            )));
        }
        let blocks = image_size.div_ceil(block_size as u64);
        let chunks = blocks.div_ceil(chunk_blocks as u64);
        let expected = INDEX_HEADER_LEN as u64 + blocks * HASH_LEN as u64 + chunks * 4;
        if bytes.len() as u64 != expected {
            return Err(bad(format!(
                "{} bytes, {blocks} blocks in {chunks} chunks need {expected}",
                bytes.len()
            )));
        }
        let hashes_end = INDEX_HEADER_LEN + blocks as usize * HASH_LEN;
        let hashes = bytes[INDEX_HEADER_LEN..hashes_end]
            .chunks_exact(HASH_LEN)
            .map(|h| h.try_into().expect("HASH_LEN"))
            .collect();
        let bound = zstd::zstd_safe::compress_bound(chunk_len as usize) as u32;
        let mut frame_lens = Vec::with_capacity(chunks as usize);
        for (c, len) in bytes[hashes_end..].chunks_exact(4).enumerate() {
            let len = u32::from_le_bytes(len.try_into().expect("4"));
            if len == 0 || len > bound {
                return Err(bad(format!(
                    "frame of chunk {c} is {len} bytes (allowed: 1 to {bound})"
                )));
            }
            frame_lens.push(len);
        }
        let index = ChunkIndex::new(
            block_size,
            chunk_blocks,
            window,
            image_size,
            hashes,
            &frame_lens,
        );
        if index.data_len() != data_size {
            return Err(bad(format!(
                "frames add up to {} bytes, the data payload has {data_size}",
                index.data_len()
            )));
        }
        Ok(index)
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            INDEX_HEADER_LEN + self.hashes.len() * HASH_LEN + self.chunk_count() * 4,
        );
        out.extend_from_slice(&INDEX_MAGIC);
        let version = match self.window {
            0 => INDEX_VERSION,
            _ => INDEX_VERSION_WINDOWED,
        };
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.chunk_blocks.to_le_bytes());
        out.extend_from_slice(&self.window.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        for h in &self.hashes {
            out.extend_from_slice(h);
        }
        for c in 0..self.chunk_count() {
            out.extend_from_slice(&(self.frame(c).end - self.frame(c).start).to_le_bytes()[..4]);
        }
        out
    }

    pub fn block_count(&self) -> usize {
        self.hashes.len()
    }

    pub fn chunk_count(&self) -> usize {
        self.frame_starts.len() - 1
    }

    pub fn hash(&self, block: usize) -> &BlockHash {
        &self.hashes[block]
    }

    /// Bytes of the image that block `block` covers.
    pub fn block_range(&self, block: usize) -> Range<u64> {
        let start = block as u64 * self.block_size as u64;
        start..(start + self.block_size as u64).min(self.image_size)
    }

    pub fn chunk_of(&self, block: usize) -> usize {
        block / self.chunk_blocks as usize
    }

    pub fn blocks_of(&self, chunk: usize) -> Range<usize> {
        let start = chunk * self.chunk_blocks as usize;
        start..(start + self.chunk_blocks as usize).min(self.block_count())
    }

    /// Bytes of the image that chunk `chunk` covers.
    pub fn chunk_range(&self, chunk: usize) -> Range<u64> {
        let blocks = self.blocks_of(chunk);
        self.block_range(blocks.start).start..self.block_range(blocks.end - 1).end
    }

    /// Where chunk `chunk`'s frame lies in the data payload.
    pub fn frame(&self, chunk: usize) -> Range<u64> {
        self.frame_starts[chunk]..self.frame_starts[chunk + 1]
    }

    pub fn data_len(&self) -> u64 {
        *self.frame_starts.last().expect("at least the start")
    }

    /// Does `bytes` hold block `block` of the image?
    pub fn holds(&self, block: usize, bytes: &[u8]) -> bool {
        bytes.len() as u64 == self.block_range(block).end - self.block_range(block).start
            && block_hash(bytes) == self.hashes[block]
    }

    /// Decodes chunk `chunk`'s frame into `out` (cleared first) and checks every block
    /// in it against the index; `out` then holds exactly the chunk's bytes of the image.
    /// `before` is the image's bytes before the chunk, at least the window's worth (or
    /// all of them); only its last `window` bytes are used.
    pub fn decode_frame(
        &self,
        image: &str,
        chunk: usize,
        frame: &[u8],
        before: &[u8],
        decoder: &mut FrameDecoder,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let range = self.chunk_range(chunk);
        let len = (range.end - range.start) as usize;
        let want = (self.window as u64).min(range.start) as usize;
        if before.len() < want {
            return Err(Error::io(format!("decoding chunk {chunk} of {image}"))(
                std::io::Error::other(format!(
                    "{} bytes before the chunk at hand, its frame needs {want}",
                    before.len()
                )),
            ));
        }
        out.clear();
        out.reserve(len);
        let zstd = |code: usize| {
            corrupt(
                image,
                format!(
                    "chunk {chunk}: zstd: {}",
                    zstd::zstd_safe::get_error_name(code)
                ),
            )
        };
        let prefix = &before[before.len() - want..];
        let n = if want == 0 {
            decoder.0.decompress(out, frame).map_err(zstd)?
        } else if prefix.starts_with(&ZSTD_DICT_MAGIC) {
            // zstd would read these bytes as a formatted dictionary, not as the raw
            // content the encoder referenced: a context of its own that borrows them as
            // a prefix (raw content always).
            let mut dctx = zstd::zstd_safe::DCtx::create();
            dctx.ref_prefix(prefix).map_err(zstd)?;
            dctx.decompress(out, frame).map_err(zstd)?
        } else {
            // Raw content, with the kept context: a new one per frame made decoding the
            // bench's 360 MB image in 4 KiB frames take 1.8 s instead of 0.7 s.
            decoder
                .0
                .decompress_using_dict(out, frame, prefix)
                .map_err(zstd)?
        };
        if n != len {
            return Err(corrupt(
                image,
                format!("chunk {chunk} decodes to {n} bytes, not {len}"),
            ));
        }
        for (i, block) in self.blocks_of(chunk).enumerate() {
            let bytes = &out[i * self.block_size as usize..][..self.block_len(block)];
            if block_hash(bytes) != self.hashes[block] {
                return Err(corrupt(
                    image,
                    format!(
                        "chunk {chunk}: block at offset {} does not match the signed index",
                        self.block_range(block).start
                    ),
                ));
            }
        }
        Ok(())
    }

    pub fn block_len(&self, block: usize) -> usize {
        let r = self.block_range(block);
        (r.end - r.start) as usize
    }
}

/// A zstd context for [`ChunkIndex::decode_frame`], kept between frames.
pub struct FrameDecoder(zstd::zstd_safe::DCtx<'static>);

impl FrameDecoder {
    pub fn new() -> Result<FrameDecoder> {
        Ok(FrameDecoder(zstd::zstd_safe::DCtx::create()))
    }
}

/// Reads a chunked image's index payload (exactly its `size` bytes), checks it against
/// the manifest's signed digest, and parses it.
pub fn read_index(image: &Image, chunked: &Chunked, mut reader: impl Read) -> Result<ChunkIndex> {
    let payload = &chunked.index;
    let mut bytes = Vec::with_capacity(payload.size.min(MAX_INDEX_LEN) as usize);
    (&mut reader)
        .take(payload.size)
        .read_to_end(&mut bytes)
        .map_err(Error::io(format!(
            "reading the chunk index of {}",
            image.name
        )))?;
    if (bytes.len() as u64) < payload.size {
        return Err(Error::PayloadTruncated {
            image: image.name.clone(),
            missing: payload.size - bytes.len() as u64,
        });
    }
    let (algorithm, expected) = payload.checked_digest();
    let mut hasher = Hasher::new(algorithm);
    hasher.update(&bytes);
    let actual = hasher.finalize_hex();
    if actual != expected {
        return Err(Error::PayloadHashMismatch {
            image: format!("{} chunk index", image.name),
            expected: format!("{} {expected}", algorithm.name()),
            actual,
        });
    }
    let index = ChunkIndex::parse(&bytes, image, chunked.data.size)?;
    if (chunked.data.method == METHOD_WINDOWED) != (index.window > 0) {
        return Err(corrupt(
            &image.name,
            format!(
                "chunk index with a window of {} bytes for data of method {}",
                index.window, chunked.data.method
            ),
        ));
    }
    Ok(index)
}

/// The last bytes of the image being built in order: what a windowed chunk's frame
/// references. Holds at most twice the window, so a device's memory stays bounded.
pub struct RecentBytes {
    window: usize,
    bytes: Vec<u8>,
}

impl RecentBytes {
    pub fn new(window: u32) -> RecentBytes {
        RecentBytes {
            window: window as usize,
            bytes: Vec::new(),
        }
    }

    /// The image's next bytes, in order.
    pub fn push(&mut self, next: &[u8]) {
        if self.window == 0 {
            return;
        }
        if self.bytes.len() + next.len() > 2 * self.window {
            let keep = self.window.saturating_sub(next.len()).min(self.bytes.len());
            self.bytes.drain(..self.bytes.len() - keep);
        }
        let from = next.len().saturating_sub(self.window);
        self.bytes.extend_from_slice(&next[from..]);
    }

    /// At least the last `window` bytes pushed (all of them, if fewer).
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

/// The builder's and the server's full check: decodes every frame of `data` (the whole
/// data payload, in order), checks every block against `index`, and the image they make
/// against both of the image's digests.
pub fn check_all(image: &Image, index: &ChunkIndex, data: impl Read) -> Result<()> {
    let mut sha256 = Hasher::new(Algorithm::Sha256);
    let mut blake3 = Hasher::new(Algorithm::Blake3);
    decode_in_order(&image.name, index, data, |chunk| {
        sha256.update(chunk);
        blake3.update(chunk);
    })?;
    let checks = [
        (sha256, Some(image.sha256.as_str())),
        (blake3, image.blake3.as_deref()),
    ];
    for (hasher, expected) in checks {
        let Some(expected) = expected else { continue };
        let actual = hasher.finalize_hex();
        if actual != expected {
            return Err(Error::ImageHashMismatch {
                image: format!("{} (chunked)", image.name),
                expected: expected.to_string(),
                actual,
            });
        }
    }
    Ok(())
}

/// Decodes every frame of `data` (the whole data payload of image `name`, in order),
/// checks each chunk's blocks against `index`, and hands the chunks to `each` in order:
/// what a device that holds nothing of the image does.
pub fn decode_in_order(
    name: &str,
    index: &ChunkIndex,
    mut data: impl Read,
    mut each: impl FnMut(&[u8]),
) -> Result<()> {
    let mut decoder = FrameDecoder::new()?;
    let mut recent = RecentBytes::new(index.window);
    let (mut frame, mut chunk) = (Vec::new(), Vec::new());
    for c in 0..index.chunk_count() {
        let r = index.frame(c);
        frame.resize((r.end - r.start) as usize, 0);
        data.read_exact(&mut frame).map_err(|e| match e.kind() {
            std::io::ErrorKind::UnexpectedEof => Error::PayloadTruncated {
                image: name.to_string(),
                missing: index.data_len() - r.start,
            },
            _ => Error::io(format!("reading chunk {c} of {name}"))(e),
        })?;
        index.decode_frame(name, c, &frame, recent.bytes(), &mut decoder, &mut chunk)?;
        recent.push(&chunk);
        each(&chunk);
    }
    Ok(())
}
