//! Version 3 of the chunk index: each chunk is runs of blocks from anywhere in the image.
//! Reading them is where a bad index must be caught, since a device sizes its buffers
//! and orders its fetches by them.

use std::ops::Range;

use super::MAX_OPEN_CHUNKS;

/// Reads version 3's run counts and runs (`bytes`: all that follows the frame lengths)
/// into each chunk's runs, and checks them: every block in exactly one chunk, each
/// chunk's runs in image order with at most `most` blocks, chunks in the order of their
/// first block (the order a device needs them), and at most [`MAX_OPEN_CHUNKS`] chunks
/// interleaved anywhere (what bounds a device's memory).
pub(super) fn parse(
    bytes: &[u8],
    chunks: usize,
    blocks: usize,
    most: u32,
) -> Result<Vec<Vec<Range<u32>>>, String> {
    let u32_at = |at: usize| u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4"));
    if bytes.len() < chunks * 4 {
        return Err(format!("the run counts of {chunks} chunks are cut short"));
    }
    let counts: Vec<usize> = (0..chunks).map(|c| u32_at(c * 4) as usize).collect();
    let total: usize = counts.iter().sum();
    if total > blocks || bytes.len() != chunks * 4 + total * 8 {
        return Err(format!(
            "{} bytes of runs for {total} runs over {blocks} blocks",
            bytes.len() - chunks * 4
        ));
    }
    let mut covered = vec![false; blocks];
    // +1 where a chunk's first block is, -1 after its last: the open chunks by position.
    let mut opens = vec![0i32; blocks + 1];
    let mut groups = Vec::with_capacity(chunks);
    let mut at = chunks * 4;
    let mut previous_first: Option<u32> = None;
    for (c, &count) in counts.iter().enumerate() {
        if count == 0 {
            return Err(format!("chunk {c} has no runs"));
        }
        let mut runs: Vec<Range<u32>> = Vec::with_capacity(count);
        let mut held = 0u32;
        for _ in 0..count {
            let (start, len) = (u32_at(at), u32_at(at + 4));
            at += 8;
            let end = start as u64 + len as u64;
            if len == 0 || end > blocks as u64 {
                return Err(format!(
                    "chunk {c}: a run of {len} blocks from block {start}, of {blocks}"
                ));
            }
            if runs.last().is_some_and(|r| r.end > start) {
                return Err(format!("chunk {c}: runs out of order at block {start}"));
            }
            held = held.saturating_add(len);
            runs.push(start..end as u32);
        }
        if held > most {
            return Err(format!("chunk {c} holds {held} blocks, over {most}"));
        }
        let first = runs[0].start;
        if previous_first.is_some_and(|p| p >= first) {
            return Err(format!("chunk {c} starts before the chunk ahead of it"));
        }
        previous_first = Some(first);
        for run in &runs {
            for b in run.clone() {
                if std::mem::replace(&mut covered[b as usize], true) {
                    return Err(format!("block {b} is in two chunks"));
                }
            }
        }
        opens[first as usize] += 1;
        opens[runs.last().expect("one run at least").end as usize] -= 1;
        groups.push(runs);
    }
    if let Some(b) = covered.iter().position(|c| !c) {
        return Err(format!("block {b} is in no chunk"));
    }
    let mut open = 0;
    for (b, delta) in opens.iter().enumerate() {
        open += delta;
        if open as usize > MAX_OPEN_CHUNKS {
            return Err(format!(
                "{open} chunks interleave at block {b}, over {MAX_OPEN_CHUNKS}"
            ));
        }
    }
    Ok(groups)
}
