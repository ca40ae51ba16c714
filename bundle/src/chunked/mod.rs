//! Chunked images (`zstd-chunks`): the image cut into fixed-size chunks, each compressed
//! as its own zstd frame, with a signed index of every block's hash (in version 3, every
//! block's 64-bit key and every chunk's hash).
//!
//! This is what lets a device install a release with no delta made for it: it hashes the
//! blocks it already holds (in either slot, or written by an install a power cut stopped),
//! and fetches with HTTP Range requests only the frames of chunks that hold a block it has
//! nowhere. Every block is checked against the index before it is written, so nothing
//! found on the disk is trusted without being hashed again (see `Checks` for what a
//! key-only check leaves to the image's digest). RAUC's adaptive
//! `block-hash-index` and casync work the same way; see `FORMAT.md` for the bytes.
//!
//! - `mod.rs`: the index (parse, encode, queries) and the check of one decoded frame;
//! - `encode.rs`: the builder's side;
//! - `groups.rs`: reading and checking version 3's runs (chunks gathered from anywhere);
//! - `open.rs`: the decoded chunks a build in image order holds until their last block;
//! - `plan.rs`: which block comes from where, given what a device found (no I/O).

mod arm64;
mod encode;
mod groups;
mod open;
pub mod plan;

use std::io::Read;
use std::ops::Range;

use crate::digest::{Algorithm, Hasher};
use crate::error::{Error, Result};
use crate::manifest::{Chunked, Image};

pub use encode::{encode, encode_grouped, Layout, GROUP_BLOCKS, GROUP_LEVEL, MAX_HISTORY};
pub use open::OpenChunks;

/// The method of a chunked image's data payload.
pub const METHOD: &str = "zstd-chunks";
/// The method of its index payload.
pub const INDEX_METHOD: &str = "chunk-index";
pub const INDEX_MAGIC: [u8; 8] = *b"CAIRNCIX";
/// Version 1 has no window (the field is reserved, 0); version 2 gives one; version 3
/// gathers blocks into chunks by the earlier releases that hold them.
const INDEX_VERSION: u32 = 1;
const INDEX_VERSION_WINDOWED: u32 = 2;
const INDEX_VERSION_GROUPED: u32 = 3;
/// The data method of a chunked image whose frames reference the bytes before their
/// chunk (an index of version 2). A separate name, so that a device that predates it
/// takes the full payload instead.
pub const METHOD_WINDOWED: &str = "zstd-chunks-windowed";
/// The data method of a chunked image whose chunks are groups of blocks from anywhere in
/// the image (an index of version 3), named apart for the same reason.
pub const METHOD_GROUPED: &str = "zstd-block-groups";
/// Most chunks whose blocks interleave at any point of the image: a device keeps the
/// decoded bytes of each fetched one until it has written its last block, so this times
/// [`MAX_CHUNK_LEN`] (40 MiB) bounds what it holds. The builder makes at most one per
/// class: each subset of [`MAX_HISTORY`] releases, and zeros.
pub const MAX_OPEN_CHUNKS: usize = (1 << MAX_HISTORY) + 1;
/// What a zstd dictionary starts with (little-endian 0xEC30A437); bytes that do not are
/// raw content to zstd.
const ZSTD_DICT_MAGIC: [u8; 4] = [0x37, 0xA4, 0x30, 0xEC];
/// Largest window: bounds what a device keeps of the image it is building.
pub const MAX_WINDOW: u32 = 8 << 20;
const INDEX_HEADER_LEN: usize = 32;
/// Version 3 adds the filter and a reserved field to the header.
const INDEX_HEADER_LEN_GROUPED: usize = INDEX_HEADER_LEN + 8;
/// Bytes per block hash (BLAKE3) in versions 1 and 2, per chunk hash in version 3.
pub const HASH_LEN: usize = 32;
/// Bytes per block key in version 3.
pub const KEY_LEN: usize = 8;
/// Largest chunk: bounds the device's buffers (one chunk and one frame at a time).
pub const MAX_CHUNK_LEN: u64 = 8 << 20;
/// Largest index a device loads: 64 MiB covers an 8 GiB image at 4 KiB blocks.
pub const MAX_INDEX_LEN: u64 = 64 << 20;
const MIN_BLOCK: u32 = 512;
const MAX_BLOCK: u32 = 1 << 20;

