//! The storage contract, run against every store: SQLite always, SQL Server when `MSSQL_TEST_CONNECTION_STRING` is set.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use meterline::store::*;
use uuid::Uuid;

use crate::support::stores::{TestStore, for_each_store};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 31, 23, 59, 0).unwrap()
}

fn plan(code: &str, quota: i64, policy: OveragePolicy) -> Plan {
    Plan {
        code: code.into(),
        name: format!("Plan {code}"),
        requests_per_minute: 60,
        burst: 10,
        monthly_quota_units: quota,
        overage_policy: policy,
        currency: "EUR".into(),
        base_price_micros: 49_000_000,
        overage_unit_price_micros: 1_000,
        created_at: t0(),
        updated_at: t0(),
        version: 1,
    }
}

fn tenant(n: u128, plan_code: &str, created_at: DateTime<Utc>) -> Tenant {
    Tenant {
        id: Uuid::from_u128(0x1000 + n),
        entra_tenant_id: Some(Uuid::from_u128(0x9000 + n)),
        name: format!("Tenant {n}"),
        status: TenantStatus::Active,
        plan_code: plan_code.into(),
        created_at,
        updated_at: created_at,
        version: 1,
    }
}

async fn migrated(store: &TestStore) -> Arc<dyn Store> {
    store.store.migrate().await.expect("migrate");
    store.store.clone()
}

#[tokio::test]
async fn migrations_apply_once_and_are_recorded() {
    for_each_store("migrations_apply_once_and_are_recorded", |t| async move {
        let first = t.store.migrate().await.expect("first migrate");
        assert_eq!(first.applied, vec![1, 2], "{}", t.name);
        let second = t.store.migrate().await.expect("second migrate");
        assert!(second.applied.is_empty());
        assert_eq!(second.already_applied, vec![1, 2]);
        let history = t.store.applied_migrations().await.unwrap();
        assert_eq!(history.iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 2]);
        assert!(history.iter().all(|m| m.checksum.len() == 64));
        t.store.ping().await.expect("ping");
    })
    .await;
}

#[tokio::test]
async fn two_handles_migrating_at_once_apply_each_migration_once() {
    for_each_store("two_handles_migrating_at_once_apply_each_migration_once", |t| async move {
        let other = t.second_handle().await;
        let (a, b) = tokio::join!(t.store.migrate(), other.migrate());
        let mut applied = [a.unwrap().applied, b.unwrap().applied].concat();
        applied.sort();
        assert_eq!(applied, vec![1, 2], "{}: each migration applied by exactly one handle", t.name);
        assert_eq!(other.applied_migrations().await.unwrap().len(), 2);
    })
    .await;
}

#[tokio::test]
async fn job_runs_are_listed_newest_first() {
    for_each_store("job_runs_are_listed_newest_first", |t| async move {
        let store = migrated(&t).await;
        for (i, past_due) in [false, true, false].into_iter().enumerate() {
            let run = JobRun {
                id: Uuid::from_u128(i as u128 + 1),
                job: "usage-rollup".into(),
                trigger: "timer".into(),
                is_past_due: past_due,
                started_at: t0() + Duration::minutes(5 * i as i64),
                finished_at: t0() + Duration::minutes(5 * i as i64) + Duration::microseconds(1_500_123),
                outcome: "succeeded".into(),
                detail: format!("run {i}"),
            };
            store.record_job_run(&run).await.unwrap();
        }
        let runs = store.recent_job_runs("usage-rollup", 2).await.unwrap();
        assert_eq!(runs.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>(), ["run 2", "run 1"]);
        assert!(runs[1].is_past_due);
        assert_eq!(
            runs[0].finished_at - runs[0].started_at,
            Duration::microseconds(1_500_123),
            "microseconds round-trip"
        );
        assert!(store.recent_job_runs("outbox-publish", 5).await.unwrap().is_empty());
        let duplicate = JobRun { detail: "again".into(), ..runs[0].clone() };
        assert!(matches!(store.record_job_run(&duplicate).await, Err(StoreError::Conflict(_))), "{}", t.name);
    })
    .await;
}

