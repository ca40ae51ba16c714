//! `block-bsdiff`: a delta made of operations on the target, in target order.
//!
//! Both images of a delta come from the same builder (`mkfs.erofs` over two similar
//! trees, or two kernels), so most 4 KiB blocks of the target sit unchanged somewhere in
//! the source, and a changed file's old version usually sits between the same unchanged
//! neighbours. The encoder ([`encode`]) turns unchanged blocks into copies, which cost a
//! few bytes however long they are, and diffs each run of changed blocks against the
//! source between the copies around it, or where its content points (`anchors.rs`),
//! with bsdiff's algorithm (`matcher.rs`), which also matches machine code whose
//! addresses moved. Only those diffs' bytes are compressed.
//!
//! Layout (little-endian):
//! ```text
//! "CBSDIFF1"  block_size:u32 (4096)  reserved:u32 (0)  source_size:u64  target_size:u64
//! then one zstd stream (window at most 2^24 bytes) of operations:
//!   0x03 tree   data_size  salt_length  salt           only first: see below
//!   0x01 copy   source_offset  length                  target += source[offset..+length]
//!   0x02 diff   source_offset  source_length  target_length  controls
//!               controls × (add_length  insert_length  seek)
//!               the add bytes of every control, as runs × (zeros  length  bytes)
//!               the insert bytes of every control
//!   0x00 end    (the zstd stream ends here too)
//! ```
//! Numbers inside the stream are LEB128 varints; `seek` is zigzag-signed. A diff rebuilds
//! `target_length` bytes from the source window `source[offset..+source_length]` the way
//! bspatch does: per control, `add_length` bytes of window (from a cursor starting at 0)
//! plus the add bytes, then `insert_length` literal bytes; the cursor then moves by
//! `add_length + seek`. Keeping add bytes (mostly zero) apart from insert bytes (new data)
//! is what lets zstd compress each well. The add bytes of all controls, taken as one
//! sequence, are written as runs: `zeros` zero bytes, then `length` bytes as given; the
//! runs must cover that sequence exactly, and none may be empty.
//!
//! A delta that starts with `tree` covers only the first `data_size` bytes with its
//! operations; the rest of the target is the dm-verity hash tree of those bytes with
//! that salt, which the decoder computes ([`hash_tree`] says exactly which tree). The
//! encoder emits it only after computing the tree itself and finding the target's bytes.
//!
//! The decoder's heap is bounded whatever the image size: the zstd window, one diff's
//! target and its add bytes (each at most [`MAX_DIFF_TARGET`]), its controls (at most
//! [`MAX_CONTROLS`]), and
//! for a hash tree its leaf level (1/128 of the data). Every
//! operation is checked to stay inside the source, the window and the target before a
//! byte of it is written, and the operations must produce exactly `target_size` bytes.

mod anchors;
mod decode;
mod encode;
pub mod hash_tree;
mod matcher;
mod plan;
mod varint;

pub use decode::decode;
pub use encode::{encode, encode_with, MIN_LEVEL};

pub const METHOD: &str = "block-bsdiff";
pub const MAGIC: [u8; 8] = *b"CBSDIFF1";
pub const HEADER_LEN: usize = 32;
pub const BLOCK_SIZE: u32 = 4096;
/// The largest target a single diff operation rebuilds: the decoder holds one in memory.
pub const MAX_DIFF_TARGET: usize = 4 << 20;
/// The most controls one diff may carry (24 bytes each in the decoder's memory).
pub const MAX_CONTROLS: usize = 1 << 16;
/// zstd window of the operation stream; the decoder refuses larger ones.
pub const WINDOW_LOG: u32 = 24;

const OP_END: u8 = 0;
const OP_COPY: u8 = 1;
const OP_DIFF: u8 = 2;
const OP_TREE: u8 = 3;
/// The longest salt a tree op may carry (veritysetup allows 256 bytes).
const MAX_SALT: u64 = 256;

/// An image's dm-verity hash tree: where it starts and its salt (the manifest's
/// `verity`, with sha256 and 4 KiB blocks).
#[derive(Debug, Clone, Copy)]
pub struct HashTree<'a> {
    pub data_size: u64,
    pub salt: &'a [u8],
}

fn invalid(msg: impl Into<String>) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, msg.into())
}

#[cfg(test)]
mod tests;
