//! Device authentication on the server side: checking signed requests (timestamp window
//! plus one-time nonce), issuing short-lived bearer tokens, and checking them.
//!
//! Tokens are `<device id>.<expiry (unix seconds)>.<hex HMAC-SHA256>` under a key kept in
//! the database, so every server behind one database accepts every other server's tokens
//! without asking the database on each request.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::Sha256;
use sqlx::Row as _;

use crate::db::{now_ms, random_bytes, Db};
use crate::error::{ApiError, ApiResult};

/// How far a device clock may be off.
pub const CLOCK_SKEW_SECS: i64 = 300;
pub const TOKEN_LIFETIME_SECS: i64 = 900;

const TOKEN_CONTEXT: &[u8] = b"cairn-server-token-v1\0";

pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// Loads a named secret, creating it on first use. Servers racing to create it agree:
/// the insert is a no-op for all but one, and everyone reads the row that won.
pub async fn shared_secret(db: &Db, name: &str) -> ApiResult<String> {
    sqlx::query("INSERT INTO server_secrets (name, value) VALUES ($1, $2) ON CONFLICT DO NOTHING")
        .bind(name)
        .bind(hex::encode(random_bytes::<32>()))
        .execute(&db.pool)
        .await?;
    let row = sqlx::query("SELECT value FROM server_secrets WHERE name = $1")
        .bind(name)
        .fetch_one(&db.pool)
        .await?;
    Ok(row.try_get("value")?)
}

/// The admin token: from the configuration, else the one kept in the database (created
/// on first start and shown by `cairn-server admin-token`).
pub async fn admin_token(db: &Db, configured: Option<&str>) -> ApiResult<String> {
    match configured {
        Some(t) => Ok(t.to_string()),
        None => shared_secret(db, "admin_token").await,
    }
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

#[derive(Clone)]
pub struct TokenKey(Vec<u8>);

impl TokenKey {
    pub fn new(secret_hex: &str) -> TokenKey {
        TokenKey(secret_hex.as_bytes().to_vec())
    }

    fn mac(&self, device_id: &str, expires: i64) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.0)
            .expect("HMAC accepts keys of any length");
        mac.update(TOKEN_CONTEXT);
        mac.update(device_id.as_bytes());
        mac.update(b"\0");
        mac.update(expires.to_string().as_bytes());
        mac
    }

    pub fn issue(&self, device_id: &str, expires: i64) -> String {
        let tag = self.mac(device_id, expires).finalize().into_bytes();
        format!("{device_id}.{expires}.{}", hex::encode(tag))
    }

    /// The device a token was issued to, if the token is genuine and unexpired.
    pub fn check<'t>(&self, token: &'t str, now: i64) -> ApiResult<&'t str> {
        let bad = || ApiError::unauthorized("bad-token", "the bearer token is not valid");
        let (rest, tag) = token.rsplit_once('.').ok_or_else(bad)?;
        let (device_id, expires) = rest.rsplit_once('.').ok_or_else(bad)?;
        let expires: i64 = expires.parse().map_err(|_| bad())?;
        let tag = hex::decode(tag).map_err(|_| bad())?;
        // verify_slice compares in constant time.
        self.mac(device_id, expires)
            .verify_slice(&tag)
            .map_err(|_| bad())?;
        if expires <= now {
            return Err(ApiError::unauthorized(
                "token-expired",
                "the bearer token expired; request a new one",
            ));
        }
        Ok(device_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_device_and_cannot_be_altered() {
        let key = TokenKey::new("k1");
        let token = key.issue("dev-1", 1000);
        assert_eq!(key.check(&token, 999).ok(), Some("dev-1"));
        assert!(key.check(&token, 1000).is_err(), "expired");
        let moved = token.replacen("dev-1", "dev-2", 1);
        assert!(key.check(&moved, 999).is_err(), "other device");
        let longer = token.replacen(".1000.", ".2000.", 1);
        assert!(key.check(&longer, 999).is_err(), "extended expiry");
        assert!(
            TokenKey::new("k2").check(&token, 999).is_err(),
            "other server key"
        );
        assert!(key.check("garbage", 0).is_err());
    }
}
