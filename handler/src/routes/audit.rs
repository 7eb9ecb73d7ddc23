//! `/api/v1/audit-events`: the caller's tenant's audit trail (filters, keyset pages) and the verification of its hash chain.
//!
//! The events are written by the record stage (`metering::stage::record`, `metering::audit`); this module only
//! reads them. A tenant sees only its own chain (`tenant:<id>`); a platform administrator may name any tenant with
//! `tenantId` (`routes::scope`), and that read is itself audited in the tenant's chain. A cursor is bound to the
//! tenant and the filters.

use actix_web::{HttpRequest, HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::scope::scoped_tenant;
use crate::api::cursor::fingerprint;
use crate::api::list::{DEFAULT_PAGE_SIZE, ListEnvelope, MAX_PAGE_SIZE};
use crate::auth::guard::{AuditRead, Authorized};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::metering::audit::ChainVerifier;
use crate::state::AppState;
use crate::store::{AuditCursor, AuditEvent, AuditFilter, AuditOutcome, audit_chain_key};

/// Events read per store call while verifying.
const VERIFY_PAGE: u32 = 500;

/// What became of an audited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AuditEventOutcome {
    Succeeded,
    Denied,
    Rejected,
    Failed,
}

impl From<AuditOutcome> for AuditEventOutcome {
    fn from(o: AuditOutcome) -> Self {
        match o {
            AuditOutcome::Succeeded => AuditEventOutcome::Succeeded,
            AuditOutcome::Denied => AuditEventOutcome::Denied,
            AuditOutcome::Rejected => AuditEventOutcome::Rejected,
            AuditOutcome::Failed => AuditEventOutcome::Failed,
        }
    }
}

/// One audit event as the API shows it: every stored column.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEventView {
    pub id: Uuid,
    /// The position in the tenant's chain, from 1.
    pub chain_seq: i64,
    pub occurred_at: DateTime<Utc>,
    /// The caller's object id (`oid`), if the token had one.
    pub actor_oid: Option<String>,
    /// The calling application (`azp`/`appid`), if any.
    pub actor_app_id: Option<String>,
    /// The directory (`tid`) the caller's token was issued in.
    pub actor_tenant_id: Option<String>,
    /// The operation id, e.g. `patchDocument`.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub outcome: AuditEventOutcome,
    pub request_id: Option<String>,
    pub summary: String,
    /// Hex SHA-256 of the resource's JSON view before the change.
    pub before_hash: Option<String>,
    /// Hex SHA-256 of the resource's JSON view after the change.
    pub after_hash: Option<String>,
    /// The rate limiter's and quota's decision, e.g. `rate-limited minute r=0 t=3`.
    pub limiter_decision: Option<String>,
    /// The previous event's hash (64 zeros for the first).
    pub prev_hash: String,
    /// SHA-256 over `prevHash` and every other column (see docs/data-model.md, Audit).
    pub hash: String,
}

impl From<&AuditEvent> for AuditEventView {
    fn from(e: &AuditEvent) -> Self {
        AuditEventView {
            id: e.id,
            chain_seq: e.chain_seq,
            occurred_at: e.occurred_at,
            actor_oid: e.actor_oid.clone(),
            actor_app_id: e.actor_app_id.clone(),
            actor_tenant_id: e.actor_tenant_id.clone(),
            action: e.action.clone(),
            resource_type: e.resource_type.clone(),
            resource_id: e.resource_id.clone(),
            outcome: e.outcome.into(),
            request_id: e.request_id.clone(),
            summary: e.summary.clone(),
            before_hash: e.before_hash.clone(),
            after_hash: e.after_hash.clone(),
            limiter_decision: e.limiter_decision.clone(),
            prev_hash: e.prev_hash.clone(),
            hash: e.hash.clone(),
        }
    }
}

/// The list envelope of audit events, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuditEventList {
    pub value: Vec<AuditEventView>,
    /// Absent on the last page.
    pub next_link: Option<String>,
    /// The number of all matching events, when `count=true` was asked.
    pub count: Option<u64>,
}

/// The documented query parameters of `listAuditEvents` (for the OpenAPI document).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)] // documentation only: the query is parsed by ListQuery::parse
pub struct ListParams {
    /// An object id or application id: events whose `actorOid` or `actorAppId` is this value.
    #[param(min_length = 1, max_length = 128)]
    actor: Option<String>,
    /// An operation id, e.g. `deleteDocument`.
    #[param(min_length = 1, max_length = 64)]
    action: Option<String>,
    /// e.g. `documents`.
    #[param(min_length = 1, max_length = 64)]
    resource_type: Option<String>,
    #[param(min_length = 1, max_length = 128)]
    resource_id: Option<String>,
    outcome: Option<AuditEventOutcome>,
    /// Events at or after this instant (RFC 3339).
    from: Option<DateTime<Utc>>,
    /// Events before this instant (RFC 3339).
    to: Option<DateTime<Utc>>,
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100)]
    maxpagesize: Option<u32>,
    /// The opaque continuation token from `nextLink`.
    #[param(min_length = 1)]
    cursor: Option<String>,
    /// `true` adds the number of all matching events as `count`.
    count: Option<bool>,
    /// Platform administrators only: the tenant whose events to list (default: the caller's).
    tenant_id: Option<Uuid>,
}

