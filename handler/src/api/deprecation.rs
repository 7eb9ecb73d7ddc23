//! API deprecation: one table of deprecated operations, marked in the OpenAPI document and announced on
//! every response with `Deprecation` (RFC 9745), `Sunset` (RFC 8594) and a `Link` to the successor.
//!
//! The policy (docs/api-design.md): an operation is deprecated for at least six months before its
//! sunset; after the sunset it may answer 410. Major versions live in the path (`/api/v1`).

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use chrono::{DateTime, Utc};

/// One deprecated operation.
#[derive(Debug, Clone, Copy)]
pub struct Deprecation {
    pub operation_id: &'static str,
    /// When it was deprecated (RFC 3339).
    pub since: &'static str,
    /// When it stops working (RFC 3339).
    pub sunset: &'static str,
    /// The operation to use instead.
    pub successor: &'static str,
}

/// Every deprecated operation.
pub const DEPRECATED: &[Deprecation] = &[Deprecation {
    operation_id: "getWhoAmI",
    since: "2026-11-01T00:00:00Z",
    sunset: "2027-06-01T00:00:00Z",
    successor: "/api/v1/me",
}];

fn parse(raw: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(raw).expect("deprecation dates are RFC 3339").with_timezone(&Utc)
}

/// The headers announcing `d`.
pub fn headers(d: &Deprecation) -> [(HeaderName, HeaderValue); 3] {
    let since = format!("@{}", parse(d.since).timestamp());
    let sunset = parse(d.sunset).format("%a, %d %b %Y %H:%M:%S GMT").to_string();
    let link = format!("<{}>; rel=\"successor-version\"", d.successor);
    [
        (HeaderName::from_static("deprecation"), HeaderValue::from_str(&since).expect("header text")),
        (HeaderName::from_static("sunset"), HeaderValue::from_str(&sunset).expect("header text")),
        (HeaderName::from_static("link"), HeaderValue::from_str(&link).expect("header text")),
    ]
}

/// Marks the table's operations `deprecated: true` in the document and adds `x-sunset`.
pub fn mark(openapi: &mut utoipa::openapi::OpenApi) {
    for item in openapi.paths.paths.values_mut() {
        for op in
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
        {
            if let Some(d) = DEPRECATED.iter().find(|d| op.operation_id.as_deref() == Some(d.operation_id)) {
                op.deprecated = Some(utoipa::openapi::Deprecated::True);
                // The headers every answer carries, declared on the operation's own answers so a client reads them.
                for response in op.responses.responses.values_mut() {
                    let utoipa::openapi::RefOr::T(response) = response else { continue };
                    for (name, about) in [
                        ("Deprecation", "When the operation was deprecated (RFC 9745), e.g. `@1793491200`."),
                        ("Sunset", "When it stops working (RFC 8594), an HTTP date."),
                        ("Link", "The operation to use instead: `<path>; rel=\"successor-version\"`."),
                    ] {
                        let header = utoipa::openapi::RefOr::T(super::contract::text_header(about));
                        response.headers.entry(name.to_owned()).or_insert(header);
                    }
                }
                let mut extensions = op.extensions.take().unwrap_or_default();
                extensions.insert("x-sunset".into(), serde_json::Value::String(d.sunset.into()));
                op.extensions = Some(extensions);
            }
        }
    }
}

/// Adds the headers to every response of a deprecated operation, errors included.
pub async fn announce(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let deprecation =
        super::operations::operation_of(&req).and_then(|op| DEPRECATED.iter().find(|d| *d.operation_id == *op));
    let mut res = next.call(req).await?;
    if let Some(d) = deprecation {
        for (name, value) in headers(d) {
            res.headers_mut().insert(name, value);
        }
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_use_the_rfc_formats_and_sunsets_give_six_months() {
        for d in DEPRECATED {
            let [deprecation, sunset, link] = headers(d);
            assert!(deprecation.1.to_str().unwrap().starts_with('@'));
            assert!(sunset.1.to_str().unwrap().ends_with(" GMT"));
            assert!(link.1.to_str().unwrap().contains("successor-version"));
            assert!(
                parse(d.sunset) - parse(d.since) >= chrono::Duration::days(180),
                "{}: six months' notice",
                d.operation_id
            );
        }
    }
}
