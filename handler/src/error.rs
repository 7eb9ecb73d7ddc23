//! The one error type of Meterline, its catalog of stable codes, and its RFC 9457 problem+json rendering.
//!
//! Every failure a client can see, from any route, extractor or invocation, is an [`AppError`] carrying an
//! [`ErrorCode`]. The code fixes the HTTP status, the problem `type` URI, the `title` and the Azure-style `code`
//! member (also sent as `x-ms-error-code`), so one body serves RFC 9457 clients and Azure SDK clients alike.
//! Server errors keep their cause for the log and show the client an opaque body.
//!
//! Errors actix-web makes on its own (an extractor with no error handler of ours, such as `web::Bytes` over
//! its `PayloadConfig` limit, a path that does not parse, missing app data) are reshaped into the same
//! envelope by the [`problems`] middleware, so a client never sees a framework's plain-text error.

use std::fmt;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::StatusCode;
use actix_web::http::header::{self, HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{HttpResponse, ResponseError};
use serde::Serialize;

/// Media type of every error body.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// Prefix of Meterline's own problem `type` URIs; the slug of the [`ErrorCode`] follows.
pub const PROBLEM_TYPE_BASE: &str = "https://meterline.dev/problems/";

macro_rules! error_codes {
    ($( $(#[$doc:meta])* $variant:ident => ($status:expr, $slug:literal, $title:literal) ),+ $(,)?) => {
        /// Stable, machine-readable error codes. Renaming a slug is a breaking API change.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum ErrorCode {
            $( $(#[$doc])* $variant, )+
        }

        impl ErrorCode {
            /// Every code, in catalog order (the documentation and tests walk this list).
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant),+];

            /// The HTTP status this code is always answered with.
            pub fn status(self) -> StatusCode {
                match self { $(ErrorCode::$variant => $status,)+ }
            }

            /// The kebab-case slug used in the problem `type` URI.
            pub fn slug(self) -> &'static str {
                match self { $(ErrorCode::$variant => $slug,)+ }
            }

            /// The short, human-readable summary of the problem type (RFC 9457 `title`).
            pub fn title(self) -> &'static str {
                match self { $(ErrorCode::$variant => $title,)+ }
            }

            /// The Azure-style PascalCase `code` (also sent as `x-ms-error-code`).
            pub fn azure_code(self) -> &'static str {
                match self { $(ErrorCode::$variant => stringify!($variant),)+ }
            }
        }
    };
}

/// The header every problem carries its stable code in (Azure REST API guidelines), as the body's `code`.
pub const ERROR_CODE_HEADER: &str = "x-ms-error-code";

