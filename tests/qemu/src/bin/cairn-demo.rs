//! `cargo xtask demo`: the update loop end to end, told as it happens. Builds v1 and v2,
//! starts cairn-server (SQLite), boots a device under QEMU, rolls v2 out through a
//! campaign and ends with the device committed on v2 and the dashboard's URL.

use std::io::IsTerminal;
use std::time::Instant;

use anyhow::Result;
use qemu_tests::update_loop::Rig;
use qemu_tests::BOOT_TIMEOUT;

fn main() -> Result<()> {
    let started = Instant::now();
    let dir = qemu_tests::workspace().join("target/cairn/demo");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir)?;
    let mut say = |line: &str| println!("[{:>4}s] {line}", started.elapsed().as_secs());
    let mut rig = Rig::boot_v1(&dir, "demo", false, &mut say)?;
    let end = rig.roll_out("rollout-0.2.0", &mut say)?;
    if end.succeeded != 1 {
        anyhow::bail!("the update did not succeed: {end:?}");
    }
    rig.vm.wait_for("cairn: slot B chosen", BOOT_TIMEOUT)?;
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
