//! Device bearer tokens: `<device id>.<expiry (unix seconds)>.<hex HMAC-SHA256>` under a
//! key kept in the database, so every server behind one database accepts every other
//! server's tokens without asking the database on each request. A device earns one with
//! a signed token request ([`issue_token`]) and sends it with every other request
//! ([`AuthenticatedDevice`]).

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use cairn_server_api::{TokenRequest, TokenResponse};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::{bearer, consume_nonce, signed_by_device, unix_now, Credentials};
use crate::db::Db;
use crate::devices;
use crate::error::{ApiError, ApiResult};

pub const TOKEN_LIFETIME_SECS: i64 = 900;

const TOKEN_CONTEXT: &[u8] = b"cairn-server-token-v1\0";

/// Answers a token request: signed by the device's enrolled key, fresh, not replayed,
/// and the device approved. An unknown device id gets the answer of a bad signature, so
/// the endpoint does not tell which ids exist.
pub async fn issue_token(
    db: &Db,
    key: &TokenKey,
    request: &TokenRequest,
) -> ApiResult<TokenResponse> {
    let device = signed_by_device(db, &request.device_id, "token request", |key| {
        request.verify(key)
    })
    .await?;
    consume_nonce(db, &request.device_id, request.timestamp, &request.nonce).await?;
    devices::require_approved(&request.device_id, &device.approval)?;
    let expires_at = unix_now() + TOKEN_LIFETIME_SECS;
    Ok(TokenResponse {
        token: key.issue(&request.device_id, expires_at),
        expires_at,
    })
}

/// The device a valid bearer token was issued to.
pub struct AuthenticatedDevice(pub String);

impl<S: Credentials> FromRequestParts<S> for AuthenticatedDevice {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        let token = bearer(&parts.headers).ok_or_else(|| {
            ApiError::unauthorized(
                "no-token",
                "send Authorization: Bearer <token> from /v1/device/token",
            )
        })?;
        let device = state.token_key().check(token, unix_now())?;
        Ok(AuthenticatedDevice(device.to_string()))
    }
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
