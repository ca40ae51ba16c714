//! The admin token: the admin API takes it as a bearer header. The dashboard takes it as
//! a header too, or once in the address (`?token=...`), which it trades for a session
//! cookie and a redirect to the same page without the token: the token itself never
//! sits in a cookie, a bookmark or the browser's history after that first visit.
//!
//! A session is `<expiry>.<nonce>.<mac>`, the MAC an HMAC-SHA256 keyed with the admin
//! token's digest: it needs no server-side store (several servers share nothing but the
//! database), and changing the admin token ends every session.

use axum::extract::{FromRequestParts, Query};
use axum::http::header::COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::{bearer, shared_secret, Credentials};
use crate::db::Db;
use crate::error::{ApiError, ApiResult};

/// The admin token: from the configuration, else the one kept in the database (created
/// on first start and shown by `cairn-server admin-token`).
pub async fn admin_token(db: &Db, configured: Option<&str>) -> ApiResult<String> {
    match configured {
        Some(t) => Ok(t.to_string()),
        None => shared_secret(db, "admin_token").await,
    }
}

/// How long a dashboard session lasts.
pub const SESSION_SECS: i64 = 12 * 3600;
const SESSION_COOKIE: &str = "cairn_session";
const SESSION_CONTEXT: &[u8] = b"cairn-dashboard-session-v1\0";

/// The admin token as its sha256: compared digest to digest, never the token itself.
pub struct AdminToken([u8; 32]);

impl AdminToken {
    pub fn new(token: &str) -> AdminToken {
        AdminToken(Sha256::digest(token.as_bytes()).into())
    }

    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        // Comparing fixed-size digests leaks nothing useful about the token.
        digest == self.0
    }

    fn session_mac(&self, body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(SESSION_CONTEXT);
        mac.update(body.as_bytes());
        mac
    }

    /// A new session value, valid until `now + SESSION_SECS` (unix seconds).
    pub fn new_session(&self, now: i64) -> String {
        let mut nonce = [0u8; 16];
        // Without randomness the nonce is only less unique, never less authentic.
        let _ = getrandom::getrandom(&mut nonce);
        let body = format!("{}.{}", now + SESSION_SECS, hex::encode(nonce));
        let mac = self.session_mac(&body).finalize().into_bytes();
        format!("{body}.{}", hex::encode(mac))
    }

    /// Whether `value` is a session this token made that has not expired at `now`.
    pub fn session_valid(&self, value: &str, now: i64) -> bool {
        let Some((body, mac)) = value.rsplit_once('.') else {
            return false;
        };
        let Some(expires) = body.split('.').next().and_then(|e| e.parse::<i64>().ok()) else {
            return false;
        };
        let Ok(mac) = hex::decode(mac) else {
            return false;
        };
        now < expires && self.session_mac(body).verify_slice(&mac).is_ok()
    }
}

/// Present when the request carries the admin token.
pub struct Admin;

impl<S: Credentials> FromRequestParts<S> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> ApiResult<Self> {
        match bearer(&parts.headers) {
            Some(t) if state.admin_token().matches(t) => Ok(Admin),
            Some(_) => Err(ApiError::unauthorized(
                "bad-admin-token",
                "the admin token is wrong",
            )),
            None => Err(ApiError::unauthorized(
                "no-admin-token",
                "send Authorization: Bearer <admin token>",
            )),
        }
    }
}

