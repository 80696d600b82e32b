//! Content addresses of node outputs.
//!
//! `result_ref` is `sha256:<hex>` of the output's canonical JSON: compact,
//! object keys sorted (serde_json's default map is ordered), so equal values
//! always get equal addresses whatever order their keys were built in.

use serde_json::Value;
use sha2::{Digest, Sha256};

/// Prefix of every result reference.
pub const REF_PREFIX: &str = "sha256:";

/// The canonical bytes of a value.
pub fn canonical_bytes(v: &Value) -> Vec<u8> {
    // Serialising a Value cannot fail: it has no non-string keys or NaNs.
    serde_json::to_vec(v).unwrap_or_default()
}

/// Returns `(result_ref, canonical bytes)` for an output.
pub fn address(v: &Value) -> (String, Vec<u8>) {
    let bytes = canonical_bytes(v);
    let digest = Sha256::digest(&bytes);
    (format!("{REF_PREFIX}{}", hex::encode(digest)), bytes)
}

/// True when `s` has the form `sha256:` + 64 lower-case hex digits.
pub fn is_valid_ref(s: &str) -> bool {
    s.strip_prefix(REF_PREFIX).is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn key_order_does_not_change_the_address() {
        let a: Value = serde_json::from_str(r#"{"b":1,"a":[1,2]}"#).unwrap();
        let b: Value = serde_json::from_str(r#"{ "a": [1, 2], "b": 1 }"#).unwrap();
        assert_eq!(address(&a), address(&b));
        assert_eq!(canonical_bytes(&a), br#"{"a":[1,2],"b":1}"#);
    }

    #[test]
    fn known_digest() {
        // sha256("null")
        let (r, _) = address(&json!(null));
        assert_eq!(
            r,
            "sha256:74234e98afe7498fb5daf1f36ac2d78acc339464f950703b8c019892f982b90b"
        );
        assert!(is_valid_ref(&r));
        assert!(!is_valid_ref("sha256:xyz"));
    }
}
