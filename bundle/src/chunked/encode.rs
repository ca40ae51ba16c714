//! Making a chunked image: hash every block, compress every chunk as its own frame.

use std::io::{self, Write};
use std::ops::Range;

use zstd::zstd_safe::{CCtx, CParameter};

use super::{
    block_hash, key_of, BlockHash, ChunkIndex, Filter, MAX_CHUNK_LEN, MAX_INDEX_LEN, MAX_WINDOW,
};

/// How an image is cut and compressed. Small chunks fetch less around a change; big ones
/// compress better, and a window gives small ones back most of what they lose.
/// `FORMAT.md` gives the numbers behind the defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub block_size: u32,
    pub chunk_blocks: u32,
    /// Bytes of the image just before a chunk that its frame may reference (0: none).
    /// A device builds the image in order, so those bytes are at hand whether they came
    /// from a local slot or from the bundle; the frame then compresses like part of one
    /// stream while it can still be fetched alone.
    pub window: u32,
    /// zstd level of every frame. A windowed frame loads its window into the encoder
    /// first, so the cost of a level grows with the window.
    pub level: i32,
}

impl Default for Layout {
    /// One 4 KiB block per chunk (the erofs block, so a file unchanged between releases
    /// is the same blocks at whatever offset it moved to), each frame referencing the
    /// 256 KiB before it, at zstd level 3. Measured on the Debian pair of `cargo xtask
    /// bench delta` (uncompressed erofs, 17,543 of v2's 87,798 blocks missing from v1),
    /// the frames of the missing blocks and the time to make them (one thread):
    /// - 32 KiB chunks, no window, level 12 (the former default): 30,678 blocks' worth
    ///   of chunks to fetch, 40.1 MB of frames;
    /// - 4 KiB, no window: 29.4 MB at level 12 (3.5 s);
    /// - 4 KiB, 256 KiB window: 26.6 MB at level 3 (3.7 s), 25.0 MB at level 9 (17 s),
    ///   24.9 MB at level 12 (26 s), 22.6 MB at level 19 (313 s);
    /// - 4 KiB, 1 MiB window, level 3: 26.2 MB (9.2 s).
    ///
    /// So level 3 with a 256 KiB window: smaller than level 12 without one, at its cost.
    fn default() -> Layout {
        Layout {
            block_size: 4096,
            chunk_blocks: 1,
            window: 256 << 10,
            level: 3,
        }
    }
}

impl Layout {
    /// The layout of bundles made before windowed frames (`zstd-chunks`): 32 KiB chunks,
    /// no window, level 12. Devices that predate `zstd-chunks-windowed` read only this.
    pub fn unwindowed() -> Layout {
        Layout {
            block_size: 4096,
            chunk_blocks: 8,
            window: 0,
            level: 12,
        }
    }
}

/// A compressed chunk: its frame and its blocks' hashes.
type Encoded = (Vec<u8>, Vec<BlockHash>);

/// Chunks compressed per batch, spread over the threads; bounds the frames held at once.
const BATCH: usize = 64;

