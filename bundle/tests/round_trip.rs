//! Bundles made by the writer decode back to the exact input images, full and delta.

mod common;

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use cairn_bundle::writer::DeltaCodec;
use cairn_bundle::{choose_payload, codec, decode_payload, BundleFile, Choice, Policy, Source};
use cairn_testkit::{delta_sources, image_bytes};
use common::erofs::{mkfs_erofs, mkfs_erofs_with, write_tree};
use common::*;

fn policy() -> Policy {
    Policy {
        compatible: Some("cairn-test".into()),
        ..Policy::any_device()
    }
}

/// Installs `image` from the bundle the way a device does: choose a payload given the
/// source it holds, stream it, and return the decoded bytes.
fn install(bundle: &Path, fx: &Fixture, image: &str, source: Option<&[u8]>) -> (Vec<u8>, String) {
    let file = BundleFile::open(bundle).unwrap();
    let verified = file.verify(&fx.root, &policy()).unwrap();
    let image = verified.manifest.image(image).unwrap();
    let held = source.map(|s| {
        let (sha, size) = cairn_bundle::sha256_reader(&mut io::Cursor::new(s)).unwrap();
        Source { sha256: sha, size }
    });
    let payload = match choose_payload(image, |s| held.as_ref() == Some(s)).unwrap() {
        Choice::Delta(p) | Choice::Full(p) => p,
        Choice::Chunked(_) => panic!("chunked images are installed by cairnd's own tests"),
    };
    let reader = file.payload_reader(payload).unwrap();
    let out = decode_payload(image, payload, reader, source, Vec::new()).unwrap();
    (out, payload.method.clone())
}

#[test]
fn full_payloads_reconstruct_every_image() {
    let fx = Fixture::new();
    let bundle = fx.standard_bundle();
    let (rootfs, method) = install(&bundle, &fx, "rootfs", None);
    assert_eq!(method, "zstd");
    assert_eq!(rootfs, fs::read(fx.path("rootfs.img")).unwrap());
    let (kernel, _) = install(&bundle, &fx, "kernel", None);
    assert_eq!(kernel, fs::read(fx.path("kernel.img")).unwrap());
}

#[test]
fn delta_reconstructs_the_target_and_is_chosen_only_with_its_source() {
    let fx = Fixture::new();
    let v1 = image_bytes(20 << 20, 7); // larger than one 8 MiB delta chunk
    let mut v2 = v1.clone();
    v2[1000..5000].copy_from_slice(&image_bytes(4000, 9));
    v2.splice(12 << 20..12 << 20, image_bytes(70_000, 3)); // an insertion shifts the rest
    v2.truncate(20 << 20);
    fs::write(fx.path("v1.img"), &v1).unwrap();
    fs::write(fx.path("v2.img"), &v2).unwrap();
    let mut spec = fx.spec(&[("rootfs", &fx.path("v2.img"))]);
    spec.delta_sources = delta_sources(&[("rootfs", &fx.path("v1.img"))]);
    let (bundle, manifest) = fx.build(&spec, &[&fx.key], "v2.cairn");
    let image = manifest.image("rootfs").unwrap();
    assert_eq!(image.deltas.len(), 1);
    assert!(
        image.deltas[0].size * 20 < image.full.size,
        "delta {} vs full {}",
        image.deltas[0].size,
        image.full.size
    );

    let (out, method) = install(&bundle, &fx, "rootfs", Some(&v1));
    assert_eq!(method, codec::block_bsdiff::METHOD);
    assert!(out == v2, "delta output differs from the target");
    // A device holding something else gets the full payload.
    let (out, method) = install(&bundle, &fx, "rootfs", Some(&v2[..1000]));
    assert_eq!(method, "zstd");
    assert!(out == v2);
}

#[test]
fn unknown_delta_methods_are_skipped_not_fatal() {
    let fx = Fixture::new();
    let v1 = image_bytes(1 << 20, 1);
    fs::write(fx.path("v1.img"), &v1).unwrap();
    let v2 = fx.image("v2.img", 1 << 20, 2);
    let mut spec = fx.spec(&[("rootfs", &v2)]);
    spec.delta_sources = delta_sources(&[("rootfs", &fx.path("v1.img"))]);
    let (bundle, _) = fx.build(&spec, &[&fx.key], "v2.cairn");
    let future = fx.path("future.cairn");
    resign_with_edit(&bundle, &fx.key, &future, |m| {
        m["images"][0]["deltas"][0]["method"] = serde_json::json!("bsdiff-filewise-v9");
    });
    let (out, method) = install(&future, &fx, "rootfs", Some(&v1));
    assert_eq!(method, "zstd");
    assert_eq!(out, fs::read(&v2).unwrap());
}

