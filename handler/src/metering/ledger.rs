//! A request's own records (its usage event and, when audited, its audit event), built in one place for the
//! record stage and for the store write that carries the request out.
//!
//! The record stage ([`super::stage::record`]) leaves a [`RequestMeter`] in the request extensions with the ids
//! the records will have. A handler that changes state builds the records with [`ledger`] before its store
//! write and passes them to it, so they commit in the write's transaction: a crash (SIGKILL) can never keep a
//! change and lose its usage or audit event. The record stage later writes the same ids again through the
//! group commit; the store skips ids it holds, so a request never has two records.

use std::sync::Arc;
use std::time::Instant;

use actix_web::http::{Method, StatusCode};
use actix_web::{HttpMessage, HttpRequest, HttpResponse};
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::audit::{self, AuditNote, CrossTenantRead, LimiterDecision};
use super::costs;
use super::refusals::RefusalKind;
use crate::auth::Principal;
use crate::auth::guard::{Caller, RefusedTenant};
use crate::store::{AuditEventInput, Ledger, LimitRefusal, UsageEvent};

/// A quota debit the limit stage made for a request: billed with its usage event when the request succeeds;
/// when it does not, refunded by the record stage, or (taken from a quota lease) left to the lease's settlement.
#[derive(Debug, Clone, Copy)]
pub struct Debit {
    pub tenant_id: uuid::Uuid,
    pub period_start: chrono::NaiveDate,
    pub units: i64,
    pub overage_units: i64,
    /// The quota lease the units came from, which the usage event names.
    pub lease_id: Option<Uuid>,
    /// The capped client (registration) whose own counter was debited the same units too.
    pub client_id: Option<Uuid>,
}

/// What the record stage knows about a request before it runs: the ids of its records and what it measures.
#[derive(Debug, Clone)]
pub struct RequestMeter {
    pub usage_id: Uuid,
    /// Allocated up front only for methods that change state (a handler's ledger needs it before the write);
    /// a read that ends up audited (401, 403, 429) gets its id when the record stage writes it.
    pub audit_id: Option<Uuid>,
    pub started: Instant,
    pub occurred_at: DateTime<Utc>,
    pub operation: String,
    pub method: Method,
    pub request_bytes: i64,
}

/// Request extension (the record stage's): the answer replays the stored answer of an idempotent create that took
/// effect already (`idempotency-replayed: true`). A replay is recorded, and not billed: a client that retries a
/// create whose answer it lost pays for the create once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Replayed;

/// Whether a call with this answer is charged: it succeeded, its operation debited units, and it is no replay.
pub(crate) fn is_billable(request: &HttpRequest, status: StatusCode) -> bool {
    let extensions = request.extensions();
    status.is_success() && extensions.get::<Debit>().is_some() && extensions.get::<Replayed>().is_none()
}

/// Request extension (the limit stage's): the units the call's operation costs on the tenant's plan, its override
/// included, whether or not the call is charged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperationCost(pub i64);

/// Whether a request is audited, and with which outcome: [`audit::outcome`], and also a platform administrator's
/// successful read of another tenant's data ([`CrossTenantRead`]), which is recorded in that tenant's chain.
pub(crate) fn audit_outcome(
    request: &HttpRequest,
    method: &Method,
    status: StatusCode,
) -> Option<crate::store::AuditOutcome> {
    audit::outcome(method, status).or_else(|| {
        (status.is_success() && request.extensions().get::<CrossTenantRead>().is_some())
            .then_some(crate::store::AuditOutcome::Succeeded)
    })
}

/// The route template a request is recorded under. Answered before the router ran (a refusal, a malformed body), a
/// request has no pattern of its own: the route table's, for the path the router would match (a percent-encoded one
/// included).
fn route_of(request: &HttpRequest) -> String {
    request
        .match_pattern()
        .or_else(|| {
            let table = request.app_data::<actix_web::web::Data<crate::api::operations::RouteTable>>()?;
            let path = crate::api::operations::routed_path(request.match_info());
            table.template(request.method().as_str(), path).map(str::to_owned)
        })
        .unwrap_or_else(|| "unmatched".to_owned())
}

/// The tenant a request's records belong to. A caller refused for its tenant's state (suspended, closed) or its
/// revoked registration was still identified: its calls are that tenant's, refused ones included.
fn tenant_of(extensions: &actix_web::dev::Extensions) -> Option<Uuid> {
    let caller = extensions.get::<Arc<Caller>>();
    caller.and_then(|c| c.tenant.as_ref().map(|t| t.id)).or_else(|| extensions.get::<RefusedTenant>().map(|t| t.0))
}

