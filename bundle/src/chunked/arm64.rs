//! The arm64 branch filter: what a grouped chunk's blocks go through before zstd, when
//! the builder found that it makes the image's frames smaller.
//!
//! Code calls the same function from many places, and a `BL` (branch with link) or an
//! `ADRP` (page address) holds its target relative to where the instruction is: the same
//! call is different bytes at every call site. The filter rewrites each such field into
//! its absolute target, taking the instruction's offset in the image as its address, so
//! that repeated calls become repeated bytes zstd can match. It is the branch/call/jump
//! (BCJ) filter xz applies to arm64 code, with the same two rules:
//! - `BL` (top six bits `100101`): its 26-bit word offset, plus the word's address / 4,
//!   modulo 2^26;
//! - `ADRP` (`1xx10000` in the top byte): its 21-bit page offset, plus the address /
//!   4096, only when the offset is within ±512 MiB (bits 17..20 of it all equal), the
//!   result kept in that range by sign-extending bit 17, so that decoding sees the same
//!   condition and undoes exactly what was done.
//!
//! Every 4-byte word is looked at, data or code: the filter is a bijection on words, so
//! decoding restores any bytes, and a word that only looks like an instruction costs
//! nothing but the chance of a match. Blocks are checked against the index after
//! decoding, on the original bytes.

/// Rewrites `bytes` in place, the image's bytes from offset `at` (a multiple of 4): relative
/// branch targets become absolute.
pub fn encode(bytes: &mut [u8], at: u64) {
    filter(bytes, at, true)
}

/// Undoes [`encode`] on the same bytes at the same offset.
pub fn decode(bytes: &mut [u8], at: u64) {
    filter(bytes, at, false)
}

fn filter(bytes: &mut [u8], at: u64, encoding: bool) {
    debug_assert_eq!(at % 4, 0);
    for (i, word) in bytes.chunks_exact_mut(4).enumerate() {
        let address = (at + i as u64 * 4) as u32;
        let instruction = u32::from_le_bytes([word[0], word[1], word[2], word[3]]);
        let filtered = if instruction >> 26 == 0b100101 {
            let offset = instruction & 0x03FF_FFFF;
            let shift = address >> 2;
            let target = match encoding {
                true => offset.wrapping_add(shift),
                false => offset.wrapping_sub(shift),
            };
            0x9400_0000 | (target & 0x03FF_FFFF)
        } else if instruction & 0x9F00_0000 == 0x9000_0000 {
            // immlo in bits 29..31, immhi in bits 5..24: a 21-bit page offset.
            let offset = ((instruction >> 29) & 3) | ((instruction >> 3) & 0x001F_FFFC);
            if (offset.wrapping_add(0x0002_0000)) & 0x001C_0000 != 0 {
                continue; // beyond ±512 MiB: left as it is, and so by decoding too
            }
            let shift = address >> 12;
            let target = match encoding {
                true => offset.wrapping_add(shift),
                false => offset.wrapping_sub(shift),
            };
            (instruction & 0x9000_001F)
                | ((target & 3) << 29)
                | ((target & 0x0003_FFFC) << 3)
                | (0u32.wrapping_sub(target & 0x0002_0000) & 0x00E0_0000)
        } else {
            continue;
        };
        word.copy_from_slice(&filtered.to_le_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(w: &[u32]) -> Vec<u8> {
        w.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    #[test]
    fn the_same_call_from_two_places_becomes_the_same_bytes() {
        // BL to 0x1000 from 0x100 (offset 0x3C0 words) and from 0x200 (0x380 words).
        let mut code = vec![0u8; 0x300];
        code[0x100..0x104].copy_from_slice(&(0x9400_0000u32 | 0x3C0).to_le_bytes());
        code[0x200..0x204].copy_from_slice(&(0x9400_0000u32 | 0x380).to_le_bytes());
        let original = code.clone();
        encode(&mut code, 0);
        assert_eq!(code[0x100..0x104], code[0x200..0x204]);
        decode(&mut code, 0);
        assert_eq!(code, original);
    }

    #[test]
    fn any_bytes_at_any_offset_come_back_unchanged() {
        // Every BL and ADRP form, far and near offsets, and words that are neither.
        let mut state = 0x9E37_79B9u32;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state
        };
        let mut sample: Vec<u32> = (0..4096)
            .map(|i| match i % 4 {
                0 => 0x9400_0000 | (next() & 0x03FF_FFFF),
                1 => (next() & 0x6FFF_FFFF) | 0x9000_0000,
                2 => 0x9000_0000 | (next() & 0x60FF_FFE0) | (i & 0x1F),
                _ => next(),
            })
            .collect();
        sample.extend([
            0x9400_0000,
            0x97FF_FFFF,
            0x9000_0000,
            0xF0FF_FFFF,
            0xFFFF_FFFF,
        ]);
        let original = words(&sample);
        for at in [0u64, 4, 4096, 0x1234_5678 & !3, (1 << 40) + 8] {
            let mut bytes = original.clone();
            bytes.extend([1, 2, 3]); // a tail shorter than a word is left alone
            encode(&mut bytes, at);
            assert_ne!(bytes[..original.len()], original[..], "at {at}");
            decode(&mut bytes, at);
            assert_eq!(bytes[..original.len()], original[..], "at {at}");
            assert_eq!(bytes[original.len()..], [1, 2, 3]);
        }
    }
}
