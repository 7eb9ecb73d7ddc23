//! `/api/v1/clients` (Tenant.Admin): the applications registered to the caller's own tenant, with the roles each may use.
//!
//! A registered application's tokens map to this tenant whatever directory they come from, and its
//! effective permissions never exceed the roles granted here.

use actix_web::http::header::{self, ContentType};
use actix_web::{HttpRequest, HttpResponse, delete, get, post, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;
use validator::Validate;

use crate::api::list::ListEnvelope;
use crate::api::validation::validate;
use crate::auth::Permission;
use crate::auth::guard::{Authorized, TenantAdmin};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::metering::audit::AuditNote;
use crate::metering::ledger::ledger;
use crate::state::AppState;
use crate::store::{ApiClient, StoreError, Update};

/// Registers an application.
#[derive(Debug, Clone, Serialize, Deserialize, Validate, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[schema(example = json!({"appId": "9b2b6c1e-4f4d-4a53-9a5e-3f0d1c2b7a61", "displayName": "Billing sync",
    "roles": ["Documents.Read", "Usage.Read"]}))]
pub struct ClientCreate {
    /// The Entra application (client) id, as tokens carry it in `azp` or `appid`.
    #[validate(length(min = 1, max = 128))]
    pub app_id: String,
    #[validate(length(min = 1, max = 200))]
    pub display_name: String,
    /// Roles the application may use in this tenant (at least one); `Platform.Admin` cannot be granted here.
    #[validate(length(min = 1, max = 5))]
    pub roles: Vec<String>,
}

/// A registered application.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClientView {
    pub id: Uuid,
    pub app_id: String,
    pub display_name: String,
    pub roles: Vec<String>,
    /// `active` or `revoked`.
    pub status: &'static str,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
}

impl From<&ApiClient> for ClientView {
    fn from(c: &ApiClient) -> Self {
        ClientView {
            id: c.id,
            app_id: c.app_id.clone(),
            display_name: c.display_name.clone(),
            roles: c.roles.clone(),
            status: if c.active { "active" } else { "revoked" },
            created_at: c.created_at,
            revoked_at: c.revoked_at,
        }
    }
}

/// The list envelope of clients, for the OpenAPI document.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct ClientList {
    pub value: Vec<ClientView>,
}

/// Registers an application with the caller's tenant.
#[utoipa::path(
    tag = "clients",
    operation_id = "registerClient",
    security(("entra" = ["Tenant.Admin"])),
    request_body(content = ClientCreate, content_type = "application/json"),
    responses(
        (status = 201, description = "Registered", body = ClientView),
        (status = 400, description = "Malformed JSON", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Tenant.Admin is required", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 409, description = "The application is registered already (perhaps with another tenant)", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or roles", body = crate::error::Problem, content_type = "application/problem+json")
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
    let input = input.into_inner();
    validate(&input)?;
    if auth.principal.app_id.as_deref() == Some(input.app_id.as_str()) {
        // Registering the calling application would cap its own roles, and could lock its caller out.
        return Err(AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![FieldError::new(
            "appId",
            "self",
            "an application cannot register itself; use another Tenant.Admin application",
        )]));
    }
    let mut roles = Vec::new();
    let mut errors = Vec::new();
    for (i, role) in input.roles.iter().enumerate() {
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
    let client = ApiClient {
        id: state.ids.new_id(),
        tenant_id,
        app_id: input.app_id,
        display_name: input.display_name,
        roles,
        active: true,
        created_at: state.clock.now(),
        revoked_at: None,
        version: 1,
    };
    let view = ClientView::from(&client);
    let response = HttpResponse::Created()
        .insert_header((header::LOCATION, format!("/api/v1/clients/{}", client.id)))
        .insert_header(ContentType::json())
        .json(&view);
    let summary = format!("registered application {} with roles {}", client.app_id, client.roles.join(","));
    let ledger = ledger(&req, &response, AuditNote::new("clients", client.id, None, Some(&view), summary));
    match state.store.create_api_client(&client, ledger.as_ref()).await {
        Ok(()) => {
            state.lookups.invalidate();
            Ok(response)
        }
        Err(StoreError::Conflict(_)) => {
            Err(AppError::new(ErrorCode::Conflict).with_detail("this application is registered already"))
        }
        Err(e) => Err(e.into()),
    }
}

/// Lists the caller's tenant's applications, oldest first.
#[utoipa::path(
    tag = "clients",
    operation_id = "listClients",
    security(("entra" = ["Tenant.Admin"])),
    responses(
        (status = 200, description = "All of the tenant's applications", body = ClientList),
        (status = 401, description = "No valid bearer token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Tenant.Admin is required", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/clients")]
pub async fn list_clients(auth: Authorized<TenantAdmin>, state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    let clients = state.store.list_api_clients(auth.tenant_id()?).await?;
    Ok(HttpResponse::Ok().json(ListEnvelope {
        value: clients.iter().map(ClientView::from).collect(),
        next_link: None,
        count: None,
    }))
}

/// Revokes an application: its tokens stop working for this tenant at once. Revoking twice is harmless.
#[utoipa::path(
    tag = "clients",
    operation_id = "revokeClient",
    security(("entra" = ["Tenant.Admin"])),
    params(("id" = Uuid, Path, description = "The registration id")),
    responses(
        (status = 200, description = "Revoked", body = ClientView),
        (status = 401, description = "No valid bearer token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Tenant.Admin is required", body = crate::error::Problem, content_type = "application/problem+json"),
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
    // The row as the revocation leaves it: an active client is revoked now; a revoked one stays as it is.
    let now = state.clock.now();
    let mut next = current.clone();
    if next.active {
        (next.active, next.revoked_at, next.version) = (false, Some(now), next.version + 1);
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
