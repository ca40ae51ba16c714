//! Who a dashboard request acts as, and the CSRF token its forms carry.
//!
//! A user who signs in gets the cookie `cairn_session=u.<name>.<expiry>.<nonce>.<mac>`, the
//! MAC an HMAC-SHA256 under the server's session key (a secret in the database, so
//! servers sharing it accept each other's sessions). The user's role and whether the
//! account is enabled are read from the database at every request, so a change takes
//! effect at once. The admin token's own session (`admin.rs`) stands for the role admin.
//!
//! Every form that changes something carries `csrf`, an HMAC of the session cookie under
//! the same key with its own context: a page of another site can make the browser send
//! the cookie (SameSite=Strict already stops most of that) but cannot read the token.

use axum::http::header::COOKIE;
use axum::http::HeaderMap;
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

use crate::users::Role;

pub const SESSION_COOKIE: &str = "cairn_session";
const USER_SESSION: &[u8] = b"cairn-user-session-v1\0";
const CSRF: &[u8] = b"cairn-csrf-v1\0";

/// Who acts, as the audit log names them, and what they may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// `user:<name>`, or `admin-token`.
    pub actor: String,
    pub role: Role,
}

/// The server's session key (its digest: any length of secret gives a 32-byte key).
pub struct SessionKey([u8; 32]);

impl SessionKey {
    pub fn new(secret: &str) -> SessionKey {
        SessionKey(Sha256::digest(secret.as_bytes()).into())
    }

    fn mac(&self, context: &[u8], body: &str) -> Hmac<Sha256> {
        let mut mac = Hmac::<Sha256>::new_from_slice(&self.0).expect("HMAC takes any key");
        mac.update(context);
        mac.update(body.as_bytes());
        mac
    }

    /// A session of user `name` until `now + secs` (unix seconds).
    pub fn user_session(&self, name: &str, now: i64, secs: i64) -> String {
        let mut nonce = [0u8; 16];
        // Without randomness the nonce is only less unique, never less authentic.
        let _ = getrandom::getrandom(&mut nonce);
        let body = format!("u.{name}.{}.{}", now + secs, hex::encode(nonce));
        let mac = self.mac(USER_SESSION, &body).finalize().into_bytes();
        format!("{body}.{}", hex::encode(mac))
    }

    /// The user a session value names, when this key made it and it has not expired.
    pub fn session_user<'a>(&self, value: &'a str, now: i64) -> Option<&'a str> {
        let (body, mac) = value.rsplit_once('.')?;
        let rest = body.strip_prefix("u.")?;
        let (rest, _nonce) = rest.rsplit_once('.')?;
        let (name, expires) = rest.rsplit_once('.')?;
        let expires: i64 = expires.parse().ok()?;
        let mac = hex::decode(mac).ok()?;
        (now < expires && self.mac(USER_SESSION, body).verify_slice(&mac).is_ok()).then_some(name)
    }

    /// The CSRF token of forms shown under the session `value`.
    pub fn csrf(&self, value: &str) -> String {
        hex::encode(&self.mac(CSRF, value).finalize().into_bytes()[..16])
    }

    /// Whether `token` is the CSRF token of the session `value`.
    pub fn csrf_valid(&self, value: &str, token: &str) -> bool {
        match hex::decode(token) {
            Ok(bytes) if bytes.len() == 16 => {
                let expected = self.mac(CSRF, value).finalize().into_bytes();
                // Both are 16 bytes of a MAC: comparing them leaks nothing useful.
                expected[..16] == bytes[..]
            }
            _ => false,
        }
    }
}

/// The session cookie's value, if the request carries one.
pub fn session_cookie(headers: &HeaderMap) -> Option<&str> {
    let prefix = format!("{SESSION_COOKIE}=");
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|c| c.trim().strip_prefix(prefix.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_800_000_000;

    #[test]
    fn a_user_session_names_its_user_until_it_expires_and_only_under_its_key() {
        let key = SessionKey::new("server secret");
        let session = key.user_session("olga.k", NOW, 3600);
        assert_eq!(key.session_user(&session, NOW + 10), Some("olga.k"));
        assert_eq!(key.session_user(&session, NOW + 3600), None, "expired");
        assert_eq!(SessionKey::new("other").session_user(&session, NOW), None);
        let forged = session.replacen("olga.k", "admin", 1);
        assert_eq!(key.session_user(&forged, NOW), None, "renamed");
        let extended = session.replacen(&(NOW + 3600).to_string(), &(NOW + 99_999).to_string(), 1);
        assert_eq!(key.session_user(&extended, NOW), None, "expiry pushed back");
        assert_eq!(key.session_user("u.olga", NOW), None);
    }

    #[test]
    fn a_csrf_token_belongs_to_one_session() {
        let key = SessionKey::new("server secret");
        let a = key.user_session("olga", NOW, 3600);
        let b = key.user_session("olga", NOW, 3600);
        let token = key.csrf(&a);
        assert!(key.csrf_valid(&a, &token));
        assert!(!key.csrf_valid(&b, &token), "another session's token");
        assert!(!key.csrf_valid(&a, ""), "no token");
        assert!(!key.csrf_valid(&a, "zz"), "not hex");
    }
}
