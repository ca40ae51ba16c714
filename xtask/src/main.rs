//! `cargo xtask`: the project's own commands. Everything a fresh Debian machine needs is
//! installed here, idempotently, so a newcomer and CI run the same two commands.

mod setup;

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};

const USAGE: &str = "usage: cargo xtask <command>

  test    install what the tests need, then fmt --check, clippy -D warnings, cargo test
  image   build the QEMU arm64 OS image: target/cairn/qemu-arm64/disk.img (+ .bmap);
          --profile qemu-x86_64-efi (or qemu-arm64-efi, or a profile's path): UEFI
  demo    the end-to-end update demo under QEMU; --profile as for image
  setup   only install what the tests need
  bench [install|server|delta|flash]
          measurements (release builds), install and server unless one is named:
          install: cairn install of a 512 MiB full image vs dd conv=fsync, peak RSS of the
            install, idle RSS of cairnd; options: -- --mib 512 --runs 3
          server: check-ins per second of cairn-server on loopback (SQLite and
            PostgreSQL); extra arguments go to it, e.g. -- --backend sqlite --seconds 20
          delta: Cairn's block-bsdiff and zstd-patch vs bsdiff, xdelta3 and zstd --patch-from on the
            profile's v1 -> v2 slot images (bytes, time and peak memory to make and to
            apply); options: -- --large (adds a ~360 MB Debian pair, uncompressed and
            lz4hc erofs; bsdiff alone takes minutes and GBs on it), --levels 12,19,
            --skip bsdiff, --rebuild (the profile images)
          flash: cairn-image flash vs dd and bmaptool copy of the QEMU disk image to a
            loop device (root)";

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => test(),
        Some("setup") => setup::test_prerequisites(),
        Some("demo") => demo(&profile_by_name(&args[1..])),
        Some("bench") => bench(&args[1..]),
        Some("image") => image(&profile_by_name(&args[1..])),
        _ => {
            eprintln!("{USAGE}");
            std::process::exit(2);
        }
    }
}

fn test() -> Result<()> {
    setup::test_prerequisites()?;
    step("formatting", cargo(&["fmt", "--all", "--", "--check"]))?;
    step(
        "clippy",
        cargo(&[
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]),
    )?;
    step("tests", cargo(&["test", "--workspace"]))?;
    Ok(())
}

/// Measurements, not tests: each reports numbers against a baseline taken in the same
/// run and never fails on a threshold. `bench [install|server|delta|flash] [-- args]`;
/// without a name install and server run, and extra arguments go to the server bench.
fn bench(args: &[String]) -> Result<()> {
    let (which, extra) = match args.first().map(String::as_str) {
        Some("flash") => return bench_flash(),
        Some(w @ ("install" | "server" | "delta")) => (Some(w), &args[1..]),
        _ => (None, args),
    };
    let extra: Vec<&str> = extra
        .iter()
        .map(String::as_str)
        .filter(|a| *a != "--")
        .collect();
    if which == Some("delta") {
        return bench_delta(&extra);
    }
    if which != Some("server") {
        let install_args = if which.is_some() { &extra[..] } else { &[] };
        bench_install(install_args)?;
    }
    if which != Some("install") {
        bench_server(&extra)?;
    }
    Ok(())
}

/// updater/examples/install_bench.rs against the release `cairn` and `cairnd`.
fn bench_install(extra: &[&str]) -> Result<()> {
    step(
        "build cairn and cairnd",
        cargo(&["build", "--release", "-p", "cairn-updater", "--bins"]),
    )?;
    let mut cmd = example("cairn-updater", "install_bench");
    cmd.args(extra);
    step("install bench", cmd)
}

/// image/examples/flash_bench.rs on the QEMU profile's disk image (built first if
/// missing): `cairn-image flash` vs `dd` and `bmaptool copy` to one loop device.
fn bench_flash() -> Result<()> {
    let disk = Path::new("target/cairn/qemu-arm64/disk.img");
    if !disk.exists() {
        image(&[])?;
    }
    step(
        "build cairn-image",
        cargo(&[
            "build",
            "--release",
            "-p",
            "cairn-image",
            "--bin",
            "cairn-image",
        ]),
    )?;
    let mut cmd = example("cairn-image", "flash_bench");
    cmd.arg(disk);
    step("flash bench", cmd)
}

