//! Canonical JSON: object keys sorted by their UTF-8 bytes, no insignificant white space.
//!
//! Signatures are over exact bytes. For manifests those bytes are stored in the bundle and
//! never re-serialised. Trust roots are edited by people, so their `signed` part is
//! re-serialised canonically before its signatures are checked. We sort keys ourselves
//! rather than rely on `serde_json::Map` being a `BTreeMap`, which another crate in the
//! build could change by enabling serde_json's `preserve_order` feature.

use serde::Serialize;
use serde_json::Value;

use crate::error::{Error, Result};

/// Serialises `value` to canonical JSON bytes.
pub fn to_vec<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    let value = serde_json::to_value(value).map_err(|source| Error::Json {
        what: "value to serialise",
        source,
    })?;
    let mut out = Vec::new();
    write_value(&value, &mut out);
    Ok(out)
}

/// Canonical bytes of an already parsed JSON value.
pub fn value_to_vec(value: &Value) -> Vec<u8> {
    let mut out = Vec::new();
    write_value(value, &mut out);
    out
}

fn write_value(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<_> = map.iter().collect();
            entries.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, val)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_scalar(&Value::String(key.clone()), out);
                out.push(b':');
                write_value(val, out);
            }
            out.push(b'}');
        }
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(item, out);
            }
            out.push(b']');
        }
        scalar => write_scalar(scalar, out),
    }
}

fn write_scalar(value: &Value, out: &mut Vec<u8>) {
    // serde_json's compact form of a scalar is already canonical.
    out.extend_from_slice(value.to_string().as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorts_keys_at_every_depth_and_drops_white_space() {
        let v: Value =
            serde_json::from_str(r#"{ "b": 1, "a": {"z": [1, {"y": 2, "x": 3}], "c": "é"} }"#)
                .unwrap();
        assert_eq!(
            String::from_utf8(value_to_vec(&v)).unwrap(),
            r#"{"a":{"c":"é","z":[1,{"x":3,"y":2}]},"b":1}"#
        );
    }
}
