//! The audit trail in process (`startup::app`, manual clock): mutations, denials and limit rejections leave
//! hash-chained events; the listing is tenant-scoped with filters and keyset pages; verification finds a row edited
//! or removed in the database.

use std::collections::BTreeSet;

use meterline::clock::Clock as _;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::support::app::TestApp;
use crate::support::host::{ClientRequest, ClientResponse};

const DIR_A: &str = "aaaaaaaa-0000-0000-0000-0000000000a1";
const DIR_B: &str = "bbbbbbbb-0000-0000-0000-0000000000b1";
const DIR_C: &str = "cccccccc-0000-0000-0000-0000000000c1";
const DIR_OPS: &str = "0b500000-0000-0000-0000-0000000000f1";

struct Audited {
    host: TestApp,
    a_writer: String,
    a_reader: String,
    a_auditor: String,
    b_auditor: String,
}

async fn audited() -> Audited {
    let host = TestApp::start().await;
    let a_writer = host.token(DIR_A, "Documents.Read,Documents.Write", "a-writer").await;
    let a_reader = host.token(DIR_A, "Documents.Read", "a-reader").await;
    let a_auditor = host.token(DIR_A, "Audit.Read", "a-auditor").await;
    let b_auditor = host.token(DIR_B, "Audit.Read", "b-auditor").await;
    Audited { host, a_writer, a_reader, a_auditor, b_auditor }
}

async fn send(host: &TestApp, token: &str, request: ClientRequest) -> ClientResponse {
    host.send(token, request).await
}

fn ok(response: &ClientResponse, status: u16) -> Value {
    assert_eq!(response.status, status, "{}", String::from_utf8_lossy(&response.body));
    if response.body.is_empty() { Value::Null } else { response.json() }
}

fn sha256(bytes: &[u8]) -> String {
    Sha256::digest(bytes).iter().map(|b| format!("{b:02x}")).collect()
}

/// The chain key of the tenant mapped to an Entra directory.
fn chain_of(host: &TestApp, directory: &str) -> String {
    let id: String =
        host.db().query_row("SELECT id FROM tenants WHERE entra_tenant_id = ?1", [directory], |r| r.get(0)).unwrap();
    format!("tenant:{id}")
}

/// Every event of a listing, following nextLink; checks each page's size.
async fn all_events(host: &TestApp, token: &str, first: impl Into<String>, page_size: usize) -> Vec<Value> {
    let mut events = Vec::new();
    let mut link = Some(first.into());
    while let Some(path) = link {
        let page = ok(&send(host, token, ClientRequest::get(&path)).await, 200);
        let items = page["value"].as_array().unwrap();
        assert!(items.len() <= page_size, "{path}: {} items", items.len());
        events.extend(items.iter().cloned());
        link = page["nextLink"].as_str().map(str::to_owned);
        assert!(events.len() < 1000, "runaway paging");
    }
    events
}

async fn verify(host: &TestApp, token: &str) -> Value {
    ok(&send(host, token, ClientRequest::get("/api/v1/audit-events/verify")).await, 200)
}

