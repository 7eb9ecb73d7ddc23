//! `/api/v1/usage` (Usage.Read): the usage report, the current period's summary and the monthly CSV export.
//!
//! A caller sees its own tenant; only a platform administrator may name another with `tenantId`. A tenant
//! naming another tenant gets 404, exactly as if it did not exist. The report and the export read the rollups
//! plus the events not rolled up yet (`UsageStore::usage_report`), so their numbers are current; the summary reads
//! the quota counter the limiter debits, so it shows exactly what the limiter enforces. docs/usage.md has the
//! shapes and the CSV columns.

use std::collections::BTreeMap;

use actix_web::{HttpRequest, HttpResponse, get, web};
use chrono::{DateTime, Datelike, Months, NaiveDate, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::scope::scoped_tenant;
use crate::auth::guard::{Authorized, UsageRead};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::metering::period::BillingCalendar;
use crate::state::AppState;
use crate::store::{RollupGranularity, UsageQuery, UsageTotals};

/// The current period of a tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSummary {
    pub tenant_id: Uuid,
    pub plan: String,
    /// The instant the figures are of (the service's clock): the end of the elapsed part of the period.
    pub as_of: DateTime<Utc>,
    /// The IANA time zone of the tenant's periods and days.
    pub time_zone: String,
    pub period_start: NaiveDate,
    /// The first day of the next period (exclusive).
    pub period_end: NaiveDate,
    /// The instant the period began: local midnight of `periodStart` in `timeZone`.
    pub period_starts_at: DateTime<Utc>,
    /// When the quota starts again.
    pub resets_at: DateTime<Utc>,
    /// The period's quota: the plan's, plus the units of grants (`grantedUnits`).
    pub quota_units: i64,
    /// The units grants added to this period's quota (open grants, and the used part of ended ones).
    pub granted_units: i64,
    pub units_used: i64,
    pub remaining_units: i64,
    pub overage_units: i64,
    /// `block` or `allow`.
    #[schema(value_type = crate::routes::plans::Overage)]
    pub overage_policy: &'static str,
    pub requests_per_minute: i32,
    pub burst: i32,
    /// The units used by the period's end if the period's average rate so far goes on (`unitsUsed` when the
    /// period has not begun or nothing is used yet).
    pub projected_units: i64,
    /// When the quota runs out if that rate goes on; absent when it would not run out before `resetsAt`, when
    /// nothing is used yet, or when it is already spent (`remainingUnits` 0).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub projected_exhaustion_at: Option<DateTime<Utc>>,
}

