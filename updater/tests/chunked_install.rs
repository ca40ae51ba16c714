//! Chunked installs over HTTP from a real server on loopback: a device two releases
//! behind builds the new image from the blocks in both its slots and fetches only the
//! chunks it has nowhere; an install killed part-way resumes without fetching again what
//! it had written; a corrupt chunk is refused and nothing is armed.

mod common;

use std::collections::HashSet;
use std::fs;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use cairn_bundle::chunked::{block_hash, block_key, read_index, Layout};
use cairn_bundle::{BundleFile, Chunked, Image};
use cairn_testkit::{copy_key, slot_image_bytes};
use cairn_updater::bootstate::SlotId;
use common::http::{serve, Faults};
use common::*;

const MIB: usize = 1 << 20;

fn release(version: &str, rootfs: Vec<u8>, kernel: Vec<u8>, initrd: Vec<u8>) -> Release {
    Release {
        version: version.into(),
        security_version: 1,
        rootfs,
        kernel,
        initrd,
    }
}

/// A release sharing no block with [`Release::new`]'s: every chunk must be fetched.
fn unrelated(version: &str, seed: u8) -> Release {
    release(
        version,
        slot_image_bytes(6 * MIB, seed),
        slot_image_bytes(512 << 10, seed.wrapping_add(1)),
        slot_image_bytes(256 << 10, seed.wrapping_add(2)),
    )
}

/// `base` with `with` written at `at`.
fn patched(base: &[u8], at: usize, with: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    out[at..at + with.len()].copy_from_slice(with);
    out
}

/// A bundle of `r` that carries chunked images and no delta.
fn chunked_bundle(d: &Device, r: &Release) -> std::path::PathBuf {
    chunked_bundle_with(d, r, Layout::default())
}

fn chunked_bundle_with(d: &Device, r: &Release, layout: Layout) -> std::path::PathBuf {
    d.bundle_with(r, None, &r.version, &[copy_key(&d.key)], |spec| {
        spec.chunked = Some(layout);
    })
}

/// `bundle` opened, with its rootfs image and that image's chunked payloads.
fn rootfs_chunks(bundle: &std::path::Path) -> (BundleFile, Image, Chunked) {
    let file = BundleFile::open(bundle).unwrap();
    let image = file.bundle.manifest.image("rootfs").unwrap().clone();
    let chunked = image.chunked.clone().expect("a chunked rootfs");
    (file, image, chunked)
}

/// The numbers a `cairn install` printed for image `name`'s chunked build: blocks kept
/// and copied, bytes and blocks fetched.
fn reused(stderr: &str, name: &str) -> (usize, usize, u64, usize) {
    let line = stderr
        .split(['\n', '\r'])
        .find(|l| l.starts_with(&format!("{name}: ")) && l.contains("already in place"))
        .unwrap_or_else(|| panic!("no chunked summary for {name} in:\n{stderr}"));
    let numbers: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    // kept, copied, zero, chunks, blocks, bytes
    (
        numbers[0] as usize,
        numbers[1] as usize,
        numbers[5],
        numbers[4] as usize,
    )
}

#[test]
fn a_device_two_releases_behind_fetches_only_the_chunks_no_slot_holds() {
    two_releases_behind(Layout::default(), false);
}

#[test]
fn the_same_with_the_unwindowed_layout_older_devices_read() {
    // 32 KiB chunks, each frame decoding alone: what `--chunk-window 0` makes.
    two_releases_behind(Layout::unwindowed(), false);
}

#[test]
fn the_same_with_chunks_grouped_by_the_releases_devices_hold() {
    // The bundle grouped by v1 and v2: the blocks new in v3 come in one frame, and not
    // one block either slot holds comes with them.
    two_releases_behind(Layout::default(), true);
}

