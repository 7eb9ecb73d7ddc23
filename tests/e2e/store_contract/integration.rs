//! The storage contract of the integration tables, on every store: inbox plus effect in one transaction,
//! quarantine, outbox rows written with the state change that causes them, and the publisher's reads and marks.

use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use meterline::store::*;
use uuid::Uuid;

use crate::support::stores::{self, TestStore, for_each_store};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 10, 12, 0, 0).unwrap()
}

fn plan(code: &str, quota: i64) -> Plan {
    stores::plan(code, quota, t0())
}

fn tenant(n: u128) -> Tenant {
    Tenant {
        id: Uuid::from_u128(0x7000 + n),
        entra_tenant_id: None,
        name: format!("Tenant {n}"),
        status: TenantStatus::Active,
        plan_code: "basic".into(),
        created_at: t0(),
        updated_at: t0(),
        version: 1,
        billing: Default::default(),
    }
}

async fn ready(t: &TestStore) -> Arc<dyn Store> {
    t.store.migrate().await.expect("migrate");
    t.store.create_plan(&plan("basic", 100), None).await.unwrap();
    t.store.create_plan(&plan("pro", 1000), None).await.unwrap();
    t.store.clone()
}

fn inbox(source: &str, id: &str, event_type: &str) -> InboxEntry {
    InboxEntry { source: source.into(), event_id: id.into(), event_type: event_type.into(), processed_at: t0() }
}

async fn all_outbox(store: &Arc<dyn Store>) -> Vec<OutboxRow> {
    store.list_outbox(0, 1000).await.unwrap()
}

#[tokio::test]
async fn an_integration_message_applies_once_whatever_the_deliveries() {
    for_each_store("an_integration_message_applies_once_whatever_the_deliveries", |t| async move {
        let store = ready(&t).await;
        let id = Uuid::from_u128(0x7001);
        let upsert = IntegrationEffect::UpsertTenant {
            tenant_id: id,
            name: "Acme".into(),
            plan_code: "basic".into(),
            entra_tenant_id: None,
        };
        let entry = inbox("/crm", "evt-1", "meterline.tenant.upserted.v1");
        assert_eq!(store.apply_integration_event(&entry, &upsert).await.unwrap(), ApplyOutcome::Applied, "{}", t.name);
        assert_eq!(store.apply_integration_event(&entry, &upsert).await.unwrap(), ApplyOutcome::Duplicate);
        let created = store.get_tenant(id).await.unwrap().expect("created");
        assert_eq!((created.name.as_str(), created.version, created.status), ("Acme", 1, TenantStatus::Active));

        // The same id from another source is another message; an update bumps the version once.
        let rename = IntegrationEffect::UpsertTenant {
            tenant_id: id,
            name: "Acme Corp".into(),
            plan_code: "pro".into(),
            entra_tenant_id: None,
        };
        let other = inbox("/billing", "evt-1", "meterline.tenant.upserted.v1");
        assert_eq!(store.apply_integration_event(&other, &rename).await.unwrap(), ApplyOutcome::Applied);
        let renamed = store.get_tenant(id).await.unwrap().unwrap();
        assert_eq!((renamed.name.as_str(), renamed.plan_code.as_str(), renamed.version), ("Acme Corp", "pro", 2));

        // Two processes receiving the same message at once: exactly one applies it.
        let second = t.second_handle().await;
        let usage = usage_effect(id, "evt-usage", 5);
        let entry = inbox("/meter", "evt-usage", "meterline.usage.reported.v1");
        let (a, b) =
            tokio::join!(store.apply_integration_event(&entry, &usage), second.apply_integration_event(&entry, &usage));
        let mut outcomes = vec![a.unwrap(), b.unwrap()];
        outcomes.sort_by_key(|o| format!("{o:?}"));
        assert_eq!(outcomes, vec![ApplyOutcome::Applied, ApplyOutcome::Duplicate], "{}", t.name);
        assert_eq!(store.count_usage_events(id).await.unwrap(), 1);
        assert_eq!(store.quota_usage(id, march()).await.unwrap().unwrap().units_used, 5);
    })
    .await;
}

fn march() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 3, 1).unwrap()
}

