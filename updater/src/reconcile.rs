//! What happened while cairnd was not running? Derived, never assumed (INVARIANTS.md 9),
//! from three facts: the boot state, the slot the kernel booted, and cairnd's own state.
//! Pure: returns the new states and what to do next; the caller persists and acts.

use time::OffsetDateTime;

use crate::bootstate::{BootState, SlotId};
use crate::slot::BootFacts;
use crate::state::{DeviceState, Phase};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Nothing to decide.
    Idle,
    /// `slot` is on trial: run its health checks, then commit or roll back.
    CheckTrial(SlotId),
}

#[derive(Debug, Clone)]
pub struct Reconciled {
    pub state: DeviceState,
    /// `Some` when the boot state must be rewritten (persist it before `state`).
    pub boot: Option<BootState>,
    /// Trust roots that a commit finished here makes the device's (store them with
    /// `state`, as a commit does).
    pub committed_roots: Option<serde_json::Value>,
    pub next: Next,
}

/// `max_trial_boots` is how many trial boots an update gets when they end without a
/// health verdict (`[health] trial_boots`).
pub fn reconcile(
    state: &DeviceState,
    boot: &BootState,
    facts: &BootFacts,
    now: OffsetDateTime,
    max_trial_boots: u32,
) -> Reconciled {
    let mut state = state.clone();
    let mut new_boot = boot.clone();
    let mut next = Next::Idle;
    let mut committed_roots = None;
    match state.phase.clone() {
        Phase::Installing {
            slot,
            version,
            security_version,
            boot_id,
        } => {
            // cairnd arms the trial (puts the slot first) only after every image was
            // verified, and saves its own state just after. So "armed" tells whether the
            // crash came before or after the write was complete.
            let armed = boot.order.first() == Some(&slot);
            if facts.slot == slot {
                // Armed, then the power went before cairnd saved "installed": finish
                // that step (slot record, `installed` report, so the server hears
                // `rebooting` before `committed`), then the trial starts.
                state.install_armed_unsaved(now, slot, &version, security_version, &boot_id);
                state.trial_started(now);
                next = Next::CheckTrial(slot);
            } else if armed && facts.boot_id == boot_id {
                state.install_armed_unsaved(now, slot, &version, security_version, &boot_id);
            } else if armed {
                state.install_armed_unsaved(now, slot, &version, security_version, &boot_id);
                let reason = did_not_boot(slot, facts);
                no_verdict(
                    &mut state,
                    &mut new_boot,
                    facts,
                    now,
                    max_trial_boots,
                    &reason,
                );
            } else {
                // Crash or power cut mid-write: the slot was unbootable before the first
                // byte (INVARIANTS.md 2); keep it so and say what happened.
                new_boot.reject(slot);
                state.install_interrupted(
                    now,
                    Some(&version),
                    &format!("install into slot {slot} was interrupted (crash or power loss)"),
                );
            }
        }
        Phase::InstalledPending { slot, boot_id, .. } if boot_id == facts.boot_id => {
            let _ = slot; // same boot: the reboot has not happened yet
        }
        Phase::InstalledPending { slot, .. } if facts.slot == slot => {
            state.trial_started(now);
            next = Next::CheckTrial(slot);
        }
        Phase::InstalledPending { slot, .. } => {
            let reason = did_not_boot(slot, facts);
            no_verdict(
                &mut state,
                &mut new_boot,
                facts,
                now,
                max_trial_boots,
                &reason,
            );
        }
        Phase::TrialBoot { slot, .. } if facts.slot == slot && boot.committed == slot => {
            // Power cut between the boot-state commit and the state file: finish it,
            // trust roots included (the bundle verified and committed).
            committed_roots = state.committed(now);
        }
        Phase::TrialBoot { slot, .. } if facts.slot == slot => next = Next::CheckTrial(slot),
        Phase::TrialBoot {
            slot,
            checks_started,
            ..
        } => {
            let reason = interrupted_after_boot(slot, checks_started, facts);
            no_verdict(
                &mut state,
                &mut new_boot,
                facts,
                now,
                max_trial_boots,
                &reason,
            );
        }
        Phase::Committed | Phase::RolledBack { .. } | Phase::Failed { .. } => {
            settle(&mut state, boot, facts, now, &mut next);
        }
    }
    if facts.recovery || boot.recovery {
        state.recovery_booted(now, facts.slot, boot.committed);
    }
    // Whatever became of an update, the committed slot has just booted: give it back its
    // tries, so interrupted installs never wear it down toward a recovery boot.
    if next == Next::Idle && facts.slot == new_boot.committed {
        new_boot.refresh_committed();
    }
    Reconciled {
        boot: (new_boot != *boot).then_some(new_boot),
        state,
        committed_roots,
        next,
    }
}

