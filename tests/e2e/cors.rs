//! Browsers' cross-origin calls (CORS): the preflight answered before authentication and metering, the fields an
//! allowed page's answers carry (problems included), refusals for other origins, and 501 for methods HTTP does
//! not define. In process through `startup::app`, and once in headless Chromium from pages of two other origins.

use std::time::Duration;

use serde_json::{Value, json};

use crate::support::app::{DEV_APP_ID, TestApp};
use crate::support::browser::{chromium, run_script};
use crate::support::endpoints::{Reply, TestServer};
use crate::support::host::{ClientRequest, ClientResponse};

const DIR: &str = "c0c0c0c0-0000-0000-0000-0000000000c1";
const PAGE: &str = "https://app.example.test";

/// Every value of the field `name` in `res`, joined as one list.
fn all(res: &ClientResponse, name: &str) -> String {
    let values: Vec<&str> =
        res.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str()).collect();
    values.join(", ")
}

fn preflight(path: &str, origin: &str, method: &str, fields: &str) -> ClientRequest {
    ClientRequest::new("OPTIONS", path)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", method)
        .header("Access-Control-Request-Headers", fields)
}

fn usage_events(app: &TestApp) -> i64 {
    app.db().query_row("SELECT COUNT(*) FROM usage_events", [], |r| r.get(0)).unwrap()
}

#[actix_web::test]
async fn an_allowed_pages_preflight_is_answered_unmetered_and_its_calls_can_be_read() {
    let app = TestApp::builder()
        .setting("METERLINE_CORS_ALLOWED_ORIGINS", format!("{PAGE}, http://localhost:5173"))
        .start()
        .await;
    let token = app.token(DIR, "Documents.Read,Documents.Write", DEV_APP_ID).await;

    let before = usage_events(&app);
    let res =
        app.http(preflight("/api/v1/documents", PAGE, "POST", "authorization, content-type, idempotency-key")).await;
    assert_eq!(res.status, 204, "{}", String::from_utf8_lossy(&res.body));
    assert_eq!(res.header("access-control-allow-origin"), Some(PAGE));
    assert_eq!(res.header("access-control-allow-methods"), Some("GET, POST, HEAD"));
    assert_eq!(res.header("access-control-allow-headers"), Some("authorization, content-type, idempotency-key"));
    assert_eq!(res.header("access-control-max-age"), Some("7200"));
    assert!(all(&res, "vary").contains("Origin"), "{:?}", res.headers);
    assert_eq!(res.header("access-control-allow-credentials"), None, "bearer tokens, never cookies");
    assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    assert_eq!(res.header("cache-control"), Some("private, no-cache"));
    // A percent-encoded path is the path the router serves: its preflight is answered the same, unmetered.
    let encoded = app.http(preflight("/%61pi/v1/documents", PAGE, "POST", "authorization")).await;
    assert_eq!((encoded.status, encoded.header("access-control-allow-origin")), (204, Some(PAGE)));
    // A document's path allows what its route table says, as a 405 would list it.
    let res =
        app.http(preflight("/api/v1/documents/0190f2c4-0000-7000-8000-000000000001", PAGE, "PATCH", "if-match")).await;
    assert_eq!(res.header("access-control-allow-methods"), Some("DELETE, GET, PATCH, PUT, HEAD"));
    // The same OPTIONS without the preflight's fields is an ordinary request: it meets authentication, and is
    // metered like any other call; the preflights above were not.
    let plain = app.http(ClientRequest::new("OPTIONS", "/api/v1/documents")).await;
    assert_eq!(plain.status, 401);
    assert_eq!(usage_events(&app), before + 1, "the preflights left no usage event, the plain OPTIONS one");

    // The calls themselves: every answer names the page, and exposes the fields a script needs.
    let me = app.send(&token, ClientRequest::get("/api/v1/me").header("Origin", "http://localhost:5173")).await;
    assert_eq!(me.status, 200);
    assert_eq!(me.header("access-control-allow-origin"), Some("http://localhost:5173"));
    let exposed = me.header("access-control-expose-headers").unwrap().to_ascii_lowercase();
    for field in
        ["etag", "location", "ratelimit", "ratelimit-policy", "retry-after", "x-request-id", "idempotency-replayed"]
    {
        assert!(exposed.split(", ").any(|f| f == field), "{field} is exposed: {exposed}");
    }
    assert!(all(&me, "vary").contains("Origin"), "{:?}", me.headers);
    // A problem too: a page reads why it was refused.
    let refused = app.http(ClientRequest::get("/api/v1/me").header("Origin", PAGE)).await;
    assert_eq!((refused.status, refused.header("access-control-allow-origin")), (401, Some(PAGE)));
    // A problem's shape also depends on `Accept` (problem+json or the Azure envelope), said once.
    assert_eq!(all(&refused, "vary"), "Accept, Origin", "{:?}", refused.headers);
    // Beside the API (the OpenAPI document) as well; a request with no Origin gets no CORS field.
    let doc = app.http(ClientRequest::get("/api/openapi.json").header("Origin", PAGE)).await;
    assert_eq!(doc.header("access-control-allow-origin"), Some(PAGE));
    let same_origin = app.send(&token, ClientRequest::get("/api/v1/me")).await;
    assert_eq!(same_origin.header("access-control-allow-origin"), None);
    // Yet every answer says it depends on the origin, with or without one: a cache (the browser's own included)
    // must not give a page an answer made without its origin, such as a reference page's file.
    assert!(all(&same_origin, "vary").contains("Origin"), "{:?}", same_origin.headers);
    let file = app.http(ClientRequest::get("/api/docs/")).await;
    assert_eq!(file.status, 200);
    assert!(all(&file, "vary").contains("Origin"), "{:?}", file.headers);
}

