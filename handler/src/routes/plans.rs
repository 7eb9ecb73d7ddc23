//! `/api/v1/plans` (Platform.Admin): the plans tenants subscribe to: limits, quota, overage policy and prices.

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, get, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use validator::Validate;

use crate::api::conditional::{etag, expected_version, not_modified, require_if_match, retrying, took_effect};
use crate::api::list::ListEnvelope;
use crate::api::validation::validate;
use crate::auth::guard::{Authorized, PlatformAdmin};
use crate::error::{AppError, ErrorCode};
use crate::metering::audit::AuditNote;
use crate::metering::ledger::ledger;
use crate::state::AppState;
use crate::store::{OveragePolicy, Plan, StoreError};

/// What happens to calls beyond the monthly quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Overage {
    /// Refuse them with 429 `quota-exceeded`.
    Block,
    /// Let them through, counted as overage units.
    Allow,
}

fn valid_code(value: &str) -> Result<(), validator::ValidationError> {
    let ok = value.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(validator::ValidationError::new("format").with_message("lower-case letters, digits and - only".into()))
    }
}

/// An ISO 4217 currency with a minor unit (statements round every amount to it): `EUR`, `JPY`, `KWD`; not `XXX`
/// (no currency) nor `XAU` (gold).
fn valid_currency(value: &str) -> Result<(), validator::ValidationError> {
    match iso_currency::Currency::from_code(value).and_then(|c| c.exponent()) {
        Some(_) if value.len() == 3 && value.chars().all(|c| c.is_ascii_uppercase()) => Ok(()),
        _ => Err(validator::ValidationError::new("format")
            .with_message("an ISO 4217 currency code with a minor unit, such as EUR".into())),
    }
}

/// The writable fields of a plan.
#[derive(Debug, Clone, Serialize, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PlanInput {
    #[validate(length(min = 1), custom(function = "crate::api::validation::utf16_at_most_200"))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// Sustained request rate per API client.
    #[validate(range(min = 1, max = 1_000_000))]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub requests_per_minute: i32,
    /// Requests a client may send at once after being idle.
    #[validate(range(min = 1, max = 100_000))]
    #[schema(minimum = 1, maximum = 100_000)]
    pub burst: i32,
    /// Billable units included per billing period (a calendar month from the tenant's anchor day, in its time zone).
    #[validate(range(min = 0, max = 1_000_000_000_000i64))]
    #[schema(minimum = 0, maximum = 1e12)]
    pub monthly_quota_units: i64,
    pub overage_policy: Overage,
    /// An ISO 4217 currency with a minor unit, e.g. `EUR` or `JPY` (not `XXX` or `XAU`): statements round every
    /// amount to it.
    #[validate(custom(function = "valid_currency"))]
    #[schema(pattern = r"^[A-Z]{3}$")]
    pub currency: String,
    /// Monthly base price in millionths of the currency unit, at most 10^15 (a billion units of the currency).
    #[validate(range(min = 0, max = 1_000_000_000_000_000i64))]
    #[schema(minimum = 0, maximum = 1e15)]
    pub base_price_micros: i64,
    /// Price of one overage unit in millionths of the currency unit, at most 10^12 (a million units of the
    /// currency), so a statement's amounts never overflow.
    #[validate(range(min = 0, max = 1_000_000_000_000i64))]
    #[schema(minimum = 0, maximum = 1e12)]
    pub overage_unit_price_micros: i64,
}

/// A new plan: its code and its fields. (Spelled out rather than flattening `PlanInput`: a flattened
/// struct that refuses unknown fields makes an OpenAPI schema no body can satisfy.)
#[derive(Debug, Clone, Serialize, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"code": "team", "name": "Team", "requestsPerMinute": 120, "burst": 20,
    "monthlyQuotaUnits": 50000, "overagePolicy": "allow", "currency": "EUR", "basePriceMicros": 19000000,
    "overageUnitPriceMicros": 500}))]
