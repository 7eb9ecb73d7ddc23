//! Strong ETags from row versions, and the conditional-request rules (RFC 9110 §13): If-Match is required on
//! writes and checked on reads (412), If-None-Match answers a read 304 and refuses a write that names the current
//! version or `*` (412).

use actix_web::HttpRequest;
use actix_web::http::header::{self, HeaderValue};

use crate::error::{AppError, ErrorCode};

/// The strong ETag of a row at `version`: `"<version>"`.
pub fn etag(version: i64) -> String {
    format!("\"{version}\"")
}

/// What a write's `If-Match` asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Precondition {
    /// `If-Match: *`: any current version.
    Any,
    /// `If-Match: "<n>"` or a list of such tags (RFC 9110 §13.1.1: the condition holds if any of them is current).
    Versions(Vec<i64>),
    /// An `If-Match` no version of ours can match (weak or foreign ETags only): 412 with the current ETag once the
    /// resource is found (or whatever the write answers when its change is already reflected).
    Unmatchable,
}

/// Reads `If-Match`; writes without it are refused with 428, so a lost update cannot happen by accident.
pub fn require_if_match(req: &HttpRequest) -> Result<Precondition, AppError> {
    // An empty If-Match names nothing to match: as if it were missing.
    let text = if_match(req);
    let text = text.trim();
    if text.is_empty() {
        return Err(AppError::new(ErrorCode::PreconditionRequired)
            .with_detail("send If-Match with the resource's ETag (or *) to change it"));
    }
    if text == "*" {
        return Ok(Precondition::Any);
    }
    // A list of ETags is allowed by RFC 9110 (in one field or several): the write applies if any is current.
    let versions: Vec<i64> = text.split(',').map(str::trim).filter_map(parse_strong).collect();
    Ok(if versions.is_empty() { Precondition::Unmatchable } else { Precondition::Versions(versions) })
}

/// Every `If-Match` field of the request as one list (RFC 9110 §5.3: fields of a list may be split over several
/// lines), `*` included.
fn if_match(req: &HttpRequest) -> String {
    let fields: Vec<&str> = req
        .headers()
        .get_all(header::IF_MATCH)
        .map(|v| v.to_str().unwrap_or("").trim())
        .filter(|v| !v.is_empty())
        .collect();
    fields.join(", ")
}

/// The version a precondition pins, given the current one; 412 on mismatch.
pub fn expected_version(precondition: Precondition, current: i64) -> Result<i64, AppError> {
    match precondition {
        Precondition::Any => Ok(current),
        Precondition::Versions(versions) if versions.contains(&current) => Ok(current),
        Precondition::Versions(_) | Precondition::Unmatchable => Err(precondition_failed(current)),
    }
}

/// 412 carrying the current ETag, so the client can re-read and retry.
pub fn precondition_failed(current: i64) -> AppError {
    AppError::new(ErrorCode::PreconditionFailed)
        .with_detail("the resource changed since the ETag in If-Match was read")
        .with_header(header::ETAG, HeaderValue::from_str(&etag(current)).expect("an ETag is header text"))
}

/// `If-Match` on a read (RFC 9110 §13.1.1): absent, empty or `*` passes (the resource exists); otherwise one of its
/// strong ETags must be the current one, else 412 with the current ETag.
pub fn check_if_match_on_read(req: &HttpRequest, version: i64) -> Result<(), AppError> {
    let text = if_match(req);
    let text = text.trim();
    if text.is_empty() || text == "*" || text.split(',').map(str::trim).filter_map(parse_strong).any(|v| v == version) {
        return Ok(());
    }
    Err(precondition_failed(version))
}

/// `If-None-Match` on a write (RFC 9110 §13.1.2): `*` (the resource must not exist, and ours always does when
/// written) or a tag of the current version refuses the write with 412.
pub fn check_if_none_match_on_write(req: &HttpRequest, version: i64) -> Result<(), AppError> {
    if !not_modified(req, version) {
        return Ok(());
    }
    Err(AppError::new(ErrorCode::PreconditionFailed)
        .with_detail("If-None-Match names the resource's current version (or *, and it exists)")
        .with_header(header::ETAG, HeaderValue::from_str(&etag(version)).expect("an ETag is header text")))
}

