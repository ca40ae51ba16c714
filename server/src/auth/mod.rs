//! Request authentication, all of it in one place:
//! - [`signed`]: requests a device signs with its enrollment key (enroll, token, key
//!   rotation): the signature, a timestamp window and a one-time nonce.
//! - [`device`]: the short-lived bearer tokens those requests earn, and the
//!   [`AuthenticatedDevice`] extractor every other device API handler takes.
//! - [`admin`]: the admin token: the [`Admin`] extractor of the admin API and the
//!   dashboard's header, cookie or `?token=` check.
//! - [`session`]: dashboard users' sessions and the CSRF tokens of their forms.
//!
//! The extractors take any state that offers the keys ([`Credentials`]), so this module
//! does not depend on the application state.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::header::AUTHORIZATION;
use axum::http::HeaderMap;
use sqlx::Row as _;

use crate::db::{random_bytes, Db};
use crate::error::ApiResult;

pub mod admin;
pub mod device;
pub mod session;
pub mod signed;

pub use admin::{admin_token, dashboard_access, Admin, AdminToken, DashboardAccess};
pub use device::{issue_token, AuthenticatedDevice, TokenKey, TOKEN_LIFETIME_SECS};
pub use session::{session_cookie, Principal, SessionKey, SESSION_COOKIE};
pub use signed::{
    check_enrollment, consume_nonce, purge_nonces, rotate_key, signed_by_device, SignedBy,
    CLOCK_SKEW_SECS,
};

/// What requests are checked against; the application state offers it.
pub trait Credentials: Send + Sync {
    fn token_key(&self) -> &TokenKey;
    fn admin_token(&self) -> &AdminToken;
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(AUTHORIZATION)?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}

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
