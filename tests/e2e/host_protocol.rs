//! The handler under the emulated Functions host: readiness, forwarded and default-mode HTTP, timers, Service Bus.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{DEV_APP_ID, TestApp};
use crate::support::host::{ClientRequest, HostEmulator, HostOptions, HttpMode, ServiceBusDelivery, json_text};

fn assert_problem(body: &Value, status: u16, code: &str) {
    assert_eq!(body["status"], status, "{body}");
    assert_eq!(body["code"], code, "{body}");
    assert!(body["type"].as_str().unwrap().starts_with("https://meterline.dev/problems/"), "{body}");
    assert!(body["title"].is_string(), "{body}");
}

#[tokio::test]
async fn becomes_ready_on_get_root_well_within_the_budget() {
    let mut host = HostEmulator::start().await;
    assert!(host.ready_after < Duration::from_secs(10), "took {:?}", host.ready_after);
    let response = reqwest::get(host.handler_url("/")).await.unwrap();
    assert_eq!(response.status(), 200);
    host.wait_for_output(&format!("functions-host worker {}", host.worker_id), Duration::from_secs(10)).await;
    // All of the output, read to its end after a requested shutdown, so nothing on stderr can still be on its way.
    let stopped = std::process::Command::new("kill").args(["-TERM", &host.pid().to_string()]).status().unwrap();
    assert!(stopped.success());
    assert_eq!(host.wait_exit(Duration::from_secs(15)).await, Some(0));
    host.wait_output_complete(Duration::from_secs(15)).await;
    let output = host.output_text();
    assert!(!output.contains("[stderr]"), "nothing went to stderr at a clean start (or stop): {output}");
}