fn usage_effect(tenant_id: Uuid, id: &str, units: i64) -> IntegrationEffect {
    IntegrationEffect::RecordUsage {
        event: UsageEvent {
            event_id: deterministic_id("meterline.usage.reported.v1", &["/meter", id]),
            request_id: id.into(),
            tenant_id: Some(tenant_id),
            client_id: None,
            principal_id: None,
            operation_id: "ocr.pages".into(),
            method: "EVENT".into(),
            route_template: "integration:meterline.usage.reported.v1".into(),
            status: 200,
            units,
            billable: true,
            overage_units: 0,
            latency_micros: 0,
            request_bytes: 0,
            response_bytes: 0,
            occurred_at: t0(),
            recorded_at: t0(),
            lease_id: None,
            refusal: None,
        },
        period_start: march(),
        period_end: NaiveDate::from_ymd_opt(2026, 4, 1).unwrap(),
    }
}

#[tokio::test]
async fn a_message_that_cannot_apply_writes_nothing_not_even_its_inbox_row() {
    for_each_store("a_message_that_cannot_apply_writes_nothing_not_even_its_inbox_row", |t| async move {
        let store = ready(&t).await;
        let ghost = Uuid::from_u128(0xdead);
        let suspend = IntegrationEffect::SetTenantStatus { tenant_id: ghost, status: TenantStatus::Suspended };
        let entry = inbox("/crm", "evt-s", "meterline.tenant.suspended.v1");
        let outcome = store.apply_integration_event(&entry, &suspend).await.unwrap();
        assert!(
            matches!(&outcome, ApplyOutcome::Rejected(r) if r.contains("unknown tenant")),
            "{}: {outcome:?}",
            t.name
        );
        let plan = IntegrationEffect::UpsertTenant {
            tenant_id: ghost,
            name: "Ghost".into(),
            plan_code: "no-such-plan".into(),
            entra_tenant_id: None,
        };
        let refused = store.apply_integration_event(&inbox("/crm", "evt-p", "t"), &plan).await.unwrap();
        assert_eq!(refused, ApplyOutcome::Rejected("unknown plan \"no-such-plan\"".into()), "{}", t.name);
        assert!(store.get_tenant(ghost).await.unwrap().is_none());

        // Once the cause is fixed, the same message applies: the rejection left no inbox row behind.
        let mut fixed = tenant(9);
        fixed.id = ghost;
        store.create_tenant(&fixed, None).await.unwrap();
        assert_eq!(store.apply_integration_event(&entry, &suspend).await.unwrap(), ApplyOutcome::Applied);
        assert_eq!(store.get_tenant(ghost).await.unwrap().unwrap().status, TenantStatus::Suspended);

        // Documents are all or nothing: one of another tenant refuses the whole batch.
        let other = tenant(2);
        store.create_tenant(&other, None).await.unwrap();
        let doc = |id: u128, title: &str| DocumentUpsert {
            id: Uuid::from_u128(id),
            title: title.into(),
            summary: None,
            body: Some("text".into()),
            doc_type: "memo".into(),
            jurisdiction: None,
            status: DocumentStatus::Published,
            effective_date: NaiveDate::from_ymd_opt(2026, 1, 1),
            tags: vec!["a".into(), "b".into()],
        };
        let first = IntegrationEffect::UpsertDocuments {
            tenant_id: other.id,
            actor: "integration:/cms".into(),
            documents: vec![doc(0xd1, "One")],
        };
        assert_eq!(
            store.apply_integration_event(&inbox("/cms", "d-1", "t"), &first).await.unwrap(),
            ApplyOutcome::Applied
        );
        let batch = IntegrationEffect::UpsertDocuments {
            tenant_id: ghost,
            actor: "integration:/cms".into(),
            documents: vec![doc(0xd2, "Two"), doc(0xd1, "Stolen")],
        };
        let outcome = store.apply_integration_event(&inbox("/cms", "d-2", "t"), &batch).await.unwrap();
        assert!(matches!(&outcome, ApplyOutcome::Rejected(r) if r.contains("another tenant")), "{outcome:?}");
        assert!(store.get_document(ghost, Uuid::from_u128(0xd2)).await.unwrap().is_none(), "nothing of the batch");
        let kept = store.get_document(other.id, Uuid::from_u128(0xd1)).await.unwrap().unwrap();
        assert_eq!((kept.title.as_str(), kept.tags.clone()), ("One", vec!["a".to_owned(), "b".to_owned()]));

        // A replacement of the tenant's own document bumps its version and replaces its tags.
        let mut replacement = doc(0xd1, "One, revised");
        replacement.tags = vec!["c".into()];
        let replace = IntegrationEffect::UpsertDocuments {
            tenant_id: other.id,
            actor: "integration:/cms".into(),
            documents: vec![replacement],
        };
        assert_eq!(
            store.apply_integration_event(&inbox("/cms", "d-3", "t"), &replace).await.unwrap(),
            ApplyOutcome::Applied
        );
        let revised = store.get_document(other.id, Uuid::from_u128(0xd1)).await.unwrap().unwrap();
        assert_eq!((revised.title.as_str(), revised.version, revised.tags), ("One, revised", 2, vec!["c".to_owned()]));
    })
    .await;
}

