//! Liveness and readiness: `GET /api/health` (the process answers) and `GET /api/health/ready` (the store answers).

use actix_web::{HttpResponse, get, web};
use serde::Serialize;

use crate::error::AppError;
use crate::state::AppState;

/// Body of both health answers.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct HealthStatus {
    /// `ok` (live) or `ready`.
    pub status: &'static str,
    /// The handler's version.
    pub version: &'static str,
    /// The store kind, on readiness answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store: Option<&'static str>,
}

/// Liveness: answers as long as the process serves HTTP. Touches nothing else.
#[utoipa::path(
    tag = "operations",
    operation_id = "getHealth",
    responses((status = 200, description = "The handler is alive", body = HealthStatus))
)]
#[get("/health")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(HealthStatus { status: "ok", version: env!("CARGO_PKG_VERSION"), store: None })
}

/// Readiness: answers 200 only when the store answers a query.
#[utoipa::path(
    tag = "operations",
    operation_id = "getReadiness",
    responses(
        (status = 200, description = "The handler and its store are ready", body = HealthStatus),
        (status = 503, description = "The store is unreachable", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    state.store.ping().await?;
    Ok(HttpResponse::Ok().json(HealthStatus {
        status: "ready",
        version: env!("CARGO_PKG_VERSION"),
        store: Some(state.store.kind()),
    }))
}
