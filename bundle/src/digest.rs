//! The digests that check payload and image bytes.
//!
//! SHA-256 is every image's and payload's identity: delta sources, the server's plans,
//! the slot records and attestation all name images by it. A manifest may also carry the
//! BLAKE3 of the same bytes; a device then checks that one instead, because hashing is
//! most of an install's CPU time: BLAKE3 runs at ~4.8 GB/s on one core here against
//! SHA-256's 1.4 GB/s (SHA-NI). Both are signed, so either proves the bytes.

use std::io::{self, Read};

use sha2::{Digest, Sha256};

use crate::chunks::for_each_chunk;

/// Which digest a check uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    Sha256,
    Blake3,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Blake3 => "blake3",
        }
    }
}

/// The digest to check bytes against: BLAKE3 when the manifest has it, else SHA-256.
pub fn checked<'a>(sha256: &'a str, blake3: Option<&'a str>) -> (Algorithm, &'a str) {
    match blake3 {
        Some(b) => (Algorithm::Blake3, b),
        None => (Algorithm::Sha256, sha256),
    }
}

/// An incremental hash of either algorithm.
pub enum Hasher {
    Sha256(Sha256),
    Blake3(Box<blake3::Hasher>),
}

impl Hasher {
    pub fn new(algorithm: Algorithm) -> Hasher {
        match algorithm {
            Algorithm::Sha256 => Hasher::Sha256(Sha256::new()),
            Algorithm::Blake3 => Hasher::Blake3(Box::new(blake3::Hasher::new())),
        }
    }

    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(bytes),
            Hasher::Blake3(h) => {
                h.update(bytes);
            }
        }
    }

    /// Lowercase hex, as manifests write digests.
    pub fn finalize_hex(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Blake3(h) => h.finalize().to_hex().to_string(),
        }
    }
}

/// The digest of everything `input` yields, and how many bytes that was.
pub fn hash_reader(algorithm: Algorithm, input: &mut impl Read) -> io::Result<(String, u64)> {
    let mut hasher = Hasher::new(algorithm);
    let total = for_each_chunk(input, |bytes| {
        hasher.update(bytes);
        Ok(())
    })?;
    Ok((hasher.finalize_hex(), total))
}

/// SHA-256 and BLAKE3 of everything `input` yields in one pass (the bundle writer
/// records both), and the length.
pub fn both_digests(input: &mut impl Read) -> io::Result<(String, String, u64)> {
    let mut sha256 = Sha256::new();
    let mut blake3 = blake3::Hasher::new();
    let total = for_each_chunk(input, |bytes| {
        sha256.update(bytes);
        blake3.update(bytes);
        Ok(())
    })?;
    Ok((
        hex::encode(sha256.finalize()),
        blake3.finalize().to_hex().to_string(),
        total,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_answers() {
        let (sha, n) = hash_reader(Algorithm::Sha256, &mut &b"abc"[..]).unwrap();
        assert_eq!(n, 3);
        assert_eq!(
            sha,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let (b3, _) = hash_reader(Algorithm::Blake3, &mut &b"abc"[..]).unwrap();
        assert_eq!(
            b3,
            "6437b3ac38465133ffb63b75273a8db548c558465d79db03fd359c6cd5bd9d85"
        );
    }
}
