//! `/api/v1/documents`: a tenant's documents: create, read, replace, merge-patch, soft delete, and list/search.
//!
//! Every access is scoped to the caller's tenant: another tenant's document answers 404, never 403.

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, delete, get, patch, post, put, web};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::api::conditional::{
    check_if_match_on_read, etag, expected_version, not_modified, require_if_match, retrying, took_effect,
};
use crate::api::cursor::fingerprint;
use crate::api::idempotency;
use crate::api::list::{DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE};
use crate::api::search::{self, FacetCounts, Highlights, SearchCoverage};
use crate::api::validation::validate;
use crate::auth::guard::{Authorized, DocumentsRead, DocumentsWrite};
use crate::error::{AppError, ErrorCode, FieldError, serde_json_error};
use crate::metering::audit::AuditNote;
use crate::metering::ledger::ledger;
use crate::state::AppState;
use crate::store::search::{SearchWindow, WritePosition};
use crate::store::{
    Document, DocumentCursor, DocumentFilter, DocumentSort, DocumentSortKey, DocumentStatus, FacetField, SortValue,
    StoreError,
};

mod wire;
pub use wire::{DocumentInput, DocumentPatch, DocumentView, Status, Tag, TagFilter};
use wire::{MAX_TAGS, storable_date};

/// Who the audit columns name: the object id, else the app id, else the subject.
fn actor(auth: &crate::auth::guard::Caller) -> String {
    let p = &auth.principal;
    p.object_id.clone().or_else(|| p.app_id.clone()).unwrap_or_else(|| p.subject.clone())
}

fn not_found() -> AppError {
    AppError::new(ErrorCode::NotFound).with_detail("no document with this id in your tenant")
}

fn parse_id(raw: &str) -> Result<Uuid, AppError> {
    raw.parse().map_err(|_| not_found())
}

fn document_response(status: actix_web::http::StatusCode, document: &Document) -> (HttpResponse, Vec<u8>) {
    let body = serde_json::to_vec(&DocumentView::from(document)).expect("views serialize");
    let mut response = HttpResponse::build(status);
    response.insert_header((header::ETAG, etag(document.version))).insert_header(ContentType::json());
    if status == actix_web::http::StatusCode::CREATED {
        response.insert_header((header::LOCATION, format!("/api/v1/documents/{}", document.id)));
    }
    (response.body(body.clone()), body)
}

/// Creates a document. With `Idempotency-Key` (or `Repeatability-Request-ID`), a retry replays the first response.
#[utoipa::path(
    tag = "documents",
    operation_id = "createDocument",
    security(("entra" = ["Documents.Write"])),
    request_body(content = DocumentInput, description = "The new document", content_type = "application/json"),
    params(idempotency::IdempotencyHeaders),
    responses(
        (status = 201, description = "Created; Location and ETag headers", body = DocumentView),
    )
)]
#[post("/documents")]
pub async fn create_document(
    auth: Authorized<DocumentsWrite>,
    req: HttpRequest,
    input: web::Json<DocumentInput>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = auth.tenant_id()?;
    let input = input.into_inner();
    validate(&input)?;
    let canonical = serde_json::to_string(&serde_json::to_value(&input).expect("inputs serialize")).expect("JSON");
    let key = idempotency::from_request(&req, &canonical)?;
    let now = state.clock.now();
    if let Some(replayed) = idempotency::stored_response(&*state.store, tenant_id, key.as_ref(), now).await? {
        return Ok(replayed);
    }
    let who = actor(&auth);
    let mut document = Document {
        id: state.ids.new_id(),
        tenant_id,
        title: String::new(),
        summary: None,
        body: None,
        doc_type: String::new(),
        jurisdiction: None,
        status: DocumentStatus::Draft,
        effective_date: None,
        tags: Vec::new(),
        created_by: who.clone(),
        updated_by: who,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    input.apply(&mut document);
    let (response, body) = document_response(actix_web::http::StatusCode::CREATED, &document);
    let record = key.as_ref().map(|k| idempotency::record(tenant_id, k, "createDocument", &response, &body, now));
    let view = DocumentView::from(&document);
    let note = AuditNote::new("documents", document.id, None, Some(&view), "created document version 1");
    let ledger = ledger(&req, &response, note);
    match state.store.create_document(&document, record.as_ref(), ledger.as_ref()).await {
        Ok(()) => Ok(response),
        // Another request with the same key committed first: answer as it did (or 422 if it differed).
        Err(StoreError::Conflict(_)) if let Some(key) = &key => {
            idempotency::answer_lost_race(&*state.store, tenant_id, key, now).await
        }
        Err(err) => Err(err.into()),
    }
}

/// Reads a document. `If-None-Match` with its ETag answers 304; `If-Match` with another version than the current
/// one answers 412.
#[utoipa::path(
    tag = "documents",
    operation_id = "getDocument",
    security(("entra" = ["Documents.Read"])),
    params(
        ("id" = Uuid, Path, description = "The document id"),
        ("If-None-Match" = Option<String>, Header, nullable = false, description = "An ETag the client holds"),
        ("If-Match" = Option<String>, Header, nullable = false, description = "Read only if this ETag is current (or *)")
    ),
    responses(
        (status = 200, description = "The document; ETag header", body = DocumentView),
        (status = 304, description = "Not modified since the ETag in If-None-Match"),
        (status = 412, description = "If-Match names another version; the ETag header has the current one", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such document in the caller's tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/documents/{id}")]
pub async fn get_document(
    auth: Authorized<DocumentsRead>,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let document = state.store.get_document(auth.tenant_id()?, parse_id(&id)?).await?.ok_or_else(not_found)?;
    check_if_match_on_read(&req, document.version)?;
    if not_modified(&req, document.version) {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag(document.version))).finish());
    }
    Ok(document_response(actix_web::http::StatusCode::OK, &document).0)
}

