//! OpenTelemetry export: the tracer and meter providers for the configured exporter, and the HTTP client
//! both exporters send through.
//!
//! The SDK's batch span processor and periodic metric reader run on threads of their own and block on the
//! exporter's future there, outside any Tokio runtime. [`ExportClient`] therefore runs each request on a small
//! runtime owned by the telemetry (one worker thread), using the reqwest client the rest of Meterline uses.

use std::time::Duration;

use bytes::Bytes;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::metrics::{PeriodicReader, SdkMeterProvider};
use opentelemetry_sdk::trace::SdkTracerProvider;
use secrecy::ExposeSecret as _;

use crate::config::{TelemetryConfig, TelemetryExport};

/// Sends exporter requests with reqwest on the telemetry runtime.
#[derive(Debug, Clone)]
pub struct ExportClient {
    client: reqwest::Client,
    runtime: tokio::runtime::Handle,
}

impl ExportClient {
    pub fn new(runtime: tokio::runtime::Handle) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
        Ok(Self { client, runtime })
    }
}

#[async_trait::async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let sent = self.runtime.spawn(async move {
            let (parts, body) = request.into_parts();
            let answer =
                client.request(parts.method, parts.uri.to_string()).headers(parts.headers).body(body).send().await?;
            let mut response = Response::builder().status(answer.status());
            if let Some(headers) = response.headers_mut() {
                *headers = answer.headers().clone();
            }
            Ok::<_, HttpError>(response.body(answer.bytes().await?)?)
        });
        sent.await?
    }
}

/// The providers for `config`; `None` when telemetry is off.
pub struct Providers {
    pub tracer: SdkTracerProvider,
    pub meter: SdkMeterProvider,
}

pub fn providers(config: &TelemetryConfig, client: ExportClient) -> anyhow::Result<Option<Providers>> {
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .build();
    let (tracer, meter) = match &config.export {
        TelemetryExport::Off => return Ok(None),
        TelemetryExport::Otlp { endpoint } => {
            let spans = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_http_client(client.clone())
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{endpoint}/v1/traces"))
                .build()?;
            let metrics = opentelemetry_otlp::MetricExporter::builder()
                .with_http()
                .with_http_client(client)
                .with_protocol(Protocol::HttpBinary)
                .with_endpoint(format!("{endpoint}/v1/metrics"))
                .build()?;
            (
                SdkTracerProvider::builder().with_resource(resource.clone()).with_batch_exporter(spans).build(),
                meter_provider(resource, metrics, config.metric_interval),
            )
        }
        TelemetryExport::AppInsights { connection_string } => {
            let loopback = loopback_ingestion_endpoint(connection_string.expose_secret());
            let exporter = |client| -> anyhow::Result<_> {
                let exporter = opentelemetry_application_insights::Exporter::new_from_connection_string(
                    connection_string.expose_secret(),
                    client,
                )
                .map_err(|e| anyhow::anyhow!("APPLICATIONINSIGHTS_CONNECTION_STRING: {e}"))?;
                match &loopback {
                    // The crate upgrades every ingestion endpoint to https; a local listener (tests, a local
                    // ingestion emulator) speaks plain http on loopback, so keep that one as given.
                    #[allow(deprecated)]
                    Some(endpoint) => exporter
                        .with_endpoint(endpoint)
                        .map_err(|e| anyhow::anyhow!("APPLICATIONINSIGHTS_CONNECTION_STRING: {e}")),
                    None => Ok(exporter),
                }
            };
            (
                SdkTracerProvider::builder()
                    .with_resource(resource.clone())
                    .with_batch_exporter(exporter(client.clone())?)
                    .build(),
                meter_provider(resource, exporter(client)?, config.metric_interval),
            )
        }
    };
    Ok(Some(Providers { tracer, meter }))
}

/// The connection string's `IngestionEndpoint` when it is plain http on a loopback address.
fn loopback_ingestion_endpoint(connection_string: &str) -> Option<String> {
    let endpoint = connection_string.split(';').find_map(|part| {
        let (key, value) = part.split_once('=')?;
        key.trim().eq_ignore_ascii_case("IngestionEndpoint").then(|| value.trim().to_owned())
    })?;
    ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"]
        .iter()
        .any(|prefix| endpoint.starts_with(prefix))
        .then_some(endpoint)
}

fn meter_provider(
    resource: Resource,
    exporter: impl opentelemetry_sdk::metrics::exporter::PushMetricExporter,
    interval: Duration,
) -> SdkMeterProvider {
    let reader = PeriodicReader::builder(exporter).with_interval(interval).build();
    SdkMeterProvider::builder().with_resource(resource).with_reader(reader).build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_ingestion_endpoints_stay_plain_http() {
        let local = "InstrumentationKey=k;IngestionEndpoint=http://127.0.0.1:4999/";
        assert_eq!(loopback_ingestion_endpoint(local).as_deref(), Some("http://127.0.0.1:4999/"));
        for remote in [
            "InstrumentationKey=k;IngestionEndpoint=http://ingest.example.com/",
            "InstrumentationKey=k;IngestionEndpoint=https://westeurope-5.in.applicationinsights.azure.com/",
            "InstrumentationKey=k",
        ] {
            assert_eq!(loopback_ingestion_endpoint(remote), None, "{remote}");
        }
    }
}
