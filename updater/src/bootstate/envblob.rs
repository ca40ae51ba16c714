//! U-Boot's environment blob: CRC32 (IEEE, little-endian) of the data area, then
//! `name=value\0` pairs ending in an extra `\0`, zero padded to the blob size. This is
//! what `env export -c`, `fw_printenv` and `fw_setenv` read and write.

use std::collections::BTreeMap;

/// The size cairn uses for each boot-state copy (boot/BOOT-STATE.md).
pub const ENV_SIZE: usize = 0x4000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("environment is {0} bytes, expected {ENV_SIZE}")]
    WrongSize(usize),
    #[error("environment CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("environment entry is not name=value: {0:?}")]
    BadEntry(String),
    #[error("environment does not fit in {ENV_SIZE} bytes ({0} needed)")]
    TooLarge(usize),
}

/// Decodes a blob of exactly [`ENV_SIZE`] bytes.
pub fn decode(blob: &[u8]) -> Result<BTreeMap<String, String>, EnvError> {
    if blob.len() != ENV_SIZE {
        return Err(EnvError::WrongSize(blob.len()));
    }
    let stored = u32::from_le_bytes(blob[..4].try_into().expect("4 bytes"));
    let data = &blob[4..];
    let computed = crc32fast::hash(data);
    if stored != computed {
        return Err(EnvError::BadCrc { stored, computed });
    }
    let mut vars = BTreeMap::new();
    for entry in data.split(|&b| b == 0).take_while(|e| !e.is_empty()) {
        let entry = String::from_utf8_lossy(entry);
        let (name, value) = entry
            .split_once('=')
            .ok_or_else(|| EnvError::BadEntry(entry.to_string()))?;
        vars.insert(name.to_string(), value.to_string());
    }
    Ok(vars)
}

/// Encodes `vars` into a blob of exactly [`ENV_SIZE`] bytes.
pub fn encode(vars: &BTreeMap<String, String>) -> Result<Vec<u8>, EnvError> {
    let mut data = Vec::with_capacity(ENV_SIZE);
    for (name, value) in vars {
        data.extend_from_slice(name.as_bytes());
        data.push(b'=');
        data.extend_from_slice(value.as_bytes());
        data.push(0);
    }
    data.push(0);
    if data.len() > ENV_SIZE - 4 {
        return Err(EnvError::TooLarge(data.len() + 4));
    }
    data.resize(ENV_SIZE - 4, 0);
    let mut blob = crc32fast::hash(&data).to_le_bytes().to_vec();
    blob.extend_from_slice(&data);
    Ok(blob)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_detects_any_flipped_byte() {
        let vars = BTreeMap::from([
            ("BOOT_ORDER".to_string(), "A B".to_string()),
            ("X".into(), "".into()),
        ]);
        let blob = encode(&vars).unwrap();
        assert_eq!(decode(&blob).unwrap(), vars);
        for i in [0, 3, 4, 10, 20, ENV_SIZE - 1] {
            let mut b = blob.clone();
            b[i] ^= 0x10;
            assert!(decode(&b).is_err(), "flip at {i} accepted");
        }
    }
}
