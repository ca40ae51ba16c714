//! When and how the device reboots into a freshly installed slot.

use std::process::Command;
use std::time::{Duration, Instant};

use serde::Deserialize;
use time::OffsetDateTime;

/// `[reboot]` in system.toml.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RebootConfig {
    pub policy: RebootPolicy,
    /// For `window`: UTC hours, `"HH:MM-HH:MM"`.
    pub window: Option<String>,
    /// How to reboot; a list of argv words.
    pub command: Vec<String>,
    /// A reboot still not happening this many seconds after it was asked for (a hung
    /// shutdown, a command that does nothing) is forced: sync, then reboot(2), saying so
    /// in the log. Unset: cairnd only runs the command. Images set it (cairn-image).
    pub force_after_secs: Option<u64>,
    /// The drain hook: run before every reboot into an installed update (never before a
    /// rollback's reboot). A failure postpones the reboot ([`crate::reboot_hooks`]).
    pub before: Option<HookConfig>,
    /// The uncordon hook: owed from the drain on, run once the device is settled again
    /// (the update committed, or rolled back to the committed slot) until it succeeds.
    pub after_commit: Option<HookConfig>,
}

/// `[reboot] before` / `after_commit`: a command run with a timeout.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HookConfig {
    /// argv words; the first is the program.
    pub command: Vec<String>,
    /// The hook's whole process group is killed when it runs longer than this.
    #[serde(default = "default_hook_timeout_secs")]
    pub timeout_secs: u64,
}

fn default_hook_timeout_secs() -> u64 {
    600
}

impl HookConfig {
    /// Checks made when system.toml is loaded; `name` is the key (`before`, ...).
    pub fn validate(&self, name: &str) -> Result<(), String> {
        if self.command.first().is_none_or(|p| p.is_empty()) {
            return Err(format!("reboot.{name}.command is empty"));
        }
        if self.timeout_secs == 0 {
            return Err(format!("reboot.{name}.timeout_secs must be above 0"));
        }
        Ok(())
    }
}

