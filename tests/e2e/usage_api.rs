//! The usage API in process (`startup::app`, manual clock): the summary is the quota counter, the report and the
//! export are current (rollups plus the tail), statements are tenant-scoped and, once a month closes, equal the
//! usage API and the export.

use meterline::clock::Clock;
use serde_json::{Value, json};

use crate::support::app::{DEV_APP_ID, TestApp};
use crate::support::host::{ClientRequest, ClientResponse, on_schedule};

const DIR_A: &str = "aaaaaaaa-0000-0000-0000-0000000000aa";
const DIR_B: &str = "bbbbbbbb-0000-0000-0000-0000000000bb";

fn get(path: &str, token: &str) -> ClientRequest {
    ClientRequest::get(path).header("Authorization", &format!("Bearer {token}"))
}

fn units_used(app: &TestApp, directory: &str) -> i64 {
    app.db()
        .query_row(
            "SELECT coalesce(sum(q.units_used), 0) FROM quota_usage q JOIN tenants t ON t.id = q.tenant_id WHERE t.entra_tenant_id = ?1",
            [directory],
            |r| r.get(0),
        )
        .unwrap()
}

/// A platform administrator's request (a token minted now: a test that moves the clock past an hour needs a new one).
async fn as_admin(host: &TestApp, request: ClientRequest) -> ClientResponse {
    let admin = host.token("0b500000-0000-0000-0000-0000000000ff", "Platform.Admin", "ops").await;
    host.http(request.header("Authorization", &format!("Bearer {admin}"))).await
}

/// Tenant A's id.
fn tenant_a(host: &TestApp) -> String {
    host.db().query_row("SELECT id FROM tenants WHERE entra_tenant_id = ?1", [DIR_A], |r| r.get(0)).unwrap()
}

/// A plan `code` in EUR at a million requests a minute: `quota` units a month under `policy`, then `overage` micro-EUR
/// a unit, for `base` micro-EUR a month.
async fn create_plan(host: &TestApp, code: &str, quota: i64, policy: &str, base: i64, overage: i64) {
    let plan = json!({"code": code, "name": code, "requestsPerMinute": 1_000_000, "burst": 100_000,
        "monthlyQuotaUnits": quota, "overagePolicy": policy, "currency": "EUR", "basePriceMicros": base,
        "overageUnitPriceMicros": overage});
    assert_eq!(as_admin(host, ClientRequest::new("POST", "/api/v1/plans").json(&plan)).await.status, 201);
}

/// Moves `tenant` to the plan `code`.
async fn move_to(host: &TestApp, tenant: &str, code: &str) {
    let moved = ClientRequest::new("PATCH", &format!("/api/v1/tenants/{tenant}"))
        .body(format!("{{\"plan\":\"{code}\"}}"))
        .header("Content-Type", "application/merge-patch+json")
        .header("If-Match", "*");
    assert_eq!(as_admin(host, moved).await.status, 200);
}

