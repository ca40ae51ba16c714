//! Where the pipeline keeps things: `target/cairn/<profile>/` for outputs,
//! `target/cairn/cache/` for what is slow to fetch (Debian trees and .debs).

use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct Layout {
    pub workspace: PathBuf,
    /// `target/cairn/<profile>`
    pub out: PathBuf,
    /// `target/cairn/cache`
    pub cache: PathBuf,
}

impl Layout {
    pub fn new(workspace: &Path, profile_name: &str) -> Layout {
        let cairn = workspace.join("target").join("cairn");
        Layout {
            workspace: workspace.to_path_buf(),
            out: cairn.join(profile_name),
            cache: cairn.join("cache"),
        }
    }

    /// The assembled root tree.
    pub fn tree(&self) -> PathBuf {
        self.out.join("rootfs")
    }
    pub fn kernel(&self) -> PathBuf {
        self.out.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.out.join("initrd.img")
    }
    /// Package versions that went into the tree.
    pub fn packages(&self) -> PathBuf {
        self.out.join("packages.txt")
    }
    pub fn slot_image(&self) -> PathBuf {
        self.out.join("rootfs.img")
    }
    pub fn verity_json(&self) -> PathBuf {
        self.out.join("verity.json")
    }
    /// The UEFI path's signed unified kernel image (a bundle's `uki` image).
    pub fn uki(&self) -> PathBuf {
        self.out.join("uki.efi")
    }
    /// The UEFI path's signed systemd-boot, as the ESP holds it (`bundle create
    /// --efi-loader`, for the PCR 4 a release pins).
    pub fn systemd_boot(&self) -> PathBuf {
        self.out.join("systemd-boot.efi")
    }
    /// The UEFI firmware's variable store with the profile's Secure Boot keys enrolled
    /// (QEMU's second pflash drive).
    pub fn efi_vars(&self) -> PathBuf {
        self.out.join("efi-vars.fd")
    }
    pub fn disk(&self) -> PathBuf {
        self.out.join("disk.img")
    }
    /// Development signing key and trust root, made once per checkout.
    pub fn dev_keys(&self) -> PathBuf {
        self.workspace.join("target").join("cairn").join("dev-keys")
    }
}
