//! The decoded chunks a build in image order holds until it has handed on their last
//! block: one shared rule for the device, the builder's full check and the tests.

use std::collections::HashMap;
use std::ops::Range;

use super::ChunkIndex;

/// Decoded chunks whose last block is still ahead while an image is built in block
/// order: one at a time for fixed chunks, at most [`super::MAX_OPEN_CHUNKS`] for grouped
/// ones (the index parser checks that bound).
///
/// A chunk's runs are taken in image order, so each open chunk only needs a cursor: the
/// bytes of its next run start where the last run ended, and the chunk closes when the
/// cursor reaches its end.
#[derive(Debug, Default)]
pub struct OpenChunks {
    /// Each open chunk's decoded bytes and how many of them are handed on.
    open: HashMap<usize, (Vec<u8>, usize)>,
}

impl OpenChunks {
    pub fn new() -> OpenChunks {
        OpenChunks::default()
    }

    pub fn is_open(&self, chunk: usize) -> bool {
        self.open.contains_key(&chunk)
    }

    /// How many chunks are open.
    pub fn len(&self) -> usize {
        self.open.len()
    }

    pub fn is_empty(&self) -> bool {
        self.open.is_empty()
    }

    /// Opens chunk `chunk` from its decoded bytes (as [`ChunkIndex::decode_frame`] gave
    /// them), to be taken from block `from` on: its first block, or a later one when the
    /// chunk's earlier blocks came from elsewhere.
    pub fn open(&mut self, index: &ChunkIndex, chunk: usize, decoded: Vec<u8>, from: usize) {
        debug_assert_eq!(index.chunk_of(from), chunk);
        let at = index.offset_in_chunk(from);
        self.open.insert(chunk, (decoded, at));
    }

    /// Hands the bytes of `run` to `take`: the next run of open chunk `chunk`, in image
    /// order. The chunk closes once its last block is handed on.
    ///
    /// # Panics
    /// If the chunk is not open or `run` is longer than what is left of it: the caller
    /// walks the index's runs in order, so either is a bug, not bad input.
    pub fn take<R>(
        &mut self,
        index: &ChunkIndex,
        chunk: usize,
        run: Range<usize>,
        take: impl FnOnce(&[u8]) -> R,
    ) -> R {
        let (bytes, done) = self
            .open
            .get_mut(&chunk)
            .expect("a chunk is opened before its runs are taken");
        let len =
            (index.block_range(run.end - 1).end - index.block_range(run.start).start) as usize;
        let from = *done;
        *done += len;
        let answer = take(&bytes[from..*done]);
        if *done == bytes.len() {
            self.open.remove(&chunk);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chunked::{block_hash, block_key};

    /// Six 16-byte blocks, block b filled with byte b; chunk 0 holds blocks 0, 1 and 4,
    /// chunk 1 blocks 2, 3 and 5.
    fn grouped() -> ChunkIndex {
        let keys = (0..6u8).map(|b| block_key(&[b; 16])).collect();
        let chunks = [vec![0..2, 4..5], vec![2..4, 5..6]];
        let hashes = vec![
            block_hash(&decoded(&[0, 1, 4])),
            block_hash(&decoded(&[2, 3, 5])),
        ];
        ChunkIndex::from_groups(16, 96, keys, hashes, &chunks, &[1, 1], Default::default())
    }

    fn decoded(blocks: &[u8]) -> Vec<u8> {
        blocks.iter().flat_map(|&b| [b; 16]).collect()
    }

    #[test]
    fn a_chunk_hands_on_its_runs_in_order_and_closes_after_its_last() {
        let index = grouped();
        let mut open = OpenChunks::new();
        open.open(&index, 0, decoded(&[0, 1, 4]), 0);
        open.open(&index, 1, decoded(&[2, 3, 5]), 2);
        assert_eq!(open.take(&index, 0, 0..2, <[u8]>::to_vec), decoded(&[0, 1]));
        assert_eq!(open.take(&index, 1, 2..4, <[u8]>::to_vec), decoded(&[2, 3]));
        assert_eq!(open.len(), 2);
        assert_eq!(open.take(&index, 0, 4..5, <[u8]>::to_vec), decoded(&[4]));
        assert!(!open.is_open(0) && open.is_open(1));
        assert_eq!(open.take(&index, 1, 5..6, <[u8]>::to_vec), decoded(&[5]));
        assert!(open.is_empty());
    }

    #[test]
    fn a_chunk_opened_part_way_starts_at_that_block() {
        // Chunk 1's first run came from elsewhere; it is fetched for its last block.
        let index = grouped();
        let mut open = OpenChunks::new();
        open.open(&index, 1, decoded(&[2, 3, 5]), 5);
        assert_eq!(open.take(&index, 1, 5..6, <[u8]>::to_vec), decoded(&[5]));
        assert!(open.is_empty());
    }
}
