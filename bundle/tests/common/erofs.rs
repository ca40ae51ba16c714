//! Real erofs images for the codec tests, made with `mkfs.erofs` from generated trees.

use std::fs;
use std::path::Path;
use std::process::Command;

use cairn_testkit::image_bytes;

pub fn mkfs_erofs(tree: &Path, out: &Path) {
    mkfs_erofs_with(tree, out, &[]);
}

/// `mkfs.erofs` with pinned UUID and times, plus `extra` options (`-zlz4hc`).
pub fn mkfs_erofs_with(tree: &Path, out: &Path, extra: &[&str]) {
    let status = Command::new("mkfs.erofs")
        .args([
            "-T0",
            "-U",
            "6a6e2a2c-93a4-4f5e-9d1f-2b1fd8e5c0aa",
            "--all-root",
            "-x",
            "-1",
        ])
        .args(extra)
        .arg(out)
        .arg(tree)
        .output()
        .expect("mkfs.erofs not found: `cargo xtask test` installs erofs-utils");
    assert!(
        status.status.success(),
        "mkfs.erofs failed: {}",
        String::from_utf8_lossy(&status.stderr)
    );
}

pub fn write_tree(root: &Path, version: u32) {
    for pkg in 0..40 {
        let dir = root.join(format!("usr/lib/pkg{pkg}"));
        fs::create_dir_all(&dir).unwrap();
        // A "security update" touches a few packages; the rest stay byte-identical.
        let seed = if version == 2 && pkg % 13 == 0 {
            100 + pkg as u8
        } else {
            pkg as u8
        };
        fs::write(dir.join("lib.so"), image_bytes(150_000 + pkg * 1000, seed)).unwrap();
        fs::write(
            dir.join("VERSION"),
            format!("pkg{pkg} {}", if seed >= 100 { "1.0.1" } else { "1.0.0" }),
        )
        .unwrap();
    }
    fs::create_dir_all(root.join("etc")).unwrap();
    fs::write(
        root.join("etc/os-release"),
        format!("VERSION_ID={version}\n"),
    )
    .unwrap();
    if version == 2 {
        fs::write(root.join("usr/lib/new-tool"), image_bytes(80_000, 77)).unwrap();
    }
}
