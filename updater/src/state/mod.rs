//! cairnd's own record of the device: which phase an update is in, what each slot holds,
//! the security floor, the history, and reports waiting for the server.
//!
//! Transitions here are pure: they change the in-memory state and return. `StateStore`
//! persists it. Callers order the two so that invariant holds at every instant.

pub mod json_file;
pub mod reserve;
pub mod store;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

pub use cairn_boot::ImageRecord;

use cairn_server_api::ReportedState;

use crate::bootstate::SlotId;

pub use store::StateStore;

/// History entries kept; older ones are dropped.
const HISTORY_LEN: usize = 200;
/// Reports kept while the server is unreachable (or none is configured).
const OUTBOX_LEN: usize = 100;

/// Where an update stands. `Committed` is also the resting state of a device with no
/// update in flight; the others follow one update from its first write to its verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "kebab-case")]
pub enum Phase {
    /// Running the committed slot; nothing pending.
    Committed,
    /// Writing `slot`. The slot is unbootable in the boot state for the whole phase.
    Installing {
        slot: SlotId,
        version: String,
        security_version: u64,
        boot_id: String,
    },
    /// `slot` is written and verified and armed for one trial boot; waiting for the
    /// reboot. `boot_id` tells a daemon restart (same boot) from the reboot.
    InstalledPending {
        slot: SlotId,
        version: String,
        security_version: u64,
        boot_id: String,
        /// Trial boots of this install that ended without a health verdict so far.
        #[serde(default)]
        trial_boots: u32,
    },
    /// Booted `slot` on trial; health checks decide. Saved by cairnd as soon as it runs
    /// in the trial slot, before any check: on disk, this phase is the record that the
    /// trial's kernel and userspace came up ("trial userspace up"), so a fallback from
    /// here was an interruption after boot, never "did not boot".
    TrialBoot {
        slot: SlotId,
        version: String,
        security_version: u64,
        /// Trial boots of this install so far, this one included.
        #[serde(default)]
        trial_boots: u32,
        /// The health checks started (saved just before the first one runs): a fallback
        /// now was a power cut, reset or hang during the checks.
        #[serde(default)]
        checks_started: bool,
    },
    /// The trial of `version` in `slot` failed; running the committed slot again.
    RolledBack {
        slot: SlotId,
        version: String,
        reason: String,
    },
    /// An install failed before any reboot; running the committed slot.
    Failed {
        version: Option<String>,
        reason: String,
    },
}

/// What a slot holds, as far as cairnd wrote or learned it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SlotRecord {
    pub version: Option<String>,
    pub security_version: u64,
    /// Image name → (sha256, size) as written; used to pick deltas without rehashing.
    pub images: BTreeMap<String, ImageRecord>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryEntry {
    #[serde(with = "time::serde::rfc3339")]
    pub at: OffsetDateTime,
    pub event: String,
    pub slot: Option<SlotId>,
    pub version: Option<String>,
    pub detail: Option<String>,
}

/// What a queued report says. The device API knows fewer states than the device does:
/// [`ReportStatus::wire`] maps them, and the others stay in the device's own outbox and
/// history only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportStatus {
    Downloading,
    /// Writing the inactive slot.
    Installing,
    /// Written, verified and armed for its trial boot: to the server, rebooting.
    Installed,
    /// The trial boot started.
    Rebooted,
    /// The trial passed its checks and the slot is committed: the only success.
    Committed,
    RolledBack,
    Failed,
    /// The committed slot did not boot and the bootloader fell back to the other one.
    Fallback,
    /// No slot had tries left and the bootloader booted the committed one in recovery.
    Recovery,
}