#[actix_web::test]
async fn the_summary_is_the_quota_counter_and_the_report_and_export_are_current() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Read,Usage.Read", DEV_APP_ID).await;
    let b = host.token(DIR_B, "Usage.Read", "b-app").await;
    let reader = host.token(DIR_A, "Documents.Read", "other").await;
    let calls = (0..7).map(|_| host.http(get("/api/v1/documents", &a)));
    assert!(futures_util::future::join_all(calls).await.iter().all(|r| r.status == 200));
    assert_eq!(host.http(get("/api/v1/me", &a)).await.status, 200);

    // The summary is exact right after traffic, though the counter also holds what the process's quota lease has
    // not spent; once the lease is settled, the counter is exactly that too. Self-service reads (getMe, the
    // summary itself) are recorded but spend no quota.
    let summary = host.http(get("/api/v1/usage/summary", &a)).await;
    assert_eq!(summary.status, 200);
    let summary = summary.json();
    assert_eq!(summary["unitsUsed"], json!(14), "seven listDocuments at 2 units");
    host.settle_leases().await;
    assert_eq!(summary["unitsUsed"], json!(units_used(&host, DIR_A)));

    // The report is current without any rollup run: all of it comes from the tail.
    let report = host.http(get("/api/v1/usage?granularity=hour&groupBy=operation", &a)).await;
    assert_eq!(report.status, 200, "{}", String::from_utf8_lossy(&report.body));
    let report = report.json();
    let rows = report["value"].as_array().unwrap();
    let by_op =
        |op: &str| rows.iter().filter(|r| r["operationId"] == op).map(|r| r["calls"].as_i64().unwrap()).sum::<i64>();
    assert_eq!((by_op("listDocuments"), by_op("getMe"), by_op("getUsageSummary")), (7, 1, 1));
    let billable: i64 = rows.iter().map(|r| r["billableUnits"].as_i64().unwrap()).sum();
    assert_eq!(billable, summary["unitsUsed"].as_i64().unwrap(), "the report bills what the counter holds");
    assert!(
        rows.iter().all(|r| r["latency"]["p95Micros"].as_i64().unwrap() <= r["latency"]["maxMicros"].as_i64().unwrap())
    );

    // After a rollup run past the settle margin the numbers are the same, now from the rollups.
    host.clock.advance(chrono::Duration::seconds(121));
    let run = host.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(run.logs()[0].starts_with("UsageRollup: rolled up 10 events"), "{:?}", run.logs());
    let month = host.http(get("/api/v1/usage?granularity=month", &a)).await.json();
    let rows = month["value"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{month}");
    assert_eq!(rows[0]["calls"], json!(10), "seven listDocuments, getMe, the summary and the hourly report");

    // The export: a header and one line per day, operation and client.
    let period = &summary["periodStart"].as_str().unwrap()[..7];
    let export = host.http(get(&format!("/api/v1/usage/export?period={period}"), &a)).await;
    assert_eq!(export.status, 200);
    assert!(export.header("content-type").unwrap().starts_with("text/csv"));
    let csv = String::from_utf8(export.body.clone()).unwrap();
    // The export is streamed: its usage event gets the bytes sent once the body has ended (in the background).
    let request_id = export.header("x-request-id").unwrap().to_owned();
    let sent = || -> i64 {
        host.db()
            .query_row("SELECT response_bytes FROM usage_events WHERE request_id = ?1", [&request_id], |r| r.get(0))
            .unwrap()
    };
    let mut waits = 0;
    while sent() == 0 && waits < 10_000 {
        tokio::task::yield_now().await;
        waits += 1;
    }
    assert_eq!(sent(), export.body.len() as i64, "the export's event counts the bytes streamed");
    let mut lines = csv.split("\r\n").filter(|l| !l.is_empty());
    assert_eq!(
        lines.next(),
        Some("period,date,tenant_id,operation_id,client_id,calls,units,billable_units,overage_units,errors")
    );
    let lines: Vec<&str> = lines.collect();
    let of = |op: &str| -> Vec<&str> { lines.iter().copied().filter(|l| l.contains(&format!(",{op},"))).collect() };
    let (listed, get_me) = (of("listDocuments"), of("getMe"));
    assert_eq!((listed.len(), get_me.len()), (1, 1), "{csv}");
    assert!(listed[0].starts_with(&format!("{period},{period}-")) && listed[0].ends_with(",7,14,14,0,0"), "{csv}");
    assert!(get_me[0].ends_with(",1,1,0,0,0"), "a self-service read: its units, none billable: {csv}");

    // Statements: none before a month closes; an unknown period is 404 (a malformed one 422, below).
    let statements = host.http(get("/api/v1/billing/statements", &a)).await;
    assert_eq!((statements.status, statements.json()["value"].clone()), (200, json!([])));
    assert_eq!(host.http(get(&format!("/api/v1/billing/statements/{period}"), &a)).await.status, 404);

    // Scoping and validation.
    let a_id = summary["tenantId"].as_str().unwrap();
    assert_eq!(
        host.http(get(&format!("/api/v1/usage?tenantId={a_id}"), &b)).await.status,
        404,
        "another tenant does not exist"
    );
    assert_eq!(host.http(get(&format!("/api/v1/usage/export?period={period}&tenantId={a_id}"), &b)).await.status, 404);
    assert_eq!(host.http(get("/api/v1/usage", &reader)).await.status, 403);
    // Each refusal names its parameter (field-level detail), and never quotes the value.
    for (bad, parameter) in [
        ("granularity=week", "granularity"),
        ("from=2026-01-02T00:00:00Z&to=2026-01-01T00:00:00Z", "from"),
        ("granularity=hour&from=2020-01-01T00:00:00Z", "from"),
        // Found by schemathesis: beyond 2262 chrono's window arithmetic overflowed and the handler panicked.
        ("from=2263-01-01T00:00:00Z", "from"),
        ("to=2263-01-01T00:00:00Z", "to"),
        ("from=1969-12-31T00:00:00Z&granularity=day", "from"),
    ] {
        let response = host.http(get(&format!("/api/v1/usage?{bad}"), &a)).await;
        assert_eq!(response.status, 422, "{bad}");
        let problem = response.json();
        assert_eq!(problem["code"], "ValidationFailed");
        assert_eq!(problem["errors"][0]["parameter"], parameter, "{bad}: {problem}");
        assert!(!problem.to_string().contains("1969") && !problem.to_string().contains("2263"), "{problem}");
    }
    for (bad, code) in [("period=2026-1", "pattern"), ("period=2999-01", "range")] {
        let response = host.http(get(&format!("/api/v1/usage/export?{bad}"), &a)).await;
        assert_eq!(response.status, 422, "{bad}");
        assert_eq!(response.json()["errors"][0]["code"], code, "{bad}");
    }
    for bad in ["2026-13", "abc"] {
        let response = host.http(get(&format!("/api/v1/billing/statements/{bad}"), &a)).await;
        assert_eq!(response.status, 422, "{bad}: a malformed month is no missing statement");
        assert_eq!(response.json()["errors"][0]["field"], "period");
    }
}

