//! Building the workspace's own binaries for the device's architecture (cross-compiled
//! for arm64; for amd64 with the build machine's own toolchain, against the same Debian
//! release's libraries). A separate target directory keeps this nested cargo clear of the
//! outer build's lock.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use super::arch::Arch;
use super::profile::WorkspaceBinaries;
use super::progress::Stage;
use super::run::{run, stdout};

/// A built binary and where it goes in the tree.
pub struct Built {
    pub path: PathBuf,
    pub dest: String,
}

pub fn build(
    workspace: &Path,
    target_dir: &Path,
    arch: Arch,
    wanted: &[WorkspaceBinaries],
) -> Result<Vec<Built>> {
    let target = arch.rust_target();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let packages = workspace_packages(&cargo, workspace)?;
    let mut built = Vec::new();
    for entry in wanted {
        if !packages.iter().any(|p| p == &entry.package) {
            if entry.optional {
                eprintln!(
                    "==> binaries: the workspace has no package {:?} yet; {} not included",
                    entry.package,
                    entry.bins.join(", ")
                );
                continue;
            }
            bail!(
                "the profile wants package {:?}, which the workspace lacks",
                entry.package
            );
        }
        let stage = Stage::start(format!("binaries: building {} for {target}", entry.package));
        let mut cmd = Command::new(&cargo);
        cmd.current_dir(workspace)
            .args([
                "build",
                "--release",
                "--target",
                target,
                "-p",
                &entry.package,
            ])
            .arg("--target-dir")
            .arg(target_dir)
            .env("PKG_CONFIG_ALLOW_CROSS", "1")
            .env(
                "PKG_CONFIG_LIBDIR",
                format!("/usr/lib/{}/pkgconfig", arch.triplet()),
            );
        if arch == Arch::Arm64 {
            cmd.env(
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER",
                "aarch64-linux-gnu-gcc",
            );
        }
        for bin in &entry.bins {
            cmd.args(["--bin", bin]);
        }
        clear_outer_cargo_env(&mut cmd);
        run(&mut cmd)?;
        for bin in &entry.bins {
            built.push(Built {
                path: target_dir.join(target).join("release").join(bin),
                dest: format!("{}/{bin}", entry.dest.trim_matches('/')),
            });
        }
        stage.done(entry.bins.join(", "));
    }
    Ok(built)
}

/// Removes what an outer cargo (`cargo run`, `cargo test`, `cargo xtask`) set for the
/// calling crate. Build scripts such as ring's and the `cc` crate's declare
/// `rerun-if-env-changed` on `CARGO_MANIFEST_DIR`, `CARGO_PKG_NAME`, `OUT_DIR`, ..., so
/// inheriting them would make every caller (the QEMU test harness, `cargo xtask image`,
/// `cargo run -p cairn-image`) rebuild ring and everything above it in the shared
/// cross target directory.
fn clear_outer_cargo_env(cmd: &mut Command) {
    for (key, _) in std::env::vars_os() {
        let Some(key) = key.to_str() else { continue };
        let outer = key.starts_with("CARGO_PKG_")
            || key.starts_with("CARGO_BIN_")
            || matches!(
                key,
                "CARGO_MANIFEST_DIR"
                    | "CARGO_MANIFEST_PATH"
                    | "CARGO_MANIFEST_LINKS"
                    | "CARGO_CRATE_NAME"
                    | "CARGO_PRIMARY_PACKAGE"
                    | "CARGO_TARGET_TMPDIR"
                    | "OUT_DIR"
            );
        if outer {
            cmd.env_remove(key);
        }
    }
}

fn workspace_packages(cargo: &str, workspace: &Path) -> Result<Vec<String>> {
    let json = stdout(Command::new(cargo).current_dir(workspace).args([
        "metadata",
        "--no-deps",
        "--format-version",
        "1",
    ]))?;
    let metadata: serde_json::Value =
        serde_json::from_str(&json).context("cargo metadata output")?;
    Ok(metadata["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str().map(str::to_string))
        .collect())
}
