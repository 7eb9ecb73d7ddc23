//! The `IntegrationEvents` consumer through the emulated Functions host: every event type applied once however
//! often it is delivered, poison messages quarantined (and replayed by the CLI), transient failures abandoned.

use std::path::Path;
use std::sync::Arc;

use meterline::clock::{Clock, SystemClock};
use meterline::store::prelude::*;
use meterline::store::{SqliteStore, TenantStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::TestApp;
use crate::support::host::{HostEmulator, ServiceBusDelivery};
use crate::support::stores;

fn cloud_event(event_type: &str, id: &str, data: Value) -> Value {
    json!({
        "specversion": "1.0", "id": id, "source": "/crm/acme", "type": event_type,
        "time": "2026-11-24T10:00:00Z", "datacontenttype": "application/json", "data": data
    })
}

async fn store_of(host: &HostEmulator) -> Arc<dyn Store> {
    Arc::new(SqliteStore::open(&host.app_root.join("data/meterline.db")).await.unwrap())
}

async fn create_plans(store: &Arc<dyn Store>) {
    let now = chrono::Utc::now();
    for (code, quota) in [("basic", 100), ("pro", 10_000)] {
        store.create_plan(&stores::plan(code, quota, now), None).await.unwrap();
    }
}

/// Delivers `body` as Service Bus would on its `delivery`-th attempt and returns the single log line.
async fn deliver(host: &HostEmulator, body: &str, delivery: u32) -> String {
    let mut message = ServiceBusDelivery::new(body);
    message.delivery_count = delivery;
    message.content_type = Some("application/cloudevents+json".into());
    let response = host.invoke_service_bus("IntegrationEvents", &message).await;
    assert_eq!(response.status, 200, "{}", String::from_utf8_lossy(&response.raw));
    response.logs().join("\n")
}

#[tokio::test]
async fn every_event_type_is_applied_once_when_delivered_three_times() {
    let host = HostEmulator::start().await;
    let store = store_of(&host).await;
    create_plans(&store).await;
    let tenant = Uuid::new_v4();
    let (doc_a, doc_b) = (Uuid::new_v4(), Uuid::new_v4());
    // The host runs the handler on the real clock, and usage is metered only near it (`occurred_at_is_checked`).
    let occurred = SystemClock.now() - chrono::Duration::minutes(30);
    let events = [
        cloud_event(
            "meterline.tenant.upserted.v1",
            "e-1",
            json!({"tenantId": tenant, "name": "Acme", "planCode": "basic"}),
        ),
        cloud_event("meterline.plan.changed.v1", "e-2", json!({"tenantId": tenant, "planCode": "pro"})),
        cloud_event(
            "meterline.documents.upserted.v1",
            "e-3",
            json!({"tenantId": tenant, "documents": [
                {"id": doc_a, "title": "Terms", "docType": "contract", "status": "published", "tags": ["Legal", "legal", "v2"]},
                {"id": doc_b, "title": "Memo", "docType": "memo", "status": "draft", "effectiveDate": "2026-12-01"}
            ]}),
        ),
        cloud_event(
            "meterline.usage.reported.v1",
            "e-4",
            json!({"tenantId": tenant, "meter": "ocr.pages", "units": 7, "occurredAt": occurred}),
        ),
        cloud_event("meterline.tenant.suspended.v1", "e-5", json!({"tenantId": tenant, "reason": "unpaid invoice"})),
    ];
    for event in &events {
        let body = event.to_string();
        let first = deliver(&host, &body, 1).await;
        assert!(first.contains(&format!("applied {} id=", event["type"].as_str().unwrap())), "{first}");
        for delivery in [2, 3] {
            let again = deliver(&host, &body, delivery).await;
            assert!(again.contains(&format!("delivery {delivery}: duplicate")), "{again}");
        }
    }
    // A body whose top-level keys collide with Metadata keys (the host overwrites MessageId and DeliveryCount with
    // them): deduplication uses the CloudEvent's own (source, id), so three copies still apply once.
    let mut colliding = cloud_event(
        "meterline.usage.reported.v1",
        "e-6",
        json!({"tenantId": tenant, "meter": "ocr.pages", "units": 3, "occurredAt": occurred}),
    );
    colliding["MessageId"] = json!("forged");
    colliding["DeliveryCount"] = json!(99);
    let logs: Vec<String> = futures_util::future::join_all((1..=3).map(|n| {
        let body = colliding.to_string();
        let host = &host;
        async move { deliver(host, &body, n).await }
    }))
    .await;
    assert_eq!(logs.iter().filter(|l| l.contains("applied meterline.usage.reported.v1")).count(), 1, "{logs:?}");
    assert_eq!(logs.iter().filter(|l| l.contains("duplicate")).count(), 2, "{logs:?}");

    let stored = store.get_tenant(tenant).await.unwrap().expect("the tenant exists");
    assert_eq!((stored.name.as_str(), stored.plan_code.as_str()), ("Acme", "pro"));
    assert_eq!(stored.status, TenantStatus::Suspended);
    assert_eq!(stored.version, 3, "created, plan changed, suspended: one version each");
    let terms = store.get_document(tenant, doc_a).await.unwrap().expect("document a");
    assert_eq!(terms.tags, vec!["legal", "v2"], "tags are lower-cased and unique");
    assert_eq!(terms.created_by, "integration:/crm/acme");
    assert!(store.get_document(tenant, doc_b).await.unwrap().is_some());
    assert_eq!(store.count_usage_events(tenant).await.unwrap(), 2);
    let utc_months = meterline::metering::period::BillingCalendar::default();
    let period = utc_months.period_containing(occurred).start;
    assert_eq!(store.quota_usage(tenant, period).await.unwrap().unwrap().units_used, 10);
    let outbox = store.list_outbox(0, 100).await.unwrap();
    assert_eq!(
        outbox.iter().map(|r| r.message.event_type.as_str()).collect::<Vec<_>>(),
        vec!["meterline.tenant.suspended.v1"],
        "the suspension is announced once"
    );
}

fn handler_cli(root: &Path, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(args)
        .current_dir(root)
        .env_remove("METERLINE_STORE")
        .env_remove("METERLINE_SQLITE_PATH")
        .env("METERLINE_LOG_FORMAT", "text")
        .output()
        .expect("handler runs")
}

#[tokio::test]
async fn poison_messages_are_quarantined_completed_and_replayed_by_the_cli() {
    let host = HostEmulator::start().await;
    let store = store_of(&host).await;
    create_plans(&store).await;
    let ghost = Uuid::new_v4();
    let cases = [
        ("hello".to_owned(), "not JSON"),
        (cloud_event("meterline.nope.v1", "p-1", json!({})).to_string(), "unknown event type"),
        (
            cloud_event("meterline.plan.changed.v1", "p-2", json!({"tenantId": ghost, "planCode": ""})).to_string(),
            "data.planCode: must be 1 to 64 characters",
        ),
        (cloud_event("meterline.tenant.suspended.v1", "p-3", json!({"tenantId": ghost})).to_string(), "unknown tenant"),
    ];
    for (body, reason) in &cases {
        let log = deliver(&host, body, 1).await;
        assert!(log.contains("quarantined as") && log.contains(reason), "{reason}: {log}");
    }
    // Counted in a metric (logged as the consumer finishes; the line may arrive after the answer).
    host.wait_for_output("\"metric\":\"integration.quarantined\"", std::time::Duration::from_secs(10)).await;

    // A fifth poison message, delivered twice (its first completion was lost): one row, two deliveries.
    let mut again = ServiceBusDelivery::new("hello");
    again.delivery_count = 2;
    let first = host.invoke_service_bus("IntegrationEvents", &again).await.logs().join("\n");
    let second = {
        again.delivery_count = 3;
        host.invoke_service_bus("IntegrationEvents", &again).await.logs().join("\n")
    };
    let quarantined_as = |log: &str| log.split("quarantined as ").nth(1).unwrap().split(':').next().unwrap().to_owned();
    assert_eq!(quarantined_as(&first), quarantined_as(&second), "{first}\n{second}");

    let list = handler_cli(&host.app_root, &["quarantine", "list"]);
    assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
    let listed: Vec<Value> =
        String::from_utf8(list.stdout).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(listed.len(), 5, "five poison messages, one of them delivered twice");
    let redelivered = listed.iter().find(|m| m["id"] == quarantined_as(&first).as_str()).unwrap();
    assert_eq!((redelivered["deliveries"].as_i64(), redelivered["deliveryCount"].as_i64()), (Some(2), Some(3)));
    let unknown_tenant = listed.iter().find(|m| m["reason"].as_str().unwrap().contains("unknown tenant")).unwrap();
    let not_json = listed.iter().find(|m| m["reason"].as_str().unwrap().contains("not JSON")).unwrap();
    assert_eq!(not_json["bodyBytes"], 5);

    // Still poison: the replay fails with the reason and the message stays unreplayed.
    let id = unknown_tenant["id"].as_str().unwrap();
    let failed = handler_cli(&host.app_root, &["quarantine", "replay", id]);
    assert_eq!(failed.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&failed.stderr).contains("unknown tenant"));

    // The cause fixed (the tenant now exists), the replay applies the stored body and marks it replayed.
    let upsert = cloud_event(
        "meterline.tenant.upserted.v1",
        "p-4",
        json!({"tenantId": ghost, "name": "Late", "planCode": "basic"}),
    );
    assert!(deliver(&host, &upsert.to_string(), 1).await.contains("applied"));
    let replayed = handler_cli(&host.app_root, &["quarantine", "replay", id]);
    assert!(replayed.status.success(), "{}", String::from_utf8_lossy(&replayed.stderr));
    assert!(String::from_utf8_lossy(&replayed.stdout).contains("applied meterline.tenant.suspended.v1 id=p-3"));
    assert_eq!(store.get_tenant(ghost).await.unwrap().unwrap().status, TenantStatus::Suspended);
    let marked = store.get_quarantined(id.parse().unwrap()).await.unwrap().unwrap();
    assert!(marked.replayed_at.is_some());
    // The original message, redelivered now, is a duplicate of the replay.
    assert!(deliver(&host, &cases[3].0, 2).await.contains("duplicate"));
}