/// The period's use projected at its average rate so far: the units used at `ends_at`, and the instant the quota
/// runs out when that is before `ends_at`. Integer arithmetic in whole seconds, rounded down.
pub fn project(
    used: i64,
    quota: i64,
    starts_at: DateTime<Utc>,
    ends_at: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (i64, Option<DateTime<Utc>>) {
    let elapsed = (now - starts_at).num_seconds();
    let total = (ends_at - starts_at).num_seconds();
    if used <= 0 || elapsed <= 0 || now >= ends_at {
        return (used.max(0), None);
    }
    let projected = i64::try_from(i128::from(used) * i128::from(total) / i128::from(elapsed)).unwrap_or(i64::MAX);
    if used >= quota {
        return (projected, None);
    }
    // Seconds until the remaining units are used at `used / elapsed` units a second.
    let seconds = i128::from(quota - used) * i128::from(elapsed) / i128::from(used);
    // Only an instant before the period's end is a projection; anything later (however far) is none.
    let left = (ends_at - now).num_seconds();
    let exhaustion = (seconds < i128::from(left)).then(|| now + TimeDelta::seconds(seconds as i64));
    (projected, exhaustion)
}

/// A tenant's current period as the limiter sees it: the quota counter (less what quota leases hold unspent), or
/// the plan's quota before the period's first debit, with the projection at the period's rate so far.
pub async fn period_summary(
    state: &AppState,
    tenant: &crate::store::Tenant,
    plan: &crate::store::Plan,
) -> Result<UsageSummary, AppError> {
    let now = state.clock.now();
    let period = BillingCalendar::of(tenant).period_containing(now);
    let usage = state.quota_usage(tenant.id, period.start).await?;
    let (quota_units, granted_units, units_used, overage_units, policy) = match usage {
        Some(u) => (u.quota_units, u.granted_units, u.units_used, u.overage_units, u.overage_policy),
        None => (plan.monthly_quota_units, 0, 0, 0, plan.overage_policy),
    };
    let (projected_units, projected_exhaustion_at) =
        project(units_used, quota_units, period.starts_at, period.ends_at, now);
    Ok(UsageSummary {
        tenant_id: tenant.id,
        plan: plan.code.clone(),
        as_of: now,
        time_zone: tenant.billing.time_zone.clone(),
        period_start: period.start,
        period_end: period.end,
        period_starts_at: period.starts_at,
        resets_at: period.ends_at,
        quota_units,
        granted_units,
        units_used,
        remaining_units: (quota_units - units_used).max(0),
        overage_units,
        overage_policy: policy.as_str(),
        requests_per_minute: plan.requests_per_minute,
        burst: plan.burst,
        projected_units,
        projected_exhaustion_at,
    })
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummaryParams {
    /// Platform administrators only: the tenant to read (default: the caller's).
    pub tenant_id: Option<Uuid>,
}

/// The tenant's quota and use in its current billing period, its rate policy, and where the period's rate so
/// far leads.
#[utoipa::path(
    tag = "usage",
    operation_id = "getUsageSummary",
    security(("entra" = ["Usage.Read"])),
    params(SummaryParams),
    responses(
        (status = 200, description = "The current period", body = UsageSummary),
        (status = 404, description = "No such tenant visible to the caller", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/usage/summary")]
pub async fn get_usage_summary(
    auth: Authorized<UsageRead>,
    req: HttpRequest,
    params: web::Query<SummaryParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail("no such tenant");
    let tenant_id = scoped_tenant(&req, &auth, params.tenant_id)?;
    let tenant = state.store.get_tenant(tenant_id).await?.ok_or_else(not_found)?;
    let plan = state.store.get_plan(&tenant.plan_code).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(period_summary(&state, &tenant, &plan).await?))
}

/// Window size of a usage report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Hour,
    Day,
    Month,
}

/// What a usage report breaks each window down by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Operation,
    Client,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageParams {
    /// Start (RFC 3339), rounded down to the window; default: `to` minus 24 hours, 30 days or 12 months.
    pub from: Option<DateTime<Utc>>,
    /// End (RFC 3339, exclusive), rounded up to the window; default: the end of the current window.
    pub to: Option<DateTime<Utc>>,
    /// `hour` (at most 31 days), `day` (at most 400 days) or `month` (at most 36 months); default `day`.
    pub granularity: Option<Granularity>,
    /// Break each window down by `operation` or `client`; default: one total per window.
    pub group_by: Option<GroupBy>,
    /// Platform administrators only: the tenant to read (default: the caller's).
    pub tenant_id: Option<Uuid>,
}

/// Latency of the calls in a row; the quantiles are upper bounds read from the latency histogram.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct LatencyView {
    pub avg_micros: i64,
    pub max_micros: i64,
    pub p50_micros: i64,
    pub p95_micros: i64,
}

/// The usage of one window (and operation or client, when grouped).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageRowView {
    pub window_start: DateTime<Utc>,
    pub window_end: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation_id: Option<String>,
    /// The calling application (`azp`); empty for calls without one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    pub calls: i64,
    /// The cost of every call, charged or not.
    pub units: i64,
    /// The units charged (successful calls that debited the quota): what the quota counter holds.
    pub billable_units: i64,
    pub overage_units: i64,
    /// Calls answered 400 or above.
    pub errors: i64,
    /// Calls refused by a rate limit (429, among `errors`).
    pub rate_limited: i64,
    /// Calls refused by a quota (429, among `errors`).
    pub quota_refused: i64,
    pub latency: LatencyView,
}

/// A usage report: windows without calls are left out.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageReport {
    pub tenant_id: Uuid,
    pub granularity: Granularity,
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_by: Option<GroupBy>,
    pub value: Vec<UsageRowView>,
}

