//! Cairn OS on the UEFI boot path (docs/UEFI.md): the image of profile `qemu-x86_64-efi`,
//! as `cargo xtask image` builds it, booted by OVMF with Secure Boot on and the image's
//! keys enrolled, through the signed systemd-boot and the slot's signed UKI.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use cairn_image::os::pe::PeImage;
use cairn_image::os::run::run;
use cairn_image::os::secureboot::{self, KeyPair, SecureBootKeys};
use qemu_tests::disk::TestDisk;
use qemu_tests::efi::{self, Arch};
use qemu_tests::fleet::{self, Replaced};
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
    let status = vm.cairn_status()?;
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
/// systemd-boot's trial of B's new entry, commit, and a quote covering PCRs 4, 7 and 11.
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
        "the server counted the device only after its quote covered PCRs 4, 7 and 11: {history}"
    );
    let payloads = rig.payload_lines()?;
    ensure!(
        payloads
            .iter()
            .any(|l| l.contains("image=uki") && l.contains("method=block-bsdiff")),
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
        &format!("UEFI {arch:?}: campaign v1 -> v2 (delta), trial boot, commit"),
        took,
    );
    Ok(())
}

fn say(line: &str) {
    println!("{line}");
}

#[test]
fn x86_64_a_release_failing_its_health_check_falls_back_to_a_and_stops_the_campaign() -> Result<()>
{
    let dir = tempfile::tempdir()?;
    let _slot = vm_slot();
    let board = Board::Efi(Arch::X86_64);
    let v3 = fleet::image_of("qemu-x86_64-efi-v3.toml")?;
    let mut rig = Rig::boot_v1_on(board, dir.path(), "efi-x86_64-health", &mut say)?;
    let bundle = fleet::bundle(v3, board.v1()?, &dir.path().join("v3.cairn"))?;
    let release = rig.add_release(&bundle)?;
    let end = rig.roll_out_release("rollout-efi-0.3.0", &release, &mut say)?;
    ensure!(end.failed == 1 && end.state == "paused", "{end:?}");
    let history = rig.fleet.device(&rig.device_id)?["history"].to_string();
    ensure!(
        history.contains("payments service is not answering"),
        "the failing check's output reaches the server: {history}"
    );
    // B's entry was tried once, then removed: systemd-boot starts A again.
    rig.vm
        .wait_for(&board.slot_chosen("B"), EFI_OS_BOOT_TIMEOUT)?;
    rig.vm
        .wait_for(&board.slot_chosen("A"), EFI_OS_BOOT_TIMEOUT * 2)?;
    let status = rig.wait_for_status("the rollback", |s| s["phase"]["phase"] == "rolled-back")?;
    ensure!(
        status["booted"] == "A" && status["committed"] == "A",
        "{status}"
    );
    ensure!(
        rig.vm.count(&board.slot_chosen("B")) == 1,
        "slot B was tried exactly once"
    );
    let took = rig.started.elapsed();
    rig.vm.power_off();
    let entries = efi::linux_entries(&rig.disk)?;
    ensure!(
        entries
            .iter()
            .all(|e| !e.starts_with("cairn-") || e.contains("-a")),
        "only A's entry is left: {entries:?}"
    );
    record_time(
        "UEFI X86_64: health check fails, fallback to A, campaign paused",
        took,
    );
    Ok(())
}

/// The v2 UKI with its signature removed, `edit`ed, and signed by `signer`, at `out`.
fn resigned(
    uki: &Path,
    edit: impl Fn(&mut Vec<u8>) -> Result<()>,
    signer: &KeyPair,
    out: &Path,
) -> Result<PathBuf> {
    let unsigned = out.with_extension("unsigned");
    fs::copy(uki, &unsigned)?;
    run(Command::new("sbattach").arg("--remove").arg(&unsigned))?;
    let mut bytes = fs::read(&unsigned)?;
    edit(&mut bytes)?;
    fs::write(&unsigned, &bytes)?;
    secureboot::sign(signer, &unsigned, out)?;
    Ok(out.to_path_buf())
}

