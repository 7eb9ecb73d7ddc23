//! `/api/v1/usage/summary` (Usage.Read): the current period's quota, use and rate policy: the numbers the limiter enforces.
//!
//! A caller sees its own tenant; only a platform administrator may name another with `tenantId`. A tenant
//! naming another tenant gets 404, exactly as if it did not exist.

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, NaiveDate, NaiveTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::Permission;
use crate::auth::guard::{Authorized, UsageRead};
use crate::error::{AppError, ErrorCode};
use crate::state::AppState;

/// The current period of a tenant.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsageSummary {
    pub tenant_id: Uuid,
    pub plan: String,
    pub period_start: NaiveDate,
    /// The first day of the next period (exclusive).
    pub period_end: NaiveDate,
    /// When the quota starts again.
    pub resets_at: DateTime<Utc>,
    pub quota_units: i64,
    pub units_used: i64,
    pub remaining_units: i64,
    pub overage_units: i64,
    /// `block` or `allow`.
    pub overage_policy: &'static str,
    pub requests_per_minute: i32,
    pub burst: i32,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SummaryParams {
    /// Platform administrators only: the tenant to read (default: the caller's).
    pub tenant_id: Option<Uuid>,
}

/// The tenant's quota and use in the current UTC calendar month, and its rate policy.
#[utoipa::path(
    tag = "usage",
    operation_id = "getUsageSummary",
    security(("entra" = ["Usage.Read"])),
    params(SummaryParams),
    responses(
        (status = 200, description = "The current period", body = UsageSummary),
        (status = 400, description = "Invalid query parameters", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Usage.Read is required", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant visible to the caller", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/usage/summary")]
pub async fn get_usage_summary(
    auth: Authorized<UsageRead>,
    params: web::Query<SummaryParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail("no such tenant");
    let own = auth.tenant.as_ref().map(|t| t.id);
    let tenant_id = match (params.tenant_id, own) {
        (Some(named), _) if auth.permissions.contains(Permission::PlatformAdmin) => named,
        (Some(named), Some(own)) if named == own => own,
        (Some(_), _) => return Err(not_found()),
        (None, Some(own)) => own,
        (None, None) => return Err(auth.tenant_id().unwrap_err()),
    };
    let tenant = state.store.get_tenant(tenant_id).await?.ok_or_else(not_found)?;
    let plan = state.store.get_plan(&tenant.plan_code).await?.ok_or_else(not_found)?;
    let now = state.clock.now();
    let (period_start, period_end) = crate::metering::period(now);
    let usage = state.store.quota_usage(tenant.id, period_start).await?;
    let (quota_units, units_used, overage_units, policy) = match usage {
        Some(u) => (u.quota_units, u.units_used, u.overage_units, u.overage_policy),
        None => (plan.monthly_quota_units, 0, 0, plan.overage_policy),
    };
    Ok(HttpResponse::Ok().json(UsageSummary {
        tenant_id: tenant.id,
        plan: plan.code,
        period_start,
        period_end,
        resets_at: period_end.and_time(NaiveTime::MIN).and_utc(),
        quota_units,
        units_used,
        remaining_units: (quota_units - units_used).max(0),
        overage_units,
        overage_policy: policy.as_str(),
        requests_per_minute: plan.requests_per_minute,
        burst: plan.burst,
    }))
}
