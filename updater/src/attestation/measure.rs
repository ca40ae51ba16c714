//! Measurement happens first thing when cairnd starts, before health checks or anything
//! else from the slot runs with write access: the slot name and the verity root hash
//! come from the kernel command line the initramfs verified the root with, the kernel
//! and initrd digests from the files U-Boot loaded (on the UEFI path: systemd-boot's
//! measurement of the command line comes first, and the UKI's digest from the slot's
//! entry stands for kernel and initrd; docs/UEFI.md). The log is written *before* the
//! PCR is extended, so a crash in between is repaired on the next start: the events the
//! PCR already holds are found as a prefix of the log and only the rest are extended.

use std::fs;
use std::path::Path;

use cairn_attest::{Event, EventKind, EventLog, CAIRN_PCR};
use cairn_boot::{slot_env, EfiEntryStore, KernelCmdline};
use cairn_tpm::Tpm;

use super::TpmConfig;
use super::{io, json, AttestationError};
use crate::config::{BootloaderConfig, SystemConfig, Target};

/// This boot's measurement log, as [`measure_boot`] wrote it.
pub fn read_log(path: &Path) -> Result<EventLog, AttestationError> {
    let bytes = fs::read(path).map_err(io(path))?;
    serde_json::from_slice(&bytes).map_err(json(path))
}

/// What identifies the booted slot: its name, the verity root hash the initramfs set up
/// dm-verity with, and the digests of its kernel and initrd files; on the UEFI path,
/// systemd-boot's measurement of the command line first, and the UKI's digest instead.
pub fn boot_events(config: &SystemConfig) -> Result<Vec<(EventKind, String)>, AttestationError> {
    let cmdline_path = &config.system.cmdline;
    let cmdline_text = fs::read_to_string(cmdline_path).map_err(io(cmdline_path))?;
    let cmdline = KernelCmdline::new(&cmdline_text);
    let missing =
        |key: &str| AttestationError::Boot(format!("no {key}= on the kernel command line"));
    let slot = crate::slot::booted_slot(config, &cmdline)
        .map_err(|e| AttestationError::Boot(e.to_string()))?;
    let root_hash = cmdline
        .verity_root_hash()
        .ok_or_else(|| missing(slot_env::arg::ROOT_HASH))?
        .to_ascii_lowercase();
    let digest_of = |path: &Path| -> Result<String, AttestationError> {
        let mut file = fs::File::open(path).map_err(io(path))?;
        let (digest, _) = cairn_bundle::sha256_reader(&mut file).map_err(io(path))?;
        Ok(digest)
    };
    if let BootloaderConfig::Efi { esp } = &config.bootloader {
        // systemd-boot measured the UKI's command line into PCR 12 before Linux started
        // (the kernel's copy is that text, with a newline); systemd-stub measured the
        // UKI's sections into PCR 11, which the quote covers too.
        let uki = EfiEntryStore::new(esp)
            .entry_path(slot)
            .map_err(|e| AttestationError::Boot(e.to_string()))?
            .ok_or_else(|| {
                AttestationError::Boot(format!("slot {slot} has no entry on the ESP"))
            })?;
        return Ok(vec![
            (
                EventKind::LoaderCmdline,
                cmdline_text.trim_end_matches('\n').to_string(),
            ),
            (EventKind::Slot, slot.to_string().to_ascii_lowercase()),
            (EventKind::RootfsVerityRoot, root_hash),
            (EventKind::Uki, digest_of(&uki)?),
        ]);
    }
    let file_digest = |image: &str| -> Result<String, AttestationError> {
        let Some(Target::File(path)) = config.slot(slot).images.get(image) else {
            return Err(AttestationError::Boot(format!(
                "slot {slot} has no {image} file to measure"
            )));
        };
        digest_of(path)
    };
    Ok(vec![
        (EventKind::Slot, slot.to_string().to_ascii_lowercase()),
        (EventKind::RootfsVerityRoot, root_hash),
        (EventKind::Kernel, file_digest("kernel")?),
        (EventKind::Initrd, file_digest("initrd")?),
    ])
}

