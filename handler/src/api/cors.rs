//! Browsers' cross-origin calls (CORS, the Fetch standard): the preflight answered here, before authentication
//! and metering (a preflight carries no credentials and is no call of the API), and the fields every answer to a
//! page of an allowed origin carries so its script can read the answer, problems included.
//!
//! Which origins may call is `METERLINE_CORS_ALLOWED_ORIGINS` (`config::AllowedOrigins`), registered as app data.
//! The API's credentials are bearer tokens a page must hold and send itself, never cookies, so answers never say
//! `Access-Control-Allow-Credentials` and `*` is a possible setting.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::http::header::{self, HeaderMap, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, HttpResponse, ResponseError as _, web};

use crate::api::operations::{RouteTable, routed_path};
use crate::config::AllowedOrigins;
use crate::error::{AppError, ErrorCode};

/// The answer fields a page's script may read beyond the CORS-safelisted ones (`Content-Type`, `Cache-Control`,
/// …): every field the API sets for its clients (docs/api-design.md).
const EXPOSED: &str = "ETag, Location, Link, Retry-After, RateLimit, RateLimit-Policy, x-request-id, \
                       x-ms-error-code, Idempotency-Replayed, Deprecation, Sunset, WWW-Authenticate, Allow, \
                       Accept-Encoding, Content-Disposition";

/// How long a browser may reuse a preflight's answer, in seconds (Chromium keeps it at most 7 200 s). A removed
/// origin still loses access at once: every answer names the origins it is for.
const MAX_AGE_SECS: &str = "7200";

/// Middleware (app-wide, under `/api/`): answers preflights, and adds the CORS fields to the answers of calls
/// from a page of an allowed origin.
pub async fn apply(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, Error> {
    // The path as the router reads it: `/%61pi/...` is served as `/api/...`, so it is answered the same here.
    if !routed_path(req.match_info()).starts_with("/api/") {
        return Ok(next.call(req).await?.map_into_left_body());
    }
    let allowed = req.app_data::<web::Data<AllowedOrigins>>().cloned().filter(|allowed| !allowed.is_none());
    let origin = req.headers().get(header::ORIGIN).cloned();
    let allow_origin =
        origin.as_ref().zip(allowed.as_ref()).and_then(|(origin, allowed)| allow_origin(allowed, origin));
    if req.method() == Method::OPTIONS && req.headers().contains_key(header::ACCESS_CONTROL_REQUEST_METHOD) {
        let mut res = match (&origin, allow_origin) {
            (_, Some(allow_origin)) => preflight(&req, allow_origin),
            (origin, None) => refused(origin.as_ref()),
        };
        // As on every `/api/v1` answer (`routes::configure`), which a preflight never reaches.
        for (name, value) in crate::api::V1_ANSWER_FIELDS {
            res.headers_mut().insert(name, HeaderValue::from_static(value));
        }
        return Ok(req.into_response(res).map_into_right_body());
    }
    let mut res = next.call(req).await?;
    if let Some(allowed) = allowed {
        decorate(res.headers_mut(), &allowed, allow_origin);
    }
    Ok(res.map_into_left_body())
}

/// The `Access-Control-Allow-Origin` value for a page of `origin`, or `None` when it may not call.
fn allow_origin(allowed: &AllowedOrigins, origin: &HeaderValue) -> Option<HeaderValue> {
    let text = origin.to_str().ok()?;
    match allowed {
        AllowedOrigins::Any => Some(HeaderValue::from_static("*")),
        listed if listed.allows(text) => Some(origin.clone()),
        _ => None,
    }
}

/// The CORS fields of an answer under `/api/`. With listed origins, every answer says `Vary: Origin`, also one
/// to no or another origin: a cache (the browser's own included) must not hand an answer made for one page to
/// another. With `*`, every answer is the same for every page and says so whether or not it was asked.
fn decorate(headers: &mut HeaderMap, allowed: &AllowedOrigins, allow_origin: Option<HeaderValue>) {
    let allow_origin = match allowed {
        AllowedOrigins::Any => Some(HeaderValue::from_static("*")),
        AllowedOrigins::Listed(_) => {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
            allow_origin
        }
    };
    if let Some(allow_origin) = allow_origin {
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, HeaderValue::from_static(EXPOSED));
    }
}

/// `204` for an allowed page's preflight: the methods the path allows (as a 405 would list them) and the request
/// fields it asked for. A method the path does not allow is left out, so the browser stops there.
fn preflight(req: &ServiceRequest, allow_origin: HeaderValue) -> HttpResponse {
    let mut res = HttpResponse::NoContent();
    res.insert_header((header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin.clone()));
    let allow = req.app_data::<web::Data<RouteTable>>().and_then(|routes| routes.allow(routed_path(req.match_info())));
    if let Some(allow) = allow {
        let methods = HeaderValue::from_str(&allow).expect("method names are valid header text");
        res.insert_header((header::ACCESS_CONTROL_ALLOW_METHODS, methods));
    }
    // Any field a page asks to send: what authorizes a call is the token it carries, not which fields it sends.
    if let Some(fields) = req.headers().get(header::ACCESS_CONTROL_REQUEST_HEADERS).filter(|f| field_names(f)) {
        res.insert_header((header::ACCESS_CONTROL_ALLOW_HEADERS, fields.clone()));
    }
    res.insert_header((header::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static(MAX_AGE_SECS)));
    let vary = if allow_origin == "*" {
        "Access-Control-Request-Method, Access-Control-Request-Headers"
    } else {
        "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
    };
    res.insert_header((header::VARY, HeaderValue::from_static(vary)));
    res.finish()
}

/// Whether `value` is a comma-separated list of field names (RFC 9110 tokens), as browsers send them.
fn field_names(value: &HeaderValue) -> bool {
    let is_tchar = |b: u8| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b);
    value.as_bytes().split(|&b| b == b',').all(|name| {
        let name = name.trim_ascii();
        !name.is_empty() && name.iter().all(|&b| is_tchar(b))
    })
}

/// `403` for a preflight from a page whose origin may not call (or with no `Origin` at all): no CORS field, so
/// the browser stops.
fn refused(origin: Option<&HeaderValue>) -> HttpResponse {
    let whose = match origin {
        Some(origin) => {
            format!("pages of {:?}", String::from_utf8_lossy(origin.as_bytes()).chars().take(200).collect::<String>())
        }
        None => "a preflight without an Origin".to_owned(),
    };
    let mut res = AppError::new(ErrorCode::OriginNotAllowed)
        .with_detail(format!(
            "{whose} may not call this API from a browser; the service's operators list the origins that may"
        ))
        .error_response();
    res.headers_mut().append(header::VARY, HeaderValue::from_static("Origin"));
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requested_fields_are_echoed_only_when_they_are_field_names() {
        for ok in ["authorization", "authorization, content-type,if-match", "x-ms-client-request-id"] {
            assert!(field_names(&HeaderValue::from_static(ok)), "{ok}");
        }
        for bad in ["", "authorization,", "a b", "a;b", "(x)"] {
            assert!(!field_names(&HeaderValue::from_static(bad)), "{bad:?}");
        }
    }
}
