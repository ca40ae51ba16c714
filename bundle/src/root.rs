//! The trust root (`root.json`): which keys may sign, how many must, until when.
//!
//! Rotation follows TUF: root N+1 is accepted only when a threshold of root N's keys
//! AND a threshold of its own keys signed it. A device walks the chain forward one
//! version at a time and never goes back.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::error::{Error, Result};
use crate::keys::{PublicKey, Signature, SigningKey};
use crate::signatures::{add_signature, canonical_message, check_threshold, ROOT_CONTEXT};

pub const ROOT_TYPE: &str = "cairn-root";

/// The signed body of a trust root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RootBody {
    #[serde(rename = "type")]
    pub kind: String,
    pub version: u64,
    #[serde(with = "time::serde::rfc3339")]
    pub expires: OffsetDateTime,
    pub threshold: usize,
    pub keys: Vec<PublicKey>,
}

/// A trust root document as stored in `root.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedRoot {
    pub signed: RootBody,
    pub signatures: Vec<Signature>,
}

impl SignedRoot {
    /// Parses `root.json` without checking any signature.
    pub fn parse(bytes: &[u8]) -> Result<SignedRoot> {
        let root: SignedRoot = serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "trust root",
            source,
        })?;
        root.check_shape()?;
        Ok(root)
    }

    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec_pretty(self).expect("root serialises")
    }

    /// A new, unsigned root body wrapped for signing.
    pub fn new(
        version: u64,
        expires: OffsetDateTime,
        threshold: usize,
        keys: Vec<PublicKey>,
    ) -> SignedRoot {
        SignedRoot {
            signed: RootBody {
                kind: ROOT_TYPE.into(),
                version,
                expires,
                threshold,
                keys,
            },
            signatures: Vec::new(),
        }
    }

    /// The exact bytes signatures are made over.
    pub fn message(&self) -> Result<Vec<u8>> {
        canonical_message(ROOT_CONTEXT, "trust root body", &self.signed)
    }

    /// Adds (or replaces) `key`'s signature.
    pub fn sign(&mut self, key: &SigningKey) -> Result<()> {
        let sig = key.sign(&self.message()?);
        add_signature(&mut self.signatures, sig);
        Ok(())
    }

    fn check_shape(&self) -> Result<()> {
        let b = &self.signed;
        if b.kind != ROOT_TYPE {
            return Err(Error::invalid(format!(
                "trust root type is '{}', expected '{ROOT_TYPE}'",
                b.kind
            )));
        }
        if b.threshold == 0 || b.threshold > b.keys.len() {
            return Err(Error::invalid(format!(
                "trust root v{} threshold {} is impossible with {} keys",
                b.version,
                b.threshold,
                b.keys.len()
            )));
        }
        for key in &b.keys {
            key.verifying_key()?;
        }
        Ok(())
    }

    /// Checks that a threshold of this root's own keys signed it (a self-signed root).
    fn check_self_signed(&self) -> Result<()> {
        check_threshold(
            "trust root",
            &self.message()?,
            &self.signatures,
            &self.signed.keys,
            self.signed.threshold,
        )
    }
}

/// A trust root the device has accepted: the anchor for every manifest check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustRoot {
    root: SignedRoot,
}

impl TrustRoot {
    /// Accepts a root installed out of band (factory image, read-only root filesystem).
    /// Its own signatures must meet its threshold; expiry is checked where it is used.
    pub fn anchor(root: SignedRoot) -> Result<TrustRoot> {
        root.check_shape()?;
        root.check_self_signed()?;
        Ok(TrustRoot { root })
    }

    pub fn from_json(bytes: &[u8]) -> Result<TrustRoot> {
        TrustRoot::anchor(SignedRoot::parse(bytes)?)
    }

    pub fn version(&self) -> u64 {
        self.root.signed.version
    }

    pub fn expires(&self) -> OffsetDateTime {
        self.root.signed.expires
    }

    pub fn keys(&self) -> &[PublicKey] {
        &self.root.signed.keys
    }

    pub fn threshold(&self) -> usize {
        self.root.signed.threshold
    }

    pub fn document(&self) -> &SignedRoot {
        &self.root
    }

    /// Fails when this root has expired at `now`.
    pub fn check_unexpired(&self, now: OffsetDateTime) -> Result<()> {
        if now >= self.expires() {
            return Err(Error::Expired {
                what: format!("trust root v{}", self.version()),
                expires: fmt_time(self.expires()),
            });
        }
        Ok(())
    }

    /// Accepts `next` as the successor of this root, or says why not.
    pub fn rotate(&self, next: SignedRoot) -> Result<TrustRoot> {
        let (from, to) = (self.version(), next.signed.version);
        let reject = |reason: String| Error::RootRotation { from, to, reason };
        if to != from + 1 {
            return Err(reject(format!("expected version {}", from + 1)));
        }
        next.check_shape().map_err(|e| reject(e.to_string()))?;
        let message = next.message()?;
        check_threshold(
            "old root",
            &message,
            &next.signatures,
            self.keys(),
            self.threshold(),
        )
        .map_err(|e| reject(format!("not signed by the current root: {e}")))?;
        next.check_self_signed()
            .map_err(|e| reject(format!("not signed by its own keys: {e}")))?;
        Ok(TrustRoot { root: next })
    }

    /// Walks forward through `candidates` (any order, any extra or older entries are
    /// ignored) and returns the newest root reachable one version at a time. Only the
    /// final root has to be unexpired, as in TUF: a device that was offline for years
    /// can still catch up through roots that expired meanwhile.
    pub fn walk_forward(
        &self,
        candidates: &[SignedRoot],
        now: OffsetDateTime,
    ) -> Result<TrustRoot> {
        Ok(self.follow(candidates, now)?.root)
    }

    /// [`TrustRoot::walk_forward`], saying which candidates it accepted and which it
    /// skipped. A candidate that does not verify as the next version is skipped, never
    /// fatal: a bad root carried next to good ones (an unsigned future version, a forgery)
    /// neither blocks the good ones nor becomes trusted.
    pub fn follow(&self, candidates: &[SignedRoot], now: OffsetDateTime) -> Result<Walk> {
        let mut walk = Walk {
            root: self.clone(),
            accepted: Vec::new(),
            skipped: Vec::new(),
        };
        'next_version: loop {
            let wanted = walk.root.version() + 1;
            for candidate in candidates.iter().filter(|c| c.signed.version == wanted) {
                match walk.root.rotate(candidate.clone()) {
                    Ok(next) => {
                        walk.accepted.push(candidate.clone());
                        walk.root = next;
                        continue 'next_version;
                    }
                    Err(e) => walk.skipped.push(e),
                }
            }
            break;
        }
        walk.root.check_unexpired(now)?;
        Ok(walk)
    }
}

/// Where [`TrustRoot::follow`] got to.
#[derive(Debug)]
pub struct Walk {
    /// The newest root reached.
    pub root: TrustRoot,
    /// The roots that verified on the way, oldest first: the only ones worth keeping.
    pub accepted: Vec<SignedRoot>,
    /// Why the other candidates for a next version were not accepted.
    pub skipped: Vec<Error>,
}

pub(crate) fn fmt_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