/// Why a trial armed for `slot` ended before cairnd ran in it: nothing on disk says its
/// userspace came up (the kernel, the initramfs or the root never got as far as cairnd).
fn did_not_boot(slot: SlotId, facts: &BootFacts) -> String {
    format!(
        "slot {slot} did not boot (its userspace never came up); the bootloader fell back \
         to slot {}",
        facts.slot
    )
}

/// Why a trial of `slot` ended after cairnd ran in it (the saved `TrialBoot` phase is
/// the record that its userspace came up): the release booted, and something cut the
/// trial short before a verdict.
fn interrupted_after_boot(slot: SlotId, checks_started: bool, facts: &BootFacts) -> String {
    let when = if checks_started {
        "power cut, reset or hang during checks"
    } else {
        "power cut, reset or hang after userspace came up, before the checks started"
    };
    format!(
        "trial of slot {slot} interrupted after boot ({when}); the bootloader fell back to \
         slot {}",
        facts.slot
    )
}

/// The bootloader fell back from a trial that reached no verdict: try it again while
/// trial boots are left (armed again, it boots at the next reboot), else reject it.
fn no_verdict(
    state: &mut DeviceState,
    boot: &mut BootState,
    facts: &BootFacts,
    now: OffsetDateTime,
    max_trial_boots: u32,
    reason: &str,
) {
    let slot = match state.phase {
        Phase::InstalledPending { slot, .. } | Phase::TrialBoot { slot, .. } => slot,
        _ => return,
    };
    if state.trial_ended_without_verdict(now, &facts.boot_id, max_trial_boots, reason) {
        boot.arm_trial(slot);
    } else {
        boot.reject(slot);
    }
}