#[tokio::test]
async fn tenant_status_changes_write_exactly_one_outbox_event_each() {
    for_each_store("tenant_status_changes_write_exactly_one_outbox_event_each", |t| async move {
        let store = ready(&t).await;
        let acme = tenant(1);
        store.create_tenant(&acme, None).await.unwrap();
        let suspended = store.set_tenant_status(acme.id, TenantStatus::Suspended, 1, t0()).await.unwrap();
        assert!(matches!(suspended, Update::Updated(_)));
        // A stale version changes nothing and announces nothing.
        let stale = store.set_tenant_status(acme.id, TenantStatus::Active, 1, t0()).await.unwrap();
        assert_eq!(stale, Update::VersionMismatch { current_version: 2 });
        let changes = TenantChanges { status: Some(TenantStatus::Active), ..TenantChanges::default() };
        assert!(matches!(store.update_tenant(acme.id, &changes, 2, t0(), None).await.unwrap(), Update::Updated(_)));
        // Renaming is not a status change.
        let rename = TenantChanges { name: Some("Acme 2".into()), ..TenantChanges::default() };
        store.update_tenant(acme.id, &rename, 3, t0(), None).await.unwrap();

        let rows = all_outbox(&store).await;
        let types: Vec<_> = rows.iter().map(|r| r.message.event_type.as_str()).collect();
        assert_eq!(types, vec!["meterline.tenant.suspended.v1", "meterline.tenant.reactivated.v1"], "{}", t.name);
        let data: serde_json::Value = serde_json::from_str(&rows[0].message.payload).unwrap();
        assert_eq!(data["tenantId"], acme.id.to_string());
        assert_eq!(data["status"], "suspended");
        assert_eq!(data["version"], 2);
        assert_eq!(rows[0].message.subject.as_deref(), Some(format!("tenants/{}", acme.id).as_str()));
        assert!(rows.iter().all(|r| r.sent_at.is_none() && r.attempts == 0));
    })
    .await;
}

/// CloudEvents ids and sources are case-sensitive strings: inbox keys that differ only in case (or an accent, or a
/// full-width letter) are different events on every store. Under SQL Server's default collation they were one key,
/// and the second event was completed as a duplicate without being applied (migration 16 makes the key binary).
#[tokio::test]
async fn inbox_keys_that_differ_only_in_case_are_different_events() {
    for_each_store("inbox_keys_that_differ_only_in_case_are_different_events", |t| async move {
        let store = ready(&t).await;
        let acme = tenant(1);
        store.create_tenant(&acme, None).await.unwrap();
        let ids = ["Order-1", "order-1", "ORDER-1", "ordér-1", "ｏrder-1"];
        for id in ids {
            let entry = inbox("/meter", id, "meterline.usage.reported.v1");
            let outcome = store.apply_integration_event(&entry, &usage_effect(acme.id, id, 1)).await.unwrap();
            assert_eq!(outcome, ApplyOutcome::Applied, "{}: {id} is an event of its own", t.name);
        }
        for id in ids {
            let entry = inbox("/meter", id, "meterline.usage.reported.v1");
            let outcome = store.apply_integration_event(&entry, &usage_effect(acme.id, id, 1)).await.unwrap();
            assert_eq!(outcome, ApplyOutcome::Duplicate, "{}: {id} again", t.name);
        }
        assert_eq!(store.count_usage_events(acme.id).await.unwrap(), 5, "{}", t.name);
        assert_eq!(store.quota_usage(acme.id, march()).await.unwrap().unwrap().units_used, 5);

        for (n, source) in ["/crm/acme", "/crm/Acme", "/CRM/ACME"].into_iter().enumerate() {
            let rename = IntegrationEffect::UpsertTenant {
                tenant_id: acme.id,
                name: format!("Acme {n}"),
                plan_code: "basic".into(),
                entra_tenant_id: None,
            };
            let entry = inbox(source, "evt-1", "meterline.tenant.upserted.v1");
            let outcome = store.apply_integration_event(&entry, &rename).await.unwrap();
            assert_eq!(outcome, ApplyOutcome::Applied, "{}: the source {source} is a source of its own", t.name);
        }
        assert_eq!(store.get_tenant(acme.id).await.unwrap().unwrap().name, "Acme 2", "{}", t.name);
    })
    .await;
}