/// BLAKE3 of one block (or of one chunk's decoded bytes).
pub type BlockHash = [u8; HASH_LEN];

/// What a device looks a block up by: the first [`KEY_LEN`] bytes of its BLAKE3, read
/// little-endian.
pub type BlockKey = u64;

pub fn block_hash(bytes: &[u8]) -> BlockHash {
    *blake3::hash(bytes).as_bytes()
}

pub fn key_of(hash: &BlockHash) -> BlockKey {
    u64::from_le_bytes(hash[..KEY_LEN].try_into().expect("KEY_LEN"))
}

pub fn block_key(bytes: &[u8]) -> BlockKey {
    key_of(&block_hash(bytes))
}

/// The index of a chunked image: block size, which blocks each chunk holds, every block's
/// hash (or key and each chunk's hash) and where each chunk's frame lies in the data
/// payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChunkIndex {
    pub block_size: u32,
    /// Most blocks in a chunk (every chunk's count but the last's, when fixed).
    pub chunk_blocks: u32,
    chunking: Chunking,
    /// Bytes before a chunk that its frame references (0: none).
    pub window: u32,
    pub image_size: u64,
    /// Every block's key, what a device finds the blocks it holds by.
    keys: Vec<BlockKey>,
    checks: Checks,
    /// Start of each chunk's frame in the data payload, then the payload's end.
    frame_starts: Vec<u64>,
}

/// Which blocks make each chunk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Chunking {
    /// Chunk k is the `chunk_blocks` blocks from block k * `chunk_blocks` (versions 1, 2).
    Fixed,
    /// Chunk k is the runs `runs[run_starts[k]..run_starts[k + 1]]`, in image order; its
    /// frame decodes to their blocks back to back (version 3).
    Grouped {
        runs: Vec<Range<u32>>,
        run_starts: Vec<u32>,
        chunk_of: Vec<u32>,
        filter: Filter,
    },
}

/// What a grouped chunk's bytes went through before zstd (version 3), undone after it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Filter {
    #[default]
    None,
    /// The arm64 branch filter (`arm64.rs`), each run at its offset in the image.
    Arm64,
}

impl Filter {
    const ARM64: u32 = 1;

    fn code(self) -> u32 {
        match self {
            Filter::None => 0,
            Filter::Arm64 => Filter::ARM64,
        }
    }

    fn from_code(code: u32) -> Option<Filter> {
        match code {
            0 => Some(Filter::None),
            Filter::ARM64 => Some(Filter::Arm64),
            _ => None,
        }
    }

    /// Applies the filter to `bytes`, the image's bytes from offset `at`.
    pub(crate) fn encode(self, bytes: &mut [u8], at: u64) {
        if self == Filter::Arm64 {
            arm64::encode(bytes, at)
        }
    }

    fn decode(self, bytes: &mut [u8], at: u64) {
        if self == Filter::Arm64 {
            arm64::decode(bytes, at)
        }
    }
}

/// What fetched and found bytes are checked against.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Checks {
    /// Every block's BLAKE3 (versions 1 and 2): each block is checked whole, wherever it
    /// comes from.
    Blocks(Vec<BlockHash>),
    /// Every chunk's BLAKE3, of its decoded bytes (version 3): a fetched chunk is checked
    /// whole; a block found on a disk only by its 64-bit key, and the image it goes into
    /// by the image's digest before the slot is armed. Keys instead of hashes make the
    /// index a quarter of the size, and the index is fetched whole by every device.
    Chunks(Vec<BlockHash>),
}