impl ReportStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ReportStatus::Downloading => "downloading",
            ReportStatus::Installing => "installing",
            ReportStatus::Installed => "installed",
            ReportStatus::Rebooted => "rebooted",
            ReportStatus::Committed => "committed",
            ReportStatus::RolledBack => "rolled-back",
            ReportStatus::Failed => "failed",
            ReportStatus::Fallback => "fallback",
            ReportStatus::Recovery => "recovery",
        }
    }

    /// The device-API state this report is sent as, or `None` for events the server's
    /// API has no state for (they are dropped from the outbox unsent).
    pub fn wire(self) -> Option<ReportedState> {
        Some(match self {
            ReportStatus::Downloading => ReportedState::Downloading,
            ReportStatus::Installing => ReportedState::Installing,
            ReportStatus::Installed => ReportedState::Rebooting,
            ReportStatus::Committed => ReportedState::Committed,
            ReportStatus::RolledBack => ReportedState::RolledBack,
            ReportStatus::Failed => ReportedState::Failed,
            ReportStatus::Rebooted | ReportStatus::Fallback | ReportStatus::Recovery => {
                return None
            }
        })
    }
}

/// A report for the fleet server, kept until the server acknowledges it (INVARIANTS.md 10).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Stable id so a retried report is idempotent on the server.
    pub id: String,
    pub deployment: Option<String>,
    pub status: ReportStatus,
    pub version: Option<String>,
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceState {
    pub phase: Phase,
    pub slots: BTreeMap<SlotId, SlotRecord>,
    /// Lowest security_version this device installs; moves forward only on commit.
    pub security_floor: u64,
    /// Versions whose trial failed; never installed again unless explicitly forced.
    pub failed_versions: BTreeSet<String>,
    /// Server deployment the current update belongs to, if any.
    pub deployment: Option<String>,
    pub history: Vec<HistoryEntry>,
    pub outbox: Vec<Report>,
    /// A trust root carried by the bundle being tried; becomes the device's root on commit.
    pub pending_root: Option<serde_json::Value>,
    pub last_error: Option<String>,
}

/// Why an install is refused before anything is written.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum Refusal {
    #[error("an update to {0} is already installed and waiting for its reboot (reboot, or `cairn rollback` to drop it)")]
    PendingReboot(String),
    #[error("slot {0} is on trial: commit or roll back before installing again")]
    TrialInProgress(SlotId),
    #[error("version {0} failed its trial before; install it again only with --force")]
    PreviouslyFailed(String),
}

impl DeviceState {
    /// What a device knows on its first boot: the booted slot is the committed one.
    pub fn first_boot(booted: SlotId, version: Option<String>) -> DeviceState {
        let mut slots = BTreeMap::new();
        slots.insert(
            booted,
            SlotRecord {
                version,
                ..SlotRecord::default()
            },
        );
        DeviceState {
            phase: Phase::Committed,
            slots,
            security_floor: 0,
            failed_versions: BTreeSet::new(),
            deployment: None,
            history: Vec::new(),
            outbox: Vec::new(),
            pending_root: None,
            last_error: None,
        }
    }

    pub fn slot(&self, slot: SlotId) -> SlotRecord {
        self.slots.get(&slot).cloned().unwrap_or_default()
    }

    pub fn record(
        &mut self,
        now: OffsetDateTime,
        event: &str,
        slot: Option<SlotId>,
        version: Option<&str>,
        detail: Option<String>,
    ) {
        self.history.push(HistoryEntry {
            at: now,
            event: event.to_string(),
            slot,
            version: version.map(str::to_string),
            detail,
        });
        let excess = self.history.len().saturating_sub(HISTORY_LEN);
        self.history.drain(..excess);
    }

