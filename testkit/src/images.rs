//! Deterministic stand-ins for OS images.

/// A text-like run repeated through each 64-byte block, then xorshift noise: zstd
/// compresses it somewhat but not trivially, and two seeds differ wherever the noise is.
struct Pattern {
    state: u64,
    text: &'static [u8],
    /// Bytes of each 64-byte block taken from `text`; the rest is noise.
    text_per_block: usize,
    /// Which byte of the xorshift state becomes noise.
    noise_shift: u32,
}

impl Pattern {
    fn bytes(&self, len: usize, seed: u8) -> Vec<u8> {
        let mut state = self.state ^ seed as u64;
        (0..len)
            .map(|i| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                if i % 64 < self.text_per_block {
                    self.text[i % self.text.len()]
                } else {
                    (state >> self.noise_shift) as u8
                }
            })
            .collect()
    }
}

/// `len` bytes of an image that differs by `seed` (bundle and server tests).
pub fn image_bytes(len: usize, seed: u8) -> Vec<u8> {
    Pattern {
        state: 0x2545_f491_4f6c_dd1d,
        text: b"cairn edge os image ",
        text_per_block: 48,
        noise_shift: 24,
    }
    .bytes(len, seed)
}

/// `len` bytes of a slot image that differs by `seed`: noisier than [`image_bytes`]
/// (40 of 64 bytes text). The updater tests and the install bench use it; their bundle
/// sizes, and so the points where the interruption tests cut a download, follow from it.
pub fn slot_image_bytes(len: usize, seed: u8) -> Vec<u8> {
    Pattern {
        state: 0x9e37_79b9_7f4a_7c15,
        text: b"cairn slot image ",
        text_per_block: 40,
        noise_shift: 32,
    }
    .bytes(len, seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_bytes_other_seed_other_noise() {
        for generate in [image_bytes, slot_image_bytes] {
            assert_eq!(generate(10_000, 3), generate(10_000, 3));
            assert_ne!(generate(10_000, 3), generate(10_000, 4));
            assert_eq!(generate(100, 1), generate(1000, 1)[..100]);
        }
    }

    #[test]
    fn each_block_starts_with_text() {
        let text = b"cairn edge os image ";
        let bytes = image_bytes(128, 9);
        assert_eq!(&bytes[..20], text);
        // The text runs on across blocks: byte 64 is text byte 64 % 20.
        assert_eq!(&bytes[64..68], &text[4..8]);
        let bytes = slot_image_bytes(64, 9);
        assert_eq!(&bytes[..17], b"cairn slot image ");
    }
}
