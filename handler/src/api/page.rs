//! The pages the handler serves beside the API (the reference page at `/api/docs`, the dashboard at
//! `/api/dashboard`): how one is routed, the same for each.
//!
//! A page lives at `<path>/`, so the relative links of its files stay under it: `<path>` redirects there (308,
//! keeping the query), `<path>/{file}` is the page's own handler (the empty name being its `index.html`), and any
//! method but GET and HEAD on either answers 405 problem+json with `Allow`. Pages are plain actix resources, not
//! API operations: they are public and appear nowhere in the OpenAPI document.

use actix_web::http::header::{self, HeaderValue};
use actix_web::{FromRequest, Handler, HttpRequest, HttpResponse, Responder, guard, web};

use crate::error::{AppError, ErrorCode};

/// Registers the page at `path` (no trailing slash), its files served by `file`. Register it before the `/api`
/// scope, which would otherwise swallow the path.
pub fn serve<'c, F, Args>(cfg: &'c mut web::ServiceConfig, path: &'static str, file: F) -> &'c mut web::ServiceConfig
where
    F: Handler<Args>,
    Args: FromRequest + 'static,
    F::Output: Responder + 'static,
{
    // A scope matches its fixed prefix by comparing strings; only a request under it meets the file
    // template's regular expression (actix tries each app-level route in turn, and these come before the API).
    cfg.service(
        web::scope(path)
            .service(
                web::resource("")
                    .route(web::route().guard(get_or_head()).to(move |req: HttpRequest| redirect_to_slash(req, path)))
                    .default_service(web::to(method_not_allowed)),
            )
            .service(
                web::resource("/{file:.*}")
                    .route(web::route().guard(get_or_head()).to(file))
                    .default_service(web::to(method_not_allowed)),
            ),
    )
}

fn get_or_head() -> impl guard::Guard {
    guard::Any(guard::Get()).or(guard::Head())
}

/// `GET <path>`: the page lives at `<path>/`.
async fn redirect_to_slash(req: HttpRequest, path: &'static str) -> HttpResponse {
    let location = match req.query_string() {
        "" => format!("{path}/"),
        query => format!("{path}/?{query}"),
    };
    HttpResponse::PermanentRedirect().insert_header((header::LOCATION, location)).finish()
}

/// Any other method on a page's paths.
async fn method_not_allowed(req: HttpRequest) -> Result<HttpResponse, AppError> {
    crate::api::operations::refuse_unknown_method(req.method())?;
    Err(AppError::new(ErrorCode::MethodNotAllowed)
        .with_detail(format!("{} is not allowed on {}; allowed: GET, HEAD", req.method(), req.path()))
        .with_header(header::ALLOW, HeaderValue::from_static("GET, HEAD")))
}
