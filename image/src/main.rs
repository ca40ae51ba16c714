//! `cairn-image`: keys, trust roots, signed bundles, and the OS image (rootfs, slot, disk).

mod bundle_cmd;
mod flash_cmd;
mod keys_cmd;
mod os_cmd;
mod provision_cmd;
mod uki_cmd;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cairn-image",
    version,
    about = "Build Cairn OS images and signed update bundles"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate an ed25519 signing key: NAME.key.json (secret, mode 0600) and NAME.pub.json.
    Keygen(keys_cmd::KeygenArgs),
    /// Create or sign trust roots (root.json).
    #[command(subcommand)]
    Root(keys_cmd::RootCommand),
    /// Add signatures to a bundle or a trust root, in place (atomically).
    Sign(keys_cmd::SignArgs),
    /// Create, inspect and verify update bundles.
    #[command(subcommand)]
    Bundle(bundle_cmd::BundleCommand),
    /// Assemble the root tree, kernel and initramfs from Debian packages and the profile.
    Rootfs(os_cmd::RootfsArgs),
    /// Make the verity-protected erofs slot image (rootfs.img) and verity.json.
    Slot(os_cmd::ProfileArgs),
    /// Make the GPT disk image (disk.img + disk.img.bmap).
    Disk(os_cmd::DiskArgs),
    /// rootfs, slot and disk in one go.
    Build(os_cmd::BuildArgs),
    /// Write a disk image to a card, disk or file using its .bmap, then read it back.
    Flash(flash_cmd::FlashArgs),
    /// Make device identities offline, in copies of an image's data partition or in a
    /// flashed card, with the manifest `cairn-server device import` takes.
    Provision(provision_cmd::ProvisionArgs),
    /// Build unified kernel images (UEFI boot path) and precompute their PCR 11 value.
    #[command(subcommand)]
    Uki(uki_cmd::UkiCommand),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Keygen(args) => keys_cmd::keygen(args),
        Command::Root(cmd) => keys_cmd::root(cmd),
        Command::Sign(args) => keys_cmd::sign(args),
        Command::Bundle(cmd) => bundle_cmd::run(cmd),
        Command::Rootfs(args) => os_cmd::rootfs(args),
        Command::Slot(args) => os_cmd::slot(args),
        Command::Disk(args) => os_cmd::disk(args),
        Command::Build(args) => os_cmd::build(args),
        Command::Flash(args) => flash_cmd::flash(args),
        Command::Provision(args) => provision_cmd::provision(args),
        Command::Uki(cmd) => uki_cmd::run(cmd),
    }
}
