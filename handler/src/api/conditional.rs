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

/// A write's preconditions (RFC 9110 §13.1): its `If-Match`, required, and its `If-None-Match`, if any, which a
/// write must also pass (`*`, or a tag of the current version, refuses it). Every conditional write reads them once
/// and checks them against the row it read ([`expected_version`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preconditions {
    pub if_match: Precondition,
    /// `If-None-Match: *`.
    none_match_any: bool,
    /// The versions `If-None-Match` names (weak comparison: `W/"3"` names 3).
    none_match: Vec<i64>,
}

/// Reads `If-Match` (writes without it are refused with 428, so a lost update cannot happen by accident) and
/// `If-None-Match`.
pub fn require_if_match(req: &HttpRequest) -> Result<Preconditions, AppError> {
    // An empty If-Match names nothing to match: as if it were missing.
    let text = if_match(req);
    let text = text.trim();
    if text.is_empty() {
        return Err(AppError::new(ErrorCode::PreconditionRequired)
            .with_detail("send If-Match with the resource's ETag (or *) to change it"));
    }
    let if_match = if text == "*" {
        Precondition::Any
    } else {
        // A list of ETags is allowed by RFC 9110 (in one field or several): the write applies if any is current.
        let versions: Vec<i64> = text.split(',').map(str::trim).filter_map(parse_strong).collect();
        if versions.is_empty() { Precondition::Unmatchable } else { Precondition::Versions(versions) }
    };
    let tags: Vec<&str> = req
        .headers()
        .get_all(header::IF_NONE_MATCH)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    Ok(Preconditions {
        if_match,
        none_match_any: tags.contains(&"*"),
        none_match: tags.iter().filter_map(|tag| parse_strong(tag.trim_start_matches("W/"))).collect(),
    })
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

/// The version the preconditions pin, given the current one: `If-Match` first, then `If-None-Match` (RFC 9110
/// §13.2.2); 412 with the current ETag when either fails.
pub fn expected_version(preconditions: &Preconditions, current: i64) -> Result<i64, AppError> {
    match &preconditions.if_match {
        Precondition::Any => {}
        Precondition::Versions(versions) if versions.contains(&current) => {}
        Precondition::Versions(_) | Precondition::Unmatchable => return Err(precondition_failed(current)),
    }
    if preconditions.none_match_any || preconditions.none_match.contains(&current) {
        return Err(AppError::new(ErrorCode::PreconditionFailed)
            .with_detail("If-None-Match names the resource's current version (or *, and it exists)")
            .with_header(header::ETAG, HeaderValue::from_str(&etag(current)).expect("an ETag is header text")));
    }
    Ok(current)
}

/// A conditional update that found its row at another version than the one it read: another write came first.
#[derive(Debug, thiserror::Error)]
#[error("another write changed the row between its read and this write")]
struct LostRace;

/// The 412 of a conditional update that lost a race ([`Tries`] tries it again under `If-Match: *`).
fn lost_race(current_version: i64) -> AppError {
    precondition_failed(current_version).with_source(LostRace)
}

/// What a conditional update's `update` means for its request: its value once it took effect, `missing()` when
/// the row is gone, the 412 of a lost race ([`lost_race`]) when another write came first.
pub fn took_effect<T>(update: crate::store::Update<T>, missing: impl FnOnce() -> AppError) -> Result<T, AppError> {
    match update {
        crate::store::Update::Updated(value) => Ok(value),
        crate::store::Update::NotFound => Err(missing()),
        crate::store::Update::VersionMismatch { current_version } => Err(lost_race(current_version)),
    }
}

/// Runs `attempt` (read the row, check the preconditions against it, write conditionally) once, or under
/// `If-Match: *` again after each race it lost, as [`Tries`] says.
pub async fn retrying<T, F, Fut>(preconditions: &Preconditions, mut attempt: F) -> Result<T, AppError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, AppError>>,
{
    let mut tries = Tries::new(preconditions);
    loop {
        let outcome = attempt().await;
        if !tries.again(&outcome) {
            return outcome;
        }
    }
}

/// The tries of one conditional write. Under `If-Match: *` ("whatever the current version is") a write that lost a
/// race with another is read, checked and written again (up to [`Tries::MAX`] times in all), so concurrent
/// writers with `*` all succeed, last writer wins, each merging onto the row it read; under an ETag it is the
/// client's 412.
struct Tries {
    any: bool,
    made: u32,
}

impl Tries {
    const MAX: u32 = 16;

    fn new(preconditions: &Preconditions) -> Self {
        Tries { any: preconditions.if_match == Precondition::Any, made: 1 }
    }

    /// Whether to read and write again after `outcome`: it lost a race, `*` allows any version, and tries are left.
    fn again<T>(&mut self, outcome: &Result<T, AppError>) -> bool {
        let again =
            self.any && self.made < Self::MAX && outcome.as_ref().err().is_some_and(|e| e.is_caused_by::<LostRace>());
        self.made += u32::from(again);
        again
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
        assert_eq!(expected_version(&require_if_match(&star).unwrap(), 7).unwrap(), 7);
        let exact = TestRequest::default().insert_header(("If-Match", "\"7\"")).to_http_request();
        assert_eq!(expected_version(&require_if_match(&exact).unwrap(), 7).unwrap(), 7);
        let stale = expected_version(&require_if_match(&exact).unwrap(), 8).unwrap_err();
        assert_eq!(stale.code(), ErrorCode::PreconditionFailed);
        let weak = TestRequest::default().insert_header(("If-Match", "W/\"7\"")).to_http_request();
        assert_eq!(
            require_if_match(&weak).unwrap().if_match,
            Precondition::Unmatchable,
            "weak tags never match writes"
        );
        let refused = expected_version(&require_if_match(&weak).unwrap(), 7).unwrap_err();
        assert_eq!(refused.code(), ErrorCode::PreconditionFailed);
        let answered = actix_web::ResponseError::error_response(&refused);
        assert_eq!(answered.headers().get(header::ETAG).and_then(|v| v.to_str().ok()), Some("\"7\""), "current ETag");
    }

    #[test]
    fn a_write_applies_if_any_etag_of_an_if_match_list_is_current() {
        let list = TestRequest::default().insert_header(("If-Match", "\"7\", \"1\"")).to_http_request();
        assert_eq!(expected_version(&require_if_match(&list).unwrap(), 1).unwrap(), 1, "the second tag of one field");
        assert_eq!(expected_version(&require_if_match(&list).unwrap(), 7).unwrap(), 7);
        assert!(expected_version(&require_if_match(&list).unwrap(), 2).is_err());
        let lines = TestRequest::default()
            .append_header(("If-Match", "\"7\""))
            .append_header(("If-Match", "W/\"2\", \"1\""))
            .to_http_request();
        assert_eq!(expected_version(&require_if_match(&lines).unwrap(), 1).unwrap(), 1, "a tag on a second line");
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
