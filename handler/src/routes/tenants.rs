//! `/api/v1/tenants` (Platform.Admin): the tenant directory. Reads for now; writes land with the admin API.

use actix_web::http::header;
use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::auth::guard::{Authorized, PlatformAdmin};
use crate::error::{AppError, ErrorCode, FieldError};
use crate::state::AppState;
use crate::store::{Tenant, TenantCursor};

/// A tenant, as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantView {
    pub id: Uuid,
    /// The Entra directory (`tid`) whose tokens map to this tenant.
    pub entra_tenant_id: Option<Uuid>,
    pub name: String,
    /// `active`, `suspended` or `closed`.
    pub status: &'static str,
    /// The plan code.
    pub plan: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&Tenant> for TenantView {
    fn from(t: &Tenant) -> Self {
        TenantView {
            id: t.id,
            entra_tenant_id: t.entra_tenant_id,
            name: t.name.clone(),
            status: t.status.as_str(),
            plan: t.plan_code.clone(),
            created_at: t.created_at,
            updated_at: t.updated_at,
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
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    /// Page size, 1 to 100 (default 25).
    pub maxpagesize: Option<u32>,
    /// Opaque continuation token from a previous `nextLink`.
    pub cursor: Option<String>,
}

fn etag(t: &Tenant) -> String {
    format!("\"{}\"", t.version)
}

fn encode_cursor(c: &TenantCursor) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{}|{}", c.created_at.timestamp_micros(), c.id))
}

fn decode_cursor(raw: &str) -> Option<TenantCursor> {
    use base64::Engine as _;
    let text = String::from_utf8(base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(raw).ok()?).ok()?;
    let (micros, id) = text.split_once('|')?;
    Some(TenantCursor { created_at: DateTime::from_timestamp_micros(micros.parse().ok()?)?, id: id.parse().ok()? })
}

/// Lists tenants, oldest first, in keyset pages.
#[utoipa::path(
    tag = "tenants",
    operation_id = "listTenants",
    security(("entra" = ["Platform.Admin"])),
    params(ListParams),
    responses(
        (status = 200, description = "A page of tenants", body = TenantList),
        (status = 400, description = "Bad paging parameters", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 401, description = "No valid bearer token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Platform.Admin is required", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants")]
pub async fn list_tenants(
    _auth: Authorized<PlatformAdmin>,
    params: web::Query<ListParams>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let size = params.maxpagesize.unwrap_or(25);
    if !(1..=100).contains(&size) {
        return Err(AppError::new(ErrorCode::InvalidQuery).with_field_errors(vec![FieldError::new(
            "maxpagesize",
            "range",
            "must be between 1 and 100",
        )]));
    }
    let after = match params.cursor.as_deref() {
        None => None,
        Some(raw) => Some(decode_cursor(raw).ok_or_else(|| {
            AppError::new(ErrorCode::InvalidQuery).with_field_errors(vec![FieldError::new(
                "cursor",
                "invalid",
                "not a cursor this API issued",
            )])
        })?),
    };
    let page = state.store.list_tenants(after.as_ref(), size).await?;
    let next_link =
        page.next.as_ref().map(|c| format!("/api/v1/tenants?maxpagesize={size}&cursor={}", encode_cursor(c)));
    Ok(HttpResponse::Ok().json(TenantList { value: page.items.iter().map(TenantView::from).collect(), next_link }))
}

/// Reads one tenant.
#[utoipa::path(
    tag = "tenants",
    operation_id = "getTenant",
    security(("entra" = ["Platform.Admin"])),
    params(("id" = Uuid, Path, description = "The tenant id")),
    responses(
        (status = 200, description = "The tenant; ETag carries its version", body = TenantView),
        (status = 401, description = "No valid bearer token", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 403, description = "Platform.Admin is required", body = crate::error::Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such tenant", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/tenants/{id}")]
pub async fn get_tenant(
    _auth: Authorized<PlatformAdmin>,
    id: web::Path<String>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let not_found = || AppError::new(ErrorCode::NotFound).with_detail("no tenant with this id");
    let id: Uuid = id.parse().map_err(|_| not_found())?;
    let tenant = state.store.get_tenant(id).await?.ok_or_else(not_found)?;
    Ok(HttpResponse::Ok().insert_header((header::ETAG, etag(&tenant))).json(TenantView::from(&tenant)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        let c = TenantCursor {
            created_at: DateTime::from_timestamp_micros(1_700_000_000_123_456).unwrap(),
            id: Uuid::from_u128(7),
        };
        assert_eq!(decode_cursor(&encode_cursor(&c)), Some(c));
        assert_eq!(decode_cursor("not-a-cursor"), None);
    }
}
