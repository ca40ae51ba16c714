//! Request and response bodies of the device API.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Slot {
    A,
    B,
}

/// One image the device holds in its booted slot, so the server can pick a delta whose
/// source the device has.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InstalledImage {
    pub name: String,
    pub sha256: String,
    pub size: u64,
}

/// What a device says about itself on every check-in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckIn {
    /// Semver of the release in the booted slot.
    pub version: String,
    pub booted_slot: Slot,
    pub committed_slot: Slot,
    /// The device's anti-rollback floor.
    pub security_floor: u64,
    #[serde(default)]
    pub images: Vec<InstalledImage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInResponse {
    /// The update to install, or `null`: nothing to do.
    pub assignment: Option<Assignment>,
    /// Seconds until the next check-in; already jittered per device.
    pub poll_interval_secs: u64,
}

/// An update the device should install (or is installing).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assignment {
    pub deployment_id: String,
    pub release_version: String,
    pub security_version: u64,
    /// Absolute URL; supports HTTP Range requests.
    pub bundle_url: String,
    pub bundle_sha256: String,
    pub bundle_size: u64,
    /// Where the server thinks the deployment is, so a device that lost its own record can
    /// pick up again.
    pub state: DeploymentState,
}

/// The server's view of one device's deployment. Terminal: `succeeded`, `failed`,
/// `cancelled`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeploymentState {
    /// Offered to the device; it has not reported anything yet.
    Assigned,
    Downloading,
    Installing,
    /// Installed into the inactive slot; the device is rebooting into its trial boot.
    Rebooting,
    /// The device committed the new slot, and the campaign requires a valid attestation
    /// quote before the deployment counts as a success (TPM issue).
    AttestationPending,
    /// Committed after its reboot (and attested, when the campaign requires it).
    Succeeded,
    /// Failed, rolled back, or failed attestation; `reason` says which.
    Failed,
    /// Withdrawn by the operator (campaign aborted) before the device started.
    Cancelled,
}

impl DeploymentState {
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Succeeded | Self::Failed | Self::Cancelled)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Assigned => "assigned",
            Self::Downloading => "downloading",
            Self::Installing => "installing",
            Self::Rebooting => "rebooting",
            Self::AttestationPending => "attestation-pending",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_STATES.iter().copied().find(|st| st.as_str() == s)
    }
}

const ALL_STATES: [DeploymentState; 8] = [
    DeploymentState::Assigned,
    DeploymentState::Downloading,
    DeploymentState::Installing,
    DeploymentState::Rebooting,
    DeploymentState::AttestationPending,
    DeploymentState::Succeeded,
    DeploymentState::Failed,
    DeploymentState::Cancelled,
];

/// What a device reports about a deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportedState {
    Downloading,
    Installing,
    Rebooting,
    /// The new slot booted, passed its health checks and is committed.
    Committed,
    /// The trial boot failed and the bootloader fell back to the old slot.
    RolledBack,
    /// Anything else that ended the attempt (download, verification, write).
    Failed,
}

/// One progress report. The device retries it, with the same `report_id`, until the
/// server acknowledges it; the server applies each `report_id` once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Report {
    /// Chosen by the device, unique per deployment (1 to 128 characters of `[A-Za-z0-9._-]`).
    pub report_id: String,
    pub state: ReportedState,
    /// Free text for people: error message, rollback reason, bytes downloaded.
    #[serde(default)]
    pub detail: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportAck {
    pub deployment_id: String,
    pub report_id: String,
    /// `true` when this `report_id` had been applied before; nothing changed this time.
    pub duplicate: bool,
    pub deployment_state: DeploymentState,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EnrollStatus {
    /// The key was pre-authorized or approved: request a token.
    Approved,
    /// Recorded; an operator must approve the key before the device gets a token.
    Pending,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnrollResponse {
    pub device_id: String,
    pub status: EnrollStatus,
}

/// Every error response: a stable machine-readable `error` and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}
