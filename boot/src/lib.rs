//! The boot contract: what the image builder (`cairn-image`), the device updater
//! (`cairnd`) and the U-Boot script (`boot.cmd` beside this crate) must agree on, in one
//! place. `BOOT-STATE.md` beside this crate is the prose version; every format here has
//! exactly one encoder and one parser, and every writer of boot state goes through them.
//!
//! - [`env`]: U-Boot's environment blob (CRC32 + `name=value\0` pairs), the on-disk form
//!   of one boot-state copy.
//! - [`state`]: [`BootState`] (order, tries, committed slot, recovery flag, sequence
//!   number), its variables, and the transitions cairnd makes to it.
//! - [`copies`]: the two copies on the boot partition: which one is read, which one is
//!   written, and [`UbootEnvStore`], which does both power-safely.
//! - [`slot_env`]: a slot's `slot.env`, the kernel arguments that bind the slot's kernel to
//!   its root filesystem's verity root hash.
//! - [`cmdline`]: what the kernel command line says about this boot.
//! - [`images`]: `images.json`, what a factory slot holds.
//! - [`layout`]: file names and directories on the boot partition.
//! - [`efi_entries`]: the UEFI path's boot state, systemd-boot's counted entries in
//!   `\EFI\Linux` (one unified kernel image per slot), their order, the [`BootState`]
//!   they amount to and the renames that make them say another; [`efi_store`]'s
//!   [`EfiEntryStore`] applies those on a mounted ESP.
//! - [`device_settings`]: a device's hostname and network on its data partition, as the
//!   init scripts read them.

pub mod cmdline;
pub mod copies;
pub mod device_settings;
pub mod efi_entries;
pub mod efi_store;
pub mod env;
pub mod images;
pub mod layout;
pub mod slot_env;
pub mod state;

pub use cmdline::KernelCmdline;
pub use copies::{BootStateStore, UbootEnvStore};
pub use efi_store::EfiEntryStore;
pub use images::{ImageRecord, SlotImages};
pub use slot_env::SlotArgs;
pub use state::{BootChoice, BootState, BootStateError, SlotId, FULL_TRIES, TRIAL_TRIES};