async fn write(
    state: &AppState,
    req: &HttpRequest,
    current: &Document,
    precondition_version: i64,
    replacement: DocumentInput,
    who: String,
) -> Result<HttpResponse, AppError> {
    validate(&replacement)?;
    let mut next = current.clone();
    replacement.apply(&mut next);
    if next == *current {
        // Nothing changes (an empty merge patch, a PUT of what is stored): no new version and nothing written;
        // the answer is the stored document and its ETag. The call is metered and audited as every write call is.
        return Ok(document_response(actix_web::http::StatusCode::OK, current).0);
    }
    next.updated_by = who;
    next.updated_at = state.clock.now();
    next.version = precondition_version + 1;
    // The answer and the audit event describe the row as it will be stored (the store writes exactly `next`).
    let (response, _) = document_response(actix_web::http::StatusCode::OK, &next);
    let (before, after) = (DocumentView::from(current), DocumentView::from(&next));
    let summary = format!("updated document to version {}", next.version);
    let ledger = ledger(req, &response, AuditNote::new("documents", next.id, Some(&before), Some(&after), summary));
    took_effect(state.store.update_document(&next, precondition_version, ledger.as_ref()).await?, not_found)?;
    Ok(response)
}

/// Replaces a document's writable fields. Requires `If-Match`. A replacement equal to what is stored answers the
/// document as it is, version unchanged.
#[utoipa::path(
    tag = "documents",
    operation_id = "replaceDocument",
    security(("entra" = ["Documents.Write"])),
    params(("id" = Uuid, Path, description = "The document id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    request_body(content = DocumentInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced; new ETag (the same one when nothing changes)", body = DocumentView),
        (status = 404, description = "No such document in the caller's tenant", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[put("/documents/{id}")]
pub async fn replace_document(
    auth: Authorized<DocumentsWrite>,
    req: HttpRequest,
    id: web::Path<String>,
    input: web::Json<DocumentInput>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&id)?;
    let precondition = require_if_match(&req)?;
    let input = input.into_inner();
    retrying(&precondition, || async {
        let current = state.store.get_document(auth.tenant_id()?, id).await?.ok_or_else(not_found)?;
        let version = expected_version(&precondition, current.version)?;
        write(&state, &req, &current, version, input.clone(), actor(&auth)).await
    })
    .await
}

/// Changes some fields with a JSON merge patch (RFC 7396; `null` removes an optional field). Requires `If-Match`.
/// A patch that changes nothing (`{}`, or the values stored) answers the document as it is, version unchanged.
#[utoipa::path(
    tag = "documents",
    operation_id = "patchDocument",
    security(("entra" = ["Documents.Write"])),
    params(("id" = Uuid, Path, description = "The document id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    request_body(content = DocumentPatch, description = "A JSON merge patch of the writable fields", content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Patched; new ETag (the same one when the patch changes nothing)", body = DocumentView),
        (status = 404, description = "No such document in the caller's tenant", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/documents/{id}")]
pub async fn patch_document(
    auth: Authorized<DocumentsWrite>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    crate::api::validation::require_merge_patch(&req)?;
    let patch: serde_json::Value = serde_json::from_slice(&body).map_err(|e| serde_json_error(&e))?;
    if !patch.is_object() {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::new(
            "body",
            "type",
            "a merge patch is a JSON object",
        )]));
    }
    let id = parse_id(&id)?;
    let precondition = require_if_match(&req)?;
    retrying(&precondition, || async {
        let current = state.store.get_document(auth.tenant_id()?, id).await?.ok_or_else(not_found)?;
        let version = expected_version(&precondition, current.version)?;
        // Merged onto the row just read: a try after a lost race merges onto the other write's result.
        let mut merged = serde_json::to_value(DocumentInput::from_document(&current)).expect("inputs serialize");
        json_patch::merge(&mut merged, &patch);
        let replacement: DocumentInput = serde_json::from_value(merged).map_err(|e| serde_json_error(&e))?;
        write(&state, &req, &current, version, replacement, actor(&auth)).await
    })
    .await
}

