//! `cairn-image flash` against files and real loop devices (run as root, as the suite is).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cairn_image::flash::{host_root_device, FlashError, Target};
use sha2::{Digest, Sha256};

const BLOCK: usize = 4096;
const IMAGE_BLOCKS: usize = 2048; // 8 MiB

/// An 8 MiB image with data in a few places and zeros elsewhere, and its bmap (made by
/// the image builder's own writer).
fn image(dir: &Path) -> (PathBuf, Vec<u8>) {
    let mut bytes = vec![0u8; IMAGE_BLOCKS * BLOCK];
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for (start, len) in [(0, 3), (100, 40), (1000, 1), (1500, 300), (2047, 1)] {
        for byte in &mut bytes[start * BLOCK..(start + len) * BLOCK] {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            *byte = seed as u8 | 1;
        }
    }
    let path = dir.join("disk.img");
    std::fs::write(&path, &bytes).expect("write image");
    cairn_image::os::bmap::write(&path, &[], &dir.join("disk.img.bmap")).expect("bmap");
    (path, bytes)
}

fn mapped_blocks(image: &[u8]) -> Vec<bool> {
    image
        .chunks(BLOCK)
        .map(|b| b.iter().any(|&x| x != 0))
        .collect()
}

fn cairn_image(args: &[&Path]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn-image"))
        .arg("flash")
        .args(args)
        .output()
        .expect("run cairn-image")
}

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(out.status.success(), "{program} {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn sha256(path: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(path).expect("read")).to_vec()
}

/// A loop device over a file filled with 0xAA; detached (and unmounted) on drop.
struct LoopDevice {
    device: PathBuf,
    backing: PathBuf,
    mount: Option<PathBuf>,
}

impl LoopDevice {
    fn new(dir: &Path, size: usize) -> LoopDevice {
        let backing = dir.join("medium");
        std::fs::write(&backing, vec![0xAA; size]).expect("backing file");
        let device = run(
            "losetup",
            &["-f", "--show", backing.to_str().expect("utf-8")],
        );
        LoopDevice {
            device: device.into(),
            backing,
            mount: None,
        }
    }

    fn mount_ext4(&mut self, dir: &Path) {
        let device = self.device.to_str().expect("utf-8");
        run("mkfs.ext4", &["-q", device]);
        let mount = dir.join("mnt");
        std::fs::create_dir_all(&mount).expect("mount point");
        run("mount", &[device, mount.to_str().expect("utf-8")]);
        self.mount = Some(mount);
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Some(mount) = &self.mount {
            let _ = Command::new("umount").arg(mount).status();
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).status();
    }
}

#[test]
fn flashing_a_file_writes_the_image_and_reads_it_back() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (image, bytes) = image(dir.path());
    let target = dir.path().join("card.img");
    std::fs::write(&target, vec![0x55; 3 * BLOCK]).expect("old contents");
    let out = cairn_image(&[&image, &target]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&target).expect("target"), bytes);
    let log = String::from_utf8_lossy(&out.stderr);
    for pass in [
        "check image",
        "write",
        "verify",
        "ETA",
        "read back and verified",
    ] {
        assert!(
            log.contains(pass),
            "no {pass:?} in the progress output:\n{log}"
        );
    }
}

#[test]
fn only_mapped_blocks_are_written_to_a_device() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (image, bytes) = image(dir.path());
    let medium = LoopDevice::new(dir.path(), 2 * bytes.len());
    let out = cairn_image(&[&image, &medium.device]);
    assert!(out.status.success(), "{out:?}");
    let written = std::fs::read(&medium.backing).expect("medium");
    for (index, mapped) in mapped_blocks(&bytes).into_iter().enumerate() {
        let block = &written[index * BLOCK..(index + 1) * BLOCK];
        if mapped {
            assert_eq!(
                block,
                &bytes[index * BLOCK..(index + 1) * BLOCK],
                "block {index}"
            );
        } else {
            assert!(
                block.iter().all(|&b| b == 0xAA),
                "unmapped block {index} was written"
            );
        }
    }
    assert!(written[bytes.len()..].iter().all(|&b| b == 0xAA));
}

