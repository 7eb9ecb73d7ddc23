//! Telemetry export end to end: the real handler under the host emulator, with an exporter pointed at a loopback
//! listener, sends the spans and metrics of the requests it served (OTLP/HTTP protobuf, and Application
//! Insights' track endpoint), flushed by a requested shutdown.

use std::collections::BTreeSet;
use std::io::Read as _;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prost::Message as _;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpListener;

use crate::support::host::{ClientRequest, HostEmulator, HostOptions};

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_ID: &str = "00f067aa0ba902b7";

/// One request the collector received.
#[derive(Debug, Clone)]
struct Received {
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Received {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// A loopback HTTP/1.1 listener that records every request and answers 200 with an empty body.
async fn collector() -> (String, Arc<Mutex<Vec<Received>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let received = Arc::new(Mutex::new(Vec::new()));
    let log = received.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let log = log.clone();
            tokio::spawn(async move {
                let mut buffer = Vec::new();
                loop {
                    // Read one request: headers up to the blank line, then Content-Length bytes.
                    let head_end = loop {
                        if let Some(at) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                            break at + 4;
                        }
                        let mut chunk = [0u8; 8192];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buffer[..head_end]).into_owned();
                    let mut lines = head.split("\r\n");
                    let path = lines.next().unwrap_or_default().split(' ').nth(1).unwrap_or_default().to_owned();
                    let headers: Vec<(String, String)> = lines
                        .filter_map(|l| l.split_once(':'))
                        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
                        .collect();
                    let length: usize =
                        headers.iter().find(|(n, _)| n == "content-length").map_or(0, |(_, v)| v.parse().unwrap());
                    while buffer.len() < head_end + length {
                        let mut chunk = [0u8; 8192];
                        match stream.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let body = buffer[head_end..head_end + length].to_vec();
                    buffer.drain(..head_end + length);
                    log.lock().unwrap().push(Received { path, headers, body });
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 2\r\n\r\n{}";
                    if stream.write_all(answer).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, received)
}

/// Starts the handler with `env`, serves one traced request, and shuts it down (which flushes telemetry).
async fn serve_one_traced_request(env: Vec<(String, String)>) -> ClientResponse {
    let mut host = HostEmulator::start_with(HostOptions { env, ..HostOptions::default() }).await;
    let response = host
        .http(ClientRequest::get("/api/health/ready").header("traceparent", &format!("00-{TRACE_ID}-{PARENT_ID}-01")))
        .await;
    let status = std::process::Command::new("kill").args(["-TERM", &host.pid().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(host.wait_exit(Duration::from_secs(20)).await, Some(0), "{}", host.output_text());
    response
}

use crate::support::host::ClientResponse;

fn ready_operation_id() -> String {
    let doc = serde_json::to_value(meterline::routes::openapi()).unwrap();
    doc["paths"]["/api/health/ready"]["get"]["operationId"]
        .as_str()
        .expect("the readiness operation has an id")
        .to_owned()
}

#[tokio::test]
async fn otlp_export_sends_the_request_span_and_metrics_to_the_collector() {
    let (url, received) = collector().await;
    let env =
        vec![("OTEL_EXPORTER_OTLP_ENDPOINT".to_owned(), url), ("OTEL_SERVICE_NAME".to_owned(), "meterline-e2e".into())];
    assert_eq!(serve_one_traced_request(env).await.status, 200);
    let received = received.lock().unwrap().clone();
    let paths: BTreeSet<_> = received.iter().map(|r| r.path.as_str()).collect();
    assert!(paths.contains("/v1/traces") && paths.contains("/v1/metrics"), "collector saw {paths:?}");
    assert!(received.iter().all(|r| r.header("content-type") == Some("application/x-protobuf")));

    use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    let text = |v: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>| match v
        .as_ref()
        .and_then(|v| v.value.as_ref())
    {
        Some(Any::StringValue(s)) => s.clone(),
        Some(Any::IntValue(i)) => i.to_string(),
        other => format!("{other:?}"),
    };
    let mut spans = Vec::new();
    let mut service_names = BTreeSet::new();
    for r in received.iter().filter(|r| r.path == "/v1/traces") {
        for resource in ExportTraceServiceRequest::decode(r.body.as_slice()).unwrap().resource_spans {
            for kv in resource.resource.iter().flat_map(|r| r.attributes.iter()).filter(|kv| kv.key == "service.name") {
                service_names.insert(text(&kv.value));
            }
            spans.extend(resource.scope_spans.into_iter().flat_map(|s| s.spans));
        }
    }
    assert_eq!(service_names, BTreeSet::from(["meterline-e2e".to_owned()]));
    let span = spans
        .iter()
        .find(|s| hex(&s.trace_id) == TRACE_ID)
        .unwrap_or_else(|| panic!("no span continues the request's trace: {spans:#?}"));
    assert_eq!(hex(&span.parent_span_id), PARENT_ID);
    assert_eq!(span.name, ready_operation_id());
    let attr = |key: &str| span.attributes.iter().find(|kv| kv.key == key).map(|kv| text(&kv.value));
    let invocation = attr("invocation_id").expect("the host's invocation id is on the span");
    assert!(uuid::Uuid::parse_str(&invocation).is_ok(), "{invocation}");
    assert_eq!(attr("status").as_deref(), Some("200"));

    let mut metrics = BTreeSet::new();
    for r in received.iter().filter(|r| r.path == "/v1/metrics") {
        for resource in ExportMetricsServiceRequest::decode(r.body.as_slice()).unwrap().resource_metrics {
            for metric in resource.scope_metrics.into_iter().flat_map(|s| s.metrics) {
                use opentelemetry_proto::tonic::metrics::v1::metric::Data;
                if let Some(Data::Histogram(h)) = &metric.data {
                    for point in &h.data_points {
                        let op = point.attributes.iter().find(|kv| kv.key == "operation").map(|kv| text(&kv.value));
                        metrics.insert((metric.name.clone(), op.unwrap_or_default(), point.count));
                    }
                }
            }
        }
    }
    assert!(
        metrics.contains(&("meterline.request.duration".to_owned(), ready_operation_id(), 1)),
        "request latency by operation: {metrics:?}"
    );
}

#[tokio::test]
async fn application_insights_export_posts_to_the_connection_strings_ingestion_endpoint() {
    let (url, received) = collector().await;
    let key = "11111111-2222-3333-4444-555555555555";
    let connection = format!("InstrumentationKey={key};IngestionEndpoint={url}/");
    assert_eq!(
        serve_one_traced_request(vec![("APPLICATIONINSIGHTS_CONNECTION_STRING".to_owned(), connection)]).await.status,
        200
    );
    let received = received.lock().unwrap().clone();
    let mut envelopes = Vec::new();
    for r in &received {
        assert_eq!(r.path, "/v2/track", "{received:?}");
        let body = if r.header("content-encoding") == Some("gzip") {
            let mut out = Vec::new();
            flate2::read::GzDecoder::new(r.body.as_slice()).read_to_end(&mut out).unwrap();
            out
        } else {
            r.body.clone()
        };
        match serde_json::from_slice::<Value>(&body).unwrap() {
            Value::Array(items) => envelopes.extend(items),
            one => envelopes.push(one),
        }
    }
    assert!(envelopes.iter().all(|e| e["iKey"] == key), "{envelopes:#?}");
    let request = envelopes
        .iter()
        .find(|e| e["data"]["baseType"] == "RequestData" && e["tags"]["ai.operation.id"] == TRACE_ID)
        .unwrap_or_else(|| panic!("no request telemetry in the request's trace: {envelopes:#?}"));
    assert_eq!(request["tags"]["ai.operation.parentId"], PARENT_ID);
    assert_eq!(request["data"]["baseData"]["name"], ready_operation_id());
    let metric_names: BTreeSet<_> = envelopes
        .iter()
        .filter(|e| e["data"]["baseType"] == "MetricData")
        .flat_map(|e| e["data"]["baseData"]["metrics"].as_array().cloned().unwrap_or_default())
        .filter_map(|m| m["name"].as_str().map(str::to_owned))
        .collect();
    assert!(metric_names.contains("meterline.request.duration"), "{metric_names:?}");
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