error_codes! {
    /// No route or resource matches the request.
    NotFound => (StatusCode::NOT_FOUND, "not-found", "Resource not found"),
    /// The route exists but not for this method; the response carries `Allow`.
    MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed", "Method not allowed"),
    /// The request's method is none that HTTP defines (RFC 9110 §9.1: an unrecognised method is 501).
    MethodNotImplemented => (StatusCode::NOT_IMPLEMENTED, "method-not-implemented", "Method not implemented"),
    /// A browser's preflight from a page whose origin may not call the API (`METERLINE_CORS_ALLOWED_ORIGINS`).
    OriginNotAllowed => (StatusCode::FORBIDDEN, "origin-not-allowed", "Origin not allowed"),
    /// The request body is larger than the configured limit.
    PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large", "Request body too large"),
    /// The request body did not arrive in time (nothing for a while, or not all of it within the bound): a client
    /// that sends part of a body and stops holds no connection and no buffer for long.
    RequestTimeout => (StatusCode::REQUEST_TIMEOUT, "request-timeout", "Request body too slow"),
    /// The request body has a media type the operation does not accept.
    UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "unsupported-media-type", "Unsupported media type"),
    /// The request body is not well-formed JSON.
    MalformedJson => (StatusCode::BAD_REQUEST, "malformed-json", "Malformed JSON body"),
    /// Arguments of a command (`handler rollup --from/--to`) that cannot work; the API answers a bad query
    /// parameter with `ValidationFailed`.
    InvalidQuery => (StatusCode::BAD_REQUEST, "invalid-query", "Invalid query parameters"),
    /// The request is well-formed but its values are not acceptable; `errors` lists each field.
    ValidationFailed => (StatusCode::UNPROCESSABLE_ENTITY, "validation-failed", "Validation failed"),
    /// No bearer token was sent; the response carries a `WWW-Authenticate: Bearer` challenge.
    Unauthenticated => (StatusCode::UNAUTHORIZED, "unauthenticated", "Authentication required"),
    /// The bearer token is malformed, expired, badly signed or not meant for this API.
    InvalidToken => (StatusCode::UNAUTHORIZED, "invalid-token", "Invalid access token"),
    /// The caller lacks the permission the operation requires; `detail` names it.
    InsufficientScope => (StatusCode::FORBIDDEN, "insufficient-scope", "Insufficient permission"),
    /// The caller's directory and application map to no Meterline tenant.
    UnknownTenant => (StatusCode::FORBIDDEN, "unknown-tenant", "Unknown tenant"),
    /// The caller's tenant is suspended or closed.
    TenantSuspended => (StatusCode::FORBIDDEN, "tenant-suspended", "Tenant suspended"),
    /// The calling application's registration was revoked.
    ClientRevoked => (StatusCode::FORBIDDEN, "client-revoked", "API client revoked"),
    /// The identity provider's signing keys cannot be loaded; retrying later may succeed.
    IdentityProviderUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "identity-provider-unavailable", "Identity provider unavailable"),
    /// A write came without `If-Match`; send the resource's ETag (or `*`).
    PreconditionRequired => (StatusCode::PRECONDITION_REQUIRED, "precondition-required", "Precondition required"),
    /// The ETag in `If-Match` is not the resource's current one; the response carries the current ETag.
    PreconditionFailed => (StatusCode::PRECONDITION_FAILED, "precondition-failed", "Precondition failed"),
    /// An idempotency key was reused with a different request.
    IdempotencyKeyReused => (StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused", "Idempotency key reused"),
    /// The caller sent requests faster than its plan allows; `Retry-After` says when to try again.
    RateLimited => (StatusCode::TOO_MANY_REQUESTS, "rate-limited", "Too many requests"),
    /// The tenant's monthly quota is used up and its plan blocks overage; `Retry-After` is the period's end.
    QuotaExceeded => (StatusCode::TOO_MANY_REQUESTS, "quota-exceeded", "Request cannot be satisfied as assigned quota has been exceeded"),
    /// The usage record of a request could not be written, so it is not answered with success.
    UsageNotRecorded => (StatusCode::SERVICE_UNAVAILABLE, "usage-not-recorded", "Usage could not be recorded"),
    /// The request conflicts with the current state, e.g. a unique key already exists.
    Conflict => (StatusCode::CONFLICT, "conflict", "Conflict"),
    /// A Functions host invocation names a function this handler does not implement.
    UnknownFunction => (StatusCode::NOT_FOUND, "unknown-function", "Unknown function"),
    /// A Functions host invocation payload does not have the shape of its trigger.
    InvalidInvocation => (StatusCode::BAD_REQUEST, "invalid-invocation", "Invalid invocation payload"),
    /// The store cannot be reached or refused the work; retrying later may succeed.
    StoreUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "store-unavailable", "Store unavailable"),
    /// A dependency (`dependency` member: `store`, `servicebus`, `keyvault`, `openid`) failed repeatedly, so its
    /// circuit breaker refuses calls for a while instead of waiting on it; `Retry-After` says when to try again.
    DependencyUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "dependency-unavailable", "Dependency unavailable"),
    /// Too much work already waits for a dependency (`dependency` member), so the request was refused at once
    /// instead of queueing into a timeout; nothing it asked for took effect. `Retry-After` says when to retry.
    Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "overloaded", "Service overloaded"),
    /// A default-mode HTTP invocation of the Functions host was answered with a body that is not text (an image, a
    /// font): that mode carries text only, so the client gets this instead; forwarding or proxying carries it.
    BinaryResponseUnsupported => (StatusCode::BAD_GATEWAY, "binary-response-unsupported", "Binary response not supported"),
    /// An unexpected failure inside Meterline; the cause is logged, never shown.
    Internal => (StatusCode::INTERNAL_SERVER_ERROR, "internal", "Internal server error"),
}

/// The IETF-registered problem type for an exceeded quota (draft-ietf-httpapi-ratelimit-headers).
pub const QUOTA_EXCEEDED_TYPE: &str = "https://iana.org/assignments/http-problem-types#quota-exceeded";

impl ErrorCode {
    /// The problem `type` URI of this code: Meterline's own, or a registered one where it exists.
    pub fn type_uri(self) -> String {
        match self {
            ErrorCode::QuotaExceeded => QUOTA_EXCEEDED_TYPE.to_owned(),
            _ => format!("{PROBLEM_TYPE_BASE}{}", self.slug()),
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.slug())
    }
}

