//! Chunked images: made from real erofs pairs, checked whole, rebuilt from the blocks of
//! an older image plus only the chunks the plan fetches; and every inconsistency between
//! index, frames and image refused with an error naming it.

mod common;

use std::fs;
use std::path::Path;

use cairn_bundle::chunked::plan::{Action, Finder, Found};
use cairn_bundle::chunked::{
    block_key, check_all, read_index, ChunkIndex, Filter, FrameDecoder, Layout, OpenChunks, METHOD,
    METHOD_GROUPED, METHOD_WINDOWED,
};
use cairn_bundle::{BundleFile, Image};
use common::erofs::{mkfs_erofs, write_tree};
use common::*;

/// A bundle of `target` with its chunked image, and the index read back from it.
fn chunked_bundle(fx: &Fixture, target: &Path) -> (BundleFile, Image, ChunkIndex) {
    chunked_bundle_with(fx, target, Layout::default())
}

fn chunked_bundle_with(
    fx: &Fixture,
    target: &Path,
    layout: Layout,
) -> (BundleFile, Image, ChunkIndex) {
    grouped_bundle(fx, target, layout, &[])
}

/// A bundle of `target` chunked with `layout`, grouped by `history` if any.
fn grouped_bundle(
    fx: &Fixture,
    target: &Path,
    layout: Layout,
    history: &[&Path],
) -> (BundleFile, Image, ChunkIndex) {
    let mut spec = fx.spec(&[("rootfs", target)]);
    spec.chunked = Some(layout);
    spec.chunk_history = history
        .iter()
        .map(|p| cairn_bundle::writer::DeltaSource {
            image: "rootfs".into(),
            path: p.to_path_buf(),
        })
        .collect();
    let (path, manifest) = fx.build(&spec, &[&fx.key], "chunked.cairn");
    let file = BundleFile::open(&path).unwrap();
    file.check_payloads(|_| {})
        .expect("the writer's chunks check");
    let image = manifest.image("rootfs").unwrap().clone();
    let chunked = image.chunked.as_ref().expect("chunked image written");
    let index = read_index(
        &image,
        chunked,
        file.payload_reader(&chunked.index).unwrap(),
    )
    .unwrap();
    (file, image, index)
}

/// Rebuilds `image` the way a device holding `old` (and an empty output) would, and
/// returns the bytes with how many frame bytes it fetched.
fn rebuild_from(
    file: &BundleFile,
    image: &Image,
    index: &ChunkIndex,
    old: &[u8],
) -> (Vec<u8>, u64) {
    let mut finder = Finder::new(index);
    let bs = index.block_size as usize;
    for (i, block) in old.chunks_exact(bs).enumerate() {
        finder.offer_source(0, (i * bs) as u64, block_key(block));
    }
    let plan = finder.plan();
    let held: std::collections::HashSet<_> = old.chunks_exact(bs).map(block_key).collect();
    let missing: Vec<usize> = (0..index.block_count())
        .filter(|&b| !held.contains(&index.key(b)))
        .collect();
    println!(
        "{} of {} blocks missing, in {} chunks; first {:?}",
        missing.len(),
        index.block_count(),
        plan.fetch_runs().iter().map(|r| r.len()).sum::<usize>(),
        &missing[..missing.len().min(40)]
    );
    let data = &image.chunked.as_ref().unwrap().data;
    let mut decoder = FrameDecoder::new().unwrap();
    let mut out = Vec::new();
    // Fetched chunks decoded, until their last block is written (a device's order).
    let mut open = OpenChunks::new();
    let mut block = 0;
    while block < index.block_count() {
        let (run, c) = (index.run_at(block), index.chunk_of(block));
        block = run.end;
        if plan.fetches(c) {
            if !open.is_open(c) {
                let mut bytes = Vec::new();
                std::io::Read::read_to_end(
                    &mut file.payload_part(data, index.frame(c)).unwrap(),
                    &mut bytes,
                )
                .unwrap();
                let mut chunk = Vec::new();
                index
                    .decode_frame("rootfs", c, &bytes, &out, &mut decoder, &mut chunk)
                    .unwrap();
                open.open(index, c, chunk, run.start);
            }
            open.take(index, c, run, |bytes| out.extend_from_slice(bytes));
            continue;
        }
        for block in run {
            match plan.actions[block] {
                Action::Zeros => out.extend(std::iter::repeat_n(0, index.block_len(block))),
                Action::Copy(Found::Source { offset, .. }) => {
                    out.extend_from_slice(&old[offset as usize..][..index.block_len(block)])
                }
                other => panic!("block {block}: {other:?} with no output"),
            }
        }
    }
    (out, plan.fetch_bytes(index))
}

