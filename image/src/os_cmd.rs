//! The OS image subcommands: rootfs, slot, disk, build.

use std::path::PathBuf;

use anyhow::Result;
use cairn_image::os::disk::SlotB;
use cairn_image::os::pipeline::Build;
use clap::Args;

#[derive(Args)]
pub struct ProfileArgs {
    /// The image profile (TOML), e.g. image/profiles/qemu-arm64.toml.
    #[arg(long)]
    profile: PathBuf,
}

#[derive(Args)]
pub struct RootfsArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Trust root installed as /etc/cairn/root.json (default: a development root made
    /// once under target/cairn/dev-keys).
    #[arg(long)]
    trust_root: Option<PathBuf>,
}

#[derive(Args)]
pub struct DiskArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    /// Slot B: empty (unbootable until the first update) or a bootable copy of A.
    #[arg(long, value_enum, default_value = "empty")]
    slot_b: SlotB,
}

#[derive(Args)]
pub struct BuildArgs {
    #[command(flatten)]
    profile: ProfileArgs,
    #[arg(long)]
    trust_root: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "empty")]
    slot_b: SlotB,
}

pub fn rootfs(args: RootfsArgs) -> Result<()> {
    Build::new(&args.profile.profile)?.rootfs(args.trust_root.as_deref())
}

pub fn slot(args: ProfileArgs) -> Result<()> {
    let image = Build::new(&args.profile)?.slot()?;
    println!("{}", serde_json::to_string_pretty(&image.verity)?);
    Ok(())
}

pub fn disk(args: DiskArgs) -> Result<()> {
    Build::new(&args.profile.profile)?.disk(args.slot_b)?;
    Ok(())
}

pub fn build(args: BuildArgs) -> Result<()> {
    Build::new(&args.profile.profile)?.all(args.trust_root.as_deref(), args.slot_b)
}
