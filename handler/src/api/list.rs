//! The list envelope of every collection: `{"value": [...], "nextLink": "...", "count": n}`.

use serde::Serialize;

use crate::api::cursor::{CursorSigner, fingerprint};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::store::CreatedCursor;

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

/// The page size `maxpagesize` asks for ([`DEFAULT_PAGE_SIZE`] without it), or a 422 naming it outside 1 to 100.
pub fn page_size(maxpagesize: Option<u32>) -> Result<u32, AppError> {
    let size = maxpagesize.unwrap_or(DEFAULT_PAGE_SIZE);
    if !(1..=MAX_PAGE_SIZE).contains(&size) {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_parameter_errors(vec![FieldError::new(
            "maxpagesize",
            "range",
            "must be between 1 and 100",
        )]));
    }
    Ok(size)
}

/// The `cursor` of a listing ordered by (created_at, id) (tenants, API clients): the position, sealed like every
/// cursor ([`crate::api::cursor::CursorSigner`]) for the listing it belongs to (`listing`: its path, its scope and
/// its filters), so a cursor is neither readable nor forgeable nor usable on another listing.
pub fn encode_created_cursor(cursors: &CursorSigner, listing: &[&str], c: &CreatedCursor) -> String {
    cursors.encode(fingerprint(listing), &(c.created_at.timestamp_micros(), c.id))
}

/// The position a `cursor` query parameter names (see [`encode_created_cursor`]), or a 422 naming `cursor`.
pub fn created_cursor(
    cursors: &CursorSigner,
    listing: &[&str],
    raw: Option<&str>,
) -> Result<Option<CreatedCursor>, AppError> {
    let Some(raw) = raw else { return Ok(None) };
    let (micros, id) = cursors.decode::<(i64, uuid::Uuid)>(fingerprint(listing), raw)?;
    let created_at = chrono::DateTime::from_timestamp_micros(micros).ok_or_else(|| {
        AppError::new(ErrorCode::ValidationFailed).with_parameter_errors(vec![FieldError::new(
            "cursor",
            "invalid",
            "not a cursor this API issued",
        )])
    })?;
    Ok(Some(CreatedCursor { created_at, id }))
}

/// The `nextLink` of a page: an absolute URL at the request's public origin ([`public_origin`]), `path` with the
/// request's query minus its `cursor`, plus the new cursor.
pub fn next_link(req: &actix_web::HttpRequest, path: &str, cursor: &str) -> String {
    link_resuming(req, path, "cursor", cursor)
}

/// [`next_link`] for a call that resumes by another parameter than `cursor`: `parameter` replaced by `value`.
pub fn link_resuming(req: &actix_web::HttpRequest, path: &str, parameter: &str, value: &str) -> String {
    format!("{}{}", public_origin(req), next_path(path, req.query_string(), parameter, value))
}

fn next_path(path: &str, query_string: &str, parameter: &str, value: &str) -> String {
    let mut link = form_urlencoded::Serializer::new(String::new());
    link.extend_pairs(form_urlencoded::parse(query_string.as_bytes()).filter(|(k, _)| k != parameter));
    link.append_pair(parameter, value);
    format!("{path}?{}", link.finish())
}

/// `scheme://host[:port]` as the client addressed the API: `Forwarded` or `X-Forwarded-Host`/`-Proto` (set by the
/// Functions front end and by API Management), else `Host`. A forwarded value that is not a plain host name or
/// address with an optional port (a path, credentials, spaces), or a scheme other than http and https, is not
/// trusted: the link then uses `Host`, so a forged header cannot point a client somewhere else.
pub fn public_origin(req: &actix_web::HttpRequest) -> String {
    let info = req.connection_info();
    let host = Some(info.host()).filter(|h| plain_host(h)).or_else(|| {
        let host = req.headers().get(actix_web::http::header::HOST)?.to_str().ok()?;
        plain_host(host).then_some(host)
    });
    // A default-mode invocation's request carries the client's absolute URL: its authority when no header gave one.
    let host = host.or_else(|| req.uri().authority().map(|a| a.as_str()).filter(|h| plain_host(h)));
    // Schemes compare without regard to case (RFC 3986 §3.1).
    let scheme = if info.scheme().eq_ignore_ascii_case("https") { "https" } else { "http" };
    format!("{scheme}://{}", host.unwrap_or("localhost"))
}

