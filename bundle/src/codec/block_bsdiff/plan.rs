//! Which target blocks the source already holds, and which source window each changed
//! run is diffed against. Pure: no I/O, no compression.

use std::collections::HashMap;
use std::ops::Range;

use super::anchors::SourceAnchors;
use super::{BLOCK_SIZE, MAX_DIFF_TARGET};

const BLOCK: usize = BLOCK_SIZE as usize;
/// Source bytes a diff's window reaches past a run's expected place, for data that moved
/// a little.
const MARGIN: usize = 256 << 10;
/// The same for each piece of a run cut into several: a long run is a big file such as
/// a kernel, whose code moves further. Measured on the profile's kernel pair (26 MB,
/// level 12): 256 KiB 1.45 MB, 1 MiB 1.31 MB, 4 MiB 1.30 MB at twice the time.
const SPLIT_MARGIN: usize = 1 << 20;
/// Copy runs shorter than this many blocks (256 KiB) between two changed runs are diffed
/// with them. On the Debian pair (`cargo xtask bench delta -- --large`, uncompressed):
/// no merging 4.16 MB in 50 s, 16 blocks 3.91 MB, 32 and 64 blocks 3.85 MB, 256 blocks
/// 3.86 MB. Merging only copies whose source lies near the run's was worse (4.04 MB).
const MERGE_COPIES: usize = 64;
/// The largest source window of one diff: the encoder's suffix array takes 4 bytes per
/// window byte, per thread.
pub const MAX_WINDOW: usize = 4 * MAX_DIFF_TARGET;

/// One operation of the delta, before its bytes are made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The next `len` target bytes are `source[source..source + len]`.
    Copy { source: usize, len: usize },
    /// The target bytes `target` are diffed against `source[window]`.
    Diff {
        window: Range<usize>,
        target: Range<usize>,
    },
}

impl Step {
    /// How many target bytes the step produces.
    pub fn target_len(&self) -> usize {
        match self {
            Step::Copy { len, .. } => *len,
            Step::Diff { target, .. } => target.len(),
        }
    }
}

/// Plans `target` as copies of source blocks and diffs of what is left, in target order.
pub fn plan(source: &[u8], target: &[u8]) -> Vec<Step> {
    let found = find_blocks(source, target);
    let anchors = SourceAnchors::new(source);
    let blocks = found.len();
    let mut steps = Vec::new();
    let mut i = 0;
    while i < blocks {
        let mut run_end = (i + 1..blocks)
            .find(|&j| run_breaks(&found, i, j))
            .unwrap_or(blocks);
        if found[i].is_none() {
            run_end = merge_short_copies(&found, run_end);
        }
        let target_range = i * BLOCK..(run_end * BLOCK).min(target.len());
        match found[i] {
            Some(first) => steps.push(Step::Copy {
                source: first * BLOCK,
                len: target_range.len(),
            }),
            None => {
                let before = i.checked_sub(1).map(|p| found[p].map(|s| (s + 1) * BLOCK));
                let after = found.get(run_end).map(|s| s.map(|s| s * BLOCK));
                let window = expected_window(source.len(), &target_range, before, after);
                for (piece, gap) in split_diff(window, target_range, source.len()) {
                    let window = placed_window(&anchors, target, &piece, gap, source.len());
                    steps.push(Step::Diff {
                        window,
                        target: piece,
                    });
                }
            }
        }
        i = run_end;
    }
    steps
}

/// Where a changed run that ends at `end` ends once copies shorter than
/// [`MERGE_COPIES`] blocks between it and the next changed run are taken into it. A diff
/// matches those blocks at little cost, and a few large diffs sort far less window than
/// many small ones, each with its own margins.
fn merge_short_copies(found: &[Option<usize>], mut end: usize) -> usize {
    loop {
        let copies_end = (end..found.len())
            .find(|&j| found[j].is_none())
            .unwrap_or(found.len());
        if copies_end == found.len() || copies_end - end >= MERGE_COPIES {
            return end;
        }
        end = (copies_end..found.len())
            .find(|&j| found[j].is_some())
            .unwrap_or(found.len());
    }
}

/// For each target block (the last, partial one included), a source block with the same
/// bytes: the one after the previous block's source when that one matches, so that runs
/// stay long, else the first such block in the source.
fn find_blocks(source: &[u8], target: &[u8]) -> Vec<Option<usize>> {
    let mut index: HashMap<[u8; 16], usize> = HashMap::new();
    for (n, block) in source.chunks_exact(BLOCK).enumerate() {
        index.entry(key(block)).or_insert(n);
    }
    let block_at = |n: usize| source.get(n * BLOCK..(n + 1) * BLOCK);
    let mut found: Vec<Option<usize>> = Vec::with_capacity(target.len().div_ceil(BLOCK));
    for block in target.chunks(BLOCK) {
        if block.len() < BLOCK {
            found.push(None);
            continue;
        }
        let next = found.last().copied().flatten().map(|p| p + 1);
        let hit = next.filter(|&n| block_at(n) == Some(block)).or_else(|| {
            index
                .get(&key(block))
                .copied()
                .filter(|&n| block_at(n) == Some(block))
        });
        found.push(hit);
    }
    found
}

fn key(block: &[u8]) -> [u8; 16] {
    let hash = blake3::hash(block);
    let mut key = [0u8; 16];
    key.copy_from_slice(&hash.as_bytes()[..16]);
    key
}

