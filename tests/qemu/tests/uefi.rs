//! The UEFI boot path's chain on x86_64 (docs/UEFI.md): OVMF with Secure Boot on and the
//! project's keys enrolled, systemd-boot, and unified kernel images built by cairn-image.
//! What the firmware verifies (only binaries signed by the enrolled db key run), what
//! systemd-stub measures (PCR 11, precomputed by cairn-image and checked against the
//! real `systemd-measure`), and how systemd-boot counts a trial entry down to a fallback.

use std::fs;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_boot::efi_entries::EntrySet;
use cairn_image::os::pe::PeImage;
use cairn_image::os::uki;
use qemu_tests::efi::{self, probe_fact, Arch};
use qemu_tests::vm::Vm;

/// OVMF → systemd-boot → kernel → probe takes ~11 s here under TCG.
const EFI_BOOT_TIMEOUT: Duration = Duration::from_secs(60);

fn cmdline(slot: &str) -> String {
    cmdline_for(Arch::X86_64, slot)
}

fn cmdline_for(arch: Arch, slot: &str) -> String {
    format!("console={} panic=-1 cairn.slot={slot}", arch.console())
}

#[test]
fn pcr11_precomputed_by_cairn_image_matches_systemd_measure() -> Result<()> {
    let parts = efi::parts(Arch::X86_64)?;
    let scratch = tempfile::tempdir()?;
    let image = parts.uki(&cmdline("a"))?;
    let ours = hex::encode(uki::pcr11_sha256(&image)?);

    // systemd-measure takes the sections as files: cut them out of the UKI we built.
    let pe = PeImage::parse(&image)?;
    let mut cmd = parts.systemd_measure();
    cmd.args(["calculate", "--bank=sha256", "--phase="]);
    for (section, option) in [
        (".linux", "--linux"),
        (".osrel", "--osrel"),
        (".cmdline", "--cmdline"),
        (".initrd", "--initrd"),
        (".uname", "--uname"),
        (".sbat", "--sbat"),
    ] {
        let file = scratch.path().join(section.trim_start_matches('.'));
        let found = pe
            .section(section)
            .with_context(|| format!("the UKI has no {section}"))?;
        fs::write(&file, pe.loaded_bytes(&image, found))?;
        cmd.arg(format!("{option}={}", file.display()));
    }
    let out = cmd.output().context("running systemd-measure")?;
    let printed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "systemd-measure failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let theirs = printed
        .lines()
        .find_map(|l| l.trim().strip_prefix("11:sha256="))
        .with_context(|| format!("no PCR 11 value in systemd-measure's output: {printed}"))?;
    assert_eq!(ours, theirs.to_lowercase());
    Ok(())
}

