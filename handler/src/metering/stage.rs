//! The two metering middleware stages on `/api/v1`: [`record`] (outermost: one durable usage event per
//! request, its audit event when it changed state or was refused, refunds) and [`limit`] (after
//! authentication: rate limit, quota debit, RateLimit headers, the decision for the audit trail).

use std::sync::Arc;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{self, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpMessage, web};

use super::abandoned::{self, Abandonment};
use super::audit::{self, LimiterDecision};
use super::costs;
use super::headers::{LimitState, burst_state, header_fields};
use super::leases::{LeaseTicket, Spend};
use super::ledger::{Debit, OperationCost, Replayed, RequestMeter, body_bytes, is_billable, records};
use super::period::BillingCalendar;
use crate::auth::guard::Caller;
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;
use crate::store::{
    Admission, ClientQuotaDebit, ClientQuotaOutcome, LimitRefusal, QuotaDebit, QuotaOutcome, RateLimitDecision,
    RateLimitTake,
};

/// The client a rate limit applies to: the application, else the user, else the token subject.
fn client_key(caller: &Caller) -> String {
    let p = &caller.principal;
    p.app_id
        .clone()
        .or_else(|| p.object_id.as_ref().map(|oid| format!("oid:{oid}")))
        .unwrap_or_else(|| format!("sub:{}", p.subject))
}

/// The quota counters [`limit`] read for a call that spent no units (a self-service read such as `getMe`),
/// left on the request so its handler shows the numbers its RateLimit headers show without reading them again.
#[derive(Debug, Clone)]
pub struct QuotaReading {
    pub period_start: chrono::NaiveDate,
    /// The tenant's counter as [`AppState::quota_usage`] reports it; none before the period's first debit.
    pub usage: Option<crate::store::QuotaUsage>,
    /// The calling client's own counter, when its registration caps its share of the quota.
    pub client_units_used: Option<i64>,
}

fn state_of(req: &ServiceRequest) -> web::Data<AppState> {
    req.app_data::<web::Data<AppState>>().expect("AppState is registered").clone()
}

/// Applies the caller's plan: the GCRA rate limit per (tenant, client), then the quota debit of an operation that
/// spends units, then a capped client's own share; puts the RateLimit headers on the answer. Callers without a
/// tenant (platform administrators) are not limited here.
pub async fn limit(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = state_of(&req);
    let caller = req.extensions().get::<Arc<Caller>>().cloned();
    // A request dropped from here on (its client left) is recorded as this caller's.
    let notes = abandoned::Notes::of(&req);
    if let (Some(notes), Some(caller)) = (&notes, &caller) {
        notes.caller(caller);
    }
    let Some((caller, tenant)) = caller.and_then(|c| c.tenant.clone().map(|t| (c, t))) else {
        return Ok(next.call(req).await?.map_into_left_body());
    };
    let operation = crate::api::operations::operation_of(&req);
    let mut verdict = Verdict { notes, ..Verdict::default() };
    let decided = verdict.decide(&state, &caller, &tenant, operation.as_deref()).await;
    verdict.leave_on(&req);
    match decided {
        Ok(Admitted { limits, debit, ticket }) => {
            if let Some(debit) = debit {
                req.extensions_mut().insert(debit);
            }
            if let Some(ticket) = ticket {
                req.extensions_mut().insert(ticket);
            }
            let mut res = next.call(req).await?;
            for (name, value) in header_fields(&limits) {
                res.headers_mut().insert(name, value);
            }
            Ok(res.map_into_left_body())
        }
        Err(err) => {
            let (request, _) = req.into_parts();
            Ok(ServiceResponse::from_err(err, request).map_into_right_body())
        }
    }
}

/// A call [`limit`] let through: the figures for its headers, the quota debit it made (none for an operation
/// that spends nothing) and the lease whose units it spends.
struct Admitted {
    limits: LimitState,
    debit: Option<Debit>,
    ticket: Option<LeaseTicket>,
}

/// What [`limit`] leaves on the request whether or not it admits the call.
#[derive(Default)]
struct Verdict {
    /// The limiter's decision, for the call's audit event.
    decision: Option<String>,
    /// Which limit refused the call, for its usage event.
    refused: Option<LimitRefusal>,
    /// The counters read for a call that spent no units, for its handler.
    reading: Option<QuotaReading>,
    /// What the operation costs on the tenant's plan (its override included), for the usage event of a call that
    /// ends up charged nothing (refused, failed).
    cost: Option<OperationCost>,
    /// The request's [`abandoned::Notes`]: the cost and each debit as soon as it is made.
    notes: Option<abandoned::Notes>,
}