#[derive(Debug, Default)]
struct ListQuery {
    filter: AuditFilter,
    maxpagesize: Option<u32>,
    cursor: Option<String>,
    count: bool,
    tenant_id: Option<Uuid>,
}

impl ListQuery {
    fn parse(query: &str) -> Result<Self, AppError> {
        let mut q = ListQuery::default();
        let mut errors = Vec::new();
        let mut bad = |field: &str, message: &str| errors.push(FieldError::new(field, "invalid", message));
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let value = value.into_owned();
            let text = |v: &str, max: usize| (!v.is_empty() && v.chars().count() <= max).then(|| v.to_owned());
            let time = |v: &str| DateTime::parse_from_rfc3339(v).ok().map(|t| t.with_timezone(&Utc));
            match key.as_ref() {
                "actor" => match text(&value, 128) {
                    Some(v) => q.filter.actor = Some(v),
                    None => bad("actor", "1 to 128 characters"),
                },
                "action" => match text(&value, 64) {
                    Some(v) => q.filter.action = Some(v),
                    None => bad("action", "1 to 64 characters"),
                },
                "resourceType" => match text(&value, 64) {
                    Some(v) => q.filter.resource_type = Some(v),
                    None => bad("resourceType", "1 to 64 characters"),
                },
                "resourceId" => match text(&value, 128) {
                    Some(v) => q.filter.resource_id = Some(v),
                    None => bad("resourceId", "1 to 128 characters"),
                },
                "outcome" => match AuditOutcome::parse(&value) {
                    Some(o) => q.filter.outcome = Some(o),
                    None => bad("outcome", "succeeded, denied, rejected or failed"),
                },
                "from" => match time(&value) {
                    Some(t) => q.filter.from = Some(t),
                    None => bad("from", "an RFC 3339 date-time, e.g. 2026-01-31T00:00:00Z"),
                },
                "to" => match time(&value) {
                    Some(t) => q.filter.to = Some(t),
                    None => bad("to", "an RFC 3339 date-time, e.g. 2026-01-31T00:00:00Z"),
                },
                "maxpagesize" => match value.parse::<u32>() {
                    Ok(n) if (1..=MAX_PAGE_SIZE).contains(&n) => q.maxpagesize = Some(n),
                    _ => bad("maxpagesize", "a whole number from 1 to 100"),
                },
                "cursor" => q.cursor = Some(value),
                "count" => match value.as_str() {
                    "true" => q.count = true,
                    "false" => q.count = false,
                    _ => bad("count", "true or false"),
                },
                "tenantId" => match value.parse::<Uuid>() {
                    Ok(id) => q.tenant_id = Some(id),
                    Err(_) => bad("tenantId", "a tenant id (UUID)"),
                },
                other => bad(other, "unknown query parameter"),
            }
        }
        if errors.is_empty() {
            Ok(q)
        } else {
            Err(AppError::new(ErrorCode::ValidationFailed)
                .with_detail("some query parameters are invalid")
                .with_parameter_errors(errors))
        }
    }

    /// The tenant and every filter: a cursor works only for the tenant and the listing it came from.
    fn fingerprint(&self, tenant_id: Uuid) -> [u8; 8] {
        let f = &self.filter;
        let parts = [
            "audit".to_owned(),
            tenant_id.to_string(),
            f.actor.clone().unwrap_or_default(),
            f.action.clone().unwrap_or_default(),
            f.resource_type.clone().unwrap_or_default(),
            f.resource_id.clone().unwrap_or_default(),
            f.outcome.map(|o| o.as_str().to_owned()).unwrap_or_default(),
            f.from.map(|t| t.to_rfc3339()).unwrap_or_default(),
            f.to.map(|t| t.to_rfc3339()).unwrap_or_default(),
        ];
        fingerprint(&parts.iter().map(String::as_str).collect::<Vec<_>>())
    }
}

