//! Handlers of the device API (`server/API.md`). Every handler but enroll and token
//! needs a bearer token, and acts only for the device the token names.

use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, State};
use axum::http::header::{AUTHORIZATION, ETAG, IF_NONE_MATCH};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_server_api::{
    AttestationEvidence, AttestationResult, CheckIn, EnrollRequest, EnrollResponse, EnrollStatus,
    Report, TokenRequest, TokenResponse, TpmActivation, TpmChallenge, TpmEnrollRequest,
    TpmEnrollStatus,
};
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::app::Shared;
use crate::auth::{consume_nonce, unix_now, TOKEN_LIFETIME_SECS};
use crate::devices;
use crate::error::{ApiError, ApiResult};
use crate::json::parse_body;
use crate::{attestation, checkin, reports};

/// The device a valid bearer token was issued to.
pub struct AuthenticatedDevice(pub String);

impl FromRequestParts<Shared> for AuthenticatedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Shared) -> ApiResult<Self> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized(
                "no-token",
                "send Authorization: Bearer <token> from /v1/device/token",
            )
        })?;
        let device = state.token_key.check(token, unix_now())?;
        Ok(AuthenticatedDevice(device.to_string()))
    }
}

pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

pub async fn enroll(State(state): State<Shared>, body: Bytes) -> ApiResult<Response> {
    let request: EnrollRequest = parse_body(&body)?;
    request
        .verify()
        .map_err(|e| ApiError::unauthorized("bad-signature", format!("enrollment: {e}")))?;
    consume_nonce(
        &state.db,
        &request.device_id,
        request.timestamp,
        &request.nonce,
    )
    .await?;
    let status = devices::enroll(&state.db, &request).await?;
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
    let row = sqlx::query("SELECT public_key, approval FROM devices WHERE id = $1")
        .bind(&request.device_id)
        .fetch_optional(&state.db.pool)
        .await?
        .ok_or_else(|| devices::unknown(&request.device_id))?;
    let key: String = row.try_get("public_key")?;
    request
        .verify(&key)
        .map_err(|e| ApiError::unauthorized("bad-signature", format!("token request: {e}")))?;
    consume_nonce(
        &state.db,
        &request.device_id,
        request.timestamp,
        &request.nonce,
    )
    .await?;
    if row.try_get::<String, _>("approval")? != "approved" {
        return Err(ApiError::forbidden(
            "not-approved",
            format!(
                "device {} waits for an operator to approve its key",
                request.device_id
            ),
        ));
    }
    let expires_at = unix_now() + TOKEN_LIFETIME_SECS;
    Ok(Json(TokenResponse {
        token: state.token_key.issue(&request.device_id, expires_at),
        expires_at,
    }))
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
    let ack = reports::report(&state.db, &device, &deployment, &report).await?;
    if ack.deployment_state.is_terminal() && !ack.duplicate {
        state.caches.invalidate_campaigns();
    }
    Ok(Json(ack).into_response())
}

pub async fn tpm_enroll(
    State(state): State<Shared>,
    AuthenticatedDevice(device): AuthenticatedDevice,
    body: Bytes,
) -> ApiResult<Json<TpmChallenge>> {
    let request: TpmEnrollRequest = parse_body(&body)?;
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
    let result =
        attestation::attest(&state.db, &state.caches, &device, &deployment, &evidence).await?;
    Ok(Json(result))
}
