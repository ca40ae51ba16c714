//! When and how the device reboots into a freshly installed slot.

use std::process::Command;

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
}

impl Default for RebootConfig {
    fn default() -> Self {
        RebootConfig {
            policy: RebootPolicy::Now,
            window: None,
            command: vec!["reboot".into()],
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

/// Runs the configured reboot command.
pub fn reboot(config: &RebootConfig) -> Result<(), String> {
    let (program, args) = config
        .command
        .split_first()
        .ok_or("reboot.command is empty")?;
    tracing::info!(command = ?config.command, "rebooting");
    let status = Command::new(program)
        .args(args)
        .status()
        .map_err(|e| format!("{program}: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{program} exited with {status}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn windows_wrap_past_midnight() {
        let w = parse_window("23:30-02:00").unwrap();
        assert!(w.contains(datetime!(2026-11-22 23:45 UTC)));
        assert!(w.contains(datetime!(2026-11-22 01:59 UTC)));
        assert!(!w.contains(datetime!(2026-11-22 02:00 UTC)));
        assert!(parse_window("25:00-01:00").is_err());
    }
}
