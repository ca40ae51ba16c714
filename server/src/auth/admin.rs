//! The admin token: the admin API takes it as a bearer header; the dashboard also as a
//! `cairn_admin` cookie, which opening any page once with `?token=...` sets.

use axum::extract::{FromRequestParts, Query};
use axum::http::header::COOKIE;
use axum::http::request::Parts;
use axum::http::{HeaderMap, Uri};
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
    /// The admin token came as a bearer header or the `cairn_admin` cookie.
    Allowed,
    /// The page was opened with the right `?token=`: set this `Set-Cookie` value and
    /// send the browser to the same path without the token in the address.
    SetCookie(String),
    /// No admin token, or a wrong one.
    Denied,
}

#[derive(Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

pub fn dashboard_access(admin: &AdminToken, headers: &HeaderMap, uri: &Uri) -> DashboardAccess {
    let query = Query::<TokenQuery>::try_from_uri(uri).ok();
    if let Some(token) = query.and_then(|q| q.0.token) {
        if admin.matches(&token) {
            return DashboardAccess::SetCookie(format!(
                "cairn_admin={token}; Path=/; HttpOnly; SameSite=Strict"
            ));
        }
    }
    let from_cookie = headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix("cairn_admin="))
        .any(|t| admin.matches(t));
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

    fn access(headers: &[(axum::http::HeaderName, &str)], uri: &str) -> DashboardAccess {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(name, value.parse().unwrap());
        }
        dashboard_access(&AdminToken::new("secret"), &map, &uri.parse().unwrap())
    }

    #[test]
    fn dashboard_takes_the_token_from_a_header_a_cookie_or_the_address_once() {
        assert_eq!(
            access(&[(AUTHORIZATION, "Bearer secret")], "/"),
            DashboardAccess::Allowed
        );
        assert_eq!(
            access(&[(COOKIE, "a=b; cairn_admin=secret")], "/ui/devices"),
            DashboardAccess::Allowed
        );
        assert_eq!(
            access(&[], "/ui/devices?token=secret"),
            DashboardAccess::SetCookie(
                "cairn_admin=secret; Path=/; HttpOnly; SameSite=Strict".into()
            )
        );
        assert_eq!(access(&[], "/?token=wrong"), DashboardAccess::Denied);
        assert_eq!(
            access(&[(COOKIE, "cairn_admin=wrong")], "/"),
            DashboardAccess::Denied
        );
        assert_eq!(access(&[], "/"), DashboardAccess::Denied);
    }
}
