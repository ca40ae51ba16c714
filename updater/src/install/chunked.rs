//! Installing a chunked image (`cairn_bundle::chunked`): hash what the device already
//! holds, then build the image in order from kept, copied and fetched blocks.
//!
//! Nothing read from a disk is trusted: every block is checked against the signed index
//! as it goes into the image, and the whole image against its digest at the end. That is
//! also why an install that a power cut or a dropped network stopped resumes with no
//! journal: the blocks it had written are found in place by the same hashing, and only
//! the chunks still missing are fetched again.

use std::fs::File;
use std::io::{self, Read, Write};
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_bundle::chunked::plan::{Action, Finder, Found, Plan};
use cairn_bundle::chunked::{
    block_key, read_index, BlockKey, ChunkIndex, FrameDecoder, OpenChunks, RecentBytes,
};
use cairn_bundle::digest::Hasher;
use cairn_bundle::{Chunked, Header, Image};

use super::source::BundleSource;
use super::target::{target_path, SlotWriter, TargetError};
use super::{InstallError, Progress};
use crate::config::Target;

/// A place on the device that may hold blocks of the image.
pub struct LocalCopy {
    pub target: Target,
    /// How many bytes of it to look at.
    pub len: u64,
}

/// What a chunked install did, in blocks and bytes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub kept: usize,
    pub copied: usize,
    pub zeros: usize,
    pub fetched_blocks: usize,
    pub fetched_chunks: usize,
    pub fetched_bytes: u64,
}

fn io_err(what: String) -> impl FnOnce(io::Error) -> InstallError {
    move |source| TargetError::Io { path: what, source }.into()
}

/// Writes `image` into `output` from its chunked payloads, reusing every block found in
/// `output` itself (when written in place) and in `sources`.
#[allow(clippy::too_many_arguments)]
pub fn install(
    bundle: &BundleSource,
    header: &Header,
    image: &Image,
    chunked: &Chunked,
    output: &Target,
    output_scan: u64,
    sources: &[LocalCopy],
    cancel: &Arc<AtomicBool>,
    progress: &mut (dyn FnMut(Progress) + Send),
) -> Result<Outcome, InstallError> {
    let index = read_index(image, chunked, bundle.payload(header, &chunked.index)?)?;
    let mut writer = SlotWriter::open(output, cancel.clone(), Box::new(|_| {}))?;
    let output_path = target_path(output)?;
    let output_file = if writer.in_place() {
        Some(File::open(&output_path).map_err(io_err(output_path.display().to_string()))?)
    } else {
        None
    };

    let mut finder = Finder::new(&index);
    if let Some(file) = &output_file {
        scan(file, output_scan, index.block_size, cancel, |block, key| {
            finder.offer_output(block, key)
        })
        .map_err(io_err(format!("reading {}", output_path.display())))?;
    }
    let mut source_files = Vec::new();
    for (n, copy) in sources.iter().enumerate() {
        let path = target_path(&copy.target)?;
        let Ok(file) = File::open(&path) else {
            source_files.push(None);
            continue; // a file target that does not exist yet holds nothing
        };
        let block_size = index.block_size as u64;
        scan(&file, copy.len, index.block_size, cancel, |block, key| {
            finder.offer_source(n, block as u64 * block_size, key)
        })
        .map_err(io_err(format!("reading {}", path.display())))?;
        source_files.push(Some(file));
    }
    let plan = finder.plan();
    let fetch_runs = plan.fetch_runs();
    tracing::info!(
        image = %image.name,
        blocks = index.block_count(),
        kept = plan.count(|a| *a == Action::Keep),
        copied = plan.count(|a| matches!(a, Action::Copy(_))),
        fetch_chunks = fetch_runs.iter().map(|r| r.len()).sum::<usize>(),
        fetch_bytes = plan.fetch_bytes(&index),
        "chunked install planned"
    );

    let mut build = Build {
        bundle,
        header,
        image,
        chunked,
        index: &index,
        plan: &plan,
        fetch_runs: &fetch_runs,
        output: output_file.as_ref(),
        sources: &source_files,
        decoder: FrameDecoder::new()?,
        recent: RecentBytes::new(index.window),
        frame: Vec::new(),
        run: None,
        open: OpenChunks::new(),
        outcome: Outcome::default(),
    };
    let (algorithm, expected) = image.checked_digest();
    let mut hasher = Hasher::new(algorithm);
    let mut bytes = Vec::new();
    let mut reported = 0;
    let mut block = 0;
    while block < index.block_count() {
        if cancel.load(Ordering::Relaxed) {
            return Err(io_err("install".into())(io::Error::other(
                "install cancelled",
            )));
        }
        let run = index.run_at(block);
        let read_from_disk = build.run(run.clone(), &mut bytes)?;
        build.recent.push(&bytes);
        hasher.update(&bytes);
        // Kept blocks of a partition are skipped, not written again, when what is hashed
        // is what was read from them. Taken from a fetched chunk, they are written: a
        // kept block was found by its key alone in a grouped index, and only bytes that
        // went into the image's digest may be left on the disk unwritten.
        for (part, kept) in plan.kept_runs(run.clone()) {
            let block_size = index.block_size as usize;
            let from = (part.start - run.start) * block_size;
            let to = ((part.end - run.start) * block_size).min(bytes.len());
            if writer.in_place() && kept && read_from_disk {
                writer.skip((to - from) as u64)
            } else {
                writer.write_all(&bytes[from..to])
            }
            .map_err(io_err(format!("writing {}", output_path.display())))?;
        }
        let done = index.block_range(run.end - 1).end;
        if done - reported >= 4 << 20 || done == image.size {
            progress(Progress::Bytes {
                name: image.name.clone(),
                done,
                total: image.size,
            });
            reported = done;
        }
        block = run.end;
    }
    let actual = hasher.finalize_hex();
    if actual != expected {
        return Err(cairn_bundle::Error::ImageHashMismatch {
            image: image.name.clone(),
            expected: format!("{} {expected}", algorithm.name()),
            actual,
        }
        .into());
    }
    writer
        .flush()
        .map_err(io_err(output_path.display().to_string()))?;
    writer.finish()?;
    Ok(build.outcome)
}