/// Lists the caller's tenant's audit events (a platform administrator: any tenant's), newest first, in keyset pages.
#[utoipa::path(
    tag = "audit",
    operation_id = "listAuditEvents",
    security(("entra" = ["Audit.Read"])),
    params(ListParams),
    responses(
        (status = 200, description = "A page, newest first: value, nextLink (absent on the last page)", body = AuditEventList),
        (status = 404, description = "No such tenant visible to the caller", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/audit-events")]
pub async fn list_audit_events(
    auth: Authorized<AuditRead>,
    req: HttpRequest,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let query = ListQuery::parse(req.query_string())?;
    let tenant_id = scoped_tenant(&req, &auth, query.tenant_id)?;
    if query.tenant_id.is_some() {
        existing(&state, tenant_id).await?;
    }
    let fingerprint = query.fingerprint(tenant_id);
    let after = match &query.cursor {
        None => None,
        Some(raw) => {
            let (micros, id) = state.cursors.decode::<(i64, Uuid)>(fingerprint, raw)?;
            let occurred_at = DateTime::from_timestamp_micros(micros).ok_or_else(|| {
                AppError::new(ErrorCode::ValidationFailed).with_parameter_errors(vec![FieldError::new(
                    "cursor",
                    "invalid",
                    "not a cursor this API issued",
                )])
            })?;
            Some(AuditCursor { occurred_at, id })
        }
    };
    let size = query.maxpagesize.unwrap_or(DEFAULT_PAGE_SIZE);
    let page = state.store.list_audit_events(Some(tenant_id), &query.filter, after.as_ref(), size).await?;
    let next_link = page.next.as_ref().map(|next| {
        let token = state.cursors.encode(fingerprint, &(next.occurred_at.timestamp_micros(), next.id));
        crate::api::list::next_link(&req, "/api/v1/audit-events", &token)
    });
    let count = match query.count {
        true => Some(state.store.count_audit_events(Some(tenant_id), &query.filter).await?),
        false => None,
    };
    Ok(HttpResponse::Ok().json(ListEnvelope {
        value: page.items.iter().map(AuditEventView::from).collect(),
        next_link,
        count,
    }))
}

/// The first event at which a chain does not verify.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BrokenLink {
    /// The `chainSeq` of the first event that does not verify (after a removed event: the one following it).
    pub chain_seq: i64,
    pub event_id: Uuid,
    /// `hash mismatch` (the event's columns were changed), `prev_hash does not match the previous event`, or
    /// `sequence gap` (an event is missing before this one).
    pub reason: String,
}

/// The last event of a verified chain: record it elsewhere to detect events later cut from the end.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainHead {
    pub chain_seq: i64,
    pub hash: String,
}

/// The result of recomputing the caller's tenant's chain, from its first event or from a head recorded earlier.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ChainVerification {
    /// `true` when every event examined recomputes (and links to the head resumed from, if any).
    pub valid: bool,
    /// `true` when the examination reached the chain's end (or its first broken link); `false` when it stopped at
    /// the most events one call checks, with the rest to verify from `nextLink`.
    pub complete: bool,
    /// Events examined (up to and including the first broken one).
    pub checked: u64,
    /// `null` when the events examined are intact.
    pub first_broken_link: Option<BrokenLink>,
    /// The last event examined when they are intact (the head resumed from if there was nothing after it; `null`
    /// for an empty chain).
    pub head: Option<ChainHead>,
    /// When `complete` is `false`: the call that verifies the rest, resuming from `head`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
}

/// A tenant a platform administrator named: 404 when there is none, as for any other tenant read.
async fn existing(state: &AppState, tenant_id: Uuid) -> Result<(), AppError> {
    match state.store.get_tenant(tenant_id).await? {
        Some(_) => Ok(()),
        None => Err(AppError::new(ErrorCode::NotFound).with_detail("no such tenant")),
    }
}

/// The query of `verifyAuditChain`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VerifyParams {
    /// Platform administrators only: the tenant whose chain to verify (default: the caller's).
    pub tenant_id: Option<Uuid>,
    /// Resume after a chain head a verification returned, written `<chainSeq>:<hash>`: only the events after it are
    /// recomputed, and the first must link to it. Without it the chain is verified from its first event.
    #[param(pattern = "^[1-9][0-9]{0,17}:[0-9a-f]{64}$")]
    pub after: Option<String>,
}