#[test]
fn x86_64_an_update_whose_uki_another_key_signed_is_refused_by_the_firmware_and_falls_back(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _slot = vm_slot();
    let board = Board::Efi(Arch::X86_64);
    let v2 = fleet::image_of(efi::v2_profile(Arch::X86_64))?;
    let foreign = &efi::parts(Arch::X86_64)?.foreign;
    let uki = resigned(
        &v2.layout.uki(),
        |_| Ok(()),
        foreign,
        &dir.path().join("foreign.efi"),
    )?;
    let mut rig = Rig::boot_v1_on(board, dir.path(), "efi-x86_64-foreign", &mut say)?;
    let bundle = fleet::bundle_replacing(
        v2,
        board.v1()?,
        &dir.path().join("foreign.cairn"),
        Some(Replaced {
            version: "0.2.1",
            image: "uki",
            path: &uki,
        }),
    )?;
    let release = rig.add_release(&bundle)?;
    let end = rig.roll_out_release("rollout-efi-foreign", &release, &mut say)?;
    ensure!(end.failed == 1, "{end:?}");
    // The firmware refused B's entry; systemd-boot started A once B's try was spent.
    rig.vm.wait_for("Access denied", EFI_OS_BOOT_TIMEOUT)?;
    rig.vm
        .wait_for(&board.slot_chosen("A"), EFI_OS_BOOT_TIMEOUT * 2)?;
    ensure!(
        rig.vm.count(&board.slot_chosen("B")) == 0,
        "nothing of the foreign UKI ran"
    );
    let status = rig.wait_for_status("the rollback", |s| s["phase"]["phase"] == "rolled-back")?;
    ensure!(
        status["booted"] == "A" && status["committed"] == "A",
        "{status}"
    );
    record_time(
        "UEFI X86_64: foreign-signed UKI refused by the firmware, fallback to A",
        rig.started.elapsed(),
    );
    Ok(())
}

/// What a device boots must be what the release pins, not merely signed by the right key:
/// v2's UKI with another command line (`panic=6`), signed with the image's own db key,
/// shipped under a manifest that pins the PCRs 4, 7 and 11 of the UKI cairn-image built.
/// The device boots it and commits; the quote shows other values and the server refuses
/// it.
#[test]
fn x86_64_a_uki_with_another_command_line_boots_but_fails_attestation() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _slot = vm_slot();
    let board = Board::Efi(Arch::X86_64);
    let v1 = board.v1()?;
    let v2 = fleet::image_of(efi::v2_profile(Arch::X86_64))?;
    let keys = SecureBootKeys::existing(&v1.layout.dev_keys().join("secureboot"))?;
    let uki = resigned(
        &v2.layout.uki(),
        |bytes| {
            let image = PeImage::parse(bytes)?;
            let section = image.section(".cmdline").context("no .cmdline")?;
            let start = section.raw_offset as usize;
            let cmdline = &mut bytes[start..start + section.virtual_size as usize];
            let at = cmdline
                .windows(7)
                .position(|w| w == b"panic=5")
                .context("no panic=5 in .cmdline")?;
            cmdline[at + 6] = b'6';
            Ok(())
        },
        &keys.db,
        &dir.path().join("cmdline.efi"),
    )?;
    let mut rig = Rig::boot_v1_on(board, dir.path(), "efi-x86_64-cmdline", &mut say)?;
    let bundle = fleet::bundle_replacing(
        v2,
        v1,
        &dir.path().join("cmdline.cairn"),
        Some(Replaced {
            version: "0.2.2",
            image: "uki",
            path: &uki,
        }),
    )?;
    let release = rig.add_release(&bundle)?;
    let end = rig.roll_out_release("rollout-efi-cmdline", &release, &mut say)?;
    ensure!(end.failed == 1 && end.succeeded == 0, "{end:?}");
    let history = rig.fleet.device(&rig.device_id)?["history"].to_string();
    ensure!(
        history.contains("attestation failed") && history.contains("PCR 11"),
        "the server refused the quote for its PCR 11: {history}"
    );
    rig.vm
        .wait_for(&board.slot_chosen("B"), EFI_OS_BOOT_TIMEOUT)?;
    rig.vm.wait_for_shell(EFI_OS_BOOT_TIMEOUT)?;
    let cmdline = rig.vm.check("cat /proc/cmdline", COMMAND_TIMEOUT)?;
    ensure!(
        cmdline.contains("panic=6"),
        "the altered UKI ran: {cmdline}"
    );
    record_time(
        "UEFI X86_64: signed UKI with another command line fails attestation",
        rig.started.elapsed(),
    );
    Ok(())
}