fn corrupt(image: &str, detail: impl Into<String>) -> Error {
    Error::PayloadCorrupt {
        image: image.to_string(),
        detail: detail.into(),
    }
}

impl ChunkIndex {
    /// Builds an index of grouped chunks (the encoder's side): chunk k holds the blocks
    /// of `chunks[k]`, runs in image order, and every block is in exactly one chunk.
    pub(crate) fn from_groups(
        block_size: u32,
        image_size: u64,
        keys: Vec<BlockKey>,
        chunk_hashes: Vec<BlockHash>,
        chunks: &[Vec<Range<u32>>],
        frame_lens: &[u32],
        filter: Filter,
    ) -> ChunkIndex {
        let mut runs = Vec::new();
        let mut run_starts = vec![0u32];
        let mut chunk_of = vec![0u32; keys.len()];
        let mut most = 0;
        for (k, chunk) in chunks.iter().enumerate() {
            for run in chunk {
                chunk_of[run.start as usize..run.end as usize].fill(k as u32);
            }
            most = most.max(chunk.iter().map(|r| r.len() as u32).sum::<u32>());
            runs.extend(chunk.iter().cloned());
            run_starts.push(runs.len() as u32);
        }
        Self::with_checks(
            block_size,
            most,
            0,
            image_size,
            keys,
            Checks::Chunks(chunk_hashes),
            frame_lens,
            Chunking::Grouped {
                runs,
                run_starts,
                chunk_of,
                filter,
            },
        )
    }

    /// Builds an index of fixed chunks from its parts (the encoder's side): every
    /// block's hash, and each chunk's frame length.
    pub(crate) fn new(
        block_size: u32,
        chunk_blocks: u32,
        window: u32,
        image_size: u64,
        hashes: Vec<BlockHash>,
        frame_lens: &[u32],
    ) -> ChunkIndex {
        let keys = hashes.iter().map(key_of).collect();
        Self::with_checks(
            block_size,
            chunk_blocks,
            window,
            image_size,
            keys,
            Checks::Blocks(hashes),
            frame_lens,
            Chunking::Fixed,
        )
    }

