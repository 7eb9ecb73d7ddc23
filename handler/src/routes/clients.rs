//! API-client registrations: `/api/v1/clients` (Tenant.Admin: the caller's own tenant's applications) and
//! `/api/v1/tenants/{tenantId}/clients` (Platform.Admin: any tenant's, and the approval of registrations for
//! another directory).
//!
//! A registration is bound to the directory (`tid`) its tokens carry: it applies only to tokens of that
//! directory and application, and never changes what a token from any other directory can do. One for the
//! tenant's own directory is active at once; one for another directory (a partner's application) waits for a
//! platform administrator. Answers never reveal whether another tenant registered the same application.

use actix_web::http::StatusCode;
use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, put, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use crate::api::conditional::{etag, expected_version, not_modified, require_if_match, retrying, took_effect};
use crate::api::list::{ListEnvelope, created_cursor, encode_created_cursor, next_link, page_size};
use crate::api::validation::validate;
use crate::auth::Permission;
use crate::auth::guard::{Authorized, PlatformAdmin, TenantAdmin};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::metering::audit::AuditNote;
use crate::metering::ledger::ledger;
use crate::state::AppState;
use crate::store::{ApiClient, ClientDecision, ClientLimits, ClientStatus, StoreError};

/// A role an API client may hold in a tenant (every permission but `Platform.Admin`), as the OpenAPI document
/// lists them; the wire value is the role's name (`tenant_roles` reads it).
#[derive(utoipa::ToSchema)]
#[allow(dead_code)] // documentation only
pub enum TenantRole {
    #[schema(rename = "Tenant.Admin")]
    TenantAdmin,
    #[schema(rename = "Documents.Read")]
    DocumentsRead,
    #[schema(rename = "Documents.Write")]
    DocumentsWrite,
    #[schema(rename = "Usage.Read")]
    UsageRead,
    #[schema(rename = "Audit.Read")]
    AuditRead,
}

/// Registers an application.
#[derive(Debug, Clone, Serialize, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"appId": "9b2b6c1e-4f4d-4a53-9a5e-3f0d1c2b7a61", "displayName": "Billing sync",
    "roles": ["Documents.Read", "Usage.Read"]}))]
pub struct ClientCreate {
    /// The Entra application (client) id, as tokens carry it in `azp` or `appid`.
    #[validate(length(min = 1), custom(function = "crate::api::validation::utf16_at_most_128"))]
    #[schema(min_length = 1, max_length = 128)]
    pub app_id: String,
    /// The directory (`tid`) the application's tokens will carry. Default: the tenant's own directory, where the
    /// registration is active at once; any other directory (a partner's application) needs a platform
    /// administrator's approval and answers 202 with the registration `pending`.
    #[serde(default)]
    pub directory_id: Option<Uuid>,
    #[validate(length(min = 1), custom(function = "crate::api::validation::utf16_at_most_200"))]
    #[schema(min_length = 1, max_length = 200)]
    pub display_name: String,
    /// Roles the application may use in this tenant (at least one); `Platform.Admin` cannot be granted here.
    #[validate(length(min = 1, max = 5))]
    #[schema(value_type = Vec<TenantRole>, min_items = 1, max_items = 5)]
    pub roles: Vec<String>,
}

/// A registered application.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientView {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The directory (`tid`) whose tokens this registration applies to; null only for a registration that
    /// could not be bound to a directory when registrations became directory-bound (it is revoked).
    pub directory_id: Option<Uuid>,
    pub app_id: String,
    pub display_name: String,
    #[schema(value_type = Vec<TenantRole>)]
    pub roles: Vec<String>,
    /// `pending` (waits for a platform administrator), `active`, `rejected` or `revoked`.
    #[schema(value_type = RegistrationStatus)]
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a platform administrator approved or rejected it (registrations for another directory only).
    pub decided_at: Option<DateTime<Utc>>,
    /// The tenant administrator's caps on this client's share of the tenant's limits.
    pub limits: LimitsView,
    /// The registration's version as a strong ETag, as the `ETag` header carries it: revoking, approving,
    /// rejecting and changing its limits take it in `If-Match`.
    pub etag: String,
}