#[tokio::test]
async fn plans_and_tenants_round_trip_with_constraints() {
    for_each_store("plans_and_tenants_round_trip_with_constraints", |t| async move {
        let store = migrated(&t).await;
        let pro = plan("pro", 1_000, OveragePolicy::Allow);
        store.create_plan(&pro).await.unwrap();
        assert_eq!(store.get_plan("pro").await.unwrap(), Some(pro.clone()));
        assert_eq!(store.get_plan("none").await.unwrap(), None);
        assert!(matches!(store.create_plan(&pro).await, Err(StoreError::Conflict(_))));

        let acme = tenant(1, "pro", t0());
        store.create_tenant(&acme).await.unwrap();
        assert_eq!(store.get_tenant(acme.id).await.unwrap(), Some(acme.clone()));
        assert_eq!(store.get_tenant_by_entra_id(acme.entra_tenant_id.unwrap()).await.unwrap(), Some(acme.clone()));
        assert_eq!(store.get_tenant(Uuid::from_u128(7)).await.unwrap(), None);

        let same_directory = Tenant { id: Uuid::from_u128(2), ..acme.clone() };
        assert!(matches!(store.create_tenant(&same_directory).await, Err(StoreError::Conflict(_))), "tid is unique");
        let no_plan =
            Tenant { id: Uuid::from_u128(3), entra_tenant_id: None, plan_code: "ghost".into(), ..acme.clone() };
        assert!(matches!(store.create_tenant(&no_plan).await, Err(StoreError::ForeignKey(_))), "{}", t.name);
        let no_directory_a = Tenant { id: Uuid::from_u128(4), entra_tenant_id: None, ..acme.clone() };
        let no_directory_b = Tenant { id: Uuid::from_u128(5), entra_tenant_id: None, ..acme.clone() };
        store.create_tenant(&no_directory_a).await.unwrap();
        store.create_tenant(&no_directory_b).await.expect("many tenants may have no Entra directory");
    })
    .await;
}

#[tokio::test]
async fn tenant_updates_are_conditional_on_the_version() {
    for_each_store("tenant_updates_are_conditional_on_the_version", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block)).await.unwrap();
        let acme = tenant(1, "pro", t0());
        store.create_tenant(&acme).await.unwrap();
        let later = t0() + Duration::hours(1);
        let Update::Updated(suspended) =
            store.set_tenant_status(acme.id, TenantStatus::Suspended, 1, later).await.unwrap()
        else {
            panic!("{}: the update at the current version applies", t.name)
        };
        assert_eq!((suspended.status, suspended.version, suspended.updated_at), (TenantStatus::Suspended, 2, later));
        let stale = store.set_tenant_status(acme.id, TenantStatus::Active, 1, later).await.unwrap();
        assert_eq!(stale, Update::VersionMismatch { current_version: 2 });
        let missing = store.set_tenant_status(Uuid::from_u128(99), TenantStatus::Active, 1, later).await.unwrap();
        assert_eq!(missing, Update::NotFound);
    })
    .await;
}

