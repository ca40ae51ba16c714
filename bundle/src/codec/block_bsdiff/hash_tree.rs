//! The dm-verity hash tree, as `veritysetup format --no-superblock --hash=sha256` with
//! 4 KiB data and hash blocks writes it after the data (format 1: every hash is
//! `sha256(salt || block)`; 128 hashes fill a hash block; each level hashes the blocks of
//! the one below until a level fits one block; the top level comes first on disk, the
//! leaves last; the last block of each level is zero-padded).
//!
//! The tree is derived data, 1/128 of the image and as random as hashes are: a delta
//! that carries it pays for every hash a changed block changed. A `block-bsdiff` delta
//! says instead where the tree starts and with which salt, and the device computes it
//! from the blocks it has just written, as Android's update_engine does.

use sha2::{Digest, Sha256};

pub const BLOCK: usize = 4096;
const HASH: usize = 32;
/// The largest data a tree op may cover: the decoder keeps the leaf level (1/128 of the
/// data) until the end, 64 MiB at this size.
pub const MAX_DATA: u64 = 8 << 30;

/// Builds the tree of data fed to it in order.
pub struct TreeBuilder {
    salt: Vec<u8>,
    data_size: u64,
    fed: u64,
    /// The current partial data block.
    block: Vec<u8>,
    /// The leaf level: one hash per data block.
    leaves: Vec<u8>,
}

impl TreeBuilder {
    /// `data_size` must be whole blocks (the caller checks it).
    pub fn new(salt: &[u8], data_size: u64) -> TreeBuilder {
        TreeBuilder {
            salt: salt.to_vec(),
            data_size,
            fed: 0,
            block: Vec::with_capacity(BLOCK),
            leaves: Vec::with_capacity((data_size / BLOCK as u64) as usize * HASH),
        }
    }

    /// Feeds the next data bytes; bytes past `data_size` are not data and are ignored.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        let room = (self.data_size - self.fed).min(bytes.len() as u64) as usize;
        bytes = &bytes[..room];
        self.fed += room as u64;
        while !bytes.is_empty() {
            if self.block.is_empty() && bytes.len() >= BLOCK {
                let (block, rest) = bytes.split_at(BLOCK);
                let hash = salted(&self.salt, block);
                self.leaves.extend_from_slice(&hash);
                bytes = rest;
                continue;
            }
            let take = (BLOCK - self.block.len()).min(bytes.len());
            self.block.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
            if self.block.len() == BLOCK {
                let hash = salted(&self.salt, &self.block);
                self.leaves.extend_from_slice(&hash);
                self.block.clear();
            }
        }
    }

    /// Whether all `data_size` bytes were fed.
    pub fn is_complete(&self) -> bool {
        self.fed == self.data_size
    }

    /// The tree's bytes as they follow the data on disk.
    pub fn finish(self) -> Vec<u8> {
        let mut levels = vec![pad(self.leaves)];
        while levels.last().is_some_and(|l| l.len() > BLOCK) {
            let below = levels.last().expect("one level");
            let mut level = Vec::with_capacity(below.len() / BLOCK * HASH);
            for block in below.chunks(BLOCK) {
                level.extend_from_slice(&salted(&self.salt, block));
            }
            levels.push(pad(level));
        }
        levels.reverse();
        levels.concat()
    }
}

/// The bytes of the tree of `data_size` bytes of data, without computing it.
pub fn tree_size(data_size: u64) -> u64 {
    let mut blocks = (data_size / BLOCK as u64).max(1);
    let mut total = 0;
    loop {
        let level = blocks.div_ceil((BLOCK / HASH) as u64);
        total += level;
        if level <= 1 {
            return total * BLOCK as u64;
        }
        blocks = level;
    }
}

/// The tree of `data` (whole blocks) with `salt`.
pub fn tree(salt: &[u8], data: &[u8]) -> Vec<u8> {
    let mut builder = TreeBuilder::new(salt, data.len() as u64);
    builder.feed(data);
    builder.finish()
}

fn salted(salt: &[u8], block: &[u8]) -> [u8; HASH] {
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(block);
    hasher.finalize().into()
}

fn pad(mut level: Vec<u8>) -> Vec<u8> {
    let padded = level.len().div_ceil(BLOCK).max(1) * BLOCK;
    level.resize(padded, 0);
    level
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_size_is_known_without_the_data_and_feeding_in_pieces_changes_nothing() {
        let data: Vec<u8> = (0..(300 * BLOCK)).map(|i| (i * 31 % 253) as u8).collect();
        let whole = tree(b"salt", &data);
        assert_eq!(whole.len() as u64, tree_size(data.len() as u64));
        // 300 leaves take 3 blocks; one block above them.
        assert_eq!(whole.len(), 4 * BLOCK);
        let mut builder = TreeBuilder::new(b"salt", data.len() as u64);
        for piece in data.chunks(1000) {
            builder.feed(piece);
        }
        builder.feed(b"not data");
        assert!(builder.is_complete());
        assert_eq!(builder.finish(), whole);
    }
}