/// What a dashboard request's credentials allow.
#[derive(Debug, PartialEq, Eq)]
pub enum DashboardAccess {
    /// The admin token came as a bearer header, or a valid session cookie.
    Allowed,
    /// The page was opened with the right `?token=`: set this `Set-Cookie` value (a new
    /// session) and send the browser to the same path without the token in the address.
    SetCookie(String),
    /// No admin token, or a wrong one.
    Denied,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// Who may see a dashboard page. `now` in unix seconds; `https` when the server serves
/// TLS (the cookie is then `Secure`: a browser never sends it over plain HTTP).
pub fn dashboard_access(
    admin: &AdminToken,
    headers: &HeaderMap,
    uri: &Uri,
    now: i64,
    https: bool,
) -> DashboardAccess {
    let query = Query::<TokenQuery>::try_from_uri(uri).ok();
    if let Some(token) = query.and_then(|q| q.0.token) {
        if admin.matches(&token) {
            let secure = if https { "; Secure" } else { "" };
            return DashboardAccess::SetCookie(format!(
                "{SESSION_COOKIE}={}; Path=/; Max-Age={SESSION_SECS}; HttpOnly; \
                 SameSite=Strict{secure}",
                admin.new_session(now)
            ));
        }
    }
    let prefix = format!("{SESSION_COOKIE}=");
    let from_cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(prefix.as_str()))
        .any(|session| admin.session_valid(session, now));
    let from_header = bearer(headers).is_some_and(|t| admin.matches(t));
    if from_cookie || from_header {
        DashboardAccess::Allowed
    } else {
        DashboardAccess::Denied
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::header::AUTHORIZATION;

    const NOW: i64 = 1_800_000_000;

    fn access(headers: &[(axum::http::HeaderName, &str)], uri: &str, now: i64) -> DashboardAccess {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name, value.parse().unwrap());
        }
        dashboard_access(
            &AdminToken::new("secret"),
            &map,
            &uri.parse().unwrap(),
            now,
            true,
        )
    }

    fn session_cookie(set_cookie: &str) -> String {
        set_cookie.split(';').next().unwrap().to_string()
    }

    #[test]
    fn the_token_in_the_address_is_traded_for_a_session_that_is_not_the_token() {
        let DashboardAccess::SetCookie(set) = access(&[], "/ui/devices?token=secret", NOW) else {
            panic!("no session for the right token");
        };
        assert!(!set.contains("secret"), "the cookie holds the token: {set}");
        for attribute in ["HttpOnly", "SameSite=Strict", "Secure", "Path=/"] {
            assert!(set.contains(attribute), "{attribute} missing: {set}");
        }
        let cookie = session_cookie(&set);
        assert_eq!(
            access(&[(COOKIE, &cookie)], "/", NOW + 60),
            DashboardAccess::Allowed
        );
        assert_eq!(
            access(&[(COOKIE, &cookie)], "/", NOW + SESSION_SECS),
            DashboardAccess::Denied,
            "an expired session"
        );
        // A session of another admin token, or one with its expiry pushed back, is refused.
        let other = AdminToken::new("other").new_session(NOW);
        let forged = format!("cairn_session={other}");
        assert_eq!(
            access(&[(COOKIE, &forged)], "/", NOW),
            DashboardAccess::Denied
        );
        let value = cookie.trim_start_matches("cairn_session=");
        let (_, rest) = value.split_once('.').unwrap();
        let extended = format!("cairn_session={}.{rest}", NOW + 10 * SESSION_SECS);
        assert_eq!(
            access(&[(COOKIE, &extended)], "/", NOW + SESSION_SECS),
            DashboardAccess::Denied
        );
        // The old cookie that held the token itself means nothing now.
        assert_eq!(
            access(&[(COOKIE, "cairn_admin=secret")], "/", NOW),
            DashboardAccess::Denied
        );
    }

    #[test]
    fn dashboard_takes_the_token_from_a_header_a_session_or_the_address_once() {
        assert_eq!(
            access(&[(AUTHORIZATION, "Bearer secret")], "/", NOW),
            DashboardAccess::Allowed
        );
        assert!(matches!(
            access(&[], "/ui/devices?token=secret", NOW),
            DashboardAccess::SetCookie(_)
        ));
        assert_eq!(access(&[], "/?token=wrong", NOW), DashboardAccess::Denied);
        assert_eq!(
            access(&[(COOKIE, "cairn_session=1.2.3")], "/", NOW),
            DashboardAccess::Denied
        );
        assert_eq!(access(&[], "/", NOW), DashboardAccess::Denied);
    }

    #[test]
    fn over_plain_http_the_session_cookie_is_not_marked_secure() {
        let plain = dashboard_access(
            &AdminToken::new("secret"),
            &HeaderMap::new(),
            &"/?token=secret".parse().unwrap(),
            NOW,
            false,
        );
        let DashboardAccess::SetCookie(set) = plain else {
            panic!("no session");
        };
        assert!(!set.contains("Secure"), "{set}");
    }
}
