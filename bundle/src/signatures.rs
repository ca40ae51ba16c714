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

/// The exact bytes signed for the JSON document `body` in `context`: its canonical form
/// (`canonical`), so an edited-by-hand document verifies as long as its content is the same.
pub(crate) fn canonical_message<T: serde::Serialize>(
    context: &[u8],
    what: &'static str,
    body: &T,
) -> Result<Vec<u8>> {
    let value = serde_json::to_value(body).map_err(|source| Error::Json { what, source })?;
    Ok(signed_message(
        context,
        &crate::canonical::value_to_vec(&value),
    ))
}

/// Adds `sig` to `signatures`, replacing an older signature by the same key.
pub(crate) fn add_signature(signatures: &mut Vec<Signature>, sig: Signature) {
    signatures.retain(|s| s.key_id != sig.key_id);
    signatures.push(sig);
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