#[test]
fn delta_between_two_real_erofs_images_reconstructs_the_target() {
    let fx = Fixture::new();
    for v in [1, 2] {
        let tree = fx.path(&format!("tree{v}"));
        write_tree(&tree, v);
        mkfs_erofs(&tree, &fx.path(&format!("rootfs-v{v}.erofs")));
    }
    let (v1, v2) = (fx.path("rootfs-v1.erofs"), fx.path("rootfs-v2.erofs"));
    for codec in [DeltaCodec::BlockBsdiff, DeltaCodec::ZstdPatch] {
        let mut spec = fx.spec(&[("rootfs", &v2)]);
        spec.delta_sources = delta_sources(&[("rootfs", &v1)]);
        spec.delta_codec = codec;
        let (bundle, manifest) = fx.build(&spec, &[&fx.key], "v2.cairn");
        let image = manifest.image("rootfs").unwrap();
        let v1_bytes = fs::read(&v1).unwrap();
        let (out, method) = install(&bundle, &fx, "rootfs", Some(&v1_bytes));
        assert_eq!(method, codec.method());
        assert!(
            out == fs::read(&v2).unwrap(),
            "{method}: reconstructed erofs differs from the target"
        );
        println!(
            "{method}: erofs {} bytes: full payload {} bytes, delta {} bytes ({:.1}% of full)",
            image.size,
            image.full.size,
            image.deltas[0].size,
            100.0 * image.deltas[0].size as f64 / image.full.size as f64
        );
        assert!(image.deltas[0].size * 3 < image.full.size);
    }
}

/// Real binaries for a realistic delta pair: regular files of at most 4 MiB under
/// `/usr/lib`, in name order, about 40 MB. Synthetic bytes do not show how zstd's match
/// finders behave on code; the host's shared libraries do, and `mkfs.erofs` is already
/// needed here.
fn host_binaries() -> Vec<(PathBuf, Vec<u8>)> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        let mut entries: Vec<_> = entries.flatten().map(|e| e.path()).collect();
        entries.sort();
        for path in entries {
            match fs::symlink_metadata(&path) {
                Ok(m) if m.is_dir() => walk(&path, out),
                Ok(m) if m.is_file() && m.len() <= 4 << 20 => out.push(path),
                _ => {}
            }
        }
    }
    let mut paths = Vec::new();
    walk(Path::new("/usr/lib"), &mut paths);
    let mut files = Vec::new();
    let mut total = 0;
    for path in paths {
        let Ok(bytes) = fs::read(&path) else { continue };
        total += bytes.len();
        files.push((path, bytes));
        if total > 40 << 20 {
            break;
        }
    }
    files
}

/// A root tree from `files` as a security update changes it: version 2 rebuilds a
/// twelfth of the files (bytes changed throughout, as a recompile does) and renames the
/// directory named after the kernel, whose files mostly stay the same.
fn write_update_tree(root: &Path, files: &[(PathBuf, Vec<u8>)], version: u32) {
    for (i, (path, bytes)) in files.iter().enumerate() {
        let dir = if i % 3 == 0 {
            root.join(format!("lib/modules/6.1.0-{}/kernel", 54 + version))
        } else {
            root.join("usr/lib")
        };
        fs::create_dir_all(&dir).unwrap();
        let mut bytes = bytes.clone();
        if version == 2 && i % 12 == 5 {
            for block in bytes.chunks_mut(3 * 4096) {
                let n = block.len().min(64);
                block[..n].iter_mut().for_each(|b| *b ^= 0x5a);
            }
        }
        let name = format!("{i:05}-{}", path.file_name().unwrap().to_string_lossy());
        fs::write(dir.join(name), bytes).unwrap();
    }
}

