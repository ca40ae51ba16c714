//! The `block-bsdiff` encoder: plans the steps, diffs the changed runs on one thread per
//! core, and writes the operations in target order through one zstd stream.

use std::io::{self, Write};
use std::sync::mpsc;

use super::hash_tree::{self, MAX_DATA};
use super::plan::{plan, Step};
use super::{
    invalid, varint, HashTree, BLOCK_SIZE, MAGIC, MAX_CONTROLS, MAX_SALT, OP_COPY, OP_DIFF, OP_END,
    OP_TREE, WINDOW_LOG,
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
    encode_with_threads(source, target, level, tree, None, out)
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

/// [`encode`] on exactly `threads` diff threads (`None`: one per core). The output does
/// not depend on the thread count.
pub fn encode_with_threads(
    source: &[u8],
    target: &[u8],
    level: i32,
    tree: Option<HashTree>,
    threads: Option<usize>,
    out: &mut impl Write,
) -> io::Result<()> {
    out.write_all(&MAGIC)?;
    out.write_all(&BLOCK_SIZE.to_le_bytes())?;
    out.write_all(&0u32.to_le_bytes())?;
    out.write_all(&(source.len() as u64).to_le_bytes())?;
    out.write_all(&(target.len() as u64).to_le_bytes())?;
    let (tree_op, target) = tree_op(target, tree)?;
    let steps = plan(source, target);
    let threads = threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
        .clamp(1, steps.len().max(1));
    let mut zstd = zstd::stream::write::Encoder::new(out, level)?;
    zstd.window_log(WINDOW_LOG)?;
    zstd.long_distance_matching(true)?;
    zstd.write_all(&tree_op)?;
    std::thread::scope(|scope| -> io::Result<()> {
        // Worker `w` makes the operations of steps w, w + threads, ...; reading the
        // workers' channels round-robin yields them in target order with at most one
        // queued per worker, so memory stays bounded by the thread count.
        let mut queues = Vec::with_capacity(threads);
        for first in 0..threads {
            let (tx, rx) = mpsc::sync_channel::<io::Result<Vec<u8>>>(1);
            let steps = &steps;
            scope.spawn(move || {
                for step in steps.iter().skip(first).step_by(threads) {
                    let result = operation(source, target, step);
                    let failed = result.is_err();
                    // A closed channel means the writer stopped on an error.
                    if tx.send(result).is_err() || failed {
                        return;
                    }
                }
            });
            queues.push(rx);
        }
        for i in 0..steps.len() {
            let op = queues[i % threads]
                .recv()
                .map_err(|_| io::Error::other("a block-bsdiff encoder thread stopped"))??;
            zstd.write_all(&op)?;
        }
        Ok(())
    })?;
    zstd.write_all(&[OP_END])?;
    zstd.finish()?;
    Ok(())
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

/// One control of a bsdiff patch: `add` bytes of window plus add bytes, then `insert`
/// literal bytes, then the window cursor moves by `seek` more.
struct Control {
    add: u64,
    insert: u64,
    seek: i64,
}

fn diff(op: &mut Vec<u8>, window_start: usize, window: &[u8], new: &[u8]) -> io::Result<()> {
    let mut patch = Vec::with_capacity(new.len() + 1024);
    if window.is_empty() {
        patch.extend_from_slice(&0u64.to_le_bytes());
        patch.extend_from_slice(&(new.len() as u64).to_le_bytes());
        patch.extend_from_slice(&0u64.to_le_bytes());
        patch.extend_from_slice(new);
    } else {
        bsdiff::diff(window, new, &mut patch)?;
    }
    let (controls, adds, inserts) = split_patch(&patch)?;
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
    op.extend_from_slice(&adds);
    op.extend_from_slice(&inserts);
    Ok(())
}

/// Splits the `bsdiff` crate's patch (per control: add, insert and seek as 8-byte
/// numbers, seek in sign-magnitude, then the add bytes, then the insert bytes) into its
/// controls and the two byte streams.
fn split_patch(patch: &[u8]) -> io::Result<(Vec<Control>, Vec<u8>, Vec<u8>)> {
    let (mut controls, mut adds, mut inserts) = (Vec::new(), Vec::new(), Vec::new());
    let mut rest = patch;
    let number = |bytes: &[u8]| u64::from_le_bytes(bytes.try_into().expect("8 bytes"));
    while !rest.is_empty() {
        let header = rest
            .get(..24)
            .ok_or_else(|| invalid("bsdiff patch ends inside a control"))?;
        let add = number(&header[0..8]);
        let insert = number(&header[8..16]);
        let raw_seek = number(&header[16..24]);
        let magnitude = (raw_seek & !(1 << 63)) as i64;
        let seek = if raw_seek >> 63 == 1 {
            -magnitude
        } else {
            magnitude
        };
        let (add_len, insert_len) = (add as usize, insert as usize);
        let body = &rest[24..];
        if body.len() < add_len.saturating_add(insert_len) {
            return Err(invalid("bsdiff patch ends inside a control's bytes"));
        }
        adds.extend_from_slice(&body[..add_len]);
        inserts.extend_from_slice(&body[add_len..add_len + insert_len]);
        rest = &body[add_len + insert_len..];
        controls.push(Control { add, insert, seek });
    }
    Ok((controls, adds, inserts))
}