/// Bytes of the image a fixed chunk covers.
fn chunk_range(index: &ChunkIndex, c: usize) -> std::ops::Range<u64> {
    let blocks = index.runs_of(c).next().unwrap();
    index.block_range(blocks.start).start..index.block_range(blocks.end - 1).end
}

fn erofs_pair(fx: &Fixture, v2_tree: impl FnOnce(&Path)) -> (Vec<u8>, std::path::PathBuf) {
    let t1 = fx.path("tree1");
    write_tree(&t1, 1);
    mkfs_erofs(&t1, &fx.path("v1.erofs"));
    let t2 = fx.path("tree2");
    write_tree(&t2, 2);
    v2_tree(&t2);
    mkfs_erofs(&t2, &fx.path("v2.erofs"));
    (fs::read(fx.path("v1.erofs")).unwrap(), fx.path("v2.erofs"))
}

#[test]
fn an_erofs_update_rebuilds_from_the_old_image_fetching_only_changed_chunks() {
    let fx = Fixture::new();
    let (v1, v2) = erofs_pair(&fx, |_| {});
    let (file, image, index) = chunked_bundle(&fx, &v2);
    let (rebuilt, fetched) = rebuild_from(&file, &image, &index, &v1);
    assert!(rebuilt == fs::read(&v2).unwrap(), "rebuilt image differs");
    let all = index.data_len();
    println!(
        "erofs {} bytes: chunks {all} bytes, fetched {fetched} ({:.1}%)",
        image.size,
        100.0 * fetched as f64 / all as f64
    );
    // 4 of 40 packages changed and one file is new.
    assert!(fetched * 4 < all, "fetched {fetched} of {all}");
}

#[test]
fn files_that_moved_to_a_renamed_directory_are_found_where_they_now_are() {
    // The kernel-update shape: /lib/modules/6.1.0-55 becomes /lib/modules/6.1.0-56 with
    // most modules unchanged, so their blocks sit at other offsets of the new image.
    let fx = Fixture::new();
    let (v1, v2) = erofs_pair(&fx, |tree| {
        let modules = tree.join("lib/modules");
        fs::create_dir_all(&modules).unwrap();
        fs::rename(tree.join("usr/lib"), modules.join("6.1.0-56")).unwrap();
    });
    let (file, image, index) = chunked_bundle(&fx, &v2);
    let (rebuilt, fetched) = rebuild_from(&file, &image, &index, &v1);
    assert!(rebuilt == fs::read(&v2).unwrap(), "rebuilt image differs");
    let all = index.data_len();
    println!("renamed tree: fetched {fetched} of {all} bytes");
    assert!(fetched * 4 < all, "fetched {fetched} of {all}");
}

#[test]
fn both_layouts_rebuild_with_and_without_a_window() {
    // Bundles made before windowed frames (window 0, method `zstd-chunks`) still install,
    // and a windowed one with a window shorter than the image too.
    let fx = Fixture::new();
    let (v1, v2) = erofs_pair(&fx, |_| {});
    for window in [0, 64 << 10, 1 << 20] {
        let layout = Layout {
            window,
            ..Layout::default()
        };
        let (file, image, index) = chunked_bundle_with(&fx, &v2, layout);
        assert_eq!(index.window, window);
        let method = &image.chunked.as_ref().unwrap().data.method;
        assert_eq!(
            method,
            if window == 0 { METHOD } else { METHOD_WINDOWED },
            "window {window}"
        );
        let (rebuilt, fetched) = rebuild_from(&file, &image, &index, &v1);
        assert!(
            rebuilt == fs::read(&v2).unwrap(),
            "window {window}: rebuilt image differs"
        );
        println!(
            "window {window}: frames {} bytes, fetched {fetched}",
            index.data_len()
        );
    }
}

