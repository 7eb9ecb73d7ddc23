//! `HEAD` is `GET` without the content (RFC 9110 §9.3.2), on every route that answers `GET`.
//!
//! actix-web routes by method and our routes declare `GET` only, so a `HEAD` was a 405. This stage, outermost of
//! the app, routes it as the `GET` it stands for; the same stages run (authentication, limits, metering: a `HEAD`
//! costs what its `GET` costs), and actix-http's encoder, which remembers that the request was a `HEAD`, sends the
//! answer's header fields, `Content-Length` included, without its content.

use actix_web::Error;
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;

/// Middleware: a `HEAD` request goes on as `GET`.
pub async fn as_get(
    mut req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    if req.method() == Method::HEAD {
        req.head_mut().method = Method::GET;
    }
    next.call(req).await
}
