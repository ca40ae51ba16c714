//! Round trips on synthetic pairs, and every kind of malformed delta refused with an
//! error that names it.

use std::io;

use super::hash_tree::{tree, tree_size};
use super::*;
use cairn_testkit::image_bytes;

const B: usize = BLOCK_SIZE as usize;

fn encode_to_vec(source: &[u8], target: &[u8], tree: Option<HashTree>) -> Vec<u8> {
    let mut delta = Vec::new();
    encode(source, target, 12, tree, &mut delta).unwrap();
    delta
}

fn decode_to_vec(delta: &[u8], source: &[u8], size: u64) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    decode(&mut &delta[..], source, size, &mut out).map(|()| out)
}

/// A payload with the given header fields and raw (uncompressed) operation bytes.
fn payload(source_size: u64, target_size: u64, ops: &[u8]) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&BLOCK_SIZE.to_le_bytes());
    p.extend_from_slice(&0u32.to_le_bytes());
    p.extend_from_slice(&source_size.to_le_bytes());
    p.extend_from_slice(&target_size.to_le_bytes());
    p.extend_from_slice(&zstd::bulk::compress(ops, 3).unwrap());
    p
}

fn ops(parts: &[&[u64]]) -> Vec<u8> {
    let mut out = Vec::new();
    for part in parts {
        out.push(part[0] as u8);
        for &n in &part[1..] {
            varint::write(&mut out, n).unwrap();
        }
    }
    out
}

/// A source, and a target that moves, changes, inserts and drops blocks of it and ends
/// in a partial block.
fn pair() -> (Vec<u8>, Vec<u8>) {
    let source = image_bytes(300 * B, 1);
    let mut target = source.clone();
    target[10 * B + 100..10 * B + 300].copy_from_slice(&image_bytes(200, 2));
    target.splice(100 * B..100 * B, image_bytes(3 * B + 17, 3));
    target.drain(200 * B..220 * B);
    target.extend_from_slice(&source[..5 * B]);
    target.extend_from_slice(&image_bytes(999, 4));
    (source, target)
}

#[test]
fn every_kind_of_change_round_trips_and_the_thread_count_changes_nothing() {
    let (source, target) = pair();
    let mut deltas = Vec::new();
    for threads in [1, 2, 3] {
        let mut delta = Vec::new();
        let mut seen = Vec::new();
        encode_with(
            &source,
            &target,
            12,
            None,
            Some(threads),
            &mut |done| seen.push(done),
            &mut delta,
        )
        .unwrap();
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "progress only rises");
        assert_eq!(seen.last(), Some(&(target.len() as u64)));
        deltas.push(delta);
    }
    assert!(deltas.iter().all(|d| *d == deltas[0]));
    assert!(decode_to_vec(&deltas[0], &source, target.len() as u64).unwrap() == target);
    assert!(
        deltas[0].len() * 20 < target.len(),
        "{} bytes",
        deltas[0].len()
    );

    for (source, target) in [
        (&[][..], &target[..]),
        (&source[..], &[][..]),
        (&[][..], &[][..]),
    ] {
        let delta = encode_to_vec(source, target, None);
        assert!(decode_to_vec(&delta, source, target.len() as u64).unwrap() == target);
    }
}

#[test]
fn a_hash_tree_is_computed_by_the_decoder_not_carried() {
    let (source_data, target_data) = (image_bytes(200 * B, 1), {
        let mut t = image_bytes(200 * B, 1);
        t[50 * B..51 * B].copy_from_slice(&image_bytes(B, 9));
        t
    });
    let salt = b"0123456789abcdef";
    let with_tree = |data: &[u8]| [data, &tree(salt, data)].concat();
    let (source, target) = (with_tree(&source_data), with_tree(&target_data));
    let described = HashTree {
        data_size: target_data.len() as u64,
        salt,
    };
    let delta = encode_to_vec(&source, &target, Some(described));
    let plain = encode_to_vec(&source, &target, None);
    assert!(decode_to_vec(&delta, &source, target.len() as u64).unwrap() == target);
    assert!(
        delta.len() + 64 < plain.len(),
        "{} vs {}",
        delta.len(),
        plain.len()
    );

    // A tree that does not match the target's bytes (another salt) is not relied on.
    let wrong = HashTree {
        data_size: target_data.len() as u64,
        salt: b"another salt",
    };
    assert_eq!(encode_to_vec(&source, &target, Some(wrong)), plain);

    // A tree op whose tree would not end the target exactly is refused.
    let size = target.len() as u64;
    let short = ops(&[&[3, 100 * B as u64, 0], &[1, 0, 100 * B as u64], &[0]]);
    let err =
        decode_to_vec(&payload(source.len() as u64, size, &short), &source, size).unwrap_err();
    assert!(err.to_string().contains("does not end a target"), "{err}");
    assert_eq!(tree_size(100 * B as u64), B as u64);
    // A tree op anywhere but first is an unknown operation there.
    let late = ops(&[&[1, 0, B as u64], &[3, 200 * B as u64, 0], &[0]]);
    let err = decode_to_vec(&payload(source.len() as u64, size, &late), &source, size).unwrap_err();
    assert!(
        err.to_string()
            .contains("unknown operation 0x03 at target offset 4096"),
        "{err}"
    );
}