#[actix_web::test]
async fn mutations_and_denials_are_audited_and_listed_only_to_their_tenant() {
    let a = audited().await;
    let created = send(
        &a.host,
        &a.a_writer,
        ClientRequest::new("POST", "/api/v1/documents")
            .json(&json!({"title": "Customs code", "docType": "regulation"})),
    )
    .await;
    let created_body = ok(&created, 201);
    let id = created_body["id"].as_str().unwrap().to_owned();
    let path = format!("/api/v1/documents/{id}");
    let patched = send(
        &a.host,
        &a.a_writer,
        ClientRequest::new("PATCH", &path)
            .body(json!({"summary": "Consolidated"}).to_string())
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", created.header("etag").unwrap()),
    )
    .await;
    ok(&patched, 200);
    let deleted = send(
        &a.host,
        &a.a_writer,
        ClientRequest::new("DELETE", &path).header("If-Match", patched.header("etag").unwrap()),
    )
    .await;
    ok(&deleted, 204);
    // A read is not audited; a missing permission (403) and a missing token (401) are.
    ok(&send(&a.host, &a.a_reader, ClientRequest::get("/api/v1/documents")).await, 200);
    let forbidden = send(
        &a.host,
        &a.a_reader,
        ClientRequest::new("POST", "/api/v1/documents").json(&json!({"title": "x", "docType": "y"})),
    )
    .await;
    assert_eq!(forbidden.status, 403);
    let anonymous = a.host.http(ClientRequest::get("/api/v1/me")).await;
    assert_eq!(anonymous.status, 401);

    let events = all_events(&a.host, &a.a_auditor, "/api/v1/audit-events", 25).await;
    let actions: Vec<&str> = events.iter().map(|e| e["action"].as_str().unwrap()).collect();
    assert_eq!(actions, ["createDocument", "deleteDocument", "patchDocument", "createDocument"], "newest first");
    let (denied, delete, patch, create) = (&events[0], &events[1], &events[2], &events[3]);
    for (event, request) in [(create, &created), (patch, &patched), (delete, &deleted)] {
        assert_eq!(event["outcome"], "succeeded");
        assert_eq!(event["resourceType"], "documents");
        assert_eq!(event["resourceId"], id.as_str());
        assert_eq!(event["actorAppId"], "a-writer");
        assert_eq!(event["actorTenantId"], DIR_A);
        assert_eq!(event["requestId"], request.header("x-request-id").unwrap());
        assert!(event["limiterDecision"].as_str().unwrap().starts_with("allowed minute r="), "{event}");
    }
    assert_eq!(create["beforeHash"], Value::Null);
    assert_eq!(create["afterHash"], sha256(&created.body), "the hash of the view the client received");
    assert_eq!(patch["beforeHash"], create["afterHash"]);
    assert_eq!(patch["afterHash"], sha256(&patched.body));
    assert_eq!(delete["beforeHash"], patch["afterHash"]);
    assert_eq!(delete["afterHash"], Value::Null);
    assert_eq!((denied["outcome"].as_str(), denied["actorAppId"].as_str()), (Some("denied"), Some("a-reader")));
    assert_eq!(denied["requestId"], forbidden.header("x-request-id").unwrap());
    assert_eq!(denied["resourceType"], "documents");
    let seqs: Vec<i64> = events.iter().map(|e| e["chainSeq"].as_i64().unwrap()).collect();
    assert_eq!(seqs, [4, 3, 2, 1]);
    assert_eq!(create["prevHash"], "0".repeat(64));
    assert_eq!(patch["prevHash"], create["hash"]);

    // The 401 has no tenant: it is on the platform chain, with no actor.
    let (chain, outcome, oid): (String, String, Option<String>) = a
        .host
        .db()
        .query_row(
            "SELECT chain, outcome, actor_oid FROM audit_events WHERE request_id = ?1",
            [anonymous.header("x-request-id").unwrap()],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .unwrap();
    assert_eq!((chain.as_str(), outcome.as_str(), oid), ("platform", "denied", None));

    // Filters and pages.
    let q = |query: &str| format!("/api/v1/audit-events?{query}");
    let paged = all_events(&a.host, &a.a_auditor, &q("maxpagesize=1"), 1).await;
    assert_eq!(paged, events, "pages of one give the same events in the same order");
    let ids = |events: &[Value]| events.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect::<Vec<_>>();
    let only = |filter: &str| all_events(&a.host, &a.a_auditor, q(filter), 25);
    assert_eq!(ids(&only("action=patchDocument").await), ids(&events[2..3]));
    assert_eq!(ids(&only("outcome=denied").await), ids(&events[0..1]));
    assert_eq!(ids(&only("actor=a-writer&maxpagesize=2").await), ids(&events[1..4]));
    assert_eq!(ids(&only(&format!("resourceType=documents&resourceId={id}")).await), ids(&events[1..4]));
    let created_at = create["occurredAt"].as_str().unwrap();
    let from_create = only(&format!("from={}", urlencode(created_at))).await;
    assert_eq!(ids(&from_create), ids(&events), "from is inclusive");
    assert!(only(&format!("to={}", urlencode(created_at))).await.is_empty(), "to is exclusive");
    // count=true counts every match, not the page, with the same filters as the listing.
    for (filter, expected) in [
        ("count=true&maxpagesize=1", json!(events.len())),
        ("count=true&actor=a-writer&maxpagesize=1", json!(3)),
        ("maxpagesize=1", Value::Null),
    ] {
        let page = ok(&send(&a.host, &a.a_auditor, ClientRequest::get(&q(filter))).await, 200);
        assert_eq!(page["count"], expected, "{filter}: only when asked");
    }
    let bad = send(&a.host, &a.a_auditor, ClientRequest::get(&q("outcome=maybe&colour=red"))).await;
    assert_eq!(bad.status, 422);
    let named: Vec<_> = bad.json()["errors"].as_array().unwrap().iter().map(|e| e["parameter"].clone()).collect();
    assert_eq!(named, vec![json!("colour"), json!("outcome")], "each parameter named");

    // Tenant B sees none of A's events, with or without filters, and cannot use A's cursor.
    let b_all = all_events(&a.host, &a.b_auditor, "/api/v1/audit-events", 25).await;
    assert!(b_all.iter().all(|e| !ids(&events).contains(&e["id"].as_str().unwrap().to_owned())), "{b_all:?}");
    assert!(all_events(&a.host, &a.b_auditor, &q(&format!("resourceId={id}")), 25).await.is_empty());
    assert!(all_events(&a.host, &a.b_auditor, &q("actor=a-writer"), 25).await.is_empty());
    let a_page = ok(&send(&a.host, &a.a_auditor, ClientRequest::get(&q("maxpagesize=1"))).await, 200);
    let a_next = a_page["nextLink"].as_str().unwrap();
    let replayed = send(&a.host, &a.b_auditor, ClientRequest::get(a_next)).await;
    assert_eq!(replayed.status, 422, "another tenant's cursor: {}", String::from_utf8_lossy(&replayed.body));
    let b_verify = verify(&a.host, &a.b_auditor).await;
    assert_eq!((b_verify["valid"].as_bool(), b_verify["checked"].as_u64()), (Some(true), Some(0)));

    // Without Audit.Read, listing is itself a denial, audited.
    assert_eq!(send(&a.host, &a.a_writer, ClientRequest::get("/api/v1/audit-events")).await.status, 403);
    let verified = verify(&a.host, &a.a_auditor).await;
    assert_eq!(verified["valid"], true, "{verified}");
    assert_eq!(verified["checked"], 5);
    assert_eq!(verified["firstBrokenLink"], Value::Null);
    assert_eq!(verified["head"]["chainSeq"], 5);
}

fn urlencode(value: &str) -> String {
    form_urlencoded::byte_serialize(value.as_bytes()).collect()
}

#[actix_web::test]
async fn verify_pinpoints_a_row_altered_or_removed_in_the_database() {
    let a = audited().await;
    for n in 0..5 {
        let body = json!({"title": format!("Document {n}"), "docType": "regulation"});
        ok(&send(&a.host, &a.a_writer, ClientRequest::new("POST", "/api/v1/documents").json(&body)).await, 201);
    }
    let intact = verify(&a.host, &a.a_auditor).await;
    assert_eq!((intact["valid"].as_bool(), intact["checked"].as_u64()), (Some(true), Some(5)), "{intact}");
    assert_eq!(intact["head"]["chainSeq"], 5);

    let chain = chain_of(&a.host, DIR_A);
    let conn = a.host.db();
    let id_at = |seq: i64| -> String {
        conn.query_row("SELECT id FROM audit_events WHERE chain = ?1 AND chain_seq = ?2", (&chain, seq), |r| r.get(0))
            .unwrap()
    };
    let set = |column: &str, value: &str, seq: i64| {
        let sql = format!("UPDATE audit_events SET {column} = ?1 WHERE chain = ?2 AND chain_seq = ?3");
        assert_eq!(conn.execute(&sql, (value, &chain, seq)).unwrap(), 1);
    };
    let broken = |report: &Value, seq: i64, reason: &str| {
        assert_eq!(report["valid"], false, "{report}");
        assert_eq!(report["firstBrokenLink"]["chainSeq"], seq, "{report}");
        assert_eq!(report["firstBrokenLink"]["eventId"], id_at(seq).as_str());
        assert_eq!(report["firstBrokenLink"]["reason"], reason);
        assert_eq!(report["checked"], seq);
    };

    let summary: String = conn
        .query_row("SELECT summary FROM audit_events WHERE chain = ?1 AND chain_seq = 3", [&chain], |r| r.get(0))
        .unwrap();
    set("summary", "nothing happened here", 3);
    broken(&verify(&a.host, &a.a_auditor).await, 3, "hash mismatch");
    set("summary", &summary, 3);
    assert_eq!(verify(&a.host, &a.a_auditor).await["valid"], true, "restored");

    set("outcome", "failed", 2);
    broken(&verify(&a.host, &a.a_auditor).await, 2, "hash mismatch");
    set("outcome", "succeeded", 2);

    // Recomputing the edited row's own hash does not hide the edit: the next link breaks.
    set("prev_hash", &"f".repeat(64), 4);
    broken(&verify(&a.host, &a.a_auditor).await, 4, "prev_hash does not match the previous event");
    let genuine: String = conn
        .query_row("SELECT hash FROM audit_events WHERE chain = ?1 AND chain_seq = 3", [&chain], |r| r.get(0))
        .unwrap();
    set("prev_hash", &genuine, 4);
    assert_eq!(verify(&a.host, &a.a_auditor).await["valid"], true);

    assert_eq!(conn.execute("DELETE FROM audit_events WHERE chain = ?1 AND chain_seq = 3", [&chain]).unwrap(), 1);
    let gap = verify(&a.host, &a.a_auditor).await;
    assert_eq!(gap["firstBrokenLink"]["chainSeq"], 4, "{gap}");
    assert_eq!(gap["firstBrokenLink"]["reason"], "sequence gap");
    assert_eq!(gap["firstBrokenLink"]["eventId"], id_at(4).as_str());
}

#[actix_web::test]
async fn a_rate_limited_request_leaves_a_rejected_event_with_the_limiter_decision() {
    // Every refusal audited on its own (repeats are otherwise counted: `repeated_refusals_are_audited_once_...`).
    let host = TestApp::builder().setting("METERLINE_REFUSAL_AUDIT_WINDOW_SECS", "0").start().await;
    let user = host.token(DIR_C, "Documents.Read", "c-user").await;
    let auditor = host.token(DIR_C, "Audit.Read", "c-auditor").await;
    let admin = host.token(DIR_OPS, "Platform.Admin", "ops").await;
    let plan = json!({"code": "tight", "name": "Tight", "requestsPerMinute": 1, "burst": 2,
        "monthlyQuotaUnits": 1_000_000, "overagePolicy": "block", "currency": "EUR", "basePriceMicros": 0, "overageUnitPriceMicros": 0});
    ok(&send(&host, &admin, ClientRequest::new("POST", "/api/v1/plans").json(&plan)).await, 201);
    let c = chain_of(&host, DIR_C).trim_start_matches("tenant:").to_owned();
    let moved = send(
        &host,
        &admin,
        ClientRequest::new("PATCH", &format!("/api/v1/tenants/{c}"))
            .body("{\"plan\":\"tight\"}")
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", "*"),
    )
    .await;
    ok(&moved, 200);

    let mut refused = Vec::new();
    for _ in 0..4 {
        let response = send(&host, &user, ClientRequest::get("/api/v1/me")).await;
        if response.status == 429 {
            refused.push(response.header("x-request-id").unwrap().to_owned());
        }
    }
    assert_eq!(refused.len(), 2, "a burst of 2 at 1 request per minute, with the clock standing still, refuses 2 of 4");
    let page = ok(&send(&host, &auditor, ClientRequest::get("/api/v1/audit-events?outcome=rejected")).await, 200);
    let events = page["value"].as_array().unwrap();
    let mut request_ids: Vec<String> = events.iter().map(|e| e["requestId"].as_str().unwrap().to_owned()).collect();
    request_ids.sort();
    refused.sort();
    assert_eq!(request_ids, refused, "one rejected event per 429");
    for event in events {
        assert_eq!((event["action"].as_str(), event["actorAppId"].as_str()), (Some("getMe"), Some("c-user")));
        assert!(event["limiterDecision"].as_str().unwrap().starts_with("rate-limited minute r=0 t="), "{event}");
    }
    // The administrator's plan change is audited on the changed tenant's chain, which the tenant reads: who
    // changed its plan, and from what to what.
    let c_chain = chain_of(&host, DIR_C);
    let (action, resource, actor, before, after): (String, String, String, Option<String>, Option<String>) = host
        .db()
        .query_row(
            "SELECT action, resource_id, actor_app_id, before_hash, after_hash FROM audit_events
             WHERE chain = ?1 AND action = 'patchTenant'",
            [&c_chain],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)),
        )
        .unwrap();
    assert_eq!((action.as_str(), resource.as_str(), actor.as_str()), ("patchTenant", c.as_str(), "ops"));
    let seen = ok(&send(&host, &auditor, ClientRequest::get("/api/v1/audit-events?action=patchTenant")).await, 200);
    assert_eq!(seen["value"].as_array().unwrap().len(), 1, "the tenant sees it: {seen}");
    assert!(before.is_some() && after.is_some() && before != after);
    assert_eq!(after.unwrap(), sha256(&moved.body));
}

