//! The device's time, for a board without a battery-backed clock that boots in 1970.
//!
//! - **Floor.** The time is never believed earlier than a floor: the image's build time
//!   (`[clock] floor`, written by cairn-image) or the latest time cairnd saw and kept in
//!   `<data_dir>/clock-floor`. At start, a clock behind the floor is set to it. Expiry
//!   checks (bundles, trust roots) use [`trusted_now`], never a time below the floor, so
//!   setting the clock back does not revive an expired signature.
//! - **The server's `Date`.** An answer from the fleet server (over TLS with the pinned
//!   CA) carries the server's time; a device clock more than [`STEP_AFTER`] behind it is
//!   stepped forward to it. Never backward: a clock that runs ahead stays until NTP (or
//!   time) catches up, and the floor never moves down.
//! - **NTP.** `[clock] ntp_servers` makes cairnd ask them (SNTP, [`crate::sntp`]) at
//!   start and every hour, and set the clock to the first answer, forward or back but
//!   never below the floor; with none configured the server's `Date` is the only source.
//!
//! Setting the system clock needs `[clock] set_system_clock = true` (images set it);
//! without it cairnd only logs what it would do, so tests on a host never touch its clock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

/// A device this far behind the server's `Date` steps its clock (the server accepts
/// requests up to 300 s off).
pub const STEP_AFTER: Duration = Duration::from_secs(30);
/// The floor file is rewritten at most this often (flash wear), so after a power cut
/// the floor may be up to this much behind the last time seen.
const FLOOR_WRITE_EVERY: i64 = 3600;
const FLOOR_FILE: &str = "clock-floor";
/// How long one NTP server has to answer.
const NTP_TIMEOUT: Duration = Duration::from_secs(3);
/// An NTP offset smaller than this leaves the clock alone (no slewing here: a step is
/// for a clock that is really off, not for drift).
const NTP_STEP_AFTER: time::Duration = time::Duration::seconds(1);

/// `[clock]` in system.toml.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClockConfig {
    /// Unix seconds: no time before this is believed (the image's build time).
    pub floor: i64,
    /// Whether cairnd may set the system clock.
    pub set_system_clock: bool,
    /// NTP servers (`host` or `host:port`) asked hourly over SNTP (none: the server's
    /// `Date` only).
    pub ntp_servers: Vec<String>,
}

/// The device's clock as cairnd sees it: its config and where the floor is kept.
#[derive(Debug, Clone)]
pub struct Clock {
    config: ClockConfig,
    floor_file: PathBuf,
}

impl Clock {
    pub fn new(config: &ClockConfig, data_dir: &Path) -> Clock {
        Clock {
            config: config.clone(),
            floor_file: data_dir.join(FLOOR_FILE),
        }
    }

    /// The highest of the configured and the stored floor.
    pub fn floor(&self) -> i64 {
        let stored = std::fs::read_to_string(&self.floor_file)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .unwrap_or(0);
        self.config.floor.max(stored)
    }

    /// The time for expiry checks: the system clock, or the floor when the clock is
    /// behind it.
    pub fn trusted_now(&self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        let floor = self.floor();
        if now.unix_timestamp() < floor {
            OffsetDateTime::from_unix_timestamp(floor).unwrap_or(now)
        } else {
            now
        }
    }

    /// At start: a clock behind the floor is set to the floor.
    pub fn enforce_floor(&self) {
        let floor = self.floor();
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if now < floor {
            self.step(now, floor, "the time floor (build time or last time seen)");
        }
    }

    /// Keeps the current time as the floor, at most once per [`FLOOR_WRITE_EVERY`].
    pub fn keep_floor(&self) {
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if now >= self.floor() + FLOOR_WRITE_EVERY {
            if let Err(e) =
                crate::state::reserve::write(&self.floor_file, now.to_string().as_bytes())
            {
                tracing::warn!(
                    "cannot keep the time floor in {}: {e}",
                    self.floor_file.display()
                );
            }
        }
    }

    /// An HTTP `Date` from the fleet server: step forward to it when the clock is more
    /// than [`STEP_AFTER`] behind.
    pub fn observe_server_date(&self, date: &str) {
        let Some(server) = parse_http_date(date) else {
            return;
        };
        let now = OffsetDateTime::now_utc().unix_timestamp();
        if server - now > STEP_AFTER.as_secs() as i64 {
            self.step(now, server, "the fleet server's Date");
        }
    }

