//! Requests a device signs with its enrollment key: the signature proves the key, the
//! timestamp window and the one-time nonce stop a recorded request from being replayed.

use std::sync::LazyLock;

use cairn_server_api::{EnrollRequest, RotateKeyRequest, RotateKeyResponse, SignError};
use sqlx::Row as _;

use crate::db::{now_ms, Db};
use crate::devices;
use crate::error::{ApiError, ApiResult};

/// A valid ed25519 key no device holds: a signed request for an unknown device is
/// checked against it, so it costs the same and fails the same way as a forged signature.
static NOBODY: LazyLock<String> = LazyLock::new(|| {
    hex::encode(
        ed25519_dalek::SigningKey::from_bytes(&[0x5a; 32])
            .verifying_key()
            .as_bytes(),
    )
});

/// The device a signed request names, as stored.
pub struct SignedBy {
    /// The enrolled key (lowercase hex) the signature verified against.
    pub public_key: String,
    pub approval: String,
}

/// The device `device_id`, once `verify` accepted the request's signature against its
/// enrolled key. An unknown id is checked against a key nobody holds, and a bad signature
/// and an unknown id get one answer, `401 unknown-device` ("no device with this id holds
/// this key"), so no signed endpoint tells which ids exist. The code is the one cairnd
/// already answers by enrolling, which is right for both: enrolling tells a device whose
/// key the server does not know whether it is pending, approved or holds the wrong key.
/// `what` names the request in the refusal.
pub async fn signed_by_device(
    db: &Db,
    device_id: &str,
    what: &str,
    verify: impl FnOnce(&str) -> Result<(), SignError>,
) -> ApiResult<SignedBy> {
    let row = sqlx::query("SELECT public_key, approval FROM devices WHERE id = $1")
        .bind(device_id)
        .fetch_optional(&db.pool)
        .await?;
    let device = match row {
        Some(row) => Some(SignedBy {
            public_key: row.try_get("public_key")?,
            approval: row.try_get("approval")?,
        }),
        None => None,
    };
    let key = device.as_ref().map_or(NOBODY.as_str(), |d| &d.public_key);
    let bad = |e: SignError| {
        ApiError::unauthorized(
            "unknown-device",
            format!("{what}: no device with this id holds the key that signed it ({e})"),
        )
    };
    let verified = verify(key);
    match (device, verified) {
        (Some(device), Ok(())) => Ok(device),
        (_, Err(e)) => Err(bad(e)),
        // Nobody holds NOBODY's private key; refused all the same should it ever verify.
        (None, Ok(())) => Err(bad(SignError::BadSignature)),
    }
}

/// How far a device clock may be off.
pub const CLOCK_SKEW_SECS: i64 = 300;

/// Checks an enrollment: signed by the key it presents, fresh, and not seen before.
pub async fn check_enrollment(db: &Db, request: &EnrollRequest) -> ApiResult<()> {
    request
        .verify()
        .map_err(|e| ApiError::unauthorized("bad-signature", format!("enrollment: {e}")))?;
    consume_nonce(db, &request.device_id, request.timestamp, &request.nonce).await
}

/// Replaces a device's key: signed by its enrolled key and by the new one (see
/// [`RotateKeyRequest`]), fresh, not replayed, and the device approved. The swap is a
/// compare-and-set on the key the old signature verified against, so of two rotations
/// racing from one key only one wins; the other gets `409 key-changed`.
pub async fn rotate_key(db: &Db, request: &RotateKeyRequest) -> ApiResult<RotateKeyResponse> {
    let device = signed_by_device(db, &request.device_id, "key rotation", |key| {
        request.verify(key).map(drop)
    })
    .await?;
    consume_nonce(db, &request.device_id, request.timestamp, &request.nonce).await?;
    devices::require_approved(&request.device_id, &device.approval)?;
    let new_key = request.new_public_key.to_ascii_lowercase();
    devices::replace_key(db, &request.device_id, &device.public_key, &new_key).await?;
    Ok(RotateKeyResponse {
        device_id: request.device_id.clone(),
        public_key: new_key,
    })
}

