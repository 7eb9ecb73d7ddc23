//! API-client registrations: `/api/v1/clients` (Tenant.Admin: the caller's own tenant's applications) and
//! `/api/v1/tenants/{tenantId}/clients` (Platform.Admin: any tenant's, and the approval of registrations for
//! another directory).
//!
//! A registration is bound to the directory (`tid`) its tokens carry: it applies only to tokens of that
//! directory and application, and never changes what a token from any other directory can do. One for the
//! tenant's own directory is active at once; one for another directory (a partner's application) waits for a
//! platform administrator. Answers never reveal whether another tenant registered the same application.

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use crate::api::list::ListEnvelope;
use crate::api::validation::validate;
use crate::auth::Permission;
use crate::auth::guard::{Authorized, PlatformAdmin, TenantAdmin};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::metering::audit::AuditNote;
use crate::metering::ledger::ledger;
use crate::state::AppState;
use crate::store::{ApiClient, ClientDecision, ClientStatus, StoreError, Update};

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
    #[validate(length(min = 1, max = 128))]
    #[schema(min_length = 1, max_length = 128)]
    pub app_id: String,
    /// The directory (`tid`) the application's tokens will carry. Default: the tenant's own directory, where the
    /// registration is active at once; any other directory (a partner's application) needs a platform
    /// administrator's approval and answers 202 with the registration `pending`.
    #[serde(default)]
    pub directory_id: Option<Uuid>,
    #[validate(length(min = 1, max = 200))]
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
    pub roles: Vec<String>,
    /// `pending` (waits for a platform administrator), `active`, `rejected` or `revoked`.
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// When a platform administrator approved or rejected it (registrations for another directory only).
    pub decided_at: Option<DateTime<Utc>>,
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
        }
    }
}

/// The list envelope of clients, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClientList {
    pub value: Vec<ClientView>,
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
    if auth.principal.app_id.as_deref() == Some(input.app_id.as_str()) {
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
        app_id: input.app_id,
        display_name: input.display_name,
        roles,
        status,
        created_at: state.clock.now(),
        revoked_at: None,
        decided_by: None,
        decided_at: None,
        version: 1,
    };
    let view = ClientView::from(&client);
    let mut response = if status == ClientStatus::Active { HttpResponse::Created() } else { HttpResponse::Accepted() };
    let response = response
        .insert_header((header::LOCATION, format!("/api/v1/clients/{}", client.id)))
        .insert_header(ContentType::json())
        .json(&view);
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

/// Lists the caller's tenant's applications, oldest first.
#[utoipa::path(
    tag = "clients",
    operation_id = "listClients",
    security(("entra" = ["Tenant.Admin"])),
    responses(
        (status = 200, description = "All of the tenant's applications", body = ClientList),
    )
)]
#[get("/clients")]
pub async fn list_clients(auth: Authorized<TenantAdmin>, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    client_list(&state, auth.tenant_id()?).await
}

async fn client_list(state: &AppState, tenant_id: Uuid) -> Result<HttpResponse, AppError> {
    let clients = state.store.list_api_clients(tenant_id).await?;
    Ok(HttpResponse::Ok().json(ListEnvelope {
        value: clients.iter().map(ClientView::from).collect(),
        next_link: None,
        count: None,
    }))
}

/// Revokes an application (or withdraws a pending registration): its tokens stop working for this tenant at
/// once. Revoking twice is harmless.
#[utoipa::path(
    tag = "clients",
    operation_id = "revokeClient",
    security(("entra" = ["Tenant.Admin"])),
    params(("id" = Uuid, Path, description = "The registration id")),
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
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail("no registration with this id in your tenant");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let tenant_id = auth.tenant_id()?;
    let current =
        state.store.list_api_clients(tenant_id).await?.into_iter().find(|c| c.id == id).ok_or_else(not_found)?;
    // The row as the revocation leaves it: a pending or active client is revoked now; any other stays as it is.
    let now = state.clock.now();
    let mut next = current.clone();
    if matches!(next.status, ClientStatus::Pending | ClientStatus::Active) {
        (next.status, next.revoked_at, next.version) = (ClientStatus::Revoked, Some(now), next.version + 1);
    }
    let (before, after) = (ClientView::from(&current), ClientView::from(&next));
    let response = HttpResponse::Ok().json(&after);
    let summary = format!("revoked application {}", next.app_id);
    let ledger = ledger(&req, &response, AuditNote::new("clients", next.id, Some(&before), Some(&after), summary));
    match state.store.revoke_api_client(tenant_id, id, now, ledger.as_ref()).await? {
        // A concurrent revocation may have won: answer the row as stored (its audit event keeps this request's view).
        Update::Updated(stored) => {
            state.lookups.invalidate();
            Ok(if stored == next { response } else { HttpResponse::Ok().json(ClientView::from(&stored)) })
        }
        Update::NotFound | Update::VersionMismatch { .. } => Err(not_found()),
    }
}

