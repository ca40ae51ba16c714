//! Cairn OS on the UEFI boot path (docs/UEFI.md): the image of profile `qemu-x86_64-efi`,
//! as `cargo xtask image` builds it, booted by OVMF with Secure Boot on and the image's
//! keys enrolled, through the signed systemd-boot and the slot's signed UKI.

use std::time::Duration;

use anyhow::{ensure, Result};
use qemu_tests::disk::TestDisk;
use qemu_tests::efi::{self, Arch};
use qemu_tests::update_loop::{Board, Rig};
use qemu_tests::vm::Vm;
use qemu_tests::{record_time, vm_slot};

const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Firmware, systemd-boot and the kernel take ~10 s more than U-Boot's path here.
const EFI_OS_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

#[test]
fn x86_64_image_boots_slot_a_with_secure_boot_on_and_containerd_ready() -> Result<()> {
    boots_slot_a(Arch::X86_64)
}

#[test]
fn arm64_image_boots_slot_a_with_secure_boot_on_and_containerd_ready() -> Result<()> {
    boots_slot_a(Arch::Arm64)
}

fn boots_slot_a(arch: Arch) -> Result<()> {
    let build = efi::os_image(arch)?;
    let _slot = vm_slot();
    let scratch = tempfile::tempdir()?;
    let disk = TestDisk::copy_of(&build.layout.disk(), &build.profile, scratch.path())?;
    let mut vm = Vm::start_efi_os(
        &format!("efi-{arch:?}-boot"),
        &disk.path,
        scratch.path(),
        &build.layout.efi_vars(),
        arch,
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
    let machine = vm.check("uname -m", COMMAND_TIMEOUT)?;
    let expected = match arch {
        Arch::X86_64 => "x86_64",
        Arch::Arm64 => "aarch64",
    };
    ensure!(machine == expected, "uname -m: {machine}");

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
        status["compatible"] == build.profile.compatible,
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
    record_time(&format!("UEFI {arch:?}: boot slot A to shell"), to_shell);
    record_time(&format!("UEFI {arch:?}: boot slot A, all checks"), took);
    Ok(())
}

#[test]
fn x86_64_a_campaign_delivers_v2_as_a_delta_of_rootfs_and_uki_and_the_device_commits_it(
) -> Result<()> {
    campaign_commits_v2(Arch::X86_64)
}

#[test]
fn arm64_a_campaign_delivers_v2_as_a_delta_of_rootfs_and_uki_and_the_device_commits_it(
) -> Result<()> {
    campaign_commits_v2(Arch::Arm64)
}

/// v1 → v2 through a campaign that requires attestation: deltas of the slot and the UKI,
/// systemd-boot's trial of B's new entry, commit, and a quote covering PCR 11.
fn campaign_commits_v2(arch: Arch) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _slot = vm_slot();
    let board = Board::Efi(arch);
    let mut rig = Rig::boot_v1_on(board, dir.path(), &format!("efi-{arch:?}-update"), &mut say)?;
    let end = rig.roll_out("rollout-efi-0.2.0", &mut say)?;
    ensure!(end.succeeded == 1 && end.failed == 0, "{end:?}");

    // systemd-boot started B's trial entry; cairnd blessed it.
    rig.vm
        .wait_for(&board.slot_chosen("B"), EFI_OS_BOOT_TIMEOUT)?;
    let status = rig.wait_for_v2_committed()?;
    ensure!(
        status["slots"]["A"]["bootable"] == true,
        "A stays the fallback: {status}"
    );
    let record = rig.fleet.device(&rig.device_id)?;
    let history = record["history"].to_string();
    ensure!(
        history.contains("rootfs delta") && history.contains("uki delta"),
        "the server planned deltas for the slot and the UKI: {history}"
    );
    ensure!(
        history.contains(": attested"),
        "the server counted the device only after its quote covered PCR 11: {history}"
    );
    let payloads = rig.payload_lines()?;
    ensure!(
        payloads
            .iter()
            .any(|l| l.contains("image=uki") && l.contains("delta")),
        "the UKI came from a delta against the running entry: {payloads:?}"
    );
    let took = rig.started.elapsed();
    rig.vm.power_off();
    let entries = efi::linux_entries(&rig.disk)?;
    ensure!(
        entries
            .iter()
            .any(|e| e.starts_with("cairn-2-b") && !e.contains('+')),
        "B's entry is blessed, generation 2: {entries:?}"
    );
    ensure!(
        entries.iter().any(|e| e == "cairn-1-a.efi"),
        "A's entry is kept: {entries:?}"
    );
    record_time(
        "UEFI x86_64: campaign v1 -> v2 (delta), trial boot, commit",
        took,
    );
    Ok(())
}

fn say(line: &str) {
    println!("{line}");
}
