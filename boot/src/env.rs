//! U-Boot's environment blob: CRC32 (IEEE, little-endian) of the data area, then
//! `name=value\0` pairs ending in an extra `\0`, zero padded to the blob size. This is
//! what U-Boot's `env export -c`/`env import -c`, `mkenvimage`, `fw_printenv` and
//! `fw_setenv` read and write.

use std::collections::BTreeMap;

/// The size of each boot-state copy (`BOOT-STATE.md`).
pub const ENV_SIZE: usize = 0x4000;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("environment is {0} bytes, expected {ENV_SIZE}")]
    WrongSize(usize),
    #[error("environment CRC mismatch (stored {stored:08x}, computed {computed:08x})")]
    BadCrc { stored: u32, computed: u32 },
    #[error("environment entry is not name=value: {0:?}")]
    BadEntry(String),
    #[error("variable {0:?} cannot be encoded (a name holds '=' or NUL, or a value NUL)")]
    Unencodable(String),
    #[error("environment does not fit in {ENV_SIZE} bytes ({0} needed)")]
    TooLarge(usize),
}

/// Decodes a blob of exactly [`ENV_SIZE`] bytes.
pub fn decode(blob: &[u8]) -> Result<BTreeMap<String, String>, EnvError> {
    if blob.len() != ENV_SIZE {
        return Err(EnvError::WrongSize(blob.len()));
    }
    let (crc, data) = blob.split_at(4);
    let stored = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
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
        if name.contains(['=', '\0']) || value.contains('\0') {
            return Err(EnvError::Unencodable(name.clone()));
        }
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

    #[test]
    fn refuses_what_the_format_cannot_hold() {
        let bad_name = BTreeMap::from([("A=B".to_string(), "1".to_string())]);
        assert!(matches!(encode(&bad_name), Err(EnvError::Unencodable(_))));
        let bad_value = BTreeMap::from([("A".to_string(), "x\0y".to_string())]);
        assert!(matches!(encode(&bad_value), Err(EnvError::Unencodable(_))));
        let huge = BTreeMap::from([("A".to_string(), "x".repeat(ENV_SIZE))]);
        assert!(matches!(encode(&huge), Err(EnvError::TooLarge(_))));
        assert_eq!(decode(&[0; 10]), Err(EnvError::WrongSize(10)));
    }
}