/// One field-level failure inside a `validation-failed` (or similar) problem. A body field has a `pointer`, a
/// query parameter a `parameter`, a request header a `header` (the members RFC 9457's examples use).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// The offending field as a path (`title`, `tags[0]`), or the parameter's or header's name.
    pub field: String,
    /// Stable machine-readable reason, e.g. `required`, `type`, `enum`, `maxLength`, `unknown`.
    pub code: String,
    /// Human-readable explanation.
    pub message: String,
    /// The body field as a JSON Pointer (RFC 6901), e.g. `/tags/0`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pointer: Option<String>,
    /// The query parameter's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parameter: Option<String>,
    /// The request header's name.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// Where in the value the failure is, as a 1-based character offset (e.g. an unclosed quote in `q`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub position: Option<usize>,
}

impl FieldError {
    pub fn new(field: impl Into<String>, code: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            code: code.into(),
            message: message.into(),
            pointer: None,
            parameter: None,
            header: None,
            position: None,
        }
    }

    /// A body field's failure, at `pointer` (`/tags/0`); its `field` is the same path as `tags[0]`.
    pub fn body(pointer: &str, code: impl Into<String>, message: impl Into<String>) -> Self {
        let field = pointer.split('/').skip(1).map(|token| token.replace("~1", "/").replace("~0", "~")).fold(
            String::new(),
            |path, token| match token.parse::<usize>() {
                Ok(index) if !path.is_empty() => format!("{path}[{index}]"),
                _ if path.is_empty() => token,
                _ => format!("{path}.{token}"),
            },
        );
        let field = if field.is_empty() { "body".to_owned() } else { field };
        Self {
            pointer: Some(if pointer.is_empty() { String::new() } else { pointer.to_owned() }),
            ..Self::new(field, code, message)
        }
    }

    /// Marks the failure as the query parameter `name`'s.
    pub fn in_query(mut self, name: &str) -> Self {
        self.parameter = Some(name.to_owned());
        self
    }

    /// Points at the `position`th character (1-based) of the value.
    pub fn at(mut self, position: usize) -> Self {
        self.position = Some(position);
        self
    }

    /// Marks the failure as the request header `name`'s.
    pub fn in_header(mut self, name: &str) -> Self {
        self.header = Some(name.to_owned());
        self
    }
}

/// The wire form of every error: RFC 9457 members plus `code` (Azure style), `errors` and `requestId`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// URI identifying the problem type.
    #[serde(rename = "type")]
    pub type_uri: String,
    /// Short summary of the problem type.
    pub title: String,
    /// HTTP status code, repeated for convenience.
    pub status: u16,
    /// Explanation specific to this occurrence.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    /// Stable Azure-style error code; equals the `x-ms-error-code` header.
    pub code: String,
    /// Field-level failures, when the problem is about request values.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
    /// The request id also returned in `x-request-id`, for support.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub request_id: Option<String>,
    /// Extension members of a problem type, e.g. `violated-policies` of `quota-exceeded`. Not listed in the
    /// schema (which stays open to extension members, RFC 9457 §3.2): a flattened map would make it an `allOf`
    /// with an empty object, which generators read as "no members".
    #[serde(flatten)]
    #[schema(ignore)]
    pub members: serde_json::Map<String, serde_json::Value>,
}

/// The error type of every fallible operation that can reach a client.
pub struct AppError {
    code: ErrorCode,
    detail: Option<String>,
    errors: Vec<FieldError>,
    members: serde_json::Map<String, serde_json::Value>,
    headers: Vec<(HeaderName, HeaderValue)>,
    source: Option<anyhow::Error>,
    /// The cause was logged where it happened, once for every request it failed: not again per request.
    cause_logged: bool,
}

impl AppError {
    pub fn new(code: ErrorCode) -> Self {
        Self {
            code,
            detail: None,
            errors: Vec::new(),
            members: serde_json::Map::new(),
            headers: Vec::new(),
            source: None,
            cause_logged: false,
        }
    }

