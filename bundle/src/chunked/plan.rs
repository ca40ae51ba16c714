//! Which block of a chunked image comes from where, given what a device found on its
//! disks. Pure bookkeeping: the device does the reading and hashing, the bench counts with
//! the same rules, and both get the same answer.
//!
//! The install writes the image block by block, in order, into its output. When the
//! output is the inactive slot itself (a partition written in place) its old blocks are
//! sources too, with one rule: a block may be copied from output block `j` into block `i`
//! only while `j` still holds what was found there, that is when `j` is never rewritten
//! (it already holds its own target block) or comes after `i` (not written yet).

use std::collections::HashMap;
use std::ops::Range;

use super::{block_key, BlockKey, ChunkIndex};

/// Where a device found a block the image needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    /// At byte `offset` of read-only source `source` (numbered by the caller).
    Source { source: usize, offset: u64 },
    /// At block `block` of the output, which the install overwrites.
    Output { block: usize },
}

/// What the install does for one block.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// The output already holds it (an interrupted install wrote it, or it is unchanged).
    Keep,
    /// All zeros: written without reading anything.
    Zeros,
    /// Read from a source, checked against the index, written.
    Copy(Found),
    /// Taken from its chunk's frame, fetched from the bundle.
    Fetch,
}

struct Wanted {
    found: Option<Found>,
    /// A found output block that is never rewritten: safe for every target block.
    output_kept: bool,
}

/// Collects what a device finds, then makes the [`Plan`].
pub struct Finder<'a> {
    index: &'a ChunkIndex,
    wanted: HashMap<BlockKey, Wanted>,
    in_place: Vec<bool>,
}

impl<'a> Finder<'a> {
    pub fn new(index: &'a ChunkIndex) -> Finder<'a> {
        let mut wanted = HashMap::with_capacity(index.block_count());
        for block in 0..index.block_count() {
            wanted.entry(index.key(block)).or_insert(Wanted {
                found: None,
                output_kept: false,
            });
        }
        Finder {
            index,
            wanted,
            in_place: vec![false; index.block_count()],
        }
    }

    /// Records output block `block`, whose bytes have key `key`. Call this for the
    /// output's blocks before offering any source.
    pub fn offer_output(&mut self, block: usize, key: BlockKey) {
        let kept = block < self.index.block_count() && self.index.key(block) == key;
        if kept {
            self.in_place[block] = true;
        }
        if let Some(w) = self.wanted.get_mut(&key) {
            let better = match w.found {
                None => true,
                // A later block stays readable longer; a kept one for ever.
                Some(Found::Output { block: old }) => !w.output_kept && (kept || block > old),
                Some(Found::Source { .. }) => false,
            };
            if better {
                w.found = Some(Found::Output { block });
                w.output_kept = kept;
            }
        }
    }

    /// Records a block at byte `offset` of read-only source `source`; the first source
    /// offered for a hash wins over any output block.
    pub fn offer_source(&mut self, source: usize, offset: u64, key: BlockKey) {
        if let Some(w) = self.wanted.get_mut(&key) {
            if !matches!(w.found, Some(Found::Source { .. })) {
                w.found = Some(Found::Source { source, offset });
            }
        }
    }

    /// Whether `key` is a block of the image (sources may skip reading the rest).
    pub fn wants(&self, key: BlockKey) -> bool {
        self.wanted.contains_key(&key)
    }

    pub fn plan(self) -> Plan {
        let index = self.index;
        let zeros = block_key(&vec![0u8; index.block_size as usize]);
        let last = index.block_count().checked_sub(1);
        let last_zeros = last.map(|b| block_key(&vec![0u8; index.block_len(b)]));
        let mut actions = Vec::with_capacity(index.block_count());
        let mut fetch = vec![false; index.chunk_count()];
        for block in 0..index.block_count() {
            let key = index.key(block);
            let is_zeros = if Some(block) == last {
                Some(key) == last_zeros
            } else {
                key == zeros
            };
            let w = &self.wanted[&key];
            let action = if self.in_place[block] {
                Action::Keep
            } else if is_zeros {
                Action::Zeros
            } else {
                match w.found {
                    Some(found @ Found::Source { .. }) => Action::Copy(found),
                    Some(found @ Found::Output { block: at }) if w.output_kept || at > block => {
                        Action::Copy(found)
                    }
                    _ => Action::Fetch,
                }
            };
            if action == Action::Fetch {
                fetch[index.chunk_of(block)] = true;
            }
            actions.push(action);
        }
        // A fetched chunk supplies every block it holds that is not kept: nothing else
        // need be read for it.
        for (chunk, _) in fetch.iter().enumerate().filter(|(_, f)| **f) {
            for block in index.blocks_of(chunk) {
                if actions[block] != Action::Keep {
                    actions[block] = Action::Fetch;
                }
            }
        }
        Plan { actions, fetch }
    }
}

/// What the install does for each block, and which chunks it fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub actions: Vec<Action>,
    fetch: Vec<bool>,
}

impl Plan {
    pub fn fetches(&self, chunk: usize) -> bool {
        self.fetch[chunk]
    }