/// 422 naming the query parameter `name` that failed (`code`, `message`, which never quotes the value).
fn invalid(name: &str, code: &str, message: impl Into<String>) -> AppError {
    let message = message.into();
    AppError::new(ErrorCode::ValidationFailed)
        .with_detail(format!("`{name}` {message}"))
        .with_field_errors(vec![FieldError::new(name, code, message).in_query(name)])
}

/// A tenant's report windows: hours starting at its time zone's minutes past the UTC hour, its local days, its
/// billing periods (`metering::period`).
#[derive(Debug, Clone, Copy)]
pub struct Windows {
    pub calendar: BillingCalendar,
    pub hour_offset_minutes: i32,
}

impl Windows {
    pub fn of(tenant: &crate::store::Tenant) -> Self {
        Windows { calendar: BillingCalendar::of(tenant), hour_offset_minutes: tenant.billing.window_offset_minutes }
    }

    /// The stored granularity that serves `granularity`: day rollups are UTC days, so only a UTC tenant's days
    /// and periods are read from them; every other tenant's are summed from its (aligned) hours.
    fn stored(&self, granularity: Granularity) -> RollupGranularity {
        match granularity {
            Granularity::Day | Granularity::Month if self.calendar.has_utc_days() => RollupGranularity::Day,
            _ => RollupGranularity::Hour,
        }
    }

    fn start(&self, granularity: Granularity, t: DateTime<Utc>) -> DateTime<Utc> {
        match granularity {
            Granularity::Hour => {
                let offset = TimeDelta::minutes(i64::from(self.hour_offset_minutes));
                RollupGranularity::Hour.window_of(t - offset) + offset
            }
            Granularity::Day => self.calendar.day_containing(t).0,
            Granularity::Month => self.calendar.period_containing(t).starts_at,
        }
    }

    /// The start of the window after the one starting at `start`.
    fn end(&self, granularity: Granularity, start: DateTime<Utc>) -> DateTime<Utc> {
        match granularity {
            Granularity::Hour => start + TimeDelta::hours(1),
            Granularity::Day => self.calendar.day_containing(start).1,
            Granularity::Month => self.calendar.period_containing(start).ends_at,
        }
    }
}

/// The window-aligned range of a report, checked against the granularity's limit.
fn report_range(
    params: &UsageParams,
    granularity: Granularity,
    windows: &Windows,
    now: DateTime<Utc>,
) -> Result<(DateTime<Utc>, DateTime<Utc>), AppError> {
    for (name, t) in [("from", params.from), ("to", params.to)] {
        if t.is_some_and(|t| !USAGE_YEARS.contains(&t.year())) {
            return Err(invalid(name, "range", "must lie between the years 2000 and 2200"));
        }
    }
    let round_up = |t: DateTime<Utc>| {
        let start = windows.start(granularity, t);
        if start == t { t } else { windows.end(granularity, start) }
    };
    // The default is the end of the window holding `now`, even when `now` starts it (its calls count).
    let to = round_up(params.to.unwrap_or(now));
    let to = if params.to.is_none() && to == now { windows.end(granularity, now) } else { to };
    let from = windows.start(
        granularity,
        params.from.unwrap_or_else(|| match granularity {
            Granularity::Hour => to - TimeDelta::hours(24),
            Granularity::Day => to - TimeDelta::days(30),
            Granularity::Month => to - Months::new(12),
        }),
    );
    if from >= to {
        return Err(invalid("from", "order", "must be before `to`"));
    }
    let (limit, name) = match granularity {
        Granularity::Hour => (to - TimeDelta::days(31), "31 days for hourly windows"),
        Granularity::Day => (to - TimeDelta::days(400), "400 days for daily windows"),
        Granularity::Month => (to - Months::new(36), "36 months for monthly windows"),
    };
    if from < limit {
        return Err(invalid("from", "range", format!("is too far before `to`: at most {name}")));
    }
    Ok((from, to))
}

/// A report row's key: the window start, and the operation or client when grouped by it.
type ReportKey = (DateTime<Utc>, Option<String>, Option<String>);