/// image/examples/delta_bench.rs: the tools it compares against come from Debian, and the
/// profile's images need what `cargo xtask image` needs.
fn bench_delta(extra: &[&str]) -> Result<()> {
    setup::test_prerequisites()?;
    setup::bench_prerequisites()?;
    let mut cmd = example("cairn-image", "delta_bench");
    cmd.args(extra);
    step("delta bench", cmd)
}

/// `cargo run --release -p PACKAGE --example NAME --`, arguments to follow.
fn example(package: &str, name: &str) -> Command {
    cargo(&["run", "--release", "-p", package, "--example", name, "--"])
}

fn bench_server(extra: &[&str]) -> Result<()> {
    let mut cmd = example("cairn-server", "checkin_bench");
    cmd.args(extra);
    step("check-in bench", cmd)
}

/// `--profile NAME` (no `/`, no `.toml`) stands for `image/profiles/NAME.toml`; every
/// other argument is passed on as it is.
fn profile_by_name(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut after_flag = false;
    for arg in args {
        let named = after_flag && !arg.contains('/') && !arg.ends_with(".toml");
        out.push(if named {
            format!("image/profiles/{arg}.toml")
        } else {
            arg.clone()
        });
        after_flag = arg == "--profile";
    }
    out
}

/// `cargo xtask image [--slot-b empty|copy] [--profile NAME|PATH]`: the device image, from a
/// fresh clone (installs the tools first).
fn image(extra: &[String]) -> Result<()> {
    setup::test_prerequisites()?;
    let mut args = vec!["run", "-p", "cairn-image", "--", "build"];
    if !extra.iter().any(|a| a == "--profile") {
        args.extend(["--profile", "image/profiles/qemu-arm64.toml"]);
    }
    args.extend(extra.iter().map(String::as_str));
    step("image", cargo(&args))
}

/// The update loop end to end on the real image: installs what it needs, then runs
/// tests/qemu's `cairn-demo`, which tells what happens as it happens.
fn demo(extra: &[String]) -> Result<()> {
    setup::test_prerequisites()?;
    let mut cmd = cargo(&["run", "-p", "qemu-tests", "--bin", "cairn-demo", "--"]);
    cmd.args(extra);
    step("demo", cmd)
}

fn cargo(args: &[&str]) -> Command {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args);
    cmd
}

fn step(name: &str, mut cmd: Command) -> Result<()> {
    eprintln!("==> {name}: {cmd:?}");
    let started = std::time::Instant::now();
    let status = cmd.status().with_context(|| format!("running {name}"))?;
    eprintln!(
        "==> {name}: {status} after {:.0}s",
        started.elapsed().as_secs_f64()
    );
    if !status.success() {
        bail!("{name} failed");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::profile_by_name;

    fn strings(args: &[&str]) -> Vec<String> {
        args.iter().map(|a| a.to_string()).collect()
    }

    #[test]
    fn a_profile_name_stands_for_its_file_and_paths_pass_as_they_are() {
        assert_eq!(
            profile_by_name(&strings(&[
                "--slot-b",
                "copy",
                "--profile",
                "qemu-x86_64-efi"
            ])),
            strings(&[
                "--slot-b",
                "copy",
                "--profile",
                "image/profiles/qemu-x86_64-efi.toml"
            ])
        );
        for path in ["image/profiles/qemu-arm64.toml", "mine.toml", "/abs/p"] {
            assert_eq!(
                profile_by_name(&strings(&["--profile", path])),
                strings(&["--profile", path])
            );
        }
        assert_eq!(
            profile_by_name(&strings(&["qemu-arm64"])),
            strings(&["qemu-arm64"]),
            "only the word after --profile"
        );
    }
}