/// A trial entry (`+1-0`) is booted once: systemd-boot renames it to `+0-1` before
/// starting it, so when nothing blesses it the next boot takes the committed entry. Both
/// boots run with Secure Boot on, and each leaves the PCR 11 value cairn-image computed
/// for its UKI.
#[test]
fn signed_trial_boots_once_then_the_committed_entry_with_precomputed_pcr11() -> Result<()> {
    let parts = efi::parts(Arch::X86_64)?;
    let _slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let (a, b) = (parts.uki(&cmdline("a"))?, parts.uki(&cmdline("b"))?);
    let a_signed = parts.signed(&parts.keys.db, &a, scratch.path(), "a.efi")?;
    let b_signed = parts.signed(&parts.keys.db, &b, scratch.path(), "b.efi")?;
    let disk = efi::esp_disk(
        parts,
        &[
            ("cairn-1-a.efi", &a_signed),
            ("cairn-2-b+1-0.efi", &b_signed),
        ],
        scratch.path(),
    )?;

    for boot in 1..=2 {
        // What cairn-boot's model of systemd-boot says happens next...
        let before = EntrySet::from_file_names(efi::linux_entries(&disk)?);
        let expected = before.next_boot().context("no entry")?;
        let slot = expected.slot.lower();
        let image = if slot == "a" { &a } else { &b };
        let mut vm = Vm::start_efi_x86_64(
            &format!("efi-trial-boot{boot}"),
            &disk,
            scratch.path(),
            &parts.vars,
        )?;
        vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
        vm.wait_exit(EFI_BOOT_TIMEOUT)?;
        let console = vm.stop();
        // ...is what the real one did.
        let line = probe_fact(&console, "cmdline").context("the probe printed no command line")?;
        assert!(
            line.contains(&format!("cairn.slot={slot}")),
            "boot {boot} ran {line:?}, not {expected}"
        );
        let after = EntrySet::from_file_names(efi::linux_entries(&disk)?);
        let renamed = before.apply(&[cairn_boot::efi_entries::EntryOp::Rename {
            from: expected,
            to: expected.after_one_try(),
        }]);
        assert_eq!(after, renamed, "boot {boot}: entries on the ESP");
        assert!(
            console.contains("secureboot: Secure boot enabled"),
            "boot {boot}: Secure Boot is off"
        );
        let pcr11 = probe_fact(&console, "pcr11").context("no PCR 11")?;
        assert_eq!(
            pcr11.to_lowercase(),
            hex::encode(uki::pcr11_sha256(image)?),
            "boot {boot}: PCR 11"
        );
        let pcr12 = probe_fact(&console, "pcr12").context("no PCR 12")?;
        assert_eq!(
            pcr12.to_lowercase(),
            hex::encode(uki::pcr12_after_systemd_boot(&cmdline(slot))),
            "boot {boot}: PCR 12 holds only systemd-boot's measurement of the command line"
        );
        // The trial first, then (unblessed) the committed slot.
        assert_eq!(slot, if boot == 1 { "b" } else { "a" });
    }
    assert_eq!(
        efi::linux_entries(&disk)?,
        ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]
    );
    qemu_tests::record_time("uefi: signed trial, then fallback", started.elapsed());
    Ok(())
}

/// The firmware refuses a UKI signed by a key it does not trust, and an unsigned one: the
/// kernel never starts.
#[test]
fn ukis_not_signed_by_the_enrolled_key_never_run() -> Result<()> {
    let parts = efi::parts(Arch::X86_64)?;
    let _slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let image = parts.uki(&cmdline("a"))?;
    let foreign = parts.signed(&parts.foreign, &image, scratch.path(), "foreign.efi")?;
    let unsigned = scratch.path().join("unsigned.efi");
    fs::write(&unsigned, &image)?;
    for (case, file) in [("foreign", &foreign), ("unsigned", &unsigned)] {
        let disk = efi::esp_disk(parts, &[("cairn-1-a.efi", file)], scratch.path())?;
        let mut vm = Vm::start_efi_x86_64(
            &format!("efi-refused-{case}"),
            &disk,
            scratch.path(),
            &parts.vars,
        )?;
        vm.wait_for(
            r"Error loading \EFI\Linux\cairn-1-a.efi: Access denied",
            EFI_BOOT_TIMEOUT,
        )
        .with_context(|| format!("{case}: the firmware did not refuse the UKI"))?;
        // systemd-boot hands the error back to the firmware, which has nothing else to
        // run (its own shell is not signed by the enrolled key either).
        vm.wait_for("No bootable option or device was found", EFI_BOOT_TIMEOUT)?;
        let console = vm.stop();
        assert!(
            !console.contains("CAIRN-PROBE"),
            "{case}: the kernel ran:\n{console}"
        );
        assert!(!console.contains("Linux version"), "{case}: the kernel ran");
    }
    // And the same UKI signed by the enrolled key runs: the refusal was the signature's.
    let signed = parts.signed(&parts.keys.db, &image, scratch.path(), "signed.efi")?;
    let disk = efi::esp_disk(parts, &[("cairn-1-a.efi", &signed)], scratch.path())?;
    let mut vm = Vm::start_efi_x86_64("efi-refused-control", &disk, scratch.path(), &parts.vars)?;
    vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
    drop(vm);
    qemu_tests::record_time("uefi: foreign and unsigned UKIs refused", started.elapsed());
    Ok(())
}