/// A client's caps: at most `quotaUnits` of the tenant's monthly quota and `requestsPerMinute` (below the plan's
/// rate); null is no cap. Both apply to the calls of this registration's application only (docs/usage.md,
/// "Client limits").
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"quotaUnits": 10_000, "requestsPerMinute": 60}))]
pub struct LimitsView {
    #[schema(minimum = 1, maximum = 1_000_000_000_000_i64)]
    pub quota_units: Option<i64>,
    #[schema(minimum = 1, maximum = 1_000_000)]
    pub requests_per_minute: Option<i32>,
}

impl From<ClientLimits> for LimitsView {
    fn from(l: ClientLimits) -> Self {
        LimitsView { quota_units: l.quota_units, requests_per_minute: l.requests_per_minute }
    }
}

impl From<&ApiClient> for ClientView {
    fn from(c: &ApiClient) -> Self {
        ClientView {
            id: c.id,
            tenant_id: c.tenant_id,
            directory_id: c.directory_id,
            app_id: c.app_id.clone(),
            display_name: c.display_name.clone(),
            roles: c.roles.clone(),
            status: c.status.as_str(),
            created_at: c.created_at,
            revoked_at: c.revoked_at,
            decided_at: c.decided_at,
            limits: c.limits.into(),
            etag: etag(c.version),
        }
    }
}

/// A registration as one answer: its view, its `ETag`, and for a new one its `Location`.
fn respond(status: StatusCode, client: &ApiClient) -> HttpResponse {
    let mut response = HttpResponse::build(status);
    response.insert_header((header::ETAG, etag(client.version))).insert_header(ContentType::json());
    if matches!(status, StatusCode::CREATED | StatusCode::ACCEPTED) {
        response.insert_header((header::LOCATION, format!("/api/v1/clients/{}", client.id)));
    }
    response.json(ClientView::from(client))
}

/// A page of registrations, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientList {
    pub value: Vec<ClientView>,
    /// Absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_link: Option<String>,
    /// The number of all registrations the listing's filter selects, when `count=true` was asked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

/// A client registration's status: `pending` (waits for a platform administrator), `active`, `rejected` or `revoked`.
#[derive(Debug, Clone, Copy, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum RegistrationStatus {
    Pending,
    Active,
    Rejected,
    Revoked,
}

impl From<RegistrationStatus> for ClientStatus {
    fn from(s: RegistrationStatus) -> Self {
        match s {
            RegistrationStatus::Pending => ClientStatus::Pending,
            RegistrationStatus::Active => ClientStatus::Active,
            RegistrationStatus::Rejected => ClientStatus::Rejected,
            RegistrationStatus::Revoked => ClientStatus::Revoked,
        }
    }
}

/// The query of a client listing (both listings take the same).
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Only registrations with this status.
    #[param(inline, nullable = false)]
    pub status: Option<RegistrationStatus>,
    /// Page size, 1 to 100 (default 25).
    #[param(minimum = 1, maximum = 100, nullable = false)]
    pub maxpagesize: Option<u32>,
    /// Opaque continuation token from a previous `nextLink`.
    #[param(min_length = 1, nullable = false)]
    pub cursor: Option<String>,
    /// `true` adds the number of all registrations the filter selects as `count` (as on every list).
    #[param(nullable = false)]
    pub count: Option<bool>,
}