/// Rows of `query` merged per window (of `granularity`) and group, in window then key order.
pub async fn report_rows(
    state: &AppState,
    tenant_id: Uuid,
    windows: &Windows,
    granularity: Granularity,
    group_by: Option<GroupBy>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, Option<String>, Option<String>, UsageTotals)>, AppError> {
    let query = UsageQuery {
        tenant_id,
        granularity: windows.stored(granularity),
        from,
        to,
        hour_offset_minutes: windows.hour_offset_minutes,
    };
    let rows = state.store.usage_report(&query).await?;
    let mut merged: BTreeMap<ReportKey, UsageTotals> = BTreeMap::new();
    for row in rows {
        let key = (
            windows.start(granularity, row.window_start),
            (group_by == Some(GroupBy::Operation)).then(|| row.operation_id.clone()),
            (group_by == Some(GroupBy::Client)).then(|| row.client_id.clone()),
        );
        merged.entry(key).or_default().merge(&row.totals);
    }
    Ok(merged.into_iter().map(|((w, op, client), totals)| (w, op, client, totals)).collect())
}

/// The tenant's usage per window, from the rollups plus the events not rolled up yet.
#[utoipa::path(
    tag = "usage",
    operation_id = "getUsage",
    security(("entra" = ["Usage.Read"])),
    params(UsageParams),
    responses(
        (status = 200, description = "The usage per window", body = UsageReport),
        (status = 404, description = "No such tenant visible to the caller", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/usage")]
pub async fn get_usage(
    auth: Authorized<UsageRead>,
    req: HttpRequest,
    params: web::Query<UsageParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = scoped_tenant(&req, &auth, params.tenant_id)?;
    let tenant = state
        .lookups
        .tenant(tenant_id)
        .await?
        .ok_or_else(|| AppError::new(ErrorCode::NotFound).with_detail("no such tenant"))?;
    let windows = Windows::of(&tenant);
    let granularity = params.granularity.unwrap_or(Granularity::Day);
    let (from, to) = report_range(&params, granularity, &windows, state.clock.now())?;
    let rows = report_rows(&state, tenant_id, &windows, granularity, params.group_by, from, to).await?;
    let value = rows
        .into_iter()
        .map(|(window_start, operation_id, client_id, t)| UsageRowView {
            window_start,
            window_end: windows.end(granularity, window_start),
            operation_id,
            client_id,
            calls: t.calls,
            units: t.units,
            billable_units: t.billable_units,
            overage_units: t.overage_units,
            errors: t.errors,
            rate_limited: t.rate_limited,
            quota_refused: t.quota_refused,
            latency: LatencyView {
                avg_micros: if t.calls > 0 { t.latency_sum_micros / t.calls } else { 0 },
                max_micros: t.latency_max_micros,
                p50_micros: t.latency_quantile_micros(0.5),
                p95_micros: t.latency_quantile_micros(0.95),
            },
        })
        .collect();
    Ok(HttpResponse::Ok().json(UsageReport { tenant_id, granularity, from, to, group_by: params.group_by, value }))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExportParams {
    /// The month, `YYYY-MM` (UTC), not after the current one.
    #[param(pattern = r"^\d{4}-(0[1-9]|1[0-2])$", example = "2026-01")]
    pub period: String,
    /// Platform administrators only: the tenant to export (default: the caller's).
    pub tenant_id: Option<Uuid>,
}

/// The years usage is read in: window arithmetic works in nanoseconds since 1970 (chrono: up to the year 2262),
/// and no usage exists outside them.
const USAGE_YEARS: std::ops::RangeInclusive<i32> = 2000..=2200;

/// Parses `YYYY-MM` into the first day of that month.
pub fn parse_period(raw: &str) -> Option<NaiveDate> {
    let (year, month) = raw.split_once('-')?;
    if year.len() != 4 || month.len() != 2 {
        return None;
    }
    NaiveDate::from_ymd_opt(year.parse().ok()?, month.parse().ok()?, 1)
}

/// The CSV header of the export; docs/usage.md describes each column.
pub const EXPORT_COLUMNS: &str =
    "period,date,tenant_id,operation_id,client_id,calls,units,billable_units,overage_units,errors\r\n";

/// A CSV field, quoted when it holds a comma, a quote or a line break (RFC 4180).
fn csv_field(value: &str) -> String {
    if value.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", value.replace('"', "\"\""))
    } else {
        value.to_owned()
    }
}

/// One month of the tenant's usage as CSV: one line per day, operation and client with calls, streamed a day
/// at a time (never the whole month in memory).
#[utoipa::path(
    tag = "usage",
    operation_id = "exportUsage",
    security(("entra" = ["Usage.Read"])),
    params(ExportParams),
    responses(
        (status = 200, description = "The month's usage as CSV (RFC 4180, CRLF line ends, a header line)", body = String, content_type = "text/csv"),
        (status = 404, description = "No such tenant visible to the caller", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/usage/export")]
pub async fn export_usage(
    auth: Authorized<UsageRead>,
    req: HttpRequest,
    params: web::Query<ExportParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = scoped_tenant(&req, &auth, params.tenant_id)?;
    let month = parse_period(&params.period).ok_or_else(|| invalid("period", "format", "must be YYYY-MM"))?;
    if !USAGE_YEARS.contains(&month.year()) {
        return Err(invalid("period", "range", "must lie between the years 2000 and 2200"));
    }
    let tenant = state
        .store
        .get_tenant(tenant_id)
        .await?
        .ok_or_else(|| AppError::new(ErrorCode::NotFound).with_detail("no such tenant"))?;
    // The tenant's billing period that starts in that month, day by local day.
    let windows = Windows::of(&tenant);
    let billing = windows.calendar.period_starting_in(month);
    if billing.starts_at > state.clock.now() {
        return Err(invalid("period", "range", "is in the future"));
    }
    let period = params.period.clone();
    let (first_day, month_end) = (billing.starts_at, billing.ends_at);
    let stored = windows.stored(Granularity::Day);
    let state = state.into_inner();
    // Day by day: each chunk is one day's rows, read when the client is ready for it.
    let header =
        futures_util::stream::once(async { Ok::<_, AppError>(web::Bytes::from_static(EXPORT_COLUMNS.as_bytes())) });
    let days = futures_util::stream::unfold(first_day, move |day| {
        let (state, period) = (state.clone(), period.clone());
        async move {
            if day >= month_end {
                return None;
            }
            let next = windows.end(Granularity::Day, day);
            let query = UsageQuery {
                tenant_id,
                granularity: stored,
                from: day,
                to: next,
                hour_offset_minutes: windows.hour_offset_minutes,
            };
            let chunk = state.store.usage_report(&query).await.map_err(AppError::from);
            let chunk = chunk.map(|rows| {
                let mut merged: BTreeMap<(String, String), UsageTotals> = BTreeMap::new();
                for row in rows {
                    merged.entry((row.operation_id, row.client_id)).or_default().merge(&row.totals);
                }
                let date = day.with_timezone(&windows.calendar.time_zone).date_naive();
                let mut text = String::new();
                for ((operation, client), t) in merged {
                    text.push_str(&format!(
                        "{period},{date},{tenant_id},{},{},{},{},{},{},{}\r\n",
                        csv_field(&operation),
                        csv_field(&client),
                        t.calls,
                        t.units,
                        t.billable_units,
                        t.overage_units,
                        t.errors
                    ));
                }
                web::Bytes::from(text)
            });
            Some((chunk, next))
        }
    });
    use futures_util::StreamExt as _;
    Ok(HttpResponse::Ok()
        .content_type("text/csv; charset=utf-8")
        .insert_header((
            actix_web::http::header::CONTENT_DISPOSITION,
            format!("attachment; filename=\"usage-{tenant_id}-{}.csv\"", params.period),
        ))
        .streaming(header.chain(days)))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    const UTC: Windows =
        Windows { calendar: BillingCalendar { anchor_day: 1, time_zone: chrono_tz::Tz::UTC }, hour_offset_minutes: 0 };

    fn params(from: Option<DateTime<Utc>>, to: Option<DateTime<Utc>>) -> UsageParams {
        UsageParams { from, to, granularity: None, group_by: None, tenant_id: None }
    }

    #[test]
    fn the_default_range_ends_with_the_window_holding_now_even_at_its_first_instant() {
        let on_the_hour = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        let (from, to) = report_range(&params(None, None), Granularity::Hour, &UTC, on_the_hour).unwrap();
        assert_eq!((from, to), (on_the_hour - TimeDelta::hours(23), on_the_hour + TimeDelta::hours(1)));
        let (_, to) =
            report_range(&params(None, None), Granularity::Hour, &UTC, on_the_hour + TimeDelta::minutes(5)).unwrap();
        assert_eq!(to, on_the_hour + TimeDelta::hours(1));
        let (_, to) =
            report_range(&params(None, None), Granularity::Day, &UTC, on_the_hour - TimeDelta::hours(12)).unwrap();
        assert_eq!(to, on_the_hour + TimeDelta::hours(12), "midnight starts the day it is in");
    }

    #[test]
    fn an_explicit_end_is_exclusive_and_rounded_up_to_its_window() {
        let on_the_hour = Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap();
        let (_, to) = report_range(&params(None, Some(on_the_hour)), Granularity::Hour, &UTC, on_the_hour).unwrap();
        assert_eq!(to, on_the_hour);
        let late = on_the_hour + TimeDelta::seconds(1);
        let (_, to) = report_range(&params(None, Some(late)), Granularity::Hour, &UTC, on_the_hour).unwrap();
        assert_eq!(to, on_the_hour + TimeDelta::hours(1));
    }

    #[test]
    fn the_projection_follows_the_periods_average_rate_so_far() {
        let start = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
        let end = Utc.with_ymd_and_hms(2026, 3, 31, 0, 0, 0).unwrap();
        let day = |d: i64| start + TimeDelta::days(d);
        // 100 units in 10 of 30 days: 300 by the end; 1000 units are spent after 100 days, past the end.
        assert_eq!(project(100, 1000, start, end, day(10)), (300, None));
        // 100 in 10 days against a quota of 200: the other 100 last another 10 days.
        assert_eq!(project(100, 200, start, end, day(10)), (300, Some(day(20))));
        assert_eq!(project(0, 200, start, end, day(10)), (0, None), "no rate yet");
        assert_eq!(project(250, 200, start, end, day(10)), (750, None), "already spent");
        assert_eq!(project(5, 200, start, end, start), (5, None), "the period has just begun");
        assert_eq!(project(1, i64::MAX, start, end, day(10)), (3, None), "a vast quota never runs out");
    }

    #[test]
    fn a_kolkata_tenants_windows_are_its_half_hour_aligned_hours_local_days_and_periods() {
        let kolkata = Windows { calendar: BillingCalendar::new(15, "Asia/Kolkata").unwrap(), hour_offset_minutes: 30 };
        let t = Utc.with_ymd_and_hms(2026, 3, 20, 20, 10, 0).unwrap();
        let at = |h, m| Utc.with_ymd_and_hms(2026, 3, 20, h, m, 0).unwrap();
        assert_eq!(kolkata.start(Granularity::Hour, t), at(19, 30));
        assert_eq!(kolkata.end(Granularity::Hour, at(19, 30)), at(20, 30));
        assert_eq!(kolkata.start(Granularity::Day, t), at(18, 30), "local midnight of 21 March");
        assert_eq!(kolkata.end(Granularity::Day, at(18, 30)), at(18, 30) + TimeDelta::days(1));
        let period = kolkata.start(Granularity::Month, t);
        assert_eq!(period, Utc.with_ymd_and_hms(2026, 3, 14, 18, 30, 0).unwrap(), "the period of 15 March");
        assert_eq!(kolkata.end(Granularity::Month, period), Utc.with_ymd_and_hms(2026, 4, 14, 18, 30, 0).unwrap());
        assert_eq!(kolkata.stored(Granularity::Day), RollupGranularity::Hour, "UTC days do not serve it");
        assert_eq!(UTC.stored(Granularity::Month), RollupGranularity::Day);
    }
}