pub struct PlanCreate {
    /// Unique, e.g. `pro` (lower-case letters, digits, `-`).
    #[validate(length(min = 1, max = 64), custom(function = "valid_code"))]
    #[schema(min_length = 1, max_length = 64, pattern = r"^[a-z0-9-]+$")]
    pub code: String,
    #[validate(length(min = 1), custom(function = "crate::api::validation::utf16_at_most_200"))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    #[validate(range(min = 1, max = 1_000_000))]
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub requests_per_minute: i32,
    #[validate(range(min = 1, max = 100_000))]
    #[schema(minimum = 1, maximum = 100_000)]
    pub burst: i32,
    #[validate(range(min = 0, max = 1_000_000_000_000i64))]
    #[schema(minimum = 0, maximum = 1e12)]
    pub monthly_quota_units: i64,
    pub overage_policy: Overage,
    #[validate(custom(function = "valid_currency"))]
    #[schema(pattern = r"^[A-Z]{3}$")]
    pub currency: String,
    #[validate(range(min = 0, max = 1_000_000_000_000_000i64))]
    #[schema(minimum = 0, maximum = 1e15)]
    pub base_price_micros: i64,
    #[validate(range(min = 0, max = 1_000_000_000_000i64))]
    #[schema(minimum = 0, maximum = 1e12)]
    pub overage_unit_price_micros: i64,
}

impl PlanCreate {
    fn split(self) -> (String, PlanInput) {
        let fields = PlanInput {
            name: self.name,
            requests_per_minute: self.requests_per_minute,
            burst: self.burst,
            monthly_quota_units: self.monthly_quota_units,
            overage_policy: self.overage_policy,
            currency: self.currency,
            base_price_micros: self.base_price_micros,
            overage_unit_price_micros: self.overage_unit_price_micros,
        };
        (self.code, fields)
    }
}

/// A plan as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanView {
    pub code: String,
    pub name: String,
    pub requests_per_minute: i32,
    pub burst: i32,
    pub monthly_quota_units: i64,
    pub overage_policy: Overage,
    pub currency: String,
    pub base_price_micros: i64,
    pub overage_unit_price_micros: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub etag: String,
}

impl From<&Plan> for PlanView {
    fn from(p: &Plan) -> Self {
        PlanView {
            code: p.code.clone(),
            name: p.name.clone(),
            requests_per_minute: p.requests_per_minute,
            burst: p.burst,
            monthly_quota_units: p.monthly_quota_units,
            overage_policy: match p.overage_policy {
                OveragePolicy::Block => Overage::Block,
                OveragePolicy::Allow => Overage::Allow,
            },
            currency: p.currency.clone(),
            base_price_micros: p.base_price_micros,
            overage_unit_price_micros: p.overage_unit_price_micros,
            created_at: p.created_at,
            updated_at: p.updated_at,
            etag: etag(p.version),
        }
    }
}

fn apply(fields: PlanInput, plan: &mut Plan) {
    plan.name = fields.name;
    plan.requests_per_minute = fields.requests_per_minute;
    plan.burst = fields.burst;
    plan.monthly_quota_units = fields.monthly_quota_units;
    plan.overage_policy = match fields.overage_policy {
        Overage::Block => OveragePolicy::Block,
        Overage::Allow => OveragePolicy::Allow,
    };
    plan.currency = fields.currency;
    plan.base_price_micros = fields.base_price_micros;
    plan.overage_unit_price_micros = fields.overage_unit_price_micros;
}

fn respond(status: actix_web::http::StatusCode, plan: &Plan) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header((header::ETAG, etag(plan.version))).insert_header(ContentType::json());
    if status == actix_web::http::StatusCode::CREATED {
        response.insert_header((header::LOCATION, format!("/api/v1/plans/{}", plan.code)));
    }
    response.json(PlanView::from(plan))
}

fn not_found() -> AppError {
    AppError::new(ErrorCode::NotFound).with_detail("no plan with this code")
}