/// Registers an application with the caller's tenant, for the tenant's own directory or, pending a platform
/// administrator's approval, for another one.
#[utoipa::path(
    tag = "clients",
    operation_id = "registerClient",
    security(("entra" = ["Tenant.Admin"])),
    request_body(content = ClientCreate, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered for the tenant's own directory: active", body = ClientView),
        (status = 202, description = "Registered for another directory: pending a platform administrator's approval", body = ClientView),
        (status = 409, description = "The tenant has a pending or active registration of this application for this directory", body = crate::error::Problem, content_type = "application/problem+json"),
    )
)]
#[post("/clients")]
pub async fn register_client(
    auth: Authorized<TenantAdmin>,
    req: HttpRequest,
    input: web::Json<ClientCreate>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let tenant_id = auth.tenant_id()?;
    let own_directory = auth.tenant.as_ref().and_then(|t| t.entra_tenant_id);
    let input = input.into_inner();
    validate(&input)?;
    let Some(directory_id) = input.directory_id.or(own_directory) else {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::new(
            "directoryId",
            "required",
            "the tenant has no Entra directory of its own: name the directory whose tokens the application carries",
        )]));
    };
    if state.auth.is_platform_directory(directory_id) {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::new(
            "directoryId",
            "platform",
            "a platform directory's applications are the platform's; no tenant registers them",
        )]));
    }
    // As tokens are compared with it: Entra's application ids are GUIDs, which a registration may spell in upper
    // case or with stray spaces; a cap under another spelling would never apply on SQLite (SQL Server ignores case).
    let app_id = crate::store::app_key(&input.app_id);
    if app_id.is_empty() {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::body(
            "/appId",
            "length",
            "an application id, not only spaces",
        )]));
    }
    if auth.principal.app_id.as_deref().map(crate::store::app_key) == Some(app_id.clone()) {
        // Registering the calling application would cap its own roles, and could lock its caller out.
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::new(
            "appId",
            "self",
            "an application cannot register itself; use another Tenant.Admin application",
        )]));
    }
    let roles = tenant_roles(&input.roles)?;
    let status = if Some(directory_id) == own_directory { ClientStatus::Active } else { ClientStatus::Pending };
    let client = ApiClient {
        id: state.ids.new_id(),
        tenant_id,
        directory_id: Some(directory_id),
        app_id,
        display_name: input.display_name,
        roles,
        status,
        created_at: state.clock.now(),
        revoked_at: None,
        decided_by: None,
        decided_at: None,
        version: 1,
        limits: ClientLimits::default(),
    };
    let view = ClientView::from(&client);
    let response =
        respond(if status == ClientStatus::Active { StatusCode::CREATED } else { StatusCode::ACCEPTED }, &client);
    let summary = format!(
        "registered application {} of directory {directory_id} with roles {} ({})",
        client.app_id,
        client.roles.join(","),
        status.as_str()
    );
    let ledger = ledger(&req, &response, AuditNote::new("clients", client.id, None, Some(&view), summary));
    match state.store.create_api_client(&client, ledger.as_ref()).await {
        Ok(()) => {
            state.lookups.invalidate();
            Ok(response)
        }
        // Only this tenant's own live registration of the pair conflicts: nothing about other tenants shows.
        Err(StoreError::Conflict(_)) => Err(AppError::new(ErrorCode::Conflict)
            .with_detail("your tenant has a pending or active registration of this application for this directory")),
        Err(e) => Err(e.into()),
    }
}

/// The sorted, distinct tenant roles named, or a 422 naming each one that is not a tenant role.
fn tenant_roles(names: &[String]) -> Result<Vec<String>, AppError> {
    let mut roles = Vec::new();
    let mut errors = Vec::new();
    for (i, role) in names.iter().enumerate() {
        match Permission::parse(role) {
            Some(Permission::PlatformAdmin) | None => {
                errors.push(FieldError::new(format!("roles[{i}]"), "unknown", "a tenant role such as Documents.Read"))
            }
            Some(p) => roles.push(p.as_str().to_owned()),
        }
    }
    if !errors.is_empty() {
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(errors));
    }
    roles.sort();
    roles.dedup();
    Ok(roles)
}

/// Lists the caller's tenant's applications, oldest first, in keyset pages.
#[utoipa::path(
    tag = "clients",
    operation_id = "listClients",
    security(("entra" = ["Tenant.Admin"])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of the tenant's applications", body = ClientList),
    )
)]
#[get("/clients")]
pub async fn list_clients(
    auth: Authorized<TenantAdmin>,
    req: HttpRequest,
    params: web::Query<ListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    client_list(&state, &req, auth.tenant_id()?, &params, "/api/v1/clients").await
}

async fn client_list(
    state: &AppState,
    req: &HttpRequest,
    tenant_id: Uuid,
    params: &ListParams,
    path: &str,
) -> Result<HttpResponse, AppError> {
    let size = page_size(params.maxpagesize)?;
    let status = params.status.map(ClientStatus::from);
    let (scope, filter) = (tenant_id.to_string(), status.map_or("any", ClientStatus::as_str));
    let listing = [path, scope.as_str(), filter];
    let after = created_cursor(&state.cursors, &listing, params.cursor.as_deref())?;
    let page = state.store.list_api_clients(tenant_id, status, after.as_ref(), size).await?;
    let count = match params.count {
        Some(true) => Some(state.store.count_api_clients(tenant_id, status).await?),
        _ => None,
    };
    Ok(HttpResponse::Ok().json(ListEnvelope {
        value: page.items.iter().map(ClientView::from).collect(),
        next_link: page
            .next
            .as_ref()
            .map(|c| next_link(req, path, &encode_created_cursor(&state.cursors, &listing, c))),
        count,
    }))
}

