//! The loop the product exists for, on the real image: v1 boots, enrolls, an operator
//! approves it and starts a campaign of v2, the device downloads the delta, writes slot
//! B, reboots into its trial, passes its health checks and commits; the server counts the
//! success. Steps shared by the end-to-end tests and `cargo xtask demo`: the tests check
//! what they return, the demo shows what `say` is told.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use cairn_image::os::pipeline::Build;

use crate::disk::TestDisk;
use crate::efi::{self, Arch};
use crate::fleet::{self, Fleet};
use crate::vm::Vm;
use crate::{disk_with_empty_slot_b, image, BOOT_TIMEOUT};

/// Enrollment, download, write, reboot and health checks under TCG take minutes; 4x.
const UPDATE_TIMEOUT: Duration = Duration::from_secs(900);
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);
/// The UEFI boards' firmware and systemd-boot add ~10 s to a boot.
const EFI_AWARE_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The device a rig runs: the U-Boot arm64 board (`qemu-arm64.toml`) or a UEFI
/// profile's (`qemu-x86_64-efi.toml`; docs/UEFI.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Board {
    Uboot,
    Efi(Arch),
}

impl Board {
    /// The v1 image.
    pub fn v1(self) -> Result<&'static Build> {
        match self {
            Board::Uboot => image(),
            Board::Efi(arch) => efi::os_image(arch),
        }
    }

    /// v2's bundle with deltas from v1, copied to `out`.
    fn bundle_v2(self, out: &Path) -> Result<PathBuf> {
        match self {
            Board::Uboot => fleet::bundle_v2_from_v1(out),
            Board::Efi(arch) => {
                // Made once per process per board, like the U-Boot board's.
                static MADE: Mutex<Vec<(Arch, PathBuf)>> = Mutex::new(Vec::new());
                let mut made = MADE.lock().unwrap_or_else(|p| p.into_inner());
                if !made.iter().any(|(a, _)| *a == arch) {
                    let v2 = fleet::image_of(efi::v2_profile(arch))?;
                    let path = v2.layout.out.join("v2-from-v1.cairn");
                    fleet::bundle(v2, self.v1()?, &path)?;
                    made.push((arch, path));
                }
                let (_, path) = made
                    .iter()
                    .find(|(a, _)| *a == arch)
                    .context("the bundle was just made")?;
                std::fs::copy(path, out).with_context(|| format!("copying {}", path.display()))?;
                Ok(out.to_path_buf())
            }
        }
    }

    /// What the console says when the boot chain starts `slot` ("A", "B").
    pub fn slot_chosen(self, slot: &str) -> String {
        match self {
            Board::Uboot => format!("cairn: slot {slot} chosen"),
            Board::Efi(_) => {
                format!("cairn-initramfs: slot {slot} from systemd-boot's LoaderEntrySelected")
            }
        }
    }

    fn start(self, name: &str, disk: &Path, dir: &Path) -> Result<Vm> {
        match self {
            Board::Uboot => Vm::start(name, disk, dir),
            Board::Efi(arch) => {
                Vm::start_efi_os(name, disk, dir, &self.v1()?.layout.efi_vars(), arch)
            }
        }
    }
}

/// A device booted from a fresh v1 disk, enrolled and approved on a running server that
/// holds the v2 release.
pub struct Rig {
    pub board: Board,
    pub fleet: Fleet,
    pub vm: Vm,
    pub device_id: String,
    /// The release id of v2 on the server.
    pub release: String,
    pub bundle: PathBuf,
    pub bundle_bytes: u64,
    pub disk: PathBuf,
    pub started: Instant,
}

/// How a campaign ended for the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CampaignEnd {
    pub state: String,
    pub succeeded: u64,
    pub failed: u64,
}

impl Rig {
    /// Builds v1 and v2 (once per process), bundles v2 with deltas from v1, starts the
    /// server, boots v1 and approves the device when it enrolls. With `usb`, the bundle
    /// is also on a second disk (a USB stick stand-in, [`Rig::find_usb_stick`]).
    pub fn boot_v1(dir: &Path, name: &str, usb: bool, say: &mut dyn FnMut(&str)) -> Result<Rig> {
        Self::boot_v1_with_clock(dir, name, usb, None, say)
    }

    /// [`Rig::boot_v1`] with the guest's clock starting at `rtc_base` ([`Vm::start_with_clock`]).
    pub fn boot_v1_with_clock(
        dir: &Path,
        name: &str,
        usb: bool,
        rtc_base: Option<&str>,
        say: &mut dyn FnMut(&str),
    ) -> Result<Rig> {
        say("Building the v1 image (Debian bookworm arm64, kernel 6.1.0-55) and v2 (kernel 6.1.0-56)...");
        Self::serve_and_boot(Board::Uboot, dir, name, usb, rtc_base, say)
    }