/// Who an audit event names as the actor: the caller's principal, else the one authentication found before the
/// tenant refused it (403).
fn principal_of(extensions: &actix_web::dev::Extensions) -> Option<Arc<Principal>> {
    extensions.get::<Arc<Caller>>().map(|c| c.principal.clone()).or_else(|| extensions.get::<Arc<Principal>>().cloned())
}

/// The id a request's path names (`{id}` or `{code}`), its audit event's resource when no note says.
pub(crate) fn path_id(request: &HttpRequest) -> Option<String> {
    ["id", "code"].iter().find_map(|k| request.match_info().get(k).map(str::to_owned))
}

/// The kind of refusal (401, 403, 429) a request's answer is, for coalescing its audit event with its repeats
/// (`super::refusals`); `None` for an answer that is no refusal.
pub(crate) fn refusal_kind(
    request: &HttpRequest,
    meter: &RequestMeter,
    status: StatusCode,
    headers: &actix_web::http::header::HeaderMap,
) -> Option<RefusalKind> {
    let outcome = audit::outcome(&meter.method, status)
        .filter(|o| matches!(o, crate::store::AuditOutcome::Denied | crate::store::AuditOutcome::Rejected))?;
    let extensions = request.extensions();
    let principal = principal_of(&extensions);
    let code = headers.get(crate::error::ERROR_CODE_HEADER).and_then(|v| v.to_str().ok());
    Some(RefusalKind {
        tenant_id: tenant_of(&extensions),
        actor_oid: principal.as_ref().and_then(|p| p.object_id.clone()),
        actor_app_id: principal.as_ref().and_then(|p| p.app_id.clone()),
        actor_tenant_id: principal.as_ref().map(|p| p.directory_id.clone()),
        action: meter.operation.clone(),
        outcome,
        method: meter.method.to_string(),
        route: route_of(request),
        status: status.as_u16(),
        code: code.unwrap_or_default().to_owned(),
    })
}

/// A request's records as they stand with this answer; `note` describes what the request changed.
pub(crate) fn records(
    request: &HttpRequest,
    meter: &RequestMeter,
    status: StatusCode,
    response_bytes: i64,
    note: Option<&AuditNote>,
    recorded_at: DateTime<Utc>,
) -> (UsageEvent, Option<AuditEventInput>) {
    let extensions = request.extensions();
    let caller = extensions.get::<Arc<Caller>>();
    let debit = extensions.get::<Debit>().copied();
    let route = route_of(request);
    let method = meter.method.to_string();
    let billable = is_billable(request, status);
    let request_id = crate::request::current_id().unwrap_or_default();
    let tenant_id = tenant_of(&extensions);
    // Refused for its tenant's state, the caller was still identified: the usage event names it.
    let refused = extensions.get::<RefusedTenant>().is_some();
    let identified = caller
        .map(|c| c.principal.clone())
        .or_else(|| refused.then(|| extensions.get::<Arc<Principal>>().cloned()).flatten());
    let cross_tenant = extensions.get::<CrossTenantRead>().map(|read| read.0);
    let audited = audit_outcome(request, &meter.method, status).zip(meter.audit_id).map(|(outcome, id)| {
        // The caller's principal, else the one authentication found before the tenant refused it (403).
        let principal = principal_of(&extensions);
        let summary = match (note, cross_tenant) {
            (Some(note), _) if !note.summary.is_empty() => note.summary.clone(),
            (_, Some(read)) => {
                format!(
                    "a platform administrator read tenant {read}'s data: {method} {route} answered {}",
                    status.as_u16()
                )
            }
            _ => format!("{method} {route} answered {}", status.as_u16()),
        };
        let path_id = path_id(request);
        AuditEventInput {
            id,
            tenant_id: note.and_then(|n| n.tenant_id).or(cross_tenant).or(tenant_id),
            occurred_at: meter.occurred_at,
            actor_oid: principal.as_ref().and_then(|p| p.object_id.clone()),
            actor_app_id: principal.as_ref().and_then(|p| p.app_id.clone()),
            actor_tenant_id: principal.as_ref().map(|p| p.directory_id.clone()),
            action: meter.operation.clone(),
            resource_type: note.map_or_else(|| audit::resource_type_of(&route), |n| n.resource_type.clone()),
            resource_id: note.map(|n| n.resource_id.clone()).or(path_id),
            outcome,
            request_id: Some(request_id.clone()).filter(|id| !id.is_empty()),
            summary,
            before_hash: note.and_then(|n| n.before_hash.clone()),
            after_hash: note.and_then(|n| n.after_hash.clone()),
            limiter_decision: extensions.get::<LimiterDecision>().map(|d| d.0.clone()),
        }
    });
    let charge = Charge {
        tenant_id,
        identified,
        debit,
        cost: extensions.get::<OperationCost>().copied(),
        billable,
        // Only the limit stage's own 429 names a limit; a later failure of the same request is no refusal.
        refusal: extensions.get::<LimitRefusal>().copied().filter(|_| status == StatusCode::TOO_MANY_REQUESTS),
    };
    let usage = usage_event(meter, &charge, route, status, response_bytes, request_id, recorded_at);
    (usage, audited)
}