#[tokio::test]
async fn external_usage_counts_overage_and_announces_each_threshold_once() {
    for_each_store("external_usage_counts_overage_and_announces_each_threshold_once", |t| async move {
        let store = ready(&t).await;
        let acme = tenant(1);
        store.create_tenant(&acme, None).await.unwrap();
        // Quota 100 (plan basic, block): external usage is recorded anyway, beyond the quota as overage.
        for (n, units) in [(1, 50), (2, 29), (3, 1), (4, 15), (5, 30)] {
            let id = format!("u-{n}");
            let entry = inbox("/meter", &id, "meterline.usage.reported.v1");
            assert_eq!(
                store.apply_integration_event(&entry, &usage_effect(acme.id, &id, units)).await.unwrap(),
                ApplyOutcome::Applied
            );
        }
        let quota = store.quota_usage(acme.id, march()).await.unwrap().unwrap();
        assert_eq!((quota.units_used, quota.overage_units, quota.quota_units), (125, 25, 100), "{}", t.name);
        assert_eq!(store.count_usage_events(acme.id).await.unwrap(), 5);
        let thresholds: Vec<(i64, i64)> = all_outbox(&store)
            .await
            .iter()
            .filter(|r| r.message.event_type == "meterline.quota.threshold-crossed.v1")
            .map(|r| {
                let d: serde_json::Value = serde_json::from_str(&r.message.payload).unwrap();
                assert_eq!(d["tenantId"], acme.id.to_string());
                assert_eq!(d["periodStart"], "2026-03-01");
                assert_eq!(d["quotaUnits"], 100);
                (d["threshold"].as_i64().unwrap(), d["unitsUsed"].as_i64().unwrap())
            })
            .collect();
        assert_eq!(thresholds, vec![(80, 80), (100, 125)], "{}: crossed by the 3rd and the 5th report", t.name);
    })
    .await;
}

#[tokio::test]
async fn the_publisher_reads_due_rows_and_marks_them_sent_or_failed() {
    for_each_store("the_publisher_reads_due_rows_and_marks_them_sent_or_failed", |t| async move {
        let store = ready(&t).await;
        for n in 1..=3 {
            let acme = tenant(n);
            store.create_tenant(&acme, None).await.unwrap();
            store
                .set_tenant_status(acme.id, TenantStatus::Suspended, 1, t0() + Duration::seconds(n as i64))
                .await
                .unwrap();
        }
        let due = store.pending_outbox(t0() + Duration::minutes(1), 2).await.unwrap();
        assert_eq!(due.len(), 2, "{}: bounded by the limit", t.name);
        let (first, second) = (due[0].message.id, due[1].message.id);
        store.mark_outbox_sent(first, t0() + Duration::minutes(1)).await.unwrap();
        store.mark_outbox_failed(second, "Service Bus answered 503", t0() + Duration::minutes(5)).await.unwrap();
        let due = store.pending_outbox(t0() + Duration::minutes(2), 10).await.unwrap();
        assert_eq!(due.len(), 1, "the sent row is gone and the failed one waits for its backoff");
        let later = store.pending_outbox(t0() + Duration::minutes(5), 10).await.unwrap();
        assert_eq!(later.len(), 2);
        assert_eq!(later[1].message.id, second, "ordered by available_at");
        assert_eq!((later[1].attempts, later[1].last_error.as_deref()), (1, Some("Service Bus answered 503")));
        // Marking twice keeps the first time.
        store.mark_outbox_sent(first, t0() + Duration::minutes(9)).await.unwrap();
        let sent = all_outbox(&store).await.into_iter().find(|r| r.message.id == first).unwrap();
        assert_eq!(sent.sent_at, Some(t0() + Duration::minutes(1)));
    })
    .await;
}