#[actix_web::test]
async fn a_platform_administrator_verifies_any_tenants_chain_and_the_read_is_audited_there() {
    let Audited { host, a_writer, a_auditor, b_auditor, .. } = audited().await;
    ok(
        &send(
            &host,
            &a_writer,
            ClientRequest::new("POST", "/api/v1/documents").json(&json!({"title": "t", "docType": "memo"})),
        )
        .await,
        201,
    );
    let a = chain_of(&host, DIR_A).trim_start_matches("tenant:").to_owned();
    let ops = host.token(DIR_OPS, "Platform.Admin,Audit.Read,Usage.Read", "ops").await;

    let verified =
        ok(&send(&host, &ops, ClientRequest::get(&format!("/api/v1/audit-events/verify?tenantId={a}"))).await, 200);
    assert_eq!(verified["valid"], true, "{verified}");
    assert!(verified["checked"].as_u64().unwrap() >= 1, "A's chain, not the administrator's: {verified}");
    let listed = ok(
        &send(&host, &ops, ClientRequest::get(&format!("/api/v1/audit-events?tenantId={a}&action=createDocument")))
            .await,
        200,
    );
    assert_eq!(listed["value"].as_array().unwrap().len(), 1, "{listed}");
    ok(&send(&host, &ops, ClientRequest::get(&format!("/api/v1/billing/statements?tenantId={a}"))).await, 200);

    // Each of those reads is in A's chain, where A's auditor sees who read what; the chain still verifies.
    let seen = ok(&send(&host, &a_auditor, ClientRequest::get("/api/v1/audit-events?actor=ops")).await, 200);
    let actions: BTreeSet<String> =
        seen["value"].as_array().unwrap().iter().map(|e| e["action"].as_str().unwrap().to_owned()).collect();
    let expected = ["listAuditEvents", "listBillingStatements", "verifyAuditChain"];
    assert_eq!(actions, expected.into_iter().map(str::to_owned).collect::<BTreeSet<_>>(), "{seen}");
    assert!(seen["value"][0]["summary"].as_str().unwrap().contains("platform administrator read"), "{seen}");
    let own = ok(&send(&host, &a_auditor, ClientRequest::get("/api/v1/audit-events/verify")).await, 200);
    assert_eq!(
        (own["valid"].clone(), own["checked"].as_u64().unwrap()),
        (json!(true), verified["checked"].as_u64().unwrap() + 3)
    );

    // A tenant naming another tenant learns nothing; an unknown tenant is 404 for the administrator too.
    let b_reads_a =
        send(&host, &b_auditor, ClientRequest::get(&format!("/api/v1/audit-events/verify?tenantId={a}"))).await;
    assert_eq!(b_reads_a.status, 404, "{}", String::from_utf8_lossy(&b_reads_a.body));
    let b_lists_a = send(&host, &b_auditor, ClientRequest::get(&format!("/api/v1/audit-events?tenantId={a}"))).await;
    assert_eq!(b_lists_a.status, 404);
    let nobody = "00000000-0000-0000-0000-00000000beef";
    assert_eq!(
        send(&host, &ops, ClientRequest::get(&format!("/api/v1/audit-events/verify?tenantId={nobody}"))).await.status,
        404
    );
    // Reading one's own tenant is not a cross-tenant read: nothing more in A's chain.
    let again = ok(&send(&host, &a_auditor, ClientRequest::get("/api/v1/audit-events/verify")).await, 200);
    assert_eq!(again["checked"], own["checked"]);
}