/// What the ESP holds, as the device sees it; then the device is switched off and its
/// disk kept next to the console logs.
fn keep_for_inspection(rig: &mut Rig) -> Result<String> {
    let esp = rig.vm.check(
        "ls -la /boot/EFI/Linux /boot; dmesg | grep -i fat",
        COMMAND_TIMEOUT,
    )?;
    rig.vm.power_off();
    let kept = qemu_tests::log_dir().join("efi-x86_64-cuts-disk.img");
    fs::copy(&rig.disk, &kept)?;
    Ok(format!(
        "the ESP holds:\n{esp}\n(disk kept at {})",
        kept.display()
    ))
}

/// Where the install is cut: cairnd's log lines (echoed on the console) and how long
/// after each. The rootfs delta takes ~3 s here; the UKI's and the container archive's
/// writes and the arming follow within about a second, so the cuts inside the install
/// all come before the UKI is written, and the last right after the arming.
const CUTS: [(&str, u64); 5] = [
    ("image started image=rootfs", 0),
    ("image started image=rootfs", 1000),
    ("image started image=rootfs", 2000),
    ("image started image=uki", 0),
    ("armed for one trial boot", 0),
];

#[test]
fn x86_64_power_cuts_during_the_install_and_right_after_the_switch_end_bootable_and_commit(
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let _slot = vm_slot();
    let board = Board::Efi(Arch::X86_64);
    let mut rig = Rig::boot_v1_on(board, dir.path(), "efi-x86_64-cuts", &mut say)?;
    rig.vm.send("tail -n 0 -f /var/log/cairnd.log &")?;
    rig.fleet.start_campaign(
        "rollout-efi-cuts",
        &rig.release,
        &board.v1()?.profile.compatible,
    )?;
    let mut cuts = 0;
    for (line, delay_ms) in CUTS {
        if let Err(e) = rig.vm.wait_for(line, EFI_OS_BOOT_TIMEOUT * 2) {
            anyhow::bail!("{e}\n{}", keep_for_inspection(&mut rig)?);
        }
        std::thread::sleep(Duration::from_millis(delay_ms));
        cuts += 1;
        say(&format!("power cut {cuts}: {delay_ms} ms after '{line}'"));
        rig.power_cycle(&format!("efi-x86_64-cut-{cuts}"))?;
        // A slot being written has no entry: systemd-boot starts the committed A, or B
        // once the cut came after the install armed B's one trial.
        rig.vm
            .wait_for("cairn-initramfs: slot ", EFI_OS_BOOT_TIMEOUT)?;
        if rig.vm.console().contains(&board.slot_chosen("B")) {
            say("  ...after the trial was armed: slot B boots on trial");
            break;
        }
        rig.shell_with_cairnd_log()?;
        let esp = rig.vm.check("ls -la /boot/EFI/Linux", COMMAND_TIMEOUT)?;
        say(&format!("  the ESP after the cut:\n{esp}"));
    }
    ensure!(cuts >= 5, "only {cuts} cuts");
    let end = rig.follow("rollout-efi-cuts", &mut say)?;
    if end.succeeded != 1 || end.failed != 0 {
        anyhow::bail!("{end:?}\n{}", keep_for_inspection(&mut rig)?);
    }
    if !rig.vm.console().contains(&board.slot_chosen("B")) {
        rig.vm
            .wait_for(&board.slot_chosen("B"), EFI_OS_BOOT_TIMEOUT)?;
    }
    rig.wait_for_v2_committed()?;
    record_time(
        &format!("UEFI X86_64: {cuts} power cuts during the install and after the switch, then committed"),
        rig.started.elapsed(),
    );
    Ok(())
}