/// Regression: zstd's optimal parsers (levels >= 16) used to drop the matches a frame
/// found in its reference prefix, so `--level 19` made a delta many times bigger than
/// the default level 12 (measured on the Debian pair: 18.3 MB against 7.65 MB). A higher
/// level must never cost bytes. The lz4hc pair checks that the default level also finds
/// the source in compressed images; the failure of too small a dictionary table measured
/// on 74 MB and 163 MB lz4hc pairs (`source_dict.rs`) needs larger pairs than a test
/// builds, so only `cargo xtask bench delta` shows that one.
#[test]
fn higher_levels_never_make_a_bigger_delta_than_level_12() {
    let fx = Fixture::new();
    let files = host_binaries();
    for v in [1, 2] {
        let tree = fx.path(&format!("tree{v}"));
        write_update_tree(&tree, &files, v);
        mkfs_erofs(&tree, &fx.path(&format!("dist-v{v}.erofs")));
        mkfs_erofs_with(&tree, &fx.path(&format!("dist-v{v}.lz4hc")), &["-zlz4hc"]);
    }
    for (kind, levels) in [("erofs", &[12, 16, 19][..]), ("lz4hc", &[12, 16][..])] {
        let v1 = fs::read(fx.path(&format!("dist-v1.{kind}"))).unwrap();
        let v2 = fs::read(fx.path(&format!("dist-v2.{kind}"))).unwrap();
        assert!(
            v1.len() > 16 << 20,
            "the pair must exceed the match finders' reach"
        );
        let mut sizes = Vec::new();
        for &level in levels {
            let mut delta = Vec::new();
            codec::zstd_patch::encode(
                &v1,
                &v2,
                level,
                codec::zstd_patch::DEFAULT_CHUNK,
                &mut delta,
            )
            .unwrap();
            let mut out = Vec::new();
            codec::zstd_patch::decode(&mut &delta[..], &v1, v2.len() as u64, &mut out).unwrap();
            assert!(
                out == v2,
                "{kind} level {level}: the delta does not rebuild the target"
            );
            println!(
                "{kind} level {level}: delta {} bytes of {}",
                delta.len(),
                v2.len()
            );
            sizes.push((level, delta.len()));
        }
        let level_12 = sizes[0].1;
        // A twelfth of the files changed: the delta is far below the image.
        assert!(
            level_12 * 5 < v2.len(),
            "{kind}: level 12 made {level_12} bytes"
        );
        for (level, size) in &sizes[1..] {
            assert!(
                *size <= level_12,
                "{kind}: level {level} made {size} bytes, level 12 {level_12}: {sizes:?}"
            );
        }
    }
}

/// `block-bsdiff` on the security-update pair, uncompressed and lz4hc, each with the
/// dm-verity tree that the real `veritysetup` appends (as `cairn-image slot` does): the
/// delta rebuilds the target byte for byte with the tree computed by the decoder, which
/// also checks `hash_tree.rs` against veritysetup, and the tree costs the delta nothing.
#[test]
fn block_bsdiff_rebuilds_a_security_update_pair_and_computes_its_verity_tree() {
    let fx = Fixture::new();
    let files = host_binaries();
    for v in [1, 2] {
        let tree = fx.path(&format!("tree{v}"));
        write_update_tree(&tree, &files[..files.len() / 2], v);
        mkfs_erofs(&tree, &fx.path(&format!("dist-v{v}.erofs")));
        mkfs_erofs_with(&tree, &fx.path(&format!("dist-v{v}.lz4hc")), &["-zlz4hc"]);
    }
    let salt = "5a17".repeat(8);
    for kind in ["erofs", "lz4hc"] {
        let mut images = Vec::new();
        for v in [1, 2] {
            let path = fx.path(&format!("dist-v{v}.{kind}"));
            let data_size = fs::metadata(&path).unwrap().len();
            let status = std::process::Command::new("veritysetup")
                .args(["format", "--no-superblock", "--hash=sha256"])
                .args(["--data-block-size=4096", "--hash-block-size=4096"])
                .arg(format!("--data-blocks={}", data_size / 4096))
                .arg(format!("--hash-offset={data_size}"))
                .arg(format!("--salt={salt}"))
                .arg(&path)
                .arg(&path)
                .stdout(std::process::Stdio::null())
                .status()
                .expect("veritysetup (cryptsetup-bin) is installed by xtask setup");
            assert!(status.success());
            images.push((fs::read(&path).unwrap(), data_size));
        }
        let ((v1, _), (v2, data_size)) = (&images[0], &images[1]);
        let salt = hex::decode(&salt).unwrap();
        let tree = codec::block_bsdiff::HashTree {
            data_size: *data_size,
            salt: &salt,
        };
        let mut sizes = Vec::new();
        for described in [Some(tree), None] {
            let mut delta = Vec::new();
            codec::block_bsdiff::encode(v1, v2, 12, described, &mut delta).unwrap();
            let mut out = Vec::new();
            codec::block_bsdiff::decode(&mut &delta[..], v1, v2.len() as u64, &mut out).unwrap();
            assert!(out == *v2, "{kind}: the delta does not rebuild the target");
            sizes.push(delta.len());
        }
        let mut zstd_patch = Vec::new();
        codec::zstd_patch::encode(
            v1,
            v2,
            12,
            codec::zstd_patch::DEFAULT_CHUNK,
            &mut zstd_patch,
        )
        .unwrap();
        println!(
            "{kind}: {} bytes; block-bsdiff {} (tree computed) / {} (tree carried); zstd-patch {}",
            v2.len(),
            sizes[0],
            sizes[1],
            zstd_patch.len()
        );
        assert!(
            sizes[0] < sizes[1],
            "{kind}: the tree was carried: {sizes:?}"
        );
        assert!(sizes[0] * 5 < v2.len(), "{kind}: {sizes:?}");
    }
}