#[actix_web::test]
async fn a_closed_month_has_a_statement_equal_to_the_usage_api_and_the_export() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Read,Documents.Write,Usage.Read", DEV_APP_ID).await;
    let created = host
        .http(
            ClientRequest::new("POST", "/api/v1/documents")
                .json(&json!({"title": "t", "docType": "memo"}))
                .header("Authorization", &format!("Bearer {a}")),
        )
        .await;
    assert_eq!(created.status, 201);
    for _ in 0..4 {
        assert_eq!(host.http(get("/api/v1/documents", &a)).await.status, 200);
    }
    assert_eq!(host.http(get("/api/v1/documents/00000000-0000-0000-0000-000000000000", &a)).await.status, 404);
    let summary = host.http(get("/api/v1/usage/summary", &a)).await.json();
    let period = summary["periodStart"].as_str().unwrap()[..7].to_owned();
    host.settle_leases().await;

    // Past the month's end and the lateness window, one rollup run closes the month and writes its statement.
    host.clock.advance(chrono::Duration::days(40));
    let run = host.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(run.logs()[0].contains("statements written"), "{:?}", run.logs());
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await; // the first one has expired meanwhile
    let listed = host.http(get("/api/v1/billing/statements", &a)).await.json();
    let statements = listed["value"].as_array().unwrap();
    assert_eq!(statements.len(), 1, "{listed}");
    let statement = host.http(get(&format!("/api/v1/billing/statements/{period}"), &a)).await;
    assert_eq!(statement.status, 200);
    let statement = statement.json();
    let mut summary_of_read = statement.clone();
    let lines = summary_of_read.as_object_mut().unwrap().remove("adjustments");
    assert_eq!(summary_of_read, statements[0], "the list and the read agree");
    assert_eq!(lines, Some(json!([])), "the read lists the adjustment lines: none");
    // createDocument 5 + 4 x listDocuments 2: the 404 and the self-service reads are not billed.
    assert_eq!((statement["period"].as_str(), statement["usedUnits"].as_i64()), (Some(period.as_str()), Some(13)));
    assert_eq!(statement["planCode"], "developer");
    assert_eq!(
        statement["totalAmountMicros"].as_i64().unwrap(),
        statement["baseAmountMicros"].as_i64().unwrap() + statement["overageAmountMicros"].as_i64().unwrap()
    );

    // The same month through the usage API and the export: the same billable units.
    let start = statement["periodStart"].as_str().unwrap();
    let end = statement["periodEnd"].as_str().unwrap();
    let month =
        host.http(get(&format!("/api/v1/usage?granularity=month&from={start}T00:00:00Z&to={end}T00:00:00Z"), &a)).await;
    assert_eq!(month.status, 200, "{}", String::from_utf8_lossy(&month.body));
    let month = month.json();
    let billable: i64 = month["value"].as_array().unwrap().iter().map(|w| w["billableUnits"].as_i64().unwrap()).sum();
    assert_eq!(billable, 13, "{month}");
    let export = host.http(get(&format!("/api/v1/usage/export?period={period}"), &a)).await;
    let csv = String::from_utf8(export.body.clone()).unwrap();
    let exported: i64 = csv
        .split("\r\n")
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| l.split(',').nth(7).unwrap().parse::<i64>().unwrap())
        .sum();
    assert_eq!(exported, 13, "{csv}");
}

#[actix_web::test]
async fn overage_that_a_later_grant_covers_is_not_billed() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Read,Documents.Write,Usage.Read", DEV_APP_ID).await;
    let tenant = tenant_a(&host);
    create_plan(&host, "payg", 5, "allow", 10_000_000, 1_000).await;
    move_to(&host, &tenant, "payg").await;
    // 8 units on a quota of 5: 3 beyond it, admitted as overage.
    for _ in 0..4 {
        assert_eq!(host.http(get("/api/v1/documents", &a)).await.status, 200);
    }
    let period = host.clock.now().format("%Y-%m").to_string();
    host.settle_leases().await;
    assert_eq!(host.http(get("/api/v1/usage/summary", &a)).await.json()["overageUnits"], 3);
    // Then a platform administrator grants 10 units for the period: they cover the overage, as the summary shows.
    let grant = ClientRequest::new("POST", &format!("/api/v1/tenants/{tenant}/grants"))
        .json(&json!({"units": 10, "reason": "goodwill"}));
    assert_eq!(as_admin(&host, grant).await.status, 201);
    assert_eq!(host.http(get("/api/v1/usage/summary", &a)).await.json()["overageUnits"], 0);

    // The month closes: the statement bills what the summary showed, no overage.
    host.clock.advance(chrono::Duration::days(40));
    let closed = host.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(closed.logs()[0].contains("statements written"), "{:?}", closed.logs());
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let issued = host.http(get(&format!("/api/v1/billing/statements/{period}"), &a)).await.json();
    assert_eq!(
        (issued["usedUnits"].clone(), issued["overageUnits"].clone(), issued["overageAmountMicros"].clone()),
        (json!(8), json!(0), json!(0)),
        "{issued}"
    );
    assert_eq!(
        (issued["grantedUnits"].clone(), issued["amountDueMicros"].clone()),
        (json!(3), json!(10_000_000)),
        "{issued}"
    );
}

