//! The `block-bsdiff` decoder: checks every operation against the source, its window and
//! the target before writing a byte of it.

use std::io::{self, BufReader, Read, Write};

use super::hash_tree::{self, TreeBuilder, MAX_DATA};
use super::{
    invalid, varint, BLOCK_SIZE, HEADER_LEN, MAGIC, MAX_CONTROLS, MAX_DIFF_TARGET, MAX_SALT,
    OP_COPY, OP_DIFF, OP_END, OP_TREE, WINDOW_LOG,
};

/// Decodes a delta from `input` against `source` into `out`. `expected_size` is the
/// image size from the signed manifest; the payload must agree with it, and with the
/// source's size.
pub fn decode(
    input: &mut impl Read,
    source: &[u8],
    expected_size: u64,
    out: &mut impl Write,
) -> io::Result<()> {
    let mut header = [0u8; HEADER_LEN];
    input.read_exact(&mut header)?;
    let word = |at: usize| u32::from_le_bytes(header[at..at + 4].try_into().expect("4 bytes"));
    let long = |at: usize| u64::from_le_bytes(header[at..at + 8].try_into().expect("8 bytes"));
    if header[0..8] != MAGIC {
        return Err(invalid("not a block-bsdiff payload (bad magic)"));
    }
    if word(8) != BLOCK_SIZE {
        return Err(invalid(format!(
            "block size {} is not {BLOCK_SIZE}",
            word(8)
        )));
    }
    if word(12) != 0 {
        return Err(invalid(format!(
            "reserved header field is {:#x}, not 0 (a newer format?)",
            word(12)
        )));
    }
    if long(16) != source.len() as u64 {
        return Err(invalid(format!(
            "delta is for a source of {} bytes, this one has {}",
            long(16),
            source.len()
        )));
    }
    let target_size = long(24);
    if target_size != expected_size {
        return Err(invalid(format!(
            "delta produces {target_size} bytes, the manifest says {expected_size}"
        )));
    }
    let mut zstd = zstd::stream::read::Decoder::new(input)?;
    zstd.window_log_max(WINDOW_LOG)?;
    let mut ops = BufReader::with_capacity(64 << 10, zstd);
    let mut applier = Applier {
        source,
        ops_end: target_size,
        written: 0,
        tree: None,
        piece: Vec::new(),
        controls: Vec::new(),
        adds: Vec::new(),
    };
    let mut first = true;
    loop {
        let mut tag = [0u8; 1];
        ops.read_exact(&mut tag)
            .map_err(|e| ended(e, "before its end mark"))?;
        match tag[0] {
            OP_END => break,
            OP_TREE if first => applier.tree(&mut ops, target_size)?,
            OP_COPY => applier.copy(&mut ops, out)?,
            OP_DIFF => applier.diff(&mut ops, out)?,
            other => {
                return Err(invalid(format!(
                    "unknown operation {other:#04x} at target offset {}",
                    applier.written
                )))
            }
        }
        first = false;
    }
    if applier.written != applier.ops_end {
        return Err(invalid(format!(
            "operations produce {} bytes, the target has {}",
            applier.written, applier.ops_end
        )));
    }
    if let Some(tree) = applier.tree.take() {
        out.write_all(&tree.finish())?;
    }
    if ops.read(&mut [0u8; 1])? != 0 {
        return Err(invalid("operations continue after the end mark"));
    }
    Ok(())
}

/// A stream that ends early is a truncated delta, said in those words.
fn ended(e: io::Error, place: &str) -> io::Error {
    if e.kind() == io::ErrorKind::UnexpectedEof {
        io::Error::new(e.kind(), format!("operation stream ends {place}"))
    } else {
        e
    }
}

struct Applier<'s> {
    source: &'s [u8],
    /// Where the operations end: the target's size, or where its hash tree starts.
    ops_end: u64,
    written: u64,
    /// The hash tree of the bytes written so far, when the delta asked for one.
    tree: Option<TreeBuilder>,
    /// One diff's target, reused.
    piece: Vec<u8>,
    /// One diff's controls (add, insert, seek), reused.
    controls: Vec<(usize, usize, i64)>,
    /// One diff's add bytes, reused.
    adds: Vec<u8>,
}

