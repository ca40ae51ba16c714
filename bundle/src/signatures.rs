//! Threshold signature checking, shared by manifests and trust roots.

use std::collections::BTreeSet;

use crate::error::{Error, Result};
use crate::keys::{PublicKey, Signature};

/// Domain-separation prefixes: a signature over one kind of document can never be
/// replayed as a signature over another.
pub const MANIFEST_CONTEXT: &[u8] = b"cairn-manifest-v1\0";
pub const ROOT_CONTEXT: &[u8] = b"cairn-root-v1\0";

/// The message actually signed for `document` in `context`.
pub fn signed_message(context: &[u8], document: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(context.len() + document.len());
    msg.extend_from_slice(context);
    msg.extend_from_slice(document);
    msg
}

/// Checks that at least `threshold` distinct keys from `keys` produced valid signatures
/// over `message`. Signatures by unknown keys and invalid signatures are not errors by
/// themselves (another signer may be rotating keys) but are named when the threshold is
/// missed, so the operator sees why.
pub fn check_threshold(
    what: &'static str,
    message: &[u8],
    signatures: &[Signature],
    keys: &[PublicKey],
    threshold: usize,
) -> Result<()> {
    let mut valid = BTreeSet::new();
    let mut problems = Vec::new();
    for sig in signatures {
        match keys.iter().find(|k| k.id == sig.key_id) {
            None => problems.push(format!("key {} is not in the trust root", sig.key_id)),
            Some(key) => match key.verify(message, sig) {
                Ok(()) => {
                    valid.insert(key.id.clone());
                }
                Err(e) => problems.push(format!("key {}: {e}", sig.key_id)),
            },
        }
    }
    if threshold == 0 || valid.len() < threshold {
        let details = if signatures.is_empty() {
            "no signatures".to_string()
        } else if problems.is_empty() {
            "not enough distinct signers".to_string()
        } else {
            problems.join("; ")
        };
        return Err(Error::SignatureThreshold {
            what,
            valid: valid.len(),
            threshold,
            details,
        });
    }
    Ok(())
}