    /// A server-side failure: the cause is kept for the log; the client sees only the code.
    pub fn internal(cause: impl Into<anyhow::Error>) -> Self {
        Self::new(ErrorCode::Internal).with_source(cause)
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn with_field_errors(mut self, errors: Vec<FieldError>) -> Self {
        self.errors = errors;
        self
    }

    /// Field errors that are about query parameters: each names its parameter (`parameter`, its `field`).
    pub fn with_parameter_errors(self, errors: Vec<FieldError>) -> Self {
        self.with_field_errors(
            errors
                .into_iter()
                .map(|e| {
                    let name = e.field.clone();
                    e.in_query(&name)
                })
                .collect(),
        )
    }

    /// Adds an extension member to the problem body.
    pub fn with_member(mut self, name: &str, value: serde_json::Value) -> Self {
        self.members.insert(name.to_owned(), value);
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    pub fn with_source(mut self, cause: impl Into<anyhow::Error>) -> Self {
        self.source = Some(cause.into());
        self
    }

    /// Like [`with_source`](Self::with_source) for a cause that was logged where it happened, once for all the
    /// requests it failed (a usage batch that did not commit): the answer does not log it again per request.
    pub fn with_logged_source(mut self, cause: impl Into<anyhow::Error>) -> Self {
        self.cause_logged = true;
        self.with_source(cause)
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// Whether the error's cause is an `E` (an internal distinction that never reaches the answer).
    pub fn is_caused_by<E: std::fmt::Display + std::fmt::Debug + Send + Sync + 'static>(&self) -> bool {
        self.source.as_ref().is_some_and(|cause| cause.downcast_ref::<E>().is_some())
    }

    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    pub fn field_errors(&self) -> &[FieldError] {
        &self.errors
    }

    /// Builds the problem body; server errors never carry their internal detail.
    pub fn to_problem(&self, request_id: Option<String>) -> Problem {
        // Internal errors never show detail; 503s carry a deliberate, safe one. Field errors without a detail of
        // their own get one that counts them and says the first (api-design.md: every error has a detail).
        let detail = match (self.code, &self.detail, self.errors.first()) {
            (ErrorCode::Internal, ..) => None,
            (_, Some(detail), _) => Some(detail.clone()),
            (_, None, Some(first)) if self.errors.len() == 1 => Some(format!("`{}`: {}", first.field, first.message)),
            (_, None, Some(first)) => {
                Some(format!("{} fields failed validation; `{}`: {}", self.errors.len(), first.field, first.message))
            }
            (_, None, None) => None,
        };
        Problem {
            type_uri: self.code.type_uri(),
            title: self.code.title().to_owned(),
            status: self.code.status().as_u16(),
            detail,
            code: self.code.azure_code().to_owned(),
            errors: self.errors.clone(),
            request_id,
            members: self.members.clone(),
        }
    }
}

impl fmt::Debug for AppError {
    /// Prints the code, the detail and the whole cause chain, for the one log line a failure gets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.code)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        if let Some(source) = &self.source {
            write!(f, ": {source:#}")?;
        }
        Ok(())
    }
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.detail {
            Some(detail) => write!(f, "{}: {detail}", self.code.title()),
            None => f.write_str(self.code.title()),
        }
    }
}

impl std::error::Error for AppError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_ref().map(|e| e.as_ref() as &(dyn std::error::Error + 'static))
    }
}

impl ResponseError for AppError {
    fn status_code(&self) -> StatusCode {
        self.code.status()
    }

    fn error_response(&self) -> HttpResponse {
        if self.code.status().is_server_error() && !self.cause_logged {
            // The single place a server-side failure is logged, with its whole cause chain.
            tracing::error!(error.code = self.code.slug(), error.cause = ?self, "request failed");
        }
        let problem = self.to_problem(crate::request::current_id());
        let mut response = HttpResponse::build(self.code.status());
        response.insert_header((header::CONTENT_TYPE, PROBLEM_JSON));
        response.insert_header((ERROR_CODE_HEADER, self.code.azure_code()));
        for (name, value) in &self.headers {
            response.append_header((name.clone(), value.clone()));
        }
        response.body(serde_json::to_vec(&problem).unwrap_or_default())
    }
}

impl From<crate::resilience::Refusal> for AppError {
    fn from(refusal: crate::resilience::Refusal) -> Self {
        use crate::resilience::RefusalKind;
        let (code, detail) = match refusal.kind {
            RefusalKind::CircuitOpen => (
                ErrorCode::DependencyUnavailable,
                format!("{} is failing, so calls to it are paused; retry later", refusal.dependency),
            ),
            RefusalKind::Overloaded => (
                ErrorCode::Overloaded,
                format!(
                    "too much work is waiting for {}; the request was not carried out, retry later",
                    refusal.dependency
                ),
            ),
        };
        let seconds = refusal.retry_after.as_secs().max(1);
        AppError::new(code)
            .with_detail(detail)
            .with_member("dependency", serde_json::Value::String(refusal.dependency.to_owned()))
            .with_header(header::RETRY_AFTER, HeaderValue::from(seconds))
            // An expected answer while the dependency is down: counted, not logged per request.
            .with_logged_source(refusal)
    }
}