#[test]
fn a_mounted_target_is_refused_and_not_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (image, bytes) = image(dir.path());
    let mut medium = LoopDevice::new(dir.path(), 4 * bytes.len());
    medium.mount_ext4(dir.path());
    let before = sha256(&medium.backing);
    let out = cairn_image(&[&image, &medium.device]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("is mounted"), "{error}");
    assert_eq!(
        sha256(&medium.backing),
        before,
        "the mounted medium changed"
    );
}

#[test]
fn a_target_smaller_than_the_image_is_refused_and_not_written() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (image, bytes) = image(dir.path());
    let medium = LoopDevice::new(dir.path(), bytes.len() / 2);
    let out = cairn_image(&[&image, &medium.device]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("the image needs"), "{error}");
    let after = std::fs::read(&medium.backing).expect("medium");
    assert!(
        after.iter().all(|&b| b == 0xAA),
        "the small medium was written"
    );
}

#[test]
fn the_hosts_root_disk_is_refused() {
    // Only the check runs here: it is what stands between a typo and the host's disk.
    let root = host_root_device().expect("this machine's / is on a block device");
    let dir = tempfile::tempdir().expect("temp dir");
    let (image, _) = image(dir.path());
    match Target::check(&root, &image, 4096) {
        Err(FlashError::Refused { reason, .. }) => {
            assert!(reason.contains("root file system"), "{reason}")
        }
        other => panic!("{} accepted as a target: {other:?}", root.display()),
    }
}

#[test]
fn a_corrupt_image_is_refused_before_the_target_is_touched() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (image, mut bytes) = image(dir.path());
    bytes[1500 * BLOCK + 17] ^= 0xFF;
    std::fs::write(&image, &bytes).expect("corrupt image");
    let target = dir.path().join("card.img");
    std::fs::write(&target, b"previous contents").expect("target");
    let out = cairn_image(&[&image, &target]);
    assert!(!out.status.success());
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(
        error.contains("does not match its bmap in blocks 1500-1799"),
        "{error}"
    );
    assert_eq!(
        std::fs::read(&target).expect("target"),
        b"previous contents"
    );

    // A bmap edited by hand (its own checksum no longer matches) is refused as well.
    let bmap = dir.path().join("disk.img.bmap");
    let text = std::fs::read_to_string(&bmap).expect("bmap");
    std::fs::write(&bmap, text.replace("> 1500-1799 <", "> 1501-1799 <")).expect("edit");
    let out = cairn_image(&[&image, &target]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(error.contains("own checksum does not match"), "{error}");
}

#[test]
fn bmaptool_and_cairn_image_read_each_others_maps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let (image, bytes) = image(dir.path());

    // A map made by bmaptool, flashed by us.
    let theirs = dir.path().join("theirs.bmap");
    run(
        "bmaptool",
        &[
            "-q",
            "create",
            "-o",
            theirs.to_str().expect("utf-8"),
            image.to_str().expect("utf-8"),
        ],
    );
    let target = dir.path().join("ours.img");
    let out = cairn_image(&[Path::new("--bmap"), &theirs, &image, &target]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(std::fs::read(&target).expect("target"), bytes);

    // Our map, flashed by bmaptool (which checks every range's checksum).
    let copy = dir.path().join("bmaptool.img");
    let bmap = dir.path().join("disk.img.bmap");
    run(
        "bmaptool",
        &[
            "-q",
            "copy",
            "--bmap",
            bmap.to_str().expect("utf-8"),
            image.to_str().expect("utf-8"),
            copy.to_str().expect("utf-8"),
        ],
    );
    assert_eq!(std::fs::read(&copy).expect("copy"), bytes);
}
