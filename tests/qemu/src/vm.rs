//! One QEMU guest: qemu-system-aarch64 through U-Boot, or qemu-system-x86_64 through
//! OVMF with Secure Boot (the UEFI path), + swtpm, the serial console captured by a thread,
//! waits with timeouts, shell commands over the console (Linux's console does not drop
//! characters; U-Boot's does, so U-Boot is only ever driven through its env and script).

use std::fs;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cairn_image::os::uboot;

use crate::efi::Arch;

/// `/var/log/cairnd.log` as stored on the data partition (/var is an overlay whose upper
/// directory lives there; boot/initramfs/init).
const CAIRND_LOG: &str = "overlay/var/upper/log/cairnd.log";

/// Debian's OVMF build with Secure Boot support and no keys of its own (package `ovmf`).
pub const OVMF_CODE_SECBOOT: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
/// Debian's arm64 UEFI firmware for `virt` (package `qemu-efi-aarch64`); Secure Boot needs
/// no separate build on arm, only enrolled keys.
pub const AAVMF_CODE: &str = "/usr/share/AAVMF/AAVMF_CODE.fd";
// (The variable stores keys are enrolled into: `cairn_image::os::esp::vars_template`.)

/// How long a command in the guest's shell may take.
const GUEST_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// containerd's CRI comes up a few seconds after init under TCG; 3x margin.
const CRI_TIMEOUT: Duration = Duration::from_secs(90);