#[actix_web::test]
async fn repeated_refusals_are_audited_once_then_counted_and_their_count_is_appended_when_the_window_ends() {
    let host = TestApp::start().await;
    let user = host.token(DIR_C, "Documents.Read", "c-user").await;
    let auditor = host.token(DIR_C, "Audit.Read", "c-auditor").await;
    let admin = host.token(DIR_OPS, "Platform.Admin", "ops").await;
    let plan = json!({"code": "tight", "name": "Tight", "requestsPerMinute": 1, "burst": 3,
        "monthlyQuotaUnits": 1_000_000, "overagePolicy": "block", "currency": "EUR", "basePriceMicros": 0, "overageUnitPriceMicros": 0});
    ok(&send(&host, &admin, ClientRequest::new("POST", "/api/v1/plans").json(&plan)).await, 201);
    let c = chain_of(&host, DIR_C).trim_start_matches("tenant:").to_owned();
    let tight = ClientRequest::new("PATCH", &format!("/api/v1/tenants/{c}"))
        .body("{\"plan\":\"tight\"}")
        .header("Content-Type", "application/merge-patch+json")
        .header("If-Match", "*");
    ok(&send(&host, &admin, tight).await, 200);
    let usage_events =
        || -> i64 { host.db().query_row("SELECT count(*) FROM usage_events", [], |r| r.get(0)).unwrap() };
    let audit_events =
        || -> i64 { host.db().query_row("SELECT count(*) FROM audit_events", [], |r| r.get(0)).unwrap() };
    let (usage_before, audit_before) = (usage_events(), audit_events());

    // A burst of 3: the first 3 calls are served, the next 18 refused (429), and 30 calls with a garbage token (401).
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..21).map(|_| send(&host, &user, ClientRequest::get("/api/v1/me"))))
            .await
            .iter()
            .map(|r| r.status)
            .collect();
    assert_eq!(statuses.iter().filter(|s| **s == 429).count(), 18, "{statuses:?}");
    for _ in 0..30 {
        assert_eq!(send(&host, "not-a-token", ClientRequest::get("/api/v1/documents")).await.status, 401);
    }
    assert_eq!(usage_events() - usage_before, 51, "every call has its usage event");
    assert_eq!(audit_events() - audit_before, 2, "the first 429 and the first 401 are audited, their repeats counted");

    // Within the window nothing more is written; once it ends, one event per kind says how many repeats it counted.
    let flush = |all| host.state.refusal_audits.flush(&*host.store, host.clock.now(), &*host.state.ids, all);
    assert_eq!(flush(false).await.unwrap(), 0);
    host.clock.advance(chrono::Duration::seconds(60));
    assert_eq!(flush(false).await.unwrap(), 2);
    let page = ok(&send(&host, &auditor, ClientRequest::get("/api/v1/audit-events?outcome=rejected")).await, 200);
    let summaries: Vec<&str> =
        page["value"].as_array().unwrap().iter().map(|e| e["summary"].as_str().unwrap()).collect();
    assert_eq!(summaries.len(), 2, "{page}");
    assert!(
        summaries.iter().any(|s| s.starts_with("17 more GET /api/v1/me answered 429 RateLimited from ")),
        "{summaries:?}"
    );
    let platform: String = host
        .db()
        .query_row(
            "SELECT summary FROM audit_events WHERE chain = 'platform' ORDER BY chain_seq DESC LIMIT 1",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert!(platform.starts_with("29 more GET /api/v1/documents answered 401 "), "{platform}");
    let verified = ok(&send(&host, &auditor, ClientRequest::get("/api/v1/audit-events/verify")).await, 200);
    assert_eq!(verified["valid"], true, "{verified}");
    // A new window opens with the next refusal, audited as it happens.
    assert_eq!(send(&host, "not-a-token", ClientRequest::get("/api/v1/documents")).await.status, 401);
    assert_eq!(audit_events() - audit_before, 5);
}