/// Deletes a document (soft: it disappears from every read). Requires `If-Match`.
#[utoipa::path(
    tag = "documents",
    operation_id = "deleteDocument",
    security(("entra" = ["Documents.Write"])),
    params(("id" = Uuid, Path, description = "The document id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such document in the caller's tenant", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[delete("/documents/{id}")]
pub async fn delete_document(
    auth: Authorized<DocumentsWrite>,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let id = parse_id(&id)?;
    let precondition = require_if_match(&req)?;
    let tenant_id = auth.tenant_id()?;
    retrying(&precondition, || async {
        let current = state.store.get_document(tenant_id, id).await?.ok_or_else(not_found)?;
        let version = expected_version(&precondition, current.version)?;
        let response = HttpResponse::NoContent().finish();
        let before = DocumentView::from(&current);
        let summary = format!("deleted document at version {}", current.version);
        let ledger = ledger(&req, &response, AuditNote::new("documents", current.id, Some(&before), None, summary));
        let deleted = state
            .store
            .delete_document(tenant_id, current.id, version, &actor(&auth), state.clock.now(), ledger.as_ref())
            .await?;
        took_effect(deleted, not_found)?;
        Ok(response)
    })
    .await
}

/// The list query, parsed by hand: `tag` repeats, and unknown parameters are refused.
#[derive(Debug, Default)]
struct ListQuery {
    filter: DocumentFilter,
    sort: Option<DocumentSort>,
    maxpagesize: Option<u32>,
    count: bool,
    cursor: Option<String>,
    highlight: bool,
    facets: Vec<FacetField>,
}

/// The documented query parameters of `listDocuments` (for the OpenAPI document).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // documentation only: the query is parsed by ListQuery::parse
pub struct ListParams {
    /// `draft`, `published` or `archived`.
    status: Option<Status>,
    /// A document type as documents are written with it (letters, digits, `.`, `_`, `:`, `-`; any case).
    #[param(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._:-]+$")]
    doc_type: Option<String>,
    /// A jurisdiction code as documents are written with it (letters, digits, `.`, `_`, `:`, `-`; any case).
    #[param(min_length = 1, max_length = 64, pattern = r"^[A-Za-z0-9._:-]+$")]
    jurisdiction: Option<String>,
    /// Any of these tags: repeat (`tag=a&tag=b`) or separate with commas (`tag=a,b`).
    #[param(value_type = Option<Vec<TagFilter>>)]
    tag: Option<Vec<String>>,
    /// Updated at or after this instant (RFC 3339).
    updated_after: Option<DateTime<Utc>>,
    /// Updated before this instant (RFC 3339).
    updated_before: Option<DateTime<Utc>>,
    /// Effective on or after this date.
    effective_from: Option<NaiveDate>,
    /// Effective on or before this date.
    effective_to: Option<NaiveDate>,
    /// A full-text search of title, summary, body and tags: words (all must match), `"phrases"`, `prefix*` and
    /// `-exclusions`, e.g. `customs "union code" regulat* -draft` (docs/api-design.md, "Search"). Results come
    /// best match first unless `orderby` says otherwise.
    #[param(min_length = 1, max_length = 200, pattern = r"\S")]
    q: Option<String>,
    /// `updatedAt`, `title` or `effectiveDate`, then `asc` or `desc` (default `updatedAt desc`); or `relevance`,
    /// only with `q` (the default then).
    #[param(pattern = r"^\s*((updatedAt|title|effectiveDate)(\s+(asc|desc))?|relevance(\s+asc)?)\s*$")]
    orderby: Option<String>,
    /// With `q`: `true` adds `highlights` to each document, the matching words of its title, summary and body
    /// marked with `<mark>` (HTML-escaped text; summary and body cut to a snippet around the first match).
    highlight: Option<bool>,
    /// Counts per value over all matching documents (not just this page) of these fields, comma-separated:
    /// `docType`, `jurisdiction`, `tags`, `status`; at most 20 values each, commonest first. For a search past its
    /// window, over the window (`searchCoverage`).
    #[param(pattern = r"^\s*(docType|jurisdiction|tags|status)(\s*,\s*(docType|jurisdiction|tags|status))*\s*$")]
    facets: Option<String>,
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    maxpagesize: Option<u32>,
    /// `true` adds the number of all matching documents as `count`.
    count: Option<bool>,
    /// The opaque continuation token from `nextLink`.
    #[param(min_length = 1)]
    cursor: Option<String>,
}

impl ListQuery {
    fn parse(query: &str) -> Result<Self, AppError> {
        let mut q = ListQuery::default();
        let mut errors = Vec::new();
        let mut search_error = None;
        let mut bad = |field: &str, message: &str| errors.push(FieldError::new(field, "invalid", message));
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            let time = |v: &str| DateTime::parse_from_rfc3339(v).ok().map(|t| t.with_timezone(&Utc));
            let date = |v: &str| NaiveDate::parse_from_str(v, "%Y-%m-%d").ok().filter(|d| storable_date(*d));
            match key.as_ref() {
                "status" => match DocumentStatus::parse(&value) {
                    Some(s) => q.filter.status = Some(s),
                    None => bad("status", "draft, published or archived"),
                },
                "docType" if is_code(&value) => q.filter.doc_type = Some(crate::store::document_code(&value)),
                "jurisdiction" if is_code(&value) => q.filter.jurisdiction = Some(crate::store::document_code(&value)),
                // Repeated (`tag=a&tag=b`) or comma-separated: the Functions host joins repeated keys with
                // commas when it forwards a request, so both forms must mean the same.
                "tag" if value.split(',').all(|t| !t.trim().is_empty() && t.trim().chars().count() <= 64) => {
                    q.filter.tags_any.extend(value.split(',').map(|t| t.trim().to_lowercase()))
                }
                "updatedAfter" => match time(&value) {
                    Some(t) => q.filter.updated_after = Some(t),
                    None => bad("updatedAfter", "an RFC 3339 date-time, e.g. 2026-01-31T00:00:00Z"),
                },
                "updatedBefore" => match time(&value) {
                    Some(t) => q.filter.updated_before = Some(t),
                    None => bad("updatedBefore", "an RFC 3339 date-time, e.g. 2026-01-31T00:00:00Z"),
                },
                "effectiveFrom" => match date(&value) {
                    Some(d) => q.filter.effective_from = Some(d),
                    None => bad("effectiveFrom", "a date from 0001-01-01 to 9999-12-31, e.g. 2026-01-31"),
                },
                "effectiveTo" => match date(&value) {
                    Some(d) => q.filter.effective_to = Some(d),
                    None => bad("effectiveTo", "a date from 0001-01-01 to 9999-12-31, e.g. 2026-01-31"),
                },
                "q" if !value.trim().is_empty() && value.chars().count() <= 200 => match search::parse(&value) {
                    Ok(query) => q.filter.search = Some(query),
                    Err(e) => search_error = Some(*e),
                },
                "orderby" => match parse_orderby(&value) {
                    Some(sort) => q.sort = Some(sort),
                    None => bad(
                        "orderby",
                        "updatedAt, title or effectiveDate, optionally followed by asc or desc; or relevance",
                    ),
                },
                "highlight" => match value.as_str() {
                    "true" => q.highlight = true,
                    "false" => q.highlight = false,
                    _ => bad("highlight", "true or false"),
                },
                "facets" => match value.split(',').map(|f| parse_facet(f.trim())).collect::<Option<Vec<_>>>() {
                    Some(fields) => q.facets.extend(fields),
                    None => bad("facets", "docType, jurisdiction, tags or status, separated by commas"),
                },
                "maxpagesize" => match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => q.maxpagesize = Some(n),
                    _ => bad("maxpagesize", "a whole number from 1 to 100"),
                },
                "count" => match value.as_str() {
                    "true" => q.count = true,
                    "false" => q.count = false,
                    _ => bad("count", "true or false"),
                },
                "cursor" => q.cursor = Some(value),
                "docType" | "jurisdiction" => bad(&key, "1 to 64 letters, digits, '.', '_', ':' or '-'"),
                "tag" => bad("tag", "1 to 64 characters"),
                "q" => bad("q", "1 to 200 characters"),
                other => bad(other, "unknown query parameter"),
            }
        }
        if q.filter.tags_any.len() > MAX_TAGS {
            bad("tag", "at most 20 tags");
        }
        if q.sort.is_some_and(|s| s.key == DocumentSortKey::Relevance) && q.filter.search.is_none() {
            bad("orderby", "relevance needs a search (q)");
        }
        errors.extend(search_error);
        if errors.is_empty() {
            q.facets.sort_by_key(|f| *f as u8);
            q.facets.dedup();
            q.filter.tags_any.sort();
            q.filter.tags_any.dedup();
            Ok(q)
        } else {
            Err(AppError::new(ErrorCode::ValidationFailed)
                .with_detail("some query parameters are invalid")
                .with_parameter_errors(errors))
        }
    }

    /// Everything that defines the result set and its order (not the page size or the cursor), and the tenant:
    /// a cursor works only for the tenant and the listing it came from.
    fn fingerprint(&self, tenant_id: Uuid, sort: DocumentSort) -> [u8; 8] {
        let f = &self.filter;
        let parts = [
            tenant_id.to_string(),
            f.status.map(|s| s.as_str().to_owned()).unwrap_or_default(),
            f.doc_type.clone().unwrap_or_default(),
            f.jurisdiction.clone().unwrap_or_default(),
            f.tags_any.join("\u{1f}"),
            f.updated_after.map(|t| t.to_rfc3339()).unwrap_or_default(),
            f.updated_before.map(|t| t.to_rfc3339()).unwrap_or_default(),
            f.effective_from.map(|d| d.to_string()).unwrap_or_default(),
            f.effective_to.map(|d| d.to_string()).unwrap_or_default(),
            f.search.as_ref().map(|s| s.canonical()).unwrap_or_default(),
            format!("{:?}/{}", sort.key, sort.descending),
        ];
        fingerprint(&parts.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

fn parse_orderby(raw: &str) -> Option<DocumentSort> {
    let mut parts = raw.split_whitespace();
    let key = match parts.next()? {
        "updatedAt" => DocumentSortKey::UpdatedAt,
        "title" => DocumentSortKey::Title,
        "effectiveDate" => DocumentSortKey::EffectiveDate,
        "relevance" => DocumentSortKey::Relevance,
        _ => return None,
    };
    let descending = match parts.next() {
        None | Some("asc") => false,
        Some("desc") if key != DocumentSortKey::Relevance => true,
        Some(_) => return None,
    };
    parts.next().is_none().then_some(DocumentSort { key, descending })
}

/// Whether a `docType` or `jurisdiction` filter could name a code a document is written with (the write's pattern,
/// `^[A-Za-z0-9._:-]+$`, at most 64 characters): another value matches nothing, and says so.
fn is_code(value: &str) -> bool {
    (1..=64).contains(&value.len()) && value.bytes().all(|b| b.is_ascii_alphanumeric() || b".:_-".contains(&b))
}

fn parse_facet(raw: &str) -> Option<FacetField> {
    Some(match raw {
        "docType" => FacetField::DocType,
        "jurisdiction" => FacetField::Jurisdiction,
        "tags" => FacetField::Tags,
        "status" => FacetField::Status,
        _ => return None,
    })
}

/// The cursor's payload: the last row's sort value and id; in relevance order also the page's last documents with
/// their versions (`DocumentCursor::anchors`) and, past the search window, the window (size, then the positions
/// after and through which it lies), so that every page ranks the same matches. `R` and `W` are the relevance
/// forms of cursors issued before the anchors, still read.
#[derive(Debug, Serialize, Deserialize)]
enum Position {
    T(i64, Uuid),
    S(String, Uuid),
    D(NaiveDate, Uuid),
    R(i64, Uuid),
    W(i64, Uuid, (u32, i64, Uuid, i64, Uuid)),
    A(i64, Uuid, Vec<(Uuid, i64)>, Option<(u32, i64, Uuid, i64, Uuid)>),
}

impl Position {
    fn from_cursor(c: &DocumentCursor, window: Option<SearchWindow>) -> Self {
        match &c.value {
            SortValue::Time(t) => Position::T(t.timestamp_micros(), c.id),
            SortValue::Text(s) => Position::S(s.clone(), c.id),
            SortValue::Date(d) => Position::D(*d, c.id),
            SortValue::Rank(r) => Position::A(
                *r,
                c.id,
                c.anchors.clone(),
                window.map(|w| (w.size, w.after.at, w.after.id, w.through.at, w.through.id)),
            ),
        }
    }

    fn into_cursor(self) -> Option<(DocumentCursor, Option<SearchWindow>)> {
        let window = |(size, after_at, after_id, through_at, through_id): (u32, i64, Uuid, i64, Uuid)| SearchWindow {
            size,
            after: WritePosition { at: after_at, id: after_id },
            through: WritePosition { at: through_at, id: through_id },
        };
        Some(match self {
            Position::T(micros, id) => {
                (DocumentCursor::at(SortValue::Time(DateTime::from_timestamp_micros(micros)?), id), None)
            }
            Position::S(s, id) => (DocumentCursor::at(SortValue::Text(s), id), None),
            Position::D(d, id) => (DocumentCursor::at(SortValue::Date(d), id), None),
            Position::R(r, id) => (DocumentCursor::at(SortValue::Rank(r), id), None),
            Position::W(r, id, w) => (DocumentCursor::at(SortValue::Rank(r), id), Some(window(w))),
            Position::A(r, id, anchors, w) => {
                if anchors.len() > crate::store::RANK_ANCHORS {
                    return None;
                }
                (DocumentCursor { value: SortValue::Rank(r), id, anchors }, w.map(window))
            }
        })
    }
}

/// Lists and searches the tenant's documents in keyset pages.
#[utoipa::path(
    tag = "documents",
    operation_id = "listDocuments",
    security(("entra" = ["Documents.Read"])),
    params(ListParams),
    responses(
        (status = 200, description = "A page: value, nextLink (absent on the last page), count (when asked)", body = DocumentList),
    )
)]
#[get("/documents")]
pub async fn list_documents(
    auth: Authorized<DocumentsRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = auth.tenant_id()?;
    let query = ListQuery::parse(req.query_string())?;
    let default = match query.filter.search {
        Some(_) => DocumentSort { key: DocumentSortKey::Relevance, descending: false },
        None => DocumentSort { key: DocumentSortKey::UpdatedAt, descending: true },
    };
    let sort = query.sort.unwrap_or(default);
    let fingerprint = query.fingerprint(tenant_id, sort);
    let (after, carried) = match &query.cursor {
        None => (None, None),
        Some(raw) => {
            let (cursor, window) =
                state.cursors.decode::<Position>(fingerprint, raw)?.into_cursor().ok_or_else(|| {
                    AppError::new(ErrorCode::ValidationFailed).with_parameter_errors(vec![FieldError::new(
                        "cursor",
                        "invalid",
                        "not a cursor this API issued",
                    )])
                })?;
            (Some(cursor), window)
        }
    };
    // A search in relevance order that matches more than the window ranks its most recently written matches
    // only (`store::search::SEARCH_WINDOW`): chosen on the first page, carried in the cursor after it.
    let ranked = sort.key == DocumentSortKey::Relevance;
    let take_window = (ranked && after.is_none()).then_some(state.search_window);
    let filter = DocumentFilter { window: carried, take_window, ..query.filter.clone() };
    let size = query.maxpagesize.unwrap_or(DEFAULT_PAGE_SIZE);
    let page = state.store.list_documents(tenant_id, &filter, sort, after.as_ref(), size, query.count).await?;
    let window = page.window;
    // Facets count the listing's window; in another order (or on a later page without one, when writes may have
    // added matches since) a window of their own bounds them the same way.
    let mut facet_window = window;
    let facets = match query.facets.is_empty() {
        true => None,
        false => {
            if window.is_none() && query.filter.search.is_some() && !(ranked && after.is_none()) {
                facet_window = state.store.search_window(tenant_id, &query.filter, state.search_window).await?;
            }
            let filter = DocumentFilter { window: facet_window, ..query.filter.clone() };
            Some(FacetCounts::from(state.store.document_facets(tenant_id, &filter, &query.facets).await?))
        }
    };
    let next_link = page.next.as_ref().map(|next| {
        let token = state.cursors.encode(fingerprint, &Position::from_cursor(next, window));
        crate::api::list::next_link(&req, "/api/v1/documents", &token)
    });
    let highlighted = query.filter.search.as_ref().filter(|_| query.highlight);
    let value = page
        .items
        .iter()
        .map(|d| DocumentView { highlights: highlighted.map(|q| Highlights::of(d, q)), ..DocumentView::from(d) })
        .collect();
    let search_coverage = window.or(facet_window).map(|w| SearchCoverage { window: w.size });
    Ok(HttpResponse::Ok().json(DocumentList { value, next_link, count: page.total, facets, search_coverage }))
}

/// A page of documents.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DocumentList {
    pub value: Vec<DocumentView>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
    /// With `count=true`: every matching document, not just this page (the search window's when
    /// `searchCoverage` is present in relevance order).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// With `facets`: counts per value over every matching document (over the search window when
    /// `searchCoverage` is present).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub facets: Option<FacetCounts>,
    /// Present only when a search matched more documents than it ranks: then only the most recently written
    /// `window` of them were ranked, counted and faceted (docs/api-design.md, "Search").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub search_coverage: Option<SearchCoverage>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_parse_strictly() {
        let q = ListQuery::parse(
            "status=draft&tag=EU&tag=tax,customs&tag=eu&orderby=title%20desc&maxpagesize=10&count=true&q=50%25",
        )
        .unwrap();
        assert_eq!(q.filter.status, Some(DocumentStatus::Draft));
        assert_eq!(q.filter.tags_any, vec!["customs", "eu", "tax"]);
        assert!(ListQuery::parse("tag=a,,b").is_err(), "empty tags are refused");
        assert_eq!(q.sort, Some(DocumentSort { key: DocumentSortKey::Title, descending: true }));
        assert_eq!((q.maxpagesize, q.count), (Some(10), true));
        assert_eq!(q.filter.search.as_ref().map(|s| s.canonical()).as_deref(), Some("50"));
        let err =
            ListQuery::parse("status=gone&maxpagesize=0&orderby=size&colour=red&updatedAfter=yesterday").unwrap_err();
        let fields: Vec<_> = err.field_errors().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["status", "maxpagesize", "orderby", "colour", "updatedAfter"]);
    }

    #[test]
    fn fingerprints_change_with_filters_and_sort_but_not_page_size() {
        let sort = DocumentSort { key: DocumentSortKey::UpdatedAt, descending: true };
        let t = Uuid::from_u128(1);
        let a = ListQuery::parse("status=draft&maxpagesize=5").unwrap().fingerprint(t, sort);
        let b = ListQuery::parse("status=draft&maxpagesize=50").unwrap().fingerprint(t, sort);
        let c = ListQuery::parse("status=published").unwrap().fingerprint(t, sort);
        let d = ListQuery::parse("status=draft").unwrap().fingerprint(t, DocumentSort { descending: false, ..sort });
        let e = ListQuery::parse("status=draft").unwrap().fingerprint(Uuid::from_u128(2), sort);
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
        assert_ne!(a, e, "another tenant");
    }

    #[test]
    fn orderby_accepts_the_documented_forms_only() {
        assert_eq!(
            parse_orderby("effectiveDate"),
            Some(DocumentSort { key: DocumentSortKey::EffectiveDate, descending: false })
        );
        assert!(parse_orderby("updatedAt desc extra").is_none());
        assert!(parse_orderby("updatedAt DESC").is_none());
    }
}
