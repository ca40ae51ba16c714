//! The parts of the UEFI boot path's tests (docs/UEFI.md), for x86_64 (OVMF) and arm64
//! (AAVMF): Debian's kernel, systemd 254's stub and systemd-boot (bookworm-backports), on
//! x86_64 also `systemd-measure`, a probe initramfs, the project's Secure Boot keys and
//! firmware variables that trust them, and ESP disks holding signed systemd-boot and
//! unified kernel images.
//!
//! The probe initramfs is not Cairn's: it prints what the boot chain left behind (the
//! command line, PCRs 4, 7, 11 and 12; the kernel itself logs whether Secure Boot is on)
//! and powers off: the chain tests (`tests/uefi.rs`) check what the firmware verifies and
//! measures (firmware → systemd-boot → UKI) in seconds, without an OS image. The EFI
//! profiles' OS images, built here too ([`os_image`]), run the update scenarios
//! (`tests/uefi_os.rs`).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{anyhow, Context, Result};
use cairn_image::os::arch::Arch as ImageArch;
use cairn_image::os::cpio::{self, Entry};
use cairn_image::os::debian;
use cairn_image::os::disk::{self, SlotB};
use cairn_image::os::esp;
use cairn_image::os::pipeline::Build;
use cairn_image::os::profile::Debian;
use cairn_image::os::run::{run, stdout};
use cairn_image::os::secureboot::{self, KeyPair, SecureBootKeys};
use cairn_image::os::uki::{self, UkiParts};

/// bookworm with its backports: systemd 254's stub measures `.uname` and `.sbat` and its
/// `systemd-measure` knows them; 252's does neither.
const SOURCES: [&str; 4] = [
    "deb http://deb.debian.org/debian bookworm main",
    "deb http://deb.debian.org/debian bookworm-updates main",
    "deb http://deb.debian.org/debian-security bookworm-security main",
    "deb http://deb.debian.org/debian bookworm-backports main",
];

/// The machines the UEFI path is tested on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// QEMU `q35` with OVMF.
    X86_64,
    /// QEMU `virt` with AAVMF.
    Arm64,
}

impl Arch {
    /// The image builder's name for it.
    pub fn image(self) -> ImageArch {
        match self {
            Arch::X86_64 => ImageArch::Amd64,
            Arch::Arm64 => ImageArch::Arm64,
        }
    }

    fn debian(self) -> &'static str {
        self.image().debian()
    }

    /// The EFI name of the architecture in file names (`BOOTX64.EFI`, `linuxaa64.efi.stub`).
    fn efi(self) -> &'static str {
        self.image().efi()
    }

    pub fn console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
        }
    }

    /// Debian packages of the tree: the kernel, busybox, and systemd-boot with its stub,
    /// named with their suite because bookworm's 252 would win otherwise. On x86_64 also
    /// systemd itself (for `systemd-measure`) and the libraries of its own version.
    fn packages(self) -> Vec<String> {
        let mut packages = vec![
            format!("linux-image-cloud-{}", self.debian()),
            "busybox-static".to_string(),
            "systemd-boot-efi/bookworm-backports".to_string(),
        ];
        if self == Arch::X86_64 {
            for p in ["systemd", "libsystemd-shared", "libsystemd0", "systemd-dev"] {
                packages.push(format!("{p}/bookworm-backports"));
            }
        }
        packages
    }

    /// Modules the probe loads before it reads the TPM: Debian's arm64 cloud kernel has
    /// the TIS driver `virt`'s TPM needs as a module (amd64's has it built in).
    fn probe_modules(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &[],
            Arch::Arm64 => &["tpm_tis_core", "tpm_tis"],
        }
    }
}

