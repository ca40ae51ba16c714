//! `/etc/cairn/system.toml`: the device's fixed facts, shipped on the read-only root so
//! each image version carries its own.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::attestation::TpmConfig;
use crate::bootstate::SlotId;
use crate::fleet::ServerConfig;
use crate::health::HealthConfig;
use crate::reboot::{RebootConfig, RebootPolicy};
use crate::transport::Transport;

pub const DEFAULT_PATH: &str = "/etc/cairn/system.toml";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SystemConfig {
    /// The device type; bundles for another type are refused.
    pub compatible: String,
    /// The trust root shipped with the image (`root.json`).
    pub trust_root: PathBuf,
    /// Writable directory for cairnd's state (on the data partition).
    pub data_dir: PathBuf,
    /// Health checks declared by this image (`*.toml`, one check each).
    #[serde(default = "default_health_dir")]
    pub health_dir: PathBuf,
    pub bootloader: BootloaderConfig,
    pub slots: BTreeMap<SlotId, SlotConfig>,
    #[serde(default)]
    pub health: HealthConfig,
    #[serde(default)]
    pub reboot: RebootConfig,
    #[serde(default)]
    pub clock: crate::clock::ClockConfig,
    #[serde(default)]
    pub provision: crate::provision::ProvisionConfig,
    #[serde(default)]
    pub watchdog: crate::watchdog::WatchdogConfig,
    #[serde(default)]
    pub server: Option<ServerConfig>,
    /// The container runtime a bundle's container images are imported into before the
    /// reboot; none: bundles carrying container images are refused.
    #[serde(default)]
    pub containers: Option<crate::containers::ContainersConfig>,
    #[serde(default)]
    pub system: SystemPaths,
    /// The TPM cairnd measures the booted slot into and attests with; none: no
    /// attestation, and the security floor lives only in cairnd's state.
    #[serde(default)]
    pub tpm: Option<TpmConfig>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, tag = "backend", rename_all = "kebab-case")]
pub enum BootloaderConfig {
    /// Two U-Boot env copies in `dir` (the mounted boot partition).
    UbootEnv { dir: PathBuf },
    /// systemd-boot's counted entries in `<esp>/EFI/Linux` (the mounted EFI system
    /// partition; docs/UEFI.md). A slot's `uki` image goes to a file target at the
    /// slot's staged name there (`EfiEntryStore::staged_path`), which arming the trial
    /// renames into the slot's entry.
    Efi { esp: PathBuf },
    /// JSON boot state in `dir`.
    File { dir: PathBuf },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlotConfig {
    /// Where each bundle image goes for this slot, by image name.
    pub images: BTreeMap<String, Target>,
    /// U-Boot text env written with the slot's kernel arguments (boot/BOOT-STATE.md).
    #[serde(default)]
    pub slot_env: Option<PathBuf>,
}

/// Where an image is written.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "lowercase")]
pub enum Target {
    /// A partition (`PARTLABEL=rootfs-a` or a path) written in place from offset 0.
    Device(String),
    /// A file replaced atomically (kernel and initrd on the boot partition).
    File(PathBuf),
}

/// Paths to kernel interfaces, overridable so tests can stand in for a real boot.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SystemPaths {
    pub cmdline: PathBuf,
    pub boot_id: PathBuf,
    /// efivarfs: on the UEFI path the booted slot is the one of the entry systemd-boot
    /// started (`LoaderEntrySelected`), since the command line names none.
    pub efivars: PathBuf,
    /// Cross-check `cairn.slot=` against the device actually mounted at `/`.
    pub check_root_device: bool,
    /// Where cairnd serves Prometheus metrics.
    pub metrics_listen: String,
}

impl Default for SystemPaths {
    fn default() -> Self {
        SystemPaths {
            cmdline: "/proc/cmdline".into(),
            boot_id: "/proc/sys/kernel/random/boot_id".into(),
            efivars: "/sys/firmware/efi/efivars".into(),
            check_root_device: true,
            metrics_listen: "127.0.0.1:9469".into(),
        }
    }
}

fn default_health_dir() -> PathBuf {
    "/etc/cairn/health.d".into()
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl SystemConfig {
    pub fn load(path: &Path) -> Result<SystemConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let invalid = |message: String| ConfigError::Invalid {
            path: path.display().to_string(),
            message,
        };
        let config: SystemConfig = toml::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        config.validate().map_err(invalid)?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let (Some(a), Some(b)) = (self.slots.get(&SlotId::A), self.slots.get(&SlotId::B)) else {
            return Err("both slots A and B must be configured".into());
        };
        if a.images.keys().ne(b.images.keys()) {
            return Err("slots A and B must list the same images".into());
        }
        if a.images.is_empty() {
            return Err("slots list no images".into());
        }
        if self.reboot.command.is_empty() {
            return Err("reboot.command is empty".into());
        }
        for (name, hook) in [
            ("before", &self.reboot.before),
            ("after_commit", &self.reboot.after_commit),
        ] {
            if let Some(hook) = hook {
                hook.validate(name)?;
            }
        }
        if self.reboot.policy == RebootPolicy::Window {
            crate::reboot::parse_window(self.reboot.window.as_deref().unwrap_or(""))?;
        }
        if let Some(server) = &self.server {
            Transport::from_server(server).map_err(|e| format!("[server]: {e}"))?;
        }
        Ok(())
    }

    pub fn slot(&self, slot: SlotId) -> &SlotConfig {
        &self.slots[&slot]
    }
}