impl Verdict {
    fn leave_on(self, req: &ServiceRequest) {
        let mut extensions = req.extensions_mut();
        if let Some(decision) = self.decision {
            extensions.insert(LimiterDecision(decision));
        }
        if let Some(refusal) = self.refused {
            extensions.insert(refusal);
        }
        if let Some(reading) = self.reading {
            extensions.insert(reading);
        }
        if let Some(cost) = self.cost {
            extensions.insert(cost);
        }
    }

    fn note(&self, tell: impl FnOnce(&abandoned::Notes)) {
        if let Some(notes) = &self.notes {
            tell(notes);
        }
    }

    /// Refuses the call by `refusal`: counted, noted for its audit and usage events, answered with `limits`.
    fn refuse(&mut self, refusal: LimitRefusal, decision: String, err: AppError, limits: &LimitState) -> AppError {
        use crate::telemetry::metrics::{LimiterKind, limiter_rejection};
        limiter_rejection(match refusal {
            LimitRefusal::Rate => LimiterKind::Rate,
            LimitRefusal::Quota => LimiterKind::Quota,
        });
        self.decision = Some(decision);
        self.refused = Some(refusal);
        header_fields(limits).into_iter().fold(err, |err, (name, value)| err.with_header(name, value))
    }

    async fn decide(
        &mut self,
        state: &AppState,
        caller: &Caller,
        tenant: &crate::store::Tenant,
        operation: Option<&str>,
    ) -> Result<Admitted, AppError> {
        let plan = state.lookups.plan(&tenant.plan_code).await?.ok_or_else(|| {
            AppError::internal(anyhow::anyhow!(
                "tenant {} is on plan {} which does not exist",
                tenant.id,
                tenant.plan_code
            ))
        })?;
        let units = units_of(state, &plan.code, operation).await?;
        if operation.is_some_and(costs::spends_quota) {
            self.cost = Some(OperationCost(units));
            self.note(|notes| notes.cost(Some(OperationCost(units))));
        }
        let now = state.clock.now();
        let now_micros = now.timestamp_micros();
        // A client's rate cap (its registration's) replaces the plan's per-client rate when it is lower.
        let client_rate = caller.client_limits.requests_per_minute.filter(|cap| *cap < plan.requests_per_minute);
        let requests_per_minute = client_rate.unwrap_or(plan.requests_per_minute);
        let interval = 60_000_000 / i64::from(requests_per_minute.max(1));
        let burst = i64::from(client_rate.map_or(plan.burst, |cap| plan.burst.min(cap)).max(1));
        let take = RateLimitTake {
            tenant_id: tenant.id,
            client_id: client_key(caller),
            now_micros,
            emission_interval_micros: interval,
            burst,
        };
        let period = BillingCalendar::of(tenant).period_containing(now);
        let period_start = period.start;
        let debit_request = (units > 0).then_some(QuotaDebit {
            tenant_id: tenant.id,
            period_start,
            period_end: period.end,
            quota_units: plan.monthly_quota_units,
            overage_policy: plan.overage_policy,
            plan_code: plan.code.clone(),
            units,
            now,
        });
        let (rate, quota, mut ticket) = admit(state, take, debit_request).await?;
        let (burst_remaining, burst_reset_secs) = burst_state(rate.tat_micros, now_micros, interval, burst);
        let mut limits = LimitState {
            rate_policy: if client_rate.is_some() { "client-minute" } else { "minute" },
            requests_per_minute: i64::from(requests_per_minute),
            client_quota: None,
            burst,
            burst_remaining,
            burst_reset_secs,
            quota_units: plan.monthly_quota_units,
            quota_remaining: plan.monthly_quota_units,
            period_secs: (period.ends_at - period.starts_at).num_seconds(),
            period_reset_secs: (period.ends_at - now).num_seconds(),
        };
        // The quota numbers the headers show: the debit's answer, else (nothing debited) the counter as it is.
        let (units_used, quota_units) = match quota {
            Some(
                QuotaOutcome::Accepted { units_used, quota_units, .. }
                | QuotaOutcome::Rejected { units_used, quota_units },
            ) => (units_used, quota_units),
            None => {
                let usage = state.quota_usage(tenant.id, period_start).await?;
                let shown = usage.as_ref().map_or((0, plan.monthly_quota_units), |q| (q.units_used, q.quota_units));
                self.reading = Some(QuotaReading { period_start, usage, client_units_used: None });
                shown
            }
        };
        limits.quota_units = quota_units;
        limits.quota_remaining = (quota_units - units_used).max(0);
        if !rate.allowed {
            let retry = (rate.retry_after_micros + 999_999) / 1_000_000;
            let err = AppError::new(ErrorCode::RateLimited)
                .with_detail(format!(
                    "this client may send {requests_per_minute} requests per minute; retry in {retry} s"
                ))
                .with_member("violated-policies", serde_json::json!([limits.rate_policy]))
                .with_header(header::RETRY_AFTER, HeaderValue::from(retry.max(1)));
            let decision = format!("rate-limited {} r=0 t={retry}", limits.rate_policy);
            return Err(self.refuse(LimitRefusal::Rate, decision, err, &limits));
        }
        let mut debit = match quota {
            Some(QuotaOutcome::Accepted { overage_units, .. }) => Some(Debit {
                tenant_id: tenant.id,
                period_start,
                units,
                overage_units,
                lease_id: ticket.as_ref().map(LeaseTicket::lease_id),
                client_id: None,
            }),
            Some(QuotaOutcome::Rejected { .. }) => {
                let detail = format!(
                    "the tenant used {units_used} of its {quota_units} units this month; this operation costs {units}"
                );
                let err = quota_exceeded("month", detail, &limits);
                let decision = format!("quota-exceeded month used={units_used}/{quota_units} cost={units}");
                return Err(self.refuse(LimitRefusal::Quota, decision, err, &limits));
            }
            None => None,
        };
        self.note(|notes| notes.debit(debit));
        // A capped client's share of the quota: its own counter, debited once the tenant's quota admitted the call.
        if let (Some(client_id), Some(cap)) = (caller.api_client_id, caller.client_limits.quota_units) {
            let used = match debit.as_mut() {
                None => {
                    let used = state.store.client_quota_used(client_id, period_start).await?;
                    if let Some(reading) = self.reading.as_mut() {
                        reading.client_units_used = Some(used);
                    }
                    used
                }
                Some(d) => {
                    let client_debit =
                        ClientQuotaDebit { tenant_id: tenant.id, client_id, period_start, cap, units, now };
                    self.note(|notes| notes.debit(Some(Debit { client_id: Some(client_id), ..*d })));
                    let outcome = state.store.debit_client_quota(&client_debit).await;
                    if !matches!(outcome, Ok(ClientQuotaOutcome::Accepted { .. })) {
                        // Refused by the cap, or the store failed: the tenant's units go back, a lease's at its
                        // settlement (this call's record will not name it), a direct debit now.
                        match ticket.take() {
                            Some(ticket) => ticket.finish(false),
                            None => {
                                state.store.refund_quota(tenant.id, period_start, d.units, d.overage_units, now).await?
                            }
                        }
                    }
                    match outcome? {
                        ClientQuotaOutcome::Accepted { units_used } => {
                            d.client_id = Some(client_id);
                            units_used
                        }
                        ClientQuotaOutcome::Rejected { units_used } => {
                            limits.client_quota = Some((cap, units_used));
                            let detail = format!(
                                "this client used {units_used} of the {cap} units its tenant allows it this month; this operation costs {units}"
                            );
                            let err = quota_exceeded("client-month", detail, &limits);
                            let decision = format!("quota-exceeded client-month used={units_used}/{cap} cost={units}");
                            return Err(self.refuse(LimitRefusal::Quota, decision, err, &limits));
                        }
                    }
                }
            };
            limits.client_quota = Some((cap, used));
        }
        self.decision = Some(format!(
            "allowed {} r={} month r={} cost={}",
            limits.rate_policy,
            limits.burst_remaining,
            limits.quota_remaining,
            if debit.is_some() { units } else { 0 }
        ));
        Ok(Admitted { limits, debit, ticket })
    }
}