#[tokio::test]
async fn forwarded_requests_reach_the_router_in_both_http_modes() {
    for mode in [HttpMode::Forwarding, HttpMode::Proxying] {
        let host = HostEmulator::start_with(HostOptions { http_mode: mode, ..HostOptions::default() }).await;
        let live = host.http(ClientRequest::get("/api/health?probe=a&probe=b")).await;
        assert_eq!(live.status, 200, "{mode:?}");
        assert_eq!(live.json()["status"], "ok");
        assert!(live.header("x-request-id").is_some_and(|id| id.len() == 36));

        let ready = host
            .http(
                ClientRequest::get("/api/health/ready")
                    .header("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
                    .header("x-ms-client-request-id", "client-42"),
            )
            .await;
        assert_eq!(ready.status, 200);
        assert_eq!(ready.json()["store"], "sqlite");
        assert_eq!(ready.json()["searchIndex"], "fts5", "the full-text index document search uses");
        assert_eq!(ready.header("x-ms-client-request-id"), Some("client-42"));

        let openapi = host.http(ClientRequest::get("/api/openapi.json")).await;
        assert_eq!(openapi.json()["openapi"], "3.1.0");
    }
}

#[tokio::test]
async fn the_invocation_id_and_trace_id_reach_the_request_log_line() {
    let host = HostEmulator::start().await;
    let response = host
        .http(
            ClientRequest::get("/api/health")
                .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        )
        .await;
    let request_id = response.header("x-request-id").unwrap().to_owned();
    let line = host
        .wait_for_line(
            &format!("completing request {request_id}"),
            |l| l.contains(&request_id) && l.contains("request completed"),
            Duration::from_secs(10),
        )
        .await;
    let json: Value = serde_json::from_str(line.trim_start_matches("[stdout] ")).expect("JSON log line");
    let span = &json["span"];
    assert_eq!(span["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(span["status"], 200);
    assert_eq!(span["route"], "/api/health");
    assert!(span["invocation_id"].as_str().is_some_and(|id| id.len() == 36), "{span}");
    assert!(span["latency_ms"].is_number());
}

#[tokio::test]
async fn errors_on_forwarded_requests_are_problem_json() {
    let host = HostEmulator::start().await;
    let missing = host.http(ClientRequest::get("/api/health/nope")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/problem+json"));
    assert_eq!(missing.header("x-ms-error-code"), Some("NotFound"));
    let body = missing.json();
    assert_problem(&body, 404, "NotFound");
    assert_eq!(body["requestId"].as_str(), missing.header("x-request-id"));

    let wrong_method = host.http(ClientRequest::new("DELETE", "/api/health/ready")).await;
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("GET, HEAD"));
    assert_problem(&wrong_method.json(), 405, "MethodNotAllowed");

    // No function.json route matches: the host itself answers and the handler never sees the request.
    let outside = host.http(ClientRequest::get("/api/nothing-here")).await;
    assert_eq!((outside.status, outside.header("x-emulator")), (404, Some("no-function-route")));
}

#[tokio::test]
async fn default_mode_http_invocations_answer_through_outputs_res() {
    let host = HostEmulator::start().await;
    let (invocation, client) = host
        .invoke_http_default(
            "Health",
            ClientRequest::get("/api/health/ready?x=1").header("x-ms-client-request-id", "c-1"),
        )
        .await;
    let res = &invocation.outputs()["res"];
    assert!(res["statusCode"].is_string(), "statusCode is sent as a string: {res}");
    assert!(res["headers"].as_object().unwrap().values().all(Value::is_string), "header values are strings: {res}");
    assert!(res["body"].is_string(), "{res}");
    assert_eq!(invocation.accepted()["ReturnValue"], Value::Null);
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("application/json"));
    assert_eq!(client.header("x-ms-client-request-id"), Some("c-1"));
    assert_eq!(client.json()["status"], "ready");

    let (_, missing) = host.invoke_http_default("Health", ClientRequest::get("/api/health/missing")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.header("content-type"), Some("application/problem+json"));
    assert_problem(&missing.json(), 404, "NotFound");

    let (_, wrong) =
        host.invoke_http_default("Health", ClientRequest::new("POST", "/api/health").json(&json!({"a": 1}))).await;
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn unknown_function_names_get_a_404_problem_wrapped_for_their_trigger() {
    let host = HostEmulator::start().await;
    // A non-HTTP invocation: the host must see a failure (non-2xx), and the body says why.
    let timer_like =
        host.invoke("NoSuchFunction", &json!({"Data": {"timer": {"IsPastDue": false}}, "Metadata": {}})).await;
    assert_eq!(timer_like.status, 404);
    assert!(timer_like.result.is_none(), "the host fails the invocation");
    assert_problem(&timer_like.problem(), 404, "UnknownFunction");

    // An HTTP invocation: the client deserves a real HTTP 404, so it is wrapped in Outputs.res.
    let http_like = host
        .invoke(
            "NoSuchFunction",
            &json!({"Data": {"req": {"Url": "https://app/api/x", "Method": "GET", "Headers": {}, "Query": {}}}, "Metadata": {}}),
        )
        .await;
    let res = &http_like.outputs()["res"];
    assert_eq!(res["statusCode"], "404");
    assert_eq!(res["headers"]["content-type"], "application/problem+json");
    let body: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_problem(&body, 404, "UnknownFunction");
}

#[tokio::test]
async fn a_default_mode_url_with_characters_a_uri_cannot_carry_is_answered_not_dropped() {
    let host = HostEmulator::start().await;
    for url in
        ["http://app/api/v1/documents?q=a\"b", "http://app/api/v1/documents/é", "http://app/api/v1/documents?q=<x y>"]
    {
        let answered = host
            .invoke(
                "Documents",
                &json!({"Data": {"req": {"Url": url, "Method": "GET", "Headers": {}}}, "Metadata": {}}),
            )
            .await;
        assert_eq!(answered.status, 200, "{url}");
        let res = &answered.outputs()["res"];
        assert_eq!(res["statusCode"], "401", "{url}: the API answered it (no token): {res}");
    }
    assert!(!host.output_text().contains("panicked"), "{}", host.output_text());
}

/// A default-mode `GET` envelope as the host builds it: `Url`, and the client's headers (`Host` among them).
fn get_envelope(url: &str, headers: &[(&str, &str)]) -> Value {
    let headers: serde_json::Map<String, Value> = headers.iter().map(|(n, v)| ((*n).to_owned(), json!([v]))).collect();
    json!({"Data": {"req": {"Url": url, "Method": "GET", "Headers": headers, "Query": {}}}, "Metadata": {}})
}

#[actix_web::test]
async fn default_mode_links_name_the_origin_the_client_called_as_direct_requests_do() {
    let app = TestApp::start().await;
    let token = app.token("aaaaaaaa-0000-0000-0000-00000000000a", "Documents.Read,Documents.Write", DEV_APP_ID).await;
    for title in ["one", "two"] {
        let body = json!({"title": title, "docType": "memo"});
        let created = app.send(&token, ClientRequest::new("POST", "/api/v1/documents").json(&body)).await;
        assert_eq!(created.status, 201);
    }
    let origin = |link: &str| link.split("/api/v1/documents?").next().unwrap().to_owned();
    let direct = app
        .send(
            &token,
            ClientRequest::get("/api/v1/documents?maxpagesize=1")
                .header("Host", "meterline.azurewebsites.net")
                .header("X-Forwarded-Proto", "https"),
        )
        .await
        .json();
    assert_eq!(origin(direct["nextLink"].as_str().unwrap()), "https://meterline.azurewebsites.net");
    let bearer = format!("Bearer {token}");
    let url = "https://meterline.azurewebsites.net/api/v1/documents?maxpagesize=1";
    for (url, headers, expected) in [
        // What a direct request with these headers gets.
        (
            url,
            vec![("Host", "meterline.azurewebsites.net"), ("X-Forwarded-Proto", "https")],
            "https://meterline.azurewebsites.net",
        ),
        // No forwarded scheme: the Url's, which is the scheme the host was called with.
        (url, vec![("Host", "meterline.azurewebsites.net")], "https://meterline.azurewebsites.net"),
        // No Host header: the Url's authority.
        ("http://api.contoso.example:8443/api/v1/documents?maxpagesize=1", vec![], "http://api.contoso.example:8443"),
        // A Host that is no host name: the Url's authority too, never a link to `localhost`.
        (url, vec![("Host", "evil.com/x")], "https://meterline.azurewebsites.net"),
        // Forwarded headers first, as on a direct request.
        (
            "http://127.0.0.1:7071/api/v1/documents?maxpagesize=1",
            vec![
                ("Host", "127.0.0.1:7071"),
                ("X-Forwarded-Host", "api.contoso.example"),
                ("X-Forwarded-Proto", "https"),
            ],
            "https://api.contoso.example",
        ),
    ] {
        let mut headers = headers;
        headers.push(("Authorization", &bearer));
        let answered = app.invoke("Documents", &get_envelope(url, &headers)).await;
        assert_eq!(answered.status, 200);
        let res = &answered.outputs()["res"];
        assert_eq!(res["statusCode"], "200", "{res}");
        let page: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
        let link = page["nextLink"].as_str().unwrap();
        assert_eq!(origin(link), expected, "{url} {headers:?}");
        assert!(link.contains("/api/v1/documents?maxpagesize=1&cursor="), "{link}");
    }
}

#[actix_web::test]
async fn a_binary_answer_in_default_mode_reaches_the_client_as_a_problem_in_a_successful_invocation() {
    let app = TestApp::start().await;
    let text = app.invoke("Docs", &get_envelope("https://h/api/docs/swagger-initializer.js", &[("Host", "h")])).await;
    assert_eq!(text.status, 200);
    let res = &text.outputs()["res"];
    assert_eq!(res["statusCode"], "200", "{res}");
    assert!(res["body"].as_str().unwrap().contains("/api/openapi.json"), "text passes as it is: {res}");

    let image = app.invoke("Docs", &get_envelope("https://h/api/docs/favicon-32x32.png", &[("Host", "h")])).await;
    assert_eq!(image.status, 200, "the host passes Outputs.res to the client only from a 2xx invocation");
    let res = &image.outputs()["res"];
    assert_eq!(res["statusCode"], "502", "{res}");
    assert_eq!(res["headers"]["content-type"], "application/problem+json");
    let problem: Value = serde_json::from_str(res["body"].as_str().unwrap()).unwrap();
    assert_problem(&problem, 502, "BinaryResponseUnsupported");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("image/png") && detail.contains("enableProxyingHttpRequest"), "{detail}");

    // A HEAD carries no content, so nothing binary: the image's header fields, as a direct HEAD gets them.
    let mut head = get_envelope("https://h/api/docs/favicon-32x32.png", &[("Host", "h")]);
    head["Data"]["req"]["Method"] = json!("HEAD");
    let answered = app.invoke("Docs", &head).await;
    let res = &answered.outputs()["res"];
    assert_eq!((res["statusCode"].as_str(), res["body"].as_str()), (Some("200"), Some("")), "{res}");
    assert_eq!(res["headers"]["content-type"], "image/png");
}

async fn job_runs(host: &HostEmulator, job: &str) -> Vec<meterline::store::JobRun> {
    use meterline::store::prelude::*;
    let store = meterline::store::SqliteStore::open(&host.app_root.join("data/meterline.db")).await.unwrap();
    store.recent_job_runs(job, 10).await.unwrap()
}

#[tokio::test]
async fn timer_invocations_run_their_job_with_or_without_the_schedule_monitor() {
    let host = HostEmulator::start().await;
    let catch_up = host
        .invoke_timer(
            "UsageRollup",
            json!({"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": true}),
        )
        .await;
    assert_eq!(catch_up.accepted()["Outputs"], json!({}));
    assert!(
        catch_up.logs().iter().any(|l| l.starts_with("UsageRollup:") && l.contains("past due")),
        "{:?}",
        catch_up.logs()
    );

    let first_run = host
        .invoke_timer(
            "UsageRollup",
            json!({
                "Schedule": {"AdjustForDST": true},
                "ScheduleStatus": {"Last": "0001-01-01T00:00:00+00:00", "Next": "2025-01-15T10:20:00+00:00", "LastUpdated": "0001-01-01T00:00:00"},
                "IsPastDue": false
            }),
        )
        .await;
    assert!(first_run.logs().iter().all(|l| !l.contains("past due")), "{:?}", first_run.logs());

    let outbox = host
        .invoke_timer(
            "OutboxPublisher",
            json!({"Schedule": {"AdjustForDST": false}, "ScheduleStatus": null, "IsPastDue": "True"}),
        )
        .await;
    assert!(outbox.logs()[0].starts_with("OutboxPublisher:"));

    let runs = job_runs(&host, "usage-rollup").await;
    assert_eq!(runs.len(), 2);
    assert_eq!(runs.iter().filter(|r| r.is_past_due).count(), 1);
    assert!(runs.iter().all(|r| r.trigger == "timer" && r.outcome == "succeeded"));
    assert!(job_runs(&host, "outbox-publish").await[0].is_past_due, "stringified booleans are understood");
}

#[tokio::test]
async fn service_bus_messages_are_decoded_from_double_encoding_and_stringified_metadata() {
    let host = HostEmulator::start().await;
    // Not applicable (the tenant id is not a uuid), so the consumer quarantines it with its raw body: the body
    // stored must be exactly the one sent, quotes and backslashes included.
    let event = json!({
        "specversion": "1.0", "id": "evt-1", "source": "/crm", "type": "meterline.tenant.upserted.v1",
        "time": "2026-11-24T10:00:00Z", "datacontenttype": "application/json",
        "data": {"tenantId": "acme", "name": "quotes \" and \\ survive", "planCode": "basic"}
    })
    .to_string();
    let mut message = ServiceBusDelivery::new(&event);
    message.delivery_count = 2;
    message.content_type = Some("application/cloudevents+json".into());
    message.application_properties.insert("priority".into(), json!(5));
    let response = host.invoke_service_bus("IntegrationEvents", &message).await;
    let log = response.logs().join("\n");
    assert!(log.contains(&format!("message {} delivery 2: quarantined as", message.message_id)), "{log}");
    let store = meterline::store::SqliteStore::open(&host.app_root.join("data/meterline.db")).await.unwrap();
    let quarantined = meterline::store::IntegrationStore::list_quarantine(&store, 10).await.unwrap();
    assert_eq!(quarantined[0].raw_body, event, "the body is decoded exactly once");
    assert_eq!(quarantined[0].delivery_count, Some(2));
    assert_eq!(quarantined[0].message_id.as_deref(), Some(message.message_id.as_str()));
    assert_eq!(quarantined[0].content_type.as_deref(), Some("application/cloudevents+json"));

    // A body whose keys collide with Metadata keys overwrites them on the host; the body still decodes.
    let colliding = json!({"specversion": "1.0", "id": "evt-2", "source": "/x", "type": "t.v1", "MessageId": "forged", "DeliveryCount": 99}).to_string();
    let response = host.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&colliding)).await;
    assert!(response.logs()[0].contains("unknown event type \"t.v1\""), "{:?}", response.logs());

    let plain = host.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new("hello")).await;
    assert!(plain.logs()[0].contains("not JSON"), "{:?}", plain.logs());

    let missing_body = host
        .invoke("IntegrationEvents", &json!({"Data": {}, "Metadata": {"DeliveryCount": json_text(&json!(1))}}))
        .await;
    assert_eq!(missing_body.status, 400, "the host abandons the message");
    assert_problem(&missing_body.problem(), 400, "InvalidInvocation");
}

