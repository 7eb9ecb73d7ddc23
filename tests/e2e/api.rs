//! The REST API v1 in process (`startup::app` on a fresh store, with a manual clock): documents, admin resources and
//! every convention of docs/api-design.md.

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::support::app::{DEV_APP_ID, TestApp, TestAppBuilder};
use crate::support::host::{ClientRequest, ClientResponse};

const DIR_A: &str = "aaaaaaaa-0000-0000-0000-00000000000a";
const DIR_B: &str = "bbbbbbbb-0000-0000-0000-00000000000b";

/// The app in local auth mode with dev tokens for two tenants and a platform administrator.
struct Api {
    app: TestApp,
    a_writer: String,
    a_reader: String,
    b_writer: String,
    admin: String,
    a_admin: String,
}

async fn api() -> Api {
    api_with(&[]).await
}

/// [`api`] with extra handler settings.
async fn api_with(settings: &[(&str, &str)]) -> Api {
    let mut builder = TestApp::builder();
    for (name, value) in settings {
        builder = builder.setting(name, *value);
    }
    api_of(builder).await
}

/// [`api`] on the app `builder` makes.
async fn api_of(builder: TestAppBuilder) -> Api {
    let app = builder.start().await;
    let a_writer = app.token(DIR_A, "Documents.Read,Documents.Write", DEV_APP_ID).await;
    let a_reader = app.token(DIR_A, "Documents.Read", "reader-app").await;
    let b_writer = app.token(DIR_B, "Documents.Read,Documents.Write", DEV_APP_ID).await;
    let admin = app.token(DIR_B, "Platform.Admin", "ops-console").await;
    let a_admin = app.token(DIR_A, "Tenant.Admin", "a-admin-app").await;
    Api { app, a_writer, a_reader, b_writer, admin, a_admin }
}

impl Api {
    async fn send(&self, token: &str, request: ClientRequest) -> ClientResponse {
        self.app.send(token, request).await
    }

    async fn create(&self, token: &str, body: Value) -> ClientResponse {
        self.send(token, ClientRequest::new("POST", "/api/v1/documents").json(&body)).await
    }

    async fn get(&self, token: &str, path: &str) -> ClientResponse {
        self.send(token, ClientRequest::get(path)).await
    }

    /// Follows nextLink to the end; returns every item and the number of pages.
    async fn all_pages(&self, token: &str, first: &str) -> (Vec<Value>, usize) {
        let mut items = Vec::new();
        let mut link = Some(first.to_owned());
        let mut pages = 0;
        while let Some(path) = link {
            let page = self.get(token, &path).await;
            assert_eq!(page.status, 200, "{path}: {}", String::from_utf8_lossy(&page.body));
            let body = page.json();
            items.extend(body["value"].as_array().unwrap().iter().cloned());
            link = body["nextLink"].as_str().map(str::to_owned);
            pages += 1;
            assert!(pages < 200, "runaway paging");
        }
        (items, pages)
    }
}

fn doc(title: &str) -> Value {
    json!({"title": title, "docType": "regulation", "status": "published", "tags": ["EU", "tax"]})
}

