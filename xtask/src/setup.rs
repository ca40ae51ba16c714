//! Idempotent machine set-up: Debian packages (with bookworm-backports for QEMU and the
//! arm64 architecture for cross builds) and rustup components. Why each step is there:
//! docs/MACHINE.md.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// Packages the test suite uses, from bookworm.
const PACKAGES: &[&str] = &[
    "erofs-utils",      // mkfs.erofs: real slot images in bundle tests
    "u-boot-tools",     // mkimage, mkenvimage
    "libubootenv-tool", // fw_printenv / fw_setenv interop
    "dosfstools",       // mkfs.vfat
    "mtools",           // FAT editing without loop mounts
    "fdisk",            // sfdisk
    "cryptsetup-bin",   // veritysetup
    "postgresql",       // cairn-server's PostgreSQL tests start a throwaway cluster
    "chromium",         // cairn-server's dashboard test renders pages headless
    "chromium-driver",  // ... and drives them as an operator would (WebDriver)
    // The OS image: cairn-image rootfs/slot/disk and the QEMU tests.
    "mmdebstrap",            // arm64 root tree without maintainer scripts
    "e2fsprogs",             // mkfs.ext4 -d for the data partition
    "kmod",                  // depmod -b for the image's module subset
    "binutils",              // readelf: libraries the initramfs binaries need
    "cpio",                  // cross-checks the initramfs archive writer
    "bmap-tools",            // cross-checks the disk's .bmap
    "qemu-user-static",      // run the arm64 busybox once to list its applets
    "u-boot-qemu",           // the board firmware the QEMU tests boot through
    "swtpm",                 // the TPM attached to the test VM
    "chrony",                // chronyd: the NTP server the QEMU tests' device syncs with
    "swtpm-tools",           // swtpm_setup: EK certificates for the TPM tests
    "tpm2-tools",            // tpm2_checkquote etc.: cross-check cairn-tpm/cairn-attest formats
    "libtss2-dev",           // libtss2 for cairn-tpm (tss-esapi links against it)
    "gcc-aarch64-linux-gnu", // cross linker for the image's Rust binaries
    "libc6-dev-arm64-cross", // ... and its C library
    "protobuf-compiler",     // protoc: k8s-cri's build script generates the CRI client
    // cairnd's CRI health check is tested against a real containerd on the host.
    "containerd",                  // the CRI server
    "runc",                        // its runtime (crun fails under hybrid cgroups here)
    "containernetworking-plugins", // NetworkReady needs a CNI config and plugins
    "busybox-static",              // the static binary test container images are built from
    // cairn-server's hawkBit DDI is tested against the real client.
    "swupdate", // SWUpdate 2022.12 with suricatta's hawkBit module
    "openssl",  // signs the test .swu files (CMS)
    // The QEMU harness gives a second concurrent guest its own network namespace.
    "iproute2", // ip link set lo up in that namespace
    // The UEFI boot path (docs/UEFI.md).
    "ovmf",             // x86_64 UEFI firmware with Secure Boot (OVMF_CODE_4M.secboot.fd)
    "qemu-efi-aarch64", // arm64 UEFI firmware (AAVMF) for QEMU virt
    "sbsigntool",       // sbsign/sbverify: Secure Boot signatures on systemd-boot and UKIs
];

/// What `cargo xtask bench delta` compares Cairn's deltas with, and measures them by.
const BENCH_PACKAGES: &[&str] = &[
    "bsdiff",  // bsdiff/bspatch: the size baseline
    "xdelta3", // VCDIFF
    "zstd",    // zstd --patch-from
    "time",    // /usr/bin/time: peak RSS of each child
];

/// arm64 libraries the image's Rust binaries link against when cross-compiled.
const ARM64_PACKAGES: &[&str] = &[
    "libtss2-dev:arm64", // cairnd's TPM access through tss-esapi
];

/// Packages that must come from bookworm-backports (QEMU 10 matches the preinstalled
/// qemu-utils and blocks bookworm's 7.2; bookworm has no virt-fw-vars).
const BACKPORTS: &[&str] = &[
    "qemu-system-arm",
    "qemu-system-x86", // the UEFI path's x86_64 guests (q35 + OVMF)
    "qemu-system-common",
    "qemu-system-data",
    "python3-virt-firmware", // virt-fw-vars: enrolls Secure Boot keys into OVMF's variables
];

/// The device's Rust target (the image's binaries are built for it).
const CROSS_TARGET: &str = "aarch64-unknown-linux-gnu";

const BACKPORTS_SOURCES: &str = "/etc/apt/sources.list.d/backports.sources";

pub fn test_prerequisites() -> Result<()> {
    rustup_components()?;
    let mut apt = Apt::default();
    ensure_backports_source(&mut apt)?;
    ensure_arm64_architecture(&mut apt)?;
    apt.install(PACKAGES, None)?;
    apt.install(ARM64_PACKAGES, None)?;
    apt.install(BACKPORTS, Some("bookworm-backports"))?;
    Ok(())
}

/// The delta bench's tools (after [`test_prerequisites`], which the bench also needs
/// for the profile's images).
pub fn bench_prerequisites() -> Result<()> {
    Apt::default().install(BENCH_PACKAGES, None)
}

fn rustup_components() -> Result<()> {
    let have = |tool: &str| {
        Command::new("cargo")
            .args([tool, "--version"])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !(have("fmt") && have("clippy")) {
        run(Command::new("rustup").args(["component", "add", "rustfmt", "clippy"]))?;
    }
    // The OS image cross-compiles its Rust binaries for the device.
    let targets = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .context("running rustup")?;
    if !String::from_utf8_lossy(&targets.stdout)
        .lines()
        .any(|t| t.trim() == CROSS_TARGET)
    {
        run(Command::new("rustup").args(["target", "add", CROSS_TARGET]))?;
    }
    Ok(())
}

fn ensure_backports_source(apt: &mut Apt) -> Result<()> {
    if Path::new(BACKPORTS_SOURCES).exists() {
        return Ok(());
    }
    eprintln!("==> setup: adding bookworm-backports");
    std::fs::write(
        BACKPORTS_SOURCES,
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm-backports\nComponents: main\n\
         Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
    )
    .context("writing the backports source (needs root)")?;
    apt.updated = false;
    Ok(())
}

fn ensure_arm64_architecture(apt: &mut Apt) -> Result<()> {
    let out = Command::new("dpkg")
        .arg("--print-foreign-architectures")
        .output()?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == "arm64")
    {
        return Ok(());
    }
    eprintln!("==> setup: adding the arm64 architecture");
    run(Command::new("dpkg").args(["--add-architecture", "arm64"]))?;
    apt.updated = false;
    Ok(())
}

#[derive(Default)]
struct Apt {
    updated: bool,
}

impl Apt {
    /// Installs whichever of `packages` are missing; does nothing (not even an update)
    /// when all are there.
    fn install(&mut self, packages: &[&str], suite: Option<&str>) -> Result<()> {
        let missing: Vec<&str> = packages.iter().copied().filter(|p| !installed(p)).collect();
        if missing.is_empty() {
            return Ok(());
        }
        eprintln!("==> setup: installing {}", missing.join(" "));
        if !self.updated {
            run(Command::new("apt-get").args(["update", "-qq"]))?;
            self.updated = true;
        }
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-qq", "--no-install-recommends"]);
        if let Some(suite) = suite {
            cmd.args(["-t", suite]);
        }
        cmd.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        run(&mut cmd)
    }
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Status}", package])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
}

fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}
