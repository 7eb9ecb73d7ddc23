//! `GET /api/v1/me`: who the caller is, as Meterline sees it: principal, tenant, plan and effective permissions.

use actix_web::{HttpMessage, HttpRequest, HttpResponse, get, web};
use serde::Serialize;

use crate::auth::PrincipalKind;
use crate::auth::guard::{Authenticated, Authorized};
use crate::error::AppError;
use crate::metering::stage::QuotaReading;
use crate::state::AppState;

/// How the caller holds its token: `app` (client credentials) or `delegated` (on behalf of a user).
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CallerKind {
    App,
    Delegated,
}

/// The caller's identity and what it may do.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Me {
    /// `app` (client credentials) or `delegated` (on behalf of a user).
    #[schema(value_type = CallerKind)]
    pub kind: &'static str,
    pub subject: String,
    pub object_id: Option<String>,
    /// The Entra directory (`tid`) of the token.
    pub directory_id: String,
    /// The calling application (`azp`/`appid`).
    pub app_id: Option<String>,
    pub name: Option<String>,
    /// Effective permissions after any API-client registration narrowed them.
    pub permissions: Vec<&'static str>,
    /// The Meterline tenant every data access is scoped to; absent for platform administrators without one.
    pub tenant: Option<MeTenant>,
    /// The tenant's quota in its current billing period (its calendar: anchor day and time zone); the same numbers
    /// the limiter enforces.
    pub quota: Option<MeQuota>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeQuota {
    pub period_start: chrono::NaiveDate,
    /// The first day of the next period (exclusive).
    pub period_end: chrono::NaiveDate,
    /// The tenant's quota: its plan's, plus `grantedUnits`.
    pub quota_units: i64,
    /// The units quota grants added to this period.
    pub granted_units: i64,
    pub units_used: i64,
    pub remaining_units: i64,
    pub overage_units: i64,
    /// `block` or `allow`.
    #[schema(value_type = crate::routes::plans::Overage)]
    pub overage_policy: &'static str,
    /// This application's own share, when its registration caps it (docs/usage.md, "Client limits").
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client: Option<MeClientShare>,
}

/// A capped client's share of its tenant's limits, as the limiter applies it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeClientShare {
    /// Its cap on the tenant's monthly units, and what it used of it (absent: no cap).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub quota_units: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub units_used: Option<i64>,
    /// Its rate cap (absent: the plan's rate).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<i32>,
}

#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct MeTenant {
    pub id: uuid::Uuid,
    pub name: String,
    pub status: &'static str,
    pub plan: String,
}

/// Describes the authenticated caller.
#[utoipa::path(
    tag = "identity",
    operation_id = "getMe",
    security(("entra" = [])),
    responses(
        (status = 200, description = "The caller", body = Me),
    )
)]
#[get("/me")]
pub async fn get_me(
    auth: Authorized<Authenticated>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    describe(&auth, &state, &req).await
}

/// The old name of `getMe`, kept until its sunset; responses carry `Deprecation` and `Sunset`.
#[utoipa::path(
    tag = "identity",
    operation_id = "getWhoAmI",
    security(("entra" = [])),
    responses(
        (status = 200, description = "The caller (deprecated: use getMe)", body = Me),
    )
)]
#[get("/whoami")]
pub async fn get_whoami(
    auth: Authorized<Authenticated>,
    state: web::Data<AppState>,
    req: HttpRequest,
) -> Result<HttpResponse, AppError> {
    describe(&auth, &state, &req).await
}

async fn quota(
    state: &AppState,
    tenant: &crate::store::Tenant,
    caller: &crate::auth::guard::Caller,
    reading: Option<QuotaReading>,
) -> Result<Option<MeQuota>, AppError> {
    // The plan as the limit stage saw it (cached like every lookup on the request path).
    let Some(plan) = state.lookups.plan(&tenant.plan_code).await? else { return Ok(None) };
    let period = crate::metering::period::BillingCalendar::of(tenant).period_containing(state.clock.now());
    let (period_start, period_end) = (period.start, period.end);
    // The counters the limit stage read for this call's RateLimit headers, unless the period turned since.
    let reading = reading.filter(|r| r.period_start == period_start);
    let (usage, client_units_used) = match reading {
        Some(r) => (r.usage, r.client_units_used),
        None => (state.quota_usage(tenant.id, period_start).await?, None),
    };
    // Before the period's first debit, the plan's quota applies; afterwards the stored one.
    let (quota_units, granted_units, units_used, overage_units, policy) = match usage {
        Some(u) => (u.quota_units, u.granted_units, u.units_used, u.overage_units, u.overage_policy),
        None => (plan.monthly_quota_units, 0, 0, 0, plan.overage_policy),
    };
    let limits = caller.client_limits;
    let client = match (caller.api_client_id, limits.quota_units, limits.requests_per_minute) {
        (Some(_), None, None) | (None, _, _) => None,
        (Some(client_id), cap, rate) => Some(MeClientShare {
            quota_units: cap,
            units_used: match (cap, client_units_used) {
                (Some(_), Some(used)) => Some(used),
                (Some(_), None) => Some(state.store.client_quota_used(client_id, period_start).await?),
                (None, _) => None,
            },
            requests_per_minute: rate,
        }),
    };
    Ok(Some(MeQuota {
        period_start,
        period_end,
        quota_units,
        granted_units,
        client,
        units_used,
        remaining_units: (quota_units - units_used).max(0),
        overage_units,
        overage_policy: policy.as_str(),
    }))
}

async fn describe(
    auth: &Authorized<Authenticated>,
    state: &AppState,
    req: &HttpRequest,
) -> Result<HttpResponse, AppError> {
    let reading = req.extensions().get::<QuotaReading>().cloned();
    let quota = match &auth.tenant {
        Some(tenant) => quota(state, tenant, auth, reading).await?,
        None => None,
    };
    let p = &auth.principal;
    Ok(HttpResponse::Ok().json(Me {
        kind: match p.kind {
            PrincipalKind::App => "app",
            PrincipalKind::Delegated => "delegated",
        },
        subject: p.subject.clone(),
        object_id: p.object_id.clone(),
        directory_id: p.directory_id.clone(),
        app_id: p.app_id.clone(),
        name: p.name.clone(),
        permissions: auth.permissions.iter().map(|p| p.as_str()).collect(),
        tenant: auth.tenant.as_ref().map(|t| MeTenant {
            id: t.id,
            name: t.name.clone(),
            status: t.status.as_str(),
            plan: t.plan_code.clone(),
        }),
        quota,
    }))
}
