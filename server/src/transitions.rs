//! The deployment state machine: what a device's report does to its deployment.
//!
//! ```text
//! assigned → downloading → installing → rebooting ─committed─→ succeeded
//!                                                └─committed─→ attestation-pending → succeeded
//!                                                   (campaign requires attestation)  └→ attestation-failed
//! any live state ─rolled-back / failed─→ failed (with the reason)
//! assigned ─campaign aborted─→ cancelled
//! ```
//! A device ahead of the server (a check-in from the release's version, committed,
//! while the deployment is still `assigned` to `rebooting`: the server lost the reports,
//! e.g. it was restored from a backup) moves on as a `committed` report would
//! ([`device_ahead`]).
//!
//! Progress never moves backwards: a late or retried `downloading` after `installing`
//! is recorded in the history but changes nothing.

use cairn_server_api::{DeploymentState as S, ReportedState as R};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    pub next: S,
    /// Set when the deployment fails: why, for the operator.
    pub reason: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("a '{reported}' report does not fit a deployment that is {current}")]
pub struct Conflict {
    pub current: &'static str,
    pub reported: &'static str,
}

pub fn reported_name(r: R) -> &'static str {
    match r {
        R::Downloading => "downloading",
        R::Installing => "installing",
        R::Rebooting => "rebooting",
        R::Committed => "committed",
        R::RolledBack => "rolled-back",
        R::Failed => "failed",
    }
}

fn progress_rank(s: S) -> Option<u8> {
    match s {
        S::Assigned => Some(0),
        S::Downloading => Some(1),
        S::Installing => Some(2),
        S::Rebooting => Some(3),
        _ => None,
    }
}

/// A retried final report after the deployment ended the same way: acknowledged, and
/// changes nothing.
pub fn repeats_final(current: S, reported: R) -> bool {
    matches!(
        (current, reported),
        (
            S::Succeeded | S::AttestationPending | S::AttestationFailed,
            R::Committed
        ) | (S::Failed, R::RolledBack | R::Failed)
    )
}

/// The most reports kept per deployment. A device sends about six (downloading to
/// committed) and retries under the same `report_id`, which is stored once; the bound
/// stops a device that invents new ids from growing the reports and history tables.
pub const MAX_REPORTS: i64 = 32;

/// What becomes of a report under a new `report_id`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// Applied, and kept with its history entry.
    Store,
    /// A repeat of the final report ([`repeats_final`]): acknowledged as a duplicate
    /// without a row, so endless retries under new ids cost nothing.
    Acknowledge,
    /// The deployment has [`MAX_REPORTS`] already: refused, nothing kept.
    Refuse,
}

/// `stored`: the deployment's report rows before this one.
pub fn keep(current: S, reported: R, stored: i64) -> Keep {
    if repeats_final(current, reported) {
        Keep::Acknowledge
    } else if stored >= MAX_REPORTS {
        Keep::Refuse
    } else {
        Keep::Store
    }
}

/// Applies one report. `attestation_required` comes from the campaign.
pub fn apply(
    current: S,
    reported: R,
    detail: Option<&str>,
    attestation_required: bool,
) -> Result<Transition, Conflict> {
    let conflict = || Conflict {
        current: current.as_str(),
        reported: reported_name(reported),
    };
    let stay = Ok(Transition {
        next: current,
        reason: None,
    });
    let fail = |what: &str| {
        Ok(Transition {
            next: S::Failed,
            reason: Some(match detail {
                Some(d) if !d.is_empty() => format!("{what}: {d}"),
                _ => what.to_string(),
            }),
        })
    };
    if repeats_final(current, reported) {
        return stay;
    }
    match (current, reported) {
        (S::Succeeded | S::Failed | S::AttestationFailed | S::Cancelled, _) => Err(conflict()),
        (_, R::RolledBack) => fail("rolled back"),
        (_, R::Failed) => fail("failed"),
        // Success only after the device said it was rebooting into the new slot: an
        // install that never booted must not count.
        (S::Rebooting, R::Committed) if attestation_required => Ok(Transition {
            next: S::AttestationPending,
            reason: None,
        }),
        (S::Rebooting, R::Committed) => Ok(Transition {
            next: S::Succeeded,
            reason: None,
        }),
        (_, R::Committed) => Err(conflict()),
        (S::AttestationPending, _) => stay,
        (current, progress) => {
            let reported_state = match progress {
                R::Downloading => S::Downloading,
                R::Installing => S::Installing,
                _ => S::Rebooting,
            };
            let forward = progress_rank(reported_state) > progress_rank(current);
            Ok(Transition {
                next: if forward { reported_state } else { current },
                reason: None,
            })
        }
    }
}

