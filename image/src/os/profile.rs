//! Image profiles: what goes into an image, as data (`image/profiles/*.toml`).

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Deserialize;

use super::arch::Arch;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub name: String,
    /// The bundle `compatible` string of devices running this image.
    pub compatible: String,
    pub version: String,
    pub debian: Debian,
    pub kernel: Kernel,
    pub rootfs: Rootfs,
    pub initramfs: Initramfs,
    #[serde(default)]
    pub binaries: Vec<WorkspaceBinaries>,
    pub slot: Slot,
    pub disk: Disk,
    /// The fleet server cairnd checks in with; none: updates only by `cairn install`.
    #[serde(default)]
    pub server: Option<Server>,
    /// Extra health checks baked into `/etc/cairn/health.d`, by name, as TOML text
    /// (updater/src/health): each image version carries its own.
    #[serde(default)]
    pub health_checks: std::collections::BTreeMap<String, String>,
    /// How long cairnd gives a trial boot's checks (its default: 300 s).
    #[serde(default)]
    pub health: Option<Health>,
    /// When cairnd forces a reboot that did not happen (default
    /// [`DEFAULT_REBOOT_FORCE_AFTER_SECS`]).
    #[serde(default)]
    pub reboot: Option<Reboot>,
    /// Where the device gets the time (besides the fleet server's `Date`).
    #[serde(default)]
    pub clock: Option<Clock>,
    /// The board's watchdog (`/dev/watchdog`; its driver in `kernel.initramfs_modules`):
    /// armed by the initramfs, fed by cairnd.
    #[serde(default)]
    pub watchdog: Option<Watchdog>,
    /// The TPM cairnd measures the boot into and attests with; the rootfs must then
    /// carry Debian's libtss2 (esys, tctildr, tcti-device).
    #[serde(default)]
    pub tpm: Option<Tpm>,
    /// The container runtime cairnd imports a release's container images into before
    /// the reboot; none: such bundles are refused.
    #[serde(default)]
    pub containers: Option<Containers>,
    /// The UEFI boot path (docs/UEFI.md): firmware → systemd-boot → one signed unified
    /// kernel image per slot. Without it, the image boots with U-Boot (`disk.boot_script`).
    #[serde(default)]
    pub efi: Option<Efi>,
}

/// `[efi]`: what the UEFI boot path's ESP holds besides the slots' UKIs.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Efi {
    /// Debian packages with systemd-boot and its stub (`systemd-boot-efi`, 254 from
    /// bookworm-backports: 252's stub measures neither `.uname` nor `.sbat`).
    pub packages: Vec<String>,
    /// apt sources added to `debian.sources` for those packages only (the root file
    /// system's packages never come from them).
    #[serde(default)]
    pub sources: Vec<String>,
    /// The start of every UKI's kernel command line; the slot's verity arguments follow.
    pub cmdline: String,
    /// A directory with the Secure Boot keys (`os::secureboot`: PK, KEK, db); without
    /// it, development keys are made once under `target/cairn/dev-keys/secureboot`.
    #[serde(default)]
    pub secure_boot_keys: Option<PathBuf>,
}

/// `[containers]`: containerd's socket in the image (its archives are kept on /data).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Containers {
    pub socket: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tpm {
    /// TSS2 TCTI, e.g. `device:/dev/tpmrm0`.
    pub tcti: String,
}

/// `[watchdog]`: how long the board may go unfed before it resets.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    pub timeout_secs: u32,
}

/// `[clock]`: NTP servers cairnd asks over SNTP (cairnd's clock floor is the slot epoch).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Clock {
    #[serde(default)]
    pub ntp_servers: Vec<String>,
}

/// `[reboot]`: how a device reboots, and how long it waits for an orderly reboot before
/// forcing it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reboot {
    #[serde(default = "default_force_after_secs")]
    pub force_after_secs: u64,
    /// cairnd's reboot command (its default: busybox `reboot`).
    pub command: Option<Vec<String>>,
}

fn default_force_after_secs() -> u64 {
    DEFAULT_REBOOT_FORCE_AFTER_SECS
}