#[test]
fn malformed_deltas_are_refused_with_what_is_wrong() {
    let source = image_bytes(8 * B, 1);
    let s = source.len() as u64;
    let refused = |delta: Vec<u8>, size: u64, expected: &str| {
        let err = decode_to_vec(&delta, &source, size).unwrap_err();
        assert!(
            err.to_string().contains(expected),
            "expected '{expected}', got '{err}'"
        );
    };
    let copy_all = ops(&[&[1, 0, s], &[0]]);
    assert!(decode_to_vec(&payload(s, s, &copy_all), &source, s).unwrap() == source);

    let mut bad_magic = payload(s, s, &copy_all);
    bad_magic[0] = b'X';
    refused(bad_magic, s, "bad magic");
    let mut bad_block_size = payload(s, s, &copy_all);
    bad_block_size[8..12].copy_from_slice(&512u32.to_le_bytes());
    refused(bad_block_size, s, "block size 512 is not 4096");
    let mut bad_reserved = payload(s, s, &copy_all);
    bad_reserved[12] = 1;
    refused(bad_reserved, s, "reserved header field is 0x1, not 0");
    refused(
        payload(s + 1, s, &copy_all),
        s,
        "source of 32769 bytes, this one has 32768",
    );
    refused(payload(s, s, &copy_all), s + 1, "the manifest says 32769");
    refused(
        payload(s, s, &ops(&[&[1, 1, s], &[0]])),
        s,
        "past the source's 32768 bytes",
    );
    refused(
        payload(s, s, &ops(&[&[1, 0, s], &[1, 0, 1], &[0]])),
        s,
        "runs past the target",
    );
    refused(
        payload(s, s, &ops(&[&[1, 0, 100], &[0]])),
        s,
        "operations produce 100 bytes, the target has 32768",
    );
    refused(
        payload(s, s, &ops(&[&[9]])),
        s,
        "unknown operation 0x09 at target offset 0",
    );
    refused(
        payload(s, s, &ops(&[&[1, 0, s]])),
        s,
        "operation stream ends before its end mark",
    );
    refused(
        payload(s, s, &ops(&[&[1, 0, s], &[0], &[1, 0, 1]])),
        s,
        "continue after the end mark",
    );
    // Diffs: a window outside the source, controls that do not add up, a cursor that
    // leaves the window, a diff larger than one decoder buffer.
    refused(
        payload(s, 10, &ops(&[&[2, s - 4, 8, 10, 1, 10, 0, 0], &[0]])),
        10,
        "diff at target offset 0 reads source bytes",
    );
    refused(
        payload(s, 10, &ops(&[&[2, 0, 8, 10, 1, 4, 4, 0], &[0]])),
        10,
        "controls produce 8 bytes, not 10",
    );
    // (seek 4 is 8 zigzag-encoded)
    let leaves_window = ops(&[&[2, 0, 8, 10, 2, 5, 0, 8, 5, 0, 0, 10, 0], &[0]]);
    refused(
        payload(s, 10, &leaves_window),
        10,
        "reads window bytes 9..+5, outside its 8 bytes",
    );
    let big = MAX_DIFF_TARGET as u64 + 1;
    refused(
        payload(s, big, &ops(&[&[2, 0, 8, big, 0], &[0]])),
        big,
        "diff target length 4194305 exceeds 4194304",
    );
    // Add bytes come as runs of zeros then literal bytes, which must fit the controls.
    refused(
        payload(s, 10, &ops(&[&[2, 0, 8, 10, 1, 10, 0, 0, 4, 7], &[0]])),
        10,
        "an add run of 4 zeros and 7 bytes does not fit the 10 add bytes left",
    );
    refused(
        payload(s, 10, &ops(&[&[2, 0, 8, 10, 1, 10, 0, 0, 0, 0], &[0]])),
        10,
        "diff at target offset 0: an empty add run",
    );
    let truncated = payload(
        s,
        10,
        &[ops(&[&[2, 0, 8, 10, 1, 10, 0, 0, 0, 10]]), vec![1; 5]].concat(),
    );
    refused(
        truncated,
        10,
        "operation stream ends inside a diff's add bytes",
    );
    // A real delta cut short.
    let (src, target) = pair();
    let delta = encode_to_vec(&src, &target, None);
    let cut = &delta[..delta.len() - 10];
    assert!(decode_to_vec(cut, &src, target.len() as u64).is_err());
}
