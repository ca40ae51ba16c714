//! The hardware watchdog, from early boot on: the initramfs arms it, cairnd keeps it fed.
//! A kernel, init or cairnd that hangs (during a trial boot too) stops the feeding and the
//! board resets; the bootloader counts that boot as a spent try, so a trial that hangs
//! falls back to the committed slot like one that did not boot, and is retried or
//! declined as such (INVARIANTS.md 5).
//!
//! cairnd opens the device once, sets `[watchdog] timeout_secs` and feeds it from a thread
//! every third of that. It never disarms it (no magic close): if cairnd dies, init restarts
//! it within seconds and it takes over again; if nothing does, the board resets. Only an
//! explicitly configured device is touched (`[watchdog] device`; images set it), so tests
//! on a host never arm the host's watchdog.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// `[watchdog]` in system.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WatchdogConfig {
    /// The watchdog device (`/dev/watchdog`); none: no watchdog.
    pub device: Option<PathBuf>,
    /// Seconds without feeding before the board resets.
    pub timeout_secs: u32,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig {
            device: None,
            timeout_secs: 30,
        }
    }
}

/// Opens the configured watchdog, sets its timeout and feeds it from a thread for as long
/// as the process lives. Errors are logged: a device without its watchdog still updates.
pub fn start(config: &WatchdogConfig) {
    let Some(path) = &config.device else {
        return;
    };
    let mut file = match OpenOptions::new().write(true).open(path) {
        Ok(file) => file,
        Err(e) => {
            tracing::error!("watchdog {} not armed: {e}", path.display());
            return;
        }
    };
    let timeout = set_timeout(&file, config.timeout_secs.max(3));
    let feed_every = Duration::from_secs(u64::from(timeout / 3).max(1));
    tracing::info!(device = %path.display(), timeout_secs = timeout, "watchdog fed by cairnd");
    let spawned = std::thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || loop {
            if let Err(e) = feed(&mut file) {
                tracing::error!("feeding the watchdog: {e}");
            }
            std::thread::sleep(feed_every);
        });
    if let Err(e) = spawned {
        tracing::error!("no watchdog thread: {e}");
    }
}

fn feed(file: &mut File) -> std::io::Result<()> {
    file.write_all(b"1")?;
    file.flush()
}

/// WDIOC_SETTIMEOUT; returns the timeout the driver actually took (or `wanted` when it
/// refuses the call, e.g. a driver with a fixed timeout).
fn set_timeout(file: &File, wanted: u32) -> u32 {
    const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
    let mut timeout: libc::c_int = wanted as libc::c_int;
    // SAFETY: the ioctl reads and writes one int through a valid pointer to `timeout`.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut timeout) };
    if rc == 0 && timeout > 0 {
        timeout as u32
    } else {
        tracing::warn!(
            "watchdog timeout not set ({}); assuming {wanted} s",
            std::io::Error::last_os_error()
        );
        wanted
    }
}
