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
    /// Why an installed update is not rebooted into yet, when it is waiting: for a reboot
    /// lease, or for a drain hook to succeed ("waiting for drain: ..."). At most 512 bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// The answer to a reboot-lease request (`paths::reboot_lease`). A campaign with a reboot
/// budget lets at most that many devices of a group be between "rebooting" and "committed
/// or rolled back" at once; each of them holds a lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "lease", rename_all = "kebab-case", deny_unknown_fields)]
pub enum RebootLease {
    /// Reboot now. The lease ends when the deployment commits, rolls back or fails, or
    /// `expires_in_secs` after this answer (a device that died mid-reboot); asking again
    /// while it is held renews it. `None`: the campaign has no reboot budget.
    Granted { expires_in_secs: Option<u64> },
    /// The group's budget is spent: ask again after `retry_after_secs`.
    Wait {
        /// The group, `key=value` of the campaign's grouping tag (or `campaign`).
        group: String,
        in_use: u32,
        budget: u32,
        retry_after_secs: u64,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckInResponse {
    /// The update to install, or `null`: nothing to do.
    pub assignment: Option<Assignment>,
    /// Seconds until the next check-in; already jittered per device.
    pub poll_interval_secs: u64,
    /// Present while a committed deployment waits for the device's TPM quote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attestation: Option<AttestationRequest>,
    /// SHA-256 (hex) of the `TPM2B_PUBLIC` of the attestation key the server trusts for
    /// this device; absent when it trusts none (never enrolled, restored from a backup
    /// taken before, or reset by an operator). A device with a TPM whose own AK is not
    /// this one enrolls it again (same EK); see [`ak_digest`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trusted_ak: Option<String>,
}

/// How [`CheckInResponse::trusted_ak`] names an attestation key: SHA-256 of its
/// `TPM2B_PUBLIC` bytes, lowercase hex.
pub fn ak_digest(ak_public: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(ak_public))
}

/// The server asks for a TPM quote over `pcrs` that includes `nonce`, for one deployment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationRequest {
    pub deployment_id: String,
    /// Hex; fresh per deployment, accepted once.
    pub nonce: String,
    /// SHA-256 bank PCR indices the quote must select.
    pub pcrs: Vec<u8>,
}

/// The device's answer to an [`AttestationRequest`]: `POST .../attestation`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttestationEvidence {
    /// The nonce of the request, hex.
    pub nonce: String,
    /// TPMS_ATTEST as the TPM returned it, hex.
    pub quote: String,
    /// TPMT_SIGNATURE over `quote` by the enrolled attestation key, hex.
    pub signature: String,
    /// What was extended into the quoted PCRs, in order (`cairn-attest`'s event log JSON).
    pub event_log: serde_json::Value,
}

/// The server's verdict on a quote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttestationResult {
    pub deployment_id: String,
    pub deployment_state: DeploymentState,
    /// Why attestation failed, when it did.
    #[serde(default)]
    pub reason: Option<String>,
}

/// A device enrolls its TPM: the endorsement key and a fresh attestation key (AK).
/// `POST /v1/device/tpm`; answered with a [`TpmChallenge`] only the TPM holding both can
/// solve.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmEnrollRequest {
    /// TPM2B_PUBLIC of the endorsement key, hex.
    pub ek_public: String,
    /// The EK certificate (DER) from the TPM's NV, hex, when the TPM has one.
    #[serde(default)]
    pub ek_certificate: Option<String>,
    /// TPM2B_PUBLIC of the attestation key, hex.
    pub ak_public: String,
}

/// TPM2_MakeCredential output for the enrolled EK and AK name, hex.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmChallenge {
    pub credential_blob: String,
    pub encrypted_secret: String,
}

