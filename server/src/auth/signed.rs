//! Requests a device signs with its enrollment key: the signature proves the key, the
//! timestamp window and the one-time nonce stop a recorded request from being replayed.

use cairn_server_api::EnrollRequest;

use super::unix_now;
use crate::db::{now_ms, Db};
use crate::error::{ApiError, ApiResult};

/// How far a device clock may be off.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// Checks an enrollment: signed by the key it presents, fresh, and not seen before.
pub async fn check_enrollment(db: &Db, request: &EnrollRequest) -> ApiResult<()> {
    request
        .verify()
        .map_err(|e| ApiError::unauthorized("bad-signature", format!("enrollment: {e}")))?;
    consume_nonce(db, &request.device_id, request.timestamp, &request.nonce).await
}

/// Refuses a signed request whose timestamp is out of the window or whose nonce this
/// device used before; otherwise records the nonce, so the same request is refused next
/// time. Call only after the signature verified (a forger must not burn nonces).
pub async fn consume_nonce(db: &Db, device_id: &str, timestamp: i64, nonce: &str) -> ApiResult<()> {
    let now = unix_now();
    if (timestamp - now).abs() > CLOCK_SKEW_SECS {
        return Err(ApiError::unauthorized(
            "stale-request",
            format!("request timestamp {timestamp} is more than {CLOCK_SKEW_SECS} s from the server clock {now}"),
        ));
    }
    let nonce_ok = (16..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    if !nonce_ok {
        return Err(ApiError::bad_request(
            "bad-nonce",
            "nonce must be 16 to 64 hex digits",
        ));
    }
    // A nonce only needs remembering while its timestamp is inside the window.
    let expires = (timestamp + CLOCK_SKEW_SECS) * 1000;
    let inserted = sqlx::query(
        "INSERT INTO nonces (device_id, nonce, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(device_id)
    .bind(nonce)
    .bind(expires)
    .execute(&db.pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(ApiError::unauthorized(
            "replayed-request",
            "this nonce was used before; the request is refused",
        ));
    }
    Ok(())
}

/// Drops nonces whose timestamps can no longer pass the window check.
pub async fn purge_nonces(db: &Db) -> ApiResult<u64> {
    let done = sqlx::query("DELETE FROM nonces WHERE expires_at < $1")
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected())
}
