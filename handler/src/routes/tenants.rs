//! `/api/v1/tenants` (Platform.Admin): the tenant directory: onboard, rename, change plan, suspend, reactivate.

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, get, patch, post, web};
use validator::Validate;

use crate::api::conditional::{Preconditions, expected_version, not_modified, require_if_match, retrying, took_effect};
use crate::api::list::{created_cursor, encode_created_cursor, next_link, page_size};
use crate::api::validation::validate;
use crate::store::{StoreError, TenantChanges, TenantStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::guard::{Authorized, PlatformAdmin};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::metering::audit::AuditNote;
use crate::metering::ledger::ledger;
use crate::metering::period::{BillingCalendar, CalendarError};
use crate::state::AppState;
use crate::store::{Tenant, TenantBilling};

/// A tenant's status: `active`, `suspended` (its calls are refused) or `closed`.
#[derive(Debug, Clone, Copy, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TenantStatusName {
    Active,
    Suspended,
    Closed,
}

/// A tenant, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub id: Uuid,
    /// The Entra directory (`tid`) whose tokens map to this tenant.
    pub entra_tenant_id: Option<Uuid>,
    pub name: String,
    /// `active`, `suspended` or `closed`.
    #[schema(value_type = TenantStatusName)]
    pub status: &'static str,
    /// The plan code.
    pub plan: String,
    /// The day of the month (1 to 28) its billing periods start, at local midnight in `timeZone`.
    pub billing_anchor_day: i32,
    /// The IANA time zone of its billing periods and daily usage windows.
    pub time_zone: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The tenant's version as a strong ETag, as the `ETag` header carries it: send it back in `If-Match`.
    pub etag: String,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        TenantView {
            id: t.id,
            entra_tenant_id: t.entra_tenant_id,
            name: t.name.clone(),
            status: t.status.as_str(),
            plan: t.plan_code.clone(),
            billing_anchor_day: t.billing.anchor_day,
            time_zone: t.billing.time_zone.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
            etag: etag(t),
        }
    }
}

/// A page of tenants.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantList {
    pub value: Vec<TenantView>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
    /// The number of all tenants, when `count=true` was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    pub maxpagesize: Option<u32>,
    /// Opaque continuation token from a previous `nextLink`.
    #[param(min_length = 1, nullable = false)]
    pub cursor: Option<String>,
    /// `true` adds the number of all tenants as `count` (as on every list).
    #[param(nullable = false)]
    pub count: Option<bool>,
}

fn etag(t: &Tenant) -> String {
    crate::api::conditional::etag(t.version)
}

/// Lists tenants, oldest first, in keyset pages.
#[utoipa::path(
    tag = "tenants",
    operation_id = "listTenants",
    security(("entra" = ["Platform.Admin"])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of tenants", body = TenantList),
    )
)]
#[get("/tenants")]
pub async fn list_tenants(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    params: web::Query<ListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let size = page_size(params.maxpagesize)?;
    let listing = ["/api/v1/tenants"];
    let after = created_cursor(&state.cursors, &listing, params.cursor.as_deref())?;
    let page = state.store.list_tenants(after.as_ref(), size).await?;
    let next_link = page
        .next
        .as_ref()
        .map(|c| next_link(&req, "/api/v1/tenants", &encode_created_cursor(&state.cursors, &listing, c)));
    let count = match params.count {
        Some(true) => Some(state.store.count_tenants().await?),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(TenantList {
        value: page.items.iter().map(TenantView::from).collect(),
        next_link,
        count,
    }))
}

/// Reads one tenant.
#[utoipa::path(
    tag = "tenants",
    operation_id = "getTenant",
    security(("entra" = ["Platform.Admin"])),
    params(("id" = Uuid, Path, description = "The tenant id")),
    responses(
        (status = 200, description = "The tenant; ETag carries its version", body = TenantView),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants/{id}")]
pub async fn get_tenant(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant = state.store.get_tenant(parse_id(&id)?).await?.ok_or_else(not_found)?;
    if not_modified(&req, tenant.version) {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag(&tenant))).finish());
    }
    Ok(respond(actix_web::http::StatusCode::OK, &tenant))
}

fn not_found() -> AppError {
    AppError::new(ErrorCode::NotFound).with_detail("no tenant with this id")
}

fn parse_id(raw: &str) -> Result<Uuid, AppError> {
    raw.parse().map_err(|_| not_found())
}

fn respond(status: actix_web::http::StatusCode, tenant: &Tenant) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header((header::ETAG, etag(tenant))).insert_header(ContentType::json());
    if status == actix_web::http::StatusCode::CREATED {
        response.insert_header((header::LOCATION, format!("/api/v1/tenants/{}", tenant.id)));
    }
    response.json(TenantView::from(tenant))
}