/// The secret ActivateCredential recovered: `POST /v1/device/tpm/activate`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TpmActivation {
    /// Hex.
    pub secret: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TpmEnrollStatus {
    /// `true` once the attestation key is proven to live in the enrolled TPM.
    pub ak_trusted: bool,
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
    /// The operator re-offers a release whose trial failed on this device before: install
    /// it anyway (a device otherwise declines such a release).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retry_declined: bool,
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
    /// quote before the deployment counts as a success.
    AttestationPending,
    /// Committed after its reboot (and attested, when the campaign requires it).
    Succeeded,
    /// Failed or rolled back; `reason` says which.
    Failed,
    /// Committed, but its TPM quote did not prove the release's image booted (bad
    /// signature, stale nonce, or measurements of another image); `reason` says which.
    /// Counts as a failure for the campaign's gates.
    AttestationFailed,
    /// Withdrawn by the operator (campaign aborted) before the device started.
    Cancelled,
}

impl DeploymentState {
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Succeeded | Self::Failed | Self::AttestationFailed | Self::Cancelled
        )
    }

    /// Terminal and counted against the campaign's failure threshold.
    pub fn is_failure(self) -> bool {
        matches!(self, Self::Failed | Self::AttestationFailed)
    }

    /// Before the device's verdict on its trial: not yet committed, rolled back or
    /// failed. A reboot lease is held only in these states.
    pub fn before_verdict(self) -> bool {
        matches!(
            self,
            Self::Assigned | Self::Downloading | Self::Installing | Self::Rebooting
        )
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
            Self::AttestationFailed => "attestation-failed",
            Self::Cancelled => "cancelled",
        }
    }

    /// Every state, in lifecycle order.
    pub fn all() -> &'static [DeploymentState] {
        &ALL_STATES
    }

    pub fn parse(s: &str) -> Option<Self> {
        ALL_STATES.iter().copied().find(|st| st.as_str() == s)
    }
}

const ALL_STATES: [DeploymentState; 9] = [
    DeploymentState::Assigned,
    DeploymentState::Downloading,
    DeploymentState::Installing,
    DeploymentState::Rebooting,
    DeploymentState::AttestationPending,
    DeploymentState::Succeeded,
    DeploymentState::Failed,
    DeploymentState::AttestationFailed,
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

/// The `error` codes a device acts on (every other refusal is final for that request).
pub mod codes {
    /// The server has no device with this id (a check-in or token request): enroll again.
    pub const UNKNOWN_DEVICE: &str = "unknown-device";
    /// The server has no such deployment (it was restored from a backup taken before the
    /// deployment existed, or rebuilt): drop reports for it; the next check-in tells the
    /// server what the device runs.
    pub const UNKNOWN_DEPLOYMENT: &str = "unknown-deployment";
    /// The server trusts no attestation key for this device (a quote cannot be checked):
    /// enroll the AK again (same EK), then send the quote again. The deployment stays
    /// `attestation-pending`.
    pub const UNKNOWN_ATTESTATION_KEY: &str = "unknown-attestation-key";
}

/// Every error response: a stable machine-readable `error` and a sentence for people.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: String,
    pub message: String,
}

/// One device as a factory hands it over: what `cairn provision-record` (or a device in
/// factory mode) writes, and what `cairn-server device import` takes as a JSON array. A
/// CSV manifest carries only the first four fields. Importing a record with `ek_public`
/// binds the device to that TPM from its first check-in: attestation trusts no other EK.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProvisioningRecord {
    pub device_id: String,
    /// Hex of the 32 raw ed25519 public-key bytes.
    pub public_key: String,
    pub compatible: String,
    #[serde(default)]
    pub tags: Vec<String>,
    /// The board's serial number or hardware UUID as its firmware reports it, for people.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_id: Option<String>,
    /// The image version the device ran when the record was made.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_version: Option<String>,
    /// TPM2B_PUBLIC of the TPM's endorsement key, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_public: Option<String>,
    /// The EK certificate (DER) from the TPM's NV, hex, when it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ek_certificate: Option<String>,
}
