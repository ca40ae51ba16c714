//! What the kernel command line says about this boot. U-Boot puts `cairn.slot=A|B`,
//! `cairn.recovery=1` on a recovery boot, and the slot's [`slot_args`](crate::slot_env)
//! there; the initramfs and cairnd read them back.

use crate::slot_env::arg;
use crate::state::SlotId;

/// The slot U-Boot booted.
pub const SLOT: &str = "cairn.slot";
/// `1` when U-Boot booted the committed slot because no slot had tries left.
pub const RECOVERY: &str = "cairn.recovery";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelCmdline {
    text: String,
}

impl KernelCmdline {
    /// `text` as in `/proc/cmdline`.
    pub fn new(text: &str) -> KernelCmdline {
        KernelCmdline {
            text: text.to_string(),
        }
    }

    /// The value of the first `key=value` word, if any.
    pub fn value(&self, key: &str) -> Option<&str> {
        self.text
            .split_whitespace()
            .find_map(|w| w.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
    }

    /// `cairn.slot`, when present and `A` or `B` (either case).
    pub fn slot(&self) -> Option<SlotId> {
        self.value(SLOT).and_then(|v| v.parse().ok())
    }

    pub fn recovery(&self) -> bool {
        self.value(RECOVERY) == Some("1")
    }

    /// The verity root hash the initramfs opened the root filesystem with.
    pub fn verity_root_hash(&self) -> Option<&str> {
        self.value(arg::ROOT_HASH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_slot_and_recovery_from_the_command_line() {
        let line = KernelCmdline::new(
            "console=ttyAMA0 root=PARTLABEL=rootfs-b cairn.slot=B cairn.recovery=1 panic=5",
        );
        assert_eq!(line.value(SLOT), Some("B"));
        assert_eq!(line.slot(), Some(SlotId::B));
        assert!(line.recovery());
        assert_eq!(KernelCmdline::new("cairn.slotx=A").value(SLOT), None);
        assert_eq!(KernelCmdline::new("cairn.slot=b").slot(), Some(SlotId::B));
        assert_eq!(KernelCmdline::new("cairn.slot=C").slot(), None);
        assert!(!KernelCmdline::new("cairn.recovery=0").recovery());
    }
}