/// A quota refusal by `policy` (`month` or `client-month`): 429 `quota-exceeded`, to retry when the period ends.
fn quota_exceeded(policy: &str, detail: String, limits: &LimitState) -> AppError {
    AppError::new(ErrorCode::QuotaExceeded)
        .with_detail(detail)
        .with_member("violated-policies", serde_json::json!([policy]))
        .with_header(header::RETRY_AFTER, HeaderValue::from(limits.period_reset_secs.max(1)))
}

/// The quota units `operation` spends on `plan`: the plan's override if it has one, else the default table; none
/// for a self-service read (`costs::Quota::Exempt`), which only the rate limit applies to.
async fn units_of(state: &AppState, plan: &str, operation: Option<&str>) -> Result<i64, AppError> {
    let Some(op) = operation.filter(|op| costs::spends_quota(op)) else { return Ok(0) };
    let overrides = state.lookups.plan_costs(plan).await?;
    Ok(overrides.iter().find(|(o, _)| o == op).map_or_else(|| costs::units(op), |(_, units)| *units))
}

/// The rate step and the quota debit: with leases, from this process's rate batch and quota lease (in memory
/// until either runs out); without, one store write that decides both. A request the rate limit refuses spends
/// no units.
async fn admit(
    state: &AppState,
    take: RateLimitTake,
    debit: Option<QuotaDebit>,
) -> Result<(RateLimitDecision, Option<QuotaOutcome>, Option<LeaseTicket>), AppError> {
    let Some(leases) = &state.leases else {
        let admitted = state.store.admit(&Admission { rate: take, debit }).await?;
        return Ok((admitted.rate, admitted.debit, None));
    };
    let rate = match &state.rate_leases {
        Some(rate_leases) => rate_leases.take(&take).await?,
        None => state.store.take_rate_limit(&take).await?,
    };
    let spent = match debit {
        Some(debit) if rate.allowed => leases.spend(&debit).await?,
        _ => return Ok((rate, None, None)),
    };
    Ok(match spent {
        Spend::Accepted { ticket, overage_units, units_used, quota_units } => {
            (rate, Some(QuotaOutcome::Accepted { units_used, quota_units, overage_units }), Some(ticket))
        }
        Spend::Rejected { units_used, quota_units } => {
            (rate, Some(QuotaOutcome::Rejected { units_used, quota_units }), None)
        }
    })
}

