//! The `block-bsdiff` encoder: plans the steps, diffs the changed runs on one thread per
//! core, and writes the operations in target order through one zstd stream.

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::{mpsc, Condvar, Mutex, MutexGuard};

use super::hash_tree::{self, MAX_DATA};
use super::matcher;
use super::plan::{plan, Step};
use super::{
    varint, HashTree, BLOCK_SIZE, MAGIC, MAX_CONTROLS, MAX_SALT, OP_COPY, OP_DIFF, OP_END, OP_TREE,
    WINDOW_LOG,
};

/// Encodes `target` as a delta against `source` at zstd `level`. When the target ends in
/// the dm-verity hash tree `tree` describes (checked here, by computing it), the device
/// is told to compute that tree instead of receiving it.
pub fn encode(
    source: &[u8],
    target: &[u8],
    level: i32,
    tree: Option<HashTree>,
    out: &mut impl Write,
) -> io::Result<()> {
    encode_with(source, target, level, tree, None, &mut |_| {}, out)
}

/// The tree op's bytes and the part of `target` the other operations cover.
fn tree_op<'t>(target: &'t [u8], tree: Option<HashTree>) -> io::Result<(Vec<u8>, &'t [u8])> {
    let mut op = Vec::new();
    let Some(tree) = tree else {
        return Ok((op, target));
    };
    let usable = tree.data_size % u64::from(BLOCK_SIZE) == 0
        && tree.data_size > 0
        && tree.data_size <= MAX_DATA.min(target.len() as u64)
        && tree.salt.len() as u64 <= MAX_SALT;
    let data_size = tree.data_size as usize;
    if !usable || hash_tree::tree(tree.salt, &target[..data_size]) != target[data_size..] {
        return Ok((op, target));
    }
    op.push(OP_TREE);
    varint::write(&mut op, tree.data_size)?;
    varint::write(&mut op, tree.salt.len() as u64)?;
    op.extend_from_slice(tree.salt);
    Ok((op, &target[..data_size]))
}

/// [`encode`] on exactly `threads` diff threads (`None`: one per core), while the calling
/// thread compresses, telling `progress` how many target bytes are encoded as it goes
/// (rising, ending at the target's size). The output does not depend on the thread count.
pub fn encode_with(
    source: &[u8],
    target: &[u8],
    level: i32,
    tree: Option<HashTree>,
    threads: Option<usize>,
    progress: &mut dyn FnMut(u64),
    out: &mut impl Write,
) -> io::Result<()> {
    let target_size = target.len() as u64;
    out.write_all(&MAGIC)?;
    out.write_all(&BLOCK_SIZE.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(source.len() as u64).to_le_bytes())?;
    out.write_all(&(target.len() as u64).to_le_bytes())?;
    let (tree_op, target) = tree_op(target, tree)?;
    let steps = plan(source, target);
    let diffs: Vec<&Step> = steps
        .iter()
        .filter(|s| matches!(s, Step::Diff { .. }))
        .collect();
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, diffs.len().max(1));
    let mut zstd = zstd::stream::write::Encoder::new(out, level.max(MIN_LEVEL))?;
    // zstd's own workers: the output is the same for any number of them.
    zstd.multithread(threads as u32)?;
    zstd.window_log(WINDOW_LOG)?;
    zstd.long_distance_matching(true)?;
    zstd.write_all(&tree_op)?;
    let queue = DiffQueue::new(diffs.len(), threads);
    std::thread::scope(|scope| -> io::Result<()> {
        let (tx, rx) = mpsc::channel::<(usize, io::Result<Vec<u8>>)>();
        for _ in 0..threads {
            let (tx, queue, diffs) = (tx.clone(), &queue, &diffs);
            scope.spawn(move || {
                while let Some(k) = queue.claim() {
                    let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        operation(source, target, diffs[k])
                    }))
                    .unwrap_or_else(|_| Err(io::Error::other("the block-bsdiff matcher panicked")));
                    // A closed channel means the writer stopped on an error.
                    if tx.send((k, made)).is_err() {
                        return;
                    }
                }
            });
        }
        drop(tx);
        let written = (|| -> io::Result<()> {
            let mut made: BTreeMap<usize, io::Result<Vec<u8>>> = BTreeMap::new();
            let mut next_diff = 0;
            let mut done = 0u64;
            for step in &steps {
                if let Step::Copy { .. } = step {
                    zstd.write_all(&operation(source, target, step)?)?;
                    done += step.target_len() as u64;
                    progress(done);
                    continue;
                }
                let op = loop {
                    if let Some(op) = made.remove(&next_diff) {
                        break op?;
                    }
                    let (k, op) = rx
                        .recv()
                        .map_err(|_| io::Error::other("block-bsdiff encoder threads stopped"))?;
                    made.insert(k, op);
                };
                zstd.write_all(&op)?;
                done += step.target_len() as u64;
                progress(done);
                next_diff += 1;
                queue.written(next_diff);
            }
            Ok(())
        })();
        queue.stop();
        written
    })?;
    zstd.write_all(&[OP_END])?;
    zstd.finish()?;
    // The hash tree, if any, is the device's to compute.
    progress(target_size);
    Ok(())
}

