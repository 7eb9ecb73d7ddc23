//! The usage rollup: raw usage events into hourly and daily rollups, then month close, lag alerts and retention.
//!
//! One invocation holds the `usage-rollup` lease (a crashed runner's lease expires), runs bounded rollup steps
//! (`UsageStore::rollup_step`, one transaction each) until it has caught up or spent its budget, then checks the lag,
//! writes the billing statements of months that are final, and purges raw events that are rolled up and older
//! than the retention, and settles the quota leases of crashed holders. Every part is idempotent: a second runner (an expired lease, a retried invocation) finds
//! the watermark past what was rolled up and the statements written. The invariants are in ARCHITECTURE.md and
//! docs/data-model.md ("Usage rollup").

use std::time::Instant;

use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use serde_json::json;

use crate::error::{AppError, ErrorCode};
use crate::metering::leases::RECLAIM_MARGIN;
use crate::metering::period::{BillingCalendar, Period};
use crate::state::AppState;
use crate::store::{
    BillingStatement, LeaseRequest, OutboxMessage, RollupGranularity, RollupState, RollupStep, StatementAdjustment,
    Tenant,
};

/// The lease (and the job name) every runner of the rollup, and `rollup-rerun`, takes.
pub const LEASE: &str = "usage-rollup";
/// Emitted once per statement, in the statement's transaction.
pub const STATEMENT_READY: &str = "meterline.billing.statement-ready.v1";
/// Emitted once per lag episode.
pub const ROLLUP_LAGGING: &str = "meterline.usage.rollup-lagging.v1";
/// Statements read and written per store call.
const STATEMENT_PAGE: u32 = 100;

fn delta(d: std::time::Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}

/// `d` (a configured duration) before `at`: an error where that leaves the calendar, never a panic (which would
/// end the run with its lease held). The configuration's bounds keep every setting far from it.
fn before(at: DateTime<Utc>, d: std::time::Duration) -> Result<DateTime<Utc>, AppError> {
    TimeDelta::from_std(d)
        .ok()
        .and_then(|d| at.checked_sub_signed(d))
        .ok_or_else(|| AppError::internal(anyhow::anyhow!("{d:?} before {at} is out of range")))
}

struct Lease<'a> {
    state: &'a AppState,
    holder: String,
    length: TimeDelta,
}

