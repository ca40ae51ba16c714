//! Harness for the QEMU tests: builds the image once per test run (or reuses it when its
//! inputs are unchanged), gives each test its own sparse copy of the disk, boots it under
//! `qemu-system-aarch64 -M virt` (TCG) through Debian's U-Boot with swtpm attached, and
//! reads the serial console. Every wait has a timeout and the harness kills QEMU itself:
//! `virt` has no watchdog, so a hung guest would otherwise hang the test.

pub mod disk;
pub mod fleet;
pub mod ntp;
pub mod update_loop;
pub mod vm;

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, Result};
use cairn_image::os::disk::SlotB;
use cairn_image::os::pipeline::Build;

/// One boot from U-Boot to the shell takes ~5 s here, ~10 s while cargo compiles in
/// parallel: waits for one boot allow 3x that.
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(45);

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

pub fn profile_path() -> PathBuf {
    workspace().join("image/profiles/qemu-arm64.toml")
}

/// The image (slot B a bootable copy of A), built once per process.
pub fn image() -> Result<&'static Build> {
    static IMAGE: OnceLock<std::result::Result<Build, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let build = Build::new(&profile_path()).map_err(|e| format!("{e:#}"))?;
            build.ensure(SlotB::Copy).map_err(|e| format!("{e:#}"))?;
            Ok(build)
        })
        .as_ref()
        .map_err(|e| anyhow!("building the image failed: {e}"))
}

/// A fresh disk as `cargo xtask image` makes it by default: slot B empty and unbootable.
/// Built from the same kernel, initramfs and slot image as [`image`], into `dir`.
pub fn disk_with_empty_slot_b(dir: &Path) -> Result<PathBuf> {
    let build = image()?;
    let verity = build.verity()?;
    let out = dir.join("disk-empty-b.img");
    cairn_image::os::disk::build(&cairn_image::os::disk::Inputs {
        profile: &build.profile,
        workspace: &build.layout.workspace,
        kernel: &build.layout.kernel(),
        initrd: &build.layout.initrd(),
        slot_image: &build.layout.slot_image(),
        verity: &verity,
        slot_b: SlotB::Empty,
        out: &out,
    })?;
    Ok(out)
}

/// VMs run one at a time: two TCG guests on two cores would double every boot time.
pub fn serial() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Where consoles and timings are kept for a failed run to be read.
pub fn log_dir() -> PathBuf {
    workspace().join("target/cairn/qemu-logs")
}

/// Prints and records how long a scenario took.
pub fn record_time(scenario: &str, took: Duration) {
    let line = format!("{scenario}: {:.1}s\n", took.as_secs_f64());
    print!("{line}");
    let dir = log_dir();
    let _ = std::fs::create_dir_all(&dir);
    use std::io::Write;
    if let Ok(mut file) = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("timings.txt"))
    {
        let _ = file.write_all(line.as_bytes());
    }
}

/// One boot scenario's own copy of the v1 disk, in a scratch directory, holding the
/// lock that keeps scenarios from running QEMU at the same time.
pub struct Scenario {
    _lock: MutexGuard<'static, ()>,
    pub scratch: tempfile::TempDir,
    pub disk: disk::TestDisk,
}

/// A fresh [`Scenario`]: the image (built once per run) copied for this test.
pub fn scenario() -> Result<Scenario> {
    let build = image()?;
    let lock = serial();
    let scratch = tempfile::tempdir()?;
    let disk = disk::TestDisk::copy_of(&build.layout.disk(), &build.profile, scratch.path())?;
    Ok(Scenario {
        _lock: lock,
        scratch,
        disk,
    })
}
