//! Where a changed piece of the target came from, found by its content.
//!
//! Unchanged neighbours say where a changed file's old version is only when they are
//! themselves in place; a block that happens to match somewhere else (a zero block, a
//! table two modules share) sends the neighbour rule to an unrelated place. So both
//! images are cut at content-defined points (a gear rolling hash over the last 64 bytes,
//! about every 256 bytes), the source's points are indexed by that hash, and each point
//! of a target piece votes for the offset between its place and the same content's place
//! in the source. The median vote places the piece's window. Hashes seen more than once
//! in the source (zero runs, padding) do not vote.

use std::collections::HashMap;
use std::ops::Range;

/// Cut where the hash's low bits are zero: every 256 bytes on average.
const MASK: u64 = 0xff;
/// Bytes after a cut before the next may be: keeps zero runs from cutting everywhere.
const MIN_GAP: usize = 32;
/// Fewer votes than this say nothing.
const MIN_VOTES: usize = 4;
const AMBIGUOUS: usize = usize::MAX;

/// The source's cut points, by hash.
pub struct SourceAnchors {
    at: HashMap<u64, usize>,
}

impl SourceAnchors {
    pub fn new(source: &[u8]) -> SourceAnchors {
        let mut at = HashMap::new();
        cut_points(source, |position, hash| {
            at.entry(hash)
                .and_modify(|p| *p = AMBIGUOUS)
                .or_insert(position);
        });
        SourceAnchors { at }
    }

    /// The source offset minus the target offset most of `piece`'s cut points agree on,
    /// or `None` when too few of them are found in the source.
    pub fn offset(&self, target: &[u8], piece: &Range<usize>) -> Option<i64> {
        let mut votes = Vec::new();
        cut_points(&target[piece.clone()], |position, hash| {
            if let Some(&p) = self.at.get(&hash).filter(|&&p| p != AMBIGUOUS) {
                votes.push(p as i64 - (piece.start + position) as i64);
            }
        });
        if votes.len() < MIN_VOTES {
            return None;
        }
        let middle = votes.len() / 2;
        Some(*votes.select_nth_unstable(middle).1)
    }

    /// How many of `piece`'s cut points are found inside `window` of the source.
    pub fn votes_inside(
        &self,
        target: &[u8],
        piece: &Range<usize>,
        window: &Range<usize>,
    ) -> (usize, usize) {
        let (mut inside, mut found) = (0, 0);
        cut_points(&target[piece.clone()], |_, hash| {
            if let Some(&p) = self.at.get(&hash).filter(|&&p| p != AMBIGUOUS) {
                found += 1;
                inside += usize::from(window.contains(&p));
            }
        });
        (inside, found)
    }
}

/// Calls `cut(position, hash)` at each content-defined cut point of `data` (the position
/// just after the bytes the hash covers).
fn cut_points(data: &[u8], mut cut: impl FnMut(usize, u64)) {
    let mut hash = 0u64;
    let mut last = 0usize;
    for (i, &byte) in data.iter().enumerate() {
        hash = (hash << 1).wrapping_add(GEAR[byte as usize]);
        if i >= last + MIN_GAP && i >= 64 && hash & MASK == 0 {
            cut(i + 1, hash);
            last = i;
        }
    }
}

/// 256 fixed pseudo-random words (splitmix64 from 0), so both sides cut alike.
static GEAR: [u64; 256] = gear();

const fn gear() -> [u64; 256] {
    let mut table = [0u64; 256];
    let mut state = 0u64;
    let mut i = 0;
    while i < 256 {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        table[i] = z ^ (z >> 31);
        i += 1;
    }
    table
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_testkit::image_bytes;

    #[test]
    fn a_piece_is_placed_where_its_content_moved_to() {
        let source = image_bytes(1 << 20, 1);
        // The target holds source bytes 300_000.. at 700_000, slightly edited.
        let mut target = image_bytes(1 << 20, 2);
        target[700_000..900_000].copy_from_slice(&source[300_000..500_000]);
        for i in (700_000..900_000).step_by(997) {
            target[i] ^= 0x55;
        }
        let anchors = SourceAnchors::new(&source);
        assert_eq!(anchors.offset(&target, &(700_000..900_000)), Some(-400_000));
        assert_eq!(anchors.offset(&target, &(0..100_000)), None);
        let (inside, found) =
            anchors.votes_inside(&target, &(700_000..900_000), &(300_000..500_000));
        assert!(found > 100 && inside == found, "{inside} of {found}");
    }
}