/// What the probe's /init prints: one `CAIRN-PROBE key=value` line per fact.
const PROBE_INIT: &str = r#"#!/bin/busybox sh
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t sysfs sys /sys
for module in /modules/*.ko; do [ -e "$module" ] && /bin/busybox insmod "$module"; done
echo "CAIRN-PROBE cmdline=$(/bin/busybox cat /proc/cmdline)"
for pcr in 4 7 11 12; do
  echo "CAIRN-PROBE pcr$pcr=$(/bin/busybox cat /sys/class/tpm/tpm0/pcr-sha256/$pcr)"
done
echo "CAIRN-PROBE done"
/bin/busybox poweroff -f
"#;

pub struct EfiParts {
    pub arch: Arch,
    pub kernel: PathBuf,
    pub kernel_release: String,
    pub stub: PathBuf,
    pub systemd_boot: PathBuf,
    tree: PathBuf,
    pub initrd: Vec<u8>,
    pub keys: SecureBootKeys,
    /// A key pair the firmware does not trust.
    pub foreign: KeyPair,
    /// The firmware's variable store (OVMF's or AAVMF's) with `keys` enrolled and
    /// Secure Boot on.
    pub vars: PathBuf,
}

/// The parts for `arch`, made once per process (the Debian trees are cached across runs).
pub fn parts(arch: Arch) -> Result<&'static EfiParts> {
    type Made = OnceLock<std::result::Result<EfiParts, String>>;
    static X86_64: Made = OnceLock::new();
    static ARM64: Made = OnceLock::new();
    let cell = match arch {
        Arch::X86_64 => &X86_64,
        Arch::Arm64 => &ARM64,
    };
    cell.get_or_init(|| make_parts(arch).map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("preparing the UEFI test parts for {arch:?} failed: {e}"))
}

fn make_parts(arch: Arch) -> Result<EfiParts> {
    let cairn = crate::workspace().join("target/cairn");
    let dir = cairn.join(format!("efi-{}", arch.debian()));
    fs::create_dir_all(&dir)?;
    let debian = Debian {
        suite: "bookworm".into(),
        sources: SOURCES.iter().map(|s| s.to_string()).collect(),
        architecture: arch.debian().into(),
    };
    let label = format!("efi-{}", arch.debian());
    let tree = debian::tree(&debian, &arch.packages(), &label, &cairn.join("cache"))?.dir;
    let kernel = fs::read_dir(tree.join("boot"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("vmlinuz-"))
        })
        .context("the kernel tree has no /boot/vmlinuz-*")?;
    let kernel_release = kernel
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.strip_prefix("vmlinuz-"))
        .context("kernel file name")?
        .to_owned();
    let efi = tree.join("usr/lib/systemd/boot/efi");

    let busybox = fs::read(tree.join("bin/busybox")).context("busybox-static in the tree")?;
    let mut entries = vec![
        Entry::Dir {
            path: "bin".into(),
            mode: 0o755,
        },
        Entry::File {
            path: "bin/busybox".into(),
            mode: 0o755,
            data: busybox,
        },
        Entry::File {
            path: "init".into(),
            mode: 0o755,
            data: PROBE_INIT.as_bytes().to_vec(),
        },
        Entry::Dir {
            path: "dev".into(),
            mode: 0o755,
        },
        Entry::CharDevice {
            path: "dev/console".into(),
            mode: 0o600,
            major: 5,
            minor: 1,
        },
        Entry::Dir {
            path: "modules".into(),
            mode: 0o755,
        },
    ];
    let tpm_modules = tree
        .join("lib/modules")
        .join(&kernel_release)
        .join("kernel/drivers/char/tpm");
    for (i, module) in arch.probe_modules().iter().enumerate() {
        let data = fs::read(tpm_modules.join(format!("{module}.ko")))
            .with_context(|| format!("module {module} in the kernel tree"))?;
        // Numbered: the probe loads them in this (dependency) order.
        entries.push(Entry::File {
            path: format!("modules/{i}-{module}.ko"),
            mode: 0o644,
            data,
        });
    }
    let mut initrd = Vec::new();
    cpio::write(&mut initrd, &entries, 0)?;

    let keys = SecureBootKeys::ensure(&dir.join("keys"), "Cairn test")?;
    let foreign = SecureBootKeys::ensure(&dir.join("foreign-keys"), "Not Cairn")?.db;
    let vars = dir.join("VARS.enrolled.fd");
    let template = esp::vars_template(arch.image());
    secureboot::enroll(Path::new(template), &keys, &vars)?;
    Ok(EfiParts {
        arch,
        kernel,
        kernel_release,
        stub: efi.join(format!("linux{}.efi.stub", arch.efi())),
        systemd_boot: efi.join(format!("systemd-boot{}.efi", arch.efi())),
        tree,
        initrd,
        keys,
        foreign,
        vars,
    })
}

impl EfiParts {
    /// An unsigned UKI of the probe with `cmdline`.
    pub fn uki(&self, cmdline: &str) -> Result<Vec<u8>> {
        let linux = fs::read(&self.kernel)?;
        let parts = UkiParts {
            linux: &linux,
            initrd: &self.initrd,
            cmdline,
            os_release: "NAME=\"Cairn probe\"\nPRETTY_NAME=\"Cairn probe\"\n",
            uname: &self.kernel_release,
        };
        Ok(uki::build(&fs::read(&self.stub)?, &parts)?)
    }

    /// `systemd-measure` from the tree, run with the tree's own libsystemd-shared.
    pub fn systemd_measure(&self) -> Command {
        let mut cmd = Command::new(self.tree.join("lib/systemd/systemd-measure"));
        cmd.env(
            "LD_LIBRARY_PATH",
            self.tree.join("usr/lib/x86_64-linux-gnu/systemd"),
        );
        cmd
    }

    /// `unsigned` signed by `signer`, written to `scratch/name`.
    pub fn signed(
        &self,
        signer: &KeyPair,
        unsigned: &[u8],
        scratch: &Path,
        name: &str,
    ) -> Result<PathBuf> {
        let input = scratch.join(format!("{name}.unsigned"));
        fs::write(&input, unsigned)?;
        let out = scratch.join(name);
        secureboot::sign(signer, &input, &out)?;
        Ok(out)
    }
}

/// A GPT disk with one EFI system partition: systemd-boot (signed with the project's db
/// key) as the removable-media loader (`\EFI\BOOT\BOOTX64.EFI`, `BOOTAA64.EFI`),
/// `loader/loader.conf` with no menu, and `ukis` (file name under `\EFI\Linux`, file) as
/// Boot Loader Spec type #2 entries.
pub fn esp_disk(parts: &EfiParts, ukis: &[(&str, &Path)], scratch: &Path) -> Result<PathBuf> {
    let esp = scratch.join("esp.fat");
    let _ = fs::remove_file(&esp);
    let esp_mib = 96u64;
    run(Command::new("mkfs.vfat")
        .args(["-C", "-F", "32", "-n", "ESP", "-i", "CA1E0001"])
        .arg(&esp)
        .arg((esp_mib * 1024).to_string()))?;
    let img = |path: &str| format!("::{path}");
    run(Command::new("mmd").arg("-i").arg(&esp).args([
        img("EFI"),
        img("EFI/BOOT"),
        img("EFI/Linux"),
        img("loader"),
    ]))?;
    let sd_boot = parts.signed(
        &parts.keys.db,
        &fs::read(&parts.systemd_boot)?,
        scratch,
        "systemd-boot.efi",
    )?;
    let loader_conf = scratch.join("loader.conf");
    fs::write(&loader_conf, "timeout 0\nconsole-mode keep\n")?;
    let removable = esp::removable_loader(parts.arch.image());
    let mut copies = vec![
        (sd_boot, removable),
        (loader_conf, "loader/loader.conf".to_string()),
    ];
    for (name, file) in ukis {
        copies.push((file.to_path_buf(), format!("EFI/Linux/{name}")));
    }
    for (from, to) in copies {
        run(Command::new("mcopy")
            .arg("-i")
            .arg(&esp)
            .arg(&from)
            .arg(img(&to)))?;
    }
    let disk = scratch.join("disk.img");
    let _ = fs::remove_file(&disk);
    fs::File::create(&disk)?.set_len((esp_mib + 2) << 20)?;
    let table = format!(
        "label: gpt\nlabel-id: 4F1C2D3E-0000-4000-8000-00000000CA1E\nstart=2048, size={}, type=C12A7328-F81F-11D2-BA4B-00A0C93EC93B, name=esp\n",
        esp_mib * 2048
    );
    disk::sfdisk(&disk, &table)?;
    run(Command::new("dd")
        .arg(format!("if={}", esp.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "seek=1", "conv=notrunc", "status=none"]))?;
    Ok(disk)
}

/// The files under `\EFI\Linux` of `disk`'s ESP, as mtools lists them (long names).
pub fn linux_entries(disk: &Path) -> Result<Vec<String>> {
    let listing = stdout(
        Command::new("mdir")
            .arg("-b")
            .arg("-i")
            .arg(format!("{}@@1M", disk.display()))
            .arg("::EFI/Linux"),
    )?;
    let mut names: Vec<String> = listing
        .lines()
        .filter_map(|l| l.trim().rsplit('/').next().map(str::to_owned))
        .filter(|n| !n.is_empty())
        .collect();
    names.sort();
    Ok(names)
}

/// The `CAIRN-PROBE key=value` facts the probe printed.
pub fn probe_fact(console: &str, key: &str) -> Option<String> {
    let prefix = format!("CAIRN-PROBE {key}=");
    console.lines().find_map(|l| {
        l.trim_end_matches('\r')
            .split_once(&prefix)
            .map(|(_, v)| v.trim().to_owned())
    })
}

/// The profile of `arch`'s UEFI board one release later (0.2.0).
pub fn v2_profile(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "qemu-x86_64-efi-v2.toml",
        Arch::Arm64 => "qemu-arm64-efi-v2.toml",
    }
}

/// The Cairn OS image of the UEFI profile for `arch` (`image/profiles/qemu-x86_64-efi.toml`),
/// slot B a bootable copy of A, built once per process (and reused across runs while its
/// inputs are unchanged, like [`crate::image`]).
pub fn os_image(arch: Arch) -> Result<&'static Build> {
    type Made = OnceLock<std::result::Result<Build, String>>;
    static X86_64: Made = OnceLock::new();
    static ARM64: Made = OnceLock::new();
    let (cell, profile) = match arch {
        Arch::X86_64 => (&X86_64, "qemu-x86_64-efi.toml"),
        Arch::Arm64 => (&ARM64, "qemu-arm64-efi.toml"),
    };
    cell.get_or_init(|| {
        let path = crate::workspace().join("image/profiles").join(profile);
        let build = Build::new(&path).map_err(|e| format!("{e:#}"))?;
        crate::ensure_image(&build, SlotB::Copy).map_err(|e| format!("{e:#}"))?;
        Ok(build)
    })
    .as_ref()
    .map_err(|e| anyhow!("building the {profile} image failed: {e}"))
}