/// Whether `If-None-Match` matches `version` (then a GET answers 304).
pub fn not_modified(req: &HttpRequest, version: i64) -> bool {
    let fields = req.headers().get_all(header::IF_NONE_MATCH).filter_map(|v| v.to_str().ok());
    fields
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .any(|tag| tag == "*" || parse_strong(tag.trim_start_matches("W/")).is_some_and(|v| v == version))
}

/// The version a strong ETag of ours names: `"<n>"` exactly as [`etag`] writes it (strong comparison compares the
/// opaque tags, RFC 9110 §8.8.3.2: `"03"` or `"+3"` is another tag than `"3"`, and matches nothing).
fn parse_strong(tag: &str) -> Option<i64> {
    let digits = tag.strip_prefix('"')?.strip_suffix('"')?;
    let version: i64 = digits.parse().ok()?;
    (version.to_string() == digits).then_some(version)
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn if_match_is_required_and_compared() {
        let missing = TestRequest::default().to_http_request();
        assert_eq!(require_if_match(&missing).unwrap_err().code(), ErrorCode::PreconditionRequired);
        let star = TestRequest::default().insert_header(("If-Match", "*")).to_http_request();
        assert_eq!(expected_version(require_if_match(&star).unwrap(), 7).unwrap(), 7);
        let exact = TestRequest::default().insert_header(("If-Match", "\"7\"")).to_http_request();
        assert_eq!(expected_version(require_if_match(&exact).unwrap(), 7).unwrap(), 7);
        let stale = expected_version(require_if_match(&exact).unwrap(), 8).unwrap_err();
        assert_eq!(stale.code(), ErrorCode::PreconditionFailed);
        let weak = TestRequest::default().insert_header(("If-Match", "W/\"7\"")).to_http_request();
        assert_eq!(require_if_match(&weak).unwrap(), Precondition::Unmatchable, "weak tags never match writes");
        let refused = expected_version(Precondition::Unmatchable, 7).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::PreconditionFailed);
        let answered = actix_web::ResponseError::error_response(&refused);
        assert_eq!(answered.headers().get(header::ETAG).and_then(|v| v.to_str().ok()), Some("\"7\""), "current ETag");
    }

    #[test]
    fn a_write_applies_if_any_etag_of_an_if_match_list_is_current() {
        let list = TestRequest::default().insert_header(("If-Match", "\"7\", \"1\"")).to_http_request();
        assert_eq!(expected_version(require_if_match(&list).unwrap(), 1).unwrap(), 1, "the second tag of one field");
        assert_eq!(expected_version(require_if_match(&list).unwrap(), 7).unwrap(), 7);
        assert!(expected_version(require_if_match(&list).unwrap(), 2).is_err());
        let lines = TestRequest::default()
            .append_header(("If-Match", "\"7\""))
            .append_header(("If-Match", "W/\"2\", \"1\""))
            .to_http_request();
        assert_eq!(expected_version(require_if_match(&lines).unwrap(), 1).unwrap(), 1, "a tag on a second line");
        assert!(check_if_match_on_read(&lines, 1).is_ok());
        assert!(check_if_match_on_read(&lines, 2).is_err(), "a weak tag matches no read either");
        let none_match = TestRequest::default()
            .append_header(("If-None-Match", "\"4\""))
            .append_header(("If-None-Match", "\"5\""))
            .to_http_request();
        assert!(not_modified(&none_match, 5), "If-None-Match over two lines");
    }

    #[test]
    fn if_none_match_accepts_lists_and_weak_forms() {
        let req = TestRequest::default().insert_header(("If-None-Match", "\"3\", W/\"5\"")).to_http_request();
        assert!(not_modified(&req, 5));
        assert!(not_modified(&req, 3));
        assert!(!not_modified(&req, 4));
        assert!(!not_modified(&TestRequest::default().to_http_request(), 4));
    }
}