/// The path of a tenant's registration, for the platform administrator's operations.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TenantClientPath {
    tenant_id: String,
    id: String,
}

/// Lists any tenant's registrations, pending ones included, oldest first.
#[utoipa::path(
    tag = "clients",
    operation_id = "listTenantClients",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id")),
    responses(
        (status = 200, description = "All of the tenant's registrations", body = ClientList),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants/{tenantId}/clients")]
pub async fn list_tenant_clients(
    _auth: Authorized<PlatformAdmin>,
    tenant_id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail("no tenant with this id");
    let tenant_id: Uuid = tenant_id.parse().map_err(|_| not_found())?;
    state.store.get_tenant(tenant_id).await?.ok_or_else(not_found)?;
    client_list(&state, tenant_id).await
}

/// Approves a tenant's pending registration for another directory: from now on that directory's tokens for
/// the application map to the tenant, with at most the registration's roles.
#[utoipa::path(
    tag = "clients",
    operation_id = "approveClient",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), ("id" = Uuid, Path, description = "The registration id")),
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

/// Rejects a tenant's pending registration for another directory; it never applies.
#[utoipa::path(
    tag = "clients",
    operation_id = "rejectClient",
    security(("entra" = ["Platform.Admin"])),
    params(("tenantId" = Uuid, Path, description = "The tenant id"), ("id" = Uuid, Path, description = "The registration id")),
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
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail("no registration with this id in this tenant");
    let tenant_id: Uuid = path.tenant_id.parse().map_err(|_| not_found())?;
    let id: Uuid = path.id.parse().map_err(|_| not_found())?;
    let current =
        state.store.list_api_clients(tenant_id).await?.into_iter().find(|c| c.id == id).ok_or_else(not_found)?;
    let principal = &auth.principal;
    let by =
        principal.object_id.clone().or_else(|| principal.app_id.clone()).unwrap_or_else(|| principal.subject.clone());
    let decision = ClientDecision { approve, by, at: state.clock.now() };
    let mut next = current.clone();
    (next.status, next.decided_by, next.decided_at, next.version) = (
        if approve { ClientStatus::Active } else { ClientStatus::Rejected },
        Some(decision.by.clone()),
        Some(decision.at),
        next.version + 1,
    );
    let (before, after) = (ClientView::from(&current), ClientView::from(&next));
    let response = HttpResponse::Ok().json(&after);
    let verb = if approve { "approved" } else { "rejected" };
    let summary = format!(
        "{verb} application {} of directory {} for tenant {tenant_id}",
        next.app_id,
        next.directory_id.map_or_else(|| "none".to_owned(), |d| d.to_string())
    );
    let note = AuditNote::new("clients", id, Some(&before), Some(&after), summary).in_tenant(tenant_id);
    let ledger = ledger(req, &response, note);
    match state.store.decide_api_client(tenant_id, id, &decision, ledger.as_ref()).await {
        Ok(Update::Updated(stored)) => {
            state.lookups.invalidate();
            Ok(if stored == next { response } else { HttpResponse::Ok().json(ClientView::from(&stored)) })
        }
        Ok(Update::NotFound | Update::VersionMismatch { .. }) => Err(not_found()),
        Err(StoreError::Conflict(reason)) => Err(AppError::new(ErrorCode::Conflict).with_detail(reason)),
        Err(e) => Err(e.into()),
    }
}
