//! Where the boot contract's files live on the boot partition (FAT, mounted at `/boot` on
//! the device): both boot-state copies at its root, and one directory per slot holding
//! the slot's kernel, initrd, `slot.env` and, on a factory slot, `images.json`. On the
//! UEFI path the boot partition is the ESP: the state is its entries
//! ([`crate::efi_entries`]), and a factory slot's directory holds only `images.json`.

use crate::state::SlotId;

/// The two boot-state copies, by index.
pub const BOOT_STATE_COPIES: [&str; 2] = ["bootstate.0", "bootstate.1"];
/// In a slot's directory: the kernel image U-Boot loads.
pub const KERNEL: &str = "vmlinuz";
/// In a slot's directory: the initramfs U-Boot loads.
pub const INITRD: &str = "initrd.img";
/// In a slot's directory: the slot's kernel arguments ([`crate::slot_env`]).
pub const SLOT_ENV: &str = "slot.env";
/// In a factory slot's directory: what the slot holds ([`crate::images`]).
pub const IMAGES_JSON: &str = "images.json";

/// The slot's directory on the boot partition: `a` or `b`.
pub fn slot_dir(slot: SlotId) -> &'static str {
    slot.lower()
}
