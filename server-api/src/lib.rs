//! The Cairn device API: the JSON a device (`cairnd`) and `cairn-server` exchange, and the
//! exact bytes a device signs. `server/API.md` is the prose version of this file.
//!
//! This crate carries no HTTP client on purpose: the device daemon picks its own transport
//! and only needs the types and the signing rules to match the server.

mod auth;
mod identity;
mod types;

pub use auth::{
    enroll_message, parse_public_key, rotate_key_message, token_message, EnrollRequest,
    RotateKeyRequest, RotateKeyResponse, SignError, TokenRequest, TokenResponse, ENROLL_CONTEXT,
    ROTATE_KEY_CONTEXT, TOKEN_CONTEXT,
};
pub use identity::{DeviceIdentity, IdentityFormatError};
pub use types::{
    ak_digest, codes, Assignment, AttestationEvidence, AttestationRequest, AttestationResult,
    CheckIn, CheckInResponse, DeploymentState, EnrollResponse, EnrollStatus, ErrorBody,
    InstalledImage, ProvisioningRecord, RebootLease, Report, ReportAck, ReportedState, Slot,
    TpmActivation, TpmChallenge, TpmEnrollRequest, TpmEnrollStatus,
};

/// What a name on the server (a device ID, a release or campaign ID) may be.
pub const NAME_RULE: &str = "1 to 128 characters of [A-Za-z0-9._-]";

/// Whether `s` follows [`NAME_RULE`]. The server refuses any other name; tools that
/// make records for it (cairn-image provision) check with this before writing anything.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// What a device tag may be: a name, or `key=value` of two names (`cluster=line-3`), which
/// a campaign's reboot budget can group devices by.
pub const TAG_RULE: &str =
    "a name (1 to 128 characters of [A-Za-z0-9._-]) or key=value of two names";

/// Whether `s` follows [`TAG_RULE`].
pub fn is_valid_tag(s: &str) -> bool {
    match s.split_once('=') {
        Some((key, value)) => is_valid_name(key) && is_valid_name(value),
        None => is_valid_name(s),
    }
}

/// Paths of the device API, relative to the server's base URL.
pub mod paths {
    pub const ENROLL: &str = "/v1/device/enroll";
    pub const TOKEN: &str = "/v1/device/token";
    pub const ROTATE_KEY: &str = "/v1/device/rotate-key";
    pub const CHECK_IN: &str = "/v1/device/check-in";
    pub const TPM_ENROLL: &str = "/v1/device/tpm";
    pub const TPM_ACTIVATE: &str = "/v1/device/tpm/activate";

    /// Where progress reports for one deployment go.
    pub fn reports(deployment_id: &str) -> String {
        format!("/v1/device/deployments/{deployment_id}/reports")
    }

    /// Where the TPM quote for one deployment goes.
    pub fn attestation(deployment_id: &str) -> String {
        format!("/v1/device/deployments/{deployment_id}/attestation")
    }

    /// Where a device asks leave to reboot into one deployment's update.
    pub fn reboot_lease(deployment_id: &str) -> String {
        format!("/v1/device/deployments/{deployment_id}/reboot-lease")
    }
}