#[test]
fn grouped_chunks_rebuild_fetching_only_the_blocks_no_earlier_release_holds() {
    // v0 -> v1 -> v2, grouped by v0 and v1: a device holding either fetches only the
    // frames of the blocks it lacks, and no block it holds comes with them.
    let fx = Fixture::new();
    let (v1, v2) = erofs_pair(&fx, |tree| {
        fs::write(tree.join("usr/new-in-v2"), vec![7u8; 20_000]).unwrap();
    });
    let t0 = fx.path("tree0");
    write_tree(&t0, 0);
    mkfs_erofs(&t0, &fx.path("v0.erofs"));
    let v0 = fs::read(fx.path("v0.erofs")).unwrap();
    let history = [fx.path("v0.erofs"), fx.path("v1.erofs")];
    let history: Vec<&Path> = history.iter().map(|p| p.as_path()).collect();
    let (file, image, index) = grouped_bundle(&fx, &v2, Layout::default(), &history);
    assert_eq!(image.chunked.as_ref().unwrap().data.method, METHOD_GROUPED);
    assert!(index.is_grouped());
    let target = fs::read(&v2).unwrap();
    for (name, old) in [("v0", &v0), ("v1", &v1)] {
        let (rebuilt, fetched) = rebuild_from(&file, &image, &index, old);
        assert!(rebuilt == target, "rebuilt from {name} differs");
        let held: std::collections::HashSet<_> = old.chunks(4096).map(block_key).collect();
        let zeros = block_key(&[0; 4096]);
        let missing = (0..index.block_count())
            .filter(|&b| !held.contains(&index.key(b)) && index.key(b) != zeros)
            .count();
        let mut finder = Finder::new(&index);
        for (i, b) in old.chunks_exact(4096).enumerate() {
            finder.offer_source(0, i as u64 * 4096, block_key(b));
        }
        let plan = finder.plan();
        let fetched_blocks = plan.count(|a| *a == Action::Fetch);
        println!(
            "from {name}: {missing} of {} blocks missing, {fetched_blocks} fetched in {fetched} \
             bytes of {} chunks' {}",
            index.block_count(),
            index.chunk_count(),
            index.data_len()
        );
        assert!(missing > 0);
        assert_eq!(fetched_blocks, missing, "only the blocks {name} lacks");
    }
    // The index survives its own encoding, as a device parses it.
    let chunked = image.chunked.as_ref().unwrap();
    let again = ChunkIndex::parse(&index.encode(), &image, chunked.data.size).unwrap();
    assert_eq!(again, index);
}

/// `len` bytes that look like arm64 code: every fifth word a `BL` to one of 64
/// functions, the others drawn from a few instructions; `seed` picks which.
fn arm64_code(len: usize, seed: u32) -> Vec<u8> {
    let mut state = 0x2545_F491 ^ seed;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        state
    };
    let others = [
        0xD503_201F_u32,
        0xA9BF_7BFD,
        0x9100_03FD,
        0xF940_0000,
        0xAA00_03E0,
    ];
    (0..len / 4)
        .flat_map(|i| {
            let r = next();
            let word = if i % 5 == 0 {
                let function = (r % 64) * 0x8000;
                0x9400_0000 | (function.wrapping_sub(i as u32) & 0x03FF_FFFF)
            } else {
                others[r as usize % others.len()]
            };
            word.to_le_bytes()
        })
        .collect()
}

