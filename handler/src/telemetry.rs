//! Logging and request tracing: JSON lines on stdout/stderr, one span and one line per request or invocation.
//!
//! The host turns each stdout line into an Information log and each stderr line into an Error (or a
//! Warning), so WARN and ERROR events go to stderr and everything else to stdout.

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, web};
use tracing::Instrument as _;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;

use crate::config::{Config, LogFormat};
use crate::functions::dispatch::INVOCATION_ID_HEADER;
use crate::state::AppState;

tokio::task_local! {
    static REQUEST_ID: String;
}

/// The id of the request being served on this task, for error bodies.
pub fn current_request_id() -> Option<String> {
    REQUEST_ID.try_with(Clone::clone).ok()
}

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// Serving: WARN and ERROR to stderr, the rest to stdout, as the Functions host classifies them.
    Split,
    /// One-shot commands: everything to stderr, so stdout carries only the command's output.
    Stderr,
}

/// Installs the global subscriber. Call once, before anything logs.
pub fn init(config: &Config, sink: LogSink) {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let stdout_below_warn = if sink == LogSink::Split { tracing::Level::WARN } else { tracing::Level::TRACE };
    let writer = std::io::stderr.with_max_level(stdout_below_warn).or_else(std::io::stdout);
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer);
    let result = match config.log_format {
        LogFormat::Json => builder.json().with_current_span(true).with_span_list(false).flatten_event(true).try_init(),
        LogFormat::Text => builder.with_target(false).try_init(),
    };
    // A second init (tests building several apps) keeps the first subscriber.
    drop(result);
}

/// Extracts the trace id from a W3C `traceparent` header, if well-formed.
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace_id, parent_id, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex =
        |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase());
    let valid =
        hex(version, 2) && hex(trace_id, 32) && hex(parent_id, 16) && hex(flags, 2) && trace_id != "0".repeat(32);
    valid.then_some(trace_id)
}

fn client_request_id(value: &HeaderValue) -> Option<&str> {
    let id = value.to_str().ok()?;
    (!id.is_empty() && id.len() <= 72 && id.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.:{}".contains(&b)))
        .then_some(id)
}

/// The request middleware: assigns a request id, opens the span, logs one line when the response is ready.
pub async fn middleware(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, Error> {
    let request_id = match req.app_data::<web::Data<AppState>>() {
        Some(state) => state.ids.new_id().to_string(),
        None => uuid::Uuid::new_v4().to_string(),
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let trace_id = header("traceparent").as_deref().and_then(trace_id_of).map(str::to_owned);
    let client_id = req.headers().get("x-ms-client-request-id").and_then(client_request_id).map(str::to_owned);
    let invocation_id = header(INVOCATION_ID_HEADER);
    let probe = req.path() == "/";
    let span = tracing::info_span!(
        "request",
        request_id = %request_id,
        method = %req.method(),
        path = %req.path(),
        route = tracing::field::Empty,
        function = tracing::field::Empty,
        invocation_id = invocation_id.as_deref(),
        trace_id = trace_id.as_deref(),
        client_request_id = client_id.as_deref(),
        status = tracing::field::Empty,
        latency_ms = tracing::field::Empty,
    );
    let started = Instant::now();
    // Handlers and extractors turn their errors into responses inside this scope, so problem bodies carry the id.
    let mut res = REQUEST_ID.scope(request_id.clone(), next.call(req)).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    span.record("status", status);
    span.record("latency_ms", started.elapsed().as_secs_f64() * 1000.0);
    if let Some(pattern) = res.request().match_pattern() {
        span.record("route", pattern.as_str());
    }
    let headers = res.headers_mut();
    if let Ok(value) = HeaderValue::from_str(&request_id) {
        headers.insert(HeaderName::from_static("x-request-id"), value);
    }
    if let Some(client_id) = client_id.and_then(|id| HeaderValue::from_str(&id).ok()) {
        headers.insert(HeaderName::from_static("x-ms-client-request-id"), client_id);
    }
    let _entered = span.enter();
    if probe {
        tracing::debug!("readiness probe answered");
    } else if status >= 500 {
        tracing::warn!("request completed with a server error");
    } else {
        tracing::info!("request completed");
    }
    Ok(res)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn traceparent_is_validated() {
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        assert_eq!(trace_id_of(good), Some("0af7651916cd43dd8448eb211c80319c"));
        assert_eq!(trace_id_of("00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01"), None);
        assert_eq!(trace_id_of("00-00000000000000000000000000000000-b7ad6b7169203331-01"), None);
        assert_eq!(trace_id_of("garbage"), None);
    }

    #[test]
    fn client_request_ids_are_bounded() {
        assert_eq!(client_request_id(&HeaderValue::from_static("abc-123")), Some("abc-123"));
        assert_eq!(client_request_id(&HeaderValue::from_static("a b")), None);
        assert_eq!(client_request_id(&HeaderValue::from_str(&"x".repeat(73)).unwrap()), None);
    }
}
