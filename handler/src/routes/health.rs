//! Liveness and readiness: `GET /api/health` (the process answers) and `GET /api/health/ready` (the store
//! answers, and every dependency's circuit breaker is listed; an open store breaker is not ready, a half-open one
//! is ready once the store takes a write).

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
    /// The full-text index document search uses (`fts5` or `word-index`), on readiness answers.
    #[serde(rename = "searchIndex", skip_serializing_if = "Option::is_none")]
    pub search_index: Option<&'static str>,
    /// The circuit breaker of each dependency this process calls, on readiness answers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub breakers: Vec<BreakerStatus>,
}

/// One dependency's circuit breaker, as readiness shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BreakerStatus {
    /// `store`, `openid`, `servicebus` or `keyvault`.
    pub dependency: &'static str,
    /// `closed` (calls pass), `open` (calls are refused at once) or `half-open` (one probe call at a time).
    #[schema(example = "closed")]
    pub state: &'static str,
    /// Seconds until an open breaker lets a probe through.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_seconds: Option<u64>,
}

/// The breakers' states now.
pub fn breaker_statuses(state: &AppState) -> Vec<BreakerStatus> {
    state
        .breakers
        .iter()
        .map(|breaker| {
            let current = breaker.state();
            BreakerStatus {
                dependency: breaker.name(),
                state: current.as_str(),
                retry_after_seconds: (current == crate::resilience::BreakerState::Open)
                    .then(|| breaker.retry_after().as_secs().max(1)),
            }
        })
        .collect()
}

/// Liveness: answers as long as the process serves HTTP. Touches nothing else.
#[utoipa::path(
    tag = "operations",
    operation_id = "getHealth",
    responses((status = 200, description = "The handler is alive", body = HealthStatus))
)]
#[get("/health")]
pub async fn live() -> HttpResponse {
    HttpResponse::Ok().json(HealthStatus {
        status: "ok",
        version: env!("CARGO_PKG_VERSION"),
        store: None,
        search_index: None,
        breakers: Vec::new(),
    })
}

/// Readiness: answers 200 only when the store answers a query and its circuit breaker is not open, and while the
/// breaker is half-open only when the store takes a write (the breaker's probe); lists the state of every
/// dependency's breaker (a 503 lists them in its `breakers` member).
#[utoipa::path(
    tag = "operations",
    operation_id = "getReadiness",
    responses(
        (status = 200, description = "The handler and its store are ready", body = HealthStatus),
        (status = 503, description = "The store is unreachable, its circuit breaker is open, or half-open and a write still fails", body = crate::error::Problem, content_type = "application/problem+json")
    )
)]
#[get("/health/ready")]
pub async fn ready(state: web::Data<AppState>) -> Result<HttpResponse, AppError> {
    use crate::resilience::{BreakerState, Refusal, RefusalKind};
    let store_breaker = state.store.breaker();
    let listed = |err: AppError| err.with_member("breakers", serde_json::json!(breaker_statuses(&state)));
    match store_breaker.state() {
        BreakerState::Open => {
            let retry_after = store_breaker.retry_after();
            return Err(listed(AppError::from(Refusal {
                dependency: "store",
                kind: RefusalKind::CircuitOpen,
                retry_after,
            })));
        }
        // The probe decides: readiness is asked when no traffic comes (the instance is out of rotation), and
        // a read answers from a store whose writes still fail, so a half-open store proves it takes a write.
        BreakerState::HalfOpen => state.store.probe_write().await.map_err(|err| listed(err.into()))?,
        BreakerState::Closed => state.store.ping().await?,
    }
    Ok(HttpResponse::Ok().json(HealthStatus {
        status: "ready",
        version: env!("CARGO_PKG_VERSION"),
        store: Some(state.store.kind()),
        search_index: Some(state.store.search_index()),
        breakers: breaker_statuses(&state),
    }))
}