/// A check-in says the device runs the deployment's release in its committed slot while
/// the server still has the deployment in progress (`assigned` to `rebooting`): the
/// reports that would have moved it were lost (a server restored from a backup, a
/// rebuilt one). It counts as that `committed` report would: `succeeded`, or
/// `attestation-pending` when the campaign requires a quote, which then proves (or not)
/// what booted. Other states stay: ended ones are history, and a pending quote is
/// already asked for. `None`: nothing moves.
pub fn device_ahead(current: S, attestation_required: bool) -> Option<Transition> {
    progress_rank(current)?;
    Some(Transition {
        next: if attestation_required {
            S::AttestationPending
        } else {
            S::Succeeded
        },
        reason: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn report_rows_are_bounded_and_repeated_final_reports_are_not_kept() {
        assert_eq!(keep(S::Succeeded, R::Committed, 4), Keep::Acknowledge);
        assert_eq!(keep(S::Failed, R::RolledBack, 4), Keep::Acknowledge);
        assert_eq!(
            keep(S::AttestationPending, R::Committed, 4),
            Keep::Acknowledge
        );
        assert_eq!(keep(S::Downloading, R::Downloading, 4), Keep::Store);
        assert_eq!(
            keep(S::Downloading, R::Downloading, MAX_REPORTS - 1),
            Keep::Store
        );
        assert_eq!(
            keep(S::Downloading, R::Downloading, MAX_REPORTS),
            Keep::Refuse
        );
        assert_eq!(
            keep(S::Succeeded, R::Committed, MAX_REPORTS),
            Keep::Acknowledge
        );
    }

    fn next(current: S, reported: R) -> Result<S, Conflict> {
        apply(current, reported, None, false).map(|t| t.next)
    }

    #[test]
    fn the_happy_path_ends_in_success_only_after_the_reboot() {
        assert_eq!(next(S::Assigned, R::Downloading), Ok(S::Downloading));
        assert_eq!(next(S::Downloading, R::Installing), Ok(S::Installing));
        assert_eq!(next(S::Installing, R::Rebooting), Ok(S::Rebooting));
        assert_eq!(next(S::Rebooting, R::Committed), Ok(S::Succeeded));
        assert!(next(S::Installing, R::Committed).is_err());
        assert!(next(S::Assigned, R::Committed).is_err());
    }

    #[test]
    fn late_progress_does_not_move_back_and_retries_of_the_end_are_no_ops() {
        assert_eq!(next(S::Installing, R::Downloading), Ok(S::Installing));
        assert_eq!(next(S::Succeeded, R::Committed), Ok(S::Succeeded));
        assert_eq!(next(S::Failed, R::RolledBack), Ok(S::Failed));
        assert!(next(S::Failed, R::Committed).is_err());
        assert!(next(S::Succeeded, R::RolledBack).is_err());
        assert!(next(S::Cancelled, R::Downloading).is_err());
    }

    #[test]
    fn rollback_is_a_failure_with_its_reason() {
        let t = apply(S::Rebooting, R::RolledBack, Some("health check k3s"), false).unwrap();
        assert_eq!(t.next, S::Failed);
        assert_eq!(t.reason.as_deref(), Some("rolled back: health check k3s"));
    }

    #[test]
    fn a_device_ahead_of_the_server_counts_as_its_commit_would() {
        for current in [S::Assigned, S::Downloading, S::Installing, S::Rebooting] {
            assert_eq!(device_ahead(current, false).unwrap().next, S::Succeeded);
            assert_eq!(
                device_ahead(current, true).unwrap().next,
                S::AttestationPending
            );
        }
        for ended in [
            S::AttestationPending,
            S::Succeeded,
            S::Failed,
            S::AttestationFailed,
            S::Cancelled,
        ] {
            assert_eq!(device_ahead(ended, true), None, "{ended:?}");
        }
    }

    #[test]
    fn attestation_holds_success_back_until_the_quote_is_checked() {
        let t = apply(S::Rebooting, R::Committed, None, true).unwrap();
        assert_eq!(t.next, S::AttestationPending);
        assert!(!t.next.is_terminal());
        assert_eq!(
            apply(S::AttestationPending, R::Committed, None, true).map(|t| t.next),
            Ok(S::AttestationPending)
        );
    }
}
