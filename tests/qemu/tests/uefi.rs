//! The UEFI boot path's chain (docs/UEFI.md) on x86_64 (OVMF) and arm64 (AAVMF): firmware
//! with Secure Boot on and the project's keys enrolled, systemd-boot, and unified kernel
//! images built by cairn-image. What the firmware verifies (only binaries signed by the
//! enrolled db key run), what is measured (PCR 4 by the firmware, PCR 11 by systemd-stub,
//! both precomputed by cairn-image, PCR 11 also checked against the real
//! `systemd-measure`; PCR 12 by systemd-boot),
//! and how systemd-boot counts a trial entry down to a fallback (held to cairn-boot's
//! model of it).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use cairn_boot::efi_entries::{EntryOp, EntrySet};
use cairn_image::os::pcr7::SecureBootVariables;
use cairn_image::os::pe::{self, PeImage};
use cairn_image::os::pinned_pcrs::{self, BootChain};
use cairn_image::os::secureboot::KeyPair;
use cairn_image::os::uki;
use qemu_tests::efi::{self, probe_fact, Arch, EfiParts};
use qemu_tests::vm::Vm;

/// Firmware → systemd-boot → kernel → probe takes ~11 s (x86_64) to ~14 s (arm64) here on
/// an idle machine. Once, with a cold CI run and two of these guests sharing the two
/// cores, a probe printed nothing for 60 s after the kernel started /init; hence the
/// wide margin.
const EFI_BOOT_TIMEOUT: Duration = Duration::from_secs(120);

fn cmdline(arch: Arch, slot: &str) -> String {
    format!("console={} panic=-1 cairn.slot={slot}", arch.console())
}

/// Slot A committed (`cairn-1-a.efi`, signed by the enrolled key) and slot B on trial
/// (`cairn-2-b+1-0.efi`, signed by `b_signer`): the disk and the two unsigned UKIs.
struct TrialDisk {
    disk: PathBuf,
    a: Vec<u8>,
    b: Vec<u8>,
}

fn trial_disk(parts: &EfiParts, b_signer: &KeyPair, scratch: &Path) -> Result<TrialDisk> {
    let a = parts.uki(&cmdline(parts.arch, "a"))?;
    let b = parts.uki(&cmdline(parts.arch, "b"))?;
    let a_signed = parts.signed(&parts.keys.db, &a, scratch, "a.efi")?;
    let b_signed = parts.signed(b_signer, &b, scratch, "b.efi")?;
    let disk = efi::esp_disk(
        parts,
        &[
            ("cairn-1-a.efi", &a_signed),
            ("cairn-2-b+1-0.efi", &b_signed),
        ],
        scratch,
    )?;
    Ok(TrialDisk { disk, a, b })
}

/// What the probe must report after booting `image` as `slot` from a [`trial_disk`] in
/// `scratch`: that slot's command line, Secure Boot on, PCR 4 holding the firmware's
/// measurements of the signed systemd-boot and the slot's signed UKI, PCR 7 the Secure
/// Boot policy of the enrolled variables with the db key as the authority, PCR 11 as
/// cairn-image computed it, and PCR 12 holding only systemd-boot's measurement of the
/// command line.
fn check_probe(
    console: &str,
    parts: &EfiParts,
    slot: &str,
    image: &[u8],
    scratch: &Path,
) -> Result<()> {
    let arch = parts.arch;
    let line = probe_fact(console, "cmdline").context("the probe printed no command line")?;
    assert!(
        line.contains(&format!("cairn.slot={slot}")),
        "ran {line:?}, not slot {slot}"
    );
    assert!(
        console.contains("secureboot: Secure boot enabled"),
        "Secure Boot is off"
    );
    // What a release would pin for this boot chain, as bundle create computes it.
    let chain = BootChain {
        loader: fs::read(scratch.join("systemd-boot.efi"))?,
        vars: Some(SecureBootVariables::read(&parts.vars)?),
    };
    let pinned = pinned_pcrs::for_image(
        &fs::read(scratch.join(format!("{slot}.efi")))?,
        Some(&chain),
    )?
    .context("not a unified kernel image")?;
    let pcr4 = probe_fact(console, "pcr4").context("no PCR 4")?;
    assert_eq!(
        pcr4.to_lowercase(),
        hex::encode(pinned.pcr4.context("no PCR 4 pinned")?),
        "PCR 4"
    );
    let pcr7 = probe_fact(console, "pcr7").context("no PCR 7")?;
    assert_eq!(
        pcr7.to_lowercase(),
        hex::encode(pinned.pcr7.context("no PCR 7 pinned")?),
        "PCR 7"
    );
    let pcr11 = probe_fact(console, "pcr11").context("no PCR 11")?;
    assert_eq!(
        pcr11.to_lowercase(),
        hex::encode(uki::pcr11_sha256(image)?),
        "PCR 11"
    );
    let pcr12 = probe_fact(console, "pcr12").context("no PCR 12")?;
    let expected = uki::pcr12_after_systemd_boot(&cmdline(arch, slot));
    assert_eq!(pcr12.to_lowercase(), hex::encode(expected), "PCR 12");
    Ok(())
}

