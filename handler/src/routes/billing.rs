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
use crate::metering::period::BillingCalendar;
use crate::state::AppState;
use crate::store::{BillingStatement, StatementAdjustment};

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
    /// The overage unit price it billed at (absent on statements written before adjustments existed).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub overage_unit_price_micros: Option<i64>,
    /// The sum of its adjustment lines: usage of earlier, already issued months that was rolled up after they
    /// were billed.
    pub adjustment_amount_micros: i64,
    /// What the tenant owes for it: `totalAmountMicros + adjustmentAmountMicros`.
    pub amount_due_micros: i64,
    /// The adjustment lines (only on the read of one statement).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub adjustments: Option<Vec<AdjustmentView>>,
    pub created_at: DateTime<Utc>,
}

/// An adjustment line: usage of an issued statement's month rolled up after it was written. The issued statement
/// never changes; the difference is billed here.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdjustmentView {
    /// The month it corrects, `YYYY-MM`, and that month's statement.
    pub adjusts_period: String,
    pub adjusts_statement_id: Uuid,
    /// Billable units of that month not billed yet.
    pub used_units: i64,
    /// Of those, units beyond that month's quota.
    pub overage_units: i64,
    /// `overageUnits` times that statement's overage unit price.
    pub amount_micros: i64,
}

impl From<&StatementAdjustment> for AdjustmentView {
    fn from(a: &StatementAdjustment) -> Self {
        AdjustmentView {
            adjusts_period: period_name(a.adjusts_period_start),
            adjusts_statement_id: a.adjusts_statement_id,
            used_units: a.used_units_delta,
            overage_units: a.overage_units_delta,
            amount_micros: a.amount_micros,
        }
    }
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
            overage_unit_price_micros: s.overage_unit_price_micros,
            adjustment_amount_micros: s.adjustment_amount_micros,
            amount_due_micros: s.total_amount_micros.saturating_add(s.adjustment_amount_micros),
            adjustments: None,
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

/// One month's statement with its adjustment lines; as CSV (one line per charge) for `Accept: text/csv`.
#[utoipa::path(
    tag = "billing",
    operation_id = "getBillingStatement",
    security(("entra" = ["Usage.Read"])),
    params(("period" = String, Path, description = "The month, `YYYY-MM`", example = "2026-01", pattern = r"^[0-9]{4}-(0[1-9]|1[0-2])$"), StatementParams),
    responses(
        (status = 200, description = "The statement; `text/csv` when asked for: `period,line,reference,units,amount_micros,currency` with lines `base`, `used`, `granted`, `overage`, one `adjustment` per adjusted month (reference: that month) and `amount_due`", content(
            (StatementView = "application/json"),
            (String = "text/csv")
        )),
        (status = 404, description = "No statement for that month (not closed yet), or no such tenant", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "`period` is not a month (`YYYY-MM`)", body = crate::error::Problem, content_type = "application/problem+json")
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
    let month = parse_period(&period).ok_or_else(|| {
        AppError::new(ErrorCode::ValidationFailed)
            .with_detail("`period` must be YYYY-MM")
            .with_field_errors(vec![crate::error::FieldError::new("period", "format", "a month, YYYY-MM")])
    })?;
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail(format!("no statement for {period}"));
    // The tenant's period that starts in that month (its anchor day; the 1st for most tenants).
    let tenant = state.lookups.tenant(tenant_id).await?.ok_or_else(not_found)?;
    let period_start = BillingCalendar::of(&tenant).period_starting_in(month).start;
    let statement = state.store.get_billing_statement(tenant_id, period_start).await?.ok_or_else(not_found)?;
    let adjustments = state.store.statement_adjustments(tenant_id, statement.id).await?;
    if wants_csv(&req) {
        return Ok(HttpResponse::Ok()
            .content_type("text/csv; charset=utf-8")
            .insert_header((actix_web::http::header::VARY, "Accept"))
            .insert_header((
                actix_web::http::header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"statement-{tenant_id}-{}.csv\"", period_name(period_start)),
            ))
            .body(statement_csv(&statement, &adjustments)));
    }
    let view = StatementView {
        adjustments: Some(adjustments.iter().map(AdjustmentView::from).collect()),
        ..StatementView::from(&statement)
    };
    // JSON or CSV by `Accept`: a cache keeps them apart.
    Ok(HttpResponse::Ok().insert_header((actix_web::http::header::VARY, "Accept")).json(view))
}

/// Whether the client asked for CSV: its `Accept` names `text/csv`.
fn wants_csv(req: &HttpRequest) -> bool {
    req.headers()
        .get_all(actix_web::http::header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|item| item.split(';').next().is_some_and(|m| m.trim().eq_ignore_ascii_case("text/csv")))
}

/// A statement as CSV (RFC 4180, CRLF): one line per charge, with the month's units, and the amount due last.
fn statement_csv(s: &BillingStatement, adjustments: &[StatementAdjustment]) -> String {
    let period = period_name(s.period_start);
    let currency = &s.currency;
    let mut lines = vec![
        "period,line,reference,units,amount_micros,currency".to_owned(),
        format!("{period},base,{},,{},{currency}", s.plan_code, s.base_amount_micros),
        format!("{period},used,,{},0,{currency}", s.used_units),
        format!("{period},granted,,{},0,{currency}", s.granted_units),
        format!("{period},overage,,{},{},{currency}", s.overage_units, s.overage_amount_micros),
    ];
    for a in adjustments {
        lines.push(format!(
            "{period},adjustment,{},{},{},{currency}",
            period_name(a.adjusts_period_start),
            a.used_units_delta,
            a.amount_micros
        ));
    }
    lines.push(format!(
        "{period},amount_due,,,{},{currency}",
        s.total_amount_micros.saturating_add(s.adjustment_amount_micros)
    ));
    lines.join("\r\n") + "\r\n"
}