    #[allow(clippy::too_many_arguments)]
    fn with_checks(
        block_size: u32,
        chunk_blocks: u32,
        window: u32,
        image_size: u64,
        keys: Vec<BlockKey>,
        checks: Checks,
        frame_lens: &[u32],
        chunking: Chunking,
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
            chunking,
            window,
            image_size,
            keys,
            checks,
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
        if !(INDEX_VERSION..=INDEX_VERSION_GROUPED).contains(&version) {
            return Err(bad(format!(
                "version {version}, this build reads {INDEX_VERSION} to {INDEX_VERSION_GROUPED}"
            )));
        }
        let window = match version {
            INDEX_VERSION_WINDOWED => u32_at(20),
            _ => 0,
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
        let grouped = version == INDEX_VERSION_GROUPED;
        let (chunks, per_block, per_chunk) = match grouped {
            true => (u32_at(20) as u64, KEY_LEN, HASH_LEN + 4),
            false => (blocks.div_ceil(chunk_blocks as u64), HASH_LEN, 4),
        };
        let header_len = match grouped {
            true => INDEX_HEADER_LEN_GROUPED,
            false => INDEX_HEADER_LEN,
        };
        let blocks_end = header_len as u64 + blocks * per_block as u64;
        let min_len = blocks_end + chunks * per_chunk as u64;
        if (bytes.len() as u64) < min_len || (!grouped && bytes.len() as u64 != min_len) {
            return Err(bad(format!(
                "{} bytes, {blocks} blocks in {chunks} chunks need {}{min_len}",
                bytes.len(),
                if grouped { "at least " } else { "" },
            )));
        }
        let hashes = |bytes: &[u8]| -> Vec<BlockHash> {
            (bytes.chunks_exact(HASH_LEN))
                .map(|h| h.try_into().expect("HASH_LEN"))
                .collect()
        };
        let blocks_end = blocks_end as usize;
        let per_block = &bytes[header_len..blocks_end];
        let lens_start = match grouped {
            true => blocks_end + chunks as usize * HASH_LEN,
            false => blocks_end,
        };
        let bound = zstd::zstd_safe::compress_bound(chunk_len as usize) as u32;
        let mut frame_lens = Vec::with_capacity(chunks as usize);
        let lens_end = lens_start + chunks as usize * 4;
        for (c, len) in bytes[lens_start..lens_end].chunks_exact(4).enumerate() {
            let len = u32::from_le_bytes(len.try_into().expect("4"));
            if len == 0 || len > bound {
                return Err(bad(format!(
                    "frame of chunk {c} is {len} bytes (allowed: 1 to {bound})"
                )));
            }
            frame_lens.push(len);
        }
        let index = if grouped {
            let groups = groups::parse(
                &bytes[lens_end..],
                chunks as usize,
                blocks as usize,
                chunk_blocks,
            )
            .map_err(bad)?;
            let keys = (per_block.chunks_exact(KEY_LEN))
                .map(|k| u64::from_le_bytes(k.try_into().expect("KEY_LEN")))
                .collect();
            let chunk_hashes = hashes(&bytes[blocks_end..lens_start]);
            let filter = Filter::from_code(u32_at(INDEX_HEADER_LEN))
                .ok_or_else(|| bad(format!("filter {}, unknown", u32_at(INDEX_HEADER_LEN))))?;
            ChunkIndex::from_groups(
                block_size,
                image_size,
                keys,
                chunk_hashes,
                &groups,
                &frame_lens,
                filter,
            )
        } else {
            let hashes = hashes(per_block);
            ChunkIndex::new(
                block_size,
                chunk_blocks,
                window,
                image_size,
                hashes,
                &frame_lens,
            )
        };
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
            INDEX_HEADER_LEN + self.block_count() * HASH_LEN + self.chunk_count() * 48,
        );
        out.extend_from_slice(&INDEX_MAGIC);
        let (version, field) = match (&self.chunking, self.window) {
            (Chunking::Grouped { .. }, _) => (INDEX_VERSION_GROUPED, self.chunk_count() as u32),
            (Chunking::Fixed, 0) => (INDEX_VERSION, 0),
            (Chunking::Fixed, window) => (INDEX_VERSION_WINDOWED, window),
        };
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&self.block_size.to_le_bytes());
        out.extend_from_slice(&self.chunk_blocks.to_le_bytes());
        out.extend_from_slice(&field.to_le_bytes());
        out.extend_from_slice(&self.image_size.to_le_bytes());
        if let Chunking::Grouped { filter, .. } = &self.chunking {
            out.extend_from_slice(&filter.code().to_le_bytes());
            out.extend_from_slice(&0u32.to_le_bytes());
        }
        match &self.checks {
            Checks::Blocks(hashes) => hashes.iter().for_each(|h| out.extend_from_slice(h)),
            Checks::Chunks(hashes) => {
                for key in &self.keys {
                    out.extend_from_slice(&key.to_le_bytes());
                }
                hashes.iter().for_each(|h| out.extend_from_slice(h));
            }
        }
        for c in 0..self.chunk_count() {
            out.extend_from_slice(&(self.frame(c).end - self.frame(c).start).to_le_bytes()[..4]);
        }
        if let Chunking::Grouped {
            runs, run_starts, ..
        } = &self.chunking
        {
            for pair in run_starts.windows(2) {
                out.extend_from_slice(&(pair[1] - pair[0]).to_le_bytes());
            }
            for run in runs {
                out.extend_from_slice(&run.start.to_le_bytes());
                out.extend_from_slice(&run.len().to_le_bytes()[..4]);
            }
        }
        out
    }

    /// Whether chunks gather blocks from anywhere in the image (version 3).
    pub fn is_grouped(&self) -> bool {
        matches!(self.chunking, Chunking::Grouped { .. })
    }

    /// What the chunks' bytes went through before zstd.
    pub fn filter(&self) -> Filter {
        match &self.chunking {
            Chunking::Grouped { filter, .. } => *filter,
            Chunking::Fixed => Filter::None,
        }
    }

    pub fn block_count(&self) -> usize {
        self.keys.len()
    }

    pub fn chunk_count(&self) -> usize {
        self.frame_starts.len() - 1
    }

    /// Block `block`'s key: what a device looks for among the blocks it holds.
    pub fn key(&self, block: usize) -> BlockKey {
        self.keys[block]
    }

    /// Bytes of the image that block `block` covers.
    pub fn block_range(&self, block: usize) -> Range<u64> {
        let start = block as u64 * self.block_size as u64;
        start..(start + self.block_size as u64).min(self.image_size)
    }

    pub fn chunk_of(&self, block: usize) -> usize {
        match &self.chunking {
            Chunking::Fixed => block / self.chunk_blocks as usize,
            Chunking::Grouped { chunk_of, .. } => chunk_of[block] as usize,
        }
    }

    /// The runs of blocks chunk `chunk` holds, in image order (one, when fixed).
    pub fn runs_of(&self, chunk: usize) -> impl Iterator<Item = Range<usize>> + '_ {
        let (fixed, grouped) = match &self.chunking {
            Chunking::Fixed => {
                let start = chunk * self.chunk_blocks as usize;
                let end = (start + self.chunk_blocks as usize).min(self.block_count());
                (Some(start..end), &[][..])
            }
            Chunking::Grouped {
                runs, run_starts, ..
            } => (
                None,
                &runs[run_starts[chunk] as usize..run_starts[chunk + 1] as usize],
            ),
        };
        fixed
            .into_iter()
            .chain(grouped.iter().map(|r| r.start as usize..r.end as usize))
    }

    /// The blocks chunk `chunk` holds, in image order: the order its frame decodes them.
    pub fn blocks_of(&self, chunk: usize) -> impl Iterator<Item = usize> + '_ {
        self.runs_of(chunk).flatten()
    }

    /// The run of its chunk that block `block` is in (for a fixed chunk: all of it).
    pub fn run_at(&self, block: usize) -> Range<usize> {
        let c = self.chunk_of(block);
        match &self.chunking {
            Chunking::Fixed => self.runs_of(c).next().unwrap_or(block..block + 1),
            Chunking::Grouped {
                runs, run_starts, ..
            } => {
                let mine = &runs[run_starts[c] as usize..run_starts[c + 1] as usize];
                let at = mine.partition_point(|r| r.end as usize <= block);
                mine[at].start as usize..mine[at].end as usize
            }
        }
    }

    /// Where block `block` starts in its chunk's decoded bytes (a scan of the chunk's
    /// runs: [`OpenChunks`] needs it once per chunk, not per run).
    pub fn offset_in_chunk(&self, block: usize) -> usize {
        let c = self.chunk_of(block);
        let mut before = 0;
        for run in self.runs_of(c) {
            if run.contains(&block) {
                return before + (block - run.start) * self.block_size as usize;
            }
            before += run.len() * self.block_size as usize;
        }
        unreachable!("block {block} is in its chunk {c}")
    }

    /// Bytes of the image chunk `chunk` holds (its frame's decoded length).
    pub fn chunk_len(&self, chunk: usize) -> usize {
        self.blocks_of(chunk).map(|b| self.block_len(b)).sum()
    }

    /// Where chunk `chunk`'s frame lies in the data payload.
    pub fn frame(&self, chunk: usize) -> Range<u64> {
        self.frame_starts[chunk]..self.frame_starts[chunk + 1]
    }

    pub fn data_len(&self) -> u64 {
        *self.frame_starts.last().expect("at least the start")
    }

    /// Does `bytes` hold block `block` of the image? Checked by the block's hash, or for
    /// grouped chunks by its key (see [`Checks::Chunks`]).
    pub fn holds(&self, block: usize, bytes: &[u8]) -> bool {
        bytes.len() == self.block_len(block)
            && match &self.checks {
                Checks::Blocks(hashes) => block_hash(bytes) == hashes[block],
                Checks::Chunks(_) => block_key(bytes) == self.keys[block],
            }
    }

    /// Decodes chunk `chunk`'s frame into `out` (cleared first) and checks every block
    /// in it against the index; `out` then holds exactly the chunk's blocks, back to back
    /// in image order. `before` is the image's bytes before the chunk, at least the
    /// window's worth (or all of them); only its last `window` bytes are used.
    pub fn decode_frame(
        &self,
        image: &str,
        chunk: usize,
        frame: &[u8],
        before: &[u8],
        decoder: &mut FrameDecoder,
        out: &mut Vec<u8>,
    ) -> Result<()> {
        let len = self.chunk_len(chunk);
        let start = self
            .block_range(self.blocks_of(chunk).next().unwrap_or(0))
            .start;
        let want = (self.window as u64).min(start) as usize;
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
        if self.filter() != Filter::None {
            let mut at = 0;
            for run in self.runs_of(chunk) {
                let len = run.len() * self.block_size as usize;
                let bytes = &mut out[at..(at + len).min(n)];
                self.filter()
                    .decode(bytes, self.block_range(run.start).start);
                at += len;
            }
        }
        let hashes = match &self.checks {
            Checks::Chunks(hashes) if block_hash(out) == hashes[chunk] => return Ok(()),
            Checks::Chunks(_) => {
                return Err(corrupt(
                    image,
                    format!("chunk {chunk} does not match the signed index"),
                ))
            }
            Checks::Blocks(hashes) => hashes,
        };
        for (i, block) in self.blocks_of(chunk).enumerate() {
            let bytes = &out[i * self.block_size as usize..][..self.block_len(block)];
            if block_hash(bytes) != hashes[block] {
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
    let method = match (index.is_grouped(), index.window) {
        (true, _) => METHOD_GROUPED,
        (false, 0) => METHOD,
        (false, _) => METHOD_WINDOWED,
    };
    if chunked.data.method != method {
        return Err(corrupt(
            &image.name,
            format!(
                "chunk index of data method {method} for data of method {}",
                chunked.data.method
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
/// checks each chunk's blocks against `index`, and hands the image's bytes to `each` in
/// order, a run of blocks at a time: what a device that holds nothing of the image does.
pub fn decode_in_order(
    name: &str,
    index: &ChunkIndex,
    mut data: impl Read,
    mut each: impl FnMut(&[u8]),
) -> Result<()> {
    let mut decoder = FrameDecoder::new()?;
    let mut recent = RecentBytes::new(index.window);
    let mut frame = Vec::new();
    let mut open = OpenChunks::new();
    let mut next_frame = 0;
    let mut block = 0;
    while block < index.block_count() {
        let c = index.chunk_of(block);
        if !open.is_open(c) {
            // Chunks come in the order of their first block (checked by the parser), so
            // the first chunk not yet open is the next frame in the data.
            debug_assert_eq!(c, next_frame);
            let r = index.frame(c);
            frame.resize((r.end - r.start) as usize, 0);
            data.read_exact(&mut frame).map_err(|e| match e.kind() {
                std::io::ErrorKind::UnexpectedEof => Error::PayloadTruncated {
                    image: name.to_string(),
                    missing: index.data_len() - r.start,
                },
                _ => Error::io(format!("reading chunk {c} of {name}"))(e),
            })?;
            let mut chunk = Vec::new();
            index.decode_frame(name, c, &frame, recent.bytes(), &mut decoder, &mut chunk)?;
            open.open(index, c, chunk, block);
            next_frame += 1;
        }
        let run = index.run_at(block);
        open.take(index, c, run.clone(), |bytes| {
            recent.push(bytes);
            each(bytes);
        });
        block = run.end;
    }
    Ok(())
}