/// Writes `image`'s frames to `out` and returns the index that describes them.
pub fn encode(image: &[u8], layout: Layout, out: &mut impl Write) -> io::Result<ChunkIndex> {
    let block = layout.block_size as usize;
    let chunk_len = block * layout.chunk_blocks as usize;
    if !layout.block_size.is_power_of_two() || chunk_len == 0 || chunk_len as u64 > MAX_CHUNK_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("chunk layout {layout:?} is outside the format's limits"),
        ));
    }
    let index_len = image.len().div_ceil(block) * super::HASH_LEN;
    if index_len as u64 > MAX_INDEX_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "an image of {} bytes needs blocks larger than {block} for its index to \
                 stay under {MAX_INDEX_LEN} bytes",
                image.len()
            ),
        ));
    }
    if layout.window > MAX_WINDOW {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "a window of {} bytes is over the format's {MAX_WINDOW}",
                layout.window
            ),
        ));
    }
    let window = layout.window as usize;
    let chunks: Vec<(usize, &[u8])> = image
        .chunks(chunk_len)
        .enumerate()
        .map(|(c, chunk)| (c * chunk_len, chunk))
        .collect();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut hashes: Vec<BlockHash> = Vec::with_capacity(image.len().div_ceil(block));
    let mut frame_lens = Vec::with_capacity(chunks.len());
    for batch in chunks.chunks(BATCH) {
        let per_thread = batch.len().div_ceil(threads);
        let done: Vec<io::Result<Vec<Encoded>>> = std::thread::scope(|s| {
            let workers: Vec<_> = batch
                .chunks(per_thread)
                .map(|part| {
                    s.spawn(move || -> io::Result<Vec<Encoded>> {
                        let mut zstd = FrameEncoder::new(layout.level, layout.window, chunk_len)?;
                        part.iter()
                            .map(|&(start, chunk)| {
                                let prefix = &image[start.saturating_sub(window)..start];
                                let frame = zstd.compress(prefix, chunk)?;
                                let hashes = chunk.chunks(block).map(block_hash).collect();
                                Ok((frame, hashes))
                            })
                            .collect()
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("chunk encoder does not panic"))
                .collect()
        });
        for part in done {
            for (frame, block_hashes) in part? {
                out.write_all(&frame)?;
                frame_lens.push(frame.len() as u32);
                hashes.extend(block_hashes);
            }
        }
    }
    Ok(ChunkIndex::new(
        layout.block_size,
        layout.chunk_blocks,
        layout.window,
        image.len() as u64,
        hashes,
        &frame_lens,
    ))
}

/// One thread's zstd context: each frame on its own, with the bytes before its chunk
/// as a prefix it may reference.
struct FrameEncoder<'a> {
    cctx: CCtx<'a>,
    bound: usize,
}

fn zstd_err(code: usize) -> io::Error {
    io::Error::other(format!("zstd: {}", zstd::zstd_safe::get_error_name(code)))
}

impl<'a> FrameEncoder<'a> {
    fn new(level: i32, window: u32, chunk_len: usize) -> io::Result<FrameEncoder<'a>> {
        let mut cctx = CCtx::create();
        // The window must reach back over the whole prefix from the chunk's last byte.
        let window_log = (window as u64 + chunk_len as u64)
            .next_power_of_two()
            .trailing_zeros()
            .max(10);
        for parameter in [
            CParameter::CompressionLevel(level),
            CParameter::ChecksumFlag(false),
            CParameter::ContentSizeFlag(true),
            CParameter::WindowLog(window_log),
        ] {
            cctx.set_parameter(parameter).map_err(zstd_err)?;
        }
        let bound = zstd::zstd_safe::compress_bound(chunk_len);
        Ok(FrameEncoder { cctx, bound })
    }

    fn compress(&mut self, prefix: &'a [u8], chunk: &[u8]) -> io::Result<Vec<u8>> {
        let mut frame = Vec::with_capacity(self.bound);
        if !prefix.is_empty() {
            self.cctx.ref_prefix(prefix).map_err(zstd_err)?;
        }
        self.cctx.compress2(&mut frame, chunk).map_err(zstd_err)?;
        Ok(frame)
    }
}

/// Most earlier releases a grouped image is cut by: each adds a bit to a block's class,
/// and the chunks of every class may interleave ([`super::MAX_OPEN_CHUNKS`]).
pub const MAX_HISTORY: usize = 2;
/// Most blocks in a group (8 MiB at 4 KiB blocks): what a device holds per open chunk.
/// Measured on the bench's Debian image (uncompressed, two releases behind, no filter):
/// 1,024 blocks gave 28.73 MB of frames, 2,048 blocks 28.37 MB.
pub const GROUP_BLOCKS: u32 = 2048;
/// Blocks of a grouped image (the erofs block).
pub const GROUP_BLOCK_SIZE: u32 = 4096;
/// zstd level of a grouped image's frames: they are few and large, and a device that
/// fetches them fetches most of their class, so they are worth the builder's time.
pub const GROUP_LEVEL: i32 = 19;

