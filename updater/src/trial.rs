//! Deciding a trial: commit the slot after its health checks pass, or reject it and go
//! back to the committed slot. Also the operator's manual overrides.

use std::time::Duration;

use time::OffsetDateTime;

use crate::bootstate::SlotId;
use crate::context::{commit_roots, Context, ContextError};
use crate::health;
use crate::reconcile::{reconcile, Next};
use crate::state::Phase;

/// What boot-time reconciliation and a trial decision concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing was pending.
    Idle,
    Committed {
        slot: SlotId,
        version: String,
    },
    /// The trial failed; the caller reboots into the committed slot.
    RolledBack {
        slot: SlotId,
        reason: String,
    },
}

/// Startup: reconcile what happened while cairnd was down ([`record_boot`]), then
/// decide any trial ([`decide`]).
pub fn on_boot(ctx: &mut Context) -> Result<Verdict, ContextError> {
    let next = record_boot(ctx)?;
    decide(ctx, next)
}

/// The first half of [`on_boot`], and the first thing cairnd does after it takes the
/// watchdog: reconcile and save. Fast (two small files), so that a trial boot's
/// `TrialBoot` phase, the record that its userspace came up, is on disk before anything
/// slow (the TPM, health checks) gives a power cut the chance to make the fallback look
/// like a slot that did not boot.
pub fn record_boot(ctx: &mut Context) -> Result<Next, ContextError> {
    let facts = ctx.boot_facts()?;
    let boot = ctx.boot_state()?;
    let r = reconcile(
        &ctx.state,
        &boot,
        &facts,
        OffsetDateTime::now_utc(),
        ctx.config.health.trial_boots.max(1),
    );
    let roots_path = ctx.committed_roots_path();
    ctx.apply(r.boot.as_ref(), |state| {
        *state = r.state;
        match r.committed_roots {
            Some(roots) => commit_roots(&roots_path, roots),
            None => Ok(()),
        }
    })?;
    Ok(r.next)
}

/// The second half of [`on_boot`]: run the trial [`record_boot`] found, if any.
pub fn decide(ctx: &mut Context, next: Next) -> Result<Verdict, ContextError> {
    match next {
        Next::Idle => Ok(Verdict::Idle),
        Next::CheckTrial(slot) => decide_trial(ctx, slot),
    }
}

/// Runs the image's health checks on the trial slot and commits or rejects it.
pub fn decide_trial(ctx: &mut Context, slot: SlotId) -> Result<Verdict, ContextError> {
    let checks = match health::load_checks(&ctx.config.health_dir) {
        Ok(checks) => checks,
        Err(e) => return reject(ctx, slot, &e.to_string()),
    };
    tracing::info!(%slot, checks = checks.len(), "trial boot: running health checks");
    // Saved first, so a fallback during the checks is reported as what it was.
    ctx.apply(None, |state| {
        state.health_checks_started(OffsetDateTime::now_utc());
        Ok(())
    })?;
    let deadline = Duration::from_secs(ctx.config.health.deadline_secs);
    let interval = Duration::from_secs(ctx.config.health.interval_secs.max(1));
    match health::run_until(&checks, deadline, interval) {
        Ok(_) => commit(ctx, slot),
        Err(e) => reject(ctx, slot, &e.to_string()),
    }
}

/// Commit: boot state first (full tries, first in order, committed), then cairnd's state
/// (floor, history, report) and the trust roots the bundle carried. A power cut between
/// the two is finished by `reconcile`.
pub fn commit(ctx: &mut Context, slot: SlotId) -> Result<Verdict, ContextError> {
    let mut boot = ctx.boot_state()?;
    boot.commit(slot);
    let version = match &ctx.state.phase {
        Phase::TrialBoot { version, .. } => version.clone(),
        _ => ctx.state.slot(slot).version.unwrap_or_default(),
    };
    let roots_path = ctx.committed_roots_path();
    ctx.apply(Some(&boot), |state| {
        match state.committed(OffsetDateTime::now_utc()) {
            Some(roots) => commit_roots(&roots_path, roots),
            None => Ok(()),
        }
    })?;
    tracing::info!(%slot, %version, "committed");
    Ok(Verdict::Committed { slot, version })
}

/// Reject: the slot can no longer boot and the committed slot goes first, on disk,
/// before anyone reboots (INVARIANTS.md 5).
pub fn reject(ctx: &mut Context, slot: SlotId, reason: &str) -> Result<Verdict, ContextError> {
    let mut boot = ctx.boot_state()?;
    boot.reject(slot);
    ctx.apply(Some(&boot), |state| {
        state.rolled_back(OffsetDateTime::now_utc(), reason);
        Ok(())
    })?;
    tracing::warn!(%slot, %reason, "trial rejected; rolling back");
    Ok(Verdict::RolledBack {
        slot,
        reason: reason.to_string(),
    })
}

/// `cairn mark-good`: commit a trial without waiting for the checks, or refresh the
/// committed slot's tries.
pub fn mark_good(ctx: &mut Context) -> Result<Verdict, ContextError> {
    let facts = ctx.boot_facts()?;
    if let Phase::TrialBoot { slot, .. } = ctx.state.phase {
        if slot == facts.slot {
            return commit(ctx, slot);
        }
    }
    let mut boot = ctx.boot_state()?;
    if boot.committed == facts.slot {
        boot.refresh_committed();
        ctx.apply(Some(&boot), |_| Ok(()))?;
    }
    Ok(Verdict::Idle)
}

/// `cairn mark-bad`: reject the running trial, or, on the committed slot, drop a pending
/// install. The caller reboots when a trial was rejected.
pub fn mark_bad(ctx: &mut Context) -> Result<Verdict, ContextError> {
    match ctx.state.phase.clone() {
        Phase::TrialBoot { slot, .. } => reject(ctx, slot, "marked bad by the operator"),
        Phase::InstalledPending { slot, .. } => {
            reject(ctx, slot, "pending update marked bad before its reboot")
        }
        _ => Ok(Verdict::Idle),
    }
}

/// `cairn rollback`: go back to the other slot's image. A pending or trial update is
/// rejected; on a committed device the other slot (the previous version, kept as the
/// fallback) is armed for a trial boot so it must pass its checks like any update.
pub fn rollback(ctx: &mut Context) -> Result<Verdict, RollbackError> {
    match ctx.state.phase.clone() {
        Phase::TrialBoot { slot, .. } | Phase::InstalledPending { slot, .. } => {
            Ok(reject(ctx, slot, "rolled back by the operator")?)
        }
        _ => {
            let facts = ctx.boot_facts().map_err(ContextError::from)?;
            let other = facts.slot.other();
            let mut boot = ctx.boot_state()?;
            if !boot.is_bootable(other) {
                return Err(RollbackError::NothingToRollBackTo(other));
            }
            boot.arm_trial(other);
            ctx.apply(Some(&boot), |state| {
                state.rollback_requested(OffsetDateTime::now_utc(), other, &facts.boot_id);
                Ok(())
            })?;
            Ok(Verdict::Idle)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    #[error("slot {0} holds no bootable image to roll back to")]
    NothingToRollBackTo(SlotId),
    #[error(transparent)]
    Context(#[from] ContextError),
}

impl From<crate::bootstate::BootStateError> for RollbackError {
    fn from(e: crate::bootstate::BootStateError) -> RollbackError {
        RollbackError::Context(e.into())
    }
}
