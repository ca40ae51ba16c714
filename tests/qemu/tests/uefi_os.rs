//! Cairn OS on the UEFI boot path (docs/UEFI.md): the image of profile `qemu-x86_64-efi`,
//! as `cargo xtask image` builds it, booted by OVMF with Secure Boot on and the image's
//! keys enrolled, through the signed systemd-boot and the slot's signed UKI.

use std::time::Duration;

use anyhow::{ensure, Result};
use qemu_tests::disk::TestDisk;
use qemu_tests::efi::{self, Arch};
use qemu_tests::vm::Vm;
use qemu_tests::{record_time, vm_slot};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Firmware, systemd-boot and the kernel take ~10 s more than U-Boot's path here.
const EFI_OS_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn x86_64_image_boots_slot_a_with_secure_boot_on_and_containerd_ready() -> Result<()> {
    let build = efi::os_image(Arch::X86_64)?;
    let _slot = vm_slot();
    let scratch = tempfile::tempdir()?;
    let disk = TestDisk::copy_of(&build.layout.disk(), &build.profile, scratch.path())?;
    let mut vm = Vm::start_efi_os(
        "efi-x86_64-boot",
        &disk.path,
        scratch.path(),
        &build.layout.efi_vars(),
        Arch::X86_64,
    )?;
    // The initramfs takes the slot from the entry systemd-boot started.
    vm.wait_for(
        "cairn-initramfs: slot A from systemd-boot's LoaderEntrySelected",
        EFI_OS_BOOT_TIMEOUT,
    )?;
    vm.wait_for(
        "cairn: userspace up: slot= entry=cairn-1-a.efi",
        EFI_OS_BOOT_TIMEOUT,
    )?;
    vm.wait_for_shell(EFI_OS_BOOT_TIMEOUT)?;
    let to_shell = vm.elapsed();
    ensure!(
        vm.console().contains("secureboot: Secure boot enabled"),
        "the kernel did not report Secure Boot on"
    );

    // The UKI's signed command line: the release's verity arguments, no slot, no root.
    let cmdline = vm.check("cat /proc/cmdline", COMMAND_TIMEOUT)?;
    let verity = build.verity()?;
    ensure!(
        cmdline.contains(&format!("cairn.verity.root_hash={}", verity.root_hash)),
        "cmdline: {cmdline}"
    );
    ensure!(
        !cmdline.contains("cairn.slot") && !cmdline.contains("root="),
        "cmdline: {cmdline}"
    );
    let root = vm.check("grep ' / ' /proc/mounts", COMMAND_TIMEOUT)?;
    ensure!(root.contains("/dev/dm-0 / erofs ro"), "root mount: {root}");
    let table = vm.check("dmsetup table cairn-root", COMMAND_TIMEOUT)?;
    ensure!(table.contains(&verity.root_hash), "verity table: {table}");
    vm.check("test -c /dev/tpmrm0", COMMAND_TIMEOUT)?;
    let arch = vm.check("uname -m", COMMAND_TIMEOUT)?;
    ensure!(arch == "x86_64", "uname -m: {arch}");

    let cri = vm.wait_for_cri()?;
    ensure!(cri.contains("RuntimeReady=true"), "CRI status: {cri}");
    ensure!(cri.contains("NetworkReady=true"), "CRI status: {cri}");

    // cairnd, built for x86_64 from this workspace, reads the boot state off the ESP's
    // entries: slot A committed, B (the copy) its fallback.
    vm.wait_for_cairnd("started")?;
    let text = vm.check("cairn status --json", COMMAND_TIMEOUT)?;
    let json_start = text.find('{').unwrap_or(0);
    let status: serde_json::Value = serde_json::from_str(&text[json_start..])?;
    ensure!(status["booted"] == "A", "cairn status: {status}");
    ensure!(status["committed"] == "A", "cairn status: {status}");
    ensure!(
        status["compatible"] == "cairn-qemu-x86_64-efi",
        "cairn status: {status}"
    );
    ensure!(
        status["slots"]["B"]["bootable"] == true,
        "slot B (a copy of A) is the fallback: {status}"
    );
    let took = vm.elapsed();
    vm.stop();
    let entries = efi::linux_entries(&disk.path)?;
    ensure!(
        entries == ["cairn-0-b.efi", "cairn-1-a.efi"],
        "the ESP's entries after the boot: {entries:?}"
    );
    record_time("UEFI x86_64: boot slot A to shell", to_shell);
    record_time("UEFI x86_64: boot slot A, all checks", took);
    Ok(())
}
