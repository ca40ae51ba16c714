//! `cairn-image slot`: the tree as an erofs image with its dm-verity hash tree appended in
//! the same file (hash tree at `data_size`, no verity superblock), plus `verity.json` in the
//! bundle manifest's `Verity` shape. Timestamps, UUID and salt are pinned by the profile,
//! so the same tree gives the same bytes.

use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_bundle::Verity;

use super::profile::{Compression, Slot};
use super::progress::{mib, Stage};
use super::run::stdout;

pub const BLOCK_SIZE: u32 = 4096;

pub struct SlotImage {
    pub verity: Verity,
    /// Bytes of the whole file (erofs + hash tree).
    pub total_size: u64,
}

pub fn build(settings: &Slot, tree: &Path, image: &Path, verity_json: &Path) -> Result<SlotImage> {
    let stage = Stage::start(format!("slot: erofs ({:?})", settings.compression));
    if image.exists() {
        fs::remove_file(image)?;
    }
    let mut mkfs = Command::new("mkfs.erofs");
    mkfs.arg(format!("-T{}", settings.epoch))
        .arg(format!("-U{}", settings.uuid))
        .arg("--all-root")
        .env("SOURCE_DATE_EPOCH", settings.epoch.to_string());
    if settings.compression == Compression::Lz4hc {
        mkfs.arg("-zlz4hc");
    }
    stdout(mkfs.arg(image).arg(tree))?;
    let data_size = fs::metadata(image)?.len();
    let data_blocks = data_size / u64::from(BLOCK_SIZE);
    if data_blocks * u64::from(BLOCK_SIZE) != data_size {
        bail!("erofs image of {data_size} bytes is not whole 4 KiB blocks");
    }
    stage.done(format!("data {}", mib(data_size)));

    let stage = Stage::start("slot: dm-verity hash tree");
    let output = stdout(
        verity_command("format", settings, data_size, data_blocks)
            .arg(image)
            .arg(image),
    )?;
    let root_hash = output
        .lines()
        .find_map(|l| l.strip_prefix("Root hash:"))
        .map(|h| h.trim().to_string())
        .context("veritysetup printed no root hash")?;
    // Check what was written before anyone boots it.
    stdout(
        verity_command("verify", settings, data_size, data_blocks)
            .arg(image)
            .arg(image)
            .arg(&root_hash),
    )?;
    let verity = Verity {
        root_hash,
        salt: settings.verity_salt.clone(),
        hash_algorithm: "sha256".into(),
        data_block_size: BLOCK_SIZE,
        hash_block_size: BLOCK_SIZE,
        data_size,
    };
    let total_size = fs::metadata(image)?.len();
    let json = serde_json::to_vec_pretty(&verity)?;
    fs::write(verity_json, json)?;
    stage.done(format!(
        "root hash {}, slot {} (hash tree {})",
        verity.root_hash,
        mib(total_size),
        mib(total_size - data_size)
    ));
    Ok(SlotImage { verity, total_size })
}

fn verity_command(action: &str, settings: &Slot, data_size: u64, data_blocks: u64) -> Command {
    let mut cmd = Command::new("veritysetup");
    cmd.arg(action)
        .arg("--no-superblock")
        .arg("--hash=sha256")
        .arg(format!("--data-block-size={BLOCK_SIZE}"))
        .arg(format!("--hash-block-size={BLOCK_SIZE}"))
        .arg(format!("--data-blocks={data_blocks}"))
        .arg(format!("--hash-offset={data_size}"))
        .arg(format!("--salt={}", settings.verity_salt));
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    fn settings(compression: Compression) -> Slot {
        Slot {
            compression,
            epoch: 1_700_000_000,
            uuid: "c41a7e11-0000-4000-8000-0000000000aa".into(),
            verity_salt: "00112233445566778899aabbccddeeff".into(),
        }
    }

    fn sample_tree(dir: &Path) {
        fs::create_dir_all(dir.join("etc")).unwrap();
        fs::create_dir_all(dir.join("bin")).unwrap();
        fs::write(dir.join("etc/hostname"), "cairn\n").unwrap();
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        fs::write(dir.join("bin/tool"), big).unwrap();
        std::os::unix::fs::symlink("tool", dir.join("bin/alias")).unwrap();
    }

    #[test]
    fn the_same_tree_gives_the_same_slot_bytes() {
        for compression in [Compression::None, Compression::Lz4hc] {
            let work = tempfile::tempdir().unwrap();
            let tree = work.path().join("tree");
            sample_tree(&tree);
            let first = build(
                &settings(compression),
                &tree,
                &work.path().join("1.img"),
                &work.path().join("1.json"),
            )
            .unwrap();
            // A later build: every file has another mtime, as on another machine.
            let later = SystemTime::now() + Duration::from_secs(3600);
            fs::File::options()
                .write(true)
                .open(tree.join("etc/hostname"))
                .unwrap()
                .set_modified(later)
                .unwrap();
            let second = build(
                &settings(compression),
                &tree,
                &work.path().join("2.img"),
                &work.path().join("2.json"),
            )
            .unwrap();
            assert_eq!(first.verity, second.verity);
            let a = fs::read(work.path().join("1.img")).unwrap();
            let b = fs::read(work.path().join("2.img")).unwrap();
            assert!(a == b, "slot images differ ({compression:?})");
            assert_eq!(first.total_size, a.len() as u64);
            assert!(
                first.total_size > first.verity.data_size,
                "no hash tree appended"
            );
            let json: Verity =
                serde_json::from_slice(&fs::read(work.path().join("1.json")).unwrap()).unwrap();
            assert_eq!(json, first.verity);
        }
    }

    #[test]
    fn a_flipped_byte_fails_verification() {
        let work = tempfile::tempdir().unwrap();
        let tree = work.path().join("tree");
        sample_tree(&tree);
        let image = work.path().join("s.img");
        let slot = build(
            &settings(Compression::None),
            &tree,
            &image,
            &work.path().join("v.json"),
        )
        .unwrap();
        let mut bytes = fs::read(&image).unwrap();
        bytes[5000] ^= 0x01;
        fs::write(&image, bytes).unwrap();
        let data_blocks = slot.verity.data_size / 4096;
        let status = verity_command(
            "verify",
            &settings(Compression::None),
            slot.verity.data_size,
            data_blocks,
        )
        .arg(&image)
        .arg(&image)
        .arg(&slot.verity.root_hash)
        .output()
        .unwrap()
        .status;
        assert!(!status.success());
    }
}
