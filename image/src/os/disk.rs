//! `cairn-image disk`: the GPT disk a device is flashed with. Every filesystem is made as a
//! file (mkfs.vfat -C + mtools, mkfs.ext4 -d) and copied to its partition's offset; no
//! loop device and no mount. Writes `<disk>.bmap` next to it.

use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use cairn_boot::efi_entries::{EntrySet, ENTRY_DIR};
use cairn_boot::{copies, images, layout, BootState, ImageRecord, SlotArgs, SlotId, SlotImages};
use cairn_bundle::Verity;

use super::bmap;
use super::esp::{self, BootFiles};
use super::profile::Profile;
use super::progress::{mib, Stage};
use super::run::run;

const MIB: u64 = 1024 * 1024;
/// The partition table and the first partition's alignment.
const HEAD_MIB: u64 = 1;
/// Room for the backup GPT at the end.
const TAIL_MIB: u64 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SlotB {
    /// Slot B holds nothing and is unbootable (BOOT_B_LEFT=0): the first update fills it.
    Empty,
    /// Slot B is a bootable copy of A: a fallback from the first boot on.
    Copy,
}

pub struct Inputs<'a> {
    pub profile: &'a Profile,
    /// Profile paths are relative to it.
    pub workspace: &'a Path,
    pub kernel: &'a Path,
    pub initrd: &'a Path,
    pub slot_image: &'a Path,
    pub verity: &'a Verity,
    pub slot_b: SlotB,
    /// The UEFI path's boot files; without them the boot partition is U-Boot's.
    pub efi: Option<&'a BootFiles>,
    pub out: &'a Path,
}

pub struct Partition {
    pub label: &'static str,
    pub start: u64,
    pub size: u64,
}

pub struct DiskSummary {
    pub partitions: Vec<Partition>,
    pub disk_size: u64,
    pub bmap: PathBuf,
}

pub fn build(inputs: &Inputs) -> Result<DiskSummary> {
    let profile = inputs.profile;
    let work = inputs
        .out
        .parent()
        .context("the disk path has a directory")?
        .join("disk-parts");
    if work.exists() {
        fs::remove_dir_all(&work)?;
    }
    fs::create_dir_all(&work)?;
    let slot_size = fs::metadata(inputs.slot_image)?.len();
    if slot_size > profile.disk.slot_mib * MIB {
        bail!(
            "the slot image ({}) does not fit the {} MiB slot partitions",
            mib(slot_size),
            profile.disk.slot_mib
        );
    }

    let stage = Stage::start("disk: boot partition (FAT32)");
    let boot = work.join("boot.vfat");
    match inputs.efi {
        Some(files) => build_esp(inputs, files, &boot)?,
        None => build_boot_partition(inputs, &work, &boot)?,
    }
    stage.done(format!("{} MiB", profile.disk.boot_mib));

    let stage = Stage::start("disk: data partition (ext4)");
    let data = work.join("data.ext4");
    let data_tree = work.join("data");
    fs::create_dir_all(data_tree.join("cairn"))?;
    run(Command::new("mkfs.ext4")
        .args([
            "-q",
            "-F",
            "-L",
            "data",
            "-U",
            "c41a7e11-da7a-4000-8000-000000000001",
        ])
        .args([
            "-E",
            "hash_seed=c41a7e11-da7a-4000-8000-000000000002,root_owner=0:0",
        ])
        .arg("-d")
        .arg(&data_tree)
        .arg(&data)
        .arg(format!("{}M", profile.disk.data_mib))
        .env("E2FSPROGS_FAKE_TIME", profile.slot.epoch.to_string()))?;
    stage.done(format!("{} MiB", profile.disk.data_mib));

    let stage = Stage::start("disk: GPT and partitions");
    let partitions = layout(profile);
    let disk_size = partitions.last().map_or(0, |p| p.start + p.size) + TAIL_MIB * MIB;
    if inputs.out.exists() {
        fs::remove_file(inputs.out)?;
    }
    File::create(inputs.out)?.set_len(disk_size)?;
    partition_table(inputs.out, &partitions)?;
    let by_label = |label: &str| {
        partitions
            .iter()
            .find(|p| p.label == label)
            .context("partition in the layout")
    };
    put(inputs.out, by_label("boot")?, &boot)?;
    put(inputs.out, by_label("rootfs-a")?, inputs.slot_image)?;
    let mut keep_whole = vec![range(by_label("rootfs-a")?, slot_size)];
    if inputs.slot_b == SlotB::Copy {
        put(inputs.out, by_label("rootfs-b")?, inputs.slot_image)?;
        keep_whole.push(range(by_label("rootfs-b")?, slot_size));
    }
    put(inputs.out, by_label("data")?, &data)?;
    stage.done(format!(
        "{} ({} partitions)",
        mib(disk_size),
        partitions.len()
    ));

    let stage = Stage::start("disk: bmap");
    let bmap_path = PathBuf::from(format!("{}.bmap", inputs.out.display()));
    bmap::write(inputs.out, &keep_whole, &bmap_path)?;
    stage.done(bmap_path.display().to_string());
    fs::remove_dir_all(&work)?;
    Ok(DiskSummary {
        partitions,
        disk_size,
        bmap: bmap_path,
    })
}

