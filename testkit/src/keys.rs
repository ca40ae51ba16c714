//! Signing keys and trust roots.

use cairn_bundle::{SignedRoot, SigningKey};
use time::{Duration, OffsetDateTime};

/// `days` from now (negative: in the past).
pub fn in_days(days: i64) -> OffsetDateTime {
    OffsetDateTime::now_utc() + Duration::days(days)
}

/// A fresh signing key.
pub fn new_key() -> SigningKey {
    SigningKey::generate().expect("a signing key from the OS's randomness")
}

/// A second handle on `key` (`SigningKey` is not `Clone`: only tests copy secrets).
pub fn copy_key(key: &SigningKey) -> SigningKey {
    SigningKey::from_json(&key.to_json()).expect("a key file this key just wrote")
}

/// A root at `version` listing `keys`, `threshold` of them needed, signed by all of them.
pub fn root_with(
    keys: &[&SigningKey],
    version: u64,
    threshold: usize,
    expires: OffsetDateTime,
) -> SignedRoot {
    let mut root = SignedRoot::new(
        version,
        expires,
        threshold,
        keys.iter().map(|k| k.public()).collect(),
    );
    for key in keys {
        root.sign(key).expect("signing a test root");
    }
    root
}

/// The first root (version 1) of a one-key fleet, expiring in `days`.
pub fn root_for(key: &SigningKey, days: i64) -> SignedRoot {
    root_with(&[key], 1, 1, in_days(days))
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_bundle::TrustRoot;

    #[test]
    fn a_root_for_a_key_is_trusted_and_names_it() {
        let key = new_key();
        let root = TrustRoot::anchor(root_for(&key, 30)).unwrap();
        let again = TrustRoot::anchor(root_for(&copy_key(&key), 30)).unwrap();
        assert_eq!(root.version(), 1);
        assert_eq!(root.threshold(), 1);
        assert_eq!(root.keys().len(), 1);
        assert_eq!(root.keys()[0].id, key.id());
        assert_eq!(again.keys()[0].id, key.id());
    }
}