    /// Asks the configured NTP servers in turn until one answers (SNTP, [`crate::sntp`])
    /// and sets the clock to its time: forward or back, but never below the floor, and
    /// not for an offset under [`NTP_STEP_AFTER`].
    pub fn sync_ntp(&self) {
        for server in &self.config.ntp_servers {
            let sample = match crate::sntp::query(server, NTP_TIMEOUT) {
                Ok(sample) => sample,
                Err(e) => {
                    tracing::warn!("NTP: {e}");
                    continue;
                }
            };
            let now = OffsetDateTime::now_utc();
            let offset = time::Duration::seconds_f64(sample.offset);
            let server_now = now + offset;
            tracing::info!(
                server,
                offset_secs = sample.offset,
                delay_secs = sample.delay,
                "NTP answer"
            );
            if server_now.unix_timestamp() < self.floor() {
                tracing::warn!(
                    server,
                    "NTP: the server's time {server_now} is before the time floor: ignored"
                );
                continue;
            }
            let synchronised = offset.abs() < NTP_STEP_AFTER
                || self.set_clock(
                    now.unix_timestamp(),
                    server_now,
                    &format!("NTP server {server}"),
                );
            if synchronised {
                tracing::info!(server, "clock synchronised by NTP");
                self.keep_floor();
            }
            return;
        }
        if !self.config.ntp_servers.is_empty() {
            tracing::warn!(servers = ?self.config.ntp_servers, "NTP: no server answered");
        }
    }

    fn step(&self, from: i64, to: i64, source: &str) {
        let to =
            OffsetDateTime::from_unix_timestamp(to).unwrap_or_else(|_| OffsetDateTime::now_utc());
        self.set_clock(from, to, source);
    }

    /// Sets the system clock to `to` (from `from`, for the log), when the config allows;
    /// whether it did.
    fn set_clock(&self, from: i64, to: OffsetDateTime, source: &str) -> bool {
        let to_secs = to.unix_timestamp();
        if !self.config.set_system_clock {
            tracing::warn!(
                from,
                to = to_secs,
                "clock is off from {source}; not set ([clock] set_system_clock is off)"
            );
            return false;
        }
        let direction = if to_secs >= from {
            "behind"
        } else {
            "ahead of"
        };
        match set_system_clock(to_secs, to.nanosecond()) {
            Ok(()) => {
                tracing::warn!(from, to = to_secs, "clock was {direction} {source}: set");
                self.keep_floor();
                true
            }
            Err(e) => {
                tracing::error!(from, to = to_secs, "cannot set the clock to {source}: {e}");
                false
            }
        }
    }
}

fn set_system_clock(unix: i64, nanos: u32) -> std::io::Result<()> {
    let time = libc::timespec {
        tv_sec: unix as libc::time_t,
        tv_nsec: nanos as libc::c_long,
    };
    // SAFETY: `time` is a valid timespec that outlives the call.
    if unsafe { libc::clock_settime(libc::CLOCK_REALTIME, &time) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Unix seconds of an RFC 9110 IMF-fixdate (`Wed, 02 Dec 2026 02:14:03 GMT`), the form
/// every current server sends.
fn parse_http_date(date: &str) -> Option<i64> {
    let format = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    time::PrimitiveDateTime::parse(date.trim(), &format)
        .ok()
        .map(|t| t.assume_utc().unix_timestamp())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_dates_parse_and_junk_does_not() {
        assert_eq!(
            parse_http_date("Wed, 02 Dec 2026 02:14:03 GMT"),
            Some(1_796_177_643)
        );
        assert_eq!(parse_http_date("yesterday"), None);
        assert_eq!(parse_http_date("Wed, 02 Dec 2026 02:14:03 CET"), None);
    }

    #[test]
    fn the_floor_is_the_higher_of_build_time_and_the_kept_time_and_bounds_expiry_checks() {
        let dir = tempfile::tempdir().unwrap();
        let far = OffsetDateTime::now_utc().unix_timestamp() + 86_400 * 365;
        let config = ClockConfig {
            floor: 1_700_000_000,
            ..ClockConfig::default()
        };
        let clock = Clock::new(&config, dir.path());
        assert_eq!(clock.floor(), 1_700_000_000);
        std::fs::write(dir.path().join(FLOOR_FILE), far.to_string()).unwrap();
        assert_eq!(clock.floor(), far);
        // The system clock is behind the kept floor: expiry checks use the floor.
        assert_eq!(clock.trusted_now().unix_timestamp(), far);
        // A garbage floor file falls back to the build time, never below it.
        std::fs::write(dir.path().join(FLOOR_FILE), "garbage").unwrap();
        assert_eq!(clock.floor(), 1_700_000_000);
    }

    #[test]
    fn keeping_the_floor_never_lowers_it() {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::new(&ClockConfig::default(), dir.path());
        clock.keep_floor();
        let kept = clock.floor();
        assert!(kept >= OffsetDateTime::now_utc().unix_timestamp() - 5);
        // Within the hour nothing is rewritten.
        std::fs::write(dir.path().join(FLOOR_FILE), (kept + 100).to_string()).unwrap();
        clock.keep_floor();
        assert_eq!(clock.floor(), kept + 100);
    }
}
