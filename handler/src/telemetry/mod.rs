//! Logging, tracing and metrics: JSON lines on stdout/stderr, one span and one line per request or invocation,
//! and, when an exporter is configured, OpenTelemetry traces and metrics (OTLP or Application Insights).
//!
//! The host turns each stdout line into an Information log and each stderr line into an Error (or a
//! Warning), so WARN and ERROR events go to stderr and everything else to stdout.
//!
//! Request spans become OpenTelemetry server spans through `tracing-opentelemetry`: a W3C `traceparent` on the
//! request makes the span its child (same trace id), and the host's invocation id is an attribute. With
//! `METERLINE_TELEMETRY` off (the default locally) no exporter, thread or OpenTelemetry layer exists.

pub mod export;
pub mod metrics;

use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, HeaderValue};
use actix_web::middleware::Next;
use actix_web::{Error, web};
use opentelemetry::propagation::{Extractor, TextMapPropagator as _};
use opentelemetry::trace::{TraceContextExt as _, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Instrument as _;
use tracing_opentelemetry::OpenTelemetrySpanExt as _;
use tracing_subscriber::fmt::writer::MakeWriterExt as _;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::clock::{IdGenerator as _, TimeOrderedIds};
use crate::config::{Config, LogFormat};
use crate::request::INVOCATION_ID_HEADER;
use crate::state::AppState;

/// Where log lines go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogSink {
    /// Serving: WARN and ERROR to stderr, the rest to stdout, as the Functions host classifies them.
    Split,
    /// One-shot commands: everything to stderr, so stdout carries only the command's output.
    Stderr,
}

/// True once OpenTelemetry export is on: request spans then take their parent from `traceparent`.
static EXPORTING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// What [`init`] started; [`Telemetry::shutdown`] flushes and stops it.
#[derive(Default)]
pub struct Telemetry {
    providers: Option<export::Providers>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Telemetry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Telemetry").field("exporting", &self.providers.is_some()).finish()
    }
}

