//! bsdiff's matching (Colin Percival's algorithm), over a suffix array made by
//! divsufsort: the same controls the `bsdiff` crate would find, several times faster,
//! because suffix sorting is almost all of bsdiff's time and divsufsort sorts far faster
//! than bsdiff's qsufsort (measured on the Debian pair, see `encode.rs`).
//!
//! The scan walks the new bytes. At each place it finds the longest match anywhere in
//! the old bytes (binary search in the suffix array), and accepts it when it beats, by
//! more than 8 bytes, simply continuing the previous match at its old offset with a few
//! bytes different. Between accepted matches, the previous match is extended forward and
//! the next one backward as far as at least half their bytes agree: those bytes become
//! add bytes (new minus old, mostly zero), the rest insert bytes.

use std::cmp::Ordering;

/// One control: `add` bytes of old plus add bytes, then `insert` literal bytes, then the
/// old cursor moves by `seek` more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Control {
    pub add: u64,
    pub insert: u64,
    pub seek: i64,
}

/// The controls, add bytes and insert bytes that rebuild `new` from `old`. `old` must be
/// shorter than 2 GiB (the suffix array's index type).
pub fn diff(old: &[u8], new: &[u8]) -> (Vec<Control>, Vec<u8>, Vec<u8>) {
    let mut suffixes = vec![0i32; old.len()];
    if !old.is_empty() {
        divsufsort::sort_in_place(old, &mut suffixes);
    }
    let (mut controls, mut adds, mut inserts) = (Vec::new(), Vec::new(), Vec::new());
    let (old_len, new_len) = (old.len() as isize, new.len() as isize);
    let at = |s: &[u8], i: isize| s[i as usize];
    let (mut scan, mut len, mut pos) = (0isize, 0isize, 0isize);
    let (mut last_scan, mut last_pos, mut last_offset) = (0isize, 0isize, 0isize);
    while scan < new_len {
        let mut old_score = 0isize;
        scan += len;
        let mut scsc = scan;
        while scan < new_len {
            (pos, len) = longest_match(&suffixes, old, &new[scan as usize..]);
            while scsc < scan + len {
                if scsc + last_offset < old_len && at(old, scsc + last_offset) == at(new, scsc) {
                    old_score += 1;
                }
                scsc += 1;
            }
            // bsdiff's margin; 4 and 16 both made the Debian pair's delta 4-6% bigger.
            if (len == old_score && len != 0) || len > old_score + 8 {
                break;
            }
            if scan + last_offset < old_len && at(old, scan + last_offset) == at(new, scan) {
                old_score -= 1;
            }
            scan += 1;
        }
        if len == old_score && scan != new_len {
            continue;
        }
        // Extend the previous match forward while at least half its bytes agree.
        let (mut score, mut best, mut forward) = (0isize, 0isize, 0isize);
        let mut i = 0;
        while last_scan + i < scan && last_pos + i < old_len {
            if at(old, last_pos + i) == at(new, last_scan + i) {
                score += 1;
            }
            i += 1;
            if score * 2 - i > best * 2 - forward {
                best = score;
                forward = i;
            }
        }
        // And the next match backward.
        let mut backward = 0isize;
        if scan < new_len {
            let (mut score, mut best) = (0isize, 0isize);
            let mut i = 1;
            while scan >= last_scan + i && pos >= i {
                if at(old, pos - i) == at(new, scan - i) {
                    score += 1;
                }
                if score * 2 - i > best * 2 - backward {
                    best = score;
                    backward = i;
                }
                i += 1;
            }
        }
        // Where the two extensions overlap, split them where the most bytes agree.
        if last_scan + forward > scan - backward {
            let overlap = (last_scan + forward) - (scan - backward);
            let (mut score, mut best, mut split) = (0isize, 0isize, 0isize);
            for i in 0..overlap {
                if at(new, last_scan + forward - overlap + i)
                    == at(old, last_pos + forward - overlap + i)
                {
                    score += 1;
                }
                if at(new, scan - backward + i) == at(old, pos - backward + i) {
                    score -= 1;
                }
                if score > best {
                    best = score;
                    split = i + 1;
                }
            }
            forward += split - overlap;
            backward -= split;
        }
        for i in 0..forward {
            adds.push(at(new, last_scan + i).wrapping_sub(at(old, last_pos + i)));
        }
        let insert_start = last_scan + forward;
        let insert_end = scan - backward;
        inserts.extend_from_slice(&new[insert_start as usize..insert_end as usize]);
        controls.push(Control {
            add: forward as u64,
            insert: (insert_end - insert_start) as u64,
            seek: ((pos - backward) - (last_pos + forward)) as i64,
        });
        last_scan = scan - backward;
        last_pos = pos - backward;
        last_offset = pos - scan;
    }
    (controls, adds, inserts)
}

/// The old position and length of the longest prefix of `new` found in `old`.
fn longest_match(suffixes: &[i32], old: &[u8], new: &[u8]) -> (isize, isize) {
    if suffixes.is_empty() {
        return (0, 0);
    }
    let (mut lo, mut hi) = (0usize, suffixes.len() - 1);
    while hi - lo >= 2 {
        let mid = lo + (hi - lo) / 2;
        let suffix = &old[suffixes[mid] as usize..];
        let n = suffix.len().min(new.len());
        if suffix[..n].cmp(&new[..n]) == Ordering::Less {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let common = |s: i32| {
        old[s as usize..]
            .iter()
            .zip(new)
            .take_while(|(a, b)| a == b)
            .count() as isize
    };
    let (x, y) = (common(suffixes[lo]), common(suffixes[hi]));
    if x > y {
        (suffixes[lo] as isize, x)
    } else {
        (suffixes[hi] as isize, y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_testkit::image_bytes;

    /// bspatch, as the decoder applies a diff.
    fn apply(old: &[u8], controls: &[Control], adds: &[u8], inserts: &[u8]) -> Vec<u8> {
        let (mut out, mut cursor, mut a, mut n) = (Vec::new(), 0i64, 0usize, 0usize);
        for c in controls {
            for i in 0..c.add as usize {
                out.push(adds[a + i].wrapping_add(old[cursor as usize + i]));
            }
            a += c.add as usize;
            out.extend_from_slice(&inserts[n..n + c.insert as usize]);
            n += c.insert as usize;
            cursor += c.add as i64 + c.seek;
        }
        out
    }

    #[test]
    fn edits_moves_and_empty_sides_rebuild_exactly() {
        let old = image_bytes(200_000, 1);
        let mut new = old.clone();
        new[1000..1010].copy_from_slice(b"0123456789");
        new.splice(50_000..50_000, image_bytes(3000, 2));
        new.drain(120_000..130_000);
        new.extend_from_slice(&old[10_000..20_000]);
        for i in (60_000..90_000).step_by(50) {
            new[i] = new[i].wrapping_add(4); // addresses that moved
        }
        for (old, new) in [
            (&old[..], &new[..]),
            (&[][..], &new[..]),
            (&old[..], &[][..]),
        ] {
            let (controls, adds, inserts) = diff(old, new);
            assert_eq!(apply(old, &controls, &adds, &inserts), new);
        }
        let (_, adds, inserts) = diff(&old, &new);
        assert!(inserts.len() < 10_000, "{} insert bytes", inserts.len());
        let changed = adds.iter().filter(|&&b| b != 0).count();
        assert!(changed < 2 * 600 + 3000, "{changed} add bytes not zero");
    }
}