#[tokio::test]
async fn a_message_arriving_while_the_store_is_down_is_abandoned_then_applied_on_redelivery() {
    let host = HostEmulator::start().await;
    let store = store_of(&host).await;
    create_plans(&store).await;
    let tenant = Uuid::new_v4();
    let body = cloud_event(
        "meterline.tenant.upserted.v1",
        "d-1",
        json!({"tenantId": tenant, "name": "Down", "planCode": "basic"}),
    )
    .to_string();
    // Another process holds the database's write lock for longer than a write may wait to start (the writer's
    // wait bound, 0.5 s): the write is shed, never run.
    let blocker = rusqlite::Connection::open(host.app_root.join("data/meterline.db")).unwrap();
    blocker.execute_batch("BEGIN EXCLUSIVE").unwrap();
    let mut message = ServiceBusDelivery::new(&body);
    message.delivery_count = 1;
    let response = host.invoke_service_bus("IntegrationEvents", &message).await;
    assert_eq!(response.status, 503, "non-2xx: the host abandons the message");
    assert!(response.result.is_none());
    assert_eq!(response.problem()["code"], "Overloaded");
    blocker.execute_batch("ROLLBACK").unwrap();
    let line = host.wait_for_output("transient failure", std::time::Duration::from_secs(10)).await;
    assert!(line.contains("\"delivery_count\":1"), "the delivery count is logged: {line}");

    message.delivery_count = 2;
    let redelivered = host.invoke_service_bus("IntegrationEvents", &message).await;
    assert!(
        redelivered.logs()[0].contains("delivery 2: applied meterline.tenant.upserted.v1"),
        "{:?}",
        redelivered.logs()
    );
    assert_eq!(store.get_tenant(tenant).await.unwrap().unwrap().name, "Down");
}

