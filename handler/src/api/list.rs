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

/// The `nextLink` of a page: `path` with the request's query minus its `cursor`, plus the new cursor.
pub fn next_link(path: &str, query_string: &str, cursor: &str) -> String {
    let mut link = form_urlencoded::Serializer::new(String::new());
    link.extend_pairs(form_urlencoded::parse(query_string.as_bytes()).filter(|(k, _)| k != "cursor"));
    link.append_pair("cursor", cursor);
    format!("{path}?{}", link.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_links_keep_the_query_and_replace_the_cursor() {
        assert_eq!(
            next_link("/api/v1/x", "tag=a%2Cb&cursor=old&maxpagesize=5", "new"),
            "/api/v1/x?tag=a%2Cb&maxpagesize=5&cursor=new"
        );
        assert_eq!(next_link("/api/v1/x", "", "c"), "/api/v1/x?cursor=c");
    }
}