/// swtpm for one guest, its state and control socket under `scratch/tpm`.
fn start_swtpm(scratch: &Path) -> Result<(Child, PathBuf)> {
    let tpm_dir = scratch.join("tpm");
    fs::create_dir_all(&tpm_dir)?;
    let socket = tpm_dir.join("swtpm.sock");
    let swtpm = Command::new("swtpm")
        .arg("socket")
        .arg("--tpm2")
        .arg("--tpmstate")
        .arg(format!("dir={}", tpm_dir.display()))
        .arg("--ctrl")
        .arg(format!("type=unixio,path={}", socket.display()))
        .args(["--flags", "not-need-init"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting swtpm")?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !socket.exists() {
        if Instant::now() > deadline {
            bail!("swtpm did not create {}", socket.display());
        }
        thread::sleep(Duration::from_millis(20));
    }
    Ok((swtpm, socket))
}

pub struct Vm {
    qemu: Child,
    swtpm: Child,
    stdin: ChildStdin,
    console: Arc<Mutex<String>>,
    /// The guest's own network when its VM slot is not the first; after `qemu` in drop
    /// order, though QEMU is killed before either field drops.
    _net: Option<crate::guest_net::GuestNet>,
    /// Waits search from here on: what an earlier wait matched is not matched again.
    cursor: usize,
    started: Instant,
    log: PathBuf,
    /// The guest's system disk, read after QEMU is gone for the device's own log.
    disk: PathBuf,
    commands: u32,
}

impl Vm {
    /// Boots `disk`; `scratch` holds the TPM state and the patched U-Boot.
    pub fn start(name: &str, disk: &Path, scratch: &Path) -> Result<Vm> {
        Self::start_with(name, disk, scratch, None)
    }

    /// Like [`Vm::start`], with `usb` (a raw file) attached as a second disk: the guest
    /// sees it as /dev/vdb, a USB stick stand-in.
    pub fn start_with(name: &str, disk: &Path, scratch: &Path, usb: Option<&Path>) -> Result<Vm> {
        Self::start_with_clock(name, disk, scratch, usb, None)
    }

    /// Like [`Vm::start_with`], with the guest's real-time clock starting at `rtc_base`
    /// (`2006-06-17T16:01:21`) instead of the host's time: a board without a clock battery.
    pub fn start_with_clock(
        name: &str,
        disk: &Path,
        scratch: &Path,
        usb: Option<&Path>,
        rtc_base: Option<&str>,
    ) -> Result<Vm> {
        let mut extra = usb.map_or_else(Vec::new, |usb| {
            vec![
                "-drive".to_string(),
                format!(
                    "if=none,file={},format=raw,id=usb,readonly=on",
                    usb.display()
                ),
                "-device".to_string(),
                "virtio-blk-device,drive=usb".to_string(),
            ]
        });
        if let Some(base) = rtc_base {
            extra.extend(["-rtc".to_string(), format!("base={base}")]);
        }
        Self::start_args(name, disk, scratch, extra)
    }

    /// Like [`Vm::start`], with `stick` (a raw file, writable) attached on a virtio-scsi
    /// controller: the guest sees it as /dev/sda, which sorts before the system disk's
    /// /dev/vda in /sys/class/block, as a real USB stick (sd*) would on a board.
    pub fn start_with_scsi_disk(
        name: &str,
        disk: &Path,
        scratch: &Path,
        stick: &Path,
    ) -> Result<Vm> {
        let extra = vec![
            "-device".to_string(),
            "virtio-scsi-device,id=scsi0".to_string(),
            "-drive".to_string(),
            format!("if=none,file={},format=raw,id=stick", stick.display()),
            "-device".to_string(),
            "scsi-hd,drive=stick,bus=scsi0.0".to_string(),
        ];
        Self::start_args(name, disk, scratch, extra)
    }

    /// Boots `disk` with `extra` QEMU arguments placed before it (devices declared first
    /// get the higher virtio-mmio addresses, so the system disk stays U-Boot's virtio 0).
    fn start_args(name: &str, disk: &Path, scratch: &Path, extra: Vec<String>) -> Result<Vm> {
        let uboot_path = scratch.join("u-boot.bin");
        uboot::write_patched(&uboot_path)?;
        let (swtpm, socket) = start_swtpm(scratch)?;
        let net = crate::guest_net()?;
        let mut qemu = Command::new("qemu-system-aarch64");
        if let Some(net) = &net {
            net.enter(&mut qemu);
        }
        qemu.args([
            "-M",
            "virt",
            "-cpu",
            "cortex-a57",
            "-m",
            "1024",
            "-nographic",
        ])
        .arg("-bios")
        .arg(&uboot_path)
        // virt gives the last virtio-mmio device the lowest address, and U-Boot boots
        // "virtio 0": the system disk comes last.
        .args(extra)
        .arg("-drive")
        .arg(format!("if=none,file={},format=raw,id=hd", disk.display()))
        .args(["-device", "virtio-blk-device,drive=hd"])
        .args([
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-device,netdev=n0",
        ])
        .arg("-chardev")
        .arg(format!("socket,id=chrtpm,path={}", socket.display()))
        .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
        .args(["-device", "tpm-tis-device,tpmdev=tpm0"]);
        Self::attach(name, qemu, swtpm, net, disk)
    }

    /// Boots `disk` through UEFI firmware with a copy of `vars` as its variables (the
    /// enrolled keys, docs/UEFI.md), swtpm as a TIS TPM, and no network (the firmware would
    /// otherwise try PXE after a failed disk boot and wait there):
    /// - x86_64: QEMU's `q35` with OVMF's Secure Boot build, which needs SMM and a secure
    ///   pflash;
    /// - arm64: `virt` with AAVMF, which needs no separate Secure Boot build.
    pub fn start_efi(
        name: &str,
        disk: &Path,
        scratch: &Path,
        vars: &Path,
        arch: Arch,
    ) -> Result<Vm> {
        Self::start_efi_with(name, disk, scratch, vars, arch, false)
    }

    /// [`Vm::start_efi`] for a Cairn OS image: with a network (QEMU's user network on
    /// virtio-net-pci, in the test's own namespace like [`Vm::start`]), the disk first in
    /// the firmware's boot order so it never tries the network instead.
    pub fn start_efi_os(
        name: &str,
        disk: &Path,
        scratch: &Path,
        vars: &Path,
        arch: Arch,
    ) -> Result<Vm> {
        Self::start_efi_with(name, disk, scratch, vars, arch, true)
    }

    fn start_efi_with(
        name: &str,
        disk: &Path,
        scratch: &Path,
        vars: &Path,
        arch: Arch,
        network: bool,
    ) -> Result<Vm> {
        let vars_copy = scratch.join("VARS.fd");
        fs::copy(vars, &vars_copy).with_context(|| format!("copying {}", vars.display()))?;
        let (swtpm, socket) = start_swtpm(scratch)?;
        let (program, machine, code, tpm_device): (&str, &[&str], &str, &str) = match arch {
            Arch::X86_64 => (
                "qemu-system-x86_64",
                &[
                    "-machine",
                    "q35,smm=on",
                    "-global",
                    "driver=cfi.pflash01,property=secure,value=on",
                ],
                OVMF_CODE_SECBOOT,
                "tpm-tis",
            ),
            Arch::Arm64 => (
                "qemu-system-aarch64",
                &["-M", "virt", "-cpu", "cortex-a57"],
                AAVMF_CODE,
                "tpm-tis-device",
            ),
        };
        let net = if network { crate::guest_net()? } else { None };
        let mut qemu = Command::new(program);
        if let Some(net) = &net {
            net.enter(&mut qemu);
        }
        qemu.args(machine).args([
            "-m",
            "1024",
            "-nographic",
            "-nodefaults",
            "-serial",
            "stdio",
        ]);
        if network {
            qemu.args([
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0,romfile=",
            ]);
        } else {
            qemu.args(["-net", "none"]);
        }
        qemu.arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=0,readonly=on,file={code}"
            ))
            .arg("-drive")
            .arg(format!(
                "if=pflash,format=raw,unit=1,file={}",
                vars_copy.display()
            ))
            .arg("-drive")
            .arg(format!("if=none,file={},format=raw,id=hd", disk.display()))
            .args([
                "-device",
                if network {
                    "virtio-blk-pci,drive=hd,bootindex=0"
                } else {
                    "virtio-blk-pci,drive=hd"
                },
            ])
            .arg("-chardev")
            .arg(format!("socket,id=chrtpm,path={}", socket.display()))
            .args(["-tpmdev", "emulator,id=tpm0,chardev=chrtpm"])
            .args(["-device", &format!("{tpm_device},tpmdev=tpm0")]);
        Self::attach(name, qemu, swtpm, net, disk)
    }

    /// Starts `qemu` with the console captured.
    fn attach(
        name: &str,
        mut qemu: Command,
        swtpm: Child,
        net: Option<crate::guest_net::GuestNet>,
        disk: &Path,
    ) -> Result<Vm> {
        let program = qemu.get_program().to_string_lossy().into_owned();
        let mut qemu = qemu
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {program}"))?;
        let stdin = qemu.stdin.take().context("qemu stdin")?;
        let console = Arc::new(Mutex::new(String::new()));
        for stream in [
            qemu.stdout
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
            qemu.stderr
                .take()
                .map(|s| Box::new(s) as Box<dyn Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let console = Arc::clone(&console);
            thread::spawn(move || capture(stream, console));
        }
        let log_dir = crate::log_dir();
        fs::create_dir_all(&log_dir)?;
        Ok(Vm {
            qemu,
            swtpm,
            stdin,
            console,
            _net: net,
            cursor: 0,
            started: Instant::now(),
            log: log_dir.join(format!("{name}.console.log")),
            disk: disk.to_path_buf(),
            commands: 0,
        })
    }

    /// Waits until QEMU exits by itself (the guest powered off with `-no-reboot`, or
    /// the firmware gave up); fails after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.qemu.try_wait()?.is_some() {
                // Let the capture threads drain what QEMU printed last.
                thread::sleep(Duration::from_millis(100));
                self.save_log();
                return Ok(());
            }
            if Instant::now() > deadline {
                self.save_log();
                bail!("QEMU still running after {:.0}s", timeout.as_secs_f64());
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Everything the console printed so far.
    pub fn console(&self) -> String {
        self.console.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Waits until `pattern` appears after the cursor; moves the cursor past it.
    pub fn wait_for(&mut self, pattern: &str, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let text = self.console();
            if let Some(at) = text.get(self.cursor..).and_then(|t| t.find(pattern)) {
                self.cursor += at + pattern.len();
                return Ok(());
            }
            if Instant::now() > deadline {
                self.save_log();
                bail!(
                    "no {pattern:?} on the console within {:.0}s (log: {})\n--- last output ---\n{}",
                    timeout.as_secs_f64(),
                    self.log.display(),
                    tail(&text, 3000)
                );
            }
            if let Ok(Some(status)) = self.qemu.try_wait() {
                self.save_log();
                bail!(
                    "QEMU exited ({status}) while waiting for {pattern:?}\n{}",
                    tail(&text, 3000)
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the shell on the serial console after a boot.
    pub fn wait_for_shell(&mut self, timeout: Duration) -> Result<()> {
        self.wait_for("cairn: system up", timeout)?;
        self.wait_for("Enter 'help' for a list of built-in commands.", timeout)
    }

    /// Runs a shell command in the guest; returns its output and exit status. The markers
    /// are split in the typed line so the terminal's echo of it never matches.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<(String, i32)> {
        self.commands += 1;
        let n = self.commands;
        let line = format!("echo '@@'\"B{n}\"; {command}; echo '@@'\"E{n}\" $?\n");
        self.stdin.write_all(line.as_bytes())?;
        self.stdin.flush()?;
        let begin = format!("@@B{n}");
        let end = format!("@@E{n} ");
        self.wait_for(&begin, timeout)?;
        let start = self.cursor;
        self.wait_for(&end, timeout)?;
        let text = self.console();
        let output = text[start..self.cursor - end.len()]
            .trim()
            .replace('\r', "");
        let status_text: String = text[self.cursor..]
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        let status = status_text.parse().unwrap_or(-1);
        Ok((output, status))
    }

    /// Runs a command that must succeed.
    pub fn check(&mut self, command: &str, timeout: Duration) -> Result<String> {
        let (output, status) = self.run(command, timeout)?;
        if status != 0 {
            bail!("`{command}` exited {status} in the guest:\n{output}");
        }
        Ok(output)
    }

    /// Types a line without waiting for anything (e.g. `reboot -f`).
    pub fn send(&mut self, line: &str) -> Result<()> {
        self.stdin.write_all(format!("{line}\n").as_bytes())?;
        self.stdin.flush()?;
        Ok(())
    }

    /// `cairn status --json` on the guest's shell.
    pub fn cairn_status(&mut self) -> Result<serde_json::Value> {
        let text = self.check("cairn status --json", GUEST_COMMAND_TIMEOUT)?;
        Ok(serde_json::from_str(&text[text.find('{').unwrap_or(0)..])?)
    }

    /// Polls `cairn-cri-probe` until containerd's CRI reports RuntimeReady; returns
    /// what it printed.
    pub fn wait_for_cri(&mut self) -> Result<String> {
        let deadline = Instant::now() + CRI_TIMEOUT;
        loop {
            let (output, status) = self.run("cairn-cri-probe", GUEST_COMMAND_TIMEOUT)?;
            if status == 0 {
                return Ok(output);
            }
            if Instant::now() >= deadline {
                let log =
                    self.check("tail -n 20 /var/log/containerd.log", GUEST_COMMAND_TIMEOUT)?;
                bail!("CRI not RuntimeReady within {CRI_TIMEOUT:?}: {output}\n{log}");
            }
            thread::sleep(Duration::from_secs(1));
        }
    }

    /// cairnd's log (`/var/log/cairnd.log`, written by init's service wrapper) once it has
    /// a line containing `pattern`. cairnd decides trials (health checks: the CRI) before
    /// it logs, so this allows the CRI's time too.
    pub fn wait_for_cairnd(&mut self, pattern: &str) -> Result<String> {
        let halves = CRI_TIMEOUT.as_secs() * 2;
        let log = self.check(
            &format!(
                "for i in $(seq {halves}); do grep -q '{pattern}' /var/log/cairnd.log 2>/dev/null && break; sleep 0.5; done; cat /var/log/cairnd.log"
            ),
            CRI_TIMEOUT + GUEST_COMMAND_TIMEOUT,
        )?;
        if !log.contains(pattern) {
            bail!("cairnd did not log {pattern:?} within {CRI_TIMEOUT:?}:\n{log}");
        }
        Ok(log)
    }

    /// How often `pattern` appeared on the console in total.
    pub fn count(&self, pattern: &str) -> usize {
        self.console().matches(pattern).count()
    }

    fn save_log(&self) {
        let _ = fs::write(&self.log, self.console());
    }

    /// Copies cairnd's log off the (stopped) guest's data partition next to the console
    /// log, so a failed or stalled run can be read instead of guessed. Best effort: a disk
    /// that never got a data partition simply has no log to keep.
    fn save_cairnd_log(&self) {
        if let Some(log) = crate::disk::data_file_of(&self.disk, CAIRND_LOG)
            .ok()
            .filter(|log| !log.is_empty())
        {
            let _ = fs::write(
                self.log.with_extension("").with_extension("cairnd.log"),
                log,
            );
        }
    }

    /// Kills QEMU (a power cut) and keeps the console log.
    pub fn stop(mut self) -> String {
        self.kill();
        self.console()
    }

    /// Kills QEMU now, in place (a power cut); the console log is kept.
    pub fn power_off(&mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
        let _ = self.swtpm.kill();
        let _ = self.swtpm.wait();
        self.save_log();
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        self.kill();
        // Once per VM, not per power cut: the log on the disk holds every boot's lines.
        self.save_cairnd_log();
    }
}

fn capture(mut stream: Box<dyn Read + Send>, console: Arc<Mutex<String>>) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        if let Ok(mut text) = console.lock() {
            text.push_str(&String::from_utf8_lossy(&buf[..n]));
        }
    }
}

fn tail(text: &str, max: usize) -> &str {
    let mut start = text.len().saturating_sub(max);
    while !text.is_char_boundary(start) {
        start += 1;
    }
    &text[start..]
}