impl From<crate::store::StoreError> for AppError {
    fn from(err: crate::store::StoreError) -> Self {
        match err {
            crate::store::StoreError::Unavailable(ref cause) if crate::resilience::Refusal::find(cause).is_some() => {
                crate::resilience::Refusal::find(cause).expect("matched above").into()
            }
            crate::store::StoreError::Unavailable(_) => AppError::new(ErrorCode::StoreUnavailable)
                .with_detail("the store is temporarily unavailable; retry later")
                .with_header(header::RETRY_AFTER, HeaderValue::from_static("5"))
                .with_source(err),
            crate::store::StoreError::Conflict(_) => AppError::new(ErrorCode::Conflict)
                .with_detail("a resource with the same unique key already exists")
                .with_source(err),
            crate::store::StoreError::ForeignKey(_) => AppError::new(ErrorCode::ValidationFailed)
                .with_detail("the request refers to a resource that does not exist, or one that is still in use")
                .with_source(err),
            other => AppError::internal(other),
        }
    }
}

/// Middleware: an error response rendered by actix-web or one of its extractors instead of by [`AppError`]
/// becomes the catalog's problem for its status (see [`framework_problem`]).
///
/// It runs app-wide (`startup::app`, inside telemetry and deprecation, so both see and log the problem) and
/// inside the record stage of `/api/v1` (`routes::configure`), so the usage event measures the response the
/// client gets; the second pass finds a problem already and leaves it. A service that fails with `Err`
/// instead of answering is rendered by actix-web's dispatcher after every middleware; none of Meterline's
/// does (its middleware answer with `ServiceResponse::from_err`), and the request cannot be kept here to
/// answer in its place: holding a clone of it would break actix's routing, which needs it unshared.
///
/// It also answers a client that asks for the Azure REST error shape ([`wants_azure_errors`]) with the same
/// error in that envelope ([`azure_error`]).
pub async fn problems(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let azure = wants_azure_errors(req.headers());
    let res = next.call(req).await?;
    let res = match framework_problem(res.response()) {
        None => res.map_into_boxed_body(),
        Some(problem) => {
            let (request, _) = res.into_parts();
            ServiceResponse::from_err(problem, request).map_into_boxed_body()
        }
    };
    let is_problem = res
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|ct| ct.starts_with(PROBLEM_JSON));
    if !is_problem {
        return Ok(res);
    }
    // An error's shape depends on `Accept`: a cache must not give one client's shape to another.
    let mut res = res;
    let varies = res
        .headers()
        .get_all(header::VARY)
        .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|field| field.trim().eq_ignore_ascii_case("accept"))));
    if !varies {
        res.headers_mut().append(header::VARY, HeaderValue::from_static("Accept"));
    }
    if !azure {
        return Ok(res);
    }
    let (request, response) = res.into_parts();
    let (mut head, body) = response.into_parts();
    let bytes = actix_web::body::to_bytes(body).await.unwrap_or_default();
    let Ok(problem) = serde_json::from_slice::<serde_json::Value>(&bytes) else {
        return Ok(ServiceResponse::new(request, head.set_body(bytes).map_into_boxed_body()));
    };
    let envelope = serde_json::to_vec(&azure_error(&problem)).unwrap_or_default();
    head.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    head.headers_mut().remove(header::CONTENT_LENGTH);
    Ok(ServiceResponse::new(request, head.set_body(envelope).map_into_boxed_body()))
}

/// Whether the client asked for the Azure REST error shape: its `Accept` prefers `application/json` to
/// `application/problem+json` (RFC 9110 §12.5.1: each type's quality is that of the most specific range matching
/// it). What Azure SDK clients send (`application/json` alone) gets the envelope, and so does
/// `application/problem+json;q=0, application/json`. No `Accept`, `*/*`, a tie, or a list that accepts neither
/// gets problem+json, the default.
pub fn wants_azure_errors(headers: &actix_web::http::header::HeaderMap) -> bool {
    let ranges: Vec<(String, f32)> = headers
        .get_all(header::ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|range| {
            let mut parts = range.split(';');
            let media = parts.next()?.trim().to_ascii_lowercase();
            let q = parts
                .filter_map(|p| p.split_once('='))
                .find(|(name, _)| name.trim().eq_ignore_ascii_case("q"))
                .map_or(Some(1.0), |(_, q)| q.trim().parse::<f32>().ok().filter(|q| (0.0..=1.0).contains(q)))?;
            (!media.is_empty()).then_some((media, q))
        })
        .collect();
    let quality = |media: &str| {
        let wildcard = format!("{}/*", media.split('/').next().unwrap_or_default());
        [media, wildcard.as_str(), "*/*"]
            .iter()
            .find_map(|candidate| ranges.iter().find(|(range, _)| range == candidate).map(|(_, q)| *q))
            .unwrap_or(0.0)
    };
    quality("application/json") > quality(PROBLEM_JSON)
}