/// Reported usage is metered only if a statement can bill it: `occurredAt` is RFC 3339 (a four-digit year) and lies
/// from the start of the tenant's billing period 25 before the current one (the oldest a statement still adjusts)
/// to 5 minutes after the consumer's clock. Anything else is quarantined with the reason and meters nothing.
#[actix_web::test]
async fn occurred_at_is_checked_against_the_billable_window_of_the_consumers_clock() {
    let app = TestApp::start().await;
    let store = app.store.clone();
    store.create_plan(&stores::plan("basic", 100, app.clock.now()), None).await.unwrap();
    let tenant = Uuid::new_v4();
    let upsert = cloud_event(
        "meterline.tenant.upserted.v1",
        "t-1",
        json!({"tenantId": tenant, "name": "Acme", "planCode": "basic"}),
    );
    app.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&upsert.to_string())).await.accepted();
    let now = app.clock.now();
    assert_eq!(now.to_rfc3339(), "2026-03-02T09:17:23+00:00", "the window below is 2024-02-01 to now + 5 min");
    let deliver = |id: &str, occurred_at: &str| {
        let usage = cloud_event(
            "meterline.usage.reported.v1",
            id,
            json!({"tenantId": tenant, "meter": "ocr.pages", "units": 1, "occurredAt": occurred_at}),
        );
        let app = &app;
        async move {
            app.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&usage.to_string()))
                .await
                .logs()
                .join("\n")
        }
    };
    let refused = [
        ("-0001-01-01T00:00:00Z", "has a signed year"),
        ("+10000-01-01T00:00:00Z", "has a signed year"),
        ("0000-01-01T00:00:00Z", "is before 2024-02-01T00:00:00Z"),
        ("0001-01-01T00:00:00Z", "is before 2024-02-01T00:00:00Z"),
        ("1970-01-01T00:00:00Z", "is before 2024-02-01T00:00:00Z"),
        ("2024-01-31T23:59:59.999999Z", "is before 2024-02-01T00:00:00Z, the start of the tenant's billing period 25"),
        ("2026-03-02T09:22:23.000001Z", "is more than 5 minutes after this consumer's clock (2026-03-02T09:17:23Z)"),
        ("9999-12-31T23:59:59Z", "is more than 5 minutes after"),
    ];
    for (n, (occurred_at, why)) in refused.iter().enumerate() {
        let log = deliver(&format!("bad-{n}"), occurred_at).await;
        assert!(
            log.contains("quarantined as") && log.contains("data.occurredAt") && log.contains(why),
            "{occurred_at}: {log}"
        );
    }
    for (n, occurred_at) in ["2024-02-01T00:00:00Z", "2026-03-02T09:22:23Z"].iter().enumerate() {
        let log = deliver(&format!("ok-{n}"), occurred_at).await;
        assert!(log.contains("applied meterline.usage.reported.v1"), "{occurred_at}: {log}");
    }
    assert_eq!(store.count_usage_events(tenant).await.unwrap(), 2, "only the two inside the window are metered");
    assert_eq!(store.list_quarantine(100).await.unwrap().len(), refused.len());
    // A body that begins with a byte order mark is applied like any other.
    let bom = format!("\u{feff}{}", cloud_event("meterline.tenant.suspended.v1", "s-1", json!({"tenantId": tenant})));
    let log = app.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&bom)).await.logs().join("\n");
    assert!(log.contains("applied meterline.tenant.suspended.v1"), "{log}");
}