impl Applier<'_> {
    /// The target bytes left to write, as the most an operation may produce.
    fn room(&self) -> u64 {
        self.ops_end - self.written
    }

    /// Writes the next target bytes.
    fn emit(&mut self, bytes: &[u8], out: &mut impl Write) -> io::Result<()> {
        out.write_all(bytes)?;
        if let Some(tree) = &mut self.tree {
            tree.feed(bytes);
        }
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// The tree op: the target from `data_size` on is the hash tree of what comes before.
    fn tree(&mut self, ops: &mut impl Read, target_size: u64) -> io::Result<()> {
        let data_size = varint::read(ops).map_err(|e| ended(e, "inside a tree op"))?;
        let salt_len = varint::read_len(ops, MAX_SALT, "tree salt length")
            .map_err(|e| ended(e, "inside a tree op"))?;
        let mut salt = vec![0u8; salt_len];
        ops.read_exact(&mut salt)
            .map_err(|e| ended(e, "inside a tree op"))?;
        let fits = data_size % u64::from(BLOCK_SIZE) == 0
            && data_size > 0
            && data_size <= MAX_DATA
            && data_size
                .checked_add(hash_tree::tree_size(data_size))
                .is_some_and(|end| end == target_size);
        if !fits {
            return Err(invalid(format!(
                "a hash tree after {data_size} bytes of data does not end a target of {target_size} bytes"
            )));
        }
        self.ops_end = data_size;
        self.tree = Some(TreeBuilder::new(&salt, data_size));
        Ok(())
    }

    fn copy(&mut self, ops: &mut impl Read, out: &mut impl Write) -> io::Result<()> {
        let offset = varint::read(ops).map_err(|e| ended(e, "inside a copy"))?;
        let len = varint::read(ops).map_err(|e| ended(e, "inside a copy"))?;
        if len > self.room() {
            return Err(invalid(format!(
                "copy of {len} bytes at target offset {} runs past the target's {} bytes",
                self.written, self.ops_end
            )));
        }
        let bytes = source_range(self.source, self.written, offset, len, "copy")?;
        self.emit(bytes, out)
    }

    fn diff(&mut self, ops: &mut impl Read, out: &mut impl Write) -> io::Result<()> {
        let at = self.written;
        let number =
            |ops: &mut dyn Read| varint::read(&mut *ops).map_err(|e| ended(e, "inside a diff"));
        let window_offset = number(ops)?;
        let window_len = number(ops)?;
        let window = source_range(self.source, at, window_offset, window_len, "diff")?;
        let max_target = self.room().min(MAX_DIFF_TARGET as u64);
        let target_len = varint::read_len(ops, max_target, "diff target length")
            .map_err(|e| ended(e, "inside a diff"))?;
        let count = varint::read_len(ops, MAX_CONTROLS as u64, "diff control count")
            .map_err(|e| ended(e, "inside a diff"))?;
        self.controls.clear();
        let mut total = 0u64;
        for _ in 0..count {
            let add = number(ops)?;
            let insert = number(ops)?;
            let seek = varint::read_signed(ops).map_err(|e| ended(e, "inside a diff"))?;
            total = total
                .checked_add(add)
                .and_then(|t| t.checked_add(insert))
                .filter(|&t| t <= target_len as u64)
                .ok_or_else(|| {
                    invalid(format!(
                        "diff at target offset {at}: controls produce more than its {target_len} bytes"
                    ))
                })?;
            self.controls.push((add as usize, insert as usize, seek));
        }
        if total != target_len as u64 {
            return Err(invalid(format!(
                "diff at target offset {at}: controls produce {total} bytes, not {target_len}"
            )));
        }
        let total_add = self.controls.iter().map(|&(add, _, _)| add).sum();
        read_add_runs(ops, at, total_add, &mut self.adds)?;
        self.piece.clear();
        self.piece.resize(target_len, 0);
        let piece = &mut self.piece[..];
        // The add bytes of every control, then the insert bytes of every control.
        let mut position = 0;
        let mut adds = &self.adds[..];
        for &(add, insert, _) in &self.controls {
            let (these, rest) = adds.split_at(add);
            piece[position..position + add].copy_from_slice(these);
            adds = rest;
            position += add + insert;
        }
        position = 0;
        for &(add, insert, _) in &self.controls {
            position += add;
            ops.read_exact(&mut piece[position..position + insert])
                .map_err(|e| ended(e, "inside a diff's insert bytes"))?;
            position += insert;
        }
        position = 0;
        let mut cursor: i64 = 0;
        for &(add, insert, seek) in &self.controls {
            let old = usize::try_from(cursor)
                .ok()
                .and_then(|c| window.get(c..c.checked_add(add)?))
                .ok_or_else(|| {
                    invalid(format!(
                        "diff at target offset {at} reads window bytes {cursor}..+{add}, outside its {} bytes",
                        window.len()
                    ))
                })?;
            for (new, old) in piece[position..position + add].iter_mut().zip(old) {
                *new = new.wrapping_add(*old);
            }
            position += add + insert;
            cursor = cursor
                .checked_add(add as i64)
                .and_then(|c| c.checked_add(seek))
                .ok_or_else(|| invalid(format!("diff at target offset {at}: seek overflows")))?;
        }
        let piece = std::mem::take(&mut self.piece);
        let result = self.emit(&piece, out);
        self.piece = piece;
        result
    }
}

/// Reads a diff's add bytes, `total` of them, into `adds`: runs of zeros, each followed
/// by literal bytes, that must end exactly at `total`.
fn read_add_runs(ops: &mut impl Read, at: u64, total: usize, adds: &mut Vec<u8>) -> io::Result<()> {
    adds.clear();
    adds.resize(total, 0);
    let mut covered = 0;
    while covered < total {
        let left = (total - covered) as u64;
        let zeros = varint::read(ops).map_err(|e| ended(e, "inside a diff's add bytes"))?;
        let literal = varint::read(ops).map_err(|e| ended(e, "inside a diff's add bytes"))?;
        let Some(run) = zeros.checked_add(literal).filter(|&run| run <= left) else {
            return Err(invalid(format!(
                "diff at target offset {at}: an add run of {zeros} zeros and {literal} bytes \
                 does not fit the {left} add bytes left"
            )));
        };
        if run == 0 {
            // Never written, and it would let a delta spin without producing anything.
            return Err(invalid(format!(
                "diff at target offset {at}: an empty add run"
            )));
        }
        let start = covered + zeros as usize;
        covered += run as usize;
        ops.read_exact(&mut adds[start..covered])
            .map_err(|e| ended(e, "inside a diff's add bytes"))?;
    }
    Ok(())
}

/// `source[offset..offset + len]`, or an error naming the operation at target offset `at`.
fn source_range<'s>(
    source: &'s [u8],
    at: u64,
    offset: u64,
    len: u64,
    what: &str,
) -> io::Result<&'s [u8]> {
    offset
        .checked_add(len)
        .filter(|&end| end <= source.len() as u64)
        .map(|end| &source[offset as usize..end as usize])
        .ok_or_else(|| {
            invalid(format!(
                "{what} at target offset {at} reads source bytes {offset}..+{len}, past the source's {} bytes",
                source.len()
            ))
        })
}