#[actix_web::test]
async fn a_late_downgrade_prices_its_period_on_the_plan_the_period_was_on() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Read,Usage.Read", DEV_APP_ID).await;
    let tenant = tenant_a(&host);
    create_plan(&host, "pricey", 1_000, "block", 99_000_000, 0).await;
    create_plan(&host, "cheap", 1_000, "block", 19_990_000, 0).await;
    move_to(&host, &tenant, "pricey").await;
    for _ in 0..3 {
        assert_eq!(host.http(get("/api/v1/documents", &a)).await.status, 200);
    }
    let period = host.clock.now().format("%Y-%m").to_string();
    host.settle_leases().await;
    // On the period's last days the tenant moves to the cheaper plan: it applies from the next period.
    host.clock.advance(chrono::Duration::days(25));
    move_to(&host, &tenant, "cheap").await;
    host.clock.advance(chrono::Duration::days(15));
    let closed = host.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(closed.logs()[0].contains("statements written"), "{:?}", closed.logs());
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let issued = host.http(get(&format!("/api/v1/billing/statements/{period}"), &a)).await.json();
    assert_eq!(
        (issued["planCode"].clone(), issued["baseAmountMicros"].clone()),
        (json!("pricey"), json!(99_000_000)),
        "the period's plan, not the one the tenant moved to: {issued}"
    );
}

/// A move from a `block` plan to a pay-as-you-go plan with a smaller quota keeps the period's larger quota and its
/// plan (and base price), and the overage it then allows is priced by the plan that allowed it, never by the
/// `block` plan's overage price, which that plan never charges.
#[actix_web::test]
async fn overage_a_move_to_pay_as_you_go_allows_is_priced_by_that_plan() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Read,Usage.Read", DEV_APP_ID).await;
    let tenant = tenant_a(&host);
    create_plan(&host, "pro", 10, "block", 100_000_000, 0).await;
    create_plan(&host, "payg", 2, "allow", 20_000_000, 10_000).await;
    move_to(&host, &tenant, "pro").await;
    let period = host.clock.now().format("%Y-%m").to_string();
    for _ in 0..3 {
        assert_eq!(host.http(get("/api/v1/documents", &a)).await.status, 200);
    }
    host.settle_leases().await;
    move_to(&host, &tenant, "payg").await;
    for _ in 0..5 {
        assert_eq!(host.http(get("/api/v1/documents", &a)).await.status, 200, "allowed past the quota now");
    }
    host.settle_leases().await;
    host.clock.advance(chrono::Duration::days(40));
    let closed = host.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(closed.logs()[0].contains("statements written"), "{:?}", closed.logs());
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let answer = host.http(get(&format!("/api/v1/billing/statements/{period}"), &a)).await;
    assert_eq!(answer.header("vary"), Some("Accept"), "JSON or CSV by Accept");
    let issued = answer.json();
    // 16 units (8 listings of 2), 6 beyond the period's quota of 10, at payg's cent a unit; pro's base price.
    assert_eq!(
        [&issued["planCode"], &issued["quotaUnits"], &issued["usedUnits"], &issued["overageUnits"]],
        [&json!("pro"), &json!(10), &json!(16), &json!(6)],
        "{issued}"
    );
    assert_eq!(
        [&issued["baseAmountMicros"], &issued["overageUnitPriceMicros"], &issued["overageAmountMicros"]],
        [&json!(100_000_000), &json!(10_000), &json!(60_000)],
        "{issued}"
    );
    // The event says the price it applied too: its plan's own overage price is 0.
    let payload: String = host
        .db()
        .query_row(
            "SELECT payload FROM outbox_messages WHERE event_type = 'meterline.billing.statement-ready.v1'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    let event: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        [&event["planCode"], &event["overageUnitPriceMicros"], &event["overageAmountMicros"]],
        [&json!("pro"), &json!(10_000), &json!(60_000)],
        "{event}"
    );
}