fn two_releases_behind(layout: Layout, grouped: bool) {
    let base = slot_image_bytes(6 * MIB, 1);
    let (kernel1, initrd1) = (
        slot_image_bytes(512 << 10, 51),
        slot_image_bytes(256 << 10, 81),
    );
    let v1 = release("1.0.0", base.clone(), kernel1.clone(), initrd1.clone());
    let fix = slot_image_bytes(200 << 10, 20);
    let initrd2 = slot_image_bytes(256 << 10, 82);
    let v2 = release(
        "2.0.0",
        patched(&base, MIB, &fix),
        slot_image_bytes(512 << 10, 52),
        initrd2.clone(),
    );
    // v3 keeps v2's fix, adds one new region, and has v1's kernel and v2's initrd.
    let new = slot_image_bytes(100 << 10, 30);
    let v3 = release(
        "3.0.0",
        patched(&v2.rootfs, 3 * MIB, &new),
        kernel1,
        initrd2,
    );

    let mut d = Device::new(&v1);
    d.cairn_ok(&["install", d.bundle(&v2, None).to_str().unwrap()]);
    assert_eq!(d.reboot(), SlotId::B);
    d.cairnd_once();
    assert_eq!(phase(&d.status()), "committed");
    // Now B runs v2 and A still holds v1.

    let mut history = Vec::new();
    if grouped {
        for (n, r) in [&v1, &v2].iter().enumerate() {
            for (name, bytes) in [
                ("rootfs", &r.rootfs),
                ("kernel", &r.kernel),
                ("initrd", &r.initrd),
            ] {
                let path = d.path(&format!("history-{n}-{name}"));
                fs::write(&path, bytes).unwrap();
                history.push(cairn_bundle::writer::DeltaSource {
                    image: name.into(),
                    path,
                });
            }
        }
    }
    let bundle = d.bundle_with(&v3, None, &v3.version, &[copy_key(&d.key)], |spec| {
        spec.chunked = Some(layout);
        spec.chunk_history = history;
    });
    let (server, url) = d.serve_bundle(&bundle, Arc::default());
    let out = d.cairn(&["install", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(d.holds(SlotId::A, &v3));

    // Counted against the manifest: the frames of the chunks holding a block of v3 that
    // is in neither v1 nor v2 (nor all zeros).
    let (file, image, chunked) = rootfs_chunks(&bundle);
    let index = read_index(
        &image,
        &chunked,
        file.payload_reader(&chunked.index).unwrap(),
    )
    .unwrap();
    let held: HashSet<_> = [&v1.rootfs, &v2.rootfs]
        .iter()
        .flat_map(|r| r.chunks(4096).map(block_key))
        .chain([block_key(&[0; 4096])])
        .collect();
    let chunks: HashSet<usize> = (0..index.block_count())
        .filter(|&b| !held.contains(&index.key(b)))
        .map(|b| index.chunk_of(b))
        .collect();
    let expected: u64 = chunks
        .iter()
        .map(|&c| index.frame(c).end - index.frame(c).start)
        .sum();
    let (kept, copied, fetched, fetched_blocks) = reused(&stderr, "rootfs");
    println!(
        "rootfs: {kept} kept, {copied} copied, fetched {fetched} bytes in {} chunks of {}; \
         all frames {}, full payload {}",
        chunks.len(),
        index.chunk_count(),
        index.data_len(),
        image.full.size
    );
    assert_eq!(
        fetched, expected,
        "fetched exactly the chunks no slot holds"
    );
    assert_eq!(index.is_grouped(), grouped);
    if grouped {
        // The 100 KiB new in v3, and nothing else.
        assert_eq!(fetched_blocks, (100 << 10) / 4096);
        assert_eq!(chunked.data.method, cairn_bundle::chunked::METHOD_GROUPED);
    } else {
        assert!(!chunks.is_empty() && chunks.len() * 10 < index.chunk_count());
    }
    assert!(copied >= (200 << 10) / 4096, "v2's fix comes from slot B");
    // The kernel comes from slot A's old file, the initrd from slot B: nothing fetched.
    assert_eq!(reused(&stderr, "kernel").2, 0);
    assert_eq!(reused(&stderr, "initrd").2, 0);
    // What crossed the network: metadata, the three indexes and those frames.
    let served = server.body_bytes.load(Ordering::SeqCst);
    let indexes: u64 = file
        .bundle
        .manifest
        .images
        .iter()
        .map(|i| i.chunked.as_ref().unwrap().index.size)
        .sum();
    assert!(
        served <= expected + indexes + (64 << 10),
        "served {served}: frames {expected}, indexes {indexes}"
    );
}

#[test]
fn an_install_killed_part_way_resumes_without_fetching_what_it_had_written() {
    let v1 = Release::new("1.0.0", 0);
    // Nothing in common with v1: without resuming, every chunk is fetched again.
    let v2 = unrelated("2.0.0", 97);
    let d = Device::new(&v1);
    let bundle = chunked_bundle(&d, &v2);
    let faults = Arc::new(Faults {
        trickle: Duration::from_millis(40),
        ..Faults::default()
    });
    let (server, url) = d.serve_bundle(&bundle, faults);

    let mut child = d.spawn_install(&url);
    let target: Vec<_> = v2.rootfs.chunks(4096).map(block_hash).collect();
    let written = || {
        let slot = fs::read(d.path("dev/rootfs-b")).unwrap();
        let now: Vec<_> = slot[..v2.rootfs.len()]
            .chunks(4096)
            .map(block_hash)
            .collect();
        now.iter().zip(&target).filter(|(a, b)| a == b).count()
    };
    wait_for(60, "a third of rootfs written", || {
        written() * 3 >= target.len()
    });
    child.kill().unwrap(); // SIGKILL, part-way through
    child.wait().unwrap();
    let before = written();
    assert!(before < target.len(), "killed before the end");
    let out = d.cairnd_once();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    server.body_bytes.store(0, Ordering::SeqCst);
    let out = d.cairn(&["install", &url]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(d.holds(SlotId::B, &v2), "byte-identical after the resume");
    let (kept, _, fetched, _) = reused(&stderr, "rootfs");
    let data = rootfs_chunks(&bundle).2.data.size;
    println!("{before} of {} blocks written when killed; resumed with {kept} in place, fetched {fetched} of {data} bytes", target.len());
    assert!(
        kept >= before,
        "every block written before the kill was found ({kept} < {before})"
    );
    assert!(fetched < data - data / 4, "fetched {fetched} of {data}");
    assert!(server.body_bytes.load(Ordering::SeqCst) < fs::metadata(&bundle).unwrap().len());
}

#[test]
fn a_corrupt_chunk_is_refused_and_nothing_is_armed() {
    let v1 = Release::new("1.0.0", 0);
    let v2 = unrelated("2.0.0", 97);
    let d = Device::new(&v1);
    let good = chunked_bundle(&d, &v2);
    let (file, _, chunked) = rootfs_chunks(&good);
    let data = chunked.data;
    let mut bytes = fs::read(&good).unwrap();
    let at = (file.bundle.header.payload_area_offset + data.offset + data.size / 2) as usize;
    bytes[at] ^= 0x20;
    fs::write(good.with_file_name("bad.cairn"), bytes).unwrap();
    let server = serve(good.parent().unwrap().to_path_buf(), Arc::default());
    d.allow_plain_http_from(&server.base());

    let err = d.cairn_err(&["install", &server.url("bad.cairn")]);
    assert!(err.contains("rootfs") && err.contains("chunk"), "{err}");
    let boot = d.boot_state();
    assert_eq!(
        (boot.order[0], boot.tries_b, boot.committed),
        (SlotId::A, 0, SlotId::A),
        "slot B is not bootable"
    );
    assert_eq!(phase(&d.status()), "failed");
    // The same bundle from a local file is refused before anything is written.
    let err = d.cairn_err(&[
        "install",
        good.with_file_name("bad.cairn").to_str().unwrap(),
    ]);
    assert!(err.contains("hash mismatch"), "{err}");
}