#[tokio::test]
async fn keyset_pages_are_complete_and_stable_under_concurrent_inserts() {
    for_each_store("keyset_pages_are_complete_and_stable_under_concurrent_inserts", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block)).await.unwrap();
        // Ties on created_at on purpose: the id must break them.
        let before: Vec<Tenant> = (0..23).map(|n| tenant(n, "pro", t0() + Duration::seconds((n / 3) as i64))).collect();
        for tenant in &before {
            store.create_tenant(tenant).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor: Option<TenantCursor> = None;
        let mut pages = 0;
        loop {
            let page = store.list_tenants(cursor.as_ref(), 5).await.unwrap();
            assert!(page.items.len() <= 5);
            seen.extend(page.items.iter().map(|t| t.id));
            pages += 1;
            if pages == 2 {
                // Rows written while a client pages: before the cursor (hidden) and after it (shown once).
                store.create_tenant(&tenant(100, "pro", t0() - Duration::days(1))).await.unwrap();
                store.create_tenant(&tenant(101, "pro", t0() + Duration::days(1))).await.unwrap();
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{}: no row appears twice", t.name);
        assert!(before.iter().all(|t| unique.contains(&t.id)), "every row that existed is seen");
        assert!(unique.contains(&Uuid::from_u128(0x1000 + 101)) && !unique.contains(&Uuid::from_u128(0x1000 + 100)));
        assert_eq!(seen.len(), 24);
    })
    .await;
}

#[tokio::test]
async fn leases_admit_one_holder_until_they_expire() {
    for_each_store("leases_admit_one_holder_until_they_expire", |t| async move {
        let store = migrated(&t).await;
        let lease = |holder: &str, now: DateTime<Utc>| LeaseRequest {
            name: "usage-rollup".into(),
            holder: holder.into(),
            now,
            expires_at: now + Duration::seconds(60),
        };
        assert!(store.acquire_lease(&lease("a", t0())).await.unwrap());
        assert!(!store.acquire_lease(&lease("b", t0() + Duration::seconds(30))).await.unwrap(), "held by a");
        assert!(store.acquire_lease(&lease("a", t0() + Duration::seconds(30))).await.unwrap(), "a renews");
        assert!(!store.acquire_lease(&lease("b", t0() + Duration::seconds(80))).await.unwrap(), "the renewal counts");
        assert!(store.acquire_lease(&lease("b", t0() + Duration::seconds(91))).await.unwrap(), "expired: b takes over");
        assert!(!store.release_lease("usage-rollup", "a").await.unwrap(), "a no longer holds it");
        assert!(store.release_lease("usage-rollup", "b").await.unwrap());
        assert!(store.acquire_lease(&lease("c", t0() + Duration::seconds(92))).await.unwrap(), "released: free");

        // Many contenders at the same instant, through two handles: exactly one wins.
        let other = t.second_handle().await;
        let contenders = (0..20).map(|i| {
            let store = if i % 2 == 0 { store.clone() } else { other.clone() };
            let request = LeaseRequest {
                name: "race".into(),
                holder: format!("h{i}"),
                now: t0(),
                expires_at: t0() + Duration::seconds(60),
            };
            async move { store.acquire_lease(&request).await.unwrap() }
        });
        let won = futures_util::future::join_all(contenders).await.into_iter().filter(|w| *w).count();
        assert_eq!(won, 1, "{}", t.name);
    })
    .await;
}

async fn tenant_on_plan(store: &Arc<dyn Store>, quota: i64, policy: OveragePolicy) -> Tenant {
    store.create_plan(&plan("metered", quota, policy)).await.unwrap();
    let tenant = tenant(1, "metered", t0());
    store.create_tenant(&tenant).await.unwrap();
    tenant
}

fn debit(tenant: &Tenant, quota: i64, policy: OveragePolicy, units: i64) -> QuotaDebit {
    QuotaDebit {
        tenant_id: tenant.id,
        period_start: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        period_end: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        quota_units: quota,
        overage_policy: policy,
        units,
        now: t0(),
    }
}

#[tokio::test]
async fn two_hundred_parallel_debits_against_a_quota_of_one_hundred_accept_exactly_one_hundred() {
    for_each_store("two_hundred_parallel_debits", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        let other = t.second_handle().await;
        let debits = (0..200).map(|i| {
            let store = if i % 2 == 0 { store.clone() } else { other.clone() };
            let request = debit(&acme, 100, OveragePolicy::Block, 1);
            async move { store.debit_quota(&request).await.unwrap() }
        });
        let outcomes = futures_util::future::join_all(debits).await;
        let accepted = outcomes.iter().filter(|o| matches!(o, QuotaOutcome::Accepted { .. })).count();
        assert_eq!(accepted, 100, "{}", t.name);
        let usage = store.quota_usage(acme.id, NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()).await.unwrap().unwrap();
        assert_eq!((usage.units_used, usage.quota_units, usage.overage_units), (100, 100, 0));
        assert_eq!(usage.period_end, NaiveDate::from_ymd_opt(2026, 3, 1).unwrap());
    })
    .await;
}

