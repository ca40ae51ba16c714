//! `images.json` next to a factory slot's `slot.env`: what the slot holds, by image name
//! (sha256 and size, as a bundle manifest names them), so that cairnd can tell the server
//! from its first check-in which deltas apply. It cannot live in the rootfs, whose hash it
//! lists. The same record is what cairnd keeps for every slot it writes.

use std::collections::BTreeMap;
use std::io::{self, Read};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub sha256: String,
    pub size: u64,
}

impl ImageRecord {
    /// The record of the bytes `reader` yields.
    pub fn of(reader: &mut impl Read) -> io::Result<ImageRecord> {
        let (sha256, size) = cairn_bundle::sha256_reader(reader)?;
        Ok(ImageRecord { sha256, size })
    }
}

/// Image name → record.
pub type SlotImages = BTreeMap<String, ImageRecord>;

/// The file's text.
pub fn to_json(images: &SlotImages) -> String {
    serde_json::to_string_pretty(images).expect("image records serialise") + "\n"
}

pub fn from_json(bytes: &[u8]) -> Result<SlotImages, serde_json::Error> {
    serde_json::from_slice(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_names_the_image_by_its_sha256() {
        let record = ImageRecord::of(&mut &b"abc"[..]).unwrap();
        assert_eq!(
            record.sha256,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let images = SlotImages::from([("kernel".to_string(), record)]);
        assert_eq!(from_json(to_json(&images).as_bytes()).unwrap(), images);
        assert!(from_json(b"{\"kernel\": {\"sha256\": 1}}").is_err());
    }
}