/// Keys the whole blocks in the first `len` bytes of `file`, reading a MiB at a time.
fn scan(
    file: &File,
    len: u64,
    block_size: u32,
    cancel: &AtomicBool,
    mut found: impl FnMut(usize, BlockKey),
) -> io::Result<()> {
    let block_size = block_size as usize;
    let mut buf = vec![0u8; cairn_bundle::COPY_BUF.max(block_size)];
    let mut at = 0u64;
    while at < len {
        if cancel.load(Ordering::Relaxed) {
            return Err(io::Error::other("install cancelled"));
        }
        let want = buf.len().min((len - at) as usize);
        let n = read_at_most(file, &mut buf[..want], at)?;
        let whole = n - n % block_size;
        for (i, block) in buf[..whole].chunks_exact(block_size).enumerate() {
            found((at as usize / block_size) + i, block_key(block));
        }
        if whole < want {
            break; // end of file, or a partial block
        }
        at += whole as u64;
    }
    Ok(())
}

/// Fills `buf` from `offset` until it is full or the file ends.
fn read_at_most(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match file.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// The state of building the image run by run, in order.
struct Build<'a> {
    bundle: &'a BundleSource,
    header: &'a Header,
    image: &'a Image,
    chunked: &'a Chunked,
    index: &'a ChunkIndex,
    plan: &'a Plan,
    /// The plan's runs of chunks to fetch, in order: one Range request each.
    fetch_runs: &'a [Range<usize>],
    output: Option<&'a File>,
    sources: &'a [Option<File>],
    decoder: FrameDecoder,
    /// The image's last bytes before the run being built: what a windowed frame
    /// references.
    recent: RecentBytes,
    frame: Vec<u8>,
    /// The open Range request over the run of chunks being fetched, and the next chunk
    /// it yields.
    run: Option<(Box<dyn Read + Send>, usize)>,
    /// Fetched chunks whose last block is still ahead.
    open: OpenChunks,
    outcome: Outcome,
}