/// A registration of `tenant_id`, answered 304 when `If-None-Match` names its ETag.
async fn client_read(
    state: &AppState,
    req: &HttpRequest,
    tenant_id: Uuid,
    id: Uuid,
    not_found: impl FnOnce() -> AppError,
) -> Result<HttpResponse, AppError> {
    let client = state.store.get_api_client(tenant_id, id).await?.ok_or_else(not_found)?;
    if not_modified(req, client.version) {
        return Ok(HttpResponse::NotModified().insert_header((header::ETAG, etag(client.version))).finish());
    }
    Ok(respond(StatusCode::OK, &client))
}

fn own_not_found() -> AppError {
    AppError::new(ErrorCode::NotFound).with_detail("no registration with this id in your tenant")
}

/// Reads one of the caller's tenant's registrations.
#[utoipa::path(
    tag = "clients",
    operation_id = "getClient",
    security(("entra" = ["Tenant.Admin"])),
    params(("id" = Uuid, Path, description = "The registration id")),
    responses(
        (status = 200, description = "The registration; ETag carries its version", body = ClientView),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such registration in the caller's tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/clients/{id}")]
pub async fn get_client(
    auth: Authorized<TenantAdmin>,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let id: Uuid = id.parse().map_err(|_| own_not_found())?;
    client_read(&state, &req, auth.tenant_id()?, id, own_not_found).await
}

/// Sets the caps on one of the tenant's applications: its share of the tenant's monthly quota and its rate.
/// Requires `If-Match`. They apply to its calls within the lookup cache's lifetime (docs/usage.md).
#[utoipa::path(
    tag = "clients",
    operation_id = "setClientLimits",
    security(("entra" = ["Tenant.Admin"])),
    params(("id" = Uuid, Path, description = "The registration id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    request_body(content = LimitsView, content_type = "application/json"),
    responses(
        (status = 200, description = "The registration with its new limits", body = ClientView),
        (status = 404, description = "No such registration in the caller's tenant", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The registration is revoked or rejected", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[put("/clients/{id}/limits")]
pub async fn set_client_limits(
    auth: Authorized<TenantAdmin>,
    req: HttpRequest,
    id: web::Path<String>,
    input: web::Json<LimitsView>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let id: Uuid = id.parse().map_err(|_| own_not_found())?;
    let precondition = require_if_match(&req)?;
    let tenant_id = auth.tenant_id()?;
    retrying(&precondition, || async {
        let current = state.store.get_api_client(tenant_id, id).await?.ok_or_else(own_not_found)?;
        let version = expected_version(&precondition, current.version)?;
        let limits = ClientLimits { quota_units: input.quota_units, requests_per_minute: input.requests_per_minute };
        if matches!(current.status, ClientStatus::Revoked | ClientStatus::Rejected) {
            return Err(AppError::new(ErrorCode::Conflict).with_detail(format!(
                "the registration is {}: no call of its application is served",
                current.status.as_str()
            )));
        }
        if let (Some(rate), Some(tenant)) = (limits.requests_per_minute, auth.tenant.as_ref())
            && let Some(plan) = state.store.get_plan(&tenant.plan_code).await?
            && i64::from(rate) >= i64::from(plan.requests_per_minute)
        {
            return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::body(
                "/requestsPerMinute",
                "maximum",
                format!(
                    "a cap is below the plan's {} requests a minute (at or above it, the plan's rate applies)",
                    plan.requests_per_minute
                ),
            )]));
        }
        if limits == current.limits {
            // Already so: no new version, so every other administrator's ETag stays good.
            return Ok(respond(StatusCode::OK, &current));
        }
        let next = ApiClient { limits, version: current.version + 1, ..current.clone() };
        let response = respond(StatusCode::OK, &next);
        let summary = format!(
            "limited application {} to {} units a month and {} requests a minute",
            next.app_id,
            limits.quota_units.map_or_else(|| "any".to_owned(), |q| q.to_string()),
            limits.requests_per_minute.map_or_else(|| "the plan's".to_owned(), |r| r.to_string())
        );
        let note =
            AuditNote::new("clients", id, Some(&ClientView::from(&current)), Some(&ClientView::from(&next)), summary);
        let ledger = ledger(&req, &response, note);
        took_effect(
            state.store.set_client_limits(tenant_id, id, version, &limits, ledger.as_ref()).await?,
            own_not_found,
        )?;
        state.lookups.invalidate();
        Ok(response)
    })
    .await
}

/// Revokes an application (or withdraws a pending registration): its tokens stop working for this tenant at
/// once. Requires `If-Match`; revoking a revoked registration at its current ETag changes nothing.
#[utoipa::path(
    tag = "clients",
    operation_id = "revokeClient",
    security(("entra" = ["Tenant.Admin"])),
    params(("id" = Uuid, Path, description = "The registration id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    responses(
        (status = 200, description = "Revoked", body = ClientView),
        (status = 404, description = "No such registration in the caller's tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[delete("/clients/{id}")]
pub async fn revoke_client(
    auth: Authorized<TenantAdmin>,
    req: HttpRequest,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    // An id that cannot exist is a 404 before any precondition is looked at.
    let id: Uuid = id.parse().map_err(|_| own_not_found())?;
    let precondition = require_if_match(&req)?;
    let tenant_id = auth.tenant_id()?;
    retrying(&precondition, || async {
        let current = state.store.get_api_client(tenant_id, id).await?.ok_or_else(own_not_found)?;
        // The row as the revocation leaves it: a pending or active client, still at the version the caller read, is
        // revoked now; a revoked or rejected one stays as it is, whatever `If-Match` names (the change is already
        // reflected, RFC 9110 §13.1.1: a retry gets the same answer).
        let live = matches!(current.status, ClientStatus::Pending | ClientStatus::Active);
        let version = if live { expected_version(&precondition, current.version)? } else { current.version };
        let now = state.clock.now();
        let mut next = current.clone();
        if live {
            (next.status, next.revoked_at, next.version) = (ClientStatus::Revoked, Some(now), next.version + 1);
        }
        let (before, after) = (ClientView::from(&current), ClientView::from(&next));
        let response = respond(StatusCode::OK, &next);
        let summary = format!("revoked application {}", next.app_id);
        let ledger = ledger(&req, &response, AuditNote::new("clients", next.id, Some(&before), Some(&after), summary));
        took_effect(state.store.revoke_api_client(tenant_id, id, version, now, ledger.as_ref()).await?, own_not_found)?;
        state.lookups.invalidate();
        Ok(response)
    })
    .await
}

/// The path of a tenant's registration, for the platform administrator's operations.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantClientPath {
    tenant_id: String,
    id: String,
}

/// Lists any tenant's registrations, pending ones included, oldest first, in keyset pages.
#[utoipa::path(
    tag = "clients",
    operation_id = "listTenantClients",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), ListParams),
    responses(
        (status = 200, description = "A page of the tenant's registrations", body = ClientList),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants/{tenantId}/clients")]
pub async fn list_tenant_clients(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    tenant_id: web::Path<String>,
    params: web::Query<ListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail("no tenant with this id");
    let tenant_id: Uuid = tenant_id.parse().map_err(|_| not_found())?;
    state.store.get_tenant(tenant_id).await?.ok_or_else(not_found)?;
    client_list(&state, &req, tenant_id, &params, &format!("/api/v1/tenants/{tenant_id}/clients")).await
}

fn tenant_client_not_found() -> AppError {
    AppError::new(ErrorCode::NotFound).with_detail("no registration with this id in this tenant")
}

impl TenantClientPath {
    /// The tenant and registration ids; one that cannot exist is a 404.
    fn ids(&self) -> Result<(Uuid, Uuid), AppError> {
        let parse = |raw: &str| raw.parse::<Uuid>().map_err(|_| tenant_client_not_found());
        Ok((parse(&self.tenant_id)?, parse(&self.id)?))
    }
}

/// Reads any tenant's registration.
#[utoipa::path(
    tag = "clients",
    operation_id = "getTenantClient",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), ("id" = Uuid, Path, description = "The registration id")),
    responses(
        (status = 200, description = "The registration; ETag carries its version", body = ClientView),
        (status = 304, description = "Not modified"),
        (status = 404, description = "No such registration in this tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants/{tenantId}/clients/{id}")]
pub async fn get_tenant_client(
    _auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    path: web::Path<TenantClientPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, id) = path.ids()?;
    client_read(&state, &req, tenant_id, id, tenant_client_not_found).await
}