/// A trial UKI the firmware refuses (signed by a foreign key) costs its one try: systemd-
/// boot counted it down before asking the firmware to load it, handed the error back, and
/// when OVMF has run out of boot options it starts the disk's removable-media loader
/// (systemd-boot) again, which now takes the committed entry. docs/UEFI.md says which
/// part of this is OVMF's own behaviour.
#[test]
fn trial_uki_refused_by_the_firmware_falls_back_to_the_committed_entry() -> Result<()> {
    let parts = efi::parts(Arch::X86_64)?;
    let _slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let a = parts.signed(
        &parts.keys.db,
        &parts.uki(&cmdline("a"))?,
        scratch.path(),
        "a.efi",
    )?;
    let b = parts.signed(
        &parts.foreign,
        &parts.uki(&cmdline("b"))?,
        scratch.path(),
        "b.efi",
    )?;
    let disk = efi::esp_disk(
        parts,
        &[("cairn-1-a.efi", &a), ("cairn-2-b+1-0.efi", &b)],
        scratch.path(),
    )?;
    let mut vm = Vm::start_efi_x86_64("efi-trial-refused", &disk, scratch.path(), &parts.vars)?;
    vm.wait_for(
        r"Error loading \EFI\Linux\cairn-2-b+0-1.efi: Access denied",
        EFI_BOOT_TIMEOUT,
    )?;
    vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
    let console = vm.stop();
    let line = probe_fact(&console, "cmdline").context("the probe printed no command line")?;
    assert!(line.contains("cairn.slot=a"), "the fallback ran {line:?}");
    assert_eq!(
        efi::linux_entries(&disk)?,
        ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]
    );
    qemu_tests::record_time("uefi: refused trial falls back", started.elapsed());
    Ok(())
}

/// arm64: AAVMF with the project's keys enrolled, systemd-boot and a UKI of Debian's arm64
/// cloud kernel. Secure Boot is on, PCR 11 is the precomputed value, and a trial entry is
/// started once.
#[test]
fn arm64_signed_trial_boots_with_secure_boot_and_precomputed_pcr11() -> Result<()> {
    let parts = efi::parts(Arch::Arm64)?;
    let _slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let (a, b) = (
        parts.uki(&cmdline_for(Arch::Arm64, "a"))?,
        parts.uki(&cmdline_for(Arch::Arm64, "b"))?,
    );
    let a_signed = parts.signed(&parts.keys.db, &a, scratch.path(), "a.efi")?;
    let b_signed = parts.signed(&parts.keys.db, &b, scratch.path(), "b.efi")?;
    let disk = efi::esp_disk(
        parts,
        &[
            ("cairn-1-a.efi", &a_signed),
            ("cairn-2-b+1-0.efi", &b_signed),
        ],
        scratch.path(),
    )?;
    let mut vm = Vm::start_efi_arm64("efi-arm64-trial", &disk, scratch.path(), &parts.vars)?;
    vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
    let console = vm.stop();
    let line = probe_fact(&console, "cmdline").context("the probe printed no command line")?;
    assert!(line.contains("cairn.slot=b"), "ran {line:?}, not the trial");
    assert!(
        console.contains("UEFI Secure Boot is enabled"),
        "Secure Boot is off"
    );
    let pcr11 = probe_fact(&console, "pcr11").context("no PCR 11")?;
    assert_eq!(pcr11.to_lowercase(), hex::encode(uki::pcr11_sha256(&b)?));
    let pcr12 = probe_fact(&console, "pcr12").context("no PCR 12")?;
    assert_eq!(
        pcr12.to_lowercase(),
        hex::encode(uki::pcr12_after_systemd_boot(&cmdline_for(
            Arch::Arm64,
            "b"
        )))
    );
    assert_eq!(
        efi::linux_entries(&disk)?,
        ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]
    );
    qemu_tests::record_time("uefi: arm64 signed trial", started.elapsed());
    Ok(())
}
