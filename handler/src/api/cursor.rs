//! Opaque keyset cursors: the position sealed with AES-256-GCM-SIV and bound to the query it came from.
//!
//! A cursor carries the last row's sort value and id, plus a fingerprint of the listing's filters and
//! sort. Replaying it with other filters, or editing it, is a 422: a client cannot walk another query's
//! keyset or forge positions. The position is encrypted as well as authenticated, so a cursor shows nothing
//! of what it holds: a relevance page's rank (which depends on index-wide statistics) or a search window's
//! index row numbers (which count every tenant's writes) stay on the server. The key comes from
//! `METERLINE_CURSOR_KEY`, shared by every instance.

use std::sync::Arc;

use aws_lc_rs::aead::{AES_256_GCM_SIV, Aad, LessSafeKey, NONCE_LEN, Nonce, UnboundKey};
use aws_lc_rs::hkdf::{HKDF_SHA256, KeyType, Salt};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use serde::{Serialize, de::DeserializeOwned};
use sha2::{Digest, Sha256};

use crate::error::{AppError, ErrorCode, FieldError};

type HmacSha256 = Hmac<Sha256>;

const FINGERPRINT_LEN: usize = 8;
const TAG_LEN: usize = 16;

/// Seals and opens cursors.
#[derive(Clone)]
pub struct CursorSigner {
    /// Derives each cursor's nonce from what it seals (a synthetic IV): the same position under the same query
    /// gives the same cursor, different ones different nonces, and no random source is needed. GCM-SIV keeps
    /// even a repeated nonce from revealing more than that two cursors are equal.
    nonces: Arc<[u8]>,
    aead: Arc<LessSafeKey>,
}

impl std::fmt::Debug for CursorSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CursorSigner(..)")
    }
}

/// The fingerprint of a listing's parameters: any change to filters or sort changes it.
pub fn fingerprint(parts: &[&str]) -> [u8; FINGERPRINT_LEN] {
    let mut hasher = Sha256::new();
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    hasher.finalize()[..FINGERPRINT_LEN].try_into().expect("8 bytes")
}

/// `len` bytes of key for `purpose`, derived from the configured cursor key with HKDF-SHA256.
fn derive(key: &[u8], purpose: &'static [u8], len: usize) -> Vec<u8> {
    struct Len(usize);
    impl KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let mut out = vec![0; len];
    Salt::new(HKDF_SHA256, b"meterline cursor")
        .extract(key)
        .expand(&[purpose], Len(len))
        .and_then(|okm| okm.fill(&mut out))
        .expect("HKDF-SHA256 yields up to 8 160 bytes");
    out
}

impl CursorSigner {
    pub fn new(key: Vec<u8>) -> Self {
        let sealing = derive(&key, b"seal", AES_256_GCM_SIV.key_len());
        let aead = LessSafeKey::new(UnboundKey::new(&AES_256_GCM_SIV, &sealing).expect("a key of the AEAD's length"));
        CursorSigner { nonces: derive(&key, b"nonce", 32).into(), aead: Arc::new(aead) }
    }

    fn nonce(&self, query: &[u8], plain: &[u8]) -> [u8; NONCE_LEN] {
        let mut mac = HmacSha256::new_from_slice(&self.nonces).expect("HMAC takes any key length");
        mac.update(query);
        mac.update(plain);
        mac.finalize().into_bytes()[..NONCE_LEN].try_into().expect("12 bytes")
    }

    /// `position` serialized and sealed, with the query fingerprint as associated data:
    /// base64url(nonce ‖ fingerprint ‖ ciphertext ‖ tag).
    pub fn encode<T: Serialize>(&self, query: [u8; FINGERPRINT_LEN], position: &T) -> String {
        let mut sealed = serde_json::to_vec(position).expect("cursor positions serialize");
        let nonce = self.nonce(&query, &sealed);
        self.aead
            .seal_in_place_append_tag(Nonce::assume_unique_for_key(nonce), Aad::from(query), &mut sealed)
            .expect("a cursor is far below the AEAD's length limit");
        let mut data = Vec::with_capacity(NONCE_LEN + FINGERPRINT_LEN + sealed.len());
        data.extend(nonce);
        data.extend(query);
        data.extend(sealed);
        URL_SAFE_NO_PAD.encode(data)
    }