/// Whether a request stamped `timestamp` (Unix seconds) is inside the window at `now_ms`.
/// Compared in milliseconds, like [`nonce_expiry`] and the purge, so a nonce is
/// remembered for exactly as long as its timestamp passes: a check in whole seconds would
/// accept a request up to a second after its nonce was purged.
fn in_window(timestamp: i64, now_ms: i64) -> bool {
    timestamp
        .checked_mul(1000)
        .is_some_and(|t| t.abs_diff(now_ms) <= (CLOCK_SKEW_SECS * 1000) as u64)
}

/// The last millisecond at which a request stamped `timestamp` is in the window; its nonce
/// must be remembered until then. Only called on timestamps [`in_window`] accepted, which
/// cannot overflow.
fn nonce_expiry(timestamp: i64) -> i64 {
    timestamp * 1000 + CLOCK_SKEW_SECS * 1000
}

/// Refuses a signed request whose timestamp is out of the window or whose nonce this
/// device used before; otherwise records the nonce, so the same request is refused next
/// time. Call only after the signature verified (a forger must not burn nonces).
pub async fn consume_nonce(db: &Db, device_id: &str, timestamp: i64, nonce: &str) -> ApiResult<()> {
    let now = now_ms();
    if !in_window(timestamp, now) {
        return Err(ApiError::unauthorized(
            "stale-request",
            format!(
                "request timestamp {timestamp} is more than {CLOCK_SKEW_SECS} s from the server clock {}",
                now / 1000
            ),
        ));
    }
    let nonce_ok = (16..=64).contains(&nonce.len()) && nonce.bytes().all(|b| b.is_ascii_hexdigit());
    if !nonce_ok {
        return Err(ApiError::bad_request(
            "bad-nonce",
            "nonce must be 16 to 64 hex digits",
        ));
    }
    let inserted = sqlx::query(
        "INSERT INTO nonces (device_id, nonce, expires_at) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(device_id)
    .bind(nonce)
    .bind(nonce_expiry(timestamp))
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

/// Drops nonces whose timestamps can no longer pass the window check: kept up to and
/// including their [`nonce_expiry`] millisecond.
pub async fn purge_nonces(db: &Db) -> ApiResult<u64> {
    let done = sqlx::query("DELETE FROM nonces WHERE expires_at < $1")
        .bind(now_ms())
        .execute(&db.pool)
        .await?;
    Ok(done.rows_affected())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The purge's rule, `DELETE ... WHERE expires_at < now`.
    fn purgeable(expires_at: i64, now_ms: i64) -> bool {
        expires_at < now_ms
    }

    #[test]
    fn a_nonce_is_purged_only_once_its_timestamp_is_out_of_the_window() {
        let ts = 1_795_400_000;
        let edge = (ts + CLOCK_SKEW_SECS) * 1000;
        for now in (edge - 2000..=edge + 2000).chain((ts - CLOCK_SKEW_SECS) * 1000 - 2..=ts * 1000)
        {
            let expires = nonce_expiry(ts);
            if in_window(ts, now) {
                assert!(
                    !purgeable(expires, now),
                    "purged at {now} while still in the window"
                );
            }
        }
        assert!(in_window(ts, edge) && !purgeable(nonce_expiry(ts), edge));
        assert!(!in_window(ts, edge + 1) && purgeable(nonce_expiry(ts), edge + 1));
        assert!(in_window(ts, (ts - CLOCK_SKEW_SECS) * 1000));
        assert!(!in_window(ts, (ts - CLOCK_SKEW_SECS) * 1000 - 1));
    }

    #[test]
    fn absurd_timestamps_are_out_of_the_window_without_overflowing() {
        for ts in [i64::MIN, i64::MIN / 1000, -1, i64::MAX / 1000, i64::MAX] {
            assert!(!in_window(ts, 1_795_400_000_000), "{ts}");
        }
    }
}