/// Creates a plan.
#[utoipa::path(
    tag = "plans",
    operation_id = "createPlan",
    security(("entra" = ["Platform.Admin"])),
    request_body(content = PlanCreate, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = PlanView),
        (status = 409, description = "The code exists", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/plans")]
pub async fn create_plan(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    input: web::Json<PlanCreate>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let input = input.into_inner();
    validate(&input)?;
    let now = state.clock.now();
    let (code, fields) = input.split();
    let mut plan = Plan {
        code,
        name: String::new(),
        requests_per_minute: 1,
        burst: 1,
        monthly_quota_units: 0,
        overage_policy: OveragePolicy::Block,
        currency: String::new(),
        base_price_micros: 0,
        overage_unit_price_micros: 0,
        created_at: now,
        updated_at: now,
        version: 1,
    };
    apply(fields, &mut plan);
    let response = respond(actix_web::http::StatusCode::CREATED, &plan);
    let view = PlanView::from(&plan);
    let ledger =
        ledger(&req, &response, AuditNote::new("plans", &plan.code, None, Some(&view), "created plan version 1"));
    match state.store.create_plan(&plan, ledger.as_ref()).await {
        Ok(()) => {
            state.lookups.invalidate();
            Ok(response)
        }
        Err(StoreError::Conflict(_)) => {
            Err(AppError::new(ErrorCode::Conflict).with_detail("a plan with this code exists"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Lists every plan, by code.
#[utoipa::path(
    tag = "plans",
    operation_id = "listPlans",
    security(("entra" = ["Platform.Admin"])),
    responses(
        (status = 200, description = "All plans (there are few: one page)", body = PlanList),
    )
)]
#[get("/plans")]
pub async fn list_plans(
    _auth: Authorized<PlatformAdmin>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let plans = state.store.list_plans().await?;
    Ok(HttpResponse::Ok().json(ListEnvelope {
        value: plans.iter().map(PlanView::from).collect(),
        next_link: None,
        count: None,
    }))
}

/// The list envelope of plans, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PlanList {
    pub value: Vec<PlanView>,
}

/// Reads a plan.
#[utoipa::path(
    tag = "plans",
    operation_id = "getPlan",
    security(("entra" = ["Platform.Admin"])),
    params(("code" = String, Path, description = "The plan code")),
    responses(
        (status = 200, description = "The plan; ETag header", body = PlanView),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such plan", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/plans/{code}")]
pub async fn get_plan(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    code: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let plan = state.store.get_plan(&code).await?.ok_or_else(not_found)?;
    if not_modified(&req, plan.version) {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag(plan.version))).finish());
    }
    Ok(respond(actix_web::http::StatusCode::OK, &plan))
}

/// Replaces a plan's fields (not its code). Requires `If-Match`. Tenants pick up new limits at once;
/// the quota of a period already started keeps the quota it started with.
#[utoipa::path(
    tag = "plans",
    operation_id = "replacePlan",
    security(("entra" = ["Platform.Admin"])),
    params(("code" = String, Path, description = "The plan code"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    request_body(content = PlanInput, content_type = "application/json"),
    responses(
        (status = 200, description = "Replaced", body = PlanView),
        (status = 404, description = "No such plan", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[put("/plans/{code}")]
pub async fn replace_plan(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    code: web::Path<String>,
    input: web::Json<PlanInput>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let precondition = require_if_match(&req)?;
    let input = input.into_inner();
    validate(&input)?;
    retrying(&precondition, || async {
        let current = state.store.get_plan(&code).await?.ok_or_else(not_found)?;
        let version = expected_version(&precondition, current.version)?;
        let mut plan = current.clone();
        apply(input.clone(), &mut plan);
        plan.updated_at = state.clock.now();
        plan.version = version + 1;
        // The answer and the audit event describe the row as the update writes it.
        let response = respond(actix_web::http::StatusCode::OK, &plan);
        let (before, after) = (PlanView::from(&current), PlanView::from(&plan));
        let summary = format!("replaced plan, now version {}", plan.version);
        let ledger = ledger(&req, &response, AuditNote::new("plans", &plan.code, Some(&before), Some(&after), summary));
        took_effect(state.store.update_plan(&plan, version, None, ledger.as_ref()).await?, not_found)?;
        state.lookups.invalidate();
        Ok(response)
    })
    .await
}

/// A plan's cost table: what each operation the quota applies to costs its tenants.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlanCosts {
    pub plan: String,
    /// Every metered operation's cost on this plan: the override, else the default.
    pub costs: std::collections::BTreeMap<String, i64>,
    /// Only the plan's overrides.
    pub overrides: std::collections::BTreeMap<String, i64>,
    /// The plan's ETag: changing the overrides changes it.
    pub etag: String,
}

/// New overrides for a plan's operation costs; they replace all earlier overrides.
#[derive(Debug, Clone, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"overrides": {"getDocument": 2, "listDocuments": 0}}))]
pub struct PlanCostsInput {
    /// Operation id to units (0 to 1000); only operations the quota applies to (`x-meterline-quota`) can be
    /// overridden.
    #[schema(schema_with = overrides_schema)]
    pub overrides: std::collections::BTreeMap<String, i64>,
}

/// The schema of `overrides`: names from the cost table, units 0 to 1000.
fn overrides_schema() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{AdditionalProperties, ObjectBuilder, Type};
    let names = ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(crate::metering::costs::billed().map(|(op, _)| op)));
    let units = ObjectBuilder::new().schema_type(Type::Integer).minimum(Some(0)).maximum(Some(1000));
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some("Operation id to units (0 to 1000); only operations the quota applies to can be overridden."))
        .property_names(Some(names))
        .additional_properties(Some(AdditionalProperties::RefOr(units.into())))
        .build()
}

