//! The block map format of bmap-tools, version 2.x: which blocks of a disk image carry
//! data, with a SHA-256 per mapped range, and a SHA-256 of the map file itself. The one
//! owner of the format in Cairn: `os::bmap` writes it for the images it builds and
//! `flash` reads it (ours or one made by `bmaptool create`).
//!
//! ```text
//! <bmap version="2.0">
//!     <ImageSize> bytes </ImageSize>          <BlockSize> 4096 </BlockSize>
//!     <BlocksCount> n </BlocksCount>          <MappedBlocksCount> m </MappedBlocksCount>
//!     <ChecksumType> sha256 </ChecksumType>   <BmapFileChecksum> hex </BmapFileChecksum>
//!     <BlockMap> <Range chksum="hex"> first-last </Range> ... </BlockMap>
//! </bmap>
//! ```
//! Ranges are inclusive block numbers ("7" or "7-9"); the last block may be short when the
//! image size is not a multiple of the block size. The file checksum is taken over the
//! file with its own value replaced by as many `0`s (bmap-tools' rule).

use sha2::{Digest, Sha256};

/// The largest map file accepted (a fully fragmented 1 TB image stays far below it).
pub const MAX_BMAP_BYTES: u64 = 64 << 20;

/// A parsed and checked block map.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Bmap {
    pub image_size: u64,
    pub block_size: u64,
    /// Ascending, non-overlapping, inside the image.
    pub ranges: Vec<MappedRange>,
}

/// Blocks `first..=last`, whose bytes hash to `sha256`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MappedRange {
    pub first: u64,
    pub last: u64,
    pub sha256: [u8; 32],
}

#[derive(Debug, thiserror::Error)]
pub enum BmapError {
    #[error("not a bmap file: {0}")]
    Xml(String),
    #[error("bmap element <{element}>: {detail}")]
    Field {
        element: &'static str,
        detail: String,
    },
    #[error("bmap format version {0} is not supported (2.x is; recreate the map with bmaptool 3 or later)")]
    Version(String),
    #[error("bmap checksum type {0:?} is not supported (sha256 is)")]
    ChecksumType(String),
    #[error("the bmap file's own checksum does not match: the file is damaged or was edited")]
    FileChecksum,
    #[error("bmap range {index} ({text:?}): {detail}")]
    Range {
        index: usize,
        text: String,
        detail: String,
    },
}

impl Bmap {
    pub fn blocks_count(&self) -> u64 {
        self.image_size.div_ceil(self.block_size)
    }

    pub fn mapped_blocks(&self) -> u64 {
        self.ranges.iter().map(|r| r.last - r.first + 1).sum()
    }

    /// Bytes the mapped ranges cover (the last block may be short).
    pub fn mapped_bytes(&self) -> u64 {
        self.ranges.iter().map(|r| self.byte_range(r).1).sum()
    }

    /// `(offset, length)` of a range in the image.
    pub fn byte_range(&self, range: &MappedRange) -> (u64, u64) {
        let start = range.first * self.block_size;
        let end = ((range.last + 1) * self.block_size).min(self.image_size);
        (start, end - start)
    }

    /// The map file's text, with its own checksum filled in.
    pub fn render(&self) -> String {
        let mut ranges = String::new();
        for r in &self.ranges {
            let blocks = if r.first == r.last {
                r.first.to_string()
            } else {
                format!("{}-{}", r.first, r.last)
            };
            ranges.push_str(&format!(
                "        <Range chksum=\"{}\"> {blocks} </Range>\n",
                hex::encode(r.sha256)
            ));
        }
        let document = |checksum: &str| {
            format!(
                "<?xml version=\"1.0\" ?>\n<bmap version=\"2.0\">\n\
                 \x20   <ImageSize> {} </ImageSize>\n\
                 \x20   <BlockSize> {} </BlockSize>\n\
                 \x20   <BlocksCount> {} </BlocksCount>\n\
                 \x20   <MappedBlocksCount> {} </MappedBlocksCount>\n\
                 \x20   <ChecksumType> sha256 </ChecksumType>\n\
                 \x20   <BmapFileChecksum> {checksum} </BmapFileChecksum>\n\
                 \x20   <BlockMap>\n{ranges}    </BlockMap>\n</bmap>\n",
                self.image_size,
                self.block_size,
                self.blocks_count(),
                self.mapped_blocks(),
            )
        };
        let checksum = hex::encode(Sha256::digest(document(&"0".repeat(64)).as_bytes()));
        document(&checksum)
    }