    /// Queues a report for the server (idempotent by id). The id is unique within the
    /// deployment it belongs to and uses only the characters the device API allows.
    pub fn report(&mut self, status: ReportStatus, version: Option<&str>, detail: Option<String>) {
        let id: String = format!("{}.{}", status.as_str(), version.unwrap_or("none"))
            .chars()
            .map(|c| match c {
                'A'..='Z' | 'a'..='z' | '0'..='9' | '.' | '_' | '-' => c,
                _ => '_',
            })
            .take(128)
            .collect();
        if self
            .outbox
            .iter()
            .any(|r| r.id == id && r.deployment == self.deployment)
        {
            return;
        }
        // Without a server nobody drains the outbox: keep it bounded.
        let excess = (self.outbox.len() + 1).saturating_sub(OUTBOX_LEN);
        self.outbox.drain(..excess);
        self.outbox.push(Report {
            id,
            deployment: self.deployment.clone(),
            status,
            version: version.map(str::to_string),
            detail,
        });
    }

    /// May an install of `version` start now?
    pub fn check_can_install(&self, version: &str, force: bool) -> Result<(), Refusal> {
        match &self.phase {
            Phase::InstalledPending { version, .. } => {
                return Err(Refusal::PendingReboot(version.clone()))
            }
            Phase::TrialBoot { slot, .. } => return Err(Refusal::TrialInProgress(*slot)),
            _ => {}
        }
        if !force && self.failed_versions.contains(version) {
            return Err(Refusal::PreviouslyFailed(version.to_string()));
        }
        Ok(())
    }

    /// About to write `slot`; its old record is void from this instant.
    pub fn begin_install(
        &mut self,
        now: OffsetDateTime,
        slot: SlotId,
        version: &str,
        boot_id: &str,
        security_version: u64,
        deployment: Option<String>,
    ) {
        self.phase = Phase::Installing {
            slot,
            version: version.to_string(),
            security_version,
            boot_id: boot_id.to_string(),
        };
        self.slots.insert(slot, SlotRecord::default());
        self.deployment = deployment;
        self.last_error = None;
        self.record(now, "install-started", Some(slot), Some(version), None);
        self.report(ReportStatus::Installing, Some(version), None);
    }

    /// Every image is written and verified, and the slot is armed for its trial.
    pub fn install_done(
        &mut self,
        now: OffsetDateTime,
        slot: SlotId,
        record: SlotRecord,
        boot_id: &str,
        pending_root: Option<serde_json::Value>,
    ) {
        let version = record.version.clone().unwrap_or_default();
        self.phase = Phase::InstalledPending {
            slot,
            version: version.clone(),
            security_version: record.security_version,
            boot_id: boot_id.to_string(),
            trial_boots: 0,
        };
        self.slots.insert(slot, record);
        self.pending_root = pending_root;
        self.record(now, "installed", Some(slot), Some(&version), None);
        self.report(ReportStatus::Installed, Some(&version), None);
    }

    /// The boot state armed `slot` but cairnd did not get to save `installed` (a crash
    /// or power cut in between): the same step as [`DeviceState::install_done`], with
    /// what the `Installing` phase recorded (the images' hashes are not known here).
    pub fn install_armed_unsaved(
        &mut self,
        now: OffsetDateTime,
        slot: SlotId,
        version: &str,
        security_version: u64,
        boot_id: &str,
    ) {
        let record = SlotRecord {
            version: Some(version.to_string()),
            security_version,
            images: BTreeMap::new(),
        };
        let pending_root = self.pending_root.take();
        self.install_done(now, slot, record, boot_id, pending_root);
    }

    /// The install ended for good (bad bundle, write error): the server hears `failed`.
    pub fn install_failed(&mut self, now: OffsetDateTime, version: Option<&str>, reason: &str) {
        self.install_stopped(now, version, reason, "install-failed");
        self.report(ReportStatus::Failed, version, Some(reason.to_string()));
    }

    /// The install stopped for a reason that says nothing about the update (power cut,
    /// shutdown, network): the slot stays unbootable, and a live deployment is tried again
    /// at the next check-in instead of being reported as failed.
    pub fn install_interrupted(
        &mut self,
        now: OffsetDateTime,
        version: Option<&str>,
        reason: &str,
    ) {
        self.install_stopped(now, version, reason, "install-interrupted");
    }

