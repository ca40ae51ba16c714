//! Makes the `.bmap` ([`crate::bmap`]) of a disk image for sparse flashing: which 4 KiB blocks of the disk
//! image carry data, with a SHA-256 per range. Slot images are mapped whole (their zero
//! blocks are hashed by dm-verity and must be written); elsewhere all-zero blocks are left
//! out, as a freshly made filesystem does not rely on them.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::Path;

use anyhow::Result;
use sha2::{Digest, Sha256};

use crate::bmap::{Bmap, MappedRange};

const BLOCK: u64 = 4096;

/// `[start, end)` byte ranges that must be written even where they are zero.
pub fn write(disk: &Path, keep_whole: &[(u64, u64)], out: &Path) -> Result<()> {
    let mut file = File::open(disk)?;
    let size = file.metadata()?.len();
    let blocks = size.div_ceil(BLOCK);
    let mut mapped = vec![false; blocks as usize];
    // Read 1 MiB at a time (block-sized reads make this take seconds on a 1 GB image).
    let mut chunk = vec![0u8; 256 * BLOCK as usize];
    let mut buf = vec![0u8; BLOCK as usize];
    for (chunk_index, flags) in mapped.chunks_mut(256).enumerate() {
        let chunk_offset = chunk_index as u64 * 256 * BLOCK;
        let len = read_block(&mut file, chunk_offset, &mut chunk)?;
        for (index, flag) in flags.iter_mut().enumerate() {
            let offset = chunk_offset + index as u64 * BLOCK;
            let start = index * BLOCK as usize;
            let block = &chunk[start.min(len)..(start + BLOCK as usize).min(len)];
            *flag = keep_whole.iter().any(|(s, e)| offset >= *s && offset < *e) || !is_zero(block);
        }
    }

    let mut ranges = Vec::new();
    let mut index = 0usize;
    while index < mapped.len() {
        if !mapped[index] {
            index += 1;
            continue;
        }
        let first = index;
        while index < mapped.len() && mapped[index] {
            index += 1;
        }
        let last = index - 1;
        let mut hasher = Sha256::new();
        for block in first..=last {
            let len = read_block(&mut file, block as u64 * BLOCK, &mut buf)?;
            hasher.update(&buf[..len]);
        }
        ranges.push(MappedRange {
            first: first as u64,
            last: last as u64,
            sha256: hasher.finalize().into(),
        });
    }
    let bmap = Bmap {
        image_size: size,
        block_size: BLOCK,
        ranges,
    };
    cairn_atomic::write(out, bmap.render().as_bytes())?;
    Ok(())
}

/// Compares against a zero block (memcmp): fast even in debug builds, unlike a byte loop.
pub fn is_zero(bytes: &[u8]) -> bool {
    const ZEROS: [u8; BLOCK as usize] = [0; BLOCK as usize];
    bytes.chunks(ZEROS.len()).all(|c| c == &ZEROS[..c.len()])
}

fn read_block(file: &mut File, offset: u64, buf: &mut [u8]) -> Result<usize> {
    file.seek(SeekFrom::Start(offset))?;
    let mut len = 0;
    while len < buf.len() {
        let n = file.read(&mut buf[len..])?;
        if n == 0 {
            break;
        }
        len += n;
    }
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_data_blocks_and_kept_ranges_only() {
        let dir = tempfile::tempdir().unwrap();
        let disk = dir.path().join("disk");
        let mut image = vec![0u8; 16 * BLOCK as usize];
        image[2 * BLOCK as usize + 7] = 1;
        image[5 * BLOCK as usize] = 9;
        image[6 * BLOCK as usize] = 9;
        std::fs::write(&disk, &image).unwrap();
        let out = dir.path().join("disk.bmap");
        // Blocks 10..12 are zeros but must be written (a slot image).
        write(&disk, &[(10 * BLOCK, 12 * BLOCK)], &out).unwrap();
        let text = std::fs::read_to_string(&out).unwrap();
        assert!(
            text.contains("<MappedBlocksCount> 5 </MappedBlocksCount>"),
            "{text}"
        );
        assert!(text.contains("> 2 </Range>"), "{text}");
        assert!(text.contains("> 5-6 </Range>"), "{text}");
        assert!(text.contains("> 10-11 </Range>"), "{text}");
        let zeros_hash = hex::encode(Sha256::digest(vec![0u8; 2 * BLOCK as usize]));
        assert!(
            text.contains(&format!("chksum=\"{zeros_hash}\"> 10-11")),
            "{text}"
        );
        // The file checksum is over the file with that field zeroed.
        let start = text.find("<BmapFileChecksum> ").unwrap() + 19;
        let checksum = text[start..start + 64].to_string();
        let zeroed = text.replace(&checksum, &"0".repeat(64));
        assert_eq!(hex::encode(Sha256::digest(zeroed.as_bytes())), checksum);

        // bmap-tools is the reference reader: it checks both kinds of checksums on copy.
        let copy = dir.path().join("copy");
        let status = std::process::Command::new("bmaptool")
            .args(["-q", "copy", "--bmap"])
            .arg(&out)
            .arg(&disk)
            .arg(&copy)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(copy).unwrap(), image);
    }
}