/// Recomputes the caller's tenant's audit chain (a platform administrator: any tenant's) from its first event, or
/// from a head a verification returned earlier, and reports the first broken link; at most `metering::audit::VERIFY_LIMIT` events
/// a call (`AppState::audit_verify_limit`), the rest from `nextLink`.
#[utoipa::path(
    tag = "audit",
    operation_id = "verifyAuditChain",
    security(("entra" = ["Audit.Read"])),
    params(VerifyParams),
    responses(
        (status = 200, description = "The verification result (an invalid chain is still a 200)", body = ChainVerification),
        (status = 404, description = "No such tenant visible to the caller", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/audit-events/verify")]
pub async fn verify_audit_chain(
    auth: Authorized<AuditRead>,
    req: HttpRequest,
    params: web::Query<VerifyParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = scoped_tenant(&req, &auth, params.tenant_id)?;
    if params.tenant_id.is_some() {
        existing(&state, tenant_id).await?;
    }
    let chain = audit_chain_key(Some(tenant_id));
    let resumed = match params.after.as_deref().map(chain_head) {
        None => None,
        Some(Some(head)) => Some(head),
        Some(None) => {
            return Err(AppError::new(ErrorCode::ValidationFailed).with_parameter_errors(vec![
                FieldError::new("after", "pattern", "a chain head: <chainSeq>:<hash>").in_query("after"),
            ]));
        }
    };
    let (mut verifier, mut after_seq, mut head) = match resumed {
        None => (ChainVerifier::default(), 0, None),
        Some((seq, hash)) => {
            let stored = state.store.audit_chain(&chain, seq - 1, 1).await?;
            match ChainVerifier::resume(stored.first(), seq, hash) {
                Ok(verifier) => (verifier, seq, Some(ChainHead { chain_seq: seq, hash: hash.to_owned() })),
                Err(reason) => {
                    let broken = BrokenLink {
                        chain_seq: seq,
                        event_id: stored.first().map_or(Uuid::nil(), |e| e.id),
                        reason: reason.as_str().to_owned(),
                    };
                    return Ok(HttpResponse::Ok().json(ChainVerification::broken(0, broken)));
                }
            }
        }
    };
    let page = VERIFY_PAGE.min(u32::try_from(state.audit_verify_limit).unwrap_or(VERIFY_PAGE)).max(1);
    loop {
        let events = state.store.audit_chain(&chain, after_seq, page).await?;
        for event in &events {
            if let Some(reason) = verifier.check(event) {
                let broken =
                    BrokenLink { chain_seq: event.chain_seq, event_id: event.id, reason: reason.as_str().to_owned() };
                return Ok(HttpResponse::Ok().json(ChainVerification::broken(verifier.checked, broken)));
            }
            head = Some(ChainHead { chain_seq: event.chain_seq, hash: event.hash.clone() });
        }
        match events.last() {
            Some(last) if events.len() == page as usize => after_seq = last.chain_seq,
            _ => break,
        }
        if verifier.checked >= state.audit_verify_limit {
            // More may follow: the next call resumes from the head reached.
            let next_link = head.as_ref().map(|h| {
                let after = format!("{}:{}", h.chain_seq, h.hash);
                crate::api::list::link_resuming(&req, "/api/v1/audit-events/verify", "after", &after)
            });
            return Ok(HttpResponse::Ok().json(ChainVerification {
                valid: true,
                complete: false,
                checked: verifier.checked,
                first_broken_link: None,
                head,
                next_link,
            }));
        }
    }
    Ok(HttpResponse::Ok().json(ChainVerification {
        valid: true,
        complete: true,
        checked: verifier.checked,
        first_broken_link: None,
        head,
        next_link: None,
    }))
}

/// `after` read as a chain head, `<chainSeq>:<hash>`. The contract checked its form; read here without trusting it.
fn chain_head(after: &str) -> Option<(i64, &str)> {
    let (seq, hash) = after.split_once(':')?;
    let seq = seq.parse::<i64>().ok().filter(|seq| *seq >= 1)?;
    (hash.len() == 64).then_some((seq, hash))
}

impl ChainVerification {
    /// The answer at the first broken link, after `checked` events.
    fn broken(checked: u64, link: BrokenLink) -> Self {
        ChainVerification {
            valid: false,
            complete: true,
            checked,
            first_broken_link: Some(link),
            head: None,
            next_link: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_queries_parse_strictly_and_fingerprints_bind_tenant_and_filters() {
        let q = ListQuery::parse("actor=oid-1&outcome=denied&from=2026-01-01T00:00:00Z&maxpagesize=5").unwrap();
        assert_eq!(q.filter.actor.as_deref(), Some("oid-1"));
        assert_eq!(q.filter.outcome, Some(AuditOutcome::Denied));
        let err = ListQuery::parse("outcome=maybe&colour=red&maxpagesize=101&to=later").unwrap_err();
        let fields: Vec<_> = err.field_errors().iter().map(|f| f.field.as_str()).collect();
        assert_eq!(fields, vec!["outcome", "colour", "maxpagesize", "to"]);
        let (a, b) = (Uuid::from_u128(1), Uuid::from_u128(2));
        let same = ListQuery::parse("actor=oid-1&outcome=denied&from=2026-01-01T00:00:00Z&maxpagesize=50").unwrap();
        assert_eq!(q.fingerprint(a), same.fingerprint(a), "page size is not part of the query");
        assert_ne!(q.fingerprint(a), q.fingerprint(b), "another tenant");
        assert_ne!(q.fingerprint(a), ListQuery::parse("actor=oid-1").unwrap().fingerprint(a));
    }
}