    /// An install was refused before anything was written (bad bundle, refusal); the
    /// phase is unchanged and the deployment, if any, hears `failed`.
    pub fn install_refused(
        &mut self,
        now: OffsetDateTime,
        deployment: Option<String>,
        version: Option<&str>,
        reason: &str,
    ) {
        self.last_error = Some(reason.to_string());
        self.record(
            now,
            "install-refused",
            None,
            version,
            Some(reason.to_string()),
        );
        let before = std::mem::replace(&mut self.deployment, deployment);
        self.report(ReportStatus::Failed, version, Some(reason.to_string()));
        self.deployment = before;
    }

    fn install_stopped(
        &mut self,
        now: OffsetDateTime,
        version: Option<&str>,
        reason: &str,
        event: &str,
    ) {
        if let Phase::Installing { slot, .. } = self.phase {
            self.slots.insert(slot, SlotRecord::default());
        }
        self.phase = Phase::Failed {
            version: version.map(str::to_string),
            reason: reason.to_string(),
        };
        self.last_error = Some(reason.to_string());
        self.pending_root = None;
        self.record(now, event, None, version, Some(reason.to_string()));
    }

    /// The reboot happened and the new slot is running on trial.
    pub fn trial_started(&mut self, now: OffsetDateTime) {
        if let Phase::InstalledPending {
            slot,
            version,
            security_version,
            trial_boots,
            ..
        } = self.phase.clone()
        {
            self.phase = Phase::TrialBoot {
                slot,
                version: version.clone(),
                security_version,
                trial_boots: trial_boots + 1,
                checks_started: false,
            };
            self.record(now, "trial-boot", Some(slot), Some(&version), None);
            self.report(ReportStatus::Rebooted, Some(&version), None);
        }
    }

    /// Health checks passed and the boot state commits the slot: the floor moves forward
    /// (INVARIANTS.md 12) and success is reported, only now (INVARIANTS.md 10).
    pub fn committed(&mut self, now: OffsetDateTime) -> Option<serde_json::Value> {
        let Phase::TrialBoot {
            slot,
            version,
            security_version,
            ..
        } = self.phase.clone()
        else {
            return None;
        };
        self.security_floor = self.security_floor.max(security_version);
        self.phase = Phase::Committed;
        self.record(now, "committed", Some(slot), Some(&version), None);
        self.report(ReportStatus::Committed, Some(&version), None);
        self.pending_root.take()
    }

    /// The trial of the current update failed (`reason`), or the bootloader fell back.
    /// The bootloader fell back from the trial of `slot` before any health verdict: a
    /// power cut, reset or hang during the trial boot or its checks, or a slot that did
    /// not boot. That says little about the release, so while fewer than `max_trial_boots`
    /// trial boots were used the install goes back to waiting for its reboot (the caller
    /// re-arms the trial in the boot state) and returns `true`. After the last one it is
    /// a rollback: the release is declined.
    pub fn trial_ended_without_verdict(
        &mut self,
        now: OffsetDateTime,
        boot_id: &str,
        max_trial_boots: u32,
        reason: &str,
    ) -> bool {
        let (slot, version, security_version, used) = match &self.phase {
            // It never reached cairnd, but the bootloader spent a trial boot on it.
            Phase::InstalledPending {
                slot,
                version,
                security_version,
                trial_boots,
                ..
            } => (*slot, version.clone(), *security_version, trial_boots + 1),
            Phase::TrialBoot {
                slot,
                version,
                security_version,
                trial_boots,
                ..
            } => (
                *slot,
                version.clone(),
                *security_version,
                (*trial_boots).max(1),
            ),
            _ => return false,
        };
        if used >= max_trial_boots {
            self.rolled_back(
                now,
                &format!(
                    "{reason} ({used} of {max_trial_boots} trial boots, none reached a verdict)"
                ),
            );
            return false;
        }
        self.phase = Phase::InstalledPending {
            slot,
            version: version.clone(),
            security_version,
            boot_id: boot_id.to_string(),
            trial_boots: used,
        };
        self.record(
            now,
            "trial-retry",
            Some(slot),
            Some(&version),
            Some(format!(
                "{reason}; trial boot {} of {max_trial_boots} next",
                used + 1
            )),
        );
        true
    }

