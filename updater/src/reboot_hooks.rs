//! The node's drain and uncordon hooks around a reboot into an update (`[reboot] before`
//! and `after_commit` in system.toml), so that a cluster loses one node at a time and
//! gets it back.
//!
//! - **Drain** ([`drain`]): before every reboot into an installed update, and only then
//!   (a rejected trial reboots at once, back to the committed slot, without it). A
//!   failure postpones the reboot; cairnd tries again after [`backoff`] (10 s, doubling,
//!   at most 10 min).
//! - **Uncordon** ([`uncordon`]): owed from the moment the drain succeeded (persisted
//!   before the reboot), and again when a trial boot starts (persisted before its
//!   commit), so no crash or power cut between the reboot and the hook loses it. Run once
//!   the device is settled: the booted slot is the committed one (the update committed,
//!   or a rollback brought the device back) and no update is waiting for its reboot.
//!   Owed until it succeeds once, with the same backoff.
//!
//! `cairn status` is another process: what is waiting lives in
//! `<data_dir>/reboot-hooks.json` ([`HookStore`], written atomically), and
//! [`waiting_reason`] is the one line ("waiting for drain: ...") for status and server.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::bootstate::SlotId;
use crate::context::Context;
use crate::reboot::{HookConfig, RebootConfig};
use crate::state::json_file::JsonFile;
use crate::state::Phase;

/// The wait after a hook's first failure; it doubles with each further one.
pub const BACKOFF_BASE: Duration = Duration::from_secs(10);
/// The longest wait between two tries.
pub const BACKOFF_MAX: Duration = Duration::from_secs(600);
const STATUS_FILE: &str = "reboot-hooks.json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Hook {
    Before,
    AfterCommit,
}

impl Hook {
    /// The key in `[reboot]`.
    pub fn key(self) -> &'static str {
        match self {
            Hook::Before => "before",
            Hook::AfterCommit => "after_commit",
        }
    }

    /// What the device waits for while the hook has not succeeded.
    pub fn waiting_for(self) -> &'static str {
        match self {
            Hook::Before => "drain",
            Hook::AfterCommit => "uncordon",
        }
    }

    pub fn config(self, reboot: &RebootConfig) -> Option<&HookConfig> {
        match self {
            Hook::Before => reboot.before.as_ref(),
            Hook::AfterCommit => reboot.after_commit.as_ref(),
        }
    }
}

/// `reboot-hooks.json`: the hooks not yet done.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HookStatus {
    /// The drain hook failed for the installed update `version`.
    #[serde(default)]
    pub before: Option<Pending>,
    /// The uncordon hook is owed (tried or not) until it succeeds once.
    #[serde(default)]
    pub after_commit: Option<Pending>,
}

/// Something owed for an update and tried with backoff until it succeeds: a hook, or the
/// container preload (`containers.rs`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    /// The update it is for.
    pub version: String,
    /// Failed tries so far.
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Unix seconds; none: at once.
    pub next_try: Option<i64>,
}

impl Pending {
    pub fn owed(version: &str) -> Pending {
        Pending {
            version: version.to_string(),
            attempts: 0,
            last_error: None,
            next_try: None,
        }
    }

    /// Records a failed try and when to try next.
    pub fn failed(&mut self, error: String, now: OffsetDateTime) {
        self.attempts = self.attempts.saturating_add(1);
        self.last_error = Some(error);
        let wait = backoff(self.attempts).as_secs() as i64;
        self.next_try = Some(now.unix_timestamp().saturating_add(wait));
    }

    /// Seconds until the next try; 0: now. Never more than [`BACKOFF_MAX`], so a clock
    /// stepped back cannot postpone a hook for longer.
    pub fn wait_left(&self, now: OffsetDateTime) -> u64 {
        self.next_try.map_or(0, |t| {
            t.saturating_sub(now.unix_timestamp())
                .clamp(0, BACKOFF_MAX.as_secs() as i64) as u64
        })
    }
}

/// The wait before the next try after `failures` failed ones: none before the first,
/// [`BACKOFF_BASE`] after it, doubling up to [`BACKOFF_MAX`].
pub fn backoff(failures: u32) -> Duration {
    backoff_from(failures, BACKOFF_BASE, BACKOFF_MAX)
}