    /// [`Rig::boot_v1`] on `board`: the UEFI boards start from their image's disk as
    /// built (slot B a bootable copy of A, which the update replaces).
    pub fn boot_v1_on(
        board: Board,
        dir: &Path,
        name: &str,
        say: &mut dyn FnMut(&str),
    ) -> Result<Rig> {
        say(&format!("Building the v1 and v2 images of {board:?}..."));
        Self::serve_and_boot(board, dir, name, false, None, say)
    }

    fn serve_and_boot(
        board: Board,
        dir: &Path,
        name: &str,
        usb: bool,
        rtc_base: Option<&str>,
        say: &mut dyn FnMut(&str),
    ) -> Result<Rig> {
        let v1 = board.v1()?;
        let bundle = board.bundle_v2(&dir.join("v2.cairn"))?;
        let bundle_bytes = std::fs::metadata(&bundle)?.len();
        say(&format!(
            "Signed bundle for v2 with deltas from v1: {:.1} MiB (v1's slot image alone is {:.1} MiB).",
            bundle_bytes as f64 / 1048576.0,
            std::fs::metadata(v1.layout.slot_image())?.len() as f64 / 1048576.0
        ));
        let tls = v1
            .dev_tls()?
            .context("the QEMU profile names a fleet server")?;
        let fleet = Fleet::start(&v1.layout.dev_keys().join("root.json"), &tls, dir)?;
        let release = fleet.upload(&bundle)?;
        say(&format!(
            "cairn-server is up at {} with release {release}.",
            fleet.url()
        ));
        let started = Instant::now();
        let (disk, mut vm) = match board {
            Board::Uboot => {
                let disk = disk_with_empty_slot_b(dir)?;
                let stick = dir.join("usb-stick.img");
                if usb {
                    let mut bytes = std::fs::read(&bundle)?;
                    bytes.resize(bytes.len().div_ceil(1 << 20) << 20, 0);
                    std::fs::write(&stick, bytes)?;
                }
                let vm = Vm::start_with_clock(
                    name,
                    &disk,
                    dir,
                    usb.then_some(stick.as_path()),
                    rtc_base,
                )?;
                say("Booting a fresh device from the v1 disk under QEMU (slot A; slot B empty)...");
                (disk, vm)
            }
            Board::Efi(_) => {
                let disk = TestDisk::copy_of(&v1.layout.disk(), &v1.profile, dir)?.path;
                let vm = board.start(name, &disk, dir)?;
                say("Booting a fresh device from the v1 disk under QEMU: UEFI firmware with Secure Boot on, systemd-boot, slot A's signed UKI...");
                (disk, vm)
            }
        };
        vm.wait_for(&board.slot_chosen("A"), EFI_AWARE_BOOT_TIMEOUT)?;
        vm.wait_for_shell(BOOT_TIMEOUT)?;
        say("The device is up; cairnd makes a device key on first boot and enrolls it.");
        let device_id = wait_for_enrollment(&fleet)?;
        fleet.approve(&device_id)?;
        say(&format!("The operator approves {device_id}."));
        Ok(Rig {
            board,
            fleet,
            vm,
            device_id,
            release,
            bundle,
            bundle_bytes,
            disk,
            started,
        })
    }

    /// Bundles `bundle_path` (already made) into the server; returns the release id.
    pub fn add_release(&self, bundle_path: &Path) -> Result<String> {
        self.fleet.upload(bundle_path)
    }

    /// Starts a campaign of v2 for every device like this one and tells each event of
    /// the device's history on the server until the campaign counts it.
    pub fn roll_out(&self, campaign: &str, say: &mut dyn FnMut(&str)) -> Result<CampaignEnd> {
        self.roll_out_release(campaign, &self.release.clone(), say)
    }

    /// [`Rig::roll_out`] of any release on the server.
    pub fn roll_out_release(
        &self,
        campaign: &str,
        release: &str,
        say: &mut dyn FnMut(&str),
    ) -> Result<CampaignEnd> {
        let compatible = &self.board.v1()?.profile.compatible;
        say(&format!(
            "Campaign {campaign}: release {release} to every {compatible} device, pause at the first failure."
        ));
        self.fleet.start_campaign(campaign, release, compatible)?;
        self.follow(campaign, say)
    }