    /// The position, if the cursor is intact and was issued for this same query.
    pub fn decode<T: DeserializeOwned>(&self, query: [u8; FINGERPRINT_LEN], cursor: &str) -> Result<T, AppError> {
        let invalid = |why: &str| {
            AppError::new(ErrorCode::ValidationFailed)
                .with_detail(format!("the cursor {why}; start again from the first page"))
                .with_parameter_errors(vec![FieldError::new("cursor", "invalid", why)])
        };
        let mut data = URL_SAFE_NO_PAD.decode(cursor.trim()).map_err(|_| invalid("is not a cursor this API issued"))?;
        if data.len() < NONCE_LEN + FINGERPRINT_LEN + TAG_LEN {
            return Err(invalid("is not a cursor this API issued"));
        }
        let (head, sealed) = data.split_at_mut(NONCE_LEN + FINGERPRINT_LEN);
        let nonce: [u8; NONCE_LEN] = head[..NONCE_LEN].try_into().expect("12 bytes");
        let issued_for: [u8; FINGERPRINT_LEN] = head[NONCE_LEN..].try_into().expect("8 bytes");
        let plain = self
            .aead
            .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(issued_for), sealed)
            .map_err(|_| invalid("was altered or issued by another deployment"))?;
        if issued_for != query {
            return Err(invalid("belongs to a listing with other filters or another sort order"));
        }
        serde_json::from_slice(plain).map_err(|_| invalid("is not a cursor this API issued"))
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

        for at in [0, NONCE_LEN, NONCE_LEN + FINGERPRINT_LEN, URL_SAFE_NO_PAD.decode(&cursor).unwrap().len() - 1] {
            let mut bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
            bytes[at] ^= 1;
            let forged = URL_SAFE_NO_PAD.encode(bytes);
            let refused = signer.decode::<(String, i32)>(q, &forged).unwrap_err();
            assert!(refused.detail().unwrap().contains("altered"), "byte {at}");
        }
        assert!(CursorSigner::new(b"x".repeat(32)).decode::<(String, i32)>(q, &cursor).is_err(), "another key");
        assert!(signer.decode::<(String, i32)>(q, "!!").is_err());
        assert_ne!(fingerprint(&["ab", "c"]), fingerprint(&["a", "bc"]), "parts are length-delimited");
    }

    #[test]
    fn a_cursor_shows_nothing_of_its_position() {
        let signer = CursorSigner::new(b"k".repeat(32));
        let q = fingerprint(&["q=regulation", "orderby=relevance"]);
        let position = ("rank", -1_428_721_i64, "0192f0c4-5b2e-7d3a-9c1e-2f4b6a8d0e1f");
        let cursor = signer.encode(q, &position);
        let bytes = URL_SAFE_NO_PAD.decode(&cursor).unwrap();
        let plain = serde_json::to_vec(&position).unwrap();
        for needle in [&b"1428721"[..], b"0192f0c4", b"rank"] {
            assert!(!bytes.windows(needle.len()).any(|w| w == needle), "{:?} is readable", std::str::from_utf8(needle));
        }
        assert_eq!(bytes.len(), NONCE_LEN + FINGERPRINT_LEN + plain.len() + TAG_LEN);
        // The same position under the same query seals to the same cursor; another position to another nonce.
        assert_eq!(signer.encode(q, &position), cursor);
        let next = signer.encode(q, &("rank", -1_428_720_i64, "0192f0c4-5b2e-7d3a-9c1e-2f4b6a8d0e1f"));
        assert_ne!(URL_SAFE_NO_PAD.decode(&next).unwrap()[..NONCE_LEN], bytes[..NONCE_LEN]);
    }
}