#[tokio::test]
async fn chunked_invocation_bodies_are_read_whole() {
    let host = HostEmulator::start().await;
    let envelope = serde_json::to_vec(&json!({
        "Data": {"timer": {"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false}},
        "Metadata": {"sys": {"MethodName": "UsageRollup", "UtcNow": "2025-01-15T10:20:00.0121234Z", "RandGuid": "0f8fad5b-d9cb-469f-a165-70867728950e"}}
    }))
    .unwrap();
    for chunk_size in [1, 7, 64] {
        let response = host.invoke_raw("UsageRollup", envelope.clone(), chunk_size).await;
        assert!(response.logs()[0].starts_with("UsageRollup:"), "chunk size {chunk_size}");
    }
}

#[tokio::test]
async fn malformed_invocations_are_rejected_with_problems() {
    let host = HostEmulator::start().await;
    let empty = host.invoke_raw("UsageRollup", Vec::new(), 16).await;
    assert_eq!(empty.status, 400);
    assert_problem(&empty.problem(), 400, "InvalidInvocation");
    let broken = host.invoke_raw("UsageRollup", b"{\"Data\":".to_vec(), 3).await;
    assert_problem(&broken.problem(), 400, "MalformedJson");
    let not_object = host.invoke_raw("UsageRollup", b"[]".to_vec(), 3).await;
    assert_problem(&not_object.problem(), 400, "InvalidInvocation");
}

#[tokio::test]
async fn the_packaged_zip_is_an_app_root_the_host_can_start() {
    let Ok(zip) = std::env::var("METERLINE_TEST_PACKAGE_ZIP") else {
        eprintln!(
            "SKIPPED the_packaged_zip_is_an_app_root_the_host_can_start: METERLINE_TEST_PACKAGE_ZIP is not set (./scripts/test sets it)"
        );
        return;
    };
    let root = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("python3")
        .args(["-c", "import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])", &zip])
        .arg(root.path())
        .status()
        .unwrap();
    assert!(status.success());
    // zipfile.extractall drops permissions; restore them from the entries as `unzip` and Azure do.
    let modes = std::process::Command::new("python3")
        .args(["-c", "import sys, zipfile\nfor i in zipfile.ZipFile(sys.argv[1]).infolist(): print(oct(i.external_attr >> 16), i.filename)", &zip])
        .output()
        .unwrap();
    let listing = String::from_utf8(modes.stdout).unwrap();
    assert!(listing.lines().any(|l| l == "0o100755 handler"), "the executable keeps mode 755 in the zip:\n{listing}");
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(root.path().join("handler"), std::fs::Permissions::from_mode(0o755)).unwrap();

    let layout = crate::support::host::AppLayout::from_app_root(root.path());
    let names: Vec<_> = layout.functions.iter().map(|f| f.name.as_str()).collect();
    let expected: Vec<_> = meterline::functions::FUNCTIONS
        .iter()
        .map(|f| f.name)
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    assert_eq!(names, expected);
    let host = HostEmulator::start_with(HostOptions {
        executable: root
            .path()
            .join(layout.host_json["customHandler"]["description"]["defaultExecutablePath"].as_str().unwrap()),
        app_root: Some(root.path().to_path_buf()),
        layout,
        ..HostOptions::default()
    })
    .await;
    assert_eq!(host.http(ClientRequest::get("/api/health/ready")).await.status, 200);
    assert!(root.path().join("data/meterline.db").is_file(), "the store lives under the app root");
}