#[actix_web::test]
async fn usage_of_a_billed_month_that_arrives_late_is_an_adjustment_on_the_next_statement() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Read,Documents.Write,Usage.Read", DEV_APP_ID).await;
    let tenant = tenant_a(&host);
    // Pay as you go: 5 units included, then a cent a unit.
    create_plan(&host, "payg", 5, "allow", 10_000_000, 10_000).await;
    move_to(&host, &tenant, "payg").await;
    for _ in 0..4 {
        assert_eq!(host.http(get("/api/v1/documents", &a)).await.status, 200);
    }
    let first_month = host.clock.now();
    let period = first_month.format("%Y-%m").to_string();
    host.settle_leases().await;

    // The month closes: 8 units, 3 beyond the quota.
    host.clock.advance(chrono::Duration::days(40));
    let rollup = || host.invoke_timer("UsageRollup", json!({"ScheduleStatus": null, "IsPastDue": false}));
    let closed = rollup().await;
    assert!(closed.logs()[0].contains("statements written"), "{:?}", closed.logs());
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let issued = host.http(get(&format!("/api/v1/billing/statements/{period}"), &a)).await.json();
    assert_eq!(
        (issued["usedUnits"].clone(), issued["overageUnits"].clone(), issued["overageAmountMicros"].clone()),
        (json!(8), json!(3), json!(30_000)),
        "{issued}"
    );
    assert_eq!((issued["adjustments"].clone(), issued["amountDueMicros"].clone()), (json!([]), json!(10_030_000)));

    // Another system reports 7 units of that month afterwards.
    let late = json!({
        "specversion": "1.0", "id": "late-1", "source": "/ocr", "type": "meterline.usage.reported.v1",
        "datacontenttype": "application/json",
        "data": {"tenantId": tenant, "meter": "ocr.pages", "units": 7, "occurredAt": first_month.to_rfc3339()}
    });
    let mut message = crate::support::host::ServiceBusDelivery::new(&late.to_string());
    message.content_type = Some("application/cloudevents+json".into());
    let applied = host.invoke_service_bus("IntegrationEvents", &message).await;
    assert!(applied.logs().join("\n").contains("applied meterline.usage.reported.v1"), "{:?}", applied.logs());

    // The issued statement never changes; the next month's statement carries the difference as a line.
    host.clock.advance(chrono::Duration::days(31));
    let run = rollup().await;
    assert!(run.logs()[0].contains("statements written"), "{:?}", run.logs());
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let again = host.http(get(&format!("/api/v1/billing/statements/{period}"), &a)).await.json();
    assert_eq!(again["usedUnits"], issued["usedUnits"], "an issued statement is never edited");
    let listed = host.http(get("/api/v1/billing/statements", &a)).await.json();
    let next_period = listed["value"][0]["period"].as_str().unwrap().to_owned();
    assert_ne!(next_period, period, "{listed}");
    let next = host.http(get(&format!("/api/v1/billing/statements/{next_period}"), &a)).await.json();
    assert_eq!(
        next["adjustments"],
        json!([{"adjustsPeriod": period, "adjustsStatementId": issued["id"], "usedUnits": 7, "overageUnits": 7, "amountMicros": 70_000}]),
        "{next}"
    );
    assert_eq!(next["adjustmentAmountMicros"], 70_000);
    assert_eq!(next["amountDueMicros"].as_i64().unwrap(), next["totalAmountMicros"].as_i64().unwrap() + 70_000);

    // The same as CSV, one line per charge.
    let csv =
        host.http(get(&format!("/api/v1/billing/statements/{next_period}"), &a).header("Accept", "text/csv")).await;
    assert_eq!(csv.status, 200);
    assert!(csv.header("content-type").unwrap().starts_with("text/csv"));
    let text = String::from_utf8(csv.body.clone()).unwrap();
    let lines: Vec<&str> = text.split("\r\n").filter(|l| !l.is_empty()).collect();
    assert_eq!(lines[0], "period,line,reference,units,amount_micros,currency");
    assert!(lines.contains(&format!("{next_period},adjustment,{period},7,70000,EUR").as_str()), "{text}");
    assert_eq!(*lines.last().unwrap(), format!("{next_period},amount_due,,,{},EUR", next["amountDueMicros"]));

    // Nothing is billed twice: a third month has no adjustment for it.
    host.clock.advance(chrono::Duration::days(31));
    rollup().await;
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let listed = host.http(get("/api/v1/billing/statements", &a)).await.json();
    let third = listed["value"][0]["period"].as_str().unwrap().to_owned();
    let third = host.http(get(&format!("/api/v1/billing/statements/{third}"), &a)).await.json();
    assert_eq!(
        (third["adjustments"].clone(), third["adjustmentAmountMicros"].clone()),
        (json!([]), json!(0)),
        "{third}"
    );

    // The tenant moves to a plan in yen; more late usage of the first (euro) month arrives. A euro amount is never
    // summed into a statement in yen: the next statement has no line for it.
    let yen = json!({"code": "yen", "name": "Yen", "requestsPerMinute": 1_000_000, "burst": 100_000,
        "monthlyQuotaUnits": 5, "overagePolicy": "allow", "currency": "JPY", "basePriceMicros": 1_000_000_000,
        "overageUnitPriceMicros": 1_000_000});
    assert_eq!(as_admin(&host, ClientRequest::new("POST", "/api/v1/plans").json(&yen)).await.status, 201);
    move_to(&host, &tenant, "yen").await;
    let later = json!({
        "specversion": "1.0", "id": "late-2", "source": "/ocr", "type": "meterline.usage.reported.v1",
        "datacontenttype": "application/json",
        "data": {"tenantId": tenant, "meter": "ocr.pages", "units": 4, "occurredAt": first_month.to_rfc3339()}
    });
    let mut message = crate::support::host::ServiceBusDelivery::new(&later.to_string());
    message.content_type = Some("application/cloudevents+json".into());
    host.invoke_service_bus("IntegrationEvents", &message).await;
    host.clock.advance(chrono::Duration::days(31));
    rollup().await;
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let listed = host.http(get("/api/v1/billing/statements", &a)).await.json();
    let fourth = listed["value"][0]["period"].as_str().unwrap().to_owned();
    let fourth = host.http(get(&format!("/api/v1/billing/statements/{fourth}"), &a)).await.json();
    assert_eq!(fourth["currency"], "JPY", "{fourth}");
    assert_eq!(fourth["adjustments"], json!([]), "no euro line in a yen statement: {fourth}");
}