#[actix_web::test]
async fn pages_of_other_origins_are_refused_and_none_are_allowed_by_default() {
    for (setting, origin) in [(Some(PAGE), "https://evil.example.test"), (Some(PAGE), "null"), (None, PAGE)] {
        let mut builder = TestApp::builder();
        if let Some(origins) = setting {
            builder = builder.setting("METERLINE_CORS_ALLOWED_ORIGINS", origins);
        }
        let app = builder.start().await;
        let token = app.token(DIR, "Documents.Read", DEV_APP_ID).await;
        let res = app.http(preflight("/api/v1/documents", origin, "GET", "authorization")).await;
        assert_eq!(res.status, 403, "{origin}");
        assert_eq!(res.header("content-type"), Some("application/problem+json"));
        assert_eq!(res.json()["code"], "OriginNotAllowed");
        assert_eq!(res.header("access-control-allow-origin"), None);
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
        // The call itself is answered (a token, not the origin, authorizes it), but a browser keeps it from the page.
        let me = app.send(&token, ClientRequest::get("/api/v1/me").header("Origin", origin)).await;
        assert_eq!((me.status, me.header("access-control-allow-origin")), (200, None), "{origin}");
    }
}

#[actix_web::test]
async fn any_origin_is_answered_with_a_wildcard() {
    let app = TestApp::builder().setting("METERLINE_CORS_ALLOWED_ORIGINS", "*").start().await;
    let token = app.token(DIR, "Documents.Read", DEV_APP_ID).await;
    let res = app.http(preflight("/api/v1/me", "https://anyone.example.test", "GET", "authorization")).await;
    assert_eq!((res.status, res.header("access-control-allow-origin")), (204, Some("*")));
    assert!(!all(&res, "vary").contains("Origin,") && !all(&res, "vary").starts_with("Origin"), "{:?}", res.headers);
    let me = app.send(&token, ClientRequest::get("/api/v1/me").header("Origin", "https://anyone.example.test")).await;
    assert_eq!(me.header("access-control-allow-origin"), Some("*"));
    assert!(!all(&me, "vary").contains("Origin"), "the answer is the same for every page: {:?}", me.headers);
    let asked_by_none = app.send(&token, ClientRequest::get("/api/v1/me")).await;
    assert_eq!(asked_by_none.header("access-control-allow-origin"), Some("*"), "also when no page asks");
}

