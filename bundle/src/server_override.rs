//! A signed server override (`server-override.json` on a device's data partition): which
//! fleet server a device checks in with, and the CA that server's certificate chains to,
//! when that differs from what its image says.
//!
//! One image serves every site, but a site may run its own server. The data partition is
//! writable and covered by neither dm-verity nor an update, so a server address there
//! must not be taken on its word: whoever could write the partition could send the device
//! to a server of their own. The override is accepted only when a threshold of the trust
//! root's keys signed it, the same keys and threshold a release needs, so the only servers
//! a device can be sent to are ones the fleet's release signers named. It may name the
//! devices it is for; then no other device takes it.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::keys::{Signature, SigningKey};
use crate::root::TrustRoot;
use crate::signatures::{add_signature, canonical_message, check_threshold};

pub const SERVER_OVERRIDE_TYPE: &str = "cairn-server-override";
/// Domain separation: a release signer's signature over an override can never be taken
/// for one over a manifest or a trust root, nor the other way round.
pub const SERVER_OVERRIDE_CONTEXT: &[u8] = b"cairn-server-override-v1\0";

/// What the signers vouch for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerOverrideBody {
    #[serde(rename = "type")]
    pub kind: String,
    /// The fleet server's base URL, in place of the image's `[server] url`.
    pub url: String,
    /// PEM certificate(s) of the CA the server's certificate must chain to, in place of
    /// the image's `[server] ca`; none: the image's pin stays.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The device IDs this override is for; empty: any device of the fleet.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<String>,
}

/// The file: the body and its signatures.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedServerOverride {
    pub signed: ServerOverrideBody,
    pub signatures: Vec<Signature>,
}

impl SignedServerOverride {
    /// An unsigned override for `url`.
    pub fn new(url: &str, ca_pem: Option<String>, devices: Vec<String>) -> SignedServerOverride {
        SignedServerOverride {
            signed: ServerOverrideBody {
                kind: SERVER_OVERRIDE_TYPE.into(),
                url: url.into(),
                ca_pem,
                devices,
            },
            signatures: Vec::new(),
        }
    }

    /// Parses the file without checking any signature.
    pub fn parse(bytes: &[u8]) -> Result<SignedServerOverride> {
        let parsed: SignedServerOverride =
            serde_json::from_slice(bytes).map_err(|source| Error::Json {
                what: "server override",
                source,
            })?;
        if parsed.signed.kind != SERVER_OVERRIDE_TYPE {
            return Err(Error::invalid(format!(
                "server override type is '{}', expected '{SERVER_OVERRIDE_TYPE}'",
                parsed.signed.kind
            )));
        }
        Ok(parsed)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("an override serialises")
    }

    /// The exact bytes signatures are made over: the canonical body after the context.
    pub fn message(&self) -> Result<Vec<u8>> {
        canonical_message(
            SERVER_OVERRIDE_CONTEXT,
            "server override body",
            &self.signed,
        )
    }

    /// Adds (or replaces) `key`'s signature.
    pub fn sign(&mut self, key: &SigningKey) -> Result<()> {
        let sig = key.sign(&self.message()?);
        add_signature(&mut self.signatures, sig);
        Ok(())
    }

    /// The body, when a threshold of `root`'s keys signed it and it is for `device_id`.
    pub fn verify(&self, root: &TrustRoot, device_id: &str) -> Result<&ServerOverrideBody> {
        check_threshold(
            "server override",
            &self.message()?,
            &self.signatures,
            root.keys(),
            root.threshold(),
        )?;
        let body = &self.signed;
        if !body.devices.is_empty() && !body.devices.iter().any(|d| d == device_id) {
            return Err(Error::invalid(format!(
                "the server override is for {} device(s), not for {device_id}",
                body.devices.len()
            )));
        }
        Ok(body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical;
    use crate::root::SignedRoot;
    use crate::signatures::signed_message;
    use time::OffsetDateTime;

    fn root_of(keys: &[&SigningKey], threshold: usize) -> TrustRoot {
        let mut root = SignedRoot::new(
            1,
            OffsetDateTime::now_utc() + time::Duration::days(365),
            threshold,
            keys.iter().map(|k| k.public()).collect(),
        );
        for key in keys {
            root.sign(key).unwrap();
        }
        TrustRoot::anchor(root).unwrap()
    }

    fn signed(key: &SigningKey, devices: &[&str]) -> SignedServerOverride {
        let mut o = SignedServerOverride::new(
            "https://site-3.example:8443",
            Some("-----BEGIN CERTIFICATE-----\n...".into()),
            devices.iter().map(|d| d.to_string()).collect(),
        );
        o.sign(key).unwrap();
        o
    }

    #[test]
    fn an_override_signed_by_the_root_is_accepted_after_a_round_trip() {
        let key = SigningKey::generate().unwrap();
        let root = root_of(&[&key], 1);
        let parsed = SignedServerOverride::parse(&signed(&key, &[]).to_json()).unwrap();
        let body = parsed.verify(&root, "dev-1").unwrap();
        assert_eq!(body.url, "https://site-3.example:8443");
    }

    #[test]
    fn a_foreign_key_an_edited_url_or_a_missing_signature_is_refused() {
        let key = SigningKey::generate().unwrap();
        let root = root_of(&[&key], 1);
        let foreign = signed(&SigningKey::generate().unwrap(), &[]);
        let err = foreign.verify(&root, "dev-1").unwrap_err().to_string();
        assert!(err.contains("not in the trust root"), "{err}");

        let mut edited = signed(&key, &[]);
        edited.signed.url = "https://evil.example".into();
        assert!(edited.verify(&root, "dev-1").is_err());

        let mut unsigned = signed(&key, &[]);
        unsigned.signatures.clear();
        let err = unsigned.verify(&root, "dev-1").unwrap_err().to_string();
        assert!(err.contains("no signatures"), "{err}");
    }

    #[test]
    fn a_threshold_of_two_needs_two_signers() {
        let (a, b) = (
            SigningKey::generate().unwrap(),
            SigningKey::generate().unwrap(),
        );
        let root = root_of(&[&a, &b], 2);
        let mut o = signed(&a, &[]);
        assert!(o.verify(&root, "dev-1").is_err());
        o.sign(&b).unwrap();
        o.verify(&root, "dev-1").unwrap();
    }

    #[test]
    fn an_override_for_named_devices_is_refused_by_any_other() {
        let key = SigningKey::generate().unwrap();
        let root = root_of(&[&key], 1);
        let o = signed(&key, &["dev-1", "dev-2"]);
        o.verify(&root, "dev-2").unwrap();
        let err = o.verify(&root, "dev-3").unwrap_err().to_string();
        assert!(err.contains("not for dev-3"), "{err}");
    }

    #[test]
    fn a_signature_over_another_kind_of_document_does_not_count() {
        let key = SigningKey::generate().unwrap();
        let root = root_of(&[&key], 1);
        let mut o = signed(&key, &[]);
        let body = canonical::to_vec(&o.signed).unwrap();
        o.signatures = vec![key.sign(&signed_message(crate::signatures::MANIFEST_CONTEXT, &body))];
        assert!(o.verify(&root, "dev-1").is_err());
    }
}
