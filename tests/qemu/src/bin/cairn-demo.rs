//! `cargo xtask demo [--profile NAME|PATH]`: the update loop end to end, told as it happens.
//! Builds v1 and v2, starts cairn-server (SQLite), boots a device under QEMU, rolls v2 out
//! through a campaign and ends with the device committed on v2 and the dashboard's URL.
//! The device is the U-Boot arm64 board (`qemu-arm64.toml`), or with `--profile` one of
//! the UEFI boards (`qemu-x86_64-efi.toml`, `qemu-arm64-efi.toml`).

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::{bail, Result};
use qemu_tests::efi::Arch;
use qemu_tests::update_loop::{Board, Rig};

/// A boot of the UEFI boards, or of U-Boot's under a loaded machine, with margin.
const BOOT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn board(args: &[String]) -> Result<Board> {
    let profile = match args {
        [] => return Ok(Board::Uboot),
        [flag, path] if flag == "--profile" => path,
        _ => bail!("usage: cairn-demo [--profile PATH]"),
    };
    let name = std::path::Path::new(profile)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default();
    Ok(match name {
        "qemu-arm64.toml" => Board::Uboot,
        "qemu-x86_64-efi.toml" => Board::Efi(Arch::X86_64),
        "qemu-arm64-efi.toml" => Board::Efi(Arch::Arm64),
        _ => bail!(
            "the demo runs qemu-arm64.toml, qemu-x86_64-efi.toml or qemu-arm64-efi.toml, not {profile}"
        ),
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let board = board(&args)?;
    let started = Instant::now();
    let dir = qemu_tests::workspace().join("target/cairn/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut say = |line: &str| println!("[{:>4}s] {line}", started.elapsed().as_secs());
    let mut rig = match board {
        Board::Uboot => Rig::boot_v1(&dir, "demo", false, &mut say)?,
        board => Rig::boot_v1_on(board, &dir, "demo", &mut say)?,
    };
    let end = rig.roll_out("rollout-0.2.0", &mut say)?;
    if end.succeeded != 1 {
        anyhow::bail!("the update did not succeed: {end:?}");
    }
    rig.vm.wait_for(&board.slot_chosen("B"), BOOT_TIMEOUT)?;
    rig.vm.wait_for_shell(BOOT_TIMEOUT)?;
    let status = rig.status()?;
    say(&format!(
        "The device says: booted slot {}, committed slot {}, running {}.",
        status["booted"], status["committed"], status["slots"]["B"]["version"]
    ));
    for line in rig.payload_lines()? {
        say(&format!("  device log: {line}"));
    }
    say(&format!(
        "Done in {:.0} s. Dashboard: {}",
        started.elapsed().as_secs_f64(),
        rig.fleet.dashboard_url()
    ));
    if std::io::stdin().is_terminal() {
        say("The server and the device keep running: press Enter to stop them.");
        let mut line = String::new();
        std::io::stdin().read_line(&mut line)?;
    }
    Ok(())
}