    /// Tells each event of the device's history on the server until `campaign` counts
    /// the device as succeeded or failed.
    pub fn follow(&self, campaign: &str, say: &mut dyn FnMut(&str)) -> Result<CampaignEnd> {
        let deadline = Instant::now() + UPDATE_TIMEOUT;
        let mut told = 0;
        let mut settle_until = None;
        loop {
            let history = self.fleet.device(&self.device_id)?["history"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            for event in history.iter().rev().skip(told) {
                say(&format!(
                    "  server: {} {}: {}",
                    self.device_id,
                    event["event"].as_str().unwrap_or("?"),
                    event["detail"].as_str().unwrap_or("")
                ));
            }
            told = told.max(history.len());
            let (state, succeeded, failed) = self.fleet.campaign(campaign)?;
            // The server counts a failure when the report's transaction commits and runs
            // the campaign's gates just after it: give a failure a moment to pause it.
            if failed > 0 && state == "running" && settle_until.is_none() {
                settle_until = Some(Instant::now() + Duration::from_secs(10));
            }
            let settling = settle_until.is_some_and(|t| Instant::now() < t) && state == "running";
            if succeeded + failed > 0 && !settling {
                say(&format!(
                    "Campaign {campaign}: {state}; succeeded {succeeded}, failed {failed}."
                ));
                return Ok(CampaignEnd {
                    state,
                    succeeded,
                    failed,
                });
            }
            if Instant::now() > deadline {
                bail!("campaign {campaign} did not end for the device within {UPDATE_TIMEOUT:?}");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Power cut: kills QEMU and boots the same disk again (console log `name`).
    pub fn power_cycle(&mut self, name: &str) -> Result<()> {
        let dir = self
            .disk
            .parent()
            .ok_or_else(|| anyhow::anyhow!("disk without a directory"))?
            .to_path_buf();
        self.vm.power_off();
        self.vm = self.board.start(name, &self.disk, &dir)?;
        Ok(())
    }

    /// Waits for the shell after a boot and echoes cairnd's log on the console from then
    /// on, so waits can key on what the daemon is doing.
    pub fn shell_with_cairnd_log(&mut self) -> Result<()> {
        self.vm.wait_for_shell(BOOT_TIMEOUT)?;
        self.vm.send("tail -n 0 -f /var/log/cairnd.log &")
    }

    /// The guest's device node of the USB stick: the disk that starts with a bundle.
    pub fn find_usb_stick(&mut self) -> Result<String> {
        let found = self.vm.check(
            "for d in /dev/vda /dev/vdb; do [ \"$(head -c 8 $d)\" = CAIRNBDL ] && echo $d; done; true",
            COMMAND_TIMEOUT,
        )?;
        found
            .lines()
            .map(str::trim)
            .find(|l| l.starts_with("/dev/"))
            .map(str::to_string)
            .ok_or_else(|| anyhow::anyhow!("no disk with a bundle in the guest: {found}"))
    }

    /// Polls `cairn status --json` until `done` holds for it.
    pub fn wait_for_status(&mut self, what: &str, done: impl Fn(&Value) -> bool) -> Result<Value> {
        let deadline = Instant::now() + UPDATE_TIMEOUT;
        loop {
            let status = self.status()?;
            if done(&status) {
                return Ok(status);
            }
            // A rolled-back update does not come back by waiting.
            if status["phase"]["phase"] == "rolled-back" {
                bail!("the device rolled back instead of reaching {what}: {status}");
            }
            if Instant::now() > deadline {
                bail!("the device never reached {what}: {status}");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// After a campaign of v2 succeeded: the shell of the boot into B, and `cairn status`
    /// once it shows v2 committed there (booted and committed both B).
    pub fn wait_for_v2_committed(&mut self) -> Result<Value> {
        self.vm.wait_for_shell(BOOT_TIMEOUT)?;
        let status = self.wait_for_status("the commit of 0.2.0", |s| {
            s["phase"]["phase"] == "committed" && s["slots"]["B"]["version"] == "0.2.0"
        })?;
        if status["booted"] != "B" || status["committed"] != "B" {
            bail!("v2 committed, but not booted and committed in B: {status}");
        }
        Ok(status)
    }

    /// `cairn status --json` on the device's console.
    pub fn status(&mut self) -> Result<Value> {
        self.vm.cairn_status()
    }

    /// The device log's lines naming the payload each image was written from.
    pub fn payload_lines(&mut self) -> Result<Vec<String>> {
        let log = self.vm.check(
            "grep -h 'image started' /var/log/cairnd.log* || true",
            COMMAND_TIMEOUT,
        )?;
        Ok(log.lines().map(|l| l.trim().to_string()).collect())
    }
}

fn wait_for_enrollment(fleet: &Fleet) -> Result<String> {
    let deadline = Instant::now() + BOOT_TIMEOUT * 2;
    loop {
        if let Some(id) = fleet.pending_devices()?.into_iter().next() {
            return Ok(id);
        }
        if Instant::now() > deadline {
            bail!("no device enrolled within {:?}", BOOT_TIMEOUT * 2);
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}