/// No update in flight. Normally the committed slot booted and nothing changes. If the
/// bootloader fell back to the other slot (the committed one failed to boot), that slot
/// held a verified image: check it and commit it.
fn settle(
    state: &mut DeviceState,
    boot: &BootState,
    facts: &BootFacts,
    now: OffsetDateTime,
    next: &mut Next,
) {
    if facts.slot == boot.committed {
        return;
    }
    state.fallback_booted(now, facts.slot, boot.committed);
    *next = Next::CheckTrial(facts.slot);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{ReportStatus, SlotRecord};

    fn facts(slot: SlotId, boot_id: &str) -> BootFacts {
        BootFacts {
            slot,
            recovery: false,
            boot_id: boot_id.into(),
        }
    }

    fn now() -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }

    fn installed_b() -> (DeviceState, BootState) {
        let mut state = DeviceState::first_boot(SlotId::A, Some("1.0.0".into()));
        let mut boot = BootState::factory();
        boot.prepare_install(SlotId::B);
        state.begin_install(now(), SlotId::B, "2.0.0", "boot-1", 2, None);
        boot.arm_trial(SlotId::B);
        let record = SlotRecord {
            version: Some("2.0.0".into()),
            security_version: 2,
            ..Default::default()
        };
        state.install_done(now(), SlotId::B, record, "boot-1", None);
        (state, boot)
    }

    #[test]
    fn interrupted_install_stops_and_slot_stays_unbootable_but_is_not_a_verdict() {
        let mut state = DeviceState::first_boot(SlotId::A, None);
        let mut boot = BootState::factory();
        boot.prepare_install(SlotId::B);
        boot.tries_a = 1; // U-Boot spent tries on the boots the power cuts ended
        state.begin_install(now(), SlotId::B, "2.0.0", "boot-1", 2, None);
        let r = reconcile(&state, &boot, &facts(SlotId::A, "boot-2"), now(), 3);
        assert!(matches!(r.state.phase, Phase::Failed { .. }));
        let after = r.boot.clone().unwrap_or(boot);
        assert!(!after.is_bootable(SlotId::B));
        // The committed slot that booted gets its tries back.
        assert_eq!(after.tries(SlotId::A), 3);
        // A power cut says nothing about the update: the server is not told it failed,
        // so its deployment stays live and the device tries again.
        assert!(r
            .state
            .outbox
            .iter()
            .all(|rep| rep.status != ReportStatus::Failed));
        assert_eq!(r.state.history.last().unwrap().event, "install-interrupted");
    }

    #[test]
    fn crash_after_arming_but_before_saving_is_completed_not_failed() {
        let mut state = DeviceState::first_boot(SlotId::A, None);
        let mut boot = BootState::factory();
        state.begin_install(now(), SlotId::B, "2.0.0", "boot-1", 2, None);
        boot.arm_trial(SlotId::B);
        // Same boot (daemon restarted): the install is complete, waiting for the reboot.
        let r = reconcile(&state, &boot, &facts(SlotId::A, "boot-1"), now(), 3);
        assert!(
            matches!(r.state.phase, Phase::InstalledPending { .. }),
            "{:?}",
            r.state.phase
        );
        // Rebooted into it: the trial starts, knowing what B holds, and the server will
        // hear `installed` (rebooting) before any `committed`.
        let r = reconcile(&state, &boot, &facts(SlotId::B, "boot-2"), now(), 3);
        assert_eq!(r.next, Next::CheckTrial(SlotId::B));
        assert!(matches!(r.state.phase, Phase::TrialBoot { .. }));
        assert_eq!(r.state.slot(SlotId::B).version.as_deref(), Some("2.0.0"));
        let sent: Vec<&str> = r.state.outbox.iter().map(|x| x.status.as_str()).collect();
        assert_eq!(sent, ["installing", "installed", "rebooted"]);
    }

    #[test]
    fn restart_before_the_reboot_changes_nothing() {
        let (state, boot) = installed_b();
        let r = reconcile(&state, &boot, &facts(SlotId::A, "boot-1"), now(), 3);
        assert!(matches!(r.state.phase, Phase::InstalledPending { .. }));
        assert!(r.boot.is_none());
        assert_eq!(r.next, Next::Idle);
    }

    #[test]
    fn booting_the_new_slot_starts_the_trial() {
        let (state, mut boot) = installed_b();
        boot.tries_b = 0; // U-Boot decremented
        let r = reconcile(&state, &boot, &facts(SlotId::B, "boot-2"), now(), 3);
        assert_eq!(r.next, Next::CheckTrial(SlotId::B));
        assert!(matches!(r.state.phase, Phase::TrialBoot { .. }));
        assert!(
            r.state
                .outbox
                .iter()
                .all(|rep| rep.status != ReportStatus::Committed),
            "success is reported only on commit"
        );
    }

    /// What U-Boot does when B's trial boot ends without a verdict: it spends B's one
    /// try, and at the next power-on falls back to A; cairnd then starts on A.
    fn fall_back(state: &DeviceState, boot: &BootState, boot_id: &str) -> Reconciled {
        let mut boot = boot.clone();
        assert_eq!(boot.take_try().slot, SlotId::B);
        assert_eq!(boot.take_try().slot, SlotId::A);
        reconcile(state, &boot, &facts(SlotId::A, boot_id), now(), 3)
    }

    #[test]
    fn a_trial_cut_before_its_verdict_is_retried_not_declined() {
        let (state, boot) = installed_b();
        // B booted, its checks were running, then the power went.
        let on_trial = reconcile(&state, &boot, &facts(SlotId::B, "boot-2"), now(), 3);
        assert_eq!(on_trial.next, Next::CheckTrial(SlotId::B));
        let r = fall_back(&on_trial.state, &boot, "boot-3");
        assert!(
            matches!(
                r.state.phase,
                Phase::InstalledPending { slot: SlotId::B, trial_boots: 1, ref boot_id, .. }
                    if boot_id == "boot-3"
            ),
            "{:?}",
            r.state.phase
        );
        assert!(r.state.failed_versions.is_empty());
        assert!(r
            .state
            .outbox
            .iter()
            .all(|x| x.status != ReportStatus::RolledBack));
        assert_eq!(r.state.history.last().unwrap().event, "trial-retry");
        // Armed again: B goes first with its one try; A keeps its tries as the fallback.
        let armed = r.boot.expect("boot state re-armed");
        assert_eq!((armed.order[0], armed.tries_b), (SlotId::B, 1));
        assert!(armed.is_bootable(SlotId::A));
        // The next reboot is the second trial, which can commit as usual.
        let second = reconcile(&r.state, &armed, &facts(SlotId::B, "boot-4"), now(), 3);
        assert_eq!(second.next, Next::CheckTrial(SlotId::B));
        assert!(matches!(
            second.state.phase,
            Phase::TrialBoot { trial_boots: 2, .. }
        ));
    }

    #[test]
    fn trial_boots_without_a_verdict_decline_the_release_after_the_last_one() {
        let (mut state, mut boot) = installed_b();
        for attempt in 1..=3 {
            // B never reaches cairnd (a kernel that does not boot).
            let r = fall_back(&state, &boot, &format!("boot-{}", attempt + 1));
            state = r.state;
            boot = r.boot.expect("boot state changed");
            if attempt < 3 {
                assert!(matches!(state.phase, Phase::InstalledPending { .. }));
                assert!(boot.is_bootable(SlotId::B));
            }
        }
        let Phase::RolledBack { reason, .. } = &state.phase else {
            panic!("{:?}", state.phase)
        };
        assert!(
            reason.contains("did not boot") && reason.contains("3 of 3"),
            "{reason}"
        );
        assert!(state.failed_versions.contains("2.0.0"));
        assert_eq!(
            state.check_can_install("2.0.0", false).unwrap_err(),
            crate::state::Refusal::PreviouslyFailed("2.0.0".into())
        );
        assert_eq!((boot.order[0], boot.tries_b), (SlotId::A, 0));
    }

    /// The reason a trial's last fallback is reported with (one trial boot allowed, so
    /// the fallback is the verdict), after the trial got as far as `progress` took it.
    fn reported_reason(progress: impl FnOnce(&mut DeviceState)) -> String {
        let (mut state, boot) = installed_b();
        progress(&mut state);
        let mut after = boot.clone();
        assert_eq!(after.take_try().slot, SlotId::B);
        assert_eq!(after.take_try().slot, SlotId::A);
        let r = reconcile(&state, &after, &facts(SlotId::A, "boot-3"), now(), 1);
        let Phase::RolledBack { reason, .. } = &r.state.phase else {
            panic!("{:?}", r.state.phase)
        };
        let report = r
            .state
            .outbox
            .iter()
            .find(|x| x.status == ReportStatus::RolledBack)
            .expect("the rollback is reported");
        assert_eq!(report.detail.as_deref(), Some(reason.as_str()));
        reason.clone()
    }

    #[test]
    fn a_fallback_before_the_kernel_says_the_slot_did_not_boot() {
        // Armed, then U-Boot fell back before anything of B ran: no TrialBoot on disk.
        let reason = reported_reason(|_| {});
        assert!(reason.contains("slot B did not boot"), "{reason}");
        assert!(!reason.contains("interrupted"), "{reason}");
    }

    #[test]
    fn a_fallback_after_userspace_came_up_says_the_trial_was_interrupted_after_boot() {
        // cairnd ran in B and saved the trial ("userspace up"), then the power went
        // before the first check.
        let reason = reported_reason(|state| state.trial_started(now()));
        assert!(
            reason.contains("trial of slot B interrupted after boot")
                && reason.contains("before the checks started"),
            "{reason}"
        );
        assert!(!reason.contains("did not boot"), "{reason}");
    }

    #[test]
    fn a_fallback_during_the_checks_says_so() {
        let reason = reported_reason(|state| {
            state.trial_started(now());
            state.health_checks_started(now());
        });
        assert!(
            reason.contains(
                "trial of slot B interrupted after boot (power cut, reset or hang during checks)"
            ),
            "{reason}"
        );
        assert!(!reason.contains("did not boot"), "{reason}");
    }

    #[test]
    fn a_trial_saved_before_checks_were_recorded_reads_as_not_started() {
        let saved = r#"{"phase":"trial-boot","slot":"B","version":"2.0.0","security_version":2,"trial_boots":1}"#;
        let phase: Phase = serde_json::from_str(saved).unwrap();
        assert!(matches!(
            phase,
            Phase::TrialBoot {
                checks_started: false,
                ..
            }
        ));
    }

    #[test]
    fn power_cut_between_boot_state_commit_and_state_file_finishes_the_commit() {
        let (mut state, mut boot) = installed_b();
        state.pending_root = Some(serde_json::json!([{"rotation": "v2"}]));
        state.trial_started(now());
        boot.commit(SlotId::B);
        let r = reconcile(&state, &boot, &facts(SlotId::B, "boot-3"), now(), 3);
        assert_eq!(r.state.phase, Phase::Committed);
        assert_eq!(r.state.security_floor, 2);
        assert_eq!(
            r.committed_roots,
            Some(serde_json::json!([{"rotation": "v2"}])),
            "the bundle's verified roots are kept, not dropped with the finished commit"
        );
        assert!(r
            .state
            .outbox
            .iter()
            .any(|rep| rep.status == ReportStatus::Committed));
    }

    #[test]
    fn committed_slot_failing_to_boot_falls_back_and_is_rechecked() {
        let state = DeviceState::first_boot(SlotId::A, Some("1.0.0".into()));
        let mut boot = BootState::factory();
        boot.tries_b = 3; // B holds a good copy
        boot.tries_a = 0; // A used its tries (e.g. dm-verity caught corruption)
        let r = reconcile(&state, &boot, &facts(SlotId::B, "boot-9"), now(), 3);
        assert_eq!(r.next, Next::CheckTrial(SlotId::B));
        assert!(r.state.history.iter().any(|h| h.event == "fallback"));
    }
}