#[test]
fn arm64_code_goes_through_the_branch_filter_and_comes_back_whole() {
    let fx = Fixture::new();
    let v1 = arm64_code(2 << 20, 1);
    let mut v2 = v1.clone();
    v2[1 << 20..].copy_from_slice(&arm64_code(1 << 20, 2));
    let (p1, p2) = (fx.path("v1.img"), fx.path("v2.img"));
    fs::write(&p1, &v1).unwrap();
    fs::write(&p2, &v2).unwrap();
    let (file, image, index) = grouped_bundle(&fx, &p2, Layout::default(), &[p1.as_path()]);
    assert_eq!(
        index.filter(),
        Filter::Arm64,
        "the builder found the filter helps"
    );
    let (rebuilt, fetched) = rebuild_from(&file, &image, &index, &v1);
    assert!(rebuilt == v2, "rebuilt from v1 differs");
    assert!(fetched > 0);

    // The same frames read as unfiltered decode to other bytes: refused.
    let size = image.chunked.as_ref().unwrap().data.size;
    let mut unfiltered = index.encode();
    unfiltered[32..36].copy_from_slice(&0u32.to_le_bytes());
    let wrong = ChunkIndex::parse(&unfiltered, &image, size).unwrap();
    let data = &image.chunked.as_ref().unwrap().data;
    let err = check_all(&image, &wrong, file.payload_part(data, 0..size).unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains("does not match the signed index"), "{err}");
    // And a filter this build does not know is refused by the parser.
    let mut unknown = index.encode();
    unknown[32..36].copy_from_slice(&7u32.to_le_bytes());
    let err = ChunkIndex::parse(&unknown, &image, size).unwrap_err();
    assert!(err.to_string().contains("filter 7"), "{err}");
}

#[test]
fn random_bytes_are_not_filtered() {
    let fx = Fixture::new();
    let v1 = fx.image("v1.img", 1 << 20, 3);
    let mut bytes = fs::read(&v1).unwrap();
    bytes[1 << 19..].fill(0x11);
    let v2 = fx.path("v2.img");
    fs::write(&v2, &bytes).unwrap();
    let (_, _, index) = grouped_bundle(&fx, &v2, Layout::default(), &[v1.as_path()]);
    assert_eq!(index.filter(), Filter::None);
}

#[test]
fn a_grouped_index_that_does_not_cover_every_block_once_in_order_is_refused() {
    let fx = Fixture::new();
    let v1 = fx.image("v1.img", 1 << 20, 3);
    let mut bytes = fs::read(&v1).unwrap();
    // Four regions changed: the 256 blocks are then runs of two classes, interleaved.
    for at in [40, 90, 150, 200] {
        bytes[at * 4096..][..8192].fill(0x5a);
    }
    let v2 = fx.path("v2.img");
    fs::write(&v2, &bytes).unwrap();
    let (file, image, index) = grouped_bundle(&fx, &v2, Layout::default(), &[v1.as_path()]);
    let size = image.chunked.as_ref().unwrap().data.size;
    let good = index.encode();
    assert!(index.chunk_count() >= 2, "{} chunks", index.chunk_count());
    let parse = |bytes: &[u8]| {
        ChunkIndex::parse(bytes, &image, size)
            .map(|_| ())
            .unwrap_err()
            .to_string()
    };
    // Where the runs are: after the header, the block keys, and the chunks' hashes,
    // frame lengths and run counts.
    let hashes_at = 40 + index.block_count() * 8;
    let runs_at = hashes_at + index.chunk_count() * (32 + 8);
    let u32_at = |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().unwrap());
    let put = |b: &mut Vec<u8>, at: usize, v: u32| b[at..at + 4].copy_from_slice(&v.to_le_bytes());

    // The first run made one block longer: that block is then in two chunks, or past
    // its chunk's next run, or over the most a chunk holds.
    let mut twice = good.clone();
    let len = u32_at(&twice, runs_at + 4);
    put(&mut twice, runs_at + 4, len + 1);
    let err = parse(&twice);
    assert!(
        ["two chunks", "out of order", "over"]
            .iter()
            .any(|m| err.contains(m)),
        "{err}"
    );
    // One block shorter: a block in no chunk.
    let mut none = good.clone();
    put(&mut none, runs_at + 4, len - 1);
    assert!(parse(&none).contains("in no chunk"), "{}", parse(&none));
    // A run past the image's end.
    let mut past = good.clone();
    put(&mut past, runs_at, index.block_count() as u32);
    assert!(parse(&past).contains("a run of"), "{}", parse(&past));
    // Run counts that promise more runs than there are bytes for.
    let mut counts = good.clone();
    let count_at = hashes_at + index.chunk_count() * (32 + 4);
    put(&mut counts, count_at, u32_at(&good, count_at) + 1);
    assert!(
        parse(&counts).contains("bytes of runs"),
        "{}",
        parse(&counts)
    );
    // A chunk with no run.
    let mut empty = good.clone();
    put(&mut empty, count_at, 0);
    assert!(parse(&empty).contains("bytes of runs") || parse(&empty).contains("no runs"));
    // Version 3's bytes under version 2's number.
    let mut version = good.clone();
    put(&mut version, 8, 2);
    assert!(parse(&version).contains("need"), "{}", parse(&version));
    ChunkIndex::parse(&good, &image, size).expect("the untouched index parses");
    // A chunk's hash that is not its bytes' parses (only decoding can tell), and its
    // frame is then refused.
    let mut hash = good.clone();
    hash[hashes_at + 32] ^= 1;
    let wrong = ChunkIndex::parse(&hash, &image, size).unwrap();
    let data = &image.chunked.as_ref().unwrap().data;
    let err = check_all(&image, &wrong, file.payload_part(data, 0..size).unwrap())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("chunk 1 does not match the signed index"),
        "{err}"
    );
}

