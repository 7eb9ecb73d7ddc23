//! `/api/v1/billing/statements` (Usage.Read): a tenant's monthly statements, written once by the usage rollup
//! when a month is final (`jobs::rollup`), never changed afterwards.
//!
//! Scoping is the usage routes' ([`super::scope::scoped_tenant`]): the caller's tenant, or any named one for a
//! platform administrator, whose read of another tenant's statements is audited in that tenant's chain.

use actix_web::{HttpRequest, HttpResponse, get, web};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::scope::scoped_tenant;
use super::usage::parse_period;
use crate::auth::guard::{Authorized, UsageRead};
use crate::error::{AppError, ErrorCode};
use crate::jobs::rollup::period_name;
use crate::state::AppState;
use crate::store::BillingStatement;

/// A monthly statement. Amounts are integer micro-units of `currency`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StatementView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// `YYYY-MM`.
    pub period: String,
    pub period_start: NaiveDate,
    /// The first day of the next month (exclusive).
    pub period_end: NaiveDate,
    pub plan_code: String,
    pub currency: String,
    /// The month's quota: the plan's, plus `grantedUnits`.
    pub quota_units: i64,
    /// The units quota grants added to the month (the used part of grants that ended early included).
    pub granted_units: i64,
    /// Billable units of the month, from the rollups (what the quota counter debited).
    pub used_units: i64,
    pub overage_units: i64,
    /// The plan's base price.
    pub base_amount_micros: i64,
    /// Overage units times the plan's overage unit price.
    pub overage_amount_micros: i64,
    pub total_amount_micros: i64,
    pub created_at: DateTime<Utc>,
}

impl From<&BillingStatement> for StatementView {
    fn from(s: &BillingStatement) -> Self {
        StatementView {
            id: s.id,
            tenant_id: s.tenant_id,
            period: period_name(s.period_start),
            period_start: s.period_start,
            period_end: s.period_end,
            plan_code: s.plan_code.clone(),
            currency: s.currency.clone(),
            quota_units: s.quota_units,
            granted_units: s.granted_units,
            used_units: s.used_units,
            overage_units: s.overage_units,
            base_amount_micros: s.base_amount_micros,
            overage_amount_micros: s.overage_amount_micros,
            total_amount_micros: s.total_amount_micros,
            created_at: s.created_at,
        }
    }
}

/// A tenant's statements, newest period first (one per month: no paging).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct StatementList {
    pub value: Vec<StatementView>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StatementParams {
    /// Platform administrators only: the tenant to read (default: the caller's).
    pub tenant_id: Option<Uuid>,
}

/// The tenant's billing statements, newest first.
#[utoipa::path(
    tag = "billing",
    operation_id = "listBillingStatements",
    security(("entra" = ["Usage.Read"])),
    params(StatementParams),
    responses(
        (status = 200, description = "The statements", body = StatementList),
        (status = 404, description = "No such tenant visible to the caller", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/billing/statements")]
pub async fn list_billing_statements(
    auth: Authorized<UsageRead>,
    req: HttpRequest,
    params: web::Query<StatementParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = scoped_tenant(&req, &auth, params.tenant_id)?;
    let statements = state.store.list_billing_statements(tenant_id).await?;
    Ok(HttpResponse::Ok().json(StatementList { value: statements.iter().map(StatementView::from).collect() }))
}

/// One month's statement.
#[utoipa::path(
    tag = "billing",
    operation_id = "getBillingStatement",
    security(("entra" = ["Usage.Read"])),
    params(("period" = String, Path, description = "The month, `YYYY-MM`", example = "2026-01"), StatementParams),
    responses(
        (status = 200, description = "The statement", body = StatementView),
        (status = 404, description = "No statement for that month (not closed yet), or no such tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/billing/statements/{period}")]
pub async fn get_billing_statement(
    auth: Authorized<UsageRead>,
    req: HttpRequest,
    period: web::Path<String>,
    params: web::Query<StatementParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = scoped_tenant(&req, &auth, params.tenant_id)?;
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail(format!("no statement for {period}"));
    let period_start = parse_period(&period).ok_or_else(not_found)?;
    let statement = state.store.get_billing_statement(tenant_id, period_start).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().json(StatementView::from(&statement)))
}
