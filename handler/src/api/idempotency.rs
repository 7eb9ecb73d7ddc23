//! Idempotent creation: `Idempotency-Key` (or Azure's `Repeatability-Request-ID`) on POST replays the first response.
//!
//! The first response is stored with the created resource in one transaction, per tenant, for 24 hours.
//! The same key with the same request replays it (status, headers, body); with another request it is 422.

use actix_web::http::StatusCode;
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::{HttpRequest, HttpResponse};
use chrono::{DateTime, Duration, Utc};
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::error::{AppError, ErrorCode, FieldError};
use crate::store::{IdempotencyRecord, Store};

/// The answer field that marks a replayed answer (`true`); the record stage bills no replay.
pub const REPLAYED: &str = "idempotency-replayed";

/// Headers that carry an idempotency key, in order of preference.
pub const KEY_HEADERS: &[&str] = &["idempotency-key", "repeatability-request-id"];

/// How long a key and its response are kept.
pub const RETENTION: Duration = Duration::hours(24);

/// Response headers worth replaying.
const REPLAYED_HEADERS: &[&str] = &["location", "etag", "content-type"];

/// The request headers that carry a key, as every creating operation declares them in the OpenAPI document
/// (`params(IdempotencyHeaders)`); [`from_request`] reads them.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)] // documentation only
pub struct IdempotencyHeaders {
    /// Makes the POST safe to retry for 24 hours: 1 to 200 visible ASCII characters
    #[param(rename = "Idempotency-Key", pattern = r"^[\x21-\x7E]{1,200}$", nullable = false)]
    idempotency_key: Option<String>,
    /// Azure's name for Idempotency-Key
    #[param(rename = "Repeatability-Request-ID", pattern = r"^[\x21-\x7E]{1,200}$", nullable = false)]
    repeatability_request_id: Option<String>,
}

/// A request's idempotency key and the hash of what it asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Idempotency {
    pub key: String,
    pub request_hash: String,
}

/// Reads the key, if any, and hashes the request: method, path and the canonical JSON of the body.
pub fn from_request(req: &HttpRequest, canonical_body: &str) -> Result<Option<Idempotency>, AppError> {
    // Every key sent must be well-formed, even one that does not win; and they must all be one key (either header,
    // each header any number of times): a retry carrying only another of them would create the resource again.
    let mut keys: Vec<(&str, &str)> = Vec::new();
    for name in KEY_HEADERS {
        for value in req.headers().get_all(*name) {
            let key = value.to_str().unwrap_or("").trim();
            if key.is_empty() || key.len() > 200 || !key.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![
                    FieldError::new(*name, "format", "1 to 200 visible ASCII characters").in_header(name),
                ]));
            }
            keys.push((name, key));
        }
    }
    if let Some((name, _)) = keys.iter().find(|(_, key)| !key.eq_ignore_ascii_case(keys[0].1)) {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![
            FieldError::new(*name, "conflict", "names another key than the first key header; send one key")
                .in_header(name),
        ]));
    }
    let keys: Vec<&str> = keys.into_iter().map(|(_, key)| key).collect();
    let Some(key) = keys.first().copied() else { return Ok(None) };
    let mut hasher = Sha256::new();
    // The path in lower case: its ids are GUIDs, which a retry may spell otherwise, and its words are lower case.
    let path = super::operations::routed_path(req.match_info()).to_ascii_lowercase();
    for part in [req.method().as_str(), path.as_str(), canonical_body] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let request_hash = hasher.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Some(Idempotency { key: key.to_owned(), request_hash }))
}

/// Where a platform administrator's grant to `tenant_id` keeps its idempotency keys: apart from the keys the
/// tenant's own callers choose (the same table, keyed by scope and key), so a tenant can neither block a grant by
/// using its key first nor learn that a key was used for one.
pub fn grant_scope(tenant_id: Uuid) -> Uuid {
    crate::store::deterministic_id("meterline.idempotency.grants", &[&tenant_id.to_string()])
}