async fn costs_view(state: &AppState, plan: &Plan) -> Result<PlanCosts, AppError> {
    let overrides = state.store.plan_operation_costs(&plan.code).await?.into_iter().collect();
    Ok(costs_table(plan, overrides))
}

/// The cost table of `plan` with these overrides.
fn costs_table(plan: &Plan, overrides: std::collections::BTreeMap<String, i64>) -> PlanCosts {
    let costs = crate::metering::costs::billed()
        .map(|(op, units)| (op.to_owned(), overrides.get(op).copied().unwrap_or(units)))
        .collect();
    PlanCosts { plan: plan.code.clone(), costs, overrides, etag: etag(plan.version) }
}

/// Reads a plan's effective operation costs and its overrides.
#[utoipa::path(
    tag = "plans",
    operation_id = "getPlanCosts",
    security(("entra" = ["Platform.Admin"])),
    params(("code" = String, Path, description = "The plan code")),
    responses(
        (status = 200, description = "The plan's cost table; the plan's ETag", body = PlanCosts),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such plan", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/plans/{code}/costs")]
pub async fn get_plan_costs(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    code: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let plan = state.store.get_plan(&code).await?.ok_or_else(not_found)?;
    if not_modified(&req, plan.version) {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag(plan.version))).finish());
    }
    Ok(HttpResponse::Ok().insert_header((header::ETAG, etag(plan.version))).json(costs_view(&state, &plan).await?))
}

/// Replaces a plan's cost overrides. Requires `If-Match` with the plan's ETag; the plan's version moves on.
#[utoipa::path(
    tag = "plans",
    operation_id = "replacePlanCosts",
    security(("entra" = ["Platform.Admin"])),
    params(("code" = String, Path, description = "The plan code"), ("If-Match" = String, Header, min_length = 1, description = "The plan's ETag, or *")),
    request_body(content = PlanCostsInput, content_type = "application/json"),
    responses(
        (status = 200, description = "The new cost table", body = PlanCosts),
        (status = 404, description = "No such plan", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[put("/plans/{code}/costs")]
pub async fn replace_plan_costs(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    code: web::Path<String>,
    input: web::Json<PlanCostsInput>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let precondition = require_if_match(&req)?;
    let mut errors = Vec::new();
    for (op, units) in &input.overrides {
        if !crate::metering::costs::spends_quota(op) {
            errors.push(crate::error::FieldError::new(
                format!("overrides.{op}"),
                "unknown",
                "not an operation the quota applies to",
            ));
        } else if !(0..=1000).contains(units) {
            errors.push(crate::error::FieldError::new(
                format!("overrides.{op}"),
                "range",
                "must be between 0 and 1000",
            ));
        }
    }
    if !errors.is_empty() {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(errors));
    }
    retrying(&precondition, || async {
        let current = state.store.get_plan(&code).await?.ok_or_else(not_found)?;
        let version = expected_version(&precondition, current.version)?;
        let before = costs_view(&state, &current).await?;
        let mut plan = current.clone();
        plan.updated_at = state.clock.now();
        plan.version = version + 1;
        let overrides = input.overrides.clone();
        let after = costs_table(&plan, overrides.clone());
        let response = HttpResponse::Ok().insert_header((header::ETAG, etag(plan.version))).json(&after);
        // The hashes cover the overrides only: the ETag in the table moves with every plan change.
        let summary = format!("replaced {} cost overrides, plan now version {}", overrides.len(), plan.version);
        let note = AuditNote::new("plans", &plan.code, Some(&before.overrides), Some(&after.overrides), summary);
        let ledger = ledger(&req, &response, note);
        // One transaction bumps the plan's version and replaces the overrides: a concurrent writer with the same
        // ETag gets 412, and no reader sees the new version with the old costs.
        let overrides: Vec<(String, i64)> = overrides.into_iter().collect();
        took_effect(state.store.update_plan(&plan, version, Some(&overrides), ledger.as_ref()).await?, not_found)?;
        state.lookups.invalidate();
        Ok(response)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_currency_is_an_iso_4217_currency_with_a_minor_unit() {
        for ok in ["EUR", "USD", "JPY", "KWD", "CHF"] {
            assert!(valid_currency(ok).is_ok(), "{ok}");
        }
        for bad in ["XXX", "XAU", "ABC", "eur", "EURO", ""] {
            assert!(valid_currency(bad).is_err(), "{bad}");
        }
    }
}
