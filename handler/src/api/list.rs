//! The list envelope of every collection: `{"value": [...], "nextLink": "...", "count": n}`.

use serde::Serialize;

/// A page of a collection. `nextLink` is absent on the last page; `count` only when `count=true` was asked.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ListEnvelope<T: Serialize> {
    pub value: Vec<T>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// Default and largest page sizes.
pub const DEFAULT_PAGE_SIZE: u32 = 25;
pub const MAX_PAGE_SIZE: u32 = 100;