fn unknown_plan() -> AppError {
    AppError::new(ErrorCode::ValidationFailed)
        .with_detail("the plan does not exist")
        .with_field_errors(vec![FieldError::body("/plan", "unknown", "no plan with this code")])
}

/// A new tenant.
#[derive(Debug, Clone, Serialize, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"name": "Contoso Ltd", "plan": "team", "entraTenantId": "72f988bf-86f1-41af-91ab-2d7cd011db47"}))]
pub struct TenantCreate {
    #[validate(length(min = 1), custom(function = "crate::api::validation::utf16_at_most_200"))]
    #[schema(min_length = 1, max_length = 200)]
    pub name: String,
    /// The plan code.
    #[validate(length(min = 1, max = 64))]
    #[schema(min_length = 1, max_length = 64)]
    pub plan: String,
    /// The Entra directory (`tid`) whose tokens map to this tenant; unique.
    pub entra_tenant_id: Option<Uuid>,
    /// The day of the month (1 to 28) its billing periods start (default 1). Fixed once the tenant exists.
    #[schema(minimum = 1, maximum = 28)]
    pub billing_anchor_day: Option<i32>,
    /// The IANA time zone of its periods and daily usage windows (default `UTC`), e.g. `Asia/Kolkata`. Fixed once
    /// the tenant exists.
    #[schema(min_length = 1, max_length = 64, example = "Europe/Paris")]
    pub time_zone: Option<String>,
}

/// Onboards a tenant (status `active`).
#[utoipa::path(
    tag = "tenants",
    operation_id = "createTenant",
    security(("entra" = ["Platform.Admin"])),
    request_body(content = TenantCreate, content_type = "application/json"),
    responses(
        (status = 201, description = "Created", body = TenantView),
        (status = 409, description = "The Entra directory already has a tenant", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/tenants")]
pub async fn create_tenant(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    input: web::Json<TenantCreate>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let input = input.into_inner();
    validate(&input)?;
    let now = state.clock.now();
    let time_zone = input.time_zone.clone().unwrap_or_else(|| "UTC".into());
    let calendar = BillingCalendar::new(input.billing_anchor_day.unwrap_or(1) as u32, &time_zone).map_err(|e| {
        let (pointer, code, message) = match e {
            CalendarError::AnchorDay => ("/billingAnchorDay", "range", "a day from 1 to 28"),
            CalendarError::UnknownTimeZone => ("/timeZone", "unknown", "not an IANA time zone name"),
            CalendarError::UnalignedTimeZone => (
                "/timeZone",
                "unsupported",
                "the zone's offset changes its minutes over the year; usage windows cannot follow it",
            ),
        };
        AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::body(pointer, code, message)])
    })?;
    let tenant = Tenant {
        id: state.ids.new_id(),
        entra_tenant_id: input.entra_tenant_id,
        name: input.name,
        status: TenantStatus::Active,
        plan_code: input.plan,
        created_at: now,
        updated_at: now,
        version: 1,
        billing: TenantBilling {
            anchor_day: calendar.anchor_day as i32,
            time_zone: calendar.time_zone.name().to_owned(),
            window_offset_minutes: calendar.window_offset_minutes().unwrap_or(0),
        },
    };
    let response = respond(actix_web::http::StatusCode::CREATED, &tenant);
    let view = TenantView::from(&tenant);
    let summary = format!("created tenant on plan {}", tenant.plan_code);
    let ledger =
        ledger(&req, &response, AuditNote::new("tenants", tenant.id, None, Some(&view), summary).in_tenant(tenant.id));
    match state.store.create_tenant(&tenant, ledger.as_ref()).await {
        Ok(()) => {
            state.lookups.invalidate();
            Ok(response)
        }
        Err(StoreError::ForeignKey(_)) => Err(unknown_plan()),
        Err(StoreError::Conflict(_)) => {
            Err(AppError::new(ErrorCode::Conflict).with_detail("this Entra directory already has a tenant"))
        }
        Err(e) => Err(e.into()),
    }
}

/// The fields a merge patch may change.
#[derive(Debug, Clone, Default, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TenantPatch {
    /// A new name, not only spaces. Required members cannot be removed: `null` is refused.
    #[validate(
        length(min = 1),
        custom(function = "crate::api::validation::utf16_at_most_200"),
        custom(function = "crate::api::validation::not_blank")
    )]
    #[schema(min_length = 1, max_length = 200, nullable = false)]
    pub name: Option<String>,
    /// Change the plan: new limits apply at once; the current period keeps its quota.
    #[validate(length(min = 1, max = 64))]
    #[schema(min_length = 1, max_length = 64, nullable = false)]
    pub plan: Option<String>,
}