/// Makes PCR 12 and the log at `tpm.event_log` hold `events`, once per boot. Returns the
/// log. Safe to call on every start: a complete log that replays to the PCR is kept.
pub fn measure_boot(
    tpm: &mut Tpm,
    config: &TpmConfig,
    events: &[(EventKind, String)],
) -> Result<EventLog, AttestationError> {
    let path = &config.event_log;
    let log = match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(json(path))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut log = EventLog::new();
            for (kind, value) in events {
                log.push(Event::new(*kind, value)?);
            }
            if let Some(dir) = path.parent() {
                fs::create_dir_all(dir).map_err(io(dir))?;
            }
            let bytes = serde_json::to_vec_pretty(&log).map_err(json(path))?;
            cairn_atomic::write(path, &bytes).map_err(io(path))?;
            log
        }
        Err(e) => return Err(io(path)(e)),
    };
    let pcr = tpm.read_pcr(CAIRN_PCR)?;
    for event in still_to_extend(&log, &pcr)? {
        tpm.measure(&mut EventLog::new(), event.kind(), event.value())?;
    }
    Ok(log)
}

/// The events of `log` that a PCR holding `pcr` still lacks: those after the prefix it
/// already holds. Another component's measurement is never made by cairnd: if the PCR
/// lacks systemd-boot's, what started this boot was not systemd-boot (or it measured
/// something else), and the PCR is left as it is.
fn still_to_extend<'a>(log: &'a EventLog, pcr: &[u8; 32]) -> Result<&'a [Event], AttestationError> {
    let measured = measured_prefix(log, pcr)?.ok_or(AttestationError::PcrUnexplained)?;
    let rest = &log.events()[measured..];
    if rest.iter().any(|e| e.kind() == EventKind::LoaderCmdline) {
        return Err(AttestationError::PcrUnexplained);
    }
    Ok(rest)
}

/// How many of the log's first events the PCR value already holds.
fn measured_prefix(log: &EventLog, pcr: &[u8; 32]) -> Result<Option<usize>, AttestationError> {
    let mut value = [0u8; 32];
    let mut found = (value == *pcr).then_some(0);
    for (i, event) in log.events().iter().enumerate() {
        value = cairn_attest::event::extend(&value, event.digest());
        if value == *pcr {
            found = Some(i + 1);
        }
    }
    log.replay()?;
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(values: &[&str]) -> EventLog {
        let mut log = EventLog::new();
        log.push(Event::new(EventKind::Slot, values[0]).unwrap());
        log.push(Event::new(EventKind::Kernel, values[1]).unwrap());
        log
    }

    #[test]
    fn the_measured_prefix_is_found_after_a_crash_between_extends() {
        let k = "ab".repeat(32);
        let l = log(&["a", &k]);
        assert_eq!(measured_prefix(&l, &[0; 32]).unwrap(), Some(0));
        let one = cairn_attest::event::extend(&[0; 32], l.events()[0].digest());
        assert_eq!(measured_prefix(&l, &one).unwrap(), Some(1));
        assert_eq!(measured_prefix(&l, &l.replay().unwrap()).unwrap(), Some(2));
        assert_eq!(measured_prefix(&l, &[7; 32]).unwrap(), None);
    }

    /// On the UEFI path the log starts with systemd-boot's measurement: cairnd extends
    /// only what follows it, and never that event itself.
    #[test]
    fn the_loaders_measurement_is_never_made_by_cairnd() {
        let mut uefi = EventLog::new();
        uefi.push(Event::new(EventKind::LoaderCmdline, "console=ttyS0 cairn.slot=a").unwrap());
        uefi.push(Event::new(EventKind::Slot, "a").unwrap());
        uefi.push(Event::new(EventKind::Uki, &"cd".repeat(32)).unwrap());
        let after_loader = cairn_attest::event::extend(&[0; 32], uefi.events()[0].digest());
        let rest = still_to_extend(&uefi, &after_loader).unwrap();
        assert_eq!(
            rest.iter().map(|e| e.kind()).collect::<Vec<_>>(),
            [EventKind::Slot, EventKind::Uki]
        );
        // PCR 12 still zero: nothing measured the command line, so cairnd must not.
        assert!(matches!(
            still_to_extend(&uefi, &[0; 32]),
            Err(AttestationError::PcrUnexplained)
        ));
        assert!(still_to_extend(&uefi, &uefi.replay().unwrap())
            .unwrap()
            .is_empty());
    }
}