#[tokio::test]
async fn overage_is_counted_under_allow_and_refunds_give_units_back() {
    for_each_store("overage_is_counted_under_allow_and_refunds_give_units_back", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 10, OveragePolicy::Allow).await;
        let d = |units| debit(&acme, 10, OveragePolicy::Allow, units);
        assert_eq!(
            store.debit_quota(&d(8)).await.unwrap(),
            QuotaOutcome::Accepted { units_used: 8, quota_units: 10, overage_units: 0 }
        );
        assert_eq!(
            store.debit_quota(&d(5)).await.unwrap(),
            QuotaOutcome::Accepted { units_used: 13, quota_units: 10, overage_units: 3 }
        );
        assert_eq!(
            store.debit_quota(&d(2)).await.unwrap(),
            QuotaOutcome::Accepted { units_used: 15, quota_units: 10, overage_units: 2 }
        );
        store.refund_quota(acme.id, d(0).period_start, 2, 2, t0()).await.unwrap();
        let usage = store.quota_usage(acme.id, d(0).period_start).await.unwrap().unwrap();
        assert_eq!((usage.units_used, usage.overage_units), (13, 3));
        store.refund_quota(acme.id, d(0).period_start, 100, 100, t0()).await.unwrap();
        let usage = store.quota_usage(acme.id, d(0).period_start).await.unwrap().unwrap();
        assert_eq!((usage.units_used, usage.overage_units), (0, 0), "never below zero");

        let blocked = tenant(2, "metered", t0());
        store.create_tenant(&blocked).await.unwrap();
        let b = |units| debit(&blocked, 10, OveragePolicy::Block, units);
        assert!(matches!(store.debit_quota(&b(10)).await.unwrap(), QuotaOutcome::Accepted { .. }));
        assert_eq!(store.debit_quota(&b(1)).await.unwrap(), QuotaOutcome::Rejected { units_used: 10, quota_units: 10 });
    })
    .await;
}

#[tokio::test]
async fn the_rate_limit_state_is_shared_and_exact() {
    for_each_store("the_rate_limit_state_is_shared_and_exact", |t| async move {
        let store = migrated(&t).await;
        let other = t.second_handle().await;
        let take = |now_micros| RateLimitTake {
            tenant_id: Uuid::from_u128(1),
            client_id: "app-1".into(),
            now_micros,
            emission_interval_micros: 1_000_000, // 60 per minute
            burst: 10,
        };
        let now = 1_800_000_000_000_000;
        let takes = (0..40).map(|i| {
            let store = if i % 2 == 0 { store.clone() } else { other.clone() };
            async move { store.take_rate_limit(&take(now)).await.unwrap() }
        });
        let decisions = futures_util::future::join_all(takes).await;
        assert_eq!(decisions.iter().filter(|d| d.allowed).count(), 10, "{}: exactly the burst", t.name);
        let rejected = decisions.iter().find(|d| !d.allowed).unwrap();
        assert_eq!(rejected.retry_after_micros, 1_000_000);
        assert!(store.take_rate_limit(&take(now + 1_000_000)).await.unwrap().allowed, "one slot per interval");
        assert!(!store.take_rate_limit(&take(now + 1_000_000)).await.unwrap().allowed);
        let other_client = RateLimitTake { client_id: "app-2".into(), ..take(now) };
        assert!(store.take_rate_limit(&other_client).await.unwrap().allowed, "limits are per client");
    })
    .await;
}