/// What an image's cairnd gets when the profile says nothing: a shutdown that has not
/// rebooted the device five minutes after cairnd asked is hung.
pub const DEFAULT_REBOOT_FORCE_AFTER_SECS: u64 = 300;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Health {
    pub deadline_secs: u64,
    pub interval_secs: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Server {
    pub url: String,
    #[serde(default = "default_poll_secs")]
    pub poll_secs: u64,
    /// The CA the server's certificate must chain to, installed as
    /// `/etc/cairn/server-ca.pem` and pinned by cairnd: a PEM file (relative to the
    /// workspace), or `"dev"` for the development CA cairn-image makes once per checkout
    /// (`target/cairn/dev-keys/server-ca.pem`, with a server certificate for the URL's host).
    #[serde(default)]
    pub ca: Option<String>,
}

/// Where the image's server CA comes from.
pub const DEV_SERVER_CA: &str = "dev";

fn default_poll_secs() -> u64 {
    300
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Debian {
    pub suite: String,
    /// apt source lines (`deb URI SUITE COMPONENTS`).
    pub sources: Vec<String>,
    pub architecture: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Kernel {
    pub package: String,
    /// `uname -r` of that package: the directory under /lib/modules.
    pub release: String,
    /// Modules the initramfs loads, in order; an entry may carry the module's parameters
    /// after its name (`softdog soft_margin=30`).
    pub initramfs_modules: Vec<String>,
    pub modules: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rootfs {
    pub packages: Vec<String>,
    #[serde(default)]
    pub cni_plugins: Vec<String>,
    /// Paths removed from the tree; `{triplet}` stands for the multiarch directory name
    /// (`aarch64-linux-gnu`, `x86_64-linux-gnu`).
    #[serde(default)]
    pub trim: Vec<String>,
    pub overlay: PathBuf,
    #[serde(default)]
    pub console_shell: bool,
    /// The serial console's device (`ttyAMA0`, `ttyS0`): the development shell runs on it.
    pub serial_console: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Initramfs {
    pub init: PathBuf,
    #[serde(default)]
    pub binaries: Vec<String>,
}

/// Binaries of a workspace package, cross-compiled for the device into `dest`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceBinaries {
    pub package: String,
    pub bins: Vec<String>,
    #[serde(default = "default_bin_dest")]
    pub dest: String,
    /// Skip (with a notice) when the workspace has no such package.
    #[serde(default)]
    pub optional: bool,
}

fn default_bin_dest() -> String {
    "usr/bin".into()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Lz4hc,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Slot {
    pub compression: Compression,
    /// Every file's timestamp in the image (seconds since 1970).
    pub epoch: u64,
    /// The erofs filesystem UUID.
    pub uuid: String,
    pub verity_salt: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Disk {
    pub boot_mib: u64,
    pub slot_mib: u64,
    pub data_mib: u64,
    pub boot_script: PathBuf,
    pub tries: u32,
    /// Directories directly under /data that keep exec: the initramfs mounts /data
    /// `nosuid,nodev,noexec` and bind-mounts each of these over itself with exec back
    /// (still `nosuid,nodev`), e.g. containerd's state, whose snapshots are container root
    /// filesystems. One path component each ([A-Za-z0-9._-]).
    #[serde(default)]
    pub data_exec: Vec<String>,
}

impl Profile {
    /// The device's architecture.
    pub fn arch(&self) -> Result<Arch> {
        Arch::from_debian(&self.debian.architecture)
    }

    /// Reads a profile. `extends = "other.toml"` (relative to the profile) starts from
    /// that profile: tables merge key by key, any other value replaces the base's.
    pub fn load(path: &Path) -> Result<Profile> {
        let value = load_value(path, 0)?;
        let profile: Profile = value
            .try_into()
            .with_context(|| format!("parsing profile {}", path.display()))?;
        profile.check()?;
        Ok(profile)
    }

    fn check(&self) -> Result<()> {
        let simple = |s: &str| {
            !s.is_empty()
                && s.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        if !simple(&self.name) {
            bail!("profile name {:?} must be [A-Za-z0-9._-]+", self.name);
        }
        semver::Version::parse(&self.version)
            .with_context(|| format!("profile version {:?}", self.version))?;
        if hex::decode(&self.slot.verity_salt).is_err() {
            bail!("slot.verity_salt must be hex");
        }
        Arch::from_debian(&self.debian.architecture)?;
        if self.disk.boot_mib < 128 {
            bail!("disk.boot_mib must be at least 128 (two kernels and initrds)");
        }
        if !simple(&self.rootfs.serial_console) {
            bail!(
                "rootfs.serial_console {:?} must be a device name",
                self.rootfs.serial_console
            );
        }
        for path in self.rootfs.trim.iter() {
            if path.starts_with('/') || path.split('/').any(|c| c == ".." || c.is_empty()) {
                bail!("rootfs.trim entry {path:?} must be a relative path inside the tree");
            }
        }
        for name in &self.disk.data_exec {
            if !simple(name) || name == "." || name == ".." {
                bail!("disk.data_exec entry {name:?} must be one directory name under /data");
            }
        }
        Ok(())
    }
}

/// The workspace root: the nearest ancestor of `start` whose Cargo.toml has `[workspace]`.
pub fn workspace_root(start: &Path) -> Result<PathBuf> {
    let start =
        std::fs::canonicalize(start).with_context(|| format!("resolving {}", start.display()))?;
    for dir in start.ancestors() {
        let manifest = dir.join("Cargo.toml");
        if let Ok(text) = std::fs::read_to_string(&manifest) {
            if text.lines().any(|l| l.trim() == "[workspace]") {
                return Ok(dir.to_path_buf());
            }
        }
    }
    bail!("no Cargo workspace above {}", start.display())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_qemu_profile_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/qemu-arm64.toml");
        let profile = Profile::load(&path).unwrap();
        assert_eq!(profile.name, "qemu-arm64");
        assert!(profile
            .kernel
            .initramfs_modules
            .contains(&"dm_verity".into()));
    }

    #[test]
    fn unknown_keys_are_refused() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/qemu-arm64.toml");
        let text = std::fs::read_to_string(path).unwrap() + "\nsurprise = 1\n";
        assert!(toml::from_str::<Profile>(&text).is_err());
    }
}

fn load_value(path: &Path, depth: u32) -> Result<toml::Value> {
    if depth > 4 {
        bail!("profile {}: `extends` nests too deep", path.display());
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading profile {}", path.display()))?;
    let mut value: toml::Value =
        toml::from_str(&text).with_context(|| format!("parsing profile {}", path.display()))?;
    let Some(table) = value.as_table_mut() else {
        bail!("profile {} is not a table", path.display());
    };
    let Some(base) = table.remove("extends") else {
        return Ok(value);
    };
    let base = base
        .as_str()
        .with_context(|| format!("profile {}: `extends` must be a path", path.display()))?;
    let base_path = path.parent().unwrap_or(Path::new(".")).join(base);
    let mut merged = load_value(&base_path, depth + 1)?;
    merge(&mut merged, value);
    Ok(merged)
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(base), toml::Value::Table(over)) => {
            for (key, value) in over {
                match base.get_mut(&key) {
                    Some(existing) => merge(existing, value),
                    None => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, over) => *base = over,
    }
}

#[cfg(test)]
mod extends_tests {
    use super::*;

    #[test]
    fn a_profile_extends_another_and_overrides_only_what_it_names() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let base = Profile::load(&dir.join("qemu-arm64.toml")).unwrap();
        let v2 = Profile::load(&dir.join("qemu-arm64-v2.toml")).unwrap();
        assert_ne!(v2.version, base.version);
        assert_ne!(v2.kernel.package, base.kernel.package);
        assert_eq!(v2.kernel.modules, base.kernel.modules);
        assert_eq!(v2.compatible, base.compatible);
        assert_eq!(v2.rootfs.packages, base.rootfs.packages);
        assert_eq!(v2.disk.tries, base.disk.tries);
    }

    #[test]
    fn the_uefi_profiles_share_qemu_arm64s_root_file_system() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles");
        let base = Profile::load(&dir.join("qemu-arm64.toml")).unwrap();
        assert!(base.efi.is_none());
        for (file, arch) in [
            ("qemu-x86_64-efi.toml", Arch::Amd64),
            ("qemu-x86_64-efi-v2.toml", Arch::Amd64),
            ("qemu-arm64-efi.toml", Arch::Arm64),
            ("qemu-arm64-efi-v2.toml", Arch::Arm64),
        ] {
            let profile = Profile::load(&dir.join(file)).unwrap();
            assert_eq!(profile.arch().unwrap(), arch, "{file}");
            let efi = profile.efi.as_ref().expect("an [efi] table");
            assert!(efi.cmdline.contains("console="), "{file}");
            assert_eq!(profile.rootfs.packages, base.rootfs.packages, "{file}");
            assert_eq!(profile.rootfs.overlay, base.rootfs.overlay, "{file}");
            assert_eq!(profile.binaries.len(), base.binaries.len(), "{file}");
            assert_eq!(
                profile.debian.sources, base.debian.sources,
                "{file}: backports only for the [efi] packages"
            );
            assert!(profile
                .kernel
                .initramfs_modules
                .contains(&"efivarfs".to_string()));
        }
    }
}
