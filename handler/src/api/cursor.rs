//! Opaque keyset cursors: the position signed with HMAC-SHA256 and bound to the query it came from.
//!
//! A cursor carries the last row's sort value and id, plus a fingerprint of the listing's filters and
//! sort. Replaying it with other filters, or editing it, is a 400: a client cannot walk another query's
//! keyset or forge positions. The key comes from `METERLINE_CURSOR_KEY`, shared by every instance.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::error::{AppError, ErrorCode, FieldError};

type HmacSha256 = Hmac<Sha256>;

const MAC_LEN: usize = 16;

/// Signs and verifies cursors.
#[derive(Clone)]
pub struct CursorSigner {
    key: Vec<u8>,
}

impl std::fmt::Debug for CursorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorSigner(..)")
    }
}

/// The fingerprint of a listing's parameters: any change to filters or sort changes it.
pub fn fingerprint(parts: &[&str]) -> [u8; 8] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..8].try_into().expect("8 bytes")
}

impl CursorSigner {
    pub fn new(key: Vec<u8>) -> Self {
        CursorSigner { key }
    }

    fn mac(&self, data: &[u8]) -> [u8; MAC_LEN] {
        let mut mac = HmacSha256::new_from_slice(&self.key).expect("HMAC takes any key length");
        mac.update(data);
        mac.finalize().into_bytes()[..MAC_LEN].try_into().expect("16 bytes")
    }

    /// `position` serialized, prefixed by the query fingerprint, suffixed by the MAC; base64url.
    pub fn encode<T: Serialize>(&self, query: [u8; 8], position: &T) -> String {
        let mut data = query.to_vec();
        data.extend(serde_json::to_vec(position).expect("cursor positions serialize"));
        let mac = self.mac(&data);
        data.extend(mac);
        URL_SAFE_NO_PAD.encode(data)
    }

    /// The position, if the cursor is intact and was issued for this same query.
    pub fn decode<T: DeserializeOwned>(&self, query: [u8; 8], cursor: &str) -> Result<T, AppError> {
        let invalid = |why: &str| {
            AppError::new(ErrorCode::ValidationFailed)
                .with_detail(format!("the cursor {why}; start again from the first page"))
                .with_parameter_errors(vec![FieldError::new("cursor", "invalid", why)])
        };
        let data = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| invalid("is not a cursor this API issued"))?;
        if data.len() < 8 + MAC_LEN {
            return Err(invalid("is not a cursor this API issued"));
        }
        let (signed, mac) = data.split_at(data.len() - MAC_LEN);
        let expected = self.mac(signed);
        // Constant-time comparison of the tag.
        if expected.iter().zip(mac).fold(0u8, |acc, (a, b)| acc | (a ^ b)) != 0 {
            return Err(invalid("was altered or issued by another deployment"));
        }
        if signed[..8] != query {
            return Err(invalid("belongs to a listing with other filters or another sort order"));
        }
        serde_json::from_slice(&signed[8..]).map_err(|_| invalid("is not a cursor this API issued"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_tampering_and_other_queries() {
        let signer = CursorSigner::new(b"k".repeat(32));
        let q = fingerprint(&["status=draft", "orderby=title asc"]);
        let cursor = signer.encode(q, &("Zebra", 7));
        assert_eq!(signer.decode::<(String, i32)>(q, &cursor).unwrap(), ("Zebra".to_owned(), 7));

        let other = fingerprint(&["status=published", "orderby=title asc"]);
        assert!(
            signer.decode::<(String, i32)>(other, &cursor).unwrap_err().detail().unwrap().contains("other filters")
        );

        let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        bytes[10] ^= 1;
        let forged = URL_SAFE_NO_PAD.encode(bytes);
        assert!(signer.decode::<(String, i32)>(q, &forged).unwrap_err().detail().unwrap().contains("altered"));
        assert!(CursorSigner::new(b"x".repeat(32)).decode::<(String, i32)>(q, &cursor).is_err(), "another key");
        assert!(signer.decode::<(String, i32)>(q, "!!").is_err());
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]), "parts are length-delimited");
    }
}