async fn change(
    state: &AppState,
    req: &HttpRequest,
    id: &str,
    changes: TenantChanges,
) -> Result<HttpResponse, AppError> {
    // An id that cannot exist is a 404 before any precondition is looked at.
    let id = parse_id(id)?;
    let precondition = require_if_match(req)?;
    retrying(&precondition, || change_once(state, req, id, &changes, &precondition)).await
}

/// One try of [`change`]: the tenant as read now, the preconditions checked against it, the conditional update.
async fn change_once(
    state: &AppState,
    req: &HttpRequest,
    id: Uuid,
    changes: &TenantChanges,
    precondition: &Preconditions,
) -> Result<HttpResponse, AppError> {
    let current = state.store.get_tenant(id).await?.ok_or_else(not_found)?;
    let version = expected_version(precondition, current.version)?;
    let now = state.clock.now();
    // The answer and the audit event describe the row as the update writes it (`version` is the current one).
    let next = changes.applied_to(&current, now);
    if (&next.name, next.status, &next.plan_code) == (&current.name, current.status, &current.plan_code) {
        // Nothing changes (an empty patch, the plan it has, suspending a suspended tenant): no new version, and
        // every other client's ETag stays good. The call is still audited in the tenant's chain.
        let view = TenantView::from(&current);
        let summary = format!("tenant {} unchanged at version {}", current.status.as_str(), current.version);
        let note = AuditNote::new("tenants", current.id, Some(&view), Some(&view), summary).in_tenant(current.id);
        actix_web::HttpMessage::extensions_mut(req).insert(note);
        return Ok(respond(actix_web::http::StatusCode::OK, &current));
    }
    let response = respond(actix_web::http::StatusCode::OK, &next);
    let (before, after) = (TenantView::from(&current), TenantView::from(&next));
    let summary = format!("tenant {} on plan {} at version {}", next.status.as_str(), next.plan_code, next.version);
    let ledger = ledger(
        req,
        &response,
        AuditNote::new("tenants", next.id, Some(&before), Some(&after), summary).in_tenant(next.id),
    );
    let updated = match state.store.update_tenant(current.id, changes, version, now, ledger.as_ref()).await {
        Err(StoreError::ForeignKey(_)) => return Err(unknown_plan()),
        updated => updated?,
    };
    took_effect(updated, not_found)?;
    state.lookups.invalidate();
    Ok(response)
}

/// Renames a tenant or changes its plan (JSON merge patch). Requires `If-Match`.
#[utoipa::path(
    tag = "tenants",
    operation_id = "patchTenant",
    security(("entra" = ["Platform.Admin"])),
    params(("id" = Uuid, Path, description = "The tenant id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    request_body(content = TenantPatch, content_type = "application/merge-patch+json"),
    responses(
        (status = 200, description = "Changed", body = TenantView),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[patch("/tenants/{id}")]
pub async fn patch_tenant(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    id: web::Path<String>,
    body: web::Bytes,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    crate::api::validation::require_merge_patch(&req)?;
    let raw: serde_json::Value = serde_json::from_slice(&body).map_err(|e| crate::error::serde_json_error(&e))?;
    // In a merge patch `null` removes a member (RFC 7396); a tenant's name and plan cannot be removed.
    let removed: Vec<FieldError> = ["name", "plan"]
        .into_iter()
        .filter(|member| raw.get(member).is_some_and(serde_json::Value::is_null))
        .map(|member| FieldError::body(&format!("/{member}"), "required", "cannot be removed (null)"))
        .collect();
    if !removed.is_empty() {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(removed));
    }
    let patch: TenantPatch = serde_json::from_value(raw).map_err(|e| crate::error::serde_json_error(&e))?;
    validate(&patch)?;
    change(&state, &req, &id, TenantChanges { name: patch.name, status: None, plan_code: patch.plan }).await
}

/// Suspends a tenant: its callers get 403 `tenant-suspended` until it is reactivated. Requires `If-Match`.
#[utoipa::path(
    tag = "tenants",
    operation_id = "suspendTenant",
    security(("entra" = ["Platform.Admin"])),
    params(("id" = Uuid, Path, description = "The tenant id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    responses(
        (status = 200, description = "Suspended", body = TenantView),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/tenants/{id}/suspend")]
pub async fn suspend_tenant(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    change(&state, &req, &id, TenantChanges { status: Some(TenantStatus::Suspended), ..Default::default() }).await
}

/// Reactivates a suspended tenant. Requires `If-Match`.
#[utoipa::path(
    tag = "tenants",
    operation_id = "reactivateTenant",
    security(("entra" = ["Platform.Admin"])),
    params(("id" = Uuid, Path, description = "The tenant id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    responses(
        (status = 200, description = "Active again", body = TenantView),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/tenants/{id}/reactivate")]
pub async fn reactivate_tenant(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    change(&state, &req, &id, TenantChanges { status: Some(TenantStatus::Active), ..Default::default() }).await
}