/// The Azure REST error envelope (Microsoft REST API guidelines, what Azure SDK clients read) of a problem:
/// `{"error": {"code", "message", "target", "details", "innererror"}}` with the same stable `code`; each field
/// error becomes a detail whose `target` is its JSON Pointer, parameter or header; the problem's `type`,
/// `status`, `requestId` and extension members go to `innererror`.
pub fn azure_error(problem: &serde_json::Value) -> AzureErrorResponse {
    let text = |v: &serde_json::Value| v.as_str().map(str::to_owned);
    let details: Vec<AzureError> = problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|e| AzureError {
            code: text(&e["code"]).unwrap_or_default(),
            message: text(&e["message"]).unwrap_or_default(),
            target: text(&e["pointer"])
                .or_else(|| text(&e["parameter"]))
                .or_else(|| text(&e["header"]))
                .or_else(|| text(&e["field"])),
            details: Vec::new(),
            innererror: None,
        })
        .collect();
    let mut inner = serde_json::Map::new();
    for (name, value) in problem.as_object().into_iter().flatten() {
        if !["code", "title", "detail", "errors"].contains(&name.as_str()) {
            inner.insert(name.clone(), value.clone());
        }
    }
    AzureErrorResponse {
        error: AzureError {
            code: text(&problem["code"]).unwrap_or_default(),
            message: text(&problem["detail"]).or_else(|| text(&problem["title"])).unwrap_or_default(),
            target: (details.len() == 1).then(|| details[0].target.clone()).flatten(),
            details,
            innererror: Some(serde_json::Value::Object(inner)),
        },
    }
}

/// The Azure REST error envelope, sent instead of problem+json to a client that asks for it by `Accept`.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AzureErrorResponse {
    pub error: AzureError,
}

/// One error of the Azure REST error envelope.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct AzureError {
    /// The same stable code as the problem's `code` and `x-ms-error-code`; in `details`, the field's reason.
    pub code: String,
    pub message: String,
    /// What the error is about: a body field's JSON Pointer, a query parameter or a header.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[schema(no_recursion)]
    pub details: Vec<AzureError>,
    /// The problem's `type`, `status`, `requestId` and extension members.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub innererror: Option<serde_json::Value>,
}

/// Whether `name` describes the replaced body; every other header of the original response is kept
/// (`Allow`, `Retry-After`, `WWW-Authenticate`, rate-limit fields).
fn describes_body(name: &HeaderName) -> bool {
    [header::CONTENT_TYPE, header::CONTENT_LENGTH, header::CONTENT_ENCODING, header::TRANSFER_ENCODING].contains(name)
}

/// The problem that replaces `response`, when it is an error response (4xx or 5xx carrying an error) that
/// [`AppError`] did not render and that is not problem+json already. Client errors show the framework
/// error's message, which names the request's fault (e.g. "payload reached size limit"); server errors
/// show nothing and log it, as every [`ErrorCode::Internal`] does.
pub fn framework_problem<B>(response: &HttpResponse<B>) -> Option<AppError> {
    let err = response.error()?;
    let status = response.status();
    if err.as_error::<AppError>().is_some() || !(status.is_client_error() || status.is_server_error()) {
        return None;
    }
    let content_type = response.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    if content_type.is_some_and(|ct| ct.starts_with(PROBLEM_JSON)) {
        return None;
    }
    let problem = match framework_code(status) {
        ErrorCode::Internal => AppError::internal(anyhow::anyhow!("actix-web answered {status}: {err}")),
        code => AppError::new(code).with_detail(err.to_string()),
    };
    let kept = response.headers().iter().filter(|(name, _)| !describes_body(name));
    Some(kept.fold(problem, |problem, (name, value)| problem.with_header(name.clone(), value.clone())))
}

