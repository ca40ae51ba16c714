//! Boot-state files in U-Boot's env format (boot/BOOT-STATE.md): CRC32 (LE) of the rest,
//! then `name=value\0` pairs, `\0`, zero padding to 0x4000 bytes.

use std::collections::BTreeMap;

use anyhow::{bail, Result};

pub const SIZE: usize = 0x4000;

pub fn encode(vars: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut body = Vec::new();
    for (name, value) in vars {
        if name.contains('=') || name.contains('\0') || value.contains('\0') {
            bail!("boot-state variable {name:?} cannot be encoded");
        }
        body.extend_from_slice(name.as_bytes());
        body.push(b'=');
        body.extend_from_slice(value.as_bytes());
        body.push(0);
    }
    body.push(0);
    if body.len() > SIZE - 4 {
        bail!("boot state does not fit in {SIZE} bytes");
    }
    body.resize(SIZE - 4, 0);
    let mut blob = crc32fast::hash(&body).to_le_bytes().to_vec();
    blob.extend_from_slice(&body);
    Ok(blob)
}

/// The variables of a valid copy; `None` when the size or the CRC is wrong.
pub fn decode(blob: &[u8]) -> Option<BTreeMap<String, String>> {
    if blob.len() != SIZE {
        return None;
    }
    let (crc, body) = blob.split_at(4);
    if crc32fast::hash(body).to_le_bytes() != crc {
        return None;
    }
    let mut vars = BTreeMap::new();
    for pair in body.split(|b| *b == 0) {
        if pair.is_empty() {
            break;
        }
        let text = String::from_utf8_lossy(pair);
        let (name, value) = text.split_once('=')?;
        vars.insert(name.to_string(), value.to_string());
    }
    Some(vars)
}

/// The newest valid copy of the two (highest CAIRN_SEQ), as U-Boot and cairnd pick it.
pub fn newest(copies: [&[u8]; 2]) -> Option<(usize, BTreeMap<String, String>)> {
    let seq = |vars: &BTreeMap<String, String>| {
        vars.get("CAIRN_SEQ")
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let decoded: Vec<_> = copies.iter().map(|c| decode(c)).collect();
    match (&decoded[0], &decoded[1]) {
        (Some(a), Some(b)) if seq(b) > seq(a) => Some((1, b.clone())),
        (Some(a), _) => Some((0, a.clone())),
        (None, Some(b)) => Some((1, b.clone())),
        (None, None) => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(seq: &str) -> BTreeMap<String, String> {
        [
            ("BOOT_ORDER", "A B"),
            ("BOOT_A_LEFT", "3"),
            ("CAIRN_SEQ", seq),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
    }

    #[test]
    fn round_trips_and_matches_mkenvimage() {
        let blob = encode(&vars("4")).unwrap();
        assert_eq!(blob.len(), SIZE);
        assert_eq!(decode(&blob).unwrap(), vars("4"));
        // mkenvimage (u-boot-tools) is the reference encoder (zero padding, as U-Boot
        // exports).
        let dir = tempfile::tempdir().unwrap();
        let text = dir.path().join("env.txt");
        std::fs::write(&text, "BOOT_A_LEFT=3\nBOOT_ORDER=A B\nCAIRN_SEQ=4\n").unwrap();
        let out = dir.path().join("env.bin");
        let status = std::process::Command::new("mkenvimage")
            .args(["-s", "0x4000", "-p", "0", "-o"])
            .arg(&out)
            .arg(&text)
            .status()
            .unwrap();
        assert!(status.success());
        assert_eq!(std::fs::read(out).unwrap(), blob);
    }

    #[test]
    fn the_newer_valid_copy_wins_and_a_torn_one_is_ignored() {
        let old = encode(&vars("4")).unwrap();
        let new = encode(&vars("5")).unwrap();
        assert_eq!(newest([&old, &new]).unwrap().0, 1);
        assert_eq!(newest([&new, &old]).unwrap().0, 0);
        let mut torn = new.clone();
        torn[100] ^= 0xff;
        assert_eq!(newest([&old, &torn]).unwrap().0, 0);
        assert!(newest([&torn[..10], &torn]).is_none());
    }
}
