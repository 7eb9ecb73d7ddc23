//! `/api/v1/tenants/{tenantId}/grants` (Platform.Admin): quota grants, units a platform administrator adds to a
//! tenant's current period with a reason and an expiry, and their revocation.
//!
//! A grant raises the period's quota in the store in the same transaction that records it, so every process
//! applies it at its next lease grant; it is audited in the tenant's chain and shown in the tenant's usage summary,
//! its `RateLimit` quota and its statement (docs/usage.md, "Grants").

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, get, post, web};
use chrono::{DateTime, NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::usage::parse_period;
use crate::api::conditional::{etag, expected_version, require_if_match, retrying, took_effect};
use crate::api::idempotency;
use crate::auth::guard::{Authorized, PlatformAdmin};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::metering::audit::AuditNote;
use crate::metering::ledger::ledger;
use crate::metering::period::BillingCalendar;
use crate::state::AppState;
use crate::store::{PeriodPlan, QuotaGrant, StoreError};

/// A grant's status: `active`, `expired` or `revoked`.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum GrantStatus {
    Active,
    Expired,
    Revoked,
}

/// A grant as the API shows it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct GrantView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The period it adds to, `YYYY-MM`.
    pub period: String,
    pub units: i64,
    pub reason: String,
    /// The platform administrator who granted it.
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    /// `active`, `expired` or `revoked`.
    #[schema(value_type = GrantStatus)]
    pub status: &'static str,
    /// When it expired or was revoked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ended_at: Option<DateTime<Utc>>,
    /// The units it gave back when it ended: the part the tenant had not used.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub returned_units: Option<i64>,
    pub etag: String,
}

impl GrantView {
    pub fn of(g: &QuotaGrant, now: DateTime<Utc>) -> Self {
        let status = match (&g.revoked_by, g.ended_at) {
            (Some(_), _) => "revoked",
            (None, Some(_)) => "expired",
            (None, None) if g.expires_at <= now => "expired",
            (None, None) => "active",
        };
        GrantView {
            id: g.id,
            tenant_id: g.tenant_id,
            period: crate::jobs::rollup::period_name(g.period_start),
            units: g.units,
            reason: g.reason.clone(),
            granted_by: g.granted_by.clone(),
            granted_at: g.granted_at,
            expires_at: g.expires_at,
            status,
            ended_at: g.ended_at,
            returned_units: g.returned_units,
            etag: etag(g.version),
        }
    }
}

/// A new grant.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema, validator::Validate)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"units": 500, "reason": "credit for the incident of 3 March"}))]
pub struct GrantInput {
    /// Units added to the tenant's current period.
    #[validate(range(min = 1, max = 1_000_000_000))]
    #[schema(minimum = 1, maximum = 1_000_000_000)]
    pub units: i64,
    /// Why, as the tenant will read it in its audit trail and statement: 1 to 500 characters (UTF-16 code units),
    /// not only spaces.
    #[validate(custom(function = "valid_reason"))]
    #[schema(min_length = 1, max_length = 500)]
    pub reason: String,
    /// When its unused part lapses: after now, at the latest the period's end (the default).
    pub expires_at: Option<DateTime<Utc>>,
}

fn valid_reason(reason: &str) -> Result<(), validator::ValidationError> {
    let width = crate::store::utf16_width(reason.trim());
    if (1..=500).contains(&width) {
        return Ok(());
    }
    Err(validator::ValidationError::new("length").with_message("1 to 500 characters, not only spaces".into()))
}

/// The path of a tenant's grants.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantPath {
    tenant_id: String,
}

/// The path of one grant.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantPath {
    tenant_id: String,
    id: String,
}

fn tenant_not_found() -> AppError {
    AppError::new(ErrorCode::NotFound).with_detail("no such tenant")
}

fn grant_not_found() -> AppError {
    AppError::new(ErrorCode::NotFound).with_detail("no grant with this id in this tenant")
}

fn parse_id(raw: &str, missing: fn() -> AppError) -> Result<Uuid, AppError> {
    raw.parse().map_err(|_| missing())
}

/// A grant as one answer: its view and `ETag`, and for a new one its `Location`.
fn respond(status: StatusCode, grant: &QuotaGrant, now: DateTime<Utc>) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header((header::ETAG, etag(grant.version))).insert_header(ContentType::json());
    if status == StatusCode::CREATED {
        response.insert_header((header::LOCATION, format!("/api/v1/tenants/{}/grants/{}", grant.tenant_id, grant.id)));
    }
    response.json(GrantView::of(grant, now))
}