/// The catalog code for a framework error of `status`: the code of that status wherever its meaning is the
/// status's own. Every server error is `Internal` (opaque). Any other client error is a bad request: in
/// Meterline those come from reading a body (`web::Bytes` under `PayloadConfig`: an incomplete or
/// undecodable body, an unknown length) and every body it accepts is JSON, so `MalformedJson` is the
/// closest, with the framework's message as the detail.
fn framework_code(status: StatusCode) -> ErrorCode {
    match status {
        s if s.is_server_error() => ErrorCode::Internal,
        StatusCode::UNAUTHORIZED => ErrorCode::Unauthenticated,
        StatusCode::FORBIDDEN => ErrorCode::InsufficientScope,
        StatusCode::NOT_FOUND => ErrorCode::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ErrorCode::MethodNotAllowed,
        StatusCode::CONFLICT => ErrorCode::Conflict,
        StatusCode::PRECONDITION_FAILED => ErrorCode::PreconditionFailed,
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::REQUEST_TIMEOUT => ErrorCode::RequestTimeout,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        StatusCode::UNPROCESSABLE_ENTITY => ErrorCode::ValidationFailed,
        StatusCode::PRECONDITION_REQUIRED => ErrorCode::PreconditionRequired,
        StatusCode::TOO_MANY_REQUESTS => ErrorCode::RateLimited,
        _ => ErrorCode::MalformedJson,
    }
}

/// Maps actix-web's JSON body errors onto the catalog (413, 415, 400 malformed, 422 wrong shape).
pub fn json_payload_error(err: actix_web::error::JsonPayloadError) -> AppError {
    use actix_web::error::JsonPayloadError as E;
    match err {
        E::OverflowKnownLength { length, limit } => AppError::new(ErrorCode::PayloadTooLarge)
            .with_detail(format!("the body has {length} bytes; the limit is {limit}")),
        E::Overflow { limit } => AppError::new(ErrorCode::PayloadTooLarge)
            .with_detail(format!("the body exceeds the limit of {limit} bytes")),
        E::ContentType => {
            AppError::new(ErrorCode::UnsupportedMediaType).with_detail("this operation accepts application/json bodies")
        }
        E::Deserialize(e) => serde_json_error(&e),
        E::Payload(e) => AppError::new(ErrorCode::MalformedJson).with_detail(e.to_string()),
        other => AppError::new(ErrorCode::MalformedJson).with_detail(other.to_string()),
    }
}

/// serde_json's message without the " at line L column C" it appends: a field error names the field, not a position.
fn without_position(err: &serde_json::Error) -> String {
    let message = err.to_string();
    match message.rfind(" at line ") {
        Some(cut) => message[..cut].to_owned(),
        None => message,
    }
}

/// Classifies a serde_json failure: broken syntax is 400, a well-formed body of the wrong shape is 422.
pub fn serde_json_error(err: &serde_json::Error) -> AppError {
    use serde_json::error::Category;
    match err.classify() {
        Category::Data => AppError::new(ErrorCode::ValidationFailed)
            .with_detail("the body does not match the operation's schema")
            .with_field_errors(vec![FieldError::body("", "invalid", without_position(err))]),
        Category::Syntax | Category::Eof | Category::Io => AppError::new(ErrorCode::MalformedJson)
            .with_detail(format!("line {}, column {}: {err}", err.line(), err.column())),
    }
}