fn range(partition: &Partition, len: u64) -> (u64, u64) {
    (partition.start, partition.start + len)
}

/// Partition offsets and sizes, in bytes, 1 MiB aligned.
pub fn layout(profile: &Profile) -> Vec<Partition> {
    let sizes = [
        ("boot", profile.disk.boot_mib),
        ("rootfs-a", profile.disk.slot_mib),
        ("rootfs-b", profile.disk.slot_mib),
        ("data", profile.disk.data_mib),
    ];
    let mut start = HEAD_MIB * MIB;
    sizes
        .into_iter()
        .map(|(label, size_mib)| {
            let partition = Partition {
                label,
                start,
                size: size_mib * MIB,
            };
            start += size_mib * MIB;
            partition
        })
        .collect()
}

/// Makes `boot` an empty FAT32 file system of the profile's boot partition size.
fn boot_filesystem(profile: &Profile, boot: &Path) -> Result<()> {
    run(Command::new("mkfs.vfat")
        .args(["-F", "32", "-n", "CAIRN-BOOT", "-i", "c41a7e11"])
        .arg("-C")
        .arg(boot)
        .arg((profile.disk.boot_mib * 1024).to_string()))?;
    Ok(())
}

/// Runs an mtools command (`args[0]`: mmd, mcopy) on the FAT image `boot`.
fn mtools(boot: &Path, args: &[&std::ffi::OsStr]) -> Result<()> {
    run(Command::new(args[0])
        .arg("-i")
        .arg(boot)
        .args(&args[1..])
        .env("MTOOLS_SKIP_CHECK", "1"))?;
    Ok(())
}

/// The UEFI path's ESP (docs/UEFI.md): signed systemd-boot as the removable-media
/// loader, `loader/loader.conf` (no menu), the slot's signed UKI as the entries of a
/// freshly flashed disk ([`EntrySet::flashed`]), and each factory slot's `images.json`
/// in its directory (`a/`, `b/`).
fn build_esp(inputs: &Inputs, files: &BootFiles, boot: &Path) -> Result<()> {
    boot_filesystem(inputs.profile, boot)?;
    let mtools = |args: &[&std::ffi::OsStr]| mtools(boot, args);
    let os = |s: &str| std::ffi::OsString::from(s);
    let dirs = ["EFI", "EFI/BOOT", ENTRY_DIR, "loader"].map(|d| os(&format!("::{d}")));
    mtools(&[&os("mmd"), &dirs[0], &dirs[1], &dirs[2], &dirs[3]])?;
    let loader_conf = boot.with_file_name("loader.conf");
    fs::write(&loader_conf, "timeout 0\nconsole-mode keep\n")?;
    let arch = inputs.profile.arch()?;
    let mut copies = vec![
        (files.systemd_boot.clone(), esp::removable_loader(arch)),
        (loader_conf, "loader/loader.conf".to_string()),
    ];
    let entries = EntrySet::flashed(inputs.slot_b == SlotB::Copy);
    for entry in entries.entries() {
        copies.push((
            files.uki.clone(),
            format!("{ENTRY_DIR}/{}", entry.file_name()),
        ));
    }
    // The factory slots' images (`cairn_boot::images`), in each slot's directory.
    let images = boot.with_file_name(layout::IMAGES_JSON);
    let record = slot_images(&[("rootfs", inputs.slot_image), ("uki", &files.uki)])?;
    fs::write(&images, images::to_json(&record))?;
    for slot in factory_slots(inputs.slot_b) {
        let dir = layout::slot_dir(slot);
        mtools(&[&os("mmd"), &os(&format!("::{dir}"))])?;
        copies.push((images.clone(), format!("{dir}/{}", layout::IMAGES_JSON)));
    }
    for (from, to) in copies {
        mtools(&[&os("mcopy"), from.as_os_str(), &os(&format!("::{to}"))])?;
    }
    Ok(())
}