    pub fn rolled_back(&mut self, now: OffsetDateTime, reason: &str) {
        let (slot, version) = match &self.phase {
            Phase::Installing { slot, version, .. }
            | Phase::InstalledPending { slot, version, .. }
            | Phase::TrialBoot { slot, version, .. } => (*slot, version.clone()),
            _ => return,
        };
        self.failed_versions.insert(version.clone());
        self.phase = Phase::RolledBack {
            slot,
            version: version.clone(),
            reason: reason.to_string(),
        };
        self.pending_root = None;
        self.last_error = Some(reason.to_string());
        self.record(
            now,
            "rolled-back",
            Some(slot),
            Some(&version),
            Some(reason.to_string()),
        );
        self.report(
            ReportStatus::RolledBack,
            Some(&version),
            Some(reason.to_string()),
        );
    }

    /// No update was in flight, yet the bootloader booted `booted` instead of the
    /// committed slot, which therefore failed to boot. `booted` held a verified image:
    /// it goes on trial like an update, and its checks decide.
    pub fn fallback_booted(&mut self, now: OffsetDateTime, booted: SlotId, committed: SlotId) {
        let record = self.slot(booted);
        let msg = format!("committed slot {committed} did not boot; running slot {booted}");
        let version = record.version.as_deref();
        self.record(now, "fallback", Some(booted), version, Some(msg.clone()));
        self.report(ReportStatus::Fallback, version, Some(msg.clone()));
        self.last_error = Some(msg);
        self.phase = Phase::TrialBoot {
            slot: booted,
            version: record.version.unwrap_or_else(|| "unknown".into()),
            security_version: record.security_version,
            trial_boots: 1,
            checks_started: false,
        };
    }

    /// The trial's health checks are about to run (saved before the first one): from now
    /// on a fallback from this trial means it was interrupted during its checks.
    pub fn health_checks_started(&mut self, now: OffsetDateTime) {
        if let Phase::TrialBoot {
            slot,
            version,
            checks_started,
            ..
        } = &mut self.phase
        {
            *checks_started = true;
            let (slot, version) = (*slot, version.clone());
            self.record(now, "health-checks", Some(slot), Some(&version), None);
        }
    }

    /// The bootloader found no slot with tries left and booted `committed` in recovery
    /// mode (INVARIANTS.md 6); `booted` is what the kernel says it booted.
    pub fn recovery_booted(&mut self, now: OffsetDateTime, booted: SlotId, committed: SlotId) {
        let msg =
            format!("recovery boot: no slot had tries left; booted committed slot {committed}");
        self.record(now, "recovery", Some(booted), None, Some(msg.clone()));
        self.report(ReportStatus::Recovery, None, Some(msg.clone()));
        self.last_error = Some(msg);
    }

    /// The operator asked to go back to `slot`'s image (the previous version, kept as
    /// the fallback); the boot state armed it for a trial, so it must pass its checks
    /// like any update. `boot_id` is this boot's, to tell the reboot from a restart.
    pub fn rollback_requested(&mut self, now: OffsetDateTime, slot: SlotId, boot_id: &str) {
        let record = self.slot(slot);
        let version = record.version.unwrap_or_else(|| "unknown".into());
        self.phase = Phase::InstalledPending {
            slot,
            version: version.clone(),
            security_version: record.security_version,
            boot_id: boot_id.to_string(),
            trial_boots: 0,
        };
        self.record(now, "rollback-requested", Some(slot), Some(&version), None);
    }

    pub fn acknowledge(&mut self, report_id: &str) {
        self.outbox.retain(|r| r.id != report_id);
    }
}