/// Whether block `j` starts a new step after the run that starts at block `i`.
fn run_breaks(found: &[Option<usize>], i: usize, j: usize) -> bool {
    match (found[i], found[j]) {
        (Some(first), Some(s)) => s != first + (j - i),
        (None, None) => false,
        _ => true,
    }
}

/// Where the old version of a changed run probably is: between the source blocks that
/// the unchanged target blocks on either side came from, when that gap is not much
/// larger than the run; else next to whichever neighbour is known.
fn expected_window(
    source_len: usize,
    run: &Range<usize>,
    before: Option<Option<usize>>,
    after: Option<Option<usize>>,
) -> Range<usize> {
    let before = before.unwrap_or(Some(0));
    let after = after.unwrap_or(Some(source_len));
    let slack = run.len() + MARGIN;
    let window = match (before, after) {
        (Some(a), Some(b)) if b >= a && b - a <= 4 * run.len() + MARGIN => a..b,
        (Some(a), _) => a..a.saturating_add(slack),
        (None, Some(b)) => b.saturating_sub(slack)..b,
        (None, None) => run.start.saturating_sub(MARGIN)..run.end.saturating_add(MARGIN),
    };
    window.start.min(source_len)..window.end.min(source_len)
}

/// Splits a changed run into pieces of at most [`MAX_DIFF_TARGET`] bytes, each with the
/// part of `window` at the same relative place (widened by [`SPLIT_MARGIN`] when the run
/// needs several pieces).
fn split_diff(
    window: Range<usize>,
    run: Range<usize>,
    source_len: usize,
) -> Vec<(Range<usize>, Range<usize>)> {
    if run.len() <= MAX_DIFF_TARGET {
        return vec![(run, window)];
    }
    let scale = window.len() as f64 / run.len() as f64;
    let at = |t: usize| window.start + ((t - run.start) as f64 * scale) as usize;
    let mut pieces = Vec::new();
    let mut start = run.start;
    while start < run.end {
        let end = (start + MAX_DIFF_TARGET).min(run.end);
        let hi = (at(end) + SPLIT_MARGIN).min(source_len);
        let lo = at(start).saturating_sub(SPLIT_MARGIN).min(hi);
        pieces.push((start..end, lo..hi));
        start = end;
    }
    pieces
}

/// The window a piece is diffed against: `gap` (from its neighbours) unless the piece's
/// content says its old version is mostly elsewhere ([`SourceAnchors`]); then the
/// source around where its content points, widened by [`MARGIN`]. Capped at
/// [`MAX_WINDOW`].
fn placed_window(
    anchors: &SourceAnchors,
    target: &[u8],
    piece: &Range<usize>,
    gap: Range<usize>,
    source_len: usize,
) -> Range<usize> {
    let cap = |w: Range<usize>| w.start..w.end.min(w.start + MAX_WINDOW);
    let (inside, found) = anchors.votes_inside(target, piece, &gap);
    if inside * 2 >= found {
        return cap(gap);
    }
    let Some(offset) = anchors.offset(target, piece) else {
        return cap(gap);
    };
    let shifted = |t: usize| (t as i64 + offset).clamp(0, source_len as i64) as usize;
    let lo = shifted(piece.start).saturating_sub(MARGIN);
    let hi = (shifted(piece.end) + MARGIN).min(source_len);
    cap(lo.min(hi)..hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blocks(tags: &[u8]) -> Vec<u8> {
        tags.iter().flat_map(|&t| vec![t; BLOCK]).collect()
    }

    #[test]
    fn unchanged_blocks_are_copied_and_a_changed_run_is_diffed_against_the_gap_it_left() {
        let source = blocks(&[1, 2, 3, 4, 5, 6]);
        let target = blocks(&[1, 2, 9, 9, 5, 6, 3]);
        let steps = plan(&source, &target);
        assert_eq!(
            steps,
            vec![
                Step::Copy {
                    source: 0,
                    len: 2 * BLOCK
                },
                Step::Diff {
                    window: 2 * BLOCK..4 * BLOCK,
                    target: 2 * BLOCK..4 * BLOCK
                },
                Step::Copy {
                    source: 4 * BLOCK,
                    len: 2 * BLOCK
                },
                Step::Copy {
                    source: 2 * BLOCK,
                    len: BLOCK
                },
            ]
        );
    }

    #[test]
    fn a_partial_last_block_is_diffed_and_long_runs_are_split() {
        let source = blocks(&[1, 2]);
        let mut target = blocks(&[1, 2]);
        target.extend_from_slice(&[7; 100]);
        let steps = plan(&source, &target);
        assert_eq!(steps.len(), 2);
        assert!(
            matches!(&steps[1], Step::Diff { target, .. } if *target == (2 * BLOCK..2 * BLOCK + 100))
        );

        let big: Vec<u8> = (0..(MAX_DIFF_TARGET * 2 + BLOCK))
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let steps = plan(&[], &big);
        let covered: usize = steps
            .iter()
            .map(|s| match s {
                Step::Diff { target, window } => {
                    assert!(target.len() <= MAX_DIFF_TARGET && window.len() <= MAX_WINDOW);
                    target.len()
                }
                Step::Copy { .. } => panic!("nothing to copy from an empty source"),
            })
            .sum();
        assert_eq!(covered, big.len());
    }
}
