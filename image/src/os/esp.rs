//! The UEFI boot path's boot files (docs/UEFI.md): the slot's unified kernel image,
//! systemd-boot, both signed with the profile's Secure Boot db key, and a copy of the
//! firmware's variable store with that key hierarchy enrolled and Secure Boot on (what a
//! factory enrolls on a real board, and what QEMU starts with).
//!
//! One UKI serves both slots: its command line carries the release's verity arguments but
//! no slot, and the initramfs takes the slot from the entry systemd-boot started
//! (`LoaderEntrySelected`, `boot/initramfs/init`). So a release has one PCR 11 value,
//! and a bundle one `uki` image.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use cairn_boot::SlotArgs;
use cairn_bundle::Verity;

use super::arch::Arch;
use super::debian;
use super::layout::Layout;
use super::profile::{Efi, Profile};
use super::progress::{mib, Stage};
use super::secureboot::{self, SecureBootKeys};
use super::uki::{self, UkiParts};

/// Debian's firmware variable stores the enrolled copy starts from. AAVMF's plain store is
/// unformatted (all zeros), which `virt-fw-vars` cannot read: its snakeoil store is used,
/// with its keys deleted by [`secureboot::enroll`].
pub fn vars_template(arch: Arch) -> &'static str {
    match arch {
        Arch::Amd64 => "/usr/share/OVMF/OVMF_VARS_4M.fd",
        Arch::Arm64 => "/usr/share/AAVMF/AAVMF_VARS.snakeoil.fd",
    }
}

/// What goes on the ESP, and the variable store beside the disk.
pub struct BootFiles {
    /// systemd-boot, signed: `\EFI\BOOT\BOOT<arch>.EFI`.
    pub systemd_boot: PathBuf,
    /// The slot's UKI, signed.
    pub uki: PathBuf,
    /// The firmware variables with the profile's keys enrolled and Secure Boot on.
    pub vars: PathBuf,
}

/// The removable-media loader path the firmware starts when it has no boot entry.
pub fn removable_loader(arch: Arch) -> String {
    format!("EFI/BOOT/BOOT{}.EFI", arch.efi().to_uppercase())
}

/// Builds the signed UKI of the slot whose rootfs has `verity`, the signed systemd-boot
/// and the enrolled variable store, under the profile's output directory.
pub fn build(profile: &Profile, efi: &Efi, layout: &Layout, verity: &Verity) -> Result<BootFiles> {
    let arch = profile.arch()?;
    let mut debian = profile.debian.clone();
    debian.sources.extend(efi.sources.iter().cloned());
    let tree = debian::tree(&debian, &efi.packages, "efi", &layout.cache)?;
    let efi_dir = tree.dir.join("usr/lib/systemd/boot/efi");
    let stub = efi_dir.join(format!("linux{}.efi.stub", arch.efi()));
    let loader = efi_dir.join(format!("systemd-boot{}.efi", arch.efi()));

    let keys = match &efi.secure_boot_keys {
        Some(dir) => SecureBootKeys::existing(&layout.workspace.join(dir))?,
        None => SecureBootKeys::ensure(&layout.dev_keys().join("secureboot"), "Cairn development")?,
    };

    let stage = Stage::start("efi: unified kernel image");
    let cmdline = uki_cmdline(efi, verity, &profile.version);
    let linux = fs::read(layout.kernel()).context("reading the kernel (run `rootfs` first)")?;
    let initrd = fs::read(layout.initrd()).context("reading the initramfs")?;
    let stub_bytes =
        fs::read(&stub).with_context(|| format!("reading systemd's stub {}", stub.display()))?;
    let image = uki::build(
        &stub_bytes,
        &UkiParts {
            linux: &linux,
            initrd: &initrd,
            cmdline: &cmdline,
            os_release: &os_release(profile),
            uname: &profile.kernel.release,
        },
    )?;
    let pcr11 = hex::encode(uki::pcr11_sha256(&image)?);
    let unsigned = layout.out.join("uki.unsigned.efi");
    fs::write(&unsigned, &image)?;
    let signed = layout.uki();
    secureboot::sign(&keys.db, &unsigned, &signed)?;
    fs::remove_file(&unsigned)?;
    stage.done(format!("{}, PCR 11 {pcr11}", mib(image.len() as u64)));

    let stage = Stage::start("efi: systemd-boot and firmware variables");
    let systemd_boot = layout.systemd_boot();
    secureboot::sign(&keys.db, &loader, &systemd_boot)?;
    let vars = layout.efi_vars();
    secureboot::enroll(Path::new(vars_template(arch)), &keys, &vars)?;
    stage.done(vars.display().to_string());
    Ok(BootFiles {
        systemd_boot,
        uki: signed,
        vars,
    })
}

/// The UKI's whole command line: the profile's part, then the release's verity arguments
/// (the same `cairn.verity.*` words U-Boot appends from `slot.env`).
pub fn uki_cmdline(efi: &Efi, verity: &Verity, version: &str) -> String {
    format!(
        "{} {}",
        efi.cmdline.trim(),
        SlotArgs::new(Some(verity), version).kernel_args()
    )
}

/// The UKI's `.osrel`. No `ID` or `IMAGE_ID`: systemd-boot would then sort entries by them
/// instead of by Cairn's names (`uki::build` refuses them).
fn os_release(profile: &Profile) -> String {
    format!(
        "NAME=\"Cairn\"\nPRETTY_NAME=\"Cairn {version} ({name})\"\nVERSION_ID=\"{version}\"\n",
        version = profile.version,
        name = profile.name
    )
}