impl<'a> Lease<'a> {
    async fn acquire(state: &'a AppState) -> Result<Option<Lease<'a>>, AppError> {
        let worker = match &state.config.runtime {
            crate::config::Runtime::FunctionsHost { worker_id: Some(id) } => id.clone(),
            _ => "standalone".to_owned(),
        };
        let lease = Lease {
            state,
            holder: format!("{worker}:{}", state.ids.new_id()),
            length: delta(state.config.usage.rollup_max_run) * 2 + TimeDelta::seconds(30),
        };
        Ok(lease.renew().await?.then_some(lease))
    }

    async fn renew(&self) -> Result<bool, AppError> {
        let now = self.state.clock.now();
        let request =
            LeaseRequest { name: LEASE.into(), holder: self.holder.clone(), now, expires_at: now + self.length };
        Ok(self.state.store.acquire_lease(&request).await?)
    }

    async fn release(self) {
        if let Err(err) = self.state.store.release_lease(LEASE, &self.holder).await {
            tracing::warn!(error = ?err, "releasing the usage-rollup lease failed; it expires by itself");
        }
    }
}

/// Expired quota leases settled per transaction by the rollup's sweep.
const RECLAIM_BATCH: u32 = 100;

/// One invocation of the rollup job; the summary goes to the host's log and `job_runs`.
pub async fn run(state: &AppState) -> Result<String, AppError> {
    let Some(lease) = Lease::acquire(state).await? else {
        return Ok("skipped: another runner holds the usage-rollup lease".to_owned());
    };
    let result = work(state, &lease).await;
    lease.release().await;
    result
}

async fn work(state: &AppState, lease: &Lease<'_>) -> Result<String, AppError> {
    let config = &state.config.usage;
    let started = Instant::now();
    let within_budget = || started.elapsed() < config.rollup_max_run;
    let (mut steps, mut rolled_up) = (0u64, 0u64);
    let (caught_up, watermark) = loop {
        let now = state.clock.now();
        let step = RollupStep {
            batch_size: config.rollup_batch_size,
            settled_before: before(now, config.rollup_settle)?,
            now,
        };
        let progress = state.store.rollup_step(&step).await?;
        steps += 1;
        rolled_up += progress.rolled_up;
        // A full batch without a settled event: everything past the watermark is too recent for now.
        if progress.caught_up || progress.rolled_up == 0 || !within_budget() {
            break (progress.caught_up, progress.watermark);
        }
        if !lease.renew().await? {
            return Err(AppError::internal(anyhow::anyhow!("lost the usage-rollup lease after {steps} steps")));
        }
    };
    let rollup = state.store.rollup_state().await?;
    let lag = check_lag(state, &rollup).await?;
    // Quota grants that expired give back their unused units before a statement reads their period.
    let mut expired_grants = 0;
    while within_budget() {
        let ended = state.store.expire_quota_grants(state.clock.now(), RECLAIM_BATCH).await?;
        expired_grants += ended;
        if ended < u64::from(RECLAIM_BATCH) {
            break;
        }
    }
    let statements = if within_budget() { close_periods(state, &rollup, &within_budget).await? } else { 0 };
    let mut purged = 0;
    let purge_before = before(state.clock.now(), config.retention)?;
    while within_budget() {
        let deleted = state.store.purge_usage_events(purge_before, config.rollup_batch_size).await?;
        purged += deleted;
        if deleted < u64::from(config.rollup_batch_size) {
            break;
        }
    }
    // Quota leases whose holders crashed: settled from their usage events once past the reclaim margin.
    let mut reclaimed = 0;
    while within_budget() {
        let now = state.clock.now();
        let settled = state.store.settle_expired_quota_leases(now - RECLAIM_MARGIN, now, RECLAIM_BATCH).await?;
        reclaimed += settled;
        crate::telemetry::metrics::quota_leases_reclaimed(settled);
        if settled < u64::from(RECLAIM_BATCH) {
            break;
        }
    }
    Ok(format!(
        "rolled up {rolled_up} events in {steps} steps; watermark {watermark}; {}; {lag}; {statements} statements written; {purged} raw events purged; {reclaimed} expired quota leases reclaimed; {expired_grants} expired quota grants ended",
        if caught_up { "caught up" } else { "more to do (the next run continues)" }
    ))
}

/// Starts a lag episode (emitting one event) when the rollup is further behind than the threshold, ends it when
/// it is not. The lag is the time since `complete_through`, the recording time up to which everything is rolled up.
async fn check_lag(state: &AppState, rollup: &RollupState) -> Result<String, AppError> {
    let now = state.clock.now();
    let Some(complete_through) = rollup.complete_through else {
        return Ok("lag unknown: the rollup has not caught up yet".to_owned());
    };
    let lag = now - complete_through;
    crate::telemetry::metrics::rollup_lag(lag.to_std().unwrap_or_default());
    let threshold = delta(state.config.usage.lag_alert);
    if lag > threshold && rollup.lagging_since.is_none() {
        let event = OutboxMessage {
            id: state.ids.new_id(),
            event_type: ROLLUP_LAGGING.into(),
            subject: Some("jobs/usage-rollup".into()),
            payload: json!({
                "completeThrough": complete_through,
                "lagSeconds": lag.num_seconds(),
                "thresholdSeconds": threshold.num_seconds(),
                "watermark": rollup.watermark,
                "detectedAt": now,
            })
            .to_string(),
            created_at: now,
            available_at: now,
        };
        if state.store.set_rollup_lagging(Some(now), now, Some(&event)).await? {
            tracing::warn!(lag_seconds = lag.num_seconds(), "the usage rollup is lagging; emitted {ROLLUP_LAGGING}");
        }
    } else if lag <= threshold && rollup.lagging_since.is_some() {
        state.store.set_rollup_lagging(None, now, None).await?;
    }
    Ok(format!("lag {} s", lag.num_seconds()))
}

fn month_after(month: NaiveDate) -> NaiveDate {
    month + Months::new(1)
}

/// How many months before the current one the first run of the month close looks at: the months whose late
/// usage a statement still adjusts (`UsageStore::unbilled_usage`).
pub(crate) const FIRST_CLOSE_LOOKBACK_MONTHS: u32 = 24;

/// Writes the statements of every month whose periods are final. A tenant's period that starts in month `M` (by
/// its calendar: its anchor day at local midnight in its time zone) is final once its end plus the lateness window
/// lies at or before the time up to which everything recorded is rolled up. Months close in order; a month is
/// marked closed once every tenant created before its period's end has that period's statement.
async fn close_periods(
    state: &AppState,
    rollup: &RollupState,
    within_budget: &dyn Fn() -> bool,
) -> Result<u64, AppError> {
    let Some(complete_through) = rollup.complete_through else { return Ok(0) };
    let horizon = before(complete_through, state.config.usage.lateness)?;
    // No period that starts in a month can end before that month's last day (UTC+14 is the earliest zone).
    let could_be_final = |month: NaiveDate| {
        month_after(month).and_hms_opt(0, 0, 0).expect("midnight").and_utc() - TimeDelta::hours(14) <= horizon
    };
    // The first run ever looks back as far as late usage is billed (a tenant created since skips what came before
    // it), so months with usage from before the job first ran (a timer that was down, usage imported from another
    // system) get their statements too; later runs go on from the last month closed.
    let first = rollup.closed_through.map_or_else(
        || BillingCalendar::default().period_containing(horizon).start - Months::new(FIRST_CLOSE_LOOKBACK_MONTHS),
        month_after,
    );
    let mut month = first;
    let mut written = 0;
    while could_be_final(month) && within_budget() {
        let end = month_after(month);
        let created_before = (end + Months::new(1)).and_hms_opt(0, 0, 0).expect("midnight").and_utc();
        let mut after = None;
        let mut pending = false;
        loop {
            let tenants =
                state.store.tenants_without_statement(month, end, created_before, after, STATEMENT_PAGE).await?;
            for tenant in &tenants {
                let calendar = BillingCalendar::of(tenant);
                let billing = calendar.period_starting_in(month);
                if tenant.created_at >= billing.ends_at {
                    continue; // created after this period: nothing to bill for it
                }
                if billing.ends_at > horizon {
                    pending = true; // its period in this month is not final yet
                    continue;
                }
                if write_statement(state, tenant, &billing).await? {
                    written += 1;
                }
            }
            match tenants.last() {
                Some(last) if tenants.len() == STATEMENT_PAGE as usize && within_budget() => after = Some(last.id),
                Some(_) if tenants.len() == STATEMENT_PAGE as usize => return Ok(written),
                _ => break,
            }
        }
        if pending {
            break;
        }
        state.store.set_closed_through(month, state.clock.now()).await?;
        month = end;
    }
    Ok(written)
}

/// Writes one tenant's statement of `billing`, with its adjustment lines and its event; `false` when it exists.
async fn write_statement(state: &AppState, tenant: &Tenant, billing: &Period) -> Result<bool, AppError> {
    let quota = state.store.quota_usage(tenant.id, billing.start).await?;
    // The plan the period is billed on: the one its counter was created on or upgraded to (a downgrade applies
    // from the next period, price and quota alike); the tenant's plan for a period without one.
    let code = quota.as_ref().and_then(|q| q.plan_code.clone()).unwrap_or_else(|| tenant.plan_code.clone());
    let plan = state.store.get_plan(&code).await?.ok_or_else(|| {
        AppError::internal(anyhow::anyhow!(
            "tenant {}'s period is billed on plan {code}, which does not exist",
            tenant.id
        ))
    })?;
    // The plan that allowed the overage prices it, when a move to `allow` kept the period's larger quota and its
    // plan (migration 18). One statement has one currency: a plan in another one bills the whole period.
    let overage_plan = match quota.as_ref().and_then(|q| q.overage_plan_code.as_deref()) {
        Some(code) => state.store.get_plan(code).await?,
        None => None,
    };
    let plan = match &overage_plan {
        Some(allowing) if allowing.currency != plan.currency => allowing.clone(),
        _ => plan,
    };
    let overage_price = overage_plan.as_ref().unwrap_or(&plan).overage_unit_price_micros;
    // The period's billable and overage units from the rollups: UTC days for a UTC tenant, else its hours, which
    // its time zone aligns so they tile the period.
    let utc_days = BillingCalendar::of(tenant).has_utc_days();
    let granularity = if utc_days { RollupGranularity::Day } else { RollupGranularity::Hour };
    let rollups = state.store.usage_rollups(tenant.id, granularity, billing.starts_at, billing.ends_at).await?;
    let used_units: i64 = rollups.iter().map(|r| r.totals.billable_units).sum();
    let quota_units = quota.as_ref().map_or(plan.monthly_quota_units, |q| q.quota_units);
    let overage_units = crate::store::period_overage(used_units, quota_units);
    let now = state.clock.now();
    // Every amount a statement charges is whole minor units of its currency (ISO 4217).
    let charge = |micros: i64| crate::store::to_minor_unit(micros, &plan.currency);
    let (base_amount, overage_amount) = statement_amounts(&plan, overage_price, overage_units);
    let id = state.ids.new_id();
    // Usage of earlier, issued periods rolled up since they were billed: adjustment lines on this one.
    let adjustments: Vec<StatementAdjustment> = state
        .store
        .unbilled_usage(tenant.id, billing.start)
        .await?
        .into_iter()
        .filter(|u| {
            // An amount in another currency is never summed into this one: the line waits for a statement in the
            // adjusted statement's currency (a tenant that changed currency since).
            let same = u.currency == plan.currency;
            if !same {
                tracing::warn!(tenant = %tenant.id, adjusts = %u.period_start, currency = %u.currency,
                    "late usage of a statement in another currency is left for a statement in that currency");
            }
            same
        })
        .map(|u| StatementAdjustment {
            id: state.ids.new_id(),
            statement_id: id,
            adjusts_statement_id: u.statement_id,
            adjusts_period_start: u.period_start,
            used_units_delta: u.used_units_delta,
            overage_units_delta: u.overage_units_delta,
            amount_micros: charge(u.overage_units_delta.saturating_mul(u.overage_unit_price_micros)),
            created_at: now,
        })
        .collect();
    let statement = BillingStatement {
        id,
        tenant_id: tenant.id,
        period_start: billing.start,
        period_end: billing.end,
        plan_code: plan.code.clone(),
        currency: plan.currency.clone(),
        quota_units,
        used_units,
        overage_units,
        base_amount_micros: base_amount,
        overage_amount_micros: overage_amount,
        total_amount_micros: base_amount.saturating_add(overage_amount),
        created_at: now,
        granted_units: quota.as_ref().map_or(0, |q| q.granted_units),
        starts_at: Some(billing.starts_at),
        ends_at: Some(billing.ends_at),
        overage_unit_price_micros: Some(overage_price),
        adjustment_amount_micros: adjustments.iter().map(|a| a.amount_micros).sum(),
    };
    let event = statement_ready_event(state.ids.new_id(), &statement);
    Ok(state.store.insert_billing_statement(&statement, &adjustments, &event).await?)
}

/// A statement's base and overage amounts, in whole minor units of the plan's currency. The overage is capped so
/// that base plus overage still fits an i64 (the table checks that the total is their sum): no honest usage bills
/// past 9.2 trillion currency units, and one tenant's statement must not stop the month close for all the others.
fn statement_amounts(plan: &crate::store::Plan, overage_unit_price_micros: i64, overage_units: i64) -> (i64, i64) {
    let charge = |micros: i64| crate::store::to_minor_unit(micros, &plan.currency);
    let base = charge(plan.base_price_micros);
    let overage = charge(overage_units.saturating_mul(overage_unit_price_micros)).min(i64::MAX - base);
    (base, overage)
}

/// `YYYY-MM` of a period.
pub fn period_name(period_start: NaiveDate) -> String {
    format!("{:04}-{:02}", period_start.year(), period_start.month())
}

/// The outbox row announcing a statement; `payload` is the CloudEvents `data`.
pub fn statement_ready_event(id: uuid::Uuid, s: &BillingStatement) -> OutboxMessage {
    let period = period_name(s.period_start);
    OutboxMessage {
        id,
        event_type: STATEMENT_READY.into(),
        subject: Some(format!("tenants/{}/statements/{period}", s.tenant_id)),
        payload: json!({
            "statementId": s.id,
            "tenantId": s.tenant_id,
            "period": period,
            "periodStart": s.period_start,
            "periodEnd": s.period_end,
            "planCode": s.plan_code,
            "currency": s.currency,
            "quotaUnits": s.quota_units,
            "grantedUnits": s.granted_units,
            "usedUnits": s.used_units,
            "overageUnits": s.overage_units,
            "overageUnitPriceMicros": s.overage_unit_price_micros,
            "baseAmountMicros": s.base_amount_micros,
            "overageAmountMicros": s.overage_amount_micros,
            "totalAmountMicros": s.total_amount_micros,
            "adjustmentAmountMicros": s.adjustment_amount_micros,
            "amountDueMicros": s.total_amount_micros.saturating_add(s.adjustment_amount_micros),
        })
        .to_string(),
        created_at: s.created_at,
        available_at: s.created_at,
    }
}

/// `handler rollup-rerun`: recomputes every hour window (and its day) starting in `[from, to)` for every tenant,
/// from the raw events rolled up so far. Refused where raw events may already be purged.
pub async fn rerun(state: &AppState, from: DateTime<Utc>, to: DateTime<Utc>) -> Result<String, AppError> {
    let now = state.clock.now();
    let horizon = before(now, state.config.usage.retention)? + TimeDelta::hours(1);
    if from >= to {
        return Err(AppError::new(ErrorCode::InvalidQuery).with_detail("--from must be before --to"));
    }
    if to > now + TimeDelta::hours(1) {
        return Err(AppError::new(ErrorCode::InvalidQuery)
            .with_detail(format!("--to may not lie past the current hour ({now}): no usage is recorded there yet")));
    }
    // Checked before the hour is computed from it: a year 1 start is out of the clock's range.
    if from < horizon - TimeDelta::hours(1) || RollupGranularity::Hour.window_of(from) < horizon {
        return Err(AppError::new(ErrorCode::InvalidQuery).with_detail(format!(
            "raw events before {horizon} may be purged (METERLINE_USAGE_RETENTION_DAYS); re-aggregating there would lose usage"
        )));
    }
    let Some(lease) = Lease::acquire(state).await? else {
        return Err(
            AppError::new(ErrorCode::Conflict).with_detail("another runner holds the usage-rollup lease; retry")
        );
    };
    let first = RollupGranularity::Hour.window_of(from);
    let mut hour = first;
    let (mut hours, mut rows) = (0u64, 0u64);
    let result = async {
        while hour < to {
            rows += state.store.rollup_rerun_hour(hour, state.clock.now()).await?;
            hours += 1;
            hour += TimeDelta::hours(1);
            if !lease.renew().await? {
                return Err(AppError::internal(anyhow::anyhow!("lost the usage-rollup lease")));
            }
        }
        Ok(format!("re-aggregated {hours} hour windows from {first} ({rows} rollup rows written)"))
    }
    .await;
    lease.release().await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_before_an_instant_is_checked_not_a_panic() {
        let now = chrono::TimeZone::with_ymd_and_hms(&Utc, 2026, 3, 2, 9, 0, 0).unwrap();
        let day = std::time::Duration::from_secs(86_400);
        assert_eq!(before(now, day).unwrap(), now - TimeDelta::days(1));
        // Past what a `TimeDelta` holds, and past the calendar (300 000 years).
        for huge in [std::time::Duration::from_secs(u64::MAX), std::time::Duration::from_secs(10_000_000_000_000)] {
            assert_eq!(before(now, huge).unwrap_err().code(), ErrorCode::Internal, "{huge:?}");
        }
    }

    #[test]
    fn a_statements_amounts_always_add_up_to_a_total_that_fits() {
        let plan = crate::store::Plan {
            code: "max".into(),
            name: "Max".into(),
            requests_per_minute: 1,
            burst: 1,
            monthly_quota_units: 0,
            overage_policy: crate::store::OveragePolicy::Allow,
            currency: "EUR".into(),
            base_price_micros: 1_000_000_000_000_000,
            overage_unit_price_micros: 1_000_000_000_000,
            created_at: DateTime::UNIX_EPOCH,
            updated_at: DateTime::UNIX_EPOCH,
            version: 1,
        };
        // Ten billion overage units at the highest price: far past i64 micro-units.
        let (base, overage) = statement_amounts(&plan, plan.overage_unit_price_micros, 10_000_000_000);
        assert!(base.checked_add(overage).is_some(), "{base} + {overage}");
        assert_eq!(base, 1_000_000_000_000_000);
        assert_eq!(statement_amounts(&plan, plan.overage_unit_price_micros, 3).1, 3_000_000_000_000);
    }
}
