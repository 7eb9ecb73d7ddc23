//! The request stages that hold a call to its operation's contract (`api::contract`): the query and body checks before the handler, and in debug builds the check that every answer's status is declared.
//!
//! They sit above `auth::guard`, because the checks run only for a caller who holds the operation's permission:
//! a caller without it learns nothing about what a valid body would be, and gets the handler's 403.

use std::sync::Arc;

use actix_web::HttpMessage as _;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::middleware::Next;
use actix_web::web;

use crate::api::contract::Contracts;
use crate::api::operations::operation_of;
use crate::auth::Permission;
use crate::auth::guard::Caller;
use crate::error::AppError;

/// Middleware (innermost of `/api/v1`): the query string and body of an admitted call against its operation's
/// contract; a call that passes reaches its handler with the body it sent.
pub async fn check(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let contracts = req.app_data::<web::Data<Contracts>>().cloned();
    let (Some(contracts), Some(operation)) = (contracts, operation_of(&req)) else {
        return next.call(req).await.map(ServiceResponse::map_into_left_body);
    };
    if permitted(&req, contracts.permission(&operation))
        && let Err(refused) = contracts.check_request(&operation, &mut req).await
    {
        let (request, _) = req.into_parts();
        return Ok(ServiceResponse::from_err(refused, request).map_into_right_body());
    }
    next.call(req).await.map(ServiceResponse::map_into_left_body)
}

/// Whether the caller holds the operation's permission (`None`, `anonymous` and `authenticated` need none
/// beyond a caller); if not, the handler's `Authorized<P>` answers the 403.
fn permitted(req: &ServiceRequest, permission: Option<&str>) -> bool {
    let Some(caller) = req.extensions().get::<Arc<Caller>>().cloned() else { return false };
    match permission.and_then(Permission::parse) {
        Some(permission) => caller.permissions.contains(permission),
        None => true,
    }
}

/// Middleware (debug builds, app-wide): an answer whose status its operation does not declare becomes a 500
/// naming the status, so a test that provokes it fails where it happens. Requests outside every operation
/// (404, 405) and server errors (already failures) pass as they are.
pub async fn conformance(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let contracts = req.app_data::<web::Data<Contracts>>().cloned();
    let operation = operation_of(&req);
    let res = next.call(req).await?;
    let status = res.status();
    let (Some(contracts), Some(op)) = (contracts, operation) else { return Ok(res.map_into_left_body()) };
    if status.is_server_error() || contracts.declares(&op, status.as_u16()) {
        return Ok(res.map_into_left_body());
    }
    let err =
        AppError::internal(anyhow::anyhow!("{op} answered {status}, which its OpenAPI operation does not declare"));
    let (request, _) = res.into_parts();
    Ok(ServiceResponse::from_err(err, request).map_into_right_body())
}