fn build_boot_partition(inputs: &Inputs, work: &Path, boot: &Path) -> Result<()> {
    let profile = inputs.profile;
    let epoch = profile.slot.epoch.to_string();
    let script = work.join("boot.scr");
    run(Command::new("mkimage")
        .args(["-A", "arm64", "-O", "linux", "-T", "script", "-C", "none"])
        .args(["-n", "cairn A/B boot"])
        .arg("-d")
        .arg(inputs.workspace.join(&profile.disk.boot_script))
        .arg(&script)
        .env("SOURCE_DATE_EPOCH", &epoch))?;

    let slot_env = work.join(layout::SLOT_ENV);
    fs::write(
        &slot_env,
        SlotArgs::new(Some(inputs.verity), &profile.version).slot_env(),
    )?;
    let images = work.join(layout::IMAGES_JSON);
    let record = slot_images(&[
        ("rootfs", inputs.slot_image),
        ("kernel", inputs.kernel),
        ("initrd", inputs.initrd),
    ])?;
    fs::write(&images, images::to_json(&record))?;
    let flashed = BootState::flashed(profile.disk.tries, inputs.slot_b == SlotB::Copy);
    let [copy0, copy1] = copies::fresh_copies(&flashed.vars())?;
    let state0 = work.join(layout::BOOT_STATE_COPIES[0]);
    let state1 = work.join(layout::BOOT_STATE_COPIES[1]);
    fs::write(&state0, copy0)?;
    fs::write(&state1, copy1)?;

    boot_filesystem(profile, boot)?;
    let mtools = |args: &[&std::ffi::OsStr]| mtools(boot, args);
    let os = |s: &str| std::ffi::OsString::from(s);
    mtools(&[&os("mmd"), &os("::a"), &os("::b")])?;
    for file in [&script, &state0, &state1] {
        mtools(&[&os("mcopy"), file.as_os_str(), &os("::")])?;
    }
    for slot in factory_slots(inputs.slot_b) {
        let dir = layout::slot_dir(slot);
        for (file, name) in [
            (inputs.kernel, layout::KERNEL),
            (inputs.initrd, layout::INITRD),
            (slot_env.as_path(), layout::SLOT_ENV),
            (images.as_path(), layout::IMAGES_JSON),
        ] {
            mtools(&[
                &os("mcopy"),
                file.as_os_str(),
                &os(&format!("::{dir}/{name}")),
            ])?;
        }
    }
    Ok(())
}

/// The slots a freshly flashed disk fills.
fn factory_slots(slot_b: SlotB) -> Vec<SlotId> {
    match slot_b {
        SlotB::Copy => vec![SlotId::A, SlotId::B],
        SlotB::Empty => vec![SlotId::A],
    }
}

/// What a factory slot holds (`cairn_boot::images`), so the device's first check-in
/// already tells the server which deltas apply.
fn slot_images(files: &[(&str, &Path)]) -> Result<SlotImages> {
    let mut images = SlotImages::new();
    for (name, path) in files {
        let mut file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        images.insert(name.to_string(), ImageRecord::of(&mut file)?);
    }
    Ok(images)
}

fn partition_table(disk: &Path, partitions: &[Partition]) -> Result<()> {
    let mut script = String::from(
        "label: gpt\nlabel-id: C41A7E11-0000-4000-8000-00000000D15C\nfirst-lba: 2048\n",
    );
    for (index, p) in partitions.iter().enumerate() {
        let (kind, attrs) = match p.label {
            // The ESP type and LegacyBIOSBootable: U-Boot's distro boot scans it first.
            "boot" => (
                "C12A7328-F81F-11D2-BA4B-00A0C93EC93B",
                ", attrs=\"LegacyBIOSBootable\"",
            ),
            _ => ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", ""),
        };
        script.push_str(&format!(
            "start={}, size={}, type={kind}, uuid=C41A7E11-0000-4000-8000-0000000000{:02X}, name=\"{}\"{attrs}\n",
            p.start / 512,
            p.size / 512,
            index + 1,
            p.label
        ));
    }
    sfdisk(disk, &script)
}

/// Partitions `disk` (a file) with sfdisk's `script`, without asking any kernel to
/// reread anything.
pub fn sfdisk(disk: &Path, script: &str) -> Result<()> {
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg("--no-reread")
        .arg("--no-tell-kernel")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .context("starting sfdisk")?;
    child
        .stdin
        .take()
        .context("sfdisk stdin")?
        .write_all(script.as_bytes())?;
    let output = child.wait_with_output()?;
    if !output.status.success() {
        bail!("sfdisk failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// Copies `file` to the partition's offset, leaving all-zero 64 KiB chunks as holes.
fn put(disk: &Path, partition: &Partition, file: &Path) -> Result<()> {
    let len = fs::metadata(file)?.len();
    if len > partition.size {
        bail!(
            "{} does not fit partition {}",
            file.display(),
            partition.label
        );
    }
    let mut src = File::open(file)?;
    let mut dest = fs::OpenOptions::new().write(true).open(disk)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = src.read(&mut buf)?;
        if n == 0 {
            break;
        }
        if !bmap::is_zero(&buf[..n]) {
            dest.seek(SeekFrom::Start(partition.start + offset))?;
            dest.write_all(&buf[..n])?;
        }
        offset += n as u64;
    }
    dest.sync_all()?;
    Ok(())
}
