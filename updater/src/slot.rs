//! Which slot is running, and where a slot's images live.

use std::fs;
use std::path::{Path, PathBuf};

use cairn_boot::{efi_entries, KernelCmdline};

use crate::bootstate::SlotId;
use crate::config::{SystemConfig, Target};

#[derive(Debug, thiserror::Error)]
pub enum SlotError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "kernel command line has no cairn.slot=A|B, and the EFI variable LoaderEntrySelected \
         names no Cairn entry"
    )]
    NoSlotArgument,
    #[error("no partition labelled '{0}'")]
    NoPartition(String),
    #[error("cairn.slot={slot} but / is mounted from {actual}, not slot {slot}'s {expected}")]
    RootMismatch {
        slot: SlotId,
        expected: String,
        actual: String,
    },
}

/// What the kernel command line says about this boot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootFacts {
    pub slot: SlotId,
    /// U-Boot booted the committed slot because no slot had tries left.
    pub recovery: bool,
    /// Changes on every boot; tells a daemon restart from a reboot.
    pub boot_id: String,
}

pub fn boot_facts(config: &SystemConfig) -> Result<BootFacts, SlotError> {
    let read = |path: &Path| {
        fs::read_to_string(path).map_err(|source| SlotError::Read {
            path: path.display().to_string(),
            source,
        })
    };
    let cmdline = KernelCmdline::new(&read(&config.system.cmdline)?);
    let slot = booted_slot(config, &cmdline)?;
    let facts = BootFacts {
        slot,
        recovery: cmdline.recovery(),
        boot_id: read(&config.system.boot_id)?.trim().to_string(),
    };
    if config.system.check_root_device {
        check_root_device(config, slot)?;
    }
    Ok(facts)
}

/// The slot this boot started: `cairn.slot=` on U-Boot's command line, or on the UEFI
/// path (one UKI, one signed command line for both slots) the slot of the entry
/// systemd-boot started.
pub fn booted_slot(config: &SystemConfig, cmdline: &KernelCmdline) -> Result<SlotId, SlotError> {
    if let Some(slot) = cmdline.slot() {
        return Ok(slot);
    }
    if cmdline.value(cairn_boot::cmdline::SLOT).is_some() {
        return Err(SlotError::NoSlotArgument);
    }
    let var = config
        .system
        .efivars
        .join(efi_entries::LOADER_ENTRY_SELECTED);
    fs::read(&var)
        .ok()
        .and_then(|bytes| efi_entries::selected_entry_slot(&bytes))
        .ok_or(SlotError::NoSlotArgument)
}

/// The block device behind `/` must be the booted slot's rootfs partition (directly or
/// under a dm-verity mapping), so a wrong `cairn.slot=` can never make cairnd write the
/// running slot.
fn check_root_device(config: &SystemConfig, slot: SlotId) -> Result<(), SlotError> {
    let Some(Target::Device(spec)) = config.slot(slot).images.get("rootfs") else {
        return Ok(());
    };
    let expected = resolve_device(spec)?;
    let actual = root_backing_devices()?;
    let expected_name = expected
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    if actual.contains(&expected_name) {
        return Ok(());
    }
    Err(SlotError::RootMismatch {
        slot,
        expected: expected.display().to_string(),
        actual: actual.join(","),
    })
}

/// Kernel names of the block devices `/` sits on: the device itself, and for a
/// device-mapper root its underlying devices (`/sys/block/dm-N/slaves`).
fn root_backing_devices() -> Result<Vec<String>, SlotError> {
    let read_err = |path: &str| {
        let path = path.to_string();
        move |source| SlotError::Read { path, source }
    };
    let mountinfo =
        fs::read_to_string("/proc/self/mountinfo").map_err(read_err("/proc/self/mountinfo"))?;
    let majmin = mountinfo
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/"))
        .and_then(|f| f.get(2).map(|s| s.to_string()))
        .unwrap_or_default();
    let dev_link = format!("/sys/dev/block/{majmin}");
    let dev_dir = fs::canonicalize(&dev_link).map_err(read_err(&dev_link))?;
    let name = dev_dir
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let mut names = vec![name];
    if let Ok(slaves) = fs::read_dir(dev_dir.join("slaves")) {
        names.extend(
            slaves
                .flatten()
                .map(|e| e.file_name().to_string_lossy().to_string()),
        );
    }
    Ok(names)
}

/// Resolves `PARTLABEL=name` through sysfs (busybox systems have no udev links), or
/// returns a path as given.
pub fn resolve_device(spec: &str) -> Result<PathBuf, SlotError> {
    let Some(label) = spec.strip_prefix("PARTLABEL=") else {
        return Ok(PathBuf::from(spec));
    };
    let entries = fs::read_dir("/sys/class/block").map_err(|source| SlotError::Read {
        path: "/sys/class/block".into(),
        source,
    })?;
    for entry in entries.flatten() {
        let uevent = fs::read_to_string(entry.path().join("uevent")).unwrap_or_default();
        if uevent.lines().any(|l| l == format!("PARTNAME={label}")) {
            return Ok(Path::new("/dev").join(entry.file_name()));
        }
    }
    Err(SlotError::NoPartition(label.to_string()))
}
