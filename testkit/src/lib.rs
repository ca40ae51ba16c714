//! Fixtures shared by Cairn's tests, the install and check-in benches and the QEMU
//! harness, so each exists once:
//!
//! - [`images`]: deterministic image bytes that compress like an OS image;
//! - [`keys`]: signing keys and trust roots;
//! - [`bundles`]: a [`BundleSpec`](cairn_bundle::writer::BundleSpec) with test defaults,
//!   signed with the real writer;
//! - [`device`]: a device laid out in a directory (slots as files, a boot partition
//!   directory, the trust root, `system.toml`);
//! - [`tls`]: a throwaway certificate authority for real TLS in tests;
//! - [`oci`]: container image archives (OCI layout) built offline from a static busybox.
//!
//! Test code: helpers panic with a message instead of returning errors.

pub mod bundles;
pub mod device;
pub mod images;
pub mod keys;
pub mod oci;
pub mod tls;

pub use bundles::{bundle_spec, delta_sources, image_inputs, sign_bundle};
pub use device::{DeviceDir, SlotImages};
pub use images::{image_bytes, slot_image_bytes};
pub use keys::{copy_key, in_days, new_key, root_for, root_with};
pub use tls::{IssuedPem, TestCa};