#[test]
fn a_window_that_starts_like_a_zstd_dictionary_is_still_raw_content() {
    // Chunk 32's window (the 64 KiB before it) begins with zstd's dictionary magic, as a
    // dictionary file in the image could; decoded as a formatted dictionary, it fails.
    let fx = Fixture::new();
    let target = fx.image("rootfs.img", 1 << 20, 5);
    let mut bytes = fs::read(&target).unwrap();
    bytes[64 << 10..][..4].copy_from_slice(&[0x37, 0xA4, 0x30, 0xEC]);
    fs::write(&target, &bytes).unwrap();
    let layout = Layout {
        window: 64 << 10,
        ..Layout::default()
    };
    // Builds and decodes every frame (the writer's check_all), chunk 32 among them.
    let (_, _, index) = chunked_bundle_with(&fx, &target, layout);
    assert_eq!(chunk_range(&index, 32).start, 128 << 10);
}

#[test]
fn a_windowed_frame_needs_the_bytes_before_its_chunk() {
    let fx = Fixture::new();
    let target = fx.image("rootfs.img", 1 << 20, 3);
    let layout = Layout {
        window: 256 << 10,
        ..Layout::default()
    };
    let (file, image, index) = chunked_bundle_with(&fx, &target, layout);
    let chunked = image.chunked.clone().unwrap();
    let c = index.chunk_count() / 2;
    let frame = index.frame(c);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut file.payload_part(&chunked.data, frame).unwrap(),
        &mut bytes,
    )
    .unwrap();
    let image_bytes = fs::read(&target).unwrap();
    let start = chunk_range(&index, c).start as usize;
    let mut decoder = FrameDecoder::new().unwrap();
    let mut out = Vec::new();
    index
        .decode_frame(
            "rootfs",
            c,
            &bytes,
            &image_bytes[..start],
            &mut decoder,
            &mut out,
        )
        .expect("decodes with the image's own preceding bytes");
    assert_eq!(out, image_bytes[start..chunk_range(&index, c).end as usize]);

    // Fewer bytes than the window: refused before decoding.
    let short = &image_bytes[start - 1000..start];
    let err = index
        .decode_frame("rootfs", c, &bytes, short, &mut decoder, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains("bytes before the chunk"), "{err}");
    // Other bytes before it (a device that built the image wrong): never taken.
    let wrong = vec![0x5a; start];
    let err = index
        .decode_frame("rootfs", c, &bytes, &wrong, &mut decoder, &mut out)
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("chunk {c}")), "{err}");

    // An index whose window disagrees with the data payload's method.
    let mut unwindowed = chunked.clone();
    unwindowed.data.method = METHOD.into();
    let err = read_index(
        &image,
        &unwindowed,
        file.payload_reader(&chunked.index).unwrap(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("window") && err.contains(METHOD), "{err}");
}