#[test]
fn pcr11_precomputed_by_cairn_image_matches_systemd_measure() -> Result<()> {
    let parts = efi::parts(Arch::X86_64)?;
    let scratch = tempfile::tempdir()?;
    let image = parts.uki(&cmdline(parts.arch, "a"))?;
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
/// starting it, so when nothing blesses it the next boot takes the committed entry. Each
/// boot is predicted by cairn-boot's model of systemd-boot, runs with Secure Boot on, and
/// leaves the PCR values cairn-image computed for its UKI.
#[test]
fn signed_trial_boots_once_then_the_committed_entry_with_precomputed_pcr11() -> Result<()> {
    let parts = efi::parts(Arch::X86_64)?;
    let _slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let TrialDisk { disk, a, b } = trial_disk(parts, &parts.keys.db, scratch.path())?;
    for (boot, slot) in [(1, "b"), (2, "a")] {
        // What cairn-boot's model of systemd-boot says happens next...
        let before = EntrySet::from_file_names(efi::linux_entries(&disk)?);
        let expected = before.next_boot().context("no entry")?;
        assert_eq!(
            expected.slot.lower(),
            slot,
            "the model disagrees with this test"
        );
        let name = format!("efi-trial-boot{boot}");
        let mut vm = Vm::start_efi(&name, &disk, scratch.path(), &parts.vars, parts.arch)?;
        vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
        vm.wait_exit(EFI_BOOT_TIMEOUT)?;
        let console = vm.stop();
        // ...is what the real one did.
        check_probe(
            &console,
            parts,
            slot,
            if slot == "a" { &a } else { &b },
            scratch.path(),
        )?;
        let renamed = before.apply(&[EntryOp::Rename {
            from: expected,
            to: expected.after_one_try(),
        }]);
        let after = EntrySet::from_file_names(efi::linux_entries(&disk)?);
        assert_eq!(after, renamed, "boot {boot}: entries on the ESP");
    }
    assert_eq!(
        efi::linux_entries(&disk)?,
        ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]
    );
    qemu_tests::record_time("uefi: signed trial, then fallback", started.elapsed());
    Ok(())
}

/// The firmware refuses a UKI signed by a key it does not trust, and an unsigned one: the
/// kernel never starts. The same UKI signed by the enrolled key runs.
#[test]
fn ukis_not_signed_by_the_enrolled_key_never_run() -> Result<()> {
    let parts = efi::parts(Arch::X86_64)?;
    let _slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let image = parts.uki(&cmdline(parts.arch, "a"))?;
    let foreign = parts.signed(&parts.foreign, &image, scratch.path(), "foreign.efi")?;
    let unsigned = scratch.path().join("unsigned.efi");
    fs::write(&unsigned, &image)?;
    let signed = parts.signed(&parts.keys.db, &image, scratch.path(), "signed.efi")?;
    for (case, file) in [
        ("foreign", &foreign),
        ("unsigned", &unsigned),
        ("signed", &signed),
    ] {
        let disk = efi::esp_disk(parts, &[("cairn-1-a.efi", file)], scratch.path())?;
        let name = format!("efi-refused-{case}");
        let mut vm = Vm::start_efi(&name, &disk, scratch.path(), &parts.vars, parts.arch)?;
        if case == "signed" {
            vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
            continue;
        }
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
    let TrialDisk { disk, a, .. } = trial_disk(parts, &parts.foreign, scratch.path())?;
    let mut vm = Vm::start_efi(
        "efi-trial-refused",
        &disk,
        scratch.path(),
        &parts.vars,
        parts.arch,
    )?;
    vm.wait_for(
        r"Error loading \EFI\Linux\cairn-2-b+0-1.efi: Access denied",
        EFI_BOOT_TIMEOUT,
    )?;
    vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
    let console = vm.stop();
    let line = probe_fact(&console, "cmdline").context("the probe printed no command line")?;
    assert!(line.contains("cairn.slot=a"), "the fallback ran {line:?}");
    // Only the UKI that ran was measured into PCR 11 (PCR 12 also holds systemd-boot's
    // measurement of the refused entry's command line, from its first run).
    let pcr11 = probe_fact(&console, "pcr11").context("no PCR 11")?;
    assert_eq!(pcr11.to_lowercase(), hex::encode(uki::pcr11_sha256(&a)?));
    // PCR 4 holds more than a straight boot of A would: the firmware measured what it
    // tried before A, so such a boot never matches the value a release pins.
    let pcr4 = probe_fact(&console, "pcr4").context("no PCR 4")?;
    let straight = uki::pcr4_after_firmware(&[
        pe::authenticode::sha256(&fs::read(scratch.path().join("systemd-boot.efi"))?)?,
        pe::authenticode::sha256(&fs::read(scratch.path().join("a.efi"))?)?,
    ]);
    assert_ne!(pcr4.to_lowercase(), hex::encode(straight), "PCR 4");
    assert_eq!(
        efi::linux_entries(&disk)?,
        ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]
    );
    qemu_tests::record_time("uefi: refused trial falls back", started.elapsed());
    Ok(())
}

/// arm64: AAVMF with the project's keys enrolled, systemd-boot and UKIs of Debian's arm64
/// cloud kernel. The trial entry is started once, with Secure Boot on and the PCR values
/// cairn-image computed.
#[test]
fn arm64_signed_trial_boots_with_secure_boot_and_precomputed_pcr11() -> Result<()> {
    let parts = efi::parts(Arch::Arm64)?;
    let _slot = qemu_tests::vm_slot();
    let started = Instant::now();
    let scratch = tempfile::tempdir()?;
    let TrialDisk { disk, b, .. } = trial_disk(parts, &parts.keys.db, scratch.path())?;
    let mut vm = Vm::start_efi(
        "efi-arm64-trial",
        &disk,
        scratch.path(),
        &parts.vars,
        parts.arch,
    )?;
    vm.wait_for("CAIRN-PROBE done", EFI_BOOT_TIMEOUT)?;
    let console = vm.stop();
    check_probe(&console, parts, "b", &b, scratch.path())?;
    assert_eq!(
        efi::linux_entries(&disk)?,
        ["cairn-1-a.efi", "cairn-2-b+0-1.efi"]
    );
    qemu_tests::record_time("uefi: arm64 signed trial", started.elapsed());
    Ok(())
}