#[tokio::test]
async fn quarantined_messages_are_listed_newest_first_and_marked_replayed() {
    for_each_store("quarantined_messages_are_listed_newest_first_and_marked_replayed", |t| async move {
        let store = ready(&t).await;
        for n in 0..3_i64 {
            let m = QuarantinedMessage {
                id: Uuid::from_u128(0x9900 + n as u128),
                received_at: t0() + Duration::seconds(n),
                message_id: Some(format!("m-{n}")),
                delivery_count: Some(1),
                content_type: None,
                reason: format!("reason {n}"),
                raw_body: "{\"é\": \"ünïcode\"}".into(),
                replayed_at: None,
                identity: Some(QuarantinedMessage::identity_of(Some(&format!("m-{n}")), "{}")),
                deliveries: 1,
                last_received_at: None,
            };
            assert_eq!(store.quarantine_message(&m).await.unwrap(), m.id);
        }
        let listed = store.list_quarantine(2).await.unwrap();
        assert_eq!(listed.iter().map(|m| m.reason.as_str()).collect::<Vec<_>>(), vec!["reason 2", "reason 1"]);
        assert_eq!(listed[0].raw_body, "{\"é\": \"ünïcode\"}", "{}: the raw body round-trips", t.name);
        let id = listed[1].id;
        assert!(store.mark_quarantine_replayed(id, t0() + Duration::hours(1)).await.unwrap());
        assert_eq!(store.get_quarantined(id).await.unwrap().unwrap().replayed_at, Some(t0() + Duration::hours(1)));
        assert!(!store.mark_quarantine_replayed(Uuid::nil(), t0()).await.unwrap());
    })
    .await;
}

#[tokio::test]
async fn a_failed_outbox_insert_rolls_the_status_change_back() {
    // Failure injection (SQLite only: it needs a trigger on the store's own file): the outbox write fails inside
    // the status change's transaction, and the status must not change without its event.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("inject.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    store.migrate().await.unwrap();
    store.create_plan(&plan("basic", 100), None).await.unwrap();
    let acme = tenant(1);
    store.create_tenant(&acme, None).await.unwrap();
    let raw = rusqlite::Connection::open(&path).unwrap();
    raw.execute_batch(
        "CREATE TRIGGER fail_outbox BEFORE INSERT ON outbox_messages BEGIN SELECT RAISE(ABORT, 'injected'); END;",
    )
    .unwrap();
    let err = store.set_tenant_status(acme.id, TenantStatus::Suspended, 1, t0()).await.unwrap_err();
    assert!(format!("{err:?}").contains("injected"), "{err:?}");
    let unchanged = store.get_tenant(acme.id).await.unwrap().unwrap();
    assert_eq!((unchanged.status, unchanged.version), (TenantStatus::Active, 1), "no state change without its event");
    raw.execute_batch("DROP TRIGGER fail_outbox").unwrap();
    store.set_tenant_status(acme.id, TenantStatus::Suspended, 1, t0()).await.unwrap();
    assert_eq!(all_outbox(&store).await.len(), 1);
}

#[tokio::test]
async fn a_redelivered_poison_message_is_quarantined_once_and_its_deliveries_counted() {
    for_each_store("a_redelivered_poison_message_is_quarantined_once_and_its_deliveries_counted", |t| async move {
        let store = ready(&t).await;
        let delivery = |n: u128, message_id: Option<&str>, body: &str, count: i32| QuarantinedMessage {
            id: Uuid::from_u128(0xab00 + n),
            received_at: t0() + Duration::seconds(n as i64),
            message_id: message_id.map(str::to_owned),
            delivery_count: Some(count),
            content_type: None,
            reason: "not JSON".into(),
            raw_body: body.into(),
            replayed_at: None,
            identity: Some(QuarantinedMessage::identity_of(message_id, body)),
            deliveries: 1,
            last_received_at: None,
        };
        let first = store.quarantine_message(&delivery(1, Some("m-1"), "hello", 1)).await.unwrap();
        assert_eq!(first, Uuid::from_u128(0xab01));
        // The same message delivered again (a lost completion): the same row, one more delivery.
        assert_eq!(store.quarantine_message(&delivery(2, Some("m-1"), "hello", 3)).await.unwrap(), first);
        assert_eq!(store.quarantine_message(&delivery(3, Some("m-1"), "hello", 2)).await.unwrap(), first);
        // Another message with the same body, and an old row without identity: rows of their own.
        let other = store.quarantine_message(&delivery(4, Some("m-2"), "hello", 1)).await.unwrap();
        assert_ne!(other, first);
        let legacy = QuarantinedMessage { identity: None, ..delivery(5, Some("m-1"), "hello", 1) };
        assert_eq!(store.quarantine_message(&legacy).await.unwrap(), legacy.id);
        let held = store.get_quarantined(first).await.unwrap().unwrap();
        assert_eq!((held.deliveries, held.delivery_count), (3, Some(3)), "{}: counted, highest count kept", t.name);
        assert_eq!(
            (held.received_at, held.last_received_at),
            (t0() + Duration::seconds(1), Some(t0() + Duration::seconds(3)))
        );
        assert_eq!(store.list_quarantine(10).await.unwrap().len(), 3);
    })
    .await;
}
