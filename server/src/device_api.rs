//! Handlers of the device API (`server/API.md`). Every handler but enroll, token and
//! rotate-key (signed requests) needs a bearer token and acts only for the device the
//! token names, and only while that device is approved (`devices::require_active`;
//! check-in checks the row it reads anyway): a device revoked after its token was
//! issued is refused at once.

use std::net::SocketAddr;

use axum::body::Bytes;
use axum::extract::{ConnectInfo, Path, State};
use axum::http::header::{ETAG, IF_NONE_MATCH};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_server_api::{
    AttestationEvidence, AttestationResult, CheckIn, EnrollRequest, EnrollResponse, EnrollStatus,
    RebootLease, Report, RotateKeyRequest, RotateKeyResponse, TokenRequest, TokenResponse,
    TpmActivation, TpmChallenge, TpmEnrollRequest, TpmEnrollStatus,
};
use sha2::{Digest, Sha256};

use crate::app::Shared;
use crate::auth::{self, check_enrollment, issue_token, AuthenticatedDevice};
use crate::devices;
use crate::error::ApiResult;
use crate::json::parse_body;
use crate::{attestation, checkin, reboot_leases, reports};

/// The client's address bounds enrollments of unknown ids per source; a server started
/// without connection info (or behind a proxy) counts all of them as one source.
pub async fn enroll(
    State(state): State<Shared>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    body: Bytes,
) -> ApiResult<Response> {
    let request: EnrollRequest = parse_body(&body)?;
    check_enrollment(&state.db, &request).await?;
    let source = peer.map_or_else(|| "unknown".to_string(), |p| p.0 .0.ip().to_string());
    let limits = &state.config.enroll_limits;
    let status = devices::enroll(&state.db, &request, &source, limits).await?;
    let code = match status {
        EnrollStatus::Approved => StatusCode::OK,
        EnrollStatus::Pending => StatusCode::ACCEPTED,
    };
    let body = EnrollResponse {
        device_id: request.device_id,
        status,
    };
    Ok((code, Json(body)).into_response())
}

pub async fn token(State(state): State<Shared>, body: Bytes) -> ApiResult<Json<TokenResponse>> {
    let request: TokenRequest = parse_body(&body)?;
    Ok(Json(
        issue_token(&state.db, &state.token_key, &request).await?,
    ))
}

pub async fn rotate_key(
    State(state): State<Shared>,
    body: Bytes,
) -> ApiResult<Json<RotateKeyResponse>> {
    let request: RotateKeyRequest = parse_body(&body)?;
    Ok(Json(auth::rotate_key(&state.db, &request).await?))
}

/// Answers 304 when the body would be byte-identical to the one the device has (its
/// `If-None-Match`): the check-in is still recorded, only the answer is skipped.
pub async fn check_in(
    State(state): State<Shared>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<Response> {
    let report: CheckIn = parse_body(&body)?;
    let answer = checkin::check_in(&state.check_in_context(), &device, &report).await?;
    let body = serde_json::to_vec(&answer).map_err(anyhow::Error::from)?;
    let tag = format!("\"{}\"", hex::encode(&Sha256::digest(&body)[..16]));
    let etag = HeaderValue::from_str(&tag).map_err(anyhow::Error::from)?;
    let unchanged = headers
        .get(IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == tag));
    if unchanged {
        return Ok((StatusCode::NOT_MODIFIED, [(ETAG, etag)]).into_response());
    }
    Ok((
        StatusCode::OK,
        [
            (ETAG, etag),
            (
                axum::http::header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            ),
        ],
        body,
    )
        .into_response())
}

pub async fn report(
    State(state): State<Shared>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    Path(deployment): Path<String>,
    body: Bytes,
) -> ApiResult<Response> {
    let report: Report = parse_body(&body)?;
    devices::require_active(&state.db, &device).await?;
    let ack = reports::report(&state.db, &device, &deployment, &report).await?;
    if ack.deployment_state.is_terminal() && !ack.duplicate {
        state.caches.invalidate_campaigns();
    }
    Ok(Json(ack).into_response())
}

/// A device asks leave to reboot into the deployment's update (`reboot_leases.rs`). The
/// body is empty or `{}`.
pub async fn reboot_lease(
    State(state): State<Shared>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    Path(deployment): Path<String>,
) -> ApiResult<Json<RebootLease>> {
    devices::require_active(&state.db, &device).await?;
    Ok(Json(
        reboot_leases::request(&state.db, &device, &deployment).await?,
    ))
}

pub async fn tpm_enroll(
    State(state): State<Shared>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    body: Bytes,
) -> ApiResult<Json<TpmChallenge>> {
    let request: TpmEnrollRequest = parse_body(&body)?;
    devices::require_active(&state.db, &device).await?;
    let ca = state.config.ek_ca.as_deref();
    Ok(Json(
        attestation::enroll(&state.db, ca, &device, &request).await?,
    ))
}

pub async fn tpm_activate(
    State(state): State<Shared>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    body: Bytes,
) -> ApiResult<Json<TpmEnrollStatus>> {
    let activation: TpmActivation = parse_body(&body)?;
    devices::require_active(&state.db, &device).await?;
    Ok(Json(
        attestation::activate(&state.db, &device, &activation).await?,
    ))
}

pub async fn attestation(
    State(state): State<Shared>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    Path(deployment): Path<String>,
    body: Bytes,
) -> ApiResult<Json<AttestationResult>> {
    let evidence: AttestationEvidence = parse_body(&body)?;
    devices::require_active(&state.db, &device).await?;
    let result =
        attestation::attest(&state.db, &state.caches, &device, &deployment, &evidence).await?;
    Ok(Json(result))
}