/// A host name, IPv4 address or bracketed IPv6 address, with an optional port: nothing that changes where a URL
/// points once it is put after `scheme://`.
fn plain_host(host: &str) -> bool {
    let (name, port) = match host.rsplit_once(':') {
        Some((name, port)) if !name.ends_with(':') && !host.ends_with(']') => (name, Some(port)),
        _ => (host, None),
    };
    let name_ok = match name.strip_prefix('[').and_then(|n| n.strip_suffix(']')) {
        Some(v6) => !v6.is_empty() && v6.chars().all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.'),
        None => {
            !name.is_empty()
                && name.len() <= 253
                && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        }
    };
    name_ok && port.is_none_or(|p| p.chars().all(|c| c.is_ascii_digit()) && p.parse::<u16>().is_ok_and(|p| p > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = CreatedCursor {
            created_at: chrono::DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: uuid::Uuid::from_u128(7),
        };
        let cursors = CursorSigner::new(vec![7; 32]);
        let listing = ["/api/v1/clients", "tenant-a", "status=active"];
        let token = encode_created_cursor(&cursors, &listing, &c);
        assert_eq!(created_cursor(&cursors, &listing, Some(&token)).unwrap(), Some(c));
        assert_eq!(created_cursor(&cursors, &listing, None).unwrap(), None);
        for (listing, raw) in [
            (listing, "not-a-cursor"),
            // A plain `micros|id` in base64url, as cursors were before: not one this API issues now.
            (listing, "MTcwMDAwMDAwMDEyMzQ1Nnw3"),
            // Another tenant's listing, or another filter.
            (["/api/v1/clients", "tenant-b", "status=active"], token.as_str()),
            (["/api/v1/clients", "tenant-a", "status=revoked"], token.as_str()),
        ] {
            let refused = created_cursor(&cursors, &listing, Some(raw)).unwrap_err();
            assert_eq!(refused.code(), ErrorCode::ValidationFailed, "{listing:?} {raw}");
        }
    }

    #[test]
    fn next_links_keep_the_query_and_replace_the_cursor() {
        assert_eq!(
            next_path("/api/v1/x", "tag=a%2Cb&cursor=old&maxpagesize=5", "cursor", "new"),
            "/api/v1/x?tag=a%2Cb&maxpagesize=5&cursor=new"
        );
        assert_eq!(next_path("/api/v1/x", "", "cursor", "c"), "/api/v1/x?cursor=c");
    }

    fn origin(headers: &[(&str, &str)]) -> String {
        let req = headers
            .iter()
            .fold(actix_web::test::TestRequest::get().uri("/api/v1/x"), |r, (k, v)| r.insert_header((*k, *v)))
            .to_http_request();
        public_origin(&req)
    }

    #[test]
    fn the_public_origin_honours_forwarded_headers_only_when_they_name_a_host() {
        assert_eq!(origin(&[("host", "api.example.com")]), "http://api.example.com");
        let forwarded = [
            ("host", "127.0.0.1:7071"),
            ("x-forwarded-host", "meterline.azurewebsites.net"),
            ("x-forwarded-proto", "https"),
        ];
        assert_eq!(origin(&forwarded), "https://meterline.azurewebsites.net");
        assert_eq!(
            origin(&[("host", "a"), ("forwarded", "host=b.example:8443;proto=https")]),
            "https://b.example:8443"
        );
        assert_eq!(origin(&[("host", "[::1]:7071")]), "http://[::1]:7071");
        assert_eq!(
            origin(&[("host", "a.example"), ("x-forwarded-host", "b.example"), ("x-forwarded-proto", "HTTPS")]),
            "https://b.example",
            "a scheme in capitals is the same scheme"
        );
        for forged in [
            "evil.example/x",
            "user@evil.example",
            "evil.example:80:80",
            "a b",
            "",
            "api.example:99999",
            "api.example:0",
        ] {
            assert_eq!(
                origin(&[("host", "api.example.com"), ("x-forwarded-host", forged)]),
                "http://api.example.com",
                "{forged}"
            );
        }
        assert_eq!(origin(&[("host", "a.example"), ("x-forwarded-proto", "javascript")]), "http://a.example");
    }
}
