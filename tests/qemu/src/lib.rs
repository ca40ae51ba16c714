//! Harness for the QEMU tests: builds the image once per test run (or reuses it when its
//! inputs are unchanged), gives each test its own sparse copy of the disk, boots it under
//! `qemu-system-aarch64 -M virt` (TCG) through Debian's U-Boot with swtpm attached, and
//! reads the serial console. Every wait has a timeout and the harness kills QEMU itself:
//! `virt` has no watchdog, so a hung guest would otherwise hang the test.
//!
//! A TCG guest keeps one core busy and leaves the other idle, so scenarios run one guest
//! per core at once, each in a VM slot ([`vm_slot`]). A slot has its own host ports for
//! the servers its guest reaches ([`host_port`]); [`guest_net`] maps the image's fixed
//! ports onto them.

pub mod disk;
pub mod efi;
pub mod fleet;
pub mod guest_net;
pub mod ntp;
pub mod slow_link;
pub mod update_loop;
pub mod vm;

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex, OnceLock};
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

/// Builds `build` unless its inputs are unchanged, one build at a time in this process:
/// builds of different profiles share Debian trees and the development keys, which two
/// first builds at once would race on (tests in parallel build v1 and v2 together).
pub fn ensure_image(build: &Build, slot_b: SlotB) -> Result<PathBuf> {
    static BUILDS: Mutex<()> = Mutex::new(());
    let _one_at_a_time = BUILDS.lock().unwrap_or_else(|p| p.into_inner());
    build.ensure(slot_b)
}

/// The image (slot B a bootable copy of A), built once per process.
pub fn image() -> Result<&'static Build> {
    static IMAGE: OnceLock<std::result::Result<Build, String>> = OnceLock::new();
    IMAGE
        .get_or_init(|| {
            let build = Build::new(&profile_path()).map_err(|e| format!("{e:#}"))?;
            ensure_image(&build, SlotB::Copy).map_err(|e| format!("{e:#}"))?;
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
        efi: None,
        out: &out,
    })?;
    Ok(out)
}

/// The ports the image's guests reach on 10.0.2.2 (`image/profiles/qemu-arm64.toml` and
/// the factory scenario's site server).
pub const SERVER_PORT: u16 = 18480;
pub const SITE_SERVER_PORT: u16 = 18481;
pub const NTP_PORT: u16 = 18123;

/// The right to run one guest; the slot is free again on drop. Held by the scenario's
/// thread, which starts that guest and its servers (see [`host_port`]).
pub struct VmSlot {
    index: usize,
}

/// One slot per core (a TCG guest keeps one core busy), or a single one where the machine
/// cannot give a guest its own network namespace; `CAIRN_QEMU_GUESTS` overrides it.
fn slot_count() -> usize {
    static COUNT: OnceLock<usize> = OnceLock::new();
    *COUNT.get_or_init(|| {
        let wanted = std::env::var("CAIRN_QEMU_GUESTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        if wanted > 1 && !guest_net::GuestNet::available() {
            eprintln!("qemu-tests: no network namespaces here; guests run one at a time");
            return 1;
        }
        wanted.clamp(1, 8)
    })
}

static SLOTS: Mutex<Vec<bool>> = Mutex::new(Vec::new());
static SLOT_FREED: Condvar = Condvar::new();

thread_local! {
    /// The slot this thread holds, if any.
    static SLOT: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Waits for a free VM slot and holds it for this thread.
pub fn vm_slot() -> VmSlot {
    let count = slot_count();
    let mut busy = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
    busy.resize(count, false);
    let index = loop {
        if let Some(free) = busy.iter().position(|b| !b) {
            break free;
        }
        busy = SLOT_FREED.wait(busy).unwrap_or_else(|p| p.into_inner());
    };
    busy[index] = true;
    SLOT.with(|s| s.set(Some(index)));
    VmSlot { index }
}

impl Drop for VmSlot {
    fn drop(&mut self) {
        SLOT.with(|s| s.set(None));
        let mut busy = SLOTS.lock().unwrap_or_else(|p| p.into_inner());
        busy[self.index] = false;
        SLOT_FREED.notify_one();
    }
}

/// Where on the host's loopback a server the guest reaches at 10.0.2.2:`guest_port`
/// listens: the same port for slot 0 (and for a thread holding no slot, such as the
/// demo's), 1000 higher per slot after it.
pub fn host_port(guest_port: u16) -> u16 {
    guest_port + 1000 * SLOT.with(Cell::get).unwrap_or(0) as u16
}

/// The private network a guest started on this thread needs, if its slot is not 0.
pub(crate) fn guest_net() -> anyhow::Result<Option<guest_net::GuestNet>> {
    match SLOT.with(Cell::get) {
        None | Some(0) => Ok(None),
        Some(_) => guest_net::GuestNet::new(host_port).map(Some),
    }
}

/// Where consoles and timings are kept for a failed run to be read.
pub fn log_dir() -> PathBuf {
    workspace().join("target/cairn/qemu-logs")
}

/// Prints and records how long a scenario took.
pub fn record_time(scenario: &str, took: Duration) {
    let slot = SLOT
        .with(Cell::get)
        .map_or(String::new(), |i| format!(" (VM slot {i})"));
    let line = format!("{scenario}: {:.1}s{slot}\n", took.as_secs_f64());
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

/// One boot scenario's own copy of the v1 disk, in a scratch directory, holding its VM
/// slot.
pub struct Scenario {
    _slot: VmSlot,
    pub scratch: tempfile::TempDir,
    pub disk: disk::TestDisk,
}

/// A fresh [`Scenario`]: the image (built once per run) copied for this test.
pub fn scenario() -> Result<Scenario> {
    let build = image()?;
    let slot = vm_slot();
    let scratch = tempfile::tempdir()?;
    let disk = disk::TestDisk::copy_of(&build.layout.disk(), &build.profile, scratch.path())?;
    Ok(Scenario {
        _slot: slot,
        scratch,
        disk,
    })
}