/// The stored response to replay, or 422 when the key was used for a different request.
pub fn replay(record: &IdempotencyRecord, request: &Idempotency) -> Result<HttpResponse, AppError> {
    if record.request_hash != request.request_hash {
        // The key is not repeated back: a problem detail never quotes what the client sent.
        return Err(AppError::new(ErrorCode::IdempotencyKeyReused).with_detail(format!(
            "this idempotency key was first used with a different request (operation {}); use a new key",
            record.operation_id
        )));
    }
    let status = StatusCode::from_u16(record.status_code).unwrap_or(StatusCode::OK);
    let mut response = HttpResponse::build(status);
    let headers: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&record.response_headers).unwrap_or_default();
    for (name, value) in headers {
        if let (Ok(name), Some(Ok(value))) =
            (HeaderName::try_from(name.as_str()), value.as_str().map(HeaderValue::from_str))
        {
            response.insert_header((name, value));
        }
    }
    response.insert_header((REPLAYED, "true"));
    Ok(response.body(record.response_body.clone()))
}

/// The response to replay when a request with `key` was answered already in `tenant_id`, the key's scope (the
/// caller's tenant, or [`grant_scope`]), or 422 when it asked for
/// something else); `None` when there is no key or no stored response.
pub async fn stored_response(
    store: &dyn Store,
    tenant_id: Uuid,
    key: Option<&Idempotency>,
    now: DateTime<Utc>,
) -> Result<Option<HttpResponse>, AppError> {
    let Some(key) = key else { return Ok(None) };
    match store.get_idempotency(tenant_id, &key.key, now).await? {
        Some(record) => replay(&record, key).map(Some),
        None => Ok(None),
    }
}

/// The answer to a create that lost the race for its key (the store refused the record as a `Conflict`): the
/// response of the request that stored it first, or 422 if that one asked for something else.
pub async fn answer_lost_race(
    store: &dyn Store,
    tenant_id: Uuid,
    key: &Idempotency,
    now: DateTime<Utc>,
) -> Result<HttpResponse, AppError> {
    let record = store.get_idempotency(tenant_id, &key.key, now).await?.ok_or_else(|| {
        AppError::new(ErrorCode::Conflict).with_detail("a request with this idempotency key is being processed")
    })?;
    replay(&record, key)
}

/// The record to store with a created resource: the response it answers with.
pub fn record(
    tenant_id: Uuid,
    request: &Idempotency,
    operation_id: &str,
    response: &HttpResponse,
    body: &[u8],
    now: DateTime<Utc>,
) -> IdempotencyRecord {
    let headers: serde_json::Map<String, serde_json::Value> = REPLAYED_HEADERS
        .iter()
        .filter_map(|h| response.headers().get(*h).and_then(|v| v.to_str().ok()).map(|v| ((*h).to_owned(), v.into())))
        .collect();
    IdempotencyRecord {
        tenant_id,
        key: request.key.clone(),
        operation_id: operation_id.to_owned(),
        request_hash: request.request_hash.clone(),
        status_code: response.status().as_u16(),
        response_headers: serde_json::Value::Object(headers).to_string(),
        response_body: body.to_vec(),
        created_at: now,
        expires_at: now + RETENTION,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use actix_web::test::TestRequest;

    #[test]
    fn keys_are_read_from_either_header_and_validated() {
        let req = TestRequest::post()
            .uri("/api/v1/documents")
            .insert_header(("Repeatability-Request-ID", "r-1"))
            .to_http_request();
        let a = from_request(&req, "{}").unwrap().unwrap();
        assert_eq!(a.key, "r-1");
        assert_eq!(from_request(&req, "{}").unwrap().unwrap().request_hash, a.request_hash, "stable");
        assert_ne!(from_request(&req, "{\"a\":1}").unwrap().unwrap().request_hash, a.request_hash);
        assert!(from_request(&TestRequest::post().to_http_request(), "{}").unwrap().is_none());
        let bad = TestRequest::post().insert_header(("Idempotency-Key", "a b")).to_http_request();
        assert_eq!(from_request(&bad, "{}").unwrap_err().code(), ErrorCode::ValidationFailed);
    }
}