/// Writes exactly one usage event per request, durably, before the response leaves, and in the same
/// transaction the request's audit event when [`audit::outcome`] says it has one (a state change, a
/// 401/403, a 429, a failed write); refunds the quota debit of a request that did not succeed. The ids come
/// from the [`RequestMeter`] it leaves for the handler, whose store write may have committed the records
/// already ([`super::ledger`]). If the records cannot be written, a success becomes a 503: no client holds a
/// 2xx whose usage or audit record could still be lost.
pub async fn record(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let state = state_of(&req);
    let meter = RequestMeter {
        usage_id: state.ids.new_id(),
        audit_id: (!audit::is_read(req.method())).then(|| state.ids.new_id()),
        started: Instant::now(),
        occurred_at: state.clock.now(),
        operation: crate::api::operations::operation_of(&req).as_deref().unwrap_or("unknown").to_owned(),
        method: req.method().clone(),
        request_bytes: req
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<i64>().ok())
            .unwrap_or(0),
    };
    req.extensions_mut().insert(meter.clone());
    // Dropped with this future (the client reset its connection), it writes the record this stage cannot.
    let abandonment = Abandonment::arm(&req, state.clone(), meter);
    let res = match next.call(req).await {
        Ok(res) => res,
        Err(err) => {
            abandonment.answered(err.as_response_error().status_code(), false);
            return Err(err);
        }
    };
    let status = res.status();
    if res.headers().contains_key(crate::api::idempotency::REPLAYED) {
        res.request().extensions_mut().insert(Replayed);
    }
    let debit = res.request().extensions().get::<Debit>().copied();
    let billable = is_billable(res.request(), status);
    abandonment.answered(status, billable);
    if let Some(d) = debit.filter(|_| billable) {
        crate::telemetry::metrics::quota_consumed(d.units, d.overage_units)
    }
    if let Some(debit) = debit.filter(|_| !billable) {
        super::ledger::give_back(&state, &debit).await;
    }
    let response_bytes = body_bytes(res.response().body());
    // A write that took effect committed these same ids in its own transaction already (`ledger::ledger`);
    // the store skips them, so this is then only the wait for the batch (and a record made again is stored once).
    // A handler that wrote nothing may still say what its request was about (a change that was already so), for
    // the audit event's resource and chain.
    let note = res.request().extensions().get::<super::audit::AuditNote>().cloned();
    // Queued synchronously by the first poll below: nothing is left for the guard to record.
    let mut meter = abandonment.disarm();
    if meter.audit_id.is_none() && super::ledger::audit_outcome(res.request(), &meter.method, status).is_some() {
        meter.audit_id = Some(state.ids.new_id());
    }
    // A refusal repeated within its window is counted, not audited on its own (`super::refusals`).
    if let Some(audit_id) = meter.audit_id
        && let Some(kind) = super::ledger::refusal_kind(res.request(), &meter, status, res.headers())
        && !state.refusal_audits.admit(
            kind,
            audit_id,
            super::ledger::path_id(res.request()),
            state.clock.now(),
            &*state.ids,
        )
    {
        meter.audit_id = None;
    }
    let recorded = state
        .recorder
        .record(|| records(res.request(), &meter, status, response_bytes, note.as_ref(), state.clock.now()))
        .await;
    // Its record is durable now, or will never be: the lease it spent from may be settled.
    if let Some(ticket) = res.request().extensions_mut().remove::<LeaseTicket>() {
        ticket.finish(billable);
    }
    match recorded {
        // A streamed body's size is unknown until it has been sent: its event gets it then.
        Ok(()) if matches!(res.response().body().size(), actix_web::body::BodySize::Stream) => {
            let report = (state.store.clone(), meter.usage_id);
            Ok(res
                .map_into_boxed_body()
                .map_body(|_, body| Counted { body, bytes: 0, report: Some(report) }.boxed())
                .map_into_left_body())
        }
        Ok(()) => Ok(res.map_into_boxed_body().map_into_left_body()),
        Err(err) if status.is_success() => {
            let (request, _) = res.into_parts();
            let err = AppError::new(ErrorCode::UsageNotRecorded)
                .with_detail(
                    "the request's usage record could not be written; it may have taken effect, retry it idempotently",
                )
                // A store that refused the record at once (breaker open, writer overloaded) says when to retry.
                .with_header(header::RETRY_AFTER, HeaderValue::from(retry_after(&err)))
                // The recorder logged the failed batch once; its requests do not log it again each.
                .with_logged_source(err);
            Ok(ServiceResponse::from_err(err, request).map_into_right_body())
        }
        // A request that failed anyway keeps its answer; the recorder logged the batch that lost its record.
        Err(_) => Ok(res.map_into_boxed_body().map_into_left_body()),
    }
}