impl Build<'_> {
    /// Puts the blocks of `run` (one run of one chunk: a whole fixed chunk, or part of
    /// a grouped one) into `out`, every block checked against the index. Returns whether
    /// they were read from the disks, as planned, rather than taken from a fetched chunk.
    fn run(&mut self, run: Range<usize>, out: &mut Vec<u8>) -> Result<bool, InstallError> {
        let index = self.index;
        let c = index.chunk_of(run.start);
        out.clear();
        let from_local = !self.open.is_open(c) && !self.plan.fetches(c);
        if from_local && self.read_local(run.clone(), out).is_err() {
            // What was found changed since it was hashed (or cannot be read now): take
            // the chunk from the bundle instead. A fixed chunk is one run, so the bytes
            // before it are still the ones its frame may reference.
            tracing::warn!(image = %self.image.name, chunk = c, "a local block changed since it was found; fetching its chunk");
            out.clear();
        } else if from_local {
            for block in run.clone() {
                match self.plan.actions[block] {
                    Action::Keep => self.outcome.kept += 1,
                    Action::Zeros => self.outcome.zeros += 1,
                    _ => self.outcome.copied += 1,
                }
            }
            return Ok(true);
        }
        if !self.open.is_open(c) {
            let mut chunk = Vec::new();
            self.fetch(c, &mut chunk)?;
            let frame = index.frame(c);
            self.outcome.fetched_chunks += 1;
            self.outcome.fetched_bytes += frame.end - frame.start;
            self.open.open(index, c, chunk, run.start);
        }
        self.open
            .take(index, c, run.clone(), |bytes| out.extend_from_slice(bytes));
        self.outcome.fetched_blocks += run.len();
        Ok(false)
    }

    /// Reads the blocks of `run` from where the plan found them, each checked.
    fn read_local(&self, run: Range<usize>, out: &mut Vec<u8>) -> io::Result<()> {
        let index = self.index;
        for block in run {
            let at = out.len();
            out.resize(at + index.block_len(block), 0);
            let bytes = &mut out[at..];
            match self.plan.actions[block] {
                Action::Zeros => {}
                Action::Keep => self.read_output(block, bytes)?,
                Action::Copy(Found::Output { block: from }) => self.read_output(from, bytes)?,
                Action::Copy(Found::Source { source, offset }) => match &self.sources[source] {
                    Some(file) => file.read_exact_at(bytes, offset)?,
                    None => return Err(io::ErrorKind::NotFound.into()),
                },
                Action::Fetch => unreachable!("a chunk with a fetched block is fetched whole"),
            }
            if !index.holds(block, bytes) {
                return Err(io::Error::other("block does not match the index"));
            }
        }
        Ok(())
    }

    fn read_output(&self, block: usize, bytes: &mut [u8]) -> io::Result<()> {
        let file = self.output.ok_or(io::ErrorKind::NotFound)?;
        file.read_exact_at(bytes, block as u64 * self.index.block_size as u64)
    }

    /// Fetches and decodes chunk `c`'s frame: from the open run when it is the run's next
    /// chunk, else with a new Range request over the run that starts at `c`.
    fn fetch(&mut self, c: usize, out: &mut Vec<u8>) -> Result<(), InstallError> {
        let index = self.index;
        if !matches!(&self.run, Some((_, next)) if *next == c) {
            let at = self.fetch_runs.partition_point(|r| r.end <= c);
            let end = self
                .fetch_runs
                .get(at)
                .filter(|r| r.contains(&c))
                .map_or(c + 1, |r| r.end);
            let part = index.frame(c).start..index.frame(end - 1).end;
            let reader = self
                .bundle
                .payload_part(self.header, &self.chunked.data, part)?;
            self.run = Some((reader, c));
        }
        let (reader, next) = self.run.as_mut().expect("opened above");
        let frame = index.frame(c);
        self.frame.resize((frame.end - frame.start) as usize, 0);
        reader
            .read_exact(&mut self.frame)
            .map_err(|e| InstallError::Download {
                url: format!("chunk {c} of {}", self.image.name),
                source: e,
            })?;
        *next = c + 1;
        index.decode_frame(
            &self.image.name,
            c,
            &self.frame,
            self.recent.bytes(),
            &mut self.decoder,
            out,
        )?;
        Ok(())
    }
}

/// Where chunked installs look for blocks, besides the output: the running slot's copy
/// of the image, and the output's old file when it is replaced rather than overwritten.
pub fn local_copies(
    output: &Target,
    active: &Target,
    active_len: Option<u64>,
) -> Result<Vec<LocalCopy>, TargetError> {
    let len_of = |t: &Target| -> Result<u64, TargetError> {
        let path: PathBuf = target_path(t)?;
        Ok(match File::open(&path) {
            Ok(mut f) => io::Seek::seek(&mut f, io::SeekFrom::End(0)).unwrap_or(0),
            Err(_) => 0,
        })
    };
    let mut copies = vec![LocalCopy {
        target: active.clone(),
        len: match active_len {
            Some(len) => len,
            None => len_of(active)?,
        },
    }];
    if let Target::File(_) = output {
        copies.push(LocalCopy {
            target: output.clone(),
            len: len_of(output)?,
        });
    }
    Ok(copies)
}