/// Hands out diffs to the encoder threads in target order, at most [`LOOKAHEAD`] per
/// thread ahead of the writer: diffs vary from 4 KiB to 4 MiB, so a fixed round-robin
/// would leave a thread idle, and without the bound, finished diffs would pile up.
struct DiffQueue {
    state: Mutex<QueueState>,
    moved: Condvar,
    lookahead: usize,
}

struct QueueState {
    count: usize,
    next: usize,
    written: usize,
    stopped: bool,
}

const LOOKAHEAD: usize = 4;

/// The operation stream holds only what changed, so a strong level costs little time
/// and is worth it: on the Debian pair (`cargo xtask bench delta -- --large`) level 19
/// made 11% fewer bytes than level 12, on the profile's kernel 12%.
pub const MIN_LEVEL: i32 = 19;

impl DiffQueue {
    fn new(count: usize, threads: usize) -> DiffQueue {
        DiffQueue {
            state: Mutex::new(QueueState {
                count,
                next: 0,
                written: 0,
                stopped: false,
            }),
            moved: Condvar::new(),
            lookahead: LOOKAHEAD * threads,
        }
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The next diff to make, waiting while the writer is too far behind; `None` when
    /// all are handed out or the writer stopped.
    fn claim(&self) -> Option<usize> {
        let mut s = self.lock();
        loop {
            if s.stopped || s.next >= s.count {
                return None;
            }
            if s.next < s.written + self.lookahead {
                s.next += 1;
                return Some(s.next - 1);
            }
            s = self.moved.wait(s).unwrap_or_else(|e| e.into_inner());
        }
    }

    fn written(&self, diffs: usize) {
        self.lock().written = diffs;
        self.moved.notify_all();
    }

    fn stop(&self) {
        self.lock().stopped = true;
        self.moved.notify_all();
    }
}

/// The bytes of one step's operations (a diff with too many controls becomes several).
fn operation(source: &[u8], target: &[u8], step: &Step) -> io::Result<Vec<u8>> {
    let mut op = Vec::new();
    match step {
        Step::Copy { source, len } => {
            op.push(OP_COPY);
            varint::write(&mut op, *source as u64)?;
            varint::write(&mut op, *len as u64)?;
        }
        Step::Diff {
            window,
            target: range,
        } => {
            diff(
                &mut op,
                window.start,
                &source[window.clone()],
                &target[range.clone()],
            )?;
        }
    }
    Ok(op)
}

fn diff(op: &mut Vec<u8>, window_start: usize, window: &[u8], new: &[u8]) -> io::Result<()> {
    let (controls, adds, inserts) = matcher::diff(window, new);
    if controls.len() > MAX_CONTROLS && new.len() > 1 {
        // Rare (a run of near-random changes): two halves need fewer controls each.
        let half = new.len() / 2;
        diff(op, window_start, window, &new[..half])?;
        return diff(op, window_start, window, &new[half..]);
    }
    op.push(OP_DIFF);
    varint::write(op, window_start as u64)?;
    varint::write(op, window.len() as u64)?;
    varint::write(op, new.len() as u64)?;
    varint::write(op, controls.len() as u64)?;
    for c in &controls {
        varint::write(op, c.add)?;
        varint::write(op, c.insert)?;
        varint::write_signed(op, c.seek)?;
    }
    write_add_runs(op, &adds)?;
    op.extend_from_slice(&inserts);
    Ok(())
}

/// Writes add bytes as runs of zeros, each followed by the non-zero bytes after it.
/// Add bytes are new minus old over matched bytes, so mostly zero, and there are many:
/// the files that changed between the Debian pair's images are 130 MB, nearly all of it
/// matched. Left as they were, they filled zstd's window with zeros; as runs, zstd sees the few bytes that changed from many diffs at once. On the
/// Debian pair (`cargo xtask bench delta -- --large`, uncompressed) that made the delta
/// 1.7% smaller (3.85 → 3.78 MB) and the encoder 30% faster. Letting a literal span up
/// to 1 or 3 zeros made it bigger (3.79, 3.81 MB); so did all run lengths of a diff
/// before all its literal bytes (3.79 MB).
fn write_add_runs(op: &mut Vec<u8>, adds: &[u8]) -> io::Result<()> {
    let mut at = 0;
    while at < adds.len() {
        let zeros = adds[at..].iter().take_while(|&&b| b == 0).count();
        let start = at + zeros;
        let literal = adds[start..].iter().take_while(|&&b| b != 0).count();
        varint::write(op, zeros as u64)?;
        varint::write(op, literal as u64)?;
        op.extend_from_slice(&adds[start..start + literal]);
        at = start + literal;
    }
    Ok(())
}