/// Seconds a client should wait after its usage record failed: the refusal's own when the store refused the
/// record without trying (`resilience`), else 5.
fn retry_after(err: &crate::store::StoreError) -> u64 {
    match err {
        crate::store::StoreError::Unavailable(cause) => {
            crate::resilience::Refusal::find(cause).map_or(5, |r| r.retry_after.as_secs().max(1))
        }
        _ => 5,
    }
}

/// A streamed response body (the CSV export) that writes the bytes it sent into its request's usage event once
/// it ends, or once the client goes away mid-stream ([`crate::store::MeteringStore::set_response_bytes`]).
struct Counted {
    body: actix_web::body::BoxBody,
    bytes: i64,
    report: Option<(Arc<dyn crate::store::Store>, uuid::Uuid)>,
}

impl Counted {
    fn report(&mut self) {
        if let Some((store, event_id)) = self.report.take() {
            let bytes = self.bytes;
            actix_web::rt::spawn(async move {
                if let Err(err) = store.set_response_bytes(event_id, bytes).await {
                    tracing::warn!(error = ?err, %event_id, bytes, "recording a streamed response's size failed");
                }
            });
        }
    }
}

impl MessageBody for Counted {
    type Error = Box<dyn std::error::Error>;

    fn size(&self) -> actix_web::body::BodySize {
        self.body.size()
    }

    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<web::Bytes, Self::Error>>> {
        let polled = std::pin::Pin::new(&mut self.body).poll_next(cx);
        match &polled {
            std::task::Poll::Ready(Some(Ok(chunk))) => self.bytes += chunk.len() as i64,
            std::task::Poll::Ready(None | Some(Err(_))) => self.report(),
            std::task::Poll::Pending => {}
        }
        polled
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.report();
    }
}