#[actix_web::test]
async fn a_long_chain_is_verified_in_bounded_calls_each_resuming_from_the_head_the_last_reached() {
    let host = TestApp::builder().configure(|state| state.audit_verify_limit = 4).start().await;
    let writer = host.token(DIR_A, "Documents.Read,Documents.Write", "a-writer").await;
    let auditor = host.token(DIR_A, "Audit.Read", "a-auditor").await;
    for n in 0..10 {
        let body = json!({"title": format!("Document {n}"), "docType": "regulation"});
        ok(&send(&host, &writer, ClientRequest::new("POST", "/api/v1/documents").json(&body)).await, 201);
    }
    // Three calls of at most 4 events: 4, 4, then the last 2, each resuming from the head the previous one reached.
    let mut path = "/api/v1/audit-events/verify".to_owned();
    let mut calls = Vec::new();
    loop {
        let report = ok(&send(&host, &auditor, ClientRequest::get(&path)).await, 200);
        assert_eq!(report["valid"], true, "{report}");
        calls.push((report["checked"].as_u64().unwrap(), report["head"]["chainSeq"].as_i64().unwrap()));
        match report["nextLink"].as_str() {
            Some(next) => {
                assert_eq!(report["complete"], false, "{report}");
                path = next.split_once("/api/v1").map(|(_, rest)| format!("/api/v1{rest}")).unwrap();
            }
            None => {
                assert_eq!(report["complete"], true, "{report}");
                break;
            }
        }
    }
    assert_eq!(calls, vec![(4, 4), (4, 8), (2, 10)]);

    let chain = chain_of(&host, DIR_A);
    let hash_at = |seq: i64| -> String {
        host.db()
            .query_row("SELECT hash FROM audit_events WHERE chain = ?1 AND chain_seq = ?2", (&chain, seq), |r| r.get(0))
            .unwrap()
    };
    let resume = |seq: i64, hash: &str| format!("/api/v1/audit-events/verify?after={seq}:{hash}");
    // Resumed from the end: nothing after it, the head is the one given.
    let at_end = ok(&send(&host, &auditor, ClientRequest::get(&resume(10, &hash_at(10)))).await, 200);
    assert_eq!((at_end["checked"].as_u64(), at_end["head"]["chainSeq"].as_i64()), (Some(0), Some(10)), "{at_end}");
    // A head that is not the stored one (a forged hash, or an event edited since) does not verify.
    let forged = ok(&send(&host, &auditor, ClientRequest::get(&resume(8, &"0".repeat(64)))).await, 200);
    assert_eq!(forged["valid"], false, "{forged}");
    assert_eq!(forged["firstBrokenLink"]["chainSeq"], 8);
    assert_eq!(forged["firstBrokenLink"]["reason"], "the event resumed from does not have the recorded hash");
    let recorded = hash_at(8);
    host.db()
        .execute("UPDATE audit_events SET summary = 'edited' WHERE chain = ?1 AND chain_seq = 8", [&chain])
        .unwrap();
    let edited = ok(&send(&host, &auditor, ClientRequest::get(&resume(8, &recorded))).await, 200);
    assert_eq!(edited["firstBrokenLink"]["reason"], "the event resumed from does not have the recorded hash");
    // An edit after the head resumed from is found as from the start.
    let after = ok(&send(&host, &auditor, ClientRequest::get(&resume(5, &hash_at(5)))).await, 200);
    assert_eq!((after["valid"].as_bool(), after["firstBrokenLink"]["chainSeq"].as_i64()), (Some(false), Some(8)));
    // Half a head is refused.
    let half = ok(&send(&host, &auditor, ClientRequest::get("/api/v1/audit-events/verify?after=3")).await, 422);
    assert_eq!(half["errors"][0]["parameter"], "after", "{half}");
}