#[test]
fn every_inconsistency_between_index_frames_and_image_is_refused() {
    let fx = Fixture::new();
    let target = fx.image("rootfs.img", 1 << 20, 3);
    let (file, image, index) = chunked_bundle(&fx, &target);
    let chunked = image.chunked.clone().unwrap();
    let mut index_bytes = Vec::new();
    std::io::Read::read_to_end(
        &mut file.payload_reader(&chunked.index).unwrap(),
        &mut index_bytes,
    )
    .unwrap();
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut file.payload_reader(&chunked.data).unwrap(), &mut data)
        .unwrap();
    let parse = |bytes: &[u8], image: &Image, data_len: u64| {
        ChunkIndex::parse(bytes, image, data_len)
            .unwrap_err()
            .to_string()
    };

    let mut bad = index_bytes.clone();
    bad[0] ^= 1;
    assert!(parse(&bad, &image, chunked.data.size).contains("magic"));
    let short = &index_bytes[..index_bytes.len() - 4];
    assert!(parse(short, &image, chunked.data.size).contains("need"));
    let mut other = image.clone();
    other.size += 4096;
    assert!(parse(&index_bytes, &other, chunked.data.size).contains("the image has"));
    assert!(parse(&index_bytes, &image, chunked.data.size + 1).contains("add up to"));
    let mut zero_frame = index_bytes.clone();
    let last = zero_frame.len() - 4;
    zero_frame[last..].copy_from_slice(&0u32.to_le_bytes());
    assert!(parse(&zero_frame, &image, chunked.data.size).contains("frame of chunk"));

    // The index payload tampered with: its signed digest catches it.
    let tampered = read_index(&image, &chunked, &bad[..])
        .unwrap_err()
        .to_string();
    assert!(tampered.contains("hash mismatch"), "{tampered}");
    // A truncated index payload.
    let truncated = read_index(&image, &chunked, &index_bytes[..100])
        .unwrap_err()
        .to_string();
    assert!(truncated.contains("early"), "{truncated}");

    // Frames in the wrong order: each decodes, but not to its chunk's blocks.
    assert!(index.chunk_count() >= 2);
    let (f0, f1) = (index.frame(0), index.frame(1));
    let mut swapped = data[f1.start as usize..f1.end as usize].to_vec();
    swapped.extend_from_slice(&data[f0.start as usize..f0.end as usize]);
    let mut decoder = FrameDecoder::new().unwrap();
    let mut out = Vec::new();
    let err = index
        .decode_frame(
            "rootfs",
            0,
            &swapped[..(f1.end - f1.start) as usize],
            &[],
            &mut decoder,
            &mut out,
        )
        .unwrap_err()
        .to_string();
    // Refused by the block hashes, the frame's length, or (a windowed frame decoded
    // without the bytes it references) by zstd itself.
    assert!(err.contains("payload is corrupt: chunk 0"), "{err}");
    // A flipped byte inside a frame, and a truncated data payload.
    let mut flipped = data.clone();
    flipped[f1.start as usize + 40] ^= 0x10;
    let err = check_all(&image, &index, &flipped[..])
        .unwrap_err()
        .to_string();
    assert!(err.contains("chunk 1"), "{err}");
    let err = check_all(&image, &index, &data[..data.len() - 10])
        .unwrap_err()
        .to_string();
    assert!(err.contains("ends") && err.contains("early"), "{err}");
    check_all(&image, &index, &data[..]).expect("the untouched payload checks");
}
