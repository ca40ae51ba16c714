//! `cairn-image`: keys, trust roots and signed bundles (later: rootfs, slots, disks).

mod bundle_cmd;
mod keys_cmd;

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
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Keygen(args) => keys_cmd::keygen(args),
        Command::Root(cmd) => keys_cmd::root(cmd),
        Command::Sign(args) => keys_cmd::sign(args),
        Command::Bundle(cmd) => bundle_cmd::run(cmd),
    }
}
