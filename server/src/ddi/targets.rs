//! DDI targets: devices an operator registers for a hawkBit client, each with a target
//! token. The token is shown once, at registration; the server keeps its SHA-256.

use axum::http::HeaderMap;
use serde::Serialize;
use sha2::{Digest, Sha256};
use sqlx::Row as _;

use crate::audit;
use crate::db::{now_ms, random_bytes, Db};
use crate::devices::{self, check_name, join_tags, APPROVED};
use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Serialize)]
pub struct Registered {
    pub device_id: String,
    /// `Authorization: TargetToken <token>`; not stored, so not shown again.
    pub token: String,
}

/// What the server assumes a DDI device runs until it confirms a release: hawkBit clients
/// do not say which version they run.
pub const UNKNOWN_VERSION: &str = "0.0.0";

/// Adds `id` as an approved device of `compatible` that speaks DDI (audited as `actor`'s),
/// running `version` ([`UNKNOWN_VERSION`] when not given). An id already in the registry
/// is refused: `409 device-exists`.
pub async fn register(
    db: &Db,
    id: &str,
    compatible: &str,
    tags: &[String],
    version: Option<&str>,
    actor: &str,
) -> ApiResult<Registered> {
    check_name("device id", id)?;
    check_name("compatible", compatible)?;
    let version = version.unwrap_or(UNKNOWN_VERSION);
    if semver::Version::parse(version).is_err() {
        return Err(ApiError::bad_request(
            "bad-version",
            format!("version {version:?} is not semver"),
        ));
    }
    let tags = join_tags(tags)?;
    let token = hex::encode(random_bytes::<32>());
    let now = now_ms();
    let mut tx = db.pool.begin().await?;
    let inserted = sqlx::query(
        "INSERT INTO devices (id, public_key, approval, compatible, tags, version, created_at) \
         VALUES ($1, '', $2, $3, $4, $5, $6) ON CONFLICT DO NOTHING",
    )
    .bind(id)
    .bind(APPROVED)
    .bind(compatible)
    .bind(&tags)
    .bind(version)
    .bind(now)
    .execute(&mut *tx)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::conflict(
            "device-exists",
            format!("device {id} is already in the registry"),
        ));
    }
    sqlx::query(
        "INSERT INTO ddi_targets (device_id, token_sha256, created_at) VALUES ($1, $2, $3)",
    )
    .bind(id)
    .bind(token_digest(&token))
    .bind(now)
    .execute(&mut *tx)
    .await?;
    let detail = format!("hawkBit DDI target of {compatible} running {version}, approved");
    audit::record(&mut tx, actor, "ddi-registered", id, &detail).await?;
    tx.commit().await?;
    Ok(Registered {
        device_id: id.to_string(),
        token,
    })
}

fn token_digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What a request learns of the target it authenticated.
pub struct Target {
    /// Whether the client has sent its configData yet (the poll asks for it until then).
    pub has_attributes: bool,
}

/// The device `controller_id` when `headers` carry its target token and it is approved.
/// A wrong, unknown or missing token gets one answer, so ids cannot be probed.
pub async fn authenticate(db: &Db, headers: &HeaderMap, controller_id: &str) -> ApiResult<Target> {
    let unauthorized = || {
        ApiError::unauthorized(
            "bad-target-token",
            "send Authorization: TargetToken <token> of this controller id",
        )
    };
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("TargetToken "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(unauthorized)?;
    let row = sqlx::query("SELECT device_id, attributes FROM ddi_targets WHERE token_sha256 = $1")
        .bind(token_digest(token))
        .fetch_optional(&db.pool)
        .await?
        .ok_or_else(unauthorized)?;
    if row.try_get::<String, _>("device_id")? != controller_id {
        return Err(unauthorized());
    }
    devices::require_active(db, controller_id).await?;
    Ok(Target {
        has_attributes: row.try_get::<Option<String>, _>("attributes")?.is_some(),
    })
}

/// Keeps the client's configData (`{"key": "value", ...}`) and notes it in the history.
pub async fn set_attributes(
    db: &Db,
    device_id: &str,
    attributes: &serde_json::Map<String, serde_json::Value>,
) -> ApiResult<()> {
    let bad = |m: String| Err(ApiError::bad_request("bad-config-data", m));
    if attributes.len() > 64 {
        return bad(format!("{} attributes, at most 64", attributes.len()));
    }
    let mut shown = Vec::new();
    for (key, value) in attributes {
        let Some(value) = value.as_str() else {
            return bad(format!("attribute {key:?} is not a string"));
        };
        if key.is_empty() || key.len() > 128 || value.len() > 512 {
            return bad(format!(
                "attribute {key:?}: keys are 1 to 128 bytes, values at most 512"
            ));
        }
        if key.chars().chain(value.chars()).any(char::is_control) {
            return bad(format!("attribute {key:?} holds control characters"));
        }
        shown.push(format!("{key}={value}"));
    }
    let json = serde_json::to_string(attributes).map_err(anyhow::Error::from)?;
    let mut tx = db.pool.begin().await?;
    sqlx::query("UPDATE ddi_targets SET attributes = $1 WHERE device_id = $2")
        .bind(&json)
        .bind(device_id)
        .execute(&mut *tx)
        .await?;
    devices::record_in(
        &mut tx,
        device_id,
        now_ms(),
        "config-data",
        &shown.join(", "),
    )
    .await?;
    tx.commit().await?;
    Ok(())
}