    /// Parses and checks a map file: version, checksum type, the file's own checksum,
    /// and that the ranges are ascending, disjoint, inside the image and add up to
    /// `MappedBlocksCount`.
    pub fn parse(text: &str) -> Result<Bmap, BmapError> {
        let doc = roxmltree::Document::parse(text).map_err(|e| BmapError::Xml(e.to_string()))?;
        let root = doc.root_element();
        if root.tag_name().name() != "bmap" {
            return Err(BmapError::Xml(format!(
                "the root element is <{}>, not <bmap>",
                root.tag_name().name()
            )));
        }
        let version = root.attribute("version").unwrap_or("").trim();
        if version.split('.').next() != Some("2") {
            return Err(BmapError::Version(version.to_string()));
        }
        let child = |name: &'static str| {
            root.children()
                .find(|n| n.has_tag_name(name))
                .ok_or(BmapError::Field {
                    element: name,
                    detail: "missing".into(),
                })
        };
        let text_of = |name: &'static str| -> Result<String, BmapError> {
            Ok(child(name)?.text().unwrap_or("").trim().to_string())
        };
        let number = |name: &'static str| -> Result<u64, BmapError> {
            let value = text_of(name)?;
            value.parse().map_err(|_| BmapError::Field {
                element: name,
                detail: format!("{value:?} is not a number"),
            })
        };
        let checksum_type = text_of("ChecksumType")?;
        if checksum_type != "sha256" {
            return Err(BmapError::ChecksumType(checksum_type));
        }
        let file_checksum = text_of("BmapFileChecksum")?;
        if file_checksum.len() != 64 || !file_checksum.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(BmapError::FileChecksum);
        }
        let zeroed = text.replacen(&file_checksum, &"0".repeat(64), 1);
        if hex::encode(Sha256::digest(zeroed.as_bytes())) != file_checksum.to_ascii_lowercase() {
            return Err(BmapError::FileChecksum);
        }

        let image_size = number("ImageSize")?;
        let block_size = number("BlockSize")?;
        if block_size == 0 || block_size % 512 != 0 {
            return Err(BmapError::Field {
                element: "BlockSize",
                detail: format!("{block_size} is not a positive multiple of 512"),
            });
        }
        let blocks_count = number("BlocksCount")?;
        if blocks_count != image_size.div_ceil(block_size) {
            return Err(BmapError::Field {
                element: "BlocksCount",
                detail: format!(
                    "{blocks_count}, but ImageSize {image_size} / BlockSize {block_size} needs {}",
                    image_size.div_ceil(block_size)
                ),
            });
        }
        let mut ranges: Vec<MappedRange> = Vec::new();
        for (index, node) in child("BlockMap")?
            .children()
            .filter(|n| n.has_tag_name("Range"))
            .enumerate()
        {
            let text = node.text().unwrap_or("").trim().to_string();
            let bad = |detail: &str| BmapError::Range {
                index,
                text: text.clone(),
                detail: detail.to_string(),
            };
            let (first, last) = match text.split_once('-') {
                Some((a, b)) => (a.trim().parse::<u64>(), b.trim().parse::<u64>()),
                None => (text.parse::<u64>(), text.parse::<u64>()),
            };
            let (Ok(first), Ok(last)) = (first, last) else {
                return Err(bad("not a block number or first-last"));
            };
            if first > last || last >= blocks_count {
                return Err(bad("outside the image or reversed"));
            }
            if ranges.last().is_some_and(|prev| prev.last >= first) {
                return Err(bad("overlaps or precedes the range before it"));
            }
            let sha256 = node
                .attribute("chksum")
                .and_then(|h| hex::decode(h.trim()).ok())
                .and_then(|b| <[u8; 32]>::try_from(b).ok())
                .ok_or_else(|| bad("no 64-digit hex chksum attribute"))?;
            ranges.push(MappedRange {
                first,
                last,
                sha256,
            });
        }
        let bmap = Bmap {
            image_size,
            block_size,
            ranges,
        };
        let declared = number("MappedBlocksCount")?;
        if declared != bmap.mapped_blocks() {
            return Err(BmapError::Field {
                element: "MappedBlocksCount",
                detail: format!("{declared}, but the ranges map {}", bmap.mapped_blocks()),
            });
        }
        Ok(bmap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bmap {
        Bmap {
            image_size: 10 * 4096 + 100,
            block_size: 4096,
            ranges: vec![
                MappedRange {
                    first: 0,
                    last: 0,
                    sha256: [1; 32],
                },
                MappedRange {
                    first: 3,
                    last: 10,
                    sha256: [2; 32],
                },
            ],
        }
    }

    #[test]
    fn render_then_parse_round_trips() {
        let bmap = sample();
        assert_eq!(Bmap::parse(&bmap.render()).expect("parse"), bmap);
        assert_eq!(bmap.mapped_blocks(), 9);
        assert_eq!(bmap.mapped_bytes(), 4096 + 7 * 4096 + 100);
    }

    #[test]
    fn an_edited_map_is_refused() {
        let text = sample().render();
        // Moving a range without fixing the file checksum.
        let edited = text.replace("> 3-10 <", "> 4-10 <");
        assert!(matches!(Bmap::parse(&edited), Err(BmapError::FileChecksum)));
    }

    #[test]
    fn bad_ranges_and_versions_are_named() {
        let mut overlapping = sample();
        overlapping.ranges[1].first = 0;
        assert!(matches!(
            Bmap::parse(&overlapping.render()),
            Err(BmapError::Range { index: 1, .. })
        ));
        let mut outside = sample();
        outside.ranges[1].last = 11;
        assert!(matches!(
            Bmap::parse(&outside.render()),
            Err(BmapError::Range { index: 1, .. })
        ));
        let old = sample()
            .render()
            .replace("version=\"2.0\"", "version=\"1.4\"");
        assert!(matches!(Bmap::parse(&old), Err(BmapError::Version(v)) if v == "1.4"));
        assert!(matches!(Bmap::parse("<nope/>"), Err(BmapError::Xml(_))));
    }
}