/// Who a platform administrator is, for the records: its object id, else its application, else the subject.
fn actor(auth: &Authorized<PlatformAdmin>) -> String {
    let p = &auth.principal;
    p.object_id.clone().or_else(|| p.app_id.clone()).unwrap_or_else(|| p.subject.clone())
}

/// Adds units to a tenant's current period. With `Idempotency-Key` (or `Repeatability-Request-ID`), a retry replays
/// the first response instead of granting again.
#[utoipa::path(
    tag = "grants",
    operation_id = "createGrant",
    security(("entra" = ["Platform.Admin"])),
    params(
        ("tenantId" = Uuid, Path, description = "The tenant id"),
        idempotency::IdempotencyHeaders
    ),
    request_body(content = GrantInput, content_type = "application/json"),
    responses(
        (status = 201, description = "Granted; the period's quota is raised at once", body = GrantView),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[post("/tenants/{tenantId}/grants")]
pub async fn create_grant(
    auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    path: web::Path<TenantPath>,
    input: web::Json<GrantInput>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    crate::api::validation::validate(&*input)?;
    let tenant_id = parse_id(&path.tenant_id, tenant_not_found)?;
    let tenant = state.store.get_tenant(tenant_id).await?.ok_or_else(tenant_not_found)?;
    let plan = state.store.get_plan(&tenant.plan_code).await?.ok_or_else(|| {
        AppError::internal(anyhow::anyhow!("tenant {tenant_id} is on plan {} which does not exist", tenant.plan_code))
    })?;
    let now = state.clock.now();
    // A key belongs to the grants of the target tenant (apart from its own callers' keys): a retried grant replays
    // its first answer instead of granting twice.
    let canonical = serde_json::to_string(&serde_json::to_value(&*input).expect("inputs serialize")).expect("JSON");
    let key = idempotency::from_request(&req, &canonical)?;
    let scope = idempotency::grant_scope(tenant_id);
    if let Some(replayed) = idempotency::stored_response(&*state.store, scope, key.as_ref(), now).await? {
        return Ok(replayed);
    }
    let period = BillingCalendar::of(&tenant).period_containing(now);
    let (period_start, period_end, end) = (period.start, period.end, period.ends_at);
    let expires_at = input.expires_at.unwrap_or(end);
    if expires_at <= now || expires_at > end {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::body(
            "/expiresAt",
            "range",
            format!(
                "must lie after now and at the latest at the period's end, {}",
                end.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            ),
        )]));
    }
    let grant = QuotaGrant {
        id: state.ids.new_id(),
        tenant_id,
        period_start,
        units: input.units,
        reason: input.reason.trim().to_owned(),
        granted_by: actor(&auth),
        granted_at: now,
        expires_at,
        ended_at: None,
        revoked_by: None,
        returned_units: None,
        version: 1,
    };
    let response = respond(StatusCode::CREATED, &grant, now);
    let view = GrantView::of(&grant, now);
    let summary = format!(
        "granted {} units to period {} until {}: {}",
        grant.units,
        view.period,
        expires_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        grant.reason
    );
    let note = AuditNote::new("grants", grant.id, None, Some(&view), summary).in_tenant(tenant_id);
    let ledger = ledger(&req, &response, note);
    let period = PeriodPlan {
        period_end,
        quota_units: plan.monthly_quota_units,
        overage_policy: plan.overage_policy,
        plan_code: plan.code.clone(),
    };
    let body = serde_json::to_vec(&view).expect("views serialize");
    let record = key.as_ref().map(|k| idempotency::record(scope, k, "createGrant", &response, &body, now));
    match state.store.create_quota_grant(&grant, &period, record.as_ref(), ledger.as_ref()).await {
        Ok(()) => Ok(response),
        Err(StoreError::Conflict(_)) if let Some(key) = &key => {
            idempotency::answer_lost_race(&*state.store, scope, key, now).await
        }
        Err(err) => Err(err.into()),
    }
}

/// The query of a grant listing.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct GrantListParams {
    /// The period, `YYYY-MM` (default: the current one).
    #[param(pattern = r"^\d{4}-(0[1-9]|1[0-2])$")]
    pub period: Option<String>,
}

/// A period's grants, oldest first (a handful: no paging).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct GrantList {
    pub value: Vec<GrantView>,
}