/// Who a usage event is attributed to and what it was charged: what the stages learned about its request.
pub(crate) struct Charge {
    pub tenant_id: Option<Uuid>,
    /// The caller's principal (also one refused for its tenant's state): the event's client and principal.
    pub identified: Option<Arc<Principal>>,
    pub debit: Option<Debit>,
    /// What the operation costs on the tenant's plan, for a call charged nothing.
    pub cost: Option<OperationCost>,
    pub billable: bool,
    pub refusal: Option<LimitRefusal>,
}

/// A request's usage event, from its meter and its charge, for an answer with `status`.
pub(crate) fn usage_event(
    meter: &RequestMeter,
    charge: &Charge,
    route: String,
    status: StatusCode,
    response_bytes: i64,
    request_id: String,
    recorded_at: DateTime<Utc>,
) -> UsageEvent {
    let Charge { tenant_id, identified, debit, cost, billable, refusal } = charge;
    UsageEvent {
        event_id: meter.usage_id,
        request_id,
        tenant_id: *tenant_id,
        client_id: identified.as_ref().and_then(|p| p.app_id.clone()),
        principal_id: identified.as_ref().and_then(|p| p.object_id.clone()),
        // Charged nothing: what the call costs on the tenant's plan, else (no plan applied) the default table's.
        units: match (billable, cost) {
            (true, _) => debit.map_or(0, |d| d.units),
            (false, Some(cost)) => cost.0,
            (false, None) => costs::units(&meter.operation),
        },
        overage_units: if *billable { debit.map_or(0, |d| d.overage_units) } else { 0 },
        operation_id: meter.operation.clone(),
        method: meter.method.to_string(),
        route_template: route,
        status: i32::from(status.as_u16()),
        billable: *billable,
        latency_micros: meter.started.elapsed().as_micros() as i64,
        request_bytes: meter.request_bytes,
        response_bytes,
        occurred_at: meter.occurred_at,
        recorded_at,
        lease_id: debit.and_then(|d| d.lease_id),
        refusal: *refusal,
    }
}

/// Gives back the units of a call that is charged nothing: a capped client's own counter whatever the tenant's
/// debit came from, and the tenant's counter when it was debited directly (a lease's settlement counts only
/// billable usage events, so a lease's units need nothing).
pub(crate) async fn give_back(state: &crate::state::AppState, debit: &Debit) {
    let now = state.clock.now();
    if let Some(client_id) = debit.client_id
        && let Err(err) = state.store.refund_client_quota(client_id, debit.period_start, debit.units, now).await
    {
        tracing::error!(error = ?err, "refunding a failed request's client quota debit failed");
    }
    if debit.lease_id.is_none()
        && let Err(err) =
            state.store.refund_quota(debit.tenant_id, debit.period_start, debit.units, debit.overage_units, now).await
    {
        tracing::error!(error = ?err, "refunding a failed request's quota debit failed");
    }
}

/// The size of a response body when it is known up front (0 for a stream).
pub(crate) fn body_bytes(body: &impl actix_web::body::MessageBody) -> i64 {
    match body.size() {
        actix_web::body::BodySize::Sized(n) => n as i64,
        _ => 0,
    }
}

/// The records of a request that will answer `response` once its store write commits, for that write
/// (`None` outside the record stage, e.g. a handler called on its own in a test). `note` says what the write
/// changes; the latency is measured up to now, the write excluded.
pub fn ledger(request: &HttpRequest, response: &HttpResponse, note: AuditNote) -> Option<Ledger> {
    let meter = request.extensions().get::<RequestMeter>().cloned()?;
    let state = request.app_data::<actix_web::web::Data<crate::state::AppState>>()?;
    let response_bytes = body_bytes(response.body());
    let (usage, audit) = records(request, &meter, response.status(), response_bytes, Some(&note), state.clock.now());
    Some(Ledger { usage, audit })
}