/// Approves a tenant's pending registration for another directory: from now on that directory's tokens for
/// the application map to the tenant, with at most the registration's roles. Requires `If-Match`.
#[utoipa::path(
    tag = "clients",
    operation_id = "approveClient",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), ("id" = Uuid, Path, description = "The registration id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    responses(
        (status = 200, description = "Approved: active", body = ClientView),
        (status = 404, description = "No such registration in this tenant", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "Not pending; or the directory is another tenant's own, or another tenant serves this application from it", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[post("/tenants/{tenantId}/clients/{id}/approve")]
pub async fn approve_client(
    auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    path: web::Path<TenantClientPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    decide(&auth, &req, &path, &state, true).await
}

/// Rejects a tenant's pending registration for another directory; it never applies. Requires `If-Match`.
#[utoipa::path(
    tag = "clients",
    operation_id = "rejectClient",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), ("id" = Uuid, Path, description = "The registration id"), ("If-Match" = String, Header, min_length = 1, description = "The ETag last read, or *")),
    responses(
        (status = 200, description = "Rejected", body = ClientView),
        (status = 404, description = "No such registration in this tenant", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The registration is not pending", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[post("/tenants/{tenantId}/clients/{id}/reject")]
pub async fn reject_client(
    auth: Authorized<PlatformAdmin>,
    req: HttpRequest,
    path: web::Path<TenantClientPath>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    decide(&auth, &req, &path, &state, false).await
}

/// Approves or rejects; the row, its audit event and the request's usage commit together.
async fn decide(
    auth: &Authorized<PlatformAdmin>,
    req: &HttpRequest,
    path: &TenantClientPath,
    state: &AppState,
    approve: bool,
) -> Result<HttpResponse, AppError> {
    let (tenant_id, id) = path.ids()?;
    let precondition = require_if_match(req)?;
    retrying(&precondition, || async {
        let current = state.store.get_api_client(tenant_id, id).await?.ok_or_else(tenant_client_not_found)?;
        let version = expected_version(&precondition, current.version)?;
        if approve && current.directory_id.is_some_and(|d| state.auth.is_platform_directory(d)) {
            // Approved, the platform's own application would answer to a tenant (its tenant, its roles capped).
            return Err(AppError::new(ErrorCode::Conflict).with_detail(
                "the registration names a platform directory, whose applications no tenant may register",
            ));
        }
        let principal = &auth.principal;
        let by = principal
            .object_id
            .clone()
            .or_else(|| principal.app_id.clone())
            .unwrap_or_else(|| principal.subject.clone());
        let decision = ClientDecision { approve, by, at: state.clock.now() };
        let mut next = current.clone();
        (next.status, next.decided_by, next.decided_at, next.version) = (
            if approve { ClientStatus::Active } else { ClientStatus::Rejected },
            Some(decision.by.clone()),
            Some(decision.at),
            next.version + 1,
        );
        let (before, after) = (ClientView::from(&current), ClientView::from(&next));
        let response = respond(StatusCode::OK, &next);
        let verb = if approve { "approved" } else { "rejected" };
        let summary = format!(
            "{verb} application {} of directory {} for tenant {tenant_id}",
            next.app_id,
            next.directory_id.map_or_else(|| "none".to_owned(), |d| d.to_string())
        );
        let note = AuditNote::new("clients", id, Some(&before), Some(&after), summary).in_tenant(tenant_id);
        let ledger = ledger(req, &response, note);
        let decided = match state.store.decide_api_client(tenant_id, id, version, &decision, ledger.as_ref()).await {
            Err(StoreError::Conflict(reason)) => return Err(AppError::new(ErrorCode::Conflict).with_detail(reason)),
            decided => decided?,
        };
        took_effect(decided, tenant_client_not_found)?;
        state.lookups.invalidate();
        Ok(response)
    })
    .await
}
