//! `POST /{FunctionName}`: answers timer, Service Bus and default-mode HTTP invocations from the host.
//!
//! The answer is always `200 application/json` with an [`InvocationResult`], except when the host should
//! treat the invocation as failed (retry a timer, abandon a Service Bus message): then a non-2xx problem.
//! Default-mode HTTP invocations run through the very same API router as forwarded requests, in process.

use std::cell::RefCell;
use std::rc::Rc;

use actix_service::{Service, ServiceFactory, boxed};
use actix_web::ResponseError as _;
use actix_web::body::BoxBody;
use actix_web::dev::{AppConfig, ServiceResponse};
use actix_web::http::header;
use actix_web::{HttpRequest, HttpResponse, web};
use serde_json::{Value, json};

use super::payload::{HttpRequestData, Invocation, InvocationResult, ServiceBusMessage, TimerInfo};
use super::{HTTP_OUTPUT_BINDING, Trigger};
use crate::error::{AppError, ErrorCode};
use crate::jobs::{self, JobTrigger};
use crate::request::INVOCATION_ID_HEADER;
use crate::state::AppState;

/// The host may send client bodies up to 100 MiB, base64-encoded inside the envelope.
pub const MAX_INVOCATION_BYTES: usize = 160 * 1024 * 1024;

/// `GET /`: the host's readiness probe (polled every 25 ms at start) and latency ping. Touches nothing.
pub async fn readiness_probe() -> HttpResponse {
    HttpResponse::Ok().content_type("application/json").body(r#"{"status":"ok"}"#)
}

/// The API app, boxed: what default-mode HTTP invocations run through, in process. `startup` assembles it
/// (above this module) and passes its builder to [`invoke`].
pub type ApiFactory =
    boxed::BoxServiceFactory<AppConfig, actix_http::Request, ServiceResponse<BoxBody>, actix_web::Error, ()>;

/// Builds the [`ApiFactory`] over the application state.
pub type BuildApi = fn(web::Data<AppState>) -> ApiFactory;

/// The handler of `POST /{function}`; `api` builds the in-process API for default-mode HTTP invocations.
pub async fn invoke(
    req: HttpRequest,
    function: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
    api: BuildApi,
) -> Result<HttpResponse, AppError> {
    let body = payload.to_bytes_limited(MAX_INVOCATION_BYTES).await.map_err(|_| {
        AppError::new(ErrorCode::PayloadTooLarge)
            .with_detail(format!("invocations are limited to {MAX_INVOCATION_BYTES} bytes"))
    })?;
    let invocation = Invocation::parse(&body.map_err(|e| {
        AppError::new(ErrorCode::InvalidInvocation).with_detail(format!("reading the invocation body failed: {e}"))
    })?)?;
    let def = super::find(&function);
    tracing::Span::current().record("function", def.map_or(function.as_str(), |d| d.name));
    let result = match def.map(|d| (d, d.trigger)) {
        Some((def, Trigger::Http { .. })) => invoke_http(&state, api, def.trigger_binding, &invocation, &req).await?,
        Some((def, Trigger::Timer { job, .. })) => {
            let timer = TimerInfo::from_value(invocation.data(def.trigger_binding));
            let trigger = JobTrigger::Timer { is_past_due: timer.is_past_due, schedule: timer.schedule_status };
            let outcome = jobs::run(&state, job, trigger).await?;
            InvocationResult::default().with_log(format!("{}: {}", def.name, outcome.summary))
        }
        Some((def, Trigger::ServiceBus { .. })) => {
            let message = ServiceBusMessage::from_invocation(&invocation, def.trigger_binding)?;
            let delivery = jobs::integration::Delivery {
                body: &message.body,
                message_id: message.message_id.as_deref(),
                delivery_count: message.delivery_count,
                content_type: message.content_type.as_deref(),
            };
            InvocationResult::default().with_log(jobs::integration::consume(&state, delivery).await?)
        }
        // An HTTP invocation for a function this build lacks still deserves a proper HTTP answer to the client.
        None => match invocation.data.values().find(|v| HttpRequestData::looks_like(v)) {
            Some(_) => {
                let problem = unknown_function(&function).error_response();
                let mut result = InvocationResult::default();
                result.outputs.insert(HTTP_OUTPUT_BINDING.into(), http_output(problem.map_into_boxed_body()).await?);
                result
            }
            None => return Err(unknown_function(&function)),
        },
    };
    Ok(HttpResponse::Ok().content_type("application/json").json(result))
}

fn unknown_function(name: &str) -> AppError {
    let known: Vec<_> = super::FUNCTIONS.iter().map(|f| f.name).collect();
    AppError::new(ErrorCode::UnknownFunction)
        .with_detail(format!("no function named {name:?}; this handler implements {}", known.join(", ")))
}

/// Runs a default-mode HTTP invocation through the API router and wraps its response as `Outputs.res`.
async fn invoke_http(
    state: &web::Data<AppState>,
    api: BuildApi,
    binding: &str,
    invocation: &Invocation,
    outer: &HttpRequest,
) -> Result<InvocationResult, AppError> {
    let data = invocation.data(binding).ok_or_else(|| {
        AppError::new(ErrorCode::InvalidInvocation).with_detail(format!("Data.{binding} (the HTTP request) is missing"))
    })?;
    let request = HttpRequestData::from_value(data)?;
    // `TestRequest::uri` panics on a target `http::Uri` refuses; refused here first, as a bad invocation.
    request.path_and_query.parse::<actix_web::http::Uri>().map_err(|_| {
        AppError::new(ErrorCode::InvalidInvocation)
            .with_detail(format!("Data.{binding}.Url is not a valid request URL"))
    })?;
    // The absolute target the client called: the API reads its scheme and authority where a direct request has
    // none (`api::list::public_origin`: forwarded headers first, then `Host`, then this), so links it builds name
    // the client's origin, not the server's configured `localhost:8080`.
    let target = request
        .origin
        .as_ref()
        .map(|origin| format!("{origin}{}", request.path_and_query))
        .filter(|target| target.parse::<actix_web::http::Uri>().is_ok())
        .unwrap_or_else(|| request.path_and_query.clone());
    let mut test_request = actix_web::test::TestRequest::default()
        .method(request.method.parse().map_err(|_| {
            AppError::new(ErrorCode::InvalidInvocation).with_detail(format!("bad HTTP method {:?}", request.method))
        })?)
        .uri(&target)
        .peer_addr(outer.peer_addr().unwrap_or_else(|| ([127, 0, 0, 1], 0).into()));
    for (name, value) in &request.headers {
        // Framing headers describe the client's connection, not the request we rebuild here. `Host` is the
        // client's (the host copies its request's headers), so it stays, as forwarding keeps it.
        if ["content-length", "transfer-encoding", "connection"].iter().any(|h| name.eq_ignore_ascii_case(h)) {
            continue;
        }
        if let (Ok(name), Ok(value)) =
            (header::HeaderName::try_from(name.as_str()), header::HeaderValue::try_from(value.as_str()))
        {
            test_request = test_request.append_header((name, value));
        }
    }
    if let Some(id) = outer.headers().get(INVOCATION_ID_HEADER) {
        test_request = test_request.insert_header((INVOCATION_ID_HEADER, id.clone()));
    }
    if let Some(body) = request.body {
        test_request = test_request.set_payload(body);
    }
    let service = api_service(state, api).await;
    let response = match service.call(test_request.to_request()).await {
        Ok(response) => response.into_parts().1,
        Err(err) => err.error_response(),
    };
    let mut result = InvocationResult::default();
    // A HEAD is answered as its GET is (`api::head`), without the content (RFC 9110 §9.3.2): only the header fields
    // go back, whatever the content would have been (an image's too).
    let response =
        if request.method.eq_ignore_ascii_case("HEAD") { response.drop_body().map_into_boxed_body() } else { response };
    result.outputs.insert(HTTP_OUTPUT_BINDING.into(), http_output(response).await?);
    Ok(result)
}

/// The `Outputs.res` object: string status code, string header values, text body (protocol notes §4.3).
///
/// The host writes `body` to the client as the UTF-8 text of the string, so any body that is UTF-8 arrives as its
/// bytes whatever its media type. A body that is not (an image, a font) cannot be carried at all: default mode has
/// no binary output (§10, pitfall 4; a base64 string would reach the client as base64 text), so the client gets a
/// `binary-response-unsupported` problem instead, in a successful invocation.
async fn http_output(response: HttpResponse<BoxBody>) -> Result<Value, AppError> {
    let (head, body) = response.into_parts();
    let bytes = actix_web::body::to_bytes(body).await.map_err(|e| AppError::internal(anyhow::anyhow!("{e}")))?;
    let (head, body) = match String::from_utf8(bytes.to_vec()) {
        Ok(body) => (head, body),
        Err(_) => {
            let media_type =
                head.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("a binary type");
            let problem = AppError::new(ErrorCode::BinaryResponseUnsupported)
                .with_detail(format!(
                    "the answer ({media_type}, {} bytes) is binary, which the Functions host's default mode cannot \
                     carry; serve this function with enableForwardingHttpRequest or enableProxyingHttpRequest",
                    bytes.len()
                ))
                .error_response();
            let (problem, body) = problem.into_parts();
            let text = actix_web::body::to_bytes(body).await.map_err(|e| AppError::internal(anyhow::anyhow!("{e}")))?;
            (problem, String::from_utf8_lossy(&text).into_owned())
        }
    };
    let mut headers = serde_json::Map::new();
    for name in head.headers().keys() {
        let values: Vec<_> = head.headers().get_all(name).filter_map(|v| v.to_str().ok()).collect();
        headers.insert(name.as_str().to_owned(), Value::String(values.join(", ")));
    }
    Ok(json!({ "statusCode": head.status().as_u16().to_string(), "headers": headers, "body": body }))
}

type ApiService = boxed::BoxService<actix_http::Request, ServiceResponse<BoxBody>, actix_web::Error>;

thread_local! {
    /// One in-process API service per worker thread, built on first use (actix services are not `Send`).
    static API_SERVICE: RefCell<Option<Rc<ApiService>>> = const { RefCell::new(None) };
}

async fn api_service(state: &web::Data<AppState>, api: BuildApi) -> Rc<ApiService> {
    if let Some(service) = API_SERVICE.with(|s| s.borrow().clone()) {
        return service;
    }
    let service = api(state.clone()).new_service(AppConfig::default()).await.expect("the API app builds without I/O");
    let service: Rc<ApiService> = Rc::new(service);
    API_SERVICE.with(|s| *s.borrow_mut() = Some(service.clone()));
    service
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_function_lists_the_known_ones() {
        let err = unknown_function("Nope");
        assert_eq!(err.code(), ErrorCode::UnknownFunction);
        assert!(err.detail().unwrap().contains("UsageRollup"));
    }
}
