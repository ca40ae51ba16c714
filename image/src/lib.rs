//! `cairn-image` as a library: the OS image pipeline (root tree, verity slot, GPT disk),
//! used by the `cairn-image` CLI, `cargo xtask image` and the QEMU tests; the block map
//! format ([`bmap`]) and flashing with it ([`flash`]); and [`tls`], the certificates of a
//! fleet server's HTTPS; [`oci`], the check of container image archives a bundle carries.

pub mod bmap;
pub mod flash;
pub mod oci;
pub mod os;
pub mod provision;
pub mod tls;