/// Lists a tenant's grants of one period.
#[utoipa::path(
    tag = "grants",
    operation_id = "listGrants",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), GrantListParams),
    responses(
        (status = 200, description = "The period's grants, oldest first", body = GrantList),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants/{tenantId}/grants")]
pub async fn list_grants(
    _auth: Authorized<PlatformAdmin>,
    path: web::Path<TenantPath>,
    params: web::Query<GrantListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = parse_id(&path.tenant_id, tenant_not_found)?;
    let tenant = state.store.get_tenant(tenant_id).await?.ok_or_else(tenant_not_found)?;
    let now = state.clock.now();
    let calendar = BillingCalendar::of(&tenant);
    let period_start: NaiveDate = match &params.period {
        None => calendar.period_containing(now).start,
        // The period starting in that month.
        Some(raw) => parse_period(raw).map(|month| calendar.period_starting_in(month).start).ok_or_else(|| {
            AppError::new(ErrorCode::ValidationFailed).with_parameter_errors(vec![FieldError::new(
                "period",
                "format",
                "a month, YYYY-MM",
            )])
        })?,
    };
    let grants = state.store.list_quota_grants(tenant_id, period_start).await?;
    Ok(HttpResponse::Ok().json(GrantList { value: grants.iter().map(|g| GrantView::of(g, now)).collect() }))
}

/// Reads one grant.
#[utoipa::path(
    tag = "grants",
    operation_id = "getGrant",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), ("id" = Uuid, Path, description = "The grant id")),
    responses(
        (status = 200, description = "The grant; ETag carries its version", body = GrantView),
        (status = 404, description = "No such grant in this tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants/{tenantId}/grants/{id}")]
pub async fn get_grant(
    _auth: Authorized<PlatformAdmin>,
    path: web::Path<GrantPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, id) = (parse_id(&path.tenant_id, grant_not_found)?, parse_id(&path.id, grant_not_found)?);
    let grant = state.store.get_quota_grant(tenant_id, id).await?.ok_or_else(grant_not_found)?;
    Ok(respond(StatusCode::OK, &grant, state.clock.now()))
}

/// Revokes a grant: the part of it the tenant has not used leaves the period's quota. Requires `If-Match` with the
/// grant's ETag; revoking an ended grant answers it as it is.
#[utoipa::path(
    tag = "grants",
    operation_id = "revokeGrant",
    security(("entra" = ["Platform.Admin"])),
    params(
        ("tenantId" = Uuid, Path, description = "The tenant id"),
        ("id" = Uuid, Path, description = "The grant id"),
        ("If-Match" = String, Header, min_length = 1, description = "The grant's ETag, or *")
    ),
    responses(
        (status = 200, description = "Revoked (or ended already)", body = GrantView),
        (status = 404, description = "No such grant in this tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[post("/tenants/{tenantId}/grants/{id}/revoke")]
pub async fn revoke_grant(
    auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    path: web::Path<GrantPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, id) = (parse_id(&path.tenant_id, grant_not_found)?, parse_id(&path.id, grant_not_found)?);
    let precondition = require_if_match(&req)?;
    retrying(&precondition, || async {
        let current = state.store.get_quota_grant(tenant_id, id).await?.ok_or_else(grant_not_found)?;
        let now = state.clock.now();
        if current.ended_at.is_some() {
            // Already reflected (RFC 9110 §13.1.1): nothing to write, whatever If-Match names.
            return Ok(respond(StatusCode::OK, &current, now));
        }
        let version = expected_version(&precondition, current.version)?;
        // The answer is the row the store returns, whose `returnedUnits` it decides under the period's lock; the audit
        // record's "after" is the grant as revoked with what the counter shows now (the same unless another
        // process's requests spend from the period meanwhile).
        let by = actor(&auth);
        let before = GrantView::of(&current, now);
        let returned = state
            .store
            .quota_usage(tenant_id, current.period_start)
            .await?
            .map(|q| crate::store::returned_units(current.units, q.quota_units, q.units_used));
        let provisional = QuotaGrant {
            ended_at: Some(now),
            revoked_by: Some(by.clone()),
            returned_units: returned,
            version: current.version + 1,
            ..current.clone()
        };
        let summary = format!("revoked grant of {} units to period {}", current.units, before.period);
        let note = AuditNote::new("grants", id, Some(&before), Some(&GrantView::of(&provisional, now)), summary)
            .in_tenant(tenant_id);
        let ledger = ledger(&req, &respond(StatusCode::OK, &provisional, now), note);
        let grant = took_effect(
            state.store.revoke_quota_grant(tenant_id, id, version, &by, now, ledger.as_ref()).await?,
            grant_not_found,
        )?;
        Ok(respond(StatusCode::OK, &grant, now))
    })
    .await
}