#[actix_web::test]
async fn a_kolkata_tenant_with_anchor_15_has_one_window_for_quota_summary_series_and_statement() {
    const DIR_K: &str = "cccccccc-0000-0000-0000-0000000000cc";
    let host = TestApp::start().await;
    let admin = host.token("0b500000-0000-0000-0000-0000000000ff", "Platform.Admin", "ops").await;
    let create = |body: serde_json::Value| {
        ClientRequest::new("POST", "/api/v1/tenants").json(&body).header("Authorization", &format!("Bearer {admin}"))
    };
    let lord_howe = json!({"name": "Island", "plan": "developer", "timeZone": "Australia/Lord_Howe"});
    let refused = host.http(create(lord_howe)).await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.json()["errors"][0]["pointer"], "/timeZone");
    let body = json!({"name": "Mumbai Ltd", "plan": "developer", "entraTenantId": DIR_K,
        "billingAnchorDay": 15, "timeZone": "Asia/Kolkata"});
    let created = host.http(create(body)).await;
    assert_eq!(created.status, 201, "{}", String::from_utf8_lossy(&created.body));
    assert_eq!(
        (created.json()["billingAnchorDay"].clone(), created.json()["timeZone"].clone()),
        (json!(15), json!("Asia/Kolkata"))
    );
    let tenant = created.json()["id"].as_str().unwrap().to_owned();
    let at = |s: &str| chrono::DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&chrono::Utc);

    // 2 March 09:17 UTC is 14:47 in Kolkata: the period that began on 15 February, local midnight.
    let k = host.token(DIR_K, "Documents.Read,Usage.Read", DEV_APP_ID).await;
    for _ in 0..3 {
        assert_eq!(host.http(get("/api/v1/documents", &k)).await.status, 200);
    }
    let summary = host.http(get("/api/v1/usage/summary", &k)).await.json();
    assert_eq!(
        (summary["periodStart"].clone(), summary["periodEnd"].clone(), summary["resetsAt"].clone()),
        (json!("2026-02-15"), json!("2026-03-15"), json!("2026-03-14T18:30:00Z")),
        "{summary}"
    );
    let listed = host.http(get("/api/v1/documents", &k)).await;
    assert!(listed.header("ratelimit-policy").unwrap().contains("\"month\";q=100000000;w=2419200"), "28 days");

    // 23:30 on 14 March in Kolkata: still February's period; 00:15 on the 15th: the next one.
    host.clock.set(at("2026-03-14T18:00:00Z"));
    let k = host.token(DIR_K, "Documents.Read,Usage.Read", DEV_APP_ID).await;
    assert_eq!(host.http(get("/api/v1/documents", &k)).await.status, 200);
    host.clock.set(at("2026-03-14T18:45:00Z"));
    assert_eq!(host.http(get("/api/v1/documents", &k)).await.status, 200);
    let summary = host.http(get("/api/v1/usage/summary", &k)).await.json();
    assert_eq!(
        (summary["periodStart"].clone(), summary["unitsUsed"].clone()),
        (json!("2026-03-15"), json!(2)),
        "{summary}"
    );
    host.settle_leases().await;
    let periods: Vec<(String, i64)> = {
        let db = host.db();
        let mut stmt =
            db.prepare("SELECT period_start, units_used FROM quota_usage WHERE tenant_id = ?1 ORDER BY 1").unwrap();
        stmt.query_map([&tenant], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(
        periods,
        vec![("2026-02-15".to_owned(), 10), ("2026-03-15".to_owned(), 2)],
        "the quota counts per local period"
    );

    // The daily series has Kolkata's days: they begin at 18:30 UTC.
    let days = host
        .http(get("/api/v1/usage?granularity=day&from=2026-03-13T18:30:00Z&to=2026-03-15T18:30:00Z", &k))
        .await
        .json();
    let starts: Vec<&str> =
        days["value"].as_array().unwrap().iter().map(|w| w["windowStart"].as_str().unwrap()).collect();
    assert_eq!(starts, vec!["2026-03-13T18:30:00Z", "2026-03-14T18:30:00Z"], "{days}");
    let hours = host
        .http(get("/api/v1/usage?granularity=hour&from=2026-03-14T17:00:00Z&to=2026-03-14T20:00:00Z", &k))
        .await
        .json();
    let starts: Vec<&str> =
        hours["value"].as_array().unwrap().iter().map(|w| w["windowStart"].as_str().unwrap()).collect();
    assert_eq!(starts, vec!["2026-03-14T17:30:00Z", "2026-03-14T18:30:00Z"], "half-hour aligned: {hours}");

    // Once February's period is final, its statement covers exactly it, like the usage API's month window.
    host.clock.set(at("2026-03-20T00:00:00Z"));
    let run = host.invoke_timer("UsageRollup", json!({"ScheduleStatus": null, "IsPastDue": false})).await;
    assert!(run.logs()[0].contains("statements written"), "{:?}", run.logs());
    let k = host.token(DIR_K, "Usage.Read", DEV_APP_ID).await;
    let statement = host.http(get("/api/v1/billing/statements/2026-02", &k)).await;
    assert_eq!(statement.status, 200, "{}", String::from_utf8_lossy(&statement.body));
    let statement = statement.json();
    assert_eq!(
        (statement["periodStart"].clone(), statement["periodEnd"].clone(), statement["usedUnits"].clone()),
        (json!("2026-02-15"), json!("2026-03-15"), json!(10)),
        "{statement}"
    );
    let month = host
        .http(get("/api/v1/usage?granularity=month&from=2026-02-14T18:30:00Z&to=2026-03-14T18:30:00Z", &k))
        .await
        .json();
    assert_eq!(month["value"].as_array().unwrap().len(), 1, "one window, the period: {month}");
    assert_eq!(
        (month["value"][0]["windowStart"].clone(), month["value"][0]["billableUnits"].clone()),
        (json!("2026-02-14T18:30:00Z"), json!(10))
    );
    let export = host.http(get("/api/v1/usage/export?period=2026-02", &k)).await;
    let csv = String::from_utf8(export.body.clone()).unwrap();
    let lines: Vec<&str> = csv.split("\r\n").skip(1).filter(|l| !l.is_empty()).collect();
    let billable: i64 = lines.iter().map(|l| l.split(',').nth(7).unwrap().parse::<i64>().unwrap()).sum();
    assert_eq!(billable, 10, "{csv}");
    assert!(lines.iter().all(|l| l.starts_with("2026-02,2026-0")), "{csv}");
    assert!(lines.iter().any(|l| l.contains(",2026-03-14,")), "the 14th, local: {csv}");
    assert!(host.http(get("/api/v1/billing/statements/2026-03", &k)).await.status == 404, "March's period is open");
}

#[actix_web::test]
async fn the_summary_projects_the_period_and_the_platform_reads_every_tenant_and_the_pipeline() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Read,Usage.Read", DEV_APP_ID).await;
    let b = host.token(DIR_B, "Documents.Read,Usage.Read", "b-app").await;
    let admin = host.token("0000000f-0000-0000-0000-00000000000f", "Platform.Admin", "ops").await;
    for _ in 0..3 {
        assert_eq!(host.http(get("/api/v1/documents", &a)).await.status, 200);
    }
    assert_eq!(host.http(get("/api/v1/documents", &b)).await.status, 200);

    // The summary says when it is of, in which zone, and where the period's rate so far leads.
    let summary = host.http(get("/api/v1/usage/summary", &a)).await.json();
    let now = host.clock.now();
    assert_eq!(summary["asOf"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap(), now);
    assert_eq!(
        (summary["timeZone"].as_str(), summary["periodStartsAt"].as_str()),
        (Some("UTC"), Some("2026-03-01T00:00:00Z"))
    );
    let starts: chrono::DateTime<chrono::Utc> = "2026-03-01T00:00:00Z".parse().unwrap();
    let ends: chrono::DateTime<chrono::Utc> = summary["resetsAt"].as_str().unwrap().parse().unwrap();
    let (elapsed, total) = ((now - starts).num_seconds(), (ends - starts).num_seconds());
    assert_eq!(summary["unitsUsed"], json!(6));
    assert_eq!(summary["projectedUnits"], json!(6 * total / elapsed));
    assert!(summary.get("projectedExhaustionAt").is_none(), "a quota of 100 million lasts the period: {summary}");

    // Every tenant's period, most used first, for platform administrators only.
    assert_eq!(host.http(get("/api/v1/usage/tenants", &a)).await.status, 403);
    assert_eq!(host.http(get("/api/v1/usage/pipeline", &a)).await.status, 403);
    let all = host.http(get("/api/v1/usage/tenants", &admin)).await;
    assert_eq!(all.status, 200, "{}", String::from_utf8_lossy(&all.body));
    let all = all.json();
    assert_eq!(all["truncated"], json!(false));
    let used: Vec<i64> = all["value"].as_array().unwrap().iter().map(|t| t["unitsUsed"].as_i64().unwrap()).collect();
    assert_eq!(used, vec![6, 2, 0], "A, B and the administrator's own tenant, most used first");
    let first = &all["value"][0];
    assert_eq!(first["tenantId"], summary["tenantId"]);
    for field in ["quotaUnits", "remainingUnits", "periodStartsAt", "resetsAt", "projectedUnits", "timeZone"] {
        assert_eq!(first[field], summary[field], "{field}");
    }
    assert_eq!((first["status"].as_str(), first["usedPercent"].as_i64()), (Some("active"), Some(0)));

    // The pipeline: no rollup yet, then one run: its lag is now minus what it completed.
    let pipeline = host.http(get("/api/v1/usage/pipeline", &admin)).await.json();
    assert_eq!(pipeline["rollup"]["watermark"], json!(0));
    assert!(pipeline["rollup"].get("lagSeconds").is_none(), "{pipeline}");
    assert_eq!(pipeline["quarantine"]["open"], json!(0));
    host.clock.advance(chrono::Duration::seconds(121));
    let run = host.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(run.logs()[0].starts_with("UsageRollup: rolled up"), "{:?}", run.logs());
    host.clock.advance(chrono::Duration::seconds(30));
    let pipeline = host.http(get("/api/v1/usage/pipeline", &admin)).await.json();
    let complete: chrono::DateTime<chrono::Utc> =
        pipeline["rollup"]["completeThrough"].as_str().unwrap().parse().unwrap();
    assert_eq!(pipeline["rollup"]["lagSeconds"], json!((host.clock.now() - complete).num_seconds()));
    assert!(pipeline["rollup"]["watermark"].as_i64().unwrap() > 0);
    assert_eq!(
        (pipeline["outbox"]["capped"].as_bool(), pipeline["quarantine"]["capped"].as_bool()),
        (Some(false), Some(false))
    );
}

/// The export reads the years the report reads; a period given twice is said once, as repeated.
#[actix_web::test]
async fn an_export_of_a_period_outside_the_usage_years_or_given_twice_is_one_clear_422() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    for period in ["0000-01", "1999-12", "2201-01"] {
        let res = host.http(get(&format!("/api/v1/usage/export?period={period}"), &a)).await;
        assert_eq!(res.status, 422, "{period}");
        let errors = &res.json()["errors"];
        assert_eq!((errors[0]["parameter"].as_str(), errors[0]["code"].as_str()), (Some("period"), Some("range")));
    }
    let twice = host.http(get("/api/v1/usage/export?period=2026-01&period=2026-02", &a)).await.json();
    let errors = twice["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{twice}");
    assert_eq!(errors[0]["code"], "repeated", "{twice}");
}