/// Writes `image`'s frames grouped by `history` (earlier releases' images, at most
/// [`MAX_HISTORY`]) and returns their index (version 3). `filter` is what the groups go
/// through before zstd, or `None` to try each and keep the smaller. `progress` gets the
/// bytes of the image compressed so far, after each batch of frames.
///
/// Each block gets a class: which of the earlier images hold its bytes anywhere, or zeros.
/// A device that holds one of those releases holds every block of a class it has and
/// none of a class it lacks, so the blocks of a class, taken in image order, are cut into
/// chunks of up to [`GROUP_BLOCKS`] blocks from wherever they lie: the blocks a device
/// fetches then compress together, nearly as one stream, instead of one small frame each.
/// Measured on `cargo xtask bench delta`'s Debian images (uncompressed erofs), the
/// frames a device holding the release two before fetches: 28.4 MB this way (1,024-block
/// groups: 28.7 MB); 30.0 MB for each class's runs cut where they end in the image (at
/// most 256 KiB, zstd 19, 256 KiB window), so that a chunk is one run; 37.4 MB for the
/// windowed 4 KiB frames of [`Layout::default`]; 28.1 MB with the arm64 branch filter.
/// Making them takes 80-90 s on two cores for that 360 MB image.
pub fn encode_grouped(
    image: &[u8],
    history: &[&[u8]],
    level: i32,
    filter: Option<Filter>,
    progress: &mut dyn FnMut(u64),
    out: &mut impl Write,
) -> io::Result<ChunkIndex> {
    if history.len() > MAX_HISTORY {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} earlier images to group by, at most {MAX_HISTORY}",
                history.len()
            ),
        ));
    }
    let block = GROUP_BLOCK_SIZE as usize;
    if (image.len().div_ceil(block) * super::KEY_LEN) as u64 > MAX_INDEX_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("an image of {} bytes is too large to group", image.len()),
        ));
    }
    let hashes: Vec<BlockHash> = image.chunks(block).map(block_hash).collect();
    let held: Vec<std::collections::HashSet<BlockHash>> = history
        .iter()
        .map(|h| h.chunks(block).map(block_hash).collect())
        .collect();
    let zeros = block_hash(&[0u8; GROUP_BLOCK_SIZE as usize]);
    let last_zeros = block_hash(&vec![0u8; image.len() - (hashes.len().max(1) - 1) * block]);
    let class = |b: usize| -> u8 {
        let h = &hashes[b];
        if *h == zeros || (b + 1 == hashes.len() && *h == last_zeros) {
            return u8::MAX;
        }
        held.iter()
            .enumerate()
            .fold(0, |class, (i, set)| class | ((set.contains(h) as u8) << i))
    };
    // Each class's blocks in image order, cut into groups; then the groups in the order
    // of their first block, the order a device needs them.
    let mut by_class: std::collections::BTreeMap<u8, Vec<u32>> = Default::default();
    for b in 0..hashes.len() {
        by_class.entry(class(b)).or_default().push(b as u32);
    }
    let mut groups: Vec<Vec<Range<u32>>> = Vec::new();
    for blocks in by_class.values() {
        for part in blocks.chunks(GROUP_BLOCKS as usize) {
            let mut runs: Vec<Range<u32>> = Vec::new();
            for &b in part {
                match runs.last_mut() {
                    Some(run) if run.end == b => run.end += 1,
                    _ => runs.push(b..b + 1),
                }
            }
            groups.push(runs);
        }
    }
    groups.sort_by_key(|runs| runs[0].start);
    let filter = filter.unwrap_or_else(|| choose_filter(image, &groups));

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut frame_lens = Vec::with_capacity(groups.len());
    let mut chunk_hashes = Vec::with_capacity(groups.len());
    let mut done = 0u64;
    for batch in groups.chunks(threads) {
        let frames: Vec<io::Result<(Vec<u8>, BlockHash)>> = std::thread::scope(|s| {
            let workers: Vec<_> = batch
                .iter()
                .map(|runs| {
                    s.spawn(move || {
                        let bytes = group_bytes(image, runs, filter);
                        Ok((
                            zstd::bulk::compress(&bytes, level)?,
                            group_hash(image, runs),
                        ))
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| w.join().expect("group encoder does not panic"))
                .collect()
        });
        for frame in frames {
            let (frame, hash) = frame?;
            out.write_all(&frame)?;
            frame_lens.push(frame.len() as u32);
            chunk_hashes.push(hash);
        }
        let blocks: usize = batch.iter().flatten().map(|run| run.len()).sum();
        done = (done + (blocks * block) as u64).min(image.len() as u64);
        progress(done);
    }
    Ok(ChunkIndex::from_groups(
        GROUP_BLOCK_SIZE,
        image.len() as u64,
        hashes.iter().map(key_of).collect(),
        chunk_hashes,
        &groups,
        &frame_lens,
        filter,
    ))
}

/// BLAKE3 of one group's runs back to back, unfiltered: what its frame decodes to.
fn group_hash(image: &[u8], runs: &[Range<u32>]) -> BlockHash {
    let block = GROUP_BLOCK_SIZE as usize;
    let mut hasher = blake3::Hasher::new();
    for run in runs {
        hasher.update(
            &image[run.start as usize * block..(run.end as usize * block).min(image.len())],
        );
    }
    *hasher.finalize().as_bytes()
}

/// The bytes of one group's runs, back to back, each through `filter`.
fn group_bytes(image: &[u8], runs: &[Range<u32>], filter: Filter) -> Vec<u8> {
    let block = GROUP_BLOCK_SIZE as usize;
    let mut bytes = Vec::with_capacity(GROUP_BLOCKS as usize * block);
    for run in runs {
        let (start, end) = (
            run.start as usize * block,
            (run.end as usize * block).min(image.len()),
        );
        let at = bytes.len();
        bytes.extend_from_slice(&image[start..end]);
        filter.encode(&mut bytes[at..], start as u64);
    }
    bytes
}

/// Whether the arm64 branch filter makes this image's frames smaller: tried on up to 16
/// groups spread over the image, at a fast zstd level (what filters gain hardly depends
/// on it), both ways. About a second for a 360 MB image; on the bench's Debian arm64
/// image the filter saves about 1% of the frames, on compressed erofs nothing.
fn choose_filter(image: &[u8], groups: &[Vec<Range<u32>>]) -> Filter {
    let step = groups.len().div_ceil(16).max(1);
    let size = |filter| -> usize {
        (groups.iter().step_by(step))
            .map(|runs| {
                let bytes = group_bytes(image, runs, filter);
                zstd::bulk::compress(&bytes, 3).map_or(usize::MAX, |f| f.len())
            })
            .sum()
    };
    // Only a clear gain: a filter is one more step for every device.
    match size(Filter::Arm64) < size(Filter::None) / 1000 * 995 {
        true => Filter::Arm64,
        false => Filter::None,
    }
}