fn problem(response: &ClientResponse, status: u16, code: &str) -> Value {
    assert_eq!(response.status, status, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert_eq!(response.header("x-ms-error-code"), Some(code));
    let body = response.json();
    assert_eq!(body["code"], code, "{body}");
    body
}

#[actix_web::test]
async fn documents_crud_with_etags_and_conditional_requests() {
    let api = api().await;
    let created = api.create(&api.a_writer, doc("Customs code")).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let body = created.json();
    let id = body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/documents/{id}");
    assert_eq!(created.header("location"), Some(path.as_str()));
    let etag = created.header("etag").unwrap().to_owned();
    assert_eq!(body["etag"], etag);
    assert_eq!(body["tags"], json!(["eu", "tax"]), "tags are normalized");
    // So are the codes, written and filtered by: both stores find and count them alike.
    let coded = api.create(&api.a_writer, json!({"title": "Coded", "docType": "Guidance", "jurisdiction": "EU"})).await;
    assert_eq!(
        (coded.json()["docType"].clone(), coded.json()["jurisdiction"].clone()),
        (json!("guidance"), json!("eu"))
    );
    for filter in ["jurisdiction=EU", "jurisdiction=eu", "docType=GUIDANCE"] {
        let found = api.get(&api.a_reader, &format!("/api/v1/documents?{filter}")).await.json();
        assert_eq!(found["value"].as_array().unwrap().len(), 1, "{filter}: {found}");
    }

    let read = api.get(&api.a_reader, &path).await;
    assert_eq!((read.status, read.header("etag")), (200, Some(etag.as_str())));
    let cached = api.send(&api.a_reader, ClientRequest::get(&path).header("If-None-Match", &etag)).await;
    assert_eq!(cached.status, 304);
    assert!(cached.body.is_empty());
    // RFC 9110 §13.1.1: a read under an If-Match that is not current is 412; the current one or * reads.
    let stale_read = api.send(&api.a_reader, ClientRequest::get(&path).header("If-Match", "\"99\"")).await;
    problem(&stale_read, 412, "PreconditionFailed");
    assert_eq!(stale_read.header("etag"), Some(etag.as_str()));
    for current in [etag.as_str(), "*"] {
        assert_eq!(api.send(&api.a_reader, ClientRequest::get(&path).header("If-Match", current)).await.status, 200);
    }

    let replacement = json!({"title": "Customs code (2026)", "docType": "regulation", "summary": "Consolidated text"});
    let put = |etag: Option<&str>| {
        let mut r = ClientRequest::new("PUT", &path).json(&replacement);
        if let Some(etag) = etag {
            r = r.header("If-Match", etag);
        }
        r
    };
    problem(&api.send(&api.a_writer, put(None)).await, 428, "PreconditionRequired");
    // Strong comparison compares the tags (RFC 9110 §8.8.3.2): "01" and "+1" are not "1".
    for stale_tag in ["\"99\"", "\"abc\"", "W/\"1\"", "abc", "\"01\"", "\"+1\""] {
        let stale = api.send(&api.a_writer, put(Some(stale_tag))).await;
        problem(&stale, 412, "PreconditionFailed");
        assert_eq!(stale.header("etag"), Some(etag.as_str()), "{stale_tag}: 412 tells the current ETag");
    }
    // RFC 9110 §13.1.2: If-None-Match on a write names what must not be current: * (it exists) or its ETag.
    for unwanted in ["*", etag.as_str()] {
        let refused = api.send(&api.a_writer, put(Some(&etag)).header("If-None-Match", unwanted)).await;
        problem(&refused, 412, "PreconditionFailed");
    }
    let replaced = api.send(&api.a_writer, put(Some(&etag)).header("If-None-Match", "\"99\"")).await;
    assert_eq!(replaced.status, 200);
    let etag2 = replaced.header("etag").unwrap().to_owned();
    assert_ne!(etag2, etag);
    assert_eq!(replaced.json()["status"], "draft", "PUT replaces: an omitted status is the default");

    let merge = |content_type: &str, etag: &str| {
        ClientRequest::new("PATCH", &path)
            .body(json!({"summary": null, "jurisdiction": "eu"}).to_string())
            .header("Content-Type", content_type)
            .header("If-Match", etag)
    };
    problem(&api.send(&api.a_writer, merge("application/json", &etag2)).await, 415, "UnsupportedMediaType");
    // A member twice in a merge patch is refused, not resolved to the last of the two.
    let twice = ClientRequest::new("PATCH", &path)
        .body(r#"{"title":"first","title":"second"}"#)
        .header("Content-Type", "application/merge-patch+json")
        .header("If-Match", &etag2);
    let twice = problem(&api.send(&api.a_writer, twice).await, 422, "ValidationFailed");
    assert_eq!(twice["errors"][0]["pointer"], "/title", "{twice}");
    let patched = api.send(&api.a_writer, merge("application/merge-patch+json", &etag2)).await;
    assert_eq!(patched.status, 200, "{}", String::from_utf8_lossy(&patched.body));
    let patched_body = patched.json();
    assert_eq!((patched_body["summary"].clone(), patched_body["jurisdiction"].clone()), (Value::Null, json!("eu")));
    assert_eq!(patched_body["title"], "Customs code (2026)", "untouched fields stay");
    let etag3 = patched.header("etag").unwrap().to_owned();
    let bad_patch = ClientRequest::new("PATCH", &path)
        .body(json!({"title": ""}).to_string())
        .header("Content-Type", "application/merge-patch+json")
        .header("If-Match", &etag3);
    assert_eq!(
        problem(&api.send(&api.a_writer, bad_patch).await, 422, "ValidationFailed")["errors"][0]["field"],
        "title"
    );
    // A patch that changes nothing makes no new version; a stale ETag is still refused.
    for nothing in [json!({}), json!({"title": "Customs code (2026)"})] {
        let unchanged = ClientRequest::new("PATCH", &path)
            .body(nothing.to_string())
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", &etag3);
        let unchanged = api.send(&api.a_writer, unchanged).await;
        assert_eq!(unchanged.status, 200, "{}", String::from_utf8_lossy(&unchanged.body));
        assert_eq!(unchanged.header("etag"), Some(etag3.as_str()), "{nothing}");
        assert_eq!(unchanged.json()["title"], "Customs code (2026)");
    }
    let versions: i64 = api
        .app
        .db()
        .query_row("SELECT count(*) FROM audit_events WHERE summary LIKE 'updated document to version%'", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(versions, 2, "the two patches above that changed something, not these");
    let stale = ClientRequest::new("PATCH", &path)
        .body("{}")
        .header("Content-Type", "application/merge-patch+json")
        .header("If-Match", &etag2);
    problem(&api.send(&api.a_writer, stale).await, 412, "PreconditionFailed");

    problem(&api.send(&api.a_writer, ClientRequest::new("DELETE", &path)).await, 428, "PreconditionRequired");
    let deleted = api.send(&api.a_writer, ClientRequest::new("DELETE", &path).header("If-Match", &etag3)).await;
    assert_eq!(deleted.status, 204);
    problem(&api.get(&api.a_reader, &path).await, 404, "NotFound");
    problem(
        &api.send(&api.a_writer, ClientRequest::new("DELETE", &path).header("If-Match", "*")).await,
        404,
        "NotFound",
    );
    problem(&api.get(&api.a_reader, "/api/v1/documents/not-a-uuid").await, 404, "NotFound");
    problem(&api.create(&api.a_reader, doc("x")).await, 403, "InsufficientScope");
}

#[actix_web::test]
async fn a_client_that_accepts_only_json_gets_the_azure_error_envelope() {
    let api = api().await;
    let azure = |r: ClientRequest| r.header("Accept", "application/json");
    let bad = api
        .send(&api.a_writer, azure(ClientRequest::new("POST", "/api/v1/documents").json(&json!({"docType": 7}))))
        .await;
    assert_eq!(bad.status, 422);
    assert_eq!(bad.header("content-type"), Some("application/json"));
    assert_eq!(bad.header("x-ms-error-code"), Some("ValidationFailed"));
    let body = bad.json();
    assert_eq!(body["error"]["code"], "ValidationFailed", "{body}");
    let targets: BTreeSet<&str> =
        body["error"]["details"].as_array().unwrap().iter().map(|d| d["target"].as_str().unwrap()).collect();
    assert_eq!(targets, BTreeSet::from(["/docType", "/title"]), "{body}");
    assert_eq!(body["error"]["innererror"]["status"], 422);
    assert!(body["error"]["innererror"]["requestId"].is_string());
    let missing = api
        .send(&api.a_reader, azure(ClientRequest::get("/api/v1/documents/00000000-0000-0000-0000-000000000000")))
        .await;
    assert_eq!((missing.status, missing.json()["error"]["code"].as_str()), (404, Some("NotFound")));
    let query = api.send(&api.a_reader, azure(ClientRequest::get("/api/v1/documents?colour=red"))).await.json();
    assert_eq!(query["error"]["target"], "colour", "one detail: its target is the error's");
    // problem+json stays the default, and wins when the client names it.
    for accept in [None, Some("*/*"), Some("application/problem+json, application/json")] {
        let request = ClientRequest::get("/api/v1/documents?colour=red");
        let request = match accept {
            Some(a) => request.header("Accept", a),
            None => request,
        };
        let response = api.send(&api.a_reader, request).await;
        assert_eq!(response.header("content-type"), Some("application/problem+json"), "{accept:?}");
    }
}

#[actix_web::test]
async fn bad_input_gets_field_level_problems_and_writes_nothing() {
    let api = api().await;
    let unknown = problem(
        &api.create(&api.a_writer, json!({"title": "t", "docType": "x", "colour": "red"})).await,
        422,
        "ValidationFailed",
    );
    assert_eq!(unknown["errors"][0]["pointer"], "/colour", "{unknown}");
    assert_eq!(unknown["errors"][0]["code"], "unknown", "{unknown}");
    let fields = problem(
        &api.create(
            &api.a_writer,
            json!({"title": "", "docType": "no spaces", "tags": ["ok", ""], "summary": "s".repeat(2001)}),
        )
        .await,
        422,
        "ValidationFailed",
    );
    let pointers: BTreeSet<&str> =
        fields["errors"].as_array().unwrap().iter().map(|e| e["pointer"].as_str().unwrap()).collect();
    assert_eq!(pointers, BTreeSet::from(["/docType", "/summary", "/tags/1", "/title"]), "{fields}");
    // A missing field, a wrong type, a bad enum and a bad date: one entry each, all in one answer, no serde positions.
    let many = problem(
        &api.create(
            &api.a_writer,
            json!({"docType": 7, "status": "lost", "effectiveDate": "31/01/2026", "tags": ["ok", 3]}),
        )
        .await,
        422,
        "ValidationFailed",
    );
    let found: BTreeSet<(&str, &str)> = many["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["pointer"].as_str().unwrap(), e["code"].as_str().unwrap()))
        .collect();
    let expected = [
        ("/title", "required"),
        ("/docType", "type"),
        ("/status", "enum"),
        ("/effectiveDate", "format"),
        ("/tags/1", "type"),
    ];
    assert_eq!(found, BTreeSet::from(expected), "{many}");
    assert!(!many.to_string().contains("line "), "{many}");
    problem(
        &api.create(&api.a_writer, json!({"title": "t", "docType": "x", "status": "lost"})).await,
        422,
        "ValidationFailed",
    );
    problem(
        &api.create(&api.a_writer, json!({"title": "t", "docType": "x", "effectiveDate": "31/01/2026"})).await,
        422,
        "ValidationFailed",
    );
    // What the stores cannot hold or keep as sent is refused with its pointer too: year 0 (SQL Server's DATE starts
    // at year 1), a tag that lower-casing takes past 64 characters ('İ' is two), a tag of a comma and spaces.
    let refused = [
        (json!({"title": "t", "docType": "x", "effectiveDate": "0000-01-01"}), "/effectiveDate"),
        (json!({"title": "t", "docType": "x", "tags": ["\u{130}".repeat(33)]}), "/tags/0"),
        (json!({"title": "t", "docType": "x", "tags": [" , "]}), "/tags/0"),
        (json!({"title": "   ", "docType": "x"}), "/title"),
        // Lengths as SQL Server's NVARCHAR counts them: an emoji is two UTF-16 code units.
        (json!({"title": format!("{}\u{1F600}", "a".repeat(299)), "docType": "x"}), "/title"),
        (json!({"title": "t", "docType": "x", "summary": "\u{1F600}".repeat(1001)}), "/summary"),
        (json!({"title": "t", "docType": "x", "tags": ["\u{1F600}".repeat(33)]}), "/tags/0"),
    ];
    for (body, pointer) in refused {
        let refused = problem(&api.create(&api.a_writer, body.clone()).await, 422, "ValidationFailed");
        assert_eq!(refused["errors"][0]["pointer"], pointer, "{body}: {refused}");
    }
    // A member twice in one object: refused wherever it is, not resolved to one of the two.
    let twice = ClientRequest::new("POST", "/api/v1/documents")
        .body(r#"{"title":"a","docType":"memo","title":"b"}"#)
        .header("Content-Type", "application/json");
    let twice = problem(&api.send(&api.a_writer, twice).await, 422, "ValidationFailed");
    assert_eq!(
        (twice["errors"][0]["pointer"].as_str(), twice["errors"][0]["code"].as_str()),
        (Some("/title"), Some("duplicate"))
    );
    // A body of more values than any operation takes (half a million items in 1 MB) is refused before it is
    // parsed or explained item by item: one failure, at the body's root.
    let flood = format!("{{\"title\":\"a\",\"docType\":\"memo\",\"tags\":[{}]}}", vec!["1"; 500_000].join(","));
    let flood = ClientRequest::new("POST", "/api/v1/documents").body(flood).header("Content-Type", "application/json");
    let flood = problem(&api.send(&api.a_writer, flood).await, 422, "ValidationFailed");
    assert_eq!(flood["errors"].as_array().unwrap().len(), 1, "{flood}");
    assert_eq!(
        (flood["errors"][0]["pointer"].as_str(), flood["errors"][0]["code"].as_str()),
        (Some(""), Some("maxValues"))
    );
    for query in ["effectiveTo=0000-01-01", "effectiveFrom=0000-12-31"] {
        let res =
            problem(&api.get(&api.a_reader, &format!("/api/v1/documents?{query}")).await, 422, "ValidationFailed");
        assert!(res["errors"][0]["parameter"].as_str().unwrap().starts_with("effective"), "{res}");
    }
    let malformed =
        ClientRequest::new("POST", "/api/v1/documents").body("{\"title\":").header("Content-Type", "application/json");
    problem(&api.send(&api.a_writer, malformed).await, 400, "MalformedJson");
    let text = ClientRequest::new("POST", "/api/v1/documents").body("title=x").header("Content-Type", "text/plain");
    let refused = api.send(&api.a_writer, text).await;
    for res in [&refused, &api.get(&api.a_reader, "/api/v1/documents").await] {
        assert_eq!(res.header("cache-control"), Some("private, no-cache"), "kept by no shared cache, revalidated");
        assert_eq!(res.header("x-content-type-options"), Some("nosniff"));
    }
    problem(&refused, 415, "UnsupportedMediaType");
    // A body in a content coding this API does not decode, or in another charset than UTF-8, is 415 (RFC 9110
    // §8.4, RFC 7694), however well formed it looks.
    let valid = json!({"title": "t", "docType": "x"}).to_string();
    for coding in ["gzip", "br", "x-bogus", "identity, gzip"] {
        let coded = ClientRequest::new("POST", "/api/v1/documents")
            .body(valid.clone())
            .header("Content-Type", "application/json")
            .header("Content-Encoding", coding);
        let res = api.send(&api.a_writer, coded).await;
        assert_eq!(res.header("accept-encoding"), Some("identity"), "{coding}");
        problem(&res, 415, "UnsupportedMediaType");
    }
    for content_type in ["application/json; charset=iso-8859-1", "application/json; charset=utf-8; charset=latin1"] {
        let latin1 =
            ClientRequest::new("POST", "/api/v1/documents").body(valid.clone()).header("Content-Type", content_type);
        problem(&api.send(&api.a_writer, latin1).await, 415, "UnsupportedMediaType");
    }
    let identity = ClientRequest::new("POST", "/api/v1/documents")
        .body(valid.clone())
        .header("Content-Type", "application/json; charset=UTF-8")
        .header("Content-Encoding", "identity");
    let created = api.send(&api.a_writer, identity).await;
    assert_eq!(created.status, 201, "identity and UTF-8 are what a body is anyway");
    let created_id = created.json()["id"].as_str().unwrap().to_owned();
    let gone = ClientRequest::new("DELETE", &format!("/api/v1/documents/{created_id}")).header("If-Match", "*");
    assert_eq!(api.send(&api.a_writer, gone).await.status, 204);
    let huge = json!({"title": "t", "docType": "x", "body": "x".repeat(1_100_000)});
    problem(&api.create(&api.a_writer, huge).await, 413, "PayloadTooLarge");
    let list = api.get(&api.a_reader, "/api/v1/documents?count=true").await.json();
    assert_eq!(list["count"], 0, "no rejected request wrote anything");
    let longest = json!({"title": "\u{e9}".repeat(300), "docType": "x", "summary": "\u{1F600}".repeat(1000)});
    assert_eq!(api.create(&api.a_writer, longest).await.status, 201, "300 characters of the BMP, 1 000 emoji");
}

#[actix_web::test]
async fn a_merge_patch_over_the_body_limit_is_a_413_problem_recorded_once() {
    const LIMIT: usize = 4096;
    let api = api_with(&[("METERLINE_MAX_BODY_BYTES", &LIMIT.to_string())]).await;
    let created = api.create(&api.a_writer, doc("Within limits")).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    let path = format!("/api/v1/documents/{}", created.json()["id"].as_str().unwrap());
    let etag = created.header("etag").unwrap().to_owned();
    let patch = |body: String| {
        ClientRequest::new("PATCH", &path)
            .body(body)
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", &etag)
    };

    // PATCH reads its body as bytes under actix's PayloadConfig; its overflow is a framework error, shaped here.
    let huge = json!({"summary": "x".repeat(2 * LIMIT)}).to_string();
    assert!(huge.len() > LIMIT);
    let refused = api.send(&api.a_writer, patch(huge)).await;
    let body = problem(&refused, 413, "PayloadTooLarge");
    assert_eq!(body["status"], 413);
    assert_eq!(body["type"], "https://meterline.dev/problems/payload-too-large");
    let request_id = refused.header("x-request-id").unwrap().to_owned();
    assert_eq!(body["requestId"], request_id.as_str(), "{body}");

    // One usage event, measuring the problem the client got (the record stage sees the reshaped response).
    let conn = api.app.db();
    let (events, status, operation, response_bytes): (i64, i64, String, i64) = conn
        .query_row(
            "SELECT count(*), max(status), max(operation_id), max(response_bytes) FROM usage_events WHERE request_id = ?1",
            [&request_id],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .unwrap();
    assert_eq!((events, status, operation.as_str()), (1, 413, "patchDocument"));
    assert_eq!(response_bytes, refused.body.len() as i64);

    // Nothing changed: the same ETag still applies a patch within the limit.
    let patched = api.send(&api.a_writer, patch(json!({"summary": "short"}).to_string())).await;
    assert_eq!(patched.status, 200, "{}", String::from_utf8_lossy(&patched.body));
    assert_eq!(patched.json()["summary"], "short");
}

#[actix_web::test]
async fn idempotent_creation_replays_and_refuses_a_reused_key() {
    let api = api().await;
    let with_key = |header: &str, key: &str, body: Value| {
        ClientRequest::new("POST", "/api/v1/documents").json(&body).header(header, key)
    };
    let first = api.send(&api.a_writer, with_key("Idempotency-Key", "k-1", doc("Once"))).await;
    assert_eq!(first.status, 201);
    let again = api.send(&api.a_writer, with_key("Idempotency-Key", "k-1", doc("Once"))).await;
    assert_eq!(again.status, 201);
    assert_eq!(again.header("idempotency-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.header("location"), first.header("location"));
    problem(
        &api.send(&api.a_writer, with_key("Idempotency-Key", "k-1", doc("Other"))).await,
        422,
        "IdempotencyKeyReused",
    );
    let azure = api.send(&api.a_writer, with_key("Repeatability-Request-ID", "r-1", doc("Azure style"))).await;
    assert_eq!(azure.status, 201);
    // Keys compare without regard to case (as SQL Server compares them); two different keys on one request are
    // refused, since a retry with only one of them would create the document again.
    let upper = api.send(&api.a_writer, with_key("Idempotency-Key", "K-1", doc("Once"))).await;
    assert_eq!((upper.status, upper.header("idempotency-replayed")), (201, Some("true")));
    let both = with_key("Idempotency-Key", "k-2", doc("Two keys")).header("Repeatability-Request-ID", "k-3");
    let both = problem(&api.send(&api.a_writer, both).await, 422, "ValidationFailed");
    assert_eq!(both["errors"][0]["header"], "repeatability-request-id", "{both}");
    let twice = with_key("Idempotency-Key", "k-4", doc("Two keys")).header("Idempotency-Key", "k-5");
    let twice = problem(&api.send(&api.a_writer, twice).await, 422, "ValidationFailed");
    assert_eq!(twice["errors"][0]["header"], "idempotency-key", "{twice}");

    // Ten concurrent retries with one key create one document.
    let racers = (0..10).map(|_| api.send(&api.a_writer, with_key("Idempotency-Key", "race", doc("Raced"))));
    let responses = futures_util::future::join_all(racers).await;
    let ids: BTreeSet<String> = responses
        .iter()
        .map(|r| {
            assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
            r.json()["id"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(ids.len(), 1);
    // Keys are per tenant: B may use "k-1" for its own document.
    assert_ne!(
        api.send(&api.b_writer, with_key("Idempotency-Key", "k-1", doc("Once"))).await.json()["id"],
        first.json()["id"]
    );
    assert_eq!(api.get(&api.a_reader, "/api/v1/documents?count=true").await.json()["count"], 3);
}

async fn seed_listing(api: &Api) -> Vec<Value> {
    let mut made = Vec::new();
    for i in 0..23 {
        // A second apart, so each document has its own updatedAt (the clock moves only when told).
        api.app.clock.advance(chrono::Duration::seconds(1));
        let status = ["draft", "published", "archived"][i % 3];
        let body = json!({
            "title": format!("{} report {i:02}", if i % 3 == 0 { "Annual" } else { "monthly" }),
            "summary": if i == 7 { "covers 50% of_cases" } else { "plain" },
            "docType": if i % 2 == 0 { "regulation" } else { "guidance" },
            "jurisdiction": if i % 4 == 0 { "eu" } else { "us" },
            "status": status,
            "effectiveDate": if i % 5 == 0 { Value::Null } else { json!(format!("2026-0{}-1{}", 1 + i % 9, i % 10)) },
            "tags": if i % 2 == 0 { json!(["tax"]) } else { json!(["customs", "eu"]) },
        });
        let response = api.create(&api.a_writer, body).await;
        assert_eq!(response.status, 201, "{}", String::from_utf8_lossy(&response.body));
        made.push(response.json());
    }
    made
}

#[actix_web::test]
async fn search_ranks_pages_highlights_and_counts_facets() {
    let api = api().await;
    seed_listing(&api).await;
    // Relevance is the default order with q; its pages follow a signed cursor like every listing.
    let (ranked, pages) = api.all_pages(&api.a_reader, "/api/v1/documents?q=annual%20report&maxpagesize=3").await;
    assert_eq!((ranked.len(), pages), (8, 3));
    let one_page = api.get(&api.a_reader, "/api/v1/documents?q=annual%20report&maxpagesize=100").await.json();
    assert_eq!(one_page["value"].as_array().unwrap(), &ranked, "pages of three list what one page lists, in order");
    let explicit =
        api.get(&api.a_reader, "/api/v1/documents?q=annual%20report&orderby=relevance&maxpagesize=100").await.json();
    assert_eq!(explicit["value"], one_page["value"]);

    let found = api
        .get(&api.a_reader, "/api/v1/documents?q=%22annual%20report%22%20of*&highlight=true&facets=docType,tags,status")
        .await;
    assert_eq!(found.status, 200, "{}", String::from_utf8_lossy(&found.body));
    let found = found.json();
    assert!(found["value"].as_array().unwrap().is_empty(), "no annual report says 'of…'");
    let found = api
        .get(&api.a_reader, "/api/v1/documents?q=50%20cases&highlight=true&facets=docType,tags,status,jurisdiction")
        .await
        .json();
    let hit = &found["value"][0];
    assert_eq!(found["value"].as_array().unwrap().len(), 1);
    assert_eq!(hit["highlights"]["summary"], "covers <mark>50</mark>% of_<mark>cases</mark>");
    assert!(hit["highlights"].get("title").is_none(), "the title has no match: {hit}");
    assert_eq!(found["facets"]["docType"], json!([{"value": "guidance", "count": 1}]));
    assert_eq!(found["facets"]["tags"], json!([{"value": "customs", "count": 1}, {"value": "eu", "count": 1}]));
    assert_eq!(found["facets"]["jurisdiction"], json!([{"value": "us", "count": 1}]));
    let everything = api.get(&api.a_reader, "/api/v1/documents?facets=docType&maxpagesize=1").await.json();
    assert_eq!(
        everything["facets"]["docType"],
        json!([{"value": "regulation", "count": 12}, {"value": "guidance", "count": 11}]),
        "facets count every match, not the page"
    );
    let plain = api.get(&api.a_reader, "/api/v1/documents?q=annual").await.json();
    assert!(plain["value"][0].get("highlights").is_none(), "highlights are opt-in");

    // What the grammar refuses is a 422 naming q and the character; nothing reaches the index as syntax.
    for (query, position) in [
        ("q=%22unclosed%20phrase", 1),
        ("q=tax%20-", 5),
        ("q=ta*x", 3),
        ("q=-tax", 1),
        ("q=a*", 1),
        ("q=%20%09", 1),
        ("q=title%3Aannual%20OR%20NEAR(x)%20annual%22%20OR%20%22x", 0),
    ] {
        let res = api.get(&api.a_reader, &format!("/api/v1/documents?{query}")).await;
        if position == 0 {
            assert_eq!(res.status, 200, "{query}: FTS5 syntax is only words here");
            continue;
        }
        assert_eq!(res.status, 422, "{query}: {}", String::from_utf8_lossy(&res.body));
        let problem = res.json();
        let error = &problem["errors"][0];
        assert_eq!((error["parameter"].as_str(), error["position"].as_u64()), (Some("q"), Some(position)), "{query}");
    }
    let unhighlighted = api.get(&api.a_reader, "/api/v1/documents?highlight=true&maxpagesize=1").await.json();
    assert!(unhighlighted["value"][0].get("highlights").is_none(), "without q there is nothing to highlight");
    for query in ["orderby=relevance", "q=tax&orderby=relevance%20desc", "facets=colour"] {
        let res = api.get(&api.a_reader, &format!("/api/v1/documents?{query}")).await;
        assert_eq!(res.status, 422, "{query}");
    }
}

#[actix_web::test]
async fn relevance_pages_neither_repeat_nor_skip_while_other_documents_are_written() {
    let api = api().await;
    // Bodies of one length with `budget` once to five times: the order is how often, then the id, whatever the
    // index's average length does.
    let mut written = Vec::new();
    for i in 0..30 {
        let n = 1 + i % 5;
        let body = [vec!["budget"; n], vec!["filler"; 8 - n]].concat().join(" ");
        let created =
            api.create(&api.a_writer, json!({"title": format!("Report {i}"), "docType": "memo", "body": body})).await;
        assert_eq!(created.status, 201);
        written.push(created.json()["id"].as_str().unwrap().to_owned());
    }
    // Between pages, documents no page holds are written: another tenant's with the word (more documents hold
    // it, index-wide), this tenant's without it (more documents, another average length). Every rank moves.
    let mut seen = Vec::new();
    let mut link = Some("/api/v1/documents?q=budget&maxpagesize=4".to_owned());
    let mut round = 0;
    while let Some(path) = link {
        let page = api.get(&api.a_reader, &path).await;
        assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
        let page = page.json();
        seen.extend(page["value"].as_array().unwrap().iter().map(|d| d["id"].as_str().unwrap().to_owned()));
        link = page["nextLink"].as_str().map(str::to_owned);
        let theirs =
            json!({"title": "Theirs", "docType": "memo", "body": "budget budget budget in a longer body of words"});
        assert_eq!(api.create(&api.b_writer, theirs).await.status, 201);
        let ours = json!({"title": format!("Unrelated {round}"), "docType": "memo", "body": "nothing to find"});
        assert_eq!(api.create(&api.a_writer, ours).await.status, 201);
        round += 1;
        assert!(round < 20, "runaway paging");
    }
    assert_eq!(seen.len(), written.len(), "{seen:?}");
    for id in &written {
        assert_eq!(seen.iter().filter(|s| *s == id).count(), 1, "{id} once");
    }
}

#[actix_web::test]
async fn a_search_past_its_window_says_so_and_pages_through_the_newest_matches() {
    let api = api_of(TestApp::builder().configure(|state| state.search_window = 5)).await;
    let made = seed_listing(&api).await;
    let id_set = |items: &[Value]| items.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>();
    let newest = id_set(&made[18..]);

    // Every document says "report": 23 matches, past the window of 5. The pages, the count and the facets cover
    // the five most recently written; every page says so, and a match written between pages does not join.
    let first = api.get(&api.a_reader, "/api/v1/documents?q=report&count=true&facets=docType&maxpagesize=2").await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    let first = first.json();
    assert_eq!(first["searchCoverage"], json!({"window": 5}));
    assert_eq!(first["count"], 5);
    let faceted: u64 =
        first["facets"]["docType"].as_array().unwrap().iter().map(|v| v["count"].as_u64().unwrap()).sum();
    assert_eq!(faceted, 5, "facets count the window: {}", first["facets"]);
    let later = api.create(&api.a_writer, json!({"title": "Report report report", "docType": "memo"})).await;
    assert_eq!(later.status, 201);
    let mut seen: Vec<Value> = first["value"].as_array().unwrap().clone();
    let mut link = first["nextLink"].as_str().map(str::to_owned);
    while let Some(path) = link {
        let page = api.get(&api.a_reader, &path).await.json();
        assert_eq!(page["searchCoverage"], json!({"window": 5}), "{page}");
        seen.extend(page["value"].as_array().unwrap().iter().cloned());
        link = page["nextLink"].as_str().map(str::to_owned);
    }
    assert_eq!(seen.len(), 5, "each document of the window once");
    assert_eq!(id_set(&seen), newest);

    // A search within the window's reach, and a listing without a search, do not carry the member.
    for path in ["/api/v1/documents?q=50%20cases&facets=docType", "/api/v1/documents?facets=docType&count=true"] {
        let page = api.get(&api.a_reader, path).await.json();
        assert!(page.get("searchCoverage").is_none(), "{path}: {page}");
    }
    // In date order the pages list every match; facets (only) cover the window, and the member says it applied.
    let dated = "/api/v1/documents?q=report&orderby=updatedAt%20desc&count=true&maxpagesize=100";
    let plain = api.get(&api.a_reader, dated).await.json();
    assert_eq!((plain["count"].as_u64(), plain.get("searchCoverage")), (Some(24), None));
    let faceted = api.get(&api.a_reader, &format!("{dated}&facets=status")).await.json();
    assert_eq!(faceted["value"].as_array().unwrap().len(), 24);
    assert_eq!(faceted["searchCoverage"], json!({"window": 5}));
}

#[actix_web::test]
async fn listing_filters_sorts_pages_and_counts() {
    let api = api().await;
    let made = seed_listing(&api).await;
    let ids = |items: &[Value]| items.iter().map(|d| d["id"].as_str().unwrap().to_owned()).collect::<BTreeSet<_>>();
    let expect = |pred: &dyn Fn(&Value) -> bool| ids(&made.iter().filter(|d| pred(d)).cloned().collect::<Vec<_>>());

    let (all, pages) = api.all_pages(&api.a_reader, "/api/v1/documents?maxpagesize=5").await;
    assert_eq!((all.len(), pages), (23, 5));
    assert_eq!(ids(&all), expect(&|_| true));
    let first = api.get(&api.a_reader, "/api/v1/documents?count=true&maxpagesize=5").await.json();
    assert_eq!(first["count"], 23);
    assert_eq!(first["value"].as_array().unwrap().len(), 5);
    assert!(api.get(&api.a_reader, "/api/v1/documents").await.json().get("count").is_none(), "count is opt-in");
    // Behind the Functions front end (or API Management) the link names the host the client called.
    let behind = api
        .send(
            &api.a_reader,
            ClientRequest::get("/api/v1/documents?maxpagesize=5")
                .header("X-Forwarded-Host", "api.contoso.example")
                .header("X-Forwarded-Proto", "https"),
        )
        .await
        .json();
    let link = behind["nextLink"].as_str().unwrap();
    assert!(link.starts_with("https://api.contoso.example/api/v1/documents?"), "{link}");
    assert!(link.contains("maxpagesize=5") && link.contains("cursor="), "the link keeps the query: {link}");
    let forged = api
        .send(&api.a_reader, ClientRequest::get("/api/v1/documents?maxpagesize=5").header("X-Forwarded-Host", "evil/x"))
        .await
        .json();
    assert!(!forged["nextLink"].as_str().unwrap().contains("evil"), "a forwarded value that is not a host is ignored");

    for (query, pred) in [
        ("status=draft", &(|d: &Value| d["status"] == "draft") as &dyn Fn(&Value) -> bool),
        ("docType=guidance", &|d: &Value| d["docType"] == "guidance"),
        ("jurisdiction=eu", &|d: &Value| d["jurisdiction"] == "eu"),
        ("tag=customs&tag=nothing", &|d: &Value| d["tags"].as_array().unwrap().contains(&json!("customs"))),
        ("q=ANNUAL", &|d: &Value| d["title"].as_str().unwrap().starts_with("Annual")),
        ("q=50%25%20of_", &|d: &Value| d["summary"] == "covers 50% of_cases"),
        ("q=5_%25", &|_: &Value| false),
        ("q=%22annual%20report%22", &|d: &Value| d["title"].as_str().unwrap().starts_with("Annual")),
        ("q=month*", &|d: &Value| d["title"].as_str().unwrap().starts_with("monthly")),
        ("q=report%20-annual%20-eu", &|d: &Value| {
            d["title"].as_str().unwrap().starts_with("monthly") && !d["tags"].as_array().unwrap().contains(&json!("eu"))
        }),
        ("effectiveFrom=2026-03-01&effectiveTo=2026-06-30", &|d: &Value| {
            d["effectiveDate"].as_str().is_some_and(|e| ("2026-03-01".."2026-07-01").contains(&e))
        }),
        ("status=published&docType=guidance&tag=eu", &|d: &Value| {
            d["status"] == "published"
                && d["docType"] == "guidance"
                && d["tags"].as_array().unwrap().contains(&json!("eu"))
        }),
    ] {
        let (items, _) = api.all_pages(&api.a_reader, &format!("/api/v1/documents?{query}&maxpagesize=4")).await;
        assert_eq!(ids(&items), expect(pred), "{query}");
    }
    let middle = made[10]["updatedAt"].as_str().unwrap();
    let (after, _) =
        api.all_pages(&api.a_reader, &format!("/api/v1/documents?updatedAfter={}", middle.replace('+', "%2B"))).await;
    assert_eq!(after.len(), 13, "updatedAfter is inclusive");
    let (before, _) =
        api.all_pages(&api.a_reader, &format!("/api/v1/documents?updatedBefore={}", middle.replace('+', "%2B"))).await;
    assert_eq!(before.len(), 10, "updatedBefore is exclusive");

    for (orderby, key) in [
        ("title asc", "title"),
        ("title desc", "title"),
        ("updatedAt asc", "updatedAt"),
        ("effectiveDate desc", "effectiveDate"),
    ] {
        let (items, _) = api
            .all_pages(
                &api.a_reader,
                &format!("/api/v1/documents?orderby={}&maxpagesize=3", orderby.replace(' ', "%20")),
            )
            .await;
        assert_eq!(items.len(), 23, "{orderby}");
        let keys: Vec<String> = items.iter().map(|d| d[key].as_str().unwrap_or("0001-01-01").to_owned()).collect();
        let mut sorted = keys.clone();
        sorted.sort_by_key(|k| k.to_lowercase());
        if orderby.ends_with("desc") {
            sorted.reverse();
        }
        let fold = |v: &[String]| v.iter().map(|k| k.to_lowercase()).collect::<Vec<_>>();
        assert_eq!(fold(&keys), fold(&sorted), "{orderby}");
    }
}

#[actix_web::test]
async fn cursors_and_query_parameters_are_checked() {
    let api = api().await;
    seed_listing(&api).await;
    let page = api.get(&api.a_reader, "/api/v1/documents?status=draft&maxpagesize=2").await.json();
    let next = page["nextLink"].as_str().unwrap().to_owned();
    let cursor = next.split("cursor=").nth(1).unwrap().to_owned();
    let replayed =
        api.get(&api.a_reader, &format!("/api/v1/documents?status=published&maxpagesize=2&cursor={cursor}")).await;
    assert!(problem(&replayed, 422, "ValidationFailed")["detail"].as_str().unwrap().contains("other filters"));
    let mut chars: Vec<char> = cursor.chars().collect();
    let i = chars.len() / 2;
    chars[i] = if chars[i] == 'A' { 'B' } else { 'A' };
    let tampered: String = chars.into_iter().collect();
    problem(
        &api.get(&api.a_reader, &format!("/api/v1/documents?status=draft&cursor={tampered}")).await,
        422,
        "ValidationFailed",
    );
    // Another tenant cannot walk this tenant's listing with its cursor.
    problem(&api.get(&api.b_writer, &next).await, 422, "ValidationFailed");
    assert_eq!(api.get(&api.a_reader, &next).await.status, 200, "the page size may change between pages");

    for bad in [
        "maxpagesize=0",
        "maxpagesize=101",
        "orderby=size",
        "colour=red",
        "count=yes",
        "updatedAfter=yesterday",
        "effectiveFrom=2026-13-01",
        "docType=%20",
        "docType=me%20mo",
        "jurisdiction=%C3%A9u",
        "q=%C3customs",
        "q=%FF%FE",
        "%FF=1",
    ] {
        let body = problem(&api.get(&api.a_reader, &format!("/api/v1/documents?{bad}")).await, 422, "ValidationFailed");
        assert_eq!(body["errors"][0]["parameter"], bad.split('=').next().unwrap(), "{bad}");
    }
}

#[actix_web::test]
async fn tenants_cannot_reach_each_others_documents_through_any_route() {
    let api = api().await;
    let a_doc = api.create(&api.a_writer, doc("Tenant A secret plan")).await.json();
    let b_doc = api.create(&api.b_writer, doc("Tenant B notes")).await.json();
    let path = format!("/api/v1/documents/{}", a_doc["id"].as_str().unwrap());
    let etag = a_doc["etag"].as_str().unwrap();
    problem(&api.get(&api.b_writer, &path).await, 404, "NotFound");
    let put = ClientRequest::new("PUT", &path).json(&doc("hijacked")).header("If-Match", etag);
    problem(&api.send(&api.b_writer, put).await, 404, "NotFound");
    let patch = ClientRequest::new("PATCH", &path)
        .body("{\"title\":\"hijacked\"}")
        .header("Content-Type", "application/merge-patch+json")
        .header("If-Match", "*");
    problem(&api.send(&api.b_writer, patch).await, 404, "NotFound");
    problem(
        &api.send(&api.b_writer, ClientRequest::new("DELETE", &path).header("If-Match", "*")).await,
        404,
        "NotFound",
    );
    for query in ["", "?q=secret", "?tag=tax", "?status=published&count=true", "?orderby=title%20asc"] {
        let list = api.get(&api.b_writer, &format!("/api/v1/documents{query}")).await.json();
        let titles: Vec<&str> =
            list["value"].as_array().unwrap().iter().map(|d| d["title"].as_str().unwrap()).collect();
        assert!(titles.iter().all(|t| !t.contains("Tenant A")), "{query}: {titles:?}");
        if let Some(count) = list.get("count") {
            assert_eq!(count, 1, "{query}");
        }
    }
    assert_eq!(
        api.get(&api.a_reader, &path).await.json()["title"],
        "Tenant A secret plan",
        "A's document is untouched"
    );
    assert_eq!(
        api.get(&api.b_writer, &format!("/api/v1/documents/{}", b_doc["id"].as_str().unwrap())).await.status,
        200
    );
}

#[actix_web::test]
async fn admin_resources_plans_tenants_and_clients() {
    let api = api().await;
    let plan = json!({"code": "team", "name": "Team", "requestsPerMinute": 120, "burst": 20, "monthlyQuotaUnits": 50000,
        "overagePolicy": "allow", "currency": "EUR", "basePriceMicros": 19000000, "overageUnitPriceMicros": 500});
    let created = api.send(&api.admin, ClientRequest::new("POST", "/api/v1/plans").json(&plan)).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    problem(&api.send(&api.admin, ClientRequest::new("POST", "/api/v1/plans").json(&plan)).await, 409, "Conflict");
    problem(
        &api.send(&api.a_writer, ClientRequest::new("POST", "/api/v1/plans").json(&plan)).await,
        403,
        "InsufficientScope",
    );
    let plans = api.get(&api.admin, "/api/v1/plans").await.json();
    let codes: Vec<&str> = plans["value"].as_array().unwrap().iter().map(|p| p["code"].as_str().unwrap()).collect();
    assert_eq!(codes, vec!["developer", "team"]);
    let mut changed = plan.clone();
    changed.as_object_mut().unwrap().remove("code");
    changed["burst"] = json!(40);
    let etag = created.header("etag").unwrap().to_owned();
    let put = api
        .send(&api.admin, ClientRequest::new("PUT", "/api/v1/plans/team").json(&changed).header("If-Match", &etag))
        .await;
    assert_eq!((put.status, put.json()["burst"].clone()), (200, json!(40)));

    let tenant = api
        .send(
            &api.admin,
            ClientRequest::new("POST", "/api/v1/tenants").json(
                &json!({"name": "Contoso", "plan": "team", "entraTenantId": "cccccccc-0000-0000-0000-00000000000c"}),
            ),
        )
        .await;
    assert_eq!(tenant.status, 201, "{}", String::from_utf8_lossy(&tenant.body));
    let unknown_plan = api
        .send(&api.admin, ClientRequest::new("POST", "/api/v1/tenants").json(&json!({"name": "X", "plan": "nope"})))
        .await;
    problem(&unknown_plan, 422, "ValidationFailed");

    // Suspend tenant A: its callers are refused until it is reactivated.
    let tenants = api.get(&api.admin, "/api/v1/tenants").await.json();
    let a = tenants["value"].as_array().unwrap().iter().find(|t| t["entraTenantId"] == DIR_A).unwrap().clone();
    let a_path = format!("/api/v1/tenants/{}", a["id"].as_str().unwrap());
    let a_etag = api.get(&api.admin, &a_path).await.header("etag").unwrap().to_owned();
    problem(
        &api.send(&api.admin, ClientRequest::new("POST", &format!("{a_path}/suspend"))).await,
        428,
        "PreconditionRequired",
    );
    let suspended = api
        .send(&api.admin, ClientRequest::new("POST", &format!("{a_path}/suspend")).header("If-Match", &a_etag))
        .await;
    assert_eq!(suspended.json()["status"], "suspended");
    problem(&api.get(&api.a_reader, "/api/v1/documents").await, 403, "TenantSuspended");
    let etag = suspended.header("etag").unwrap().to_owned();
    let patched = api
        .send(
            &api.admin,
            ClientRequest::new("PATCH", &a_path)
                .body("{\"plan\":\"team\"}")
                .header("Content-Type", "application/merge-patch+json")
                .header("If-Match", &etag),
        )
        .await;
    assert_eq!(patched.json()["plan"], "team");
    let etag = patched.header("etag").unwrap().to_owned();
    // What changes nothing makes no version (suspending a suspended tenant, an empty patch, the plan it has);
    // a name or plan cannot be removed, nor a name be only spaces.
    let merge = |body: &str| {
        ClientRequest::new("PATCH", &a_path)
            .body(body.to_owned())
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", &etag)
    };
    let again =
        api.send(&api.admin, ClientRequest::new("POST", &format!("{a_path}/suspend")).header("If-Match", &etag));
    assert_eq!(again.await.header("etag"), Some(etag.as_str()), "already suspended");
    let chain: String = api
        .app
        .db()
        .query_row("SELECT chain FROM audit_events WHERE summary LIKE 'tenant suspended unchanged%'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(chain, format!("tenant:{}", &a_path["/api/v1/tenants/".len()..]), "audited in the tenant's own chain");
    for nothing in ["{}", "{\"plan\":\"team\"}"] {
        let same = api.send(&api.admin, merge(nothing)).await;
        assert_eq!((same.status, same.header("etag")), (200, Some(etag.as_str())), "{nothing}");
    }
    for (bad, pointer) in [("{\"name\":null}", "/name"), ("{\"plan\":null}", "/plan"), ("{\"name\":\"   \"}", "/name")]
    {
        let refused = problem(&api.send(&api.admin, merge(bad)).await, 422, "ValidationFailed");
        assert_eq!(refused["errors"][0]["pointer"], pointer, "{bad}: {refused}");
    }
    api.send(&api.admin, ClientRequest::new("POST", &format!("{a_path}/reactivate")).header("If-Match", &etag)).await;
    assert_eq!(api.get(&api.a_reader, "/api/v1/documents").await.status, 200);

    // Tenant A registers the reader app with Documents.Read only; a Documents.Write claim no longer helps it.
    let register = json!({"appId": "reader-app", "displayName": "Reader", "roles": ["Documents.Read"]});
    let client = api.send(&api.a_admin, ClientRequest::new("POST", "/api/v1/clients").json(&register)).await;
    assert_eq!(client.status, 201, "{}", String::from_utf8_lossy(&client.body));
    let itself = json!({"appId": "a-admin-app", "displayName": "Me", "roles": ["Documents.Read"]});
    let refused = api.send(&api.a_admin, ClientRequest::new("POST", "/api/v1/clients").json(&itself)).await;
    assert_eq!(problem(&refused, 422, "ValidationFailed")["errors"][0]["code"], "self", "no self-lockout");
    let roleless = json!({"appId": "y", "displayName": "Y", "roles": []});
    problem(
        &api.send(&api.a_admin, ClientRequest::new("POST", "/api/v1/clients").json(&roleless)).await,
        422,
        "ValidationFailed",
    );
    let escalate = json!({"appId": "x", "displayName": "X", "roles": ["Platform.Admin"]});
    problem(
        &api.send(&api.a_admin, ClientRequest::new("POST", "/api/v1/clients").json(&escalate)).await,
        422,
        "ValidationFailed",
    );
    let writer_claims = api.app.token(DIR_A, "Documents.Read,Documents.Write", "reader-app").await;
    let me = api.get(&writer_claims, "/api/v1/me").await.json();
    assert_eq!(me["permissions"], json!(["Documents.Read"]), "the registration caps the token's roles");
    assert_eq!(me["tenant"]["name"], a["name"]);
    // The registration is bound to A's directory: the same application's tokens from B's directory ignore it.
    let from_b = api.app.token(DIR_B, "Documents.Read,Documents.Write", "reader-app").await;
    let me_b = api.get(&from_b, "/api/v1/me").await.json();
    assert_eq!(me_b["permissions"], json!(["Documents.Read", "Documents.Write"]), "{me_b}");
    assert_ne!(me_b["tenant"]["name"], a["name"], "a registration never redirects another directory's tokens");
    let listed = api.get(&api.a_admin, "/api/v1/clients").await.json();
    assert_eq!(listed["value"].as_array().unwrap().len(), 1);
    let client_path = format!("/api/v1/clients/{}", client.json()["id"].as_str().unwrap());
    let etag = client.header("etag").expect("a registration carries its ETag").to_owned();
    assert_eq!(client.header("location"), Some(client_path.as_str()));
    let read = api.get(&api.a_admin, &client_path).await;
    assert_eq!((read.status, read.header("etag")), (200, Some(etag.as_str())));
    assert_eq!(read.json()["etag"], etag.as_str(), "the body names the ETag too");
    let unchanged = api.send(&api.a_admin, ClientRequest::get(&client_path).header("If-None-Match", &etag)).await;
    assert_eq!(unchanged.status, 304);
    let b_admin = api.app.token(DIR_B, "Tenant.Admin", "b-admin-app").await;
    problem(&api.get(&b_admin, &client_path).await, 404, "NotFound");
    problem(&api.send(&api.b_writer, ClientRequest::new("DELETE", &client_path)).await, 403, "InsufficientScope");
    let revoke = ClientRequest::new("DELETE", &client_path);
    problem(&api.send(&api.a_admin, revoke.clone()).await, 428, "PreconditionRequired");
    problem(&api.send(&b_admin, revoke.clone().header("If-Match", &etag)).await, 404, "NotFound");
    let stale = api.send(&api.a_admin, revoke.clone().header("If-Match", "\"7\"")).await;
    problem(&stale, 412, "PreconditionFailed");
    assert_eq!(stale.header("etag"), Some(etag.as_str()), "a 412 carries the current ETag");
    assert_eq!(api.get(&writer_claims, "/api/v1/me").await.status, 200, "a refused revocation revoked nothing");
    let revoked = api.send(&api.a_admin, revoke.clone().header("If-Match", &etag)).await;
    assert_eq!(revoked.json()["status"], "revoked");
    let after = revoked.header("etag").unwrap().to_owned();
    assert_ne!(after, etag, "a revocation moves the ETag");
    // Already reflected (RFC 9110 §13.1.1): a retry with the ETag it was sent with gets the same answer.
    let again = api.send(&api.a_admin, revoke.header("If-Match", &etag)).await;
    assert_eq!((again.status, again.header("etag")), (200, Some(after.as_str())), "revoking again changes nothing");
    assert_eq!(again.json()["revokedAt"], revoked.json()["revokedAt"]);

    // The listing pages, filters and counts like every other list.
    for n in 0..3 {
        let body = json!({"appId": format!("app-{n}"), "displayName": format!("App {n}"), "roles": ["Usage.Read"]});
        assert_eq!(api.send(&api.a_admin, ClientRequest::new("POST", "/api/v1/clients").json(&body)).await.status, 201);
    }
    let first = api.get(&api.a_admin, "/api/v1/clients?maxpagesize=2&count=true").await.json();
    assert_eq!(first["count"], 4, "{first}");
    assert_eq!(first["value"].as_array().unwrap().len(), 2);
    let next = first["nextLink"].as_str().expect("a full page links the next");
    assert!(next.starts_with("http") && next.contains("/api/v1/clients?"), "an absolute nextLink: {next}");
    let (all, pages) = api.all_pages(&api.a_admin, "/api/v1/clients?maxpagesize=2").await;
    let ids = |items: &[Value]| -> Vec<String> { items.iter().map(|c| c["id"].as_str().unwrap().to_owned()).collect() };
    let mut seen = ids(&all);
    seen.sort();
    seen.dedup();
    assert_eq!((seen.len(), pages), (4, 2), "every registration once across the pages");
    let only_revoked = api.get(&api.a_admin, "/api/v1/clients?status=revoked&count=true").await.json();
    let revoked_ids = ids(only_revoked["value"].as_array().unwrap());
    assert_eq!((only_revoked["count"].clone(), revoked_ids), (json!(1), vec![client_path[16..].to_owned()]));
    problem(&api.get(&api.a_admin, "/api/v1/clients?status=gone").await, 422, "ValidationFailed");
    problem(&api.get(&api.a_admin, "/api/v1/clients?cursor=garbage").await, 422, "ValidationFailed");
    problem(&api.get(&writer_claims, "/api/v1/me").await, 403, "ClientRevoked");
    assert_eq!(api.get(&from_b, "/api/v1/me").await.status, 200, "nor does its revocation");
    // Revoking it again is already reflected: 200 whatever If-Match names, an opaque or weak ETag included.
    for named in ["\"999\"", "\"zzz\"", "W/\"1\""] {
        let again = api.send(&api.a_admin, ClientRequest::new("DELETE", &client_path).header("If-Match", named)).await;
        assert_eq!((again.status, again.json()["status"].clone()), (200, json!("revoked")), "{named}");
    }
}

#[actix_web::test]
async fn a_number_out_of_range_or_a_field_error_without_detail_still_names_its_field() {
    let api = api().await;
    let plan = |base: &str| {
        let body = format!(
            r#"{{"code":"big","name":"Big","requestsPerMinute":10,"burst":10,"monthlyQuotaUnits":10,"overagePolicy":"block","currency":"EUR","basePriceMicros":{base},"overageUnitPriceMicros":0}}"#
        );
        ClientRequest::new("POST", "/api/v1/plans").body(body).header("Content-Type", "application/json")
    };
    for base in ["9223372036854775808", "1000000000000000001"] {
        let refused = problem(&api.send(&api.admin, plan(base)).await, 422, "ValidationFailed");
        assert_eq!(refused["errors"][0]["pointer"], "/basePriceMicros", "{base}: {refused}");
        assert!(!refused.to_string().contains(base), "the value is not quoted: {refused}");
        assert!(refused["detail"].is_string(), "{refused}");
    }
    // A malformed key header: the problem has a detail too, built from its field error.
    let bad_key = ClientRequest::new("POST", "/api/v1/documents")
        .json(&json!({"title": "t", "docType": "memo"}))
        .header("Idempotency-Key", "has space");
    let refused = problem(&api.send(&api.a_writer, bad_key).await, 422, "ValidationFailed");
    assert!(refused["detail"].as_str().is_some_and(|d| d.contains("idempotency-key")), "{refused}");
    // Names as SQL Server counts them: 101 emoji are 202 UTF-16 code units, past a 200-character name.
    let emoji = json!({"appId": "emoji-app", "displayName": "\u{1F600}".repeat(101), "roles": ["Documents.Read"]});
    let refused = problem(
        &api.send(&api.a_admin, ClientRequest::new("POST", "/api/v1/clients").json(&emoji)).await,
        422,
        "ValidationFailed",
    );
    assert_eq!(refused["errors"][0]["pointer"], "/displayName", "{refused}");
}

#[actix_web::test]
async fn deprecated_operations_announce_their_sunset() {
    let api = api().await;
    let old = api.get(&api.a_reader, "/api/v1/whoami").await;
    assert_eq!(old.status, 200);
    assert!(old.header("deprecation").is_some_and(|d| d.starts_with('@')));
    assert_eq!(old.header("sunset"), Some("Tue, 01 Jun 2027 00:00:00 GMT"));
    assert_eq!(old.header("link"), Some("</api/v1/me>; rel=\"successor-version\""));
    let unauthenticated = api.app.http(ClientRequest::get("/api/v1/whoami")).await;
    assert_eq!(unauthenticated.status, 401);
    assert!(unauthenticated.header("sunset").is_some(), "errors announce it too");
    assert!(api.get(&api.a_reader, "/api/v1/me").await.header("deprecation").is_none());
    let doc = api.app.http(ClientRequest::get("/api/openapi.json")).await.json();
    assert_eq!(doc["paths"]["/api/v1/whoami"]["get"]["deprecated"], true);
    assert_eq!(doc["paths"]["/api/v1/whoami"]["get"]["x-sunset"], "2027-06-01T00:00:00Z");
}

#[actix_web::test]
async fn usage_summaries_are_tenant_scoped_and_match_the_quota_counter() {
    let api = api().await;
    let a_usage = api.app.token(DIR_A, "Usage.Read,Documents.Read", "a-usage").await;
    let b_usage = api.app.token(DIR_B, "Usage.Read", "b-usage").await;
    api.get(&a_usage, "/api/v1/documents").await;
    let own = api.get(&a_usage, "/api/v1/usage/summary").await;
    assert_eq!(own.status, 200, "{}", String::from_utf8_lossy(&own.body));
    let summary = own.json();
    // listDocuments (2) was debited; the summary itself is a self-service read, which spends no quota.
    assert_eq!(summary["unitsUsed"], 2);
    assert_eq!(summary["plan"], "developer");
    let a_id = summary["tenantId"].as_str().unwrap().to_owned();
    assert_eq!(api.get(&a_usage, &format!("/api/v1/usage/summary?tenantId={a_id}")).await.status, 200);

    // Tenant B can neither read A's usage nor learn that A exists.
    let b_reads_a = api.get(&b_usage, &format!("/api/v1/usage/summary?tenantId={a_id}")).await;
    problem(&b_reads_a, 404, "NotFound");
    let b_own = api.get(&b_usage, "/api/v1/usage/summary").await.json();
    assert_ne!(b_own["tenantId"], a_id.as_str());
    let nobody = api.get(&b_usage, "/api/v1/usage/summary?tenantId=00000000-0000-0000-0000-000000000000").await;
    let (unknown, other) = (problem(&nobody, 404, "NotFound"), problem(&b_reads_a, 404, "NotFound"));
    assert_eq!(unknown["detail"], other["detail"], "another tenant looks exactly like no tenant");
    // A platform administrator holding Usage.Read may name any tenant; Platform.Admin alone implies nothing.
    problem(&api.get(&api.admin, &format!("/api/v1/usage/summary?tenantId={a_id}")).await, 403, "InsufficientScope");
    let admin = api.app.token(DIR_B, "Platform.Admin,Usage.Read", "ops-usage").await;
    let as_admin = api.get(&admin, &format!("/api/v1/usage/summary?tenantId={a_id}")).await.json();
    assert_eq!(as_admin["tenantId"], a_id.as_str());
    problem(&api.get(&api.a_reader, "/api/v1/usage/summary").await, 403, "InsufficientScope");
}

#[actix_web::test]
async fn tenants_carry_etags_and_every_change_needs_the_current_one() {
    let api = api().await;
    let list = api.get(&api.admin, "/api/v1/tenants?maxpagesize=1&count=true").await.json();
    let id = list["value"][0]["id"].as_str().unwrap().to_owned();
    let all = api.get(&api.admin, "/api/v1/tenants").await.json();
    assert_eq!(
        list["count"],
        all["value"].as_array().unwrap().len(),
        "count=true counts every tenant, as on every list"
    );
    assert!(all.get("count").is_none(), "only when asked");
    let path = format!("/api/v1/tenants/{id}");
    let read = api.get(&api.admin, &path).await;
    assert_eq!(read.status, 200);
    let etag = read.header("etag").unwrap().to_owned();
    let unchanged = api.send(&api.admin, ClientRequest::get(&path).header("If-None-Match", &etag)).await;
    assert_eq!(unchanged.status, 304, "a client holding the current ETag reads nothing");

    let patch = |etag: Option<&str>| {
        let request = ClientRequest::new("PATCH", &path)
            .body("{\"name\":\"Renamed\"}")
            .header("Content-Type", "application/merge-patch+json");
        match etag {
            Some(etag) => request.header("If-Match", etag),
            None => request,
        }
    };
    problem(&api.send(&api.admin, patch(None)).await, 428, "PreconditionRequired");
    problem(&api.send(&api.admin, patch(Some(""))).await, 428, "PreconditionRequired");
    let renamed = api.send(&api.admin, patch(Some(&etag))).await;
    assert_eq!(renamed.status, 200, "{}", String::from_utf8_lossy(&renamed.body));
    let newer = renamed.header("etag").unwrap().to_owned();
    assert_ne!(newer, etag, "a change moves the ETag");
    let stale = api.send(&api.admin, patch(Some(&etag))).await;
    problem(&stale, 412, "PreconditionFailed");
    assert_eq!(stale.header("etag"), Some(newer.as_str()), "a 412 carries the current ETag");
    let suspend = ClientRequest::new("POST", &format!("{path}/suspend"));
    problem(&api.send(&api.admin, suspend.clone().header("If-Match", &etag)).await, 412, "PreconditionFailed");
    let suspended = api.send(&api.admin, suspend.header("If-Match", &newer)).await;
    assert_eq!(suspended.status, 200);
    assert_eq!(suspended.json()["status"], "suspended");
}

/// `If-Match: *` is "whatever the current version is" (RFC 9110 §13.1.1): concurrent writers with it all succeed,
/// each merge patch onto the row as the others left it, so no field one of them set is lost.
#[actix_web::test]
async fn concurrent_writes_with_if_match_star_all_apply_and_lose_no_field() {
    let api = api().await;
    let created = api.create(&api.a_writer, doc("Contended")).await;
    assert_eq!(created.status, 201);
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let patches = [
        json!({"summary": "one"}),
        json!({"jurisdiction": "eu"}),
        json!({"body": "three"}),
        json!({"effectiveDate": "2026-04-04"}),
        json!({"tags": ["five"]}),
        json!({"title": "Six"}),
    ];
    let sent = patches.iter().map(|patch| {
        let request = ClientRequest::new("PATCH", &format!("/api/v1/documents/{id}"))
            .body(patch.to_string())
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", "*");
        api.send(&api.a_writer, request)
    });
    let answers = futures_util::future::join_all(sent).await;
    let statuses: Vec<u16> = answers.iter().map(|a| a.status).collect();
    assert_eq!(
        statuses,
        vec![200; 6],
        "{:?}",
        answers.iter().map(|a| String::from_utf8_lossy(&a.body)).collect::<Vec<_>>()
    );
    let stored = api.get(&api.a_reader, &format!("/api/v1/documents/{id}")).await;
    assert_eq!(stored.header("etag"), Some("\"7\""), "six versions after the first");
    let stored = stored.json();
    let fields = (
        &stored["summary"],
        &stored["jurisdiction"],
        &stored["body"],
        &stored["effectiveDate"],
        &stored["tags"],
        &stored["title"],
    );
    assert_eq!(
        fields,
        (&json!("one"), &json!("eu"), &json!("three"), &json!("2026-04-04"), &json!(["five"]), &json!("Six"))
    );
    // An ETag still refuses a write that lost its race: the client's 412.
    let stale = ClientRequest::new("DELETE", &format!("/api/v1/documents/{id}")).header("If-Match", "\"1\"");
    problem(&api.send(&api.a_writer, stale).await, 412, "PreconditionFailed");
}

/// `If-None-Match` on a write (RFC 9110 §13.1.2): `*` (the resource exists) or its current ETag refuses it with 412,
/// on every resource, not only documents.
#[actix_web::test]
async fn if_none_match_refuses_a_write_to_any_resource_that_exists() {
    let api = api().await;
    let tenants = api.get(&api.admin, "/api/v1/tenants").await.json();
    let a = tenants["value"].as_array().unwrap().iter().find(|t| t["entraTenantId"] == DIR_A).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let rename = |if_none_match: &str| {
        ClientRequest::new("PATCH", &format!("/api/v1/tenants/{a}"))
            .body("{\"name\":\"Renamed\"}")
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", "*")
            .header("If-None-Match", if_none_match)
    };
    for tag in ["*", "\"1\"", "W/\"1\""] {
        let refused = problem(&api.send(&api.admin, rename(tag)).await, 412, "PreconditionFailed");
        assert!(refused["detail"].as_str().unwrap().contains("If-None-Match"), "{refused}");
    }
    assert_eq!(api.send(&api.admin, rename("\"9\"")).await.status, 200, "another version's tag lets it through");
    let costs = ClientRequest::new("PUT", "/api/v1/plans/developer/costs")
        .json(&json!({"overrides": {}}))
        .header("If-Match", "*")
        .header("If-None-Match", "*");
    problem(&api.send(&api.admin, costs).await, 412, "PreconditionFailed");
}

/// A PATCH in a format the resource does not take is 415 with `Accept-Patch` (RFC 5789 §2.2) naming the one it does.
#[actix_web::test]
async fn a_patch_in_another_format_names_the_one_it_takes() {
    let api = api().await;
    let id = api.create(&api.a_writer, doc("Patched")).await.json()["id"].as_str().unwrap().to_owned();
    for media in ["application/json-patch+json", "application/json"] {
        let patch = ClientRequest::new("PATCH", &format!("/api/v1/documents/{id}"))
            .body("[]")
            .header("Content-Type", media)
            .header("If-Match", "*");
        let refused = api.send(&api.a_writer, patch).await;
        problem(&refused, 415, "UnsupportedMediaType");
        assert_eq!(refused.header("accept-patch"), Some("application/merge-patch+json"), "{media}");
    }
}