/// A client that retries a create whose answer it lost pays for the create once: the replays are recorded (calls,
/// their cost) and not billed, on the quota counter as in the usage events.
#[actix_web::test]
async fn replays_of_an_idempotent_create_are_recorded_and_not_billed() {
    let host = TestApp::start().await;
    let a = host.token(DIR_A, "Documents.Write,Usage.Read", DEV_APP_ID).await;
    let create = || {
        ClientRequest::new("POST", "/api/v1/documents")
            .header("Authorization", &format!("Bearer {a}"))
            .header("Idempotency-Key", "retry-me")
            .json(&json!({"title": "Retried", "docType": "guidance"}))
    };
    let first = host.http(create()).await;
    assert_eq!((first.status, first.header("idempotency-replayed")), (201, None));
    for _ in 0..2 {
        let again = host.http(create()).await;
        assert_eq!((again.status, again.header("idempotency-replayed")), (201, Some("true")));
    }
    host.settle_leases().await;
    let summary = host.http(get("/api/v1/usage/summary", &a)).await.json();
    assert_eq!(summary["unitsUsed"], 5, "one create's units: {summary}");
    let rows: Vec<(i64, bool)> = {
        let conn = host.db();
        let mut query = conn
            .prepare("SELECT units, billable FROM usage_events WHERE operation_id = 'createDocument' ORDER BY seq")
            .unwrap();
        query.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(rows, vec![(5, true), (5, false), (5, false)]);
}
