//! Standalone `serve` (no Functions host): the API without the host's invocation routes.
//!
//! `POST /{FunctionName}` carries no credentials: under the host only the host can reach it (127.0.0.1, host
//! mode refuses any other bind address, see `cli.rs`). A standalone server may listen on any address, so it must
//! not serve those routes at all: anyone who could reach it could otherwise run jobs or inject integration
//! events into any tenant.

use meterline::functions::FUNCTIONS;
use serde_json::json;

use crate::support::standalone::Standalone;

#[tokio::test]
async fn a_standalone_server_answers_404_for_every_function_name() {
    let server = Standalone::start().await;
    let client = reqwest::Client::new();
    // The reproduction: an integration event for some tenant, without any Authorization header.
    let injected = json!({
        "Data": {"message": json!({"specversion": "1.0", "type": "meterline.documents.upserted.v1", "source": "/attacker",
            "id": "1", "data": {"tenantId": "00000000-0000-0000-0000-000000000001", "title": "injected"}}).to_string()},
        "Metadata": {}
    });
    let mut names: Vec<String> = FUNCTIONS.iter().map(|f| f.name.to_owned()).collect();
    names.extend(FUNCTIONS.iter().map(|f| f.name.to_ascii_lowercase()));
    names.push("NoSuchFunction".into());
    for name in &names {
        let response = client.post(format!("{}/{name}", server.base)).json(&injected).send().await.unwrap();
        assert_eq!(response.status(), 404, "POST /{name} must not exist standalone");
        let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
        assert_eq!(content_type, "application/problem+json", "POST /{name}");
        let problem: serde_json::Value = response.json().await.unwrap();
        assert_eq!(problem["code"], "NotFound", "POST /{name}: {problem}");
    }
    // The API and the readiness ping still answer.
    assert_eq!(client.get(format!("{}/", server.base)).send().await.unwrap().status(), 200);
    assert_eq!(client.get(format!("{}/api/health", server.base)).send().await.unwrap().status(), 200);
    let unauthenticated = client.get(format!("{}/api/v1/me", server.base)).send().await.unwrap();
    assert_eq!(unauthenticated.status(), 401);
}

#[tokio::test]
async fn head_answers_what_get_answers_without_the_content() {
    let server = Standalone::start().await;
    let client = reqwest::Client::new();
    let url = format!("{}/api/openapi.json", server.base);
    let got = client.get(&url).send().await.unwrap();
    let length = got.headers()["content-length"].to_str().unwrap().to_owned();
    let content_type = got.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(!got.bytes().await.unwrap().is_empty());
    let head = client.head(&url).send().await.unwrap();
    assert_eq!(head.status(), 200, "RFC 9110 §9.1: a server that answers GET answers HEAD");
    assert_eq!(head.headers()["content-length"].to_str().unwrap(), length, "the GET's length");
    assert_eq!(head.headers()["content-type"].to_str().unwrap(), content_type);
    assert!(head.bytes().await.unwrap().is_empty(), "and no content");
    let refused = client.head(format!("{}/api/v1/me", server.base)).send().await.unwrap();
    assert_eq!(refused.status(), 401, "a HEAD is authenticated as its GET is");
}