/// [`backoff`] with its constants given.
pub fn backoff_from(failures: u32, base: Duration, max: Duration) -> Duration {
    let Some(doublings) = failures.checked_sub(1) else {
        return Duration::ZERO;
    };
    let factor = 1u32.checked_shl(doublings).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

#[derive(Debug, thiserror::Error)]
pub enum HooksError {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Where [`HookStatus`] is kept.
pub struct HookStore(JsonFile<HookStatus>);

impl HookStore {
    pub fn new(data_dir: &Path) -> HookStore {
        HookStore(JsonFile::new(data_dir.join(STATUS_FILE)))
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }

    /// Nothing waiting when the file is absent (or unreadable: logged).
    pub fn load(&self) -> HookStatus {
        self.0.load().unwrap_or_default()
    }

    pub fn save(&self, status: &HookStatus) -> Result<(), HooksError> {
        self.0.save(status).map_err(|source| HooksError::Io {
            path: self.path().display().to_string(),
            source,
        })
    }
}

/// Whether cairnd waits out the backoff (its loop) or tries at once (an operator's
/// command, a start of cairnd).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backoff {
    Respect,
    Ignore,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Drain {
    /// Drained (or no drain hook): reboot.
    Done,
    /// The last failure's backoff is not over.
    Waiting,
    /// The hook failed just now; the reboot is postponed.
    Failed(String),
}

/// Before a reboot into the installed update: runs the drain hook, if one is configured,
/// and records the uncordon hook as owed (before the reboot, so nothing between it and
/// the hook's turn loses it). Not an installed update waiting: [`Drain::Done`], nothing
/// run. A failure is recorded with its backoff and logged.
pub fn drain(ctx: &Context, now: OffsetDateTime, backoff: Backoff) -> Result<Drain, HooksError> {
    let Phase::InstalledPending { slot, version, .. } = &ctx.state.phase else {
        return Ok(Drain::Done);
    };
    let reboot = &ctx.config.reboot;
    let store = HookStore::new(&ctx.config.data_dir);
    let mut status = store.load();
    let before = status.clone();
    if let Some(hook) = &reboot.before {
        let mut pending = status
            .before
            .take()
            .filter(|p| p.version == *version)
            .unwrap_or_else(|| Pending::owed(version));
        if backoff == Backoff::Respect && pending.wait_left(now) > 0 {
            return Ok(Drain::Waiting);
        }
        let env = hook_env(Hook::Before, version, *slot, pending.attempts + 1, None);
        if let Err(e) = run(hook, &env) {
            pending.failed(e.to_string(), now);
            tracing::warn!(
                attempt = pending.attempts,
                retry_in_secs = pending.wait_left(now),
                output = e.output(),
                "reboot into {version} postponed, waiting for drain: {e}"
            );
            status.before = Some(pending);
            store.save(&status)?;
            return Ok(Drain::Failed(e.to_string()));
        }
        tracing::info!(%version, "drain hook done");
    }
    status.before = None;
    if reboot.before.is_some() || reboot.after_commit.is_some() {
        owe(&mut status, version);
    }
    if status != before {
        store.save(&status)?;
    }
    Ok(Drain::Done)
}

/// On a trial boot, before its verdict: the uncordon hook is owed once the trial is
/// decided (the drain may have run under a reboot this image's cairnd did not make).
pub fn owe_uncordon(ctx: &Context, version: &str) -> Result<(), HooksError> {
    if ctx.config.reboot.after_commit.is_none() {
        return Ok(());
    }
    let store = HookStore::new(&ctx.config.data_dir);
    let mut status = store.load();
    let before = status.clone();
    owe(&mut status, version);
    if status != before {
        store.save(&status)?;
    }
    Ok(())
}

fn owe(status: &mut HookStatus, version: &str) {
    match &mut status.after_commit {
        Some(owed) => owed.version = version.to_string(),
        None => status.after_commit = Some(Pending::owed(version)),
    }
}

/// Runs the owed uncordon hook when the device is settled (booted slot committed, no
/// update waiting for its reboot). Success clears the debt; failure records its backoff.
/// Owed while this image configures no uncordon hook: the debt is dropped.
pub fn uncordon(ctx: &Context, now: OffsetDateTime, backoff: Backoff) -> Result<(), HooksError> {
    let store = HookStore::new(&ctx.config.data_dir);
    let mut status = store.load();
    let Some(mut owed) = status.after_commit.take() else {
        return Ok(());
    };
    let Some(committed) = settled(ctx) else {
        return Ok(());
    };
    let Some(hook) = &ctx.config.reboot.after_commit else {
        tracing::info!("no [reboot] after_commit hook in this image: no uncordon owed");
        return store.save(&status);
    };
    if backoff == Backoff::Respect && owed.wait_left(now) > 0 {
        return Ok(());
    }
    let outcome = match ctx.state.phase {
        Phase::RolledBack { .. } => "rolled-back",
        _ => "committed",
    };
    let env = hook_env(
        Hook::AfterCommit,
        &owed.version,
        committed,
        owed.attempts + 1,
        Some(outcome),
    );
    match run(hook, &env) {
        Ok(()) => tracing::info!(version = %owed.version, "uncordon hook done"),
        Err(e) => {
            owed.failed(e.to_string(), now);
            tracing::warn!(
                attempt = owed.attempts,
                retry_in_secs = owed.wait_left(now),
                output = e.output(),
                "waiting for uncordon: {e}"
            );
            status.after_commit = Some(owed);
        }
    }
    store.save(&status)
}

/// The committed slot when it is the one running and no update waits for a reboot.
fn settled(ctx: &Context) -> Option<SlotId> {
    if matches!(
        ctx.state.phase,
        Phase::InstalledPending { .. } | Phase::TrialBoot { .. }
    ) {
        return None;
    }
    let booted = ctx.boot_facts().ok()?.slot;
    let committed = ctx.boot_state().ok()?.committed;
    (booted == committed).then_some(committed)
}

fn run(hook: &HookConfig, env: &[(&str, String)]) -> Result<(), crate::command::CommandError> {
    crate::command::run(crate::command::Run {
        what: "hook",
        argv: &hook.command,
        timeout: Duration::from_secs(hook.timeout_secs.max(1)),
        env,
        stdin: None,
    })
}

/// What a hook is told: which hook, the update's version, the slot (the update's for
/// the drain, the committed one for the uncordon), the try, and how the update ended.
fn hook_env(
    hook: Hook,
    version: &str,
    slot: SlotId,
    attempt: u32,
    outcome: Option<&str>,
) -> Vec<(&'static str, String)> {
    let mut env = vec![
        ("CAIRN_HOOK", hook.key().to_string()),
        ("CAIRN_VERSION", version.to_string()),
        ("CAIRN_SLOT", slot.to_string()),
        ("CAIRN_ATTEMPT", attempt.to_string()),
    ];
    if let Some(outcome) = outcome {
        env.push(("CAIRN_OUTCOME", outcome.to_string()));
    }
    env
}

/// A hook the device is waiting for, as `cairn status --json` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Waiting {
    pub hook: Hook,
    pub command: Vec<String>,
    /// The update it is for.
    pub version: String,
    pub attempts: u32,
    pub last_error: Option<String>,
    /// Seconds to the next try; none when cairnd does not retry on its own (the reboot
    /// is not due by the policy).
    pub next_try_in_secs: Option<u64>,
    /// The one line: `waiting for drain: ... (attempt 3, next try in 40s)`.
    pub reason: String,
}

/// What the device waits for, if anything: a drain that failed for the update waiting
/// for its reboot, or an uncordon still owed once no update is pending. Pure.
pub fn waiting(
    status: &HookStatus,
    reboot: &RebootConfig,
    phase: &Phase,
    now: OffsetDateTime,
) -> Option<Waiting> {
    let (hook, pending) = match phase {
        Phase::InstalledPending { version, .. } => (
            Hook::Before,
            status.before.as_ref().filter(|p| p.version == *version)?,
        ),
        Phase::TrialBoot { .. } => return None,
        _ => (Hook::AfterCommit, status.after_commit.as_ref()?),
    };
    let config = hook.config(reboot)?;
    let retries = hook == Hook::AfterCommit || crate::reboot::due(reboot, now);
    let next_try_in_secs = retries.then(|| pending.wait_left(now));
    let detail = match (&pending.last_error, next_try_in_secs) {
        (None, _) => format!(
            "hook {} not run yet",
            config.command.first().map_or("", String::as_str)
        ),
        (Some(e), Some(0)) => format!("{e} (attempt {}, trying again now)", pending.attempts),
        (Some(e), Some(secs)) => {
            format!("{e} (attempt {}, next try in {secs}s)", pending.attempts)
        }
        (Some(e), None) => format!("{e} (attempt {})", pending.attempts),
    };
    Some(Waiting {
        hook,
        command: config.command.clone(),
        version: pending.version.clone(),
        attempts: pending.attempts,
        last_error: pending.last_error.clone(),
        next_try_in_secs,
        reason: format!("waiting for {}: {detail}", hook.waiting_for()),
    })
}

/// [`waiting`] for this device now, from its status file.
pub fn current(ctx: &Context) -> Option<Waiting> {
    let status = HookStore::new(&ctx.config.data_dir).load();
    waiting(
        &status,
        &ctx.config.reboot,
        &ctx.state.phase,
        OffsetDateTime::now_utc(),
    )
}

/// The one line for `cairn status` and the server: `waiting for drain: hook
/// /usr/lib/cairn/drain exited with 1: node busy (attempt 3, next try in 40s)`, or
/// `waiting for uncordon: ...`; `None` when no hook holds the device up.
pub fn waiting_reason(ctx: &Context) -> Option<String> {
    current(ctx).map(|w| w.reason)
}

#[cfg(test)]
mod tests {
    use super::*;
    use time::macros::datetime;

    #[test]
    fn backoff_starts_at_ten_seconds_and_doubles_up_to_ten_minutes() {
        let secs: Vec<u64> = (0..9).map(|n| backoff(n).as_secs()).collect();
        assert_eq!(secs, [0, 10, 20, 40, 80, 160, 320, 600, 600]);
        assert_eq!(backoff(u32::MAX), BACKOFF_MAX);
        let ms = Duration::from_millis;
        assert_eq!(backoff_from(3, ms(5), ms(100)), ms(20));
        assert_eq!(backoff_from(40, ms(5), ms(100)), ms(100));
    }

    fn pending(attempts: u32, next_try: i64) -> Pending {
        Pending {
            version: "2.0".into(),
            attempts,
            last_error: Some("hook /bin/drain exited with 1: busy".into()),
            next_try: Some(next_try),
        }
    }

    #[test]
    fn a_failure_schedules_the_next_try_and_a_clock_stepped_back_waits_no_longer_than_the_max() {
        let now = datetime!(2026-05-01 12:00 UTC);
        let mut p = Pending::owed("2.0");
        assert_eq!(p.wait_left(now), 0);
        for _ in 0..3 {
            p.failed("no".into(), now);
        }
        assert_eq!(p.wait_left(now), 40);
        assert_eq!(p.wait_left(now + time::Duration::seconds(41)), 0);
        assert_eq!(p.wait_left(datetime!(1970-01-01 0:00 UTC)), 600);
    }

    fn installed(version: &str) -> Phase {
        Phase::InstalledPending {
            slot: SlotId::B,
            version: version.into(),
            security_version: 1,
            boot_id: "x".into(),
            trial_boots: 0,
        }
    }

    fn hooks() -> RebootConfig {
        let hook = |p: &str| HookConfig {
            command: vec![p.into()],
            timeout_secs: 5,
        };
        RebootConfig {
            before: Some(hook("/bin/drain")),
            after_commit: Some(hook("/bin/uncordon")),
            ..RebootConfig::default()
        }
    }

    #[test]
    fn the_waiting_line_names_the_hook_the_error_the_attempt_and_the_next_try() {
        let now = OffsetDateTime::from_unix_timestamp(1000).unwrap();
        let status = HookStatus {
            before: Some(pending(3, 1040)),
            after_commit: Some(Pending::owed("2.0")),
        };
        let reason = |phase: &Phase| waiting(&status, &hooks(), phase, now).map(|w| w.reason);
        assert_eq!(
            reason(&installed("2.0")).as_deref(),
            Some("waiting for drain: hook /bin/drain exited with 1: busy (attempt 3, next try in 40s)")
        );
        // A drain that failed for another update is not this one's.
        assert_eq!(reason(&installed("3.0")), None);
        assert_eq!(
            reason(&Phase::Committed).as_deref(),
            Some("waiting for uncordon: hook /bin/uncordon not run yet")
        );
        // With the reboot on request, cairnd does not retry the drain by itself.
        let on_request = RebootConfig {
            policy: crate::reboot::RebootPolicy::OnRequest,
            ..hooks()
        };
        let w = waiting(&status, &on_request, &installed("2.0"), now).unwrap();
        assert!(w.reason.ends_with("busy (attempt 3)"), "{}", w.reason);
        // Without the hook configured nothing is waited for.
        assert_eq!(
            waiting(&status, &RebootConfig::default(), &Phase::Committed, now),
            None
        );
    }
}
