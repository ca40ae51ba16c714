//! A slot's `slot.env`: a U-Boot *text* env file (`env import -t`) with one variable,
//! `slot_args`, the kernel arguments that bind the slot's kernel to its root filesystem:
//!
//! ```text
//! slot_args=cairn.verity.root_hash=<hex> cairn.verity.salt=<hex> cairn.verity.data_blocks=<n> cairn.verity.hash_offset=<bytes> cairn.version=<semver>
//! ```
//!
//! The initramfs sets dm-verity up from these (hash tree at `hash_offset`, no verity
//! superblock, 4096-byte blocks, sha256). The image builder writes it for a factory slot,
//! cairnd for every slot it installs.

use std::io;
use std::path::Path;

use cairn_bundle::Verity;

/// The kernel-argument names this contract owns.
pub mod arg {
    pub const ROOT_HASH: &str = "cairn.verity.root_hash";
    pub const SALT: &str = "cairn.verity.salt";
    pub const DATA_BLOCKS: &str = "cairn.verity.data_blocks";
    pub const HASH_OFFSET: &str = "cairn.verity.hash_offset";
    pub const VERSION: &str = "cairn.version";
}

/// What `slot_args` says about a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotArgs {
    /// The rootfs image's verity parameters; `None` for a rootfs without a hash tree.
    pub verity: Option<VerityArgs>,
    pub version: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VerityArgs {
    pub root_hash: String,
    pub salt: String,
    /// Data blocks covered by the hash tree: `data_size / data_block_size`.
    pub data_blocks: u64,
    /// Where the hash tree starts, in bytes: right after the data.
    pub hash_offset: u64,
}

impl SlotArgs {
    /// The arguments for a slot whose rootfs image has `rootfs_verity` (from the bundle
    /// manifest's `verity` entry, or from `cairn-image slot`).
    pub fn new(rootfs_verity: Option<&Verity>, version: &str) -> SlotArgs {
        SlotArgs {
            verity: rootfs_verity.map(|v| VerityArgs {
                root_hash: v.root_hash.clone(),
                salt: v.salt.clone(),
                data_blocks: v.data_size / u64::from(v.data_block_size.max(1)),
                hash_offset: v.data_size,
            }),
            version: version.to_string(),
        }
    }

    /// The value of `slot_args`: what U-Boot appends to the kernel command line.
    pub fn kernel_args(&self) -> String {
        let mut args = Vec::new();
        if let Some(v) = &self.verity {
            args.push(format!("{}={}", arg::ROOT_HASH, v.root_hash));
            args.push(format!("{}={}", arg::SALT, v.salt));
            args.push(format!("{}={}", arg::DATA_BLOCKS, v.data_blocks));
            args.push(format!("{}={}", arg::HASH_OFFSET, v.hash_offset));
        }
        args.push(format!("{}={}", arg::VERSION, self.version));
        args.join(" ")
    }

    /// The whole `slot.env` file.
    pub fn slot_env(&self) -> String {
        format!("slot_args={}\n", self.kernel_args())
    }

    /// Writes `slot.env` atomically (temp file, fsync, rename, fsync).
    pub fn write(&self, path: &Path) -> io::Result<()> {
        cairn_atomic::write(path, self.slot_env().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn verity() -> Verity {
        Verity {
            root_hash: "ab".into(),
            salt: "cd".into(),
            hash_algorithm: "sha256".into(),
            data_block_size: 4096,
            hash_block_size: 4096,
            data_size: 8192,
        }
    }

    #[test]
    fn slot_args_follow_the_boot_contract() {
        assert_eq!(
            SlotArgs::new(Some(&verity()), "1.2.3").slot_env(),
            "slot_args=cairn.verity.root_hash=ab cairn.verity.salt=cd \
             cairn.verity.data_blocks=2 cairn.verity.hash_offset=8192 cairn.version=1.2.3\n"
        );
        assert_eq!(
            SlotArgs::new(None, "2.0.0").slot_env(),
            "slot_args=cairn.version=2.0.0\n"
        );
    }

    #[test]
    fn what_the_kernel_gets_parses_back() {
        let args = SlotArgs::new(Some(&verity()), "1.2.3");
        let line = format!(
            "console=ttyAMA0 cairn.slot=B {} panic=5",
            args.kernel_args()
        );
        let cmdline = crate::KernelCmdline::new(&line);
        assert_eq!(cmdline.verity_root_hash(), Some("ab"));
        assert_eq!(cmdline.value(arg::VERSION), Some("1.2.3"));
    }
}