/// Maps a query string `web::Query` cannot read to a 422 (the operation's contract, `api::contract`, refuses
/// unknown and ill-typed parameters before any handler, so this is the fallback).
pub fn query_error(err: actix_web::error::QueryPayloadError) -> AppError {
    AppError::new(ErrorCode::ValidationFailed)
        .with_field_errors(vec![FieldError::new(
            "query",
            "invalid",
            "the query string does not fit the operation's parameters",
        )])
        .with_detail(err.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_error_shape_follows_the_accept_header_qualities() {
        let wants = |accept: Option<&str>| {
            let mut headers = actix_web::http::header::HeaderMap::new();
            if let Some(accept) = accept {
                headers.insert(header::ACCEPT, HeaderValue::from_str(accept).unwrap());
            }
            wants_azure_errors(&headers)
        };
        for (accept, azure) in [
            (None, false),
            (Some("application/json"), true),
            (Some("application/json, application/problem+json"), false),
            (Some("application/problem+json;q=0, application/json"), true),
            (Some("application/problem+json; q=0.2, application/json;q=0.9"), true),
            (Some("application/json;q=0.5, */*"), false),
            (Some("application/json, */*;q=0.1"), true),
            (Some("application/*"), false),
            (Some("*/*"), false),
            (Some("text/html"), false),
            (Some("application/json;q=bogus"), false),
        ] {
            assert_eq!(wants(accept), azure, "{accept:?}");
        }
    }
    use std::collections::HashSet;

    #[test]
    fn codes_are_unique_and_well_formed() {
        let slugs: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.slug()).collect();
        let azure: HashSet<_> = ErrorCode::ALL.iter().map(|c| c.azure_code()).collect();
        assert_eq!(slugs.len(), ErrorCode::ALL.len(), "duplicate slug");
        assert_eq!(azure.len(), ErrorCode::ALL.len(), "duplicate code");
        for code in ErrorCode::ALL {
            assert!(code.slug().chars().all(|c| c.is_ascii_lowercase() || c == '-'), "{code}");
            assert!(code.status().is_client_error() || code.status().is_server_error(), "{code}");
        }
    }

    #[test]
    fn refusals_answer_503_with_retry_after_and_the_dependency_whether_direct_or_through_the_store() {
        use crate::resilience::{Refusal, RefusalKind};
        let open = Refusal {
            dependency: "servicebus",
            kind: RefusalKind::CircuitOpen,
            retry_after: std::time::Duration::from_millis(3_400),
        };
        let err = AppError::from(open);
        assert_eq!(err.code(), ErrorCode::DependencyUnavailable);
        let response = err.error_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers().get(header::RETRY_AFTER).unwrap(), "3");
        assert_eq!(err.to_problem(None).members["dependency"], "servicebus");
        let shed = crate::store::StoreError::Unavailable(anyhow::Error::new(Refusal::overloaded("store")));
        let err = AppError::from(shed);
        assert_eq!(err.code(), ErrorCode::Overloaded);
        assert_eq!(err.error_response().headers().get(header::RETRY_AFTER).unwrap(), "1");
        let plain = crate::store::StoreError::Unavailable(anyhow::anyhow!("connection reset"));
        assert_eq!(AppError::from(plain).code(), ErrorCode::StoreUnavailable);
    }

    #[test]
    fn server_errors_hide_their_detail_and_cause() {
        let err = AppError::internal(anyhow::anyhow!("password=hunter2 in connection string"))
            .with_detail("connection string parse failed");
        let problem = serde_json::to_value(err.to_problem(Some("r1".into()))).unwrap();
        assert_eq!(problem["status"], 500);
        assert_eq!(problem["code"], "Internal");
        assert_eq!(problem["type"], "https://meterline.dev/problems/internal");
        assert!(problem.get("detail").is_none());
        assert!(!problem.to_string().contains("hunter2"));
        assert!(format!("{err:?}").contains("hunter2"), "the log form keeps the cause");
    }

    #[test]
    fn framework_codes_keep_the_status_where_the_catalog_has_it() {
        for code in ErrorCode::ALL {
            let mapped = framework_code(code.status());
            if code.status().is_server_error() {
                assert_eq!(mapped, ErrorCode::Internal, "{code}");
            } else {
                assert_eq!(mapped.status(), code.status(), "{code}: a catalog status maps onto itself");
            }
        }
        assert_eq!(framework_code(StatusCode::BAD_REQUEST), ErrorCode::MalformedJson);
        assert_eq!(framework_code(StatusCode::LENGTH_REQUIRED), ErrorCode::MalformedJson, "no code: a bad request");
        assert_eq!(framework_code(StatusCode::BAD_GATEWAY), ErrorCode::Internal);
    }

    #[test]
    fn serde_errors_split_into_malformed_and_invalid() {
        let syntax = serde_json::from_str::<serde_json::Value>("{\"a\":").unwrap_err();
        assert_eq!(serde_json_error(&syntax).code(), ErrorCode::MalformedJson);
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct T {
            a: u8,
        }
        let data = serde_json::from_str::<T>("{\"a\":\"x\"}").unwrap_err();
        let err = serde_json_error(&data);
        assert_eq!(err.code(), ErrorCode::ValidationFailed);
        assert_eq!(err.field_errors()[0].field, "body");
    }

    /// Counts the ERROR events logged while it is the default subscriber.
    struct ErrorLines(std::sync::Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorLines {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::ERROR {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    #[test]
    fn a_server_error_logs_its_cause_once_unless_it_was_logged_where_it_happened() {
        use tracing_subscriber::layer::SubscriberExt as _;
        let lines = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(ErrorLines(lines.clone())));
        let count = || lines.load(std::sync::atomic::Ordering::SeqCst);
        let response = AppError::new(ErrorCode::UsageNotRecorded).with_source(anyhow::anyhow!("down")).error_response();
        assert_eq!((response.status(), count()), (StatusCode::SERVICE_UNAVAILABLE, 1));
        let logged = AppError::new(ErrorCode::UsageNotRecorded).with_logged_source(anyhow::anyhow!("down"));
        assert!(format!("{logged:?}").ends_with(": down"), "the cause is kept for Debug");
        let response = logged.error_response();
        assert_eq!((response.status(), count()), (StatusCode::SERVICE_UNAVAILABLE, 1), "not logged again");
    }
}
