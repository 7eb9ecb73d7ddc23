//! Calls whose client leaves before the answer. actix's HTTP server drops a request's work when its connection
//! fails mid-request (a reset); `TestApp::abandon` does the same in process, once the app reads the request's body.
//! Each such call is recorded (status 499), attributed to its tenant and charged as admitted, and the quota counter
//! still equals the billable units of the usage events exactly, with quota leases and with direct debits.

use serde_json::json;

use crate::metering::{A_UNITS, DIR_A, METERED, count, metered_in};
use crate::support::app::{DEV_APP_ID, TestApp};
use crate::support::host::ClientRequest;

/// Tenant A's billable units by its usage events.
const A_BILLED: &str = "SELECT coalesce(sum(e.units), 0) FROM usage_events e JOIN tenants t ON t.id = e.tenant_id \
    WHERE t.entra_tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000aa' AND e.billable = 1";

/// A usage event as these tests read it back: status, billable, units, tenant's directory, client, operation.
type Event = (i64, bool, i64, Option<String>, Option<String>, String);

fn event(app: &TestApp, status: i64) -> Event {
    app.db()
        .query_row(
            "SELECT e.status, e.billable, e.units, t.entra_tenant_id, e.client_id, e.operation_id \
             FROM usage_events e LEFT JOIN tenants t ON t.id = e.tenant_id WHERE e.status = ?1",
            [status],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?)),
        )
        .unwrap_or_else(|e| {
            let all: Vec<(i64, String)> = app
                .db()
                .prepare("SELECT status, operation_id FROM usage_events ORDER BY seq")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            panic!("one usage event with status {status}: {e}; the events: {all:?}")
        })
}

/// A create abandoned while its body arrives is recorded and charged like the create it would have been; nothing
/// is written; after the settlements the counter equals the billed units.
async fn an_abandoned_create_is_recorded_and_charged(app: TestApp) -> TestApp {
    let (app, user, _admin) = metered_in(app, 1_000_000, 100_000, 1_000, "block").await;
    let writer = app.token(DIR_A, "Documents.Read,Documents.Write", DEV_APP_ID).await;
    let create = || {
        ClientRequest::new("POST", "/api/v1/documents")
            .header("Authorization", &format!("Bearer {writer}"))
            .header("Content-Type", "application/json")
    };
    let answered = app.http(create().json(&json!({"title": "Answered", "docType": "regulation"}))).await;
    assert_eq!(answered.status, 201, "{}", String::from_utf8_lossy(&answered.body));
    app.abandon(create().header("Content-Length", "400")).await;
    // This call's record is queued after the abandoned one's: once it is answered, both are stored.
    assert_eq!(app.get(&user, METERED).await.status, 200);

    let (.., created_units, _, _, _) = event(&app, 201);
    let abandoned = event(&app, 499);
    assert_eq!(
        abandoned,
        (499, true, created_units, Some(DIR_A.to_owned()), Some(DEV_APP_ID.to_owned()), "createDocument".to_owned()),
        "recorded as the tenant's create, charged as admitted"
    );
    let documents =
        "SELECT count(*) FROM documents d JOIN tenants t ON t.id = d.tenant_id WHERE t.entra_tenant_id = ?1";
    let stored: i64 = app.db().query_row(documents, [DIR_A], |r| r.get(0)).unwrap();
    assert_eq!(stored, 1, "the abandoned create wrote nothing");
    app
}

#[actix_web::test]
async fn a_call_abandoned_mid_request_is_recorded_and_charged_from_its_quota_lease() {
    let app = an_abandoned_create_is_recorded_and_charged(TestApp::start().await).await;
    // The abandoned call's lease waits for the reclaim margin (its record could still have been in flight), then
    // is settled from the usage events that name it.
    app.settle_leases().await;
    app.clock.advance(chrono::Duration::seconds(70));
    let run = app.invoke_timer("UsageRollup", json!({"ScheduleStatus": null, "IsPastDue": false})).await;
    assert_eq!(run.status, 200);
    assert_eq!(count(&app.db(), A_UNITS), count(&app.db(), A_BILLED), "the counter equals the billed units");
}

#[actix_web::test]
async fn a_call_abandoned_mid_request_is_recorded_and_charged_by_a_direct_debit() {
    let app = TestApp::builder().setting("METERLINE_QUOTA_LEASE_SECS", "0").start().await;
    let app = an_abandoned_create_is_recorded_and_charged(app).await;
    assert_eq!(count(&app.db(), A_UNITS), count(&app.db(), A_BILLED), "the counter equals the billed units");
}

/// A call dropped while the limit stage waits for the store (its quota lease's first grant) is the caller's: its
/// tenant and client are known before the limits are decided.
#[actix_web::test]
async fn a_call_abandoned_while_its_limits_are_decided_is_its_callers() {
    let (app, user, _admin) = metered_in(TestApp::start().await, 1_000_000, 100_000, 1_000, "block").await;
    // The caller's tenant and registration are looked up (and cached), and its rate steps taken, by a call that
    // spends no quota; then the database's write lock is held, so the quota lease's first grant must wait: the
    // abandoned call's first wait is in the limit stage, whatever the machine's load.
    assert_eq!(app.get(&user, "/api/v1/me").await.status, 200);
    let holder = app.db();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    app.abandon_at_first_wait(ClientRequest::get(METERED).header("Authorization", &format!("Bearer {user}")));
    holder.execute_batch("ROLLBACK").unwrap();
    assert_eq!(app.get(&user, METERED).await.status, 200);
    // Dropped before its debit, it is charged nothing.
    let (status, billable, _, directory, client, operation) = event(&app, 499);
    assert_eq!(
        (status, billable, directory.as_deref(), client.as_deref(), operation.as_str()),
        (499, false, Some(DIR_A), Some(DEV_APP_ID), "listDocuments")
    );
    app.settle_leases().await;
    app.clock.advance(chrono::Duration::seconds(70));
    let run = app.invoke_timer("UsageRollup", json!({"ScheduleStatus": null, "IsPastDue": false})).await;
    assert_eq!(run.status, 200);
    assert_eq!(count(&app.db(), A_UNITS), count(&app.db(), A_BILLED), "the counter equals the billed units");
}
