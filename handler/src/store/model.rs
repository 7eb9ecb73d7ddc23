//! Database rows and the inputs/outcomes of store operations. These are not wire types: the API maps them.

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// One page of a listing; `next` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

impl<T, C> Page<T, C> {
    /// The page of a listing fetched with one row more than `limit` (`TOP (limit + 1)` / `LIMIT limit + 1`): the
    /// first `limit` items, and the cursor of the last of them when the extra row shows that more follow.
    pub fn cut(mut items: Vec<T>, limit: u32, cursor: impl FnOnce(&T) -> C) -> Self {
        let next = if items.len() > limit as usize {
            items.truncate(limit as usize);
            items.last().map(cursor)
        } else {
            None
        };
        Page { items, next }
    }
}

/// A deterministic id: the first 16 bytes of SHA-256 over `namespace` and each part (length-prefixed), stamped as
/// an RFC 9562 version-8 UUID. The same inputs give the same id in every process, so a retried write that derives
/// its ids this way (an outbox event, a usage event from a CloudEvent) can never insert a second copy.
/// How long `text` is as SQL Server's `NVARCHAR(n)` counts: UTF-16 code units (a character outside the Basic
/// Multilingual Plane, an emoji, counts as two). Every text limit a column enforces is checked this way first.
pub fn utf16_width(text: &str) -> usize {
    text.encode_utf16().count()
}

/// Keeps at most `max` UTF-16 code units of `text` ([`utf16_width`]), cutting at a character.
pub fn clip_utf16(text: &str, max: usize) -> String {
    let mut units = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max {
            break;
        }
        end = i + c.len_utf8();
    }
    text[..end].to_owned()
}

pub fn deterministic_id(namespace: &str, parts: &[&str]) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(namespace.as_bytes());
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}

/// Rounds up to whole microseconds, the stored precision (SQLite text, SQL Server `DATETIME2(6)`): for a stored
/// time `s`, `s >= t` is `s >= ceil(t)` and `s < t` is `s < ceil(t)`, so the time filters of both stores stay
/// exact for inputs with nanoseconds.
pub(crate) fn ceil_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    match t.timestamp_subsec_nanos() % 1_000 {
        0 => t,
        extra => t + chrono::Duration::nanoseconds(i64::from(1_000 - extra)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_micros_rounds_sub_microsecond_times_up_and_keeps_whole_microseconds() {
        use chrono::TimeZone;
        let whole = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap() + chrono::Duration::microseconds(5);
        assert_eq!(ceil_micros(whole), whole);
        assert_eq!(ceil_micros(whole + chrono::Duration::nanoseconds(1)), whole + chrono::Duration::microseconds(1));
        assert_eq!(ceil_micros(whole + chrono::Duration::nanoseconds(999)), whole + chrono::Duration::microseconds(1));
    }
}