    /// Runs of consecutive chunks to fetch, each one HTTP Range request.
    pub fn fetch_runs(&self) -> Vec<Range<usize>> {
        let mut runs: Vec<Range<usize>> = Vec::new();
        for (chunk, _) in self.fetch.iter().enumerate().filter(|(_, f)| **f) {
            match runs.last_mut() {
                Some(run) if run.end == chunk => run.end += 1,
                _ => runs.push(chunk..chunk + 1),
            }
        }
        runs
    }

    /// Bytes of the data payload this plan fetches.
    pub fn fetch_bytes(&self, index: &ChunkIndex) -> u64 {
        self.fetch_runs()
            .iter()
            .map(|r| index.frame(r.end - 1).end - index.frame(r.start).start)
            .sum()
    }

    /// `blocks` cut where the actions turn from keeping to anything else, or back, each
    /// part with whether its blocks are kept: what an install in place skips.
    pub fn kept_runs(
        &self,
        blocks: Range<usize>,
    ) -> impl Iterator<Item = (Range<usize>, bool)> + '_ {
        let kept = |b: usize| self.actions[b] == Action::Keep;
        let mut at = blocks.start;
        std::iter::from_fn(move || {
            let start = at;
            let keep = kept((start < blocks.end).then_some(start)?);
            at = (start + 1..blocks.end)
                .find(|&b| kept(b) != keep)
                .unwrap_or(blocks.end);
            Some((start..at, keep))
        })
    }

    pub fn count(&self, what: impl Fn(&Action) -> bool) -> usize {
        self.actions.iter().filter(|a| what(a)).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An index over `blocks` (one byte value per 16-byte block), chunks of 2 blocks.
    fn index(blocks: &[u8]) -> ChunkIndex {
        index_of(blocks, 2)
    }

    fn index_of(blocks: &[u8], chunk_blocks: u32) -> ChunkIndex {
        let hashes = blocks
            .iter()
            .map(|&b| crate::chunked::block_hash(&[b; 16]))
            .collect();
        let chunks = blocks.len().div_ceil(chunk_blocks as usize);
        ChunkIndex::new(
            16,
            chunk_blocks,
            0,
            blocks.len() as u64 * 16,
            hashes,
            &vec![10; chunks],
        )
    }

    fn h(b: u8) -> BlockKey {
        block_key(&[b; 16])
    }

    #[test]
    fn kept_zero_copied_and_fetched_blocks() {
        let index = index(&[1, 2, 0, 3, 4, 5]);
        let mut f = Finder::new(&index);
        f.offer_output(0, h(1)); // in place
        f.offer_output(1, h(9)); // old content, not wanted
        f.offer_source(0, 4096, h(3));
        f.offer_source(0, 0, h(4));
        let plan = f.plan();
        use Action::*;
        let src = |offset| Copy(Found::Source { source: 0, offset });
        // Chunk 0 is fetched for block 1, chunk 2 for block 5; block 4 then comes from the
        // fetched frame too.
        assert_eq!(plan.actions, [Keep, Fetch, Zeros, src(4096), Fetch, Fetch]);
        assert_eq!(
            plan.kept_runs(0..6).collect::<Vec<_>>(),
            [(0..1, true), (1..6, false)]
        );
        assert_eq!(plan.kept_runs(1..3).collect::<Vec<_>>(), [(1..3, false)]);
        assert_eq!(plan.kept_runs(0..1).collect::<Vec<_>>(), [(0..1, true)]);
        assert_eq!(plan.kept_runs(2..2).count(), 0);
        assert_eq!(plan.fetch_runs(), [0..1, 2..3]);
        assert_eq!(plan.fetch_bytes(&index), 20);
        assert!(plan.fetches(0) && !plan.fetches(1));
    }

    #[test]
    fn an_output_block_is_copied_only_while_it_still_holds_what_was_found() {
        // Target [A D D B], one block per chunk; the output holds [D A x B]. A comes
        // from output block 1, not written yet when block 0 is; D is only at output
        // block 0, rewritten by then, so it is fetched for blocks 1 and 2. B is in place.
        let index = index_of(&[10, 13, 13, 11], 1);
        let mut f = Finder::new(&index);
        for (block, b) in [13u8, 10, 99, 11].iter().enumerate() {
            f.offer_output(block, h(*b));
        }
        let plan = f.plan();
        use Action::*;
        assert_eq!(
            plan.actions,
            [Copy(Found::Output { block: 1 }), Fetch, Fetch, Keep]
        );
        assert_eq!(plan.fetch_runs(), vec![(1..3)]);
        assert_eq!(
            plan.kept_runs(0..4).collect::<Vec<_>>(),
            [(0..3, false), (3..4, true)]
        );
    }

    #[test]
    fn a_kept_output_block_is_a_source_for_any_later_chunk_and_sources_win() {
        let index = index(&[7, 8, 8, 7]);
        let mut f = Finder::new(&index);
        f.offer_output(0, h(7)); // kept: readable for ever
        f.offer_output(1, h(8)); // kept
        f.offer_source(1, 8192, h(8));
        let plan = f.plan();
        assert_eq!(plan.actions[3], Action::Copy(Found::Output { block: 0 }));
        assert_eq!(
            plan.actions[2],
            Action::Copy(Found::Source {
                source: 1,
                offset: 8192
            })
        );
        assert_eq!(plan.fetch_runs(), Vec::<Range<usize>>::new());
    }
}