impl Telemetry {
    /// Exports what is buffered and stops the exporters. Call outside any async runtime (at process exit).
    pub fn shutdown(mut self) {
        if let Some(providers) = self.providers.take() {
            if let Err(err) = providers.tracer.shutdown() {
                eprintln!("handler: flushing traces failed: {err}");
            }
            if let Err(err) = providers.meter.shutdown() {
                eprintln!("handler: flushing metrics failed: {err}");
            }
        }
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Installs the global subscriber and, when configured, the OpenTelemetry exporters. Call once, before
/// anything logs; a second call (tests building several apps) keeps the first subscriber and exports nothing.
pub fn init(config: &Config, sink: LogSink) -> Telemetry {
    let filter = EnvFilter::try_new(&config.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let stdout_below_warn = if sink == LogSink::Split { tracing::Level::WARN } else { tracing::Level::TRACE };
    let writer = std::io::stderr.with_max_level(stdout_below_warn).or_else(std::io::stdout);
    let fmt = tracing_subscriber::fmt::layer().with_writer(writer);
    let fmt: Box<dyn Layer<Registry> + Send + Sync> = match config.log_format {
        LogFormat::Json => fmt.json().with_current_span(true).with_span_list(false).flatten_event(true).boxed(),
        LogFormat::Text => fmt.with_target(false).boxed(),
    };
    let (telemetry, otel_layer) = match start_export(config) {
        Ok(Some((telemetry, tracer))) => (telemetry, Some(tracing_opentelemetry::layer().with_tracer(tracer).boxed())),
        Ok(None) => (Telemetry::default(), None),
        Err(err) => {
            // Telemetry must never keep the API from starting: log the reason and serve without it.
            eprintln!("handler: telemetry export disabled: {err:#}");
            (Telemetry::default(), None)
        }
    };
    let exporting = otel_layer.is_some();
    let layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = std::iter::once(fmt).chain(otel_layer).collect();
    if tracing_subscriber::registry().with(layers).with(filter).try_init().is_err() {
        telemetry.shutdown();
        return Telemetry::default();
    }
    if exporting {
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    telemetry
}

fn start_export(config: &Config) -> anyhow::Result<Option<(Telemetry, opentelemetry_sdk::trace::Tracer)>> {
    if matches!(config.telemetry.export, crate::config::TelemetryExport::Off) {
        return Ok(None);
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("telemetry-export")
        .enable_all()
        .build()?;
    let client = export::ExportClient::new(runtime.handle().clone())?;
    let Some(providers) = export::providers(&config.telemetry, client)? else {
        return Ok(None);
    };
    let tracer = providers.tracer.tracer("meterline");
    opentelemetry::global::set_meter_provider(providers.meter.clone());
    metrics::install(metrics::Metrics::new(&opentelemetry::global::meter("meterline")));
    Ok(Some((Telemetry { providers: Some(providers), runtime: Some(runtime) }, tracer)))
}

/// Reads W3C trace context from actix request headers.
struct Headers<'a>(&'a actix_web::http::header::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// The name metrics and spans give a request: its operation id, else its route, else `unmatched`.
fn operation_of(req: &ServiceRequest) -> Option<String> {
    crate::api::operations::operation_of(req).map(|op| op.to_string())
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
        None => TimeOrderedIds.new_id().to_string(),
    };
    let header = |name: &str| req.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
    let trace_id = header("traceparent").as_deref().and_then(trace_id_of).map(str::to_owned);
    let client_id = req.headers().get("x-ms-client-request-id").and_then(client_request_id).map(str::to_owned);
    let invocation_id = header(INVOCATION_ID_HEADER);
    let probe = req.path() == "/";
    // Everything OpenTelemetry-only is skipped when nothing is exported, so the default costs nothing.
    let exporting = EXPORTING.load(std::sync::atomic::Ordering::Relaxed) && !probe;
    let operation = if exporting { operation_of(&req) } else { None };
    let span = tracing::info_span!(
        "request",
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
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
    if exporting {
        let parent = TraceContextPropagator::new().extract(&Headers(req.headers()));
        let _ = span.set_parent(parent);
    }
    let method = req.method().clone();
    let started = Instant::now();
    // Handlers and extractors turn their errors into responses inside this scope, so problem bodies carry the id.
    let mut res = crate::request::scope(request_id.clone(), next.call(req)).instrument(span.clone()).await?;
    let status = res.status().as_u16();
    let latency = started.elapsed();
    span.record("status", status);
    span.record("latency_ms", latency.as_secs_f64() * 1000.0);
    let pattern = res.request().match_pattern();
    if let Some(pattern) = &pattern {
        span.record("route", pattern.as_str());
    }
    if exporting {
        let name =
            operation.unwrap_or_else(|| pattern.map_or_else(|| "unmatched".to_owned(), |p| format!("{method} {p}")));
        // The OpenTelemetry span exists from the first enter on, so the name is set on it, not as `otel.name`.
        span.context().span().update_name(name.clone());
        if status >= 500 {
            span.record("otel.status_code", "ERROR");
        }
        metrics::request(&name, status, latency);
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
    use actix_web::{App, HttpResponse, test as actix_test};
    use opentelemetry::trace::{SpanKind, TraceId};
    use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};

    #[actix_web::test]
    async fn request_spans_continue_the_callers_trace_and_carry_the_invocation_id() {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("meterline")))
            .with(EnvFilter::new("info"));
        let _guard = tracing::subscriber::set_default(subscriber);
        // Only this test turns export on; other tests in this process see at most an unused parent lookup.
        EXPORTING.store(true, std::sync::atomic::Ordering::Relaxed);
        let app = actix_test::init_service(
            App::new()
                .wrap(actix_web::middleware::from_fn(middleware))
                .route("/api/things/{id}", web::get().to(|| async { HttpResponse::Ok().finish() }))
                .route("/api/broken", web::get().to(|| async { HttpResponse::InternalServerError().finish() })),
        )
        .await;
        let traceparent = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let request = actix_test::TestRequest::get()
            .uri("/api/things/42")
            .insert_header(("traceparent", traceparent))
            .insert_header((INVOCATION_ID_HEADER, "6c3f6d5e-0000-4000-8000-00000000abcd"))
            .to_request();
        assert_eq!(actix_test::call_service(&app, request).await.status(), 200);
        let broken = actix_test::TestRequest::get().uri("/api/broken").to_request();
        assert_eq!(actix_test::call_service(&app, broken).await.status(), 500);
        provider.force_flush().unwrap();

        let spans = exporter.get_finished_spans().unwrap();
        assert_eq!(spans.len(), 2, "{spans:#?}");
        let attr = |span: &opentelemetry_sdk::trace::SpanData, key: &str| {
            span.attributes.iter().find(|kv| kv.key.as_str() == key).map(|kv| kv.value.to_string())
        };
        let thing = &spans[0];
        assert_eq!(thing.name, "GET /api/things/{id}");
        assert_eq!(thing.span_kind, SpanKind::Server);
        assert_eq!(thing.span_context.trace_id(), TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").unwrap());
        assert_eq!(thing.parent_span_id.to_string(), "b7ad6b7169203331");
        assert!(thing.parent_span_is_remote);
        assert_eq!(attr(thing, "invocation_id").as_deref(), Some("6c3f6d5e-0000-4000-8000-00000000abcd"));
        assert_eq!(attr(thing, "route").as_deref(), Some("/api/things/{id}"));
        assert_eq!(attr(thing, "status").as_deref(), Some("200"));
        let broken = &spans[1];
        assert_ne!(broken.span_context.trace_id(), thing.span_context.trace_id(), "no traceparent: a new trace");
        assert_eq!(broken.status, opentelemetry::trace::Status::error(""));
    }

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
