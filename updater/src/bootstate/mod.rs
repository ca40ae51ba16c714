//! The bootloader's view of the slots. The contract itself (the state, its transitions,
//! the two U-Boot env copies, the UEFI entries) lives in `cairn-boot`, shared with the image builder; this
//! module picks the store a device's `system.toml` names and adds the plain-file store.

mod file;

pub use cairn_boot::copies::{BootStateStore, UbootEnvStore};
pub use cairn_boot::state::{BootState, BootStateError, SlotId, FULL_TRIES, TRIAL_TRIES};
pub use cairn_boot::EfiEntryStore;
pub use file::FileStore;