#[tokio::test]
async fn usage_events_are_idempotent_by_event_id() {
    for_each_store("usage_events_are_idempotent_by_event_id", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        let event = |n: u128| UsageEvent {
            event_id: Uuid::from_u128(n),
            request_id: format!("req-{n}"),
            tenant_id: Some(acme.id),
            client_id: Some("app-1".into()),
            principal_id: Some("oid-1".into()),
            operation_id: "getDocument".into(),
            method: "GET".into(),
            route_template: "/api/v1/documents/{id}".into(),
            status: 200,
            units: 1,
            billable: true,
            overage_units: 0,
            latency_micros: 850,
            request_bytes: 0,
            response_bytes: 512,
            occurred_at: t0(),
            recorded_at: t0(),
        };
        assert_eq!(store.record_usage_events(&[event(1), event(2), event(3)]).await.unwrap(), 3);
        assert_eq!(store.record_usage_events(&[event(2), event(3), event(4)]).await.unwrap(), 1, "{}", t.name);
        let anonymous = UsageEvent {
            tenant_id: None,
            client_id: None,
            principal_id: None,
            status: 401,
            billable: false,
            units: 0,
            ..event(5)
        };
        assert_eq!(store.record_usage_events(&[anonymous]).await.unwrap(), 1, "rejected callers are recorded too");
        assert_eq!(store.count_usage_events(acme.id).await.unwrap(), 4);
        let ghost = UsageEvent { tenant_id: Some(Uuid::from_u128(404)), ..event(6) };
        assert!(matches!(store.record_usage_events(&[event(7), ghost]).await, Err(StoreError::ForeignKey(_))));
        assert_eq!(store.count_usage_events(acme.id).await.unwrap(), 4, "a failed batch writes nothing");
    })
    .await;
}

#[tokio::test]
async fn a_changed_or_unknown_migration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.migrate().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1", []).unwrap();
    drop(conn);
    let err = store.migrate().await.unwrap_err();
    assert!(err.to_string().contains("migration 1 (job_runs) differs"), "{err}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x', '2030-01-01T00:00:00Z')", []).unwrap();
    conn.execute("UPDATE schema_migrations SET checksum = ?1 WHERE version = 1", [SQLITE_MIGRATIONS[0].checksum()])
        .unwrap();
    drop(conn);
    assert!(store.migrate().await.unwrap_err().to_string().contains("migration 99"));
}

#[tokio::test]
async fn api_clients_register_once_with_their_roles() {
    for_each_store("api_clients_register_once_with_their_roles", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block)).await.unwrap();
        let acme = tenant(1, "pro", t0());
        store.create_tenant(&acme).await.unwrap();
        let client = ApiClient {
            id: Uuid::from_u128(0xC1),
            tenant_id: acme.id,
            app_id: "8d0a1c1e-app".into(),
            display_name: "Billing sync".into(),
            roles: vec!["Documents.Read".into(), "Usage.Read".into()],
            active: true,
            created_at: t0(),
            revoked_at: None,
            version: 1,
        };
        store.create_api_client(&client).await.unwrap();
        assert_eq!(store.get_api_client_by_app_id("8d0a1c1e-app").await.unwrap(), Some(client.clone()), "{}", t.name);
        assert_eq!(store.get_api_client_by_app_id("unknown").await.unwrap(), None);
        let again = ApiClient { id: Uuid::from_u128(0xC2), ..client.clone() };
        assert!(matches!(store.create_api_client(&again).await, Err(StoreError::Conflict(_))), "app ids are unique");
        let bad_role =
            ApiClient { id: Uuid::from_u128(0xC3), app_id: "other".into(), roles: vec!["Root".into()], ..client };
        assert!(store.create_api_client(&bad_role).await.is_err(), "roles are a closed set");
        assert_eq!(
            store.get_api_client_by_app_id("other").await.unwrap(),
            None,
            "the failed registration left nothing"
        );
    })
    .await;
}
