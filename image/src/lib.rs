//! `cairn-image` as a library: the OS image pipeline (root tree, verity slot, GPT disk),
//! used by the `cairn-image` CLI, `cargo xtask image` and the QEMU tests.

pub mod os;