impl Default for RebootConfig {
    fn default() -> Self {
        RebootConfig {
            policy: RebootPolicy::Now,
            window: None,
            command: vec!["reboot".into()],
            force_after_secs: None,
            before: None,
            after_commit: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RebootPolicy {
    /// Reboot as soon as the update is installed.
    Now,
    /// Wait for `cairn reboot` (or the operator's own tooling).
    OnRequest,
    /// Reboot at the next time inside the maintenance window.
    Window,
}

/// A maintenance window in UTC minutes since midnight; may wrap past midnight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    start: u16,
    end: u16,
}

impl Window {
    pub fn contains(&self, t: OffsetDateTime) -> bool {
        let m = t.hour() as u16 * 60 + t.minute() as u16;
        if self.start <= self.end {
            (self.start..self.end).contains(&m)
        } else {
            m >= self.start || m < self.end
        }
    }
}

/// Parses `"HH:MM-HH:MM"`.
pub fn parse_window(s: &str) -> Result<Window, String> {
    let parse = |hm: &str| -> Option<u16> {
        let (h, m) = hm.trim().split_once(':')?;
        let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    };
    let (a, b) = s
        .split_once('-')
        .ok_or_else(|| format!("reboot window '{s}' is not HH:MM-HH:MM"))?;
    match (parse(a), parse(b)) {
        (Some(start), Some(end)) if start != end => Ok(Window { start, end }),
        _ => Err(format!("reboot window '{s}' is not HH:MM-HH:MM")),
    }
}

/// Should the device reboot now into an installed update?
pub fn due(config: &RebootConfig, now: OffsetDateTime) -> bool {
    match config.policy {
        RebootPolicy::Now => true,
        RebootPolicy::OnRequest => false,
        RebootPolicy::Window => config
            .window
            .as_deref()
            .and_then(|w| parse_window(w).ok())
            .is_some_and(|w| w.contains(now)),
    }
}

/// Runs the configured reboot command; with `force_after_secs`, waits for the reboot
/// and forces it at the deadline (returning only if even that failed).
pub fn reboot(config: &RebootConfig) -> Result<(), String> {
    reboot_or_force(config, &mut force_reboot)
}

/// How long the log line announcing a forced reboot is given to reach the log file: the
/// image's services log through a pipe to `cairn log-to`, another process, which must
/// read and write the line before sync(2) for it to survive the reboot.
const LOG_GRACE: Duration = Duration::from_secs(1);

/// sync(2), then reboot(2): what is left when the orderly reboot did not happen.
fn force_reboot() -> std::io::Error {
    std::thread::sleep(LOG_GRACE);
    // SAFETY: plain syscalls without pointers. reboot(2) returns only on failure.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_AUTOBOOT);
    }
    std::io::Error::last_os_error()
}

/// [`reboot`] with the forcing step passed in, so the deadline logic can be tested
/// without rebooting the machine running the tests.
fn reboot_or_force(
    config: &RebootConfig,
    force: &mut dyn FnMut() -> std::io::Error,
) -> Result<(), String> {
    let (program, args) = config
        .command
        .split_first()
        .ok_or("reboot.command is empty")?;
    tracing::info!(command = ?config.command, "rebooting");
    let asked = Instant::now();
    let mut child = Command::new(program)
        .args(args)
        .spawn()
        .map_err(|e| format!("{program}: {e}"));
    let Some(secs) = config.force_after_secs else {
        let status = child?.wait().map_err(|e| format!("{program}: {e}"))?;
        return if status.success() {
            Ok(())
        } else {
            Err(format!("{program} exited with {status}"))
        };
    };
    let deadline = asked + Duration::from_secs(secs);
    let mut waiting = true;
    while waiting && Instant::now() < deadline {
        let failed = match &mut child {
            Ok(c) => match c.try_wait() {
                Ok(None) => None,
                Ok(Some(status)) if status.success() => {
                    waiting = false; // the orderly reboot is under way: let it work
                    None
                }
                Ok(Some(status)) => Some(format!("exited with {status}")),
                Err(e) => Some(e.to_string()),
            },
            Err(e) => Some(e.clone()),
        };
        if let Some(why) = failed {
            tracing::error!("reboot command {program} failed ({why}): forcing the reboot now");
            return Err(format!("forced reboot failed: {}", force()));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    let left = deadline.saturating_duration_since(Instant::now());
    std::thread::sleep(left);
    tracing::error!(
        "asked for a reboot {secs} s ago and still running: forcing it (sync, reboot(2))"
    );
    Err(format!("forced reboot failed: {}", force()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    fn config(command: &[&str], force_after_secs: Option<u64>) -> RebootConfig {
        RebootConfig {
            command: command.iter().map(|w| w.to_string()).collect(),
            force_after_secs,
            ..RebootConfig::default()
        }
    }

    #[test]
    fn a_reboot_that_does_not_happen_is_forced_at_the_deadline() {
        let mut forced = None;
        let asked = Instant::now();
        let result = reboot_or_force(&config(&["true"], Some(1)), &mut || {
            forced = Some(asked.elapsed());
            std::io::Error::other("not on a test machine")
        });
        assert!(result.is_err());
        let after = forced.expect("forced");
        assert!(after >= Duration::from_secs(1), "forced early: {after:?}");
    }

    #[test]
    fn a_failing_reboot_command_is_forced_at_once() {
        let mut forced = false;
        let result = reboot_or_force(&config(&["false"], Some(3600)), &mut || {
            forced = true;
            std::io::Error::other("not on a test machine")
        });
        assert!(forced && result.is_err());
    }

    #[test]
    fn without_a_deadline_only_the_command_runs() {
        let mut forced = false;
        let mut never = || {
            forced = true;
            std::io::Error::other("not on a test machine")
        };
        assert!(reboot_or_force(&config(&["true"], None), &mut never).is_ok());
        assert!(reboot_or_force(&config(&["false"], None), &mut never).is_err());
        assert!(!forced);
    }

    #[test]
    fn hooks_are_checked_when_the_config_is_read() {
        let read = |text: &str| toml::from_str::<RebootConfig>(text);
        let config = read(
            "before = { command = [\"/usr/lib/cairn/drain\", \"--x\"], timeout_secs = 60 }\n\
             after_commit = { command = [\"/usr/lib/cairn/uncordon\"] }",
        )
        .unwrap();
        let before = config.before.unwrap();
        assert_eq!(before.command, ["/usr/lib/cairn/drain", "--x"]);
        assert_eq!(config.after_commit.unwrap().timeout_secs, 600);
        assert!(before.validate("before").is_ok());
        assert!(read("before = { command = [\"x\"], timeout = 5 }").is_err());
        let bad = |command: Vec<String>, timeout_secs| {
            HookConfig {
                command,
                timeout_secs,
            }
            .validate("before")
            .unwrap_err()
        };
        assert_eq!(bad(vec![], 5), "reboot.before.command is empty");
        assert_eq!(
            bad(vec!["x".into()], 0),
            "reboot.before.timeout_secs must be above 0"
        );
    }

    #[test]
    fn windows_wrap_past_midnight() {
        let w = parse_window("23:30-02:00").unwrap();
        assert!(w.contains(datetime!(2026-11-22 23:45 UTC)));
        assert!(w.contains(datetime!(2026-11-22 01:59 UTC)));
        assert!(!w.contains(datetime!(2026-11-22 02:00 UTC)));
        assert!(parse_window("25:00-01:00").is_err());
    }
}
