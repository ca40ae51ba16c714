//! When a running campaign opens its next wave, completes, or pauses itself. A pure
//! function of the campaign's progress and its deployment counts, so every server that
//! evaluates it reaches the same decision; applying it is a compare-and-set in the store.

use crate::policy::CampaignPolicy;

/// Deployment counts of one wave.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WaveStats {
    /// Devices in the wave when the campaign started (the gate's denominator).
    pub expected: u64,
    /// Deployments created so far.
    pub assigned: u64,
    pub succeeded: u64,
    pub failed: u64,
}

/// A running campaign's position.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Waves open to assignments (≥ 1 once started).
    pub opened_waves: usize,
    /// When the newest open wave first met its success ratio.
    pub gate_met_at_ms: Option<i64>,
    /// Failures the operator acknowledged by resuming; they no longer count.
    pub failures_acknowledged: u64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Nothing,
    /// The newest wave reached its success ratio now; the bake time starts.
    GateMet,
    /// The bake time is over: open the next wave.
    OpenNextWave,
    /// The last wave passed its gate.
    Complete,
    /// Too many failures: stop assigning until an operator resumes.
    Pause(String),
}

pub fn evaluate(
    policy: &CampaignPolicy,
    progress: &Progress,
    waves: &[WaveStats],
    now_ms: i64,
) -> Decision {
    let open = &waves[..progress.opened_waves.min(waves.len())];
    let population: u64 = open.iter().map(|w| w.expected.max(w.assigned)).sum();
    let failed: u64 = waves.iter().map(|w| w.failed).sum();
    let counted = failed.saturating_sub(progress.failures_acknowledged);
    if counted > 0 && counted as f64 > policy.failure_threshold * population.max(1) as f64 {
        return Decision::Pause(format!(
            "failure threshold exceeded: {counted} failed of {population} devices in open waves (threshold {:.0}%)",
            policy.failure_threshold * 100.0
        ));
    }
    let Some(newest) = open.last() else {
        return Decision::Nothing;
    };
    let denominator = newest.expected.max(newest.assigned);
    let gate_passed = denominator == 0
        || newest.succeeded as f64 >= policy.min_success_ratio * denominator as f64;
    match (gate_passed, progress.gate_met_at_ms) {
        (false, _) => Decision::Nothing,
        (true, None) => Decision::GateMet,
        (true, Some(met)) if now_ms - met < policy.bake_secs as i64 * 1000 => Decision::Nothing,
        (true, Some(_)) if progress.opened_waves >= waves.len() => Decision::Complete,
        (true, Some(_)) => Decision::OpenNextWave,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{Selector, WaveSize};

    fn policy() -> CampaignPolicy {
        CampaignPolicy {
            selector: Selector::default(),
            waves: vec![WaveSize::Count(10), WaveSize::Percent(100.0)],
            min_success_ratio: 0.8,
            bake_secs: 60,
            failure_threshold: 0.2,
            attestation_required: false,
            retry_declined: false,
            reboot_budget: None,
        }
    }

    fn wave(expected: u64, succeeded: u64, failed: u64) -> WaveStats {
        WaveStats {
            expected,
            assigned: succeeded + failed,
            succeeded,
            failed,
        }
    }

    fn progress(opened: usize, met: Option<i64>) -> Progress {
        Progress {
            opened_waves: opened,
            gate_met_at_ms: met,
            failures_acknowledged: 0,
        }
    }

    #[test]
    fn gate_needs_the_success_ratio_then_the_bake_time() {
        let p = policy();
        let waves = [wave(10, 7, 0), wave(90, 0, 0)];
        assert_eq!(
            evaluate(&p, &progress(1, None), &waves, 0),
            Decision::Nothing
        );
        let waves = [wave(10, 8, 0), wave(90, 0, 0)];
        assert_eq!(
            evaluate(&p, &progress(1, None), &waves, 0),
            Decision::GateMet
        );
        assert_eq!(
            evaluate(&p, &progress(1, Some(0)), &waves, 59_999),
            Decision::Nothing
        );
        assert_eq!(
            evaluate(&p, &progress(1, Some(0)), &waves, 60_000),
            Decision::OpenNextWave
        );
        let done = [wave(10, 10, 0), wave(90, 90, 0)];
        assert_eq!(
            evaluate(&p, &progress(2, Some(0)), &done, 60_000),
            Decision::Complete
        );
    }

    #[test]
    fn failures_above_the_threshold_pause_and_acknowledged_ones_do_not() {
        let p = policy();
        let waves = [wave(10, 2, 2), wave(90, 0, 0)];
        assert_eq!(
            evaluate(&p, &progress(1, None), &waves, 0),
            Decision::Nothing
        );
        let waves = [wave(10, 2, 3), wave(90, 0, 0)];
        assert!(matches!(
            evaluate(&p, &progress(1, None), &waves, 0),
            Decision::Pause(_)
        ));
        let resumed = Progress {
            failures_acknowledged: 3,
            ..progress(1, None)
        };
        assert_eq!(evaluate(&p, &resumed, &waves, 0), Decision::Nothing);
    }

    #[test]
    fn failure_ratio_is_over_the_open_waves_not_the_whole_fleet() {
        // Only wave 0 is open: its 10 devices are the population, not the whole fleet.
        let p = policy();
        let waves = [wave(10, 0, 3), wave(1000, 0, 0)];
        assert!(matches!(
            evaluate(&p, &progress(1, None), &waves, 0),
            Decision::Pause(_)
        ));
    }
}