#[actix_web::test]
async fn a_method_no_registry_knows_is_501_and_a_known_one_the_path_lacks_405() {
    let app = TestApp::start().await;
    let token = app.token(DIR, "Documents.Read", DEV_APP_ID).await;
    let unknown = app.send(&token, ClientRequest::new("FROB", "/api/v1/documents")).await;
    assert_eq!(unknown.status, 501, "{}", String::from_utf8_lossy(&unknown.body));
    assert_eq!(unknown.json()["code"], "MethodNotImplemented");
    let page = app.http(ClientRequest::new("FROB", "/api/docs/")).await;
    assert_eq!((page.status, page.json()["code"].as_str()), (501, Some("MethodNotImplemented")));
    let known = app.send(&token, ClientRequest::new("DELETE", "/api/v1/me")).await;
    assert_eq!((known.status, known.header("allow")), (405, Some("GET, HEAD")));
    // Registered methods (IANA's registry: WebDAV's, QUERY) are known, so a path that lacks them is 405.
    for method in ["QUERY", "PROPFIND"] {
        let registered = app.send(&token, ClientRequest::new(method, "/api/v1/documents")).await;
        assert_eq!(registered.status, 405, "{method}");
    }
    let page = app.http(ClientRequest::new("PUT", "/api/docs/")).await;
    assert_eq!(page.status, 405);
}

/// A page's origin: an empty HTML page on a loopback port of its own.
async fn page_server() -> TestServer {
    TestServer::http(|_| Reply::Respond {
        status: 200,
        headers: vec![("Content-Type".into(), "text/html; charset=utf-8".into())],
        body: "<!doctype html><title>a client page</title>".into(),
    })
    .await
}

/// Runs `tests/dashboard/cors.mjs`: pages at `pages` call the API at `api` with `token` from headless Chromium.
async fn browse(api: &str, token: &str, pages: &[String]) -> Value {
    let plan = json!({"chromium": chromium(), "api": api, "token": token, "pages": pages});
    run_script("cors.mjs", &plan, Duration::from_secs(120)).await
}

#[actix_web::test]
async fn a_page_of_an_allowed_origin_uses_the_api_from_a_real_browser_and_another_cannot() {
    let (allowed, other) = (page_server().await, page_server().await);
    let app = TestApp::builder().setting("METERLINE_CORS_ALLOWED_ORIGINS", allowed.url()).start().await;
    let token = app.token(DIR, "Documents.Read,Documents.Write", DEV_APP_ID).await;
    let state = app.state.clone();
    let server = actix_web::HttpServer::new(move || {
        meterline::startup::app(state.clone(), meterline::startup::Surface::ApiOnly)
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .unwrap();
    let api = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);

    let seen = browse(&api, &token, &[allowed.url(), other.url()]).await;
    handle.stop(false).await;

    let page = &seen[allowed.url()];
    assert_eq!(page["me"]["status"], 200, "{page}");
    assert!(page["me"]["ratelimit"].as_str().is_some_and(|r| r.contains("r=")), "RateLimit readable: {page}");
    assert!(page["me"]["requestId"].is_string(), "{page}");
    assert_eq!(page["created"]["status"], 201, "a JSON POST with an idempotency key passed its preflight: {page}");
    assert!(page["created"]["location"].as_str().is_some_and(|l| l.contains("/api/v1/documents/")), "{page}");
    assert!(page["created"]["etag"].is_string(), "{page}");
    assert_eq!(page["patched"]["status"], 200, "a PATCH with If-Match passed its preflight: {page}");
    assert_eq!(page["cachedFile"]["status"], 200, "a file cached without CORS is not reused for the page: {page}");
    assert_eq!(page["refused"]["status"], 401, "{page}");
    assert_eq!(page["refused"]["code"], "Unauthenticated", "a page reads the problem: {page}");
    let other = &seen[other.url()];
    assert!(other["me"]["error"].is_string(), "another origin's page cannot read the answer: {other}");
    assert!(other["created"]["error"].is_string(), "nor pass a preflight: {other}");
    let stored: i64 = app.db().query_row("SELECT COUNT(*) FROM documents", [], |r| r.get(0)).unwrap();
    assert_eq!(stored, 1, "the refused preflight kept the other page's POST from being sent at all");
}
