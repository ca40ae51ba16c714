//! A device laid out in a directory, as the updater tests and the install bench run the
//! real `cairn`/`cairnd` against it: slots are files under `dev/` (and `boot/{a,b}/` for
//! kernel and initrd), `boot/` stands for the mounted boot partition, `proc/` holds the
//! kernel command line and boot id, `etc/cairn/` the trust root, version and
//! `system.toml`. The boot state in `boot/` is the updater's to write: this crate does not
//! depend on cairn-updater (whose tests use it).

use std::fs;
use std::path::{Path, PathBuf};

use cairn_bundle::SigningKey;

use crate::keys::root_for;

/// Which images a slot holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotImages {
    /// `rootfs` on `dev/rootfs-{a,b}` only.
    Rootfs,
    /// `rootfs` on `dev/rootfs-{a,b}`, `kernel` and `initrd` as files in `boot/{a,b}/`.
    RootfsKernelInitrd,
}

/// The directory a device lives in.
#[derive(Debug, Clone)]
pub struct DeviceDir {
    root: PathBuf,
}

impl DeviceDir {
    /// Lays out a device in `root`: its directories, a trust root of `key` (version 1,
    /// expiring in 30 days) and `version` as the running release. Slots, `system.toml`
    /// and the boot state are the caller's.
    pub fn create(root: &Path, key: &SigningKey, version: &str) -> DeviceDir {
        let d = DeviceDir {
            root: root.to_path_buf(),
        };
        for sub in [
            "boot/a",
            "boot/b",
            "dev",
            "data",
            "etc/cairn/health.d",
            "proc",
            "build",
        ] {
            let dir = d.path(sub);
            fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e}", dir.display()));
        }
        d.write("etc/cairn/root.json", &root_for(key, 30).to_json());
        d.write("etc/cairn/version", version.as_bytes());
        d
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    /// Writes `bytes` to the file at `rel`.
    pub fn write(&self, rel: &str, bytes: &[u8]) {
        let path = self.path(rel);
        fs::write(&path, bytes).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// `etc/cairn/system.toml`.
    pub fn config(&self) -> PathBuf {
        self.path("etc/cairn/system.toml")
    }

    /// The `system.toml` of this device for `compatible`: U-Boot env backend on `boot/`,
    /// health checks with a 3 s deadline, reboots on request (touching `rebooted`), the
    /// command line and boot id from `proc/`, metrics on a free port.
    pub fn system_toml(&self, compatible: &str, images: SlotImages) -> String {
        let root = self.root.display();
        let slot = |s: &str| {
            let mut text = format!(
                "[slots.{up}]\nslot_env = \"{root}/boot/{s}/slot.env\"\n[slots.{up}.images]\n\
                 rootfs = {{ device = \"{root}/dev/rootfs-{s}\" }}\n",
                up = s.to_uppercase()
            );
            if images == SlotImages::RootfsKernelInitrd {
                text += &format!(
                    "kernel = {{ file = \"{root}/boot/{s}/vmlinuz\" }}\n\
                     initrd = {{ file = \"{root}/boot/{s}/initrd.img\" }}\n"
                );
            }
            text
        };
        format!(
            "compatible = \"{compatible}\"\ntrust_root = \"{root}/etc/cairn/root.json\"\n\
             data_dir = \"{root}/data/cairn\"\nhealth_dir = \"{root}/etc/cairn/health.d\"\n\
             [bootloader]\nbackend = \"uboot-env\"\ndir = \"{root}/boot\"\n{}{}\
             [health]\ndeadline_secs = 3\ninterval_secs = 1\n\
             [reboot]\npolicy = \"on-request\"\ncommand = [\"touch\", \"{root}/rebooted\"]\n\
             [system]\ncmdline = \"{root}/proc/cmdline\"\nboot_id = \"{root}/proc/boot_id\"\n\
             check_root_device = false\nmetrics_listen = \"127.0.0.1:0\"\n",
            slot("a"),
            slot("b")
        )
    }

    /// The kernel command line of a boot of `slot` ("A" or "B"), in recovery or not.
    pub fn write_cmdline(&self, slot: &str, recovery: bool) {
        let extra = if recovery { " cairn.recovery=1" } else { "" };
        self.write(
            "proc/cmdline",
            format!("console=ttyAMA0 cairn.slot={slot}{extra} panic=5\n").as_bytes(),
        );
    }

    /// The boot id of boot number `n`.
    pub fn write_boot_id(&self, n: impl std::fmt::Display) {
        self.write("proc/boot_id", format!("boot-{n}\n").as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::new_key;

    #[test]
    fn a_device_dir_has_its_root_config_and_boot_files() {
        let dir = tempfile::tempdir().unwrap();
        let d = DeviceDir::create(dir.path(), &new_key(), "1.0.0");
        assert!(d.path("boot/b").is_dir() && d.path("etc/cairn/health.d").is_dir());
        assert_eq!(
            fs::read_to_string(d.path("etc/cairn/version")).unwrap(),
            "1.0.0"
        );
        cairn_bundle::TrustRoot::from_json(&fs::read(d.path("etc/cairn/root.json")).unwrap())
            .unwrap();
        d.write_cmdline("B", true);
        d.write_boot_id(3);
        assert_eq!(
            fs::read_to_string(d.path("proc/cmdline")).unwrap(),
            "console=ttyAMA0 cairn.slot=B cairn.recovery=1 panic=5\n"
        );
        assert_eq!(
            fs::read_to_string(d.path("proc/boot_id")).unwrap(),
            "boot-3\n"
        );

        let full = d.system_toml("cairn-test", SlotImages::RootfsKernelInitrd);
        let rootfs = d.system_toml("cairn-bench", SlotImages::Rootfs);
        assert!(full.starts_with("compatible = \"cairn-test\"\n"));
        assert_eq!(full.matches("initrd.img").count(), 2);
        assert!(!rootfs.contains("vmlinuz") && rootfs.contains("dev/rootfs-b"));
    }
}
