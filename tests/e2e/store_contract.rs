//! The storage contract, run against every store: SQLite always, SQL Server when `MSSQL_TEST_CONNECTION_STRING` is set.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use meterline::store::*;
use uuid::Uuid;

use crate::support::stores::{self, TestStore, for_each_store};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 31, 23, 59, 0).unwrap()
}

fn plan(code: &str, quota: i64, policy: OveragePolicy) -> Plan {
    Plan {
        overage_policy: policy,
        base_price_micros: 49_000_000,
        overage_unit_price_micros: 1_000,
        ..stores::plan(code, quota, t0())
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
        assert_eq!(first.applied, vec![1, 2, 3], "{}", t.name);
        let second = t.store.migrate().await.expect("second migrate");
        assert!(second.applied.is_empty());
        assert_eq!(second.already_applied, vec![1, 2, 3]);
        let history = t.store.applied_migrations().await.unwrap();
        assert_eq!(history.iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 2, 3]);
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
        assert_eq!(applied, vec![1, 2, 3], "{}: each migration applied by exactly one handle", t.name);
        assert_eq!(other.applied_migrations().await.unwrap().len(), 3);
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
        store.create_plan(&pro, None).await.unwrap();
        assert_eq!(store.get_plan("pro").await.unwrap(), Some(pro.clone()));
        assert_eq!(store.get_plan("none").await.unwrap(), None);
        assert!(matches!(store.create_plan(&pro, None).await, Err(StoreError::Conflict(_))));

        let acme = tenant(1, "pro", t0());
        store.create_tenant(&acme, None).await.unwrap();
        assert_eq!(store.get_tenant(acme.id).await.unwrap(), Some(acme.clone()));
        assert_eq!(store.get_tenant_by_entra_id(acme.entra_tenant_id.unwrap()).await.unwrap(), Some(acme.clone()));
        assert_eq!(store.get_tenant(Uuid::from_u128(7)).await.unwrap(), None);

        let same_directory = Tenant { id: Uuid::from_u128(2), ..acme.clone() };
        assert!(
            matches!(store.create_tenant(&same_directory, None).await, Err(StoreError::Conflict(_))),
            "tid is unique"
        );
        let no_plan =
            Tenant { id: Uuid::from_u128(3), entra_tenant_id: None, plan_code: "ghost".into(), ..acme.clone() };
        assert!(matches!(store.create_tenant(&no_plan, None).await, Err(StoreError::ForeignKey(_))), "{}", t.name);
        let no_directory_a = Tenant { id: Uuid::from_u128(4), entra_tenant_id: None, ..acme.clone() };
        let no_directory_b = Tenant { id: Uuid::from_u128(5), entra_tenant_id: None, ..acme.clone() };
        store.create_tenant(&no_directory_a, None).await.unwrap();
        store.create_tenant(&no_directory_b, None).await.expect("many tenants may have no Entra directory");
    })
    .await;
}

#[tokio::test]
async fn tenant_updates_are_conditional_on_the_version() {
    for_each_store("tenant_updates_are_conditional_on_the_version", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
        let acme = tenant(1, "pro", t0());
        store.create_tenant(&acme, None).await.unwrap();
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
        store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
        // Ties on created_at on purpose: the id must break them.
        let before: Vec<Tenant> = (0..23).map(|n| tenant(n, "pro", t0() + Duration::seconds((n / 3) as i64))).collect();
        for tenant in &before {
            store.create_tenant(tenant, None).await.unwrap();
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
                store.create_tenant(&tenant(100, "pro", t0() - Duration::days(1)), None).await.unwrap();
                store.create_tenant(&tenant(101, "pro", t0() + Duration::days(1)), None).await.unwrap();
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
    store.create_plan(&plan("metered", quota, policy), None).await.unwrap();
    let tenant = tenant(1, "metered", t0());
    store.create_tenant(&tenant, None).await.unwrap();
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
        store.create_tenant(&blocked, None).await.unwrap();
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
async fn admission_debits_only_what_the_rate_limit_lets_through_across_handles() {
    for_each_store("admission_debits_only_what_the_rate_limit_lets_through_across_handles", |t| async move {
        let store = migrated(&t).await;
        let other = t.second_handle().await;
        let acme = tenant_on_plan(&store, 1_000, OveragePolicy::Block).await;
        let now_micros = t0().timestamp_micros();
        let admission = |units: i64| Admission {
            rate: RateLimitTake {
                tenant_id: acme.id,
                client_id: "app-1".into(),
                now_micros,
                emission_interval_micros: 1_000_000,
                burst: 10,
            },
            debit: (units > 0).then(|| debit(&acme, 1_000, OveragePolicy::Block, units)),
        };
        // 30 concurrent admissions costing 5 units each, from two handles: the burst of 10 gets in and pays.
        let calls = (0..30).map(|i| {
            let store = if i % 2 == 0 { store.clone() } else { other.clone() };
            let admission = admission(5);
            async move { store.admit(&admission).await.unwrap() }
        });
        let decisions = futures_util::future::join_all(calls).await;
        let admitted: Vec<_> = decisions.iter().filter(|d| d.rate.allowed).collect();
        assert_eq!(admitted.len(), 10, "{}: exactly the burst", t.name);
        assert!(admitted.iter().all(|d| matches!(d.debit, Some(QuotaOutcome::Accepted { .. }))));
        assert!(
            decisions.iter().filter(|d| !d.rate.allowed).all(|d| d.debit.is_none()),
            "refused calls are not debited"
        );
        let period = debit(&acme, 1_000, OveragePolicy::Block, 0).period_start;
        assert_eq!(store.quota_usage(acme.id, period).await.unwrap().unwrap().units_used, 50, "{}", t.name);
        // A free operation takes a rate step and debits nothing.
        let free = store.admit(&admission(0)).await.unwrap();
        assert!(!free.rate.allowed && free.debit.is_none());
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

/// A registration of `app_id` for `tenant`'s own directory, active.
fn registration(n: u128, tenant: &Tenant, app_id: &str, created_at: DateTime<Utc>, roles: &[&str]) -> ApiClient {
    ApiClient {
        id: Uuid::from_u128(0xC0 + n),
        tenant_id: tenant.id,
        directory_id: tenant.entra_tenant_id,
        app_id: app_id.into(),
        display_name: format!("Client {n}"),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        status: ClientStatus::Active,
        created_at,
        revoked_at: None,
        decided_by: None,
        decided_at: None,
        version: 1,
    }
}

#[tokio::test]
async fn api_clients_register_once_per_tenant_and_directory_with_their_roles() {
    for_each_store("api_clients_register_once_per_tenant_and_directory_with_their_roles", |t| async move {
        let store = migrated(&t).await;
        let (acme, other) = two_tenants(&store).await;
        let home = acme.entra_tenant_id.unwrap();
        let client = registration(1, &acme, "8d0a1c1e-app", t0(), &["Documents.Read", "Usage.Read"]);
        store.create_api_client(&client, None).await.unwrap();
        assert_eq!(store.api_clients_for_app(home, "8d0a1c1e-app").await.unwrap(), vec![client.clone()], "{}", t.name);
        assert_eq!(store.api_clients_for_app(home, "unknown").await.unwrap(), vec![]);
        let elsewhere = other.entra_tenant_id.unwrap();
        assert_eq!(store.api_clients_for_app(elsewhere, "8d0a1c1e-app").await.unwrap(), vec![], "keyed by directory");
        let again = ApiClient { id: Uuid::from_u128(0xC2), ..client.clone() };
        assert!(
            matches!(store.create_api_client(&again, None).await, Err(StoreError::Conflict(_))),
            "one live registration per tenant, directory and application"
        );
        // Another tenant may register the same pair (pending): registrations never reveal each other.
        let theirs = ApiClient {
            id: Uuid::from_u128(0xC4),
            tenant_id: other.id,
            status: ClientStatus::Pending,
            ..client.clone()
        };
        store.create_api_client(&theirs, None).await.unwrap();
        // The same tenant may register the application again once the first is revoked.
        store.revoke_api_client(acme.id, client.id, t0(), None).await.unwrap();
        store.create_api_client(&again, None).await.unwrap();
        let all = store.api_clients_for_app(home, "8d0a1c1e-app").await.unwrap();
        assert_eq!(all.iter().map(|c| c.id).collect::<Vec<_>>(), vec![client.id, again.id, theirs.id], "{}", t.name);
        let bad_role = ApiClient {
            id: Uuid::from_u128(0xC3),
            app_id: "other".into(),
            roles: vec!["Root".into()],
            ..client.clone()
        };
        assert!(store.create_api_client(&bad_role, None).await.is_err(), "roles are a closed set");
        assert_eq!(
            store.api_clients_for_app(home, "other").await.unwrap(),
            vec![],
            "the failed registration left nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn pending_registrations_are_decided_once_and_never_take_a_tenants_directory() {
    for_each_store("pending_registrations_are_decided_once_and_never_take_a_tenants_directory", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let partner = Uuid::from_u128(0x7777);
        let pending = |n: u128, tenant: &Tenant, directory: Uuid| ApiClient {
            directory_id: Some(directory),
            status: ClientStatus::Pending,
            ..registration(n, tenant, "partner-app", t0(), &["Documents.Read"])
        };
        let (ours, theirs, squat) =
            (pending(1, &a, partner), pending(2, &b, partner), pending(3, &b, a.entra_tenant_id.unwrap()));
        for c in [&ours, &theirs, &squat] {
            store.create_api_client(c, None).await.unwrap();
        }
        let at = t0() + Duration::hours(1);
        let approve = ClientDecision { approve: true, by: "platform-admin".into(), at };
        assert_eq!(
            store.decide_api_client(b.id, ours.id, &approve, None).await.unwrap(),
            Update::NotFound,
            "{}",
            t.name
        );
        let approved = ApiClient {
            status: ClientStatus::Active,
            decided_by: Some("platform-admin".into()),
            decided_at: Some(at),
            version: 2,
            ..ours.clone()
        };
        assert_eq!(
            store.decide_api_client(a.id, ours.id, &approve, None).await.unwrap(),
            Update::Updated(approved.clone())
        );
        let reject = ClientDecision { approve: false, ..approve.clone() };
        assert!(
            matches!(store.decide_api_client(a.id, ours.id, &reject, None).await, Err(StoreError::Conflict(_))),
            "{}: a decided registration stays decided",
            t.name
        );
        assert!(
            matches!(store.decide_api_client(b.id, theirs.id, &approve, None).await, Err(StoreError::Conflict(_))),
            "{}: another tenant holds the pair already",
            t.name
        );
        assert!(
            matches!(store.decide_api_client(b.id, squat.id, &approve, None).await, Err(StoreError::Conflict(_))),
            "{}: tenant A's own directory cannot be given to B",
            t.name
        );
        let rejected = store.decide_api_client(b.id, squat.id, &reject, None).await.unwrap();
        assert!(matches!(rejected, Update::Updated(ref c) if c.status == ClientStatus::Rejected), "{rejected:?}");
        assert_eq!(store.api_clients_for_app(partner, "partner-app").await.unwrap(), vec![approved, theirs.clone()]);
        // Revoking a rejected registration leaves it as it is; a pending one can be withdrawn.
        let withdrawn = store.revoke_api_client(b.id, theirs.id, at, None).await.unwrap();
        assert!(matches!(withdrawn, Update::Updated(ref c) if c.status == ClientStatus::Revoked), "{withdrawn:?}");
        let still = store.revoke_api_client(b.id, squat.id, at, None).await.unwrap();
        assert!(
            matches!(still, Update::Updated(ref c) if c.status == ClientStatus::Rejected && c.revoked_at.is_none())
        );
    })
    .await;
}

async fn two_tenants(store: &Arc<dyn Store>) -> (Tenant, Tenant) {
    store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
    let (a, b) = (tenant(1, "pro", t0()), tenant(2, "pro", t0()));
    store.create_tenant(&a, None).await.unwrap();
    store.create_tenant(&b, None).await.unwrap();
    (a, b)
}

/// Document ids in an order unrelated to `n` (multiplying by an odd constant is a bijection on u128).
fn doc_id(n: u128) -> Uuid {
    Uuid::from_u128((n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
}

fn document(tenant: &Tenant, n: u128) -> Document {
    let at = t0() + Duration::microseconds(n as i64 * 1_000_001);
    Document {
        id: doc_id(n),
        tenant_id: tenant.id,
        title: format!("document {n}"),
        summary: None,
        body: None,
        doc_type: "memo".into(),
        jurisdiction: None,
        status: DocumentStatus::Draft,
        effective_date: None,
        tags: Vec::new(),
        created_by: "oid-author".into(),
        updated_by: "oid-author".into(),
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

fn date(y: i32, m: u32, d: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(y, m, d).unwrap()
}

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| t.to_string()).collect()
}

fn by_id(mut documents: Vec<Document>) -> Vec<Document> {
    documents.sort_by_key(|d| d.id);
    documents
}

fn ids(documents: &[Document]) -> Vec<Uuid> {
    documents.iter().map(|d| d.id).collect()
}

const UPDATED_ASC: DocumentSort = DocumentSort { key: DocumentSortKey::UpdatedAt, descending: false };

/// Every match in one page, with the count.
async fn list_all(
    store: &Arc<dyn Store>,
    tenant: &Tenant,
    filter: &DocumentFilter,
    sort: DocumentSort,
) -> DocumentPage {
    let page = store.list_documents(tenant.id, filter, sort, None, 1000, true).await.unwrap();
    assert!(page.next.is_none(), "one page holds everything");
    page
}

/// Pages through with `size` rows per page, checking each page's shape; returns the rows in order and the page count.
async fn page_through(
    store: &Arc<dyn Store>,
    tenant: &Tenant,
    filter: &DocumentFilter,
    sort: DocumentSort,
    size: u32,
) -> (Vec<Document>, usize) {
    let mut seen = Vec::new();
    let mut cursor: Option<DocumentCursor> = None;
    let mut pages = 0;
    loop {
        let page = store.list_documents(tenant.id, filter, sort, cursor.as_ref(), size, pages % 2 == 0).await.unwrap();
        pages += 1;
        assert!(page.items.len() <= size as usize);
        let expected_total = if pages % 2 == 1 { page.total } else { None };
        assert_eq!(page.total, expected_total, "a total only when asked for");
        seen.extend(page.items.iter().cloned());
        match page.next {
            Some(next) => {
                assert_eq!(page.items.len(), size as usize, "only the last page is short");
                let last = page.items.last().unwrap();
                assert_eq!(next.id, last.id, "the cursor is the last row's");
                cursor = Some(next);
            }
            None => break,
        }
        assert!(pages < 1000, "paging does not end");
    }
    (seen, pages)
}

#[tokio::test]
async fn documents_round_trip_with_their_tags() {
    for_each_store("documents_round_trip_with_their_tags", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        let bare = document(&a, 1);
        store.create_document(&bare, None, None).await.unwrap();
        assert_eq!(store.get_document(a.id, bare.id).await.unwrap(), Some(bare.clone()), "{}", t.name);

        let full = Document {
            summary: Some("Lease of the Paris office".into()),
            body: Some("Full text ".repeat(1_000)),
            jurisdiction: Some("FR".into()),
            status: DocumentStatus::Published,
            effective_date: Some(date(2026, 3, 1)),
            tags: tags(&["tax", "lease", "hr"]),
            created_at: t0() + Duration::microseconds(123_456),
            updated_at: t0() + Duration::microseconds(123_456),
            ..document(&a, 2)
        };
        store.create_document(&full, None, None).await.unwrap();
        let stored = store.get_document(a.id, full.id).await.unwrap().expect("stored");
        assert_eq!(stored.tags, tags(&["hr", "lease", "tax"]), "tags come back sorted");
        assert_eq!(stored, Document { tags: tags(&["hr", "lease", "tax"]), ..full.clone() });
        assert_eq!(store.get_document(a.id, doc_id(99)).await.unwrap(), None);

        let later = t0() + Duration::hours(1) + Duration::microseconds(7);
        let edited = Document {
            title: "Office lease (signed)".into(),
            summary: None,
            body: Some("signed".into()),
            doc_type: "contract".into(),
            jurisdiction: Some("DE".into()),
            status: DocumentStatus::Archived,
            effective_date: None,
            tags: tags(&["archive", "lease"]),
            updated_by: "oid-editor".into(),
            updated_at: later,
            version: 1,
            ..stored.clone()
        };
        let Update::Updated(updated) = store.update_document(&edited, 1, None).await.unwrap() else {
            panic!("{}: the update at the current version applies", t.name)
        };
        let expected = Document { version: 2, ..edited.clone() };
        assert_eq!(updated, expected, "every field and the tag set replaced; created_* kept");
        assert_eq!(store.get_document(a.id, full.id).await.unwrap(), Some(expected.clone()));

        let untagged = Document { tags: Vec::new(), ..expected.clone() };
        let Update::Updated(updated) = store.update_document(&untagged, 2, None).await.unwrap() else { panic!() };
        assert!(updated.tags.is_empty() && updated.version == 3, "{}: tags removed", t.name);

        assert_eq!(
            store.delete_document(a.id, full.id, 3, "oid-editor", later, None).await.unwrap(),
            Update::Updated(())
        );
        assert_eq!(store.get_document(a.id, full.id).await.unwrap(), None);
        assert_eq!(store.get_document(a.id, bare.id).await.unwrap(), Some(bare), "the other document is untouched");
        assert!(matches!(store.create_document(&document(&a, 1), None, None).await, Err(StoreError::Conflict(_))));
    })
    .await;
}

#[tokio::test]
async fn documents_of_another_tenant_do_not_exist() {
    for_each_store("documents_of_another_tenant_do_not_exist", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let mine = Document { tags: tags(&["tax"]), status: DocumentStatus::Published, ..document(&a, 1) };
        store.create_document(&mine, None, None).await.unwrap();

        assert_eq!(store.get_document(b.id, mine.id).await.unwrap(), None, "{}", t.name);
        let hijack = Document { tenant_id: b.id, title: "mine now".into(), ..mine.clone() };
        assert_eq!(store.update_document(&hijack, 1, None).await.unwrap(), Update::NotFound);
        assert_eq!(store.delete_document(b.id, mine.id, 1, "oid-b", t0(), None).await.unwrap(), Update::NotFound);
        let everything = list_all(&store, &b, &DocumentFilter::default(), UPDATED_ASC).await;
        assert!(everything.items.is_empty() && everything.total == Some(0));
        let tagged = DocumentFilter { tags_any: tags(&["tax"]), ..Default::default() };
        assert_eq!(list_all(&store, &b, &tagged, UPDATED_ASC).await.total, Some(0));

        assert_eq!(store.get_document(a.id, mine.id).await.unwrap(), Some(mine.clone()), "A's document is intact");
        let listed = list_all(&store, &a, &tagged, UPDATED_ASC).await;
        assert_eq!((listed.items, listed.total), (vec![mine], Some(1)));
    })
    .await;
}

#[tokio::test]
async fn soft_deleted_documents_are_invisible() {
    for_each_store("soft_deleted_documents_are_invisible", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        let kept = Document { tags: tags(&["hr"]), ..document(&a, 1) };
        let gone = Document { tags: tags(&["hr"]), ..document(&a, 2) };
        store.create_document(&kept, None, None).await.unwrap();
        store.create_document(&gone, None, None).await.unwrap();
        let now = t0() + Duration::days(1);
        assert_eq!(store.delete_document(a.id, gone.id, 1, "oid-x", now, None).await.unwrap(), Update::Updated(()));

        assert_eq!(store.get_document(a.id, gone.id).await.unwrap(), None, "{}", t.name);
        assert_eq!(
            store.update_document(&gone, 2, None).await.unwrap(),
            Update::NotFound,
            "the delete bumped the version"
        );
        assert_eq!(store.update_document(&gone, 1, None).await.unwrap(), Update::NotFound);
        assert_eq!(store.delete_document(a.id, gone.id, 2, "oid-x", now, None).await.unwrap(), Update::NotFound);
        for filter in [DocumentFilter::default(), DocumentFilter { tags_any: tags(&["hr"]), ..Default::default() }] {
            let listed = list_all(&store, &a, &filter, UPDATED_ASC).await;
            assert_eq!((ids(&listed.items), listed.total), (vec![kept.id], Some(1)), "{}", t.name);
        }
        // The deletion time is also the last update: a time filter around it still finds nothing.
        let around = DocumentFilter { updated_after: Some(now), ..Default::default() };
        assert_eq!(list_all(&store, &a, &around, UPDATED_ASC).await.total, Some(0));
    })
    .await;
}

#[tokio::test]
async fn document_writes_are_conditional_on_the_version() {
    for_each_store("document_writes_are_conditional_on_the_version", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        let original = Document { tags: tags(&["a"]), ..document(&a, 1) };
        store.create_document(&original, None, None).await.unwrap();
        let edit = Document { title: "edited".into(), tags: tags(&["b"]), version: 99, ..original.clone() };
        let Update::Updated(v2) = store.update_document(&edit, 1, None).await.unwrap() else { panic!("{}", t.name) };
        assert_eq!(v2.version, 2, "the version follows expected_version, not document.version");

        let stale = Document { title: "lost update".into(), tags: tags(&["c"]), ..original.clone() };
        assert_eq!(
            store.update_document(&stale, 1, None).await.unwrap(),
            Update::VersionMismatch { current_version: 2 }
        );
        assert_eq!(
            store.update_document(&stale, 3, None).await.unwrap(),
            Update::VersionMismatch { current_version: 2 }
        );
        assert_eq!(
            store.get_document(a.id, original.id).await.unwrap(),
            Some(v2.clone()),
            "a refused update writes nothing"
        );
        assert_eq!(
            store.delete_document(a.id, original.id, 1, "oid-x", t0(), None).await.unwrap(),
            Update::VersionMismatch { current_version: 2 },
            "{}",
            t.name
        );
        assert_eq!(store.get_document(a.id, original.id).await.unwrap(), Some(v2), "a refused delete deletes nothing");

        let missing = document(&a, 50);
        assert_eq!(store.update_document(&missing, 1, None).await.unwrap(), Update::NotFound);
        assert_eq!(store.delete_document(a.id, missing.id, 1, "oid-x", t0(), None).await.unwrap(), Update::NotFound);
        assert_eq!(
            store.delete_document(a.id, original.id, 2, "oid-x", t0(), None).await.unwrap(),
            Update::Updated(())
        );
    })
    .await;
}

fn idempotency(tenant: &Tenant, key: &str, body: &str, created_at: DateTime<Utc>) -> IdempotencyRecord {
    IdempotencyRecord {
        tenant_id: tenant.id,
        key: key.into(),
        operation_id: "createDocument".into(),
        request_hash: "ab".repeat(32),
        status_code: 201,
        response_headers: r#"{"location":"/api/v1/documents/1","etag":"\"1\""}"#.into(),
        response_body: body.as_bytes().to_vec(),
        created_at,
        expires_at: created_at + Duration::hours(24),
    }
}

#[tokio::test]
async fn creating_a_document_with_a_taken_idempotency_key_writes_nothing() {
    for_each_store("creating_a_document_with_a_taken_idempotency_key_writes_nothing", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let first = Document { tags: tags(&["x"]), ..document(&a, 1) };
        let record = idempotency(&a, "key-1", r#"{"id":1}"#, t0());
        store.create_document(&first, Some(&record), None).await.unwrap();
        assert_eq!(store.get_idempotency(a.id, "key-1", t0()).await.unwrap(), Some(record.clone()), "{}", t.name);

        let second = Document { tags: tags(&["y"]), ..document(&a, 2) };
        let retry = idempotency(&a, "key-1", r#"{"id":2}"#, t0() + Duration::minutes(1));
        assert!(
            matches!(store.create_document(&second, Some(&retry), None).await, Err(StoreError::Conflict(_))),
            "{}",
            t.name
        );
        assert_eq!(store.get_document(a.id, second.id).await.unwrap(), None, "no second document");
        assert_eq!(list_all(&store, &a, &DocumentFilter::default(), UPDATED_ASC).await.total, Some(1));
        let y = DocumentFilter { tags_any: tags(&["y"]), ..Default::default() };
        assert_eq!(list_all(&store, &a, &y, UPDATED_ASC).await.total, Some(0), "no tags of the refused document");
        assert_eq!(
            store.get_idempotency(a.id, "key-1", t0()).await.unwrap(),
            Some(record.clone()),
            "first answer kept"
        );

        // A document conflict rolls the idempotency record back too.
        let same_id = document(&a, 1);
        let fresh = idempotency(&a, "key-2", "{}", t0());
        assert!(matches!(store.create_document(&same_id, Some(&fresh), None).await, Err(StoreError::Conflict(_))));
        assert_eq!(store.get_idempotency(a.id, "key-2", t0()).await.unwrap(), None, "{}", t.name);

        // Keys are per tenant.
        let theirs = idempotency(&b, "key-1", r#"{"id":3}"#, t0());
        store.create_document(&document(&b, 3), Some(&theirs), None).await.expect("another tenant's key space");
        assert_eq!(store.get_idempotency(b.id, "key-1", t0()).await.unwrap(), Some(theirs));
        assert_eq!(store.get_idempotency(a.id, "key-1", t0()).await.unwrap(), Some(record));
    })
    .await;
}

#[tokio::test]
async fn idempotency_records_expire() {
    for_each_store("idempotency_records_expire", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        let record = IdempotencyRecord { response_body: vec![0, 159, 146, 150, 255], ..idempotency(&a, "k", "", t0()) };
        store.create_document(&document(&a, 1), Some(&record), None).await.unwrap();
        let expires = record.expires_at;
        let at = |now| store.get_idempotency(a.id, "k", now);
        assert_eq!(at(t0()).await.unwrap(), Some(record.clone()), "{}: binary bodies round-trip", t.name);
        assert_eq!(at(expires - Duration::microseconds(1)).await.unwrap(), Some(record.clone()));
        assert_eq!(at(expires).await.unwrap(), None, "{}: expired at expires_at", t.name);
        assert_eq!(at(expires + Duration::days(1)).await.unwrap(), None);
        assert_eq!(store.get_idempotency(a.id, "other", t0()).await.unwrap(), None);

        // Before expiry the key is taken; from expiry on, it is free again and the new record answers.
        let early = idempotency(&a, "k", "early", expires - Duration::seconds(1));
        assert!(matches!(
            store.create_document(&document(&a, 2), Some(&early), None).await,
            Err(StoreError::Conflict(_))
        ));
        let reuse = idempotency(&a, "k", "second", expires);
        store.create_document(&document(&a, 2), Some(&reuse), None).await.expect("an expired key is free");
        assert_eq!(at(expires).await.unwrap(), Some(reuse), "{}", t.name);
    })
    .await;
}

/// What `list_documents` must select, written independently of the stores.
fn matches(d: &Document, f: &DocumentFilter) -> bool {
    let contains = |text: &str, q: &str| text.to_ascii_lowercase().contains(&q.to_ascii_lowercase());
    f.status.is_none_or(|s| d.status == s)
        && f.doc_type.as_ref().is_none_or(|x| &d.doc_type == x)
        && f.jurisdiction.as_ref().is_none_or(|x| d.jurisdiction.as_ref() == Some(x))
        && (f.tags_any.is_empty() || d.tags.iter().any(|tag| f.tags_any.contains(tag)))
        && f.updated_after.is_none_or(|x| d.updated_at >= x)
        && f.updated_before.is_none_or(|x| d.updated_at < x)
        && f.effective_from.is_none_or(|x| d.effective_date.is_some_and(|e| e >= x))
        && f.effective_to.is_none_or(|x| d.effective_date.is_some_and(|e| e <= x))
        && f.q.as_ref().is_none_or(|q| contains(&d.title, q) || d.summary.as_deref().is_some_and(|s| contains(s, q)))
}

#[tokio::test]
async fn document_filters_select_exactly_the_matching_documents() {
    for_each_store("document_filters_select_exactly_the_matching_documents", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let s = |n: i64| t0() + Duration::seconds(n);
        #[allow(clippy::type_complexity)]
        let rows: [(&str, Option<&str>, &str, Option<&str>, DocumentStatus, Option<NaiveDate>, &[&str], i64);
            10] = [
            (
                "Office lease",
                Some("Lease renewal for the Paris office"),
                "contract",
                Some("FR"),
                DocumentStatus::Published,
                Some(date(2026, 1, 1)),
                &["lease", "tax"],
                1,
            ),
            ("Discount 50% off", None, "memo", None, DocumentStatus::Draft, None, &["pricing"], 2),
            (
                "Bulk order of 500 units",
                Some("not a percentage"),
                "memo",
                Some("DE"),
                DocumentStatus::Published,
                Some(date(2026, 3, 1)),
                &[],
                3,
            ),
            (
                "Field a_b mapping",
                None,
                "spec",
                Some("FR"),
                DocumentStatus::Archived,
                Some(date(2025, 12, 31)),
                &["hr"],
                4,
            ),
            (
                "Field axb mapping",
                Some("wildcard bait"),
                "spec",
                Some("US"),
                DocumentStatus::Draft,
                Some(date(2026, 1, 1)),
                &["hr", "tax"],
                5,
            ),
            ("Notes [draft] v2", None, "memo", Some("FR"), DocumentStatus::Draft, None, &["tax"], 6),
            (
                "Drafting guide",
                Some("how to write a d"),
                "guide",
                None,
                DocumentStatus::Published,
                Some(date(2026, 6, 30)),
                &[],
                7,
            ),
            (
                "Path C:\\temp",
                Some("backslash"),
                "memo",
                Some("FR"),
                DocumentStatus::Published,
                Some(date(2026, 1, 1)),
                &["tax"],
                6,
            ),
            (
                "Quarterly TAX report",
                None,
                "report",
                Some("DE"),
                DocumentStatus::Published,
                Some(date(2026, 2, 15)),
                &["finance"],
                8,
            ),
            (
                "Employee handbook",
                Some("HR policies and the 50% rule"),
                "guide",
                Some("FR"),
                DocumentStatus::Published,
                None,
                &["hr"],
                9,
            ),
        ];
        let mut live = Vec::new();
        for (n, (title, summary, doc_type, jurisdiction, status, effective_date, tag_list, second)) in
            rows.into_iter().enumerate()
        {
            let d = Document {
                title: title.into(),
                summary: summary.map(str::to_owned),
                doc_type: doc_type.into(),
                jurisdiction: jurisdiction.map(str::to_owned),
                status,
                effective_date,
                tags: tags(tag_list),
                created_at: s(second),
                updated_at: s(second),
                ..document(&a, n as u128)
            };
            store.create_document(&d, None, None).await.unwrap();
            live.push(d);
        }
        // Matches nearly every filter, but deleted; and the same for another tenant.
        let bait = Document {
            title: "Deleted lease 50% [draft] a_b C:\\".into(),
            summary: Some("lease".into()),
            doc_type: "memo".into(),
            jurisdiction: Some("FR".into()),
            status: DocumentStatus::Published,
            effective_date: Some(date(2026, 1, 1)),
            tags: tags(&["lease", "tax", "hr", "finance", "pricing"]),
            created_at: s(6),
            updated_at: s(6),
            ..document(&a, 20)
        };
        store.create_document(&bait, None, None).await.unwrap();
        store.delete_document(a.id, bait.id, 1, "oid-x", s(6), None).await.unwrap();
        store.create_document(&Document { id: doc_id(21), tenant_id: b.id, ..bait.clone() }, None, None).await.unwrap();

        let f = DocumentFilter::default;
        let cases: Vec<(&str, DocumentFilter, usize)> = vec![
            ("status", DocumentFilter { status: Some(DocumentStatus::Published), ..f() }, 6),
            ("doc_type", DocumentFilter { doc_type: Some("memo".into()), ..f() }, 4),
            ("jurisdiction", DocumentFilter { jurisdiction: Some("FR".into()), ..f() }, 5),
            ("tags any of two", DocumentFilter { tags_any: tags(&["tax", "hr"]), ..f() }, 6),
            ("one rare tag", DocumentFilter { tags_any: tags(&["finance"]), ..f() }, 1),
            ("updated_after is inclusive", DocumentFilter { updated_after: Some(s(6)), ..f() }, 5),
            ("updated_before is exclusive", DocumentFilter { updated_before: Some(s(6)), ..f() }, 5),
            ("updated range", DocumentFilter { updated_after: Some(s(3)), updated_before: Some(s(6)), ..f() }, 3),
            (
                "updated_after with nanoseconds",
                DocumentFilter { updated_after: Some(s(6) + Duration::nanoseconds(1)), ..f() },
                3,
            ),
            (
                "updated_before with nanoseconds",
                DocumentFilter { updated_before: Some(s(6) + Duration::nanoseconds(1)), ..f() },
                7,
            ),
            ("effective_from", DocumentFilter { effective_from: Some(date(2026, 1, 1)), ..f() }, 6),
            ("effective_to", DocumentFilter { effective_to: Some(date(2026, 1, 1)), ..f() }, 4),
            (
                "effective on one day",
                DocumentFilter { effective_from: Some(date(2026, 1, 1)), effective_to: Some(date(2026, 1, 1)), ..f() },
                3,
            ),
            (
                "effective dates beyond the DATE range",
                DocumentFilter { effective_from: Some(NaiveDate::MIN), effective_to: Some(NaiveDate::MAX), ..f() },
                7,
            ),
            ("q: % is literal", DocumentFilter { q: Some("50%".into()), ..f() }, 2),
            ("q: _ is literal", DocumentFilter { q: Some("a_b".into()), ..f() }, 1),
            ("q: [ is literal", DocumentFilter { q: Some("[draft]".into()), ..f() }, 1),
            ("q: the escape character is literal", DocumentFilter { q: Some("C:\\".into()), ..f() }, 1),
            ("q is case-insensitive", DocumentFilter { q: Some("LEASE".into()), ..f() }, 1),
            ("q searches summaries", DocumentFilter { q: Some("PERCENTAGE".into()), ..f() }, 1),
            ("q matches inside words", DocumentFilter { q: Some("tax".into()), ..f() }, 1),
            (
                "a combination",
                DocumentFilter {
                    status: Some(DocumentStatus::Published),
                    jurisdiction: Some("FR".into()),
                    tags_any: tags(&["tax", "finance"]),
                    effective_from: Some(date(2026, 1, 1)),
                    updated_before: Some(s(7)),
                    ..f()
                },
                2,
            ),
            (
                "every filter at once",
                DocumentFilter {
                    status: Some(DocumentStatus::Published),
                    doc_type: Some("contract".into()),
                    jurisdiction: Some("FR".into()),
                    tags_any: tags(&["lease"]),
                    updated_after: Some(s(1)),
                    updated_before: Some(s(2)),
                    effective_from: Some(date(2026, 1, 1)),
                    effective_to: Some(date(2026, 1, 1)),
                    q: Some("office".into()),
                },
                1,
            ),
            (
                "nothing matches",
                DocumentFilter { status: Some(DocumentStatus::Archived), doc_type: Some("memo".into()), ..f() },
                0,
            ),
        ];
        for (name, filter, count) in cases {
            let expected = by_id(live.iter().filter(|d| matches(d, &filter)).cloned().collect());
            assert_eq!(expected.len(), count, "{name}: the test's own expectation");
            assert!(expected.len() < live.len(), "{name}: the filter must leave something out");
            let listed = list_all(&store, &a, &filter, UPDATED_ASC).await;
            assert_eq!(listed.total, Some(count as u64), "{}: {name}: count", t.name);
            assert_eq!(by_id(listed.items.clone()), expected, "{}: {name}", t.name);
            let (paged, _) = page_through(&store, &a, &filter, UPDATED_ASC, 2).await;
            assert_eq!(paged, listed.items, "{}: {name}: pages of two give the same rows", t.name);
        }
        let all = list_all(&store, &a, &f(), UPDATED_ASC).await;
        assert_eq!(all.total, Some(live.len() as u64), "{}", t.name);

        let too_many = DocumentFilter { tags_any: (0..21).map(|i| format!("t{i}")).collect(), ..f() };
        assert!(store.list_documents(a.id, &too_many, UPDATED_ASC, None, 10, false).await.is_err(), "at most 20 tags");
        let twenty =
            DocumentFilter { tags_any: (0..19).map(|i| format!("t{i}")).chain(["finance".into()]).collect(), ..f() };
        assert_eq!(list_all(&store, &a, &twenty, UPDATED_ASC).await.total, Some(1), "twenty tags are fine");
    })
    .await;
}

/// The sort key as text that orders like the stores do for this test's data (lower-case ASCII titles; a missing
/// effective date as the empty string, before every date).
fn key_text(d: &Document, key: DocumentSortKey) -> String {
    match key {
        DocumentSortKey::UpdatedAt => d.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        DocumentSortKey::Title => d.title.clone(),
        DocumentSortKey::EffectiveDate => d.effective_date.map(|e| e.to_string()).unwrap_or_default(),
    }
}

/// Consecutive runs of equal keys, each as (key, sorted ids): the order a listing must follow, ties aside.
fn tie_groups(documents: &[Document], key: DocumentSortKey) -> Vec<(String, Vec<Uuid>)> {
    let mut groups: Vec<(String, Vec<Uuid>)> = Vec::new();
    for d in documents {
        let k = key_text(d, key);
        match groups.last_mut() {
            Some((last, ids)) if *last == k => ids.push(d.id),
            _ => groups.push((k, vec![d.id])),
        }
    }
    for (_, ids) in &mut groups {
        ids.sort();
    }
    groups
}

#[tokio::test]
async fn document_pages_follow_each_order_through_ties_and_missing_dates() {
    for_each_store("document_pages_follow_each_order_through_ties_and_missing_dates", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let titles = ["alpha", "bravo", "charlie", "delta", "echo", "foxtrot", "golf", "hotel"];
        let mut live = Vec::new();
        for n in 0..24u128 {
            let at = t0() + Duration::seconds((n / 3) as i64) + Duration::microseconds(250);
            let d = Document {
                title: titles[(n % 8) as usize].into(),
                effective_date: if n % 5 == 0 { None } else { Some(date(2026, 1, 1 + (n % 4) as u32)) },
                created_at: at,
                updated_at: at,
                ..document(&a, n)
            };
            store.create_document(&d, None, None).await.unwrap();
            live.push(d);
        }
        let gone = Document { title: "charlie".into(), ..document(&a, 40) };
        store.create_document(&gone, None, None).await.unwrap();
        store.delete_document(a.id, gone.id, 1, "oid-x", t0(), None).await.unwrap();
        store.create_document(&Document { title: "delta".into(), ..document(&b, 41) }, None, None).await.unwrap();

        for key in [DocumentSortKey::UpdatedAt, DocumentSortKey::Title, DocumentSortKey::EffectiveDate] {
            for descending in [false, true] {
                let sort = DocumentSort { key, descending };
                let name = format!("{}: {key:?} descending={descending}", t.name);
                let mut expected = live.clone();
                // SQLite's order among ties (ids as lower-case text); SQL Server orders tied GUIDs its own way.
                expected.sort_by_key(|d| (key_text(d, key), d.id.to_string()));
                if descending {
                    expected.reverse();
                }
                let full = list_all(&store, &a, &DocumentFilter::default(), sort).await;
                assert_eq!(full.total, Some(24), "{name}");
                assert_eq!(tie_groups(&full.items, key), tie_groups(&expected, key), "{name}: key order");
                assert!(tie_groups(&expected, key).len() < 24, "{name}: the data has ties");
                if t.name == "sqlite" {
                    assert_eq!(ids(&full.items), ids(&expected), "{name}: ties by id");
                }
                for size in [4, 5] {
                    let (paged, pages) = page_through(&store, &a, &DocumentFilter::default(), sort, size).await;
                    assert_eq!(ids(&paged), ids(&full.items), "{name}: pages of {size} match the unpaged order");
                    assert_eq!(pages, 24usize.div_ceil(size as usize), "{name}: no empty last page");
                }
            }
        }

        // The cursor of an undated document carries NO_EFFECTIVE_DATE.
        let sort = DocumentSort { key: DocumentSortKey::EffectiveDate, descending: false };
        let first = store.list_documents(a.id, &DocumentFilter::default(), sort, None, 1, false).await.unwrap();
        assert_eq!(first.items[0].effective_date, None, "{}: undated documents come first ascending", t.name);
        assert_eq!(first.next.map(|c| c.value), Some(SortValue::Date(NO_EFFECTIVE_DATE)));
    })
    .await;
}

#[tokio::test]
async fn document_pages_stay_exact_while_documents_are_written() {
    for_each_store("document_pages_stay_exact_while_documents_are_written", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        let other = t.second_handle().await;
        let before: Vec<Document> =
            (0..20).map(|n| Document { title: format!("t{n:02}"), ..document(&a, n) }).collect();
        for d in &before {
            store.create_document(d, None, None).await.unwrap();
        }
        let sort = DocumentSort { key: DocumentSortKey::Title, descending: false };
        let mut seen: Vec<Document> = Vec::new();
        let mut cursor: Option<DocumentCursor> = None;
        let mut pages = 0;
        loop {
            let page =
                store.list_documents(a.id, &DocumentFilter::default(), sort, cursor.as_ref(), 5, true).await.unwrap();
            seen.extend(page.items.iter().cloned());
            pages += 1;
            if pages == 2 {
                // Written by another process while a client pages (the cursor is at "t09").
                other
                    .create_document(&Document { title: "aaa".into(), ..document(&a, 100) }, None, None)
                    .await
                    .unwrap();
                other
                    .create_document(&Document { title: "zzz".into(), ..document(&a, 101) }, None, None)
                    .await
                    .unwrap();
                let edited = Document { body: Some("edited".into()), ..before[15].clone() };
                assert!(matches!(other.update_document(&edited, 1, None).await.unwrap(), Update::Updated(_)));
                other.delete_document(a.id, before[17].id, 1, "oid-x", t0(), None).await.unwrap();
            }
            if pages == 3 {
                assert_eq!(page.total, Some(21), "{}: the count sees the writes", t.name);
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let seen_ids = ids(&seen);
        let unique: HashSet<_> = seen_ids.iter().collect();
        assert_eq!(unique.len(), seen_ids.len(), "{}: no row appears twice", t.name);
        for (n, d) in before.iter().enumerate() {
            assert_eq!(unique.contains(&d.id), n != 17, "{}: t{n:02} seen unless deleted before its page", t.name);
        }
        assert!(!unique.contains(&doc_id(100)), "inserted before the cursor: not on a later page");
        assert!(unique.contains(&doc_id(101)), "inserted after the cursor: seen once");
        let edited = seen.iter().find(|d| d.id == before[15].id).unwrap();
        assert_eq!((edited.version, edited.body.as_deref()), (2, Some("edited")), "{}", t.name);
        assert_eq!(seen.len(), 20);
    })
    .await;
}

#[tokio::test]
async fn tenant_changes_apply_only_given_fields_and_check_the_plan() {
    for_each_store("tenant_changes_apply_only_given_fields_and_check_the_plan", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        store.create_plan(&plan("business", 1000, OveragePolicy::Allow), None).await.unwrap();
        let at = |h| t0() + Duration::hours(h);

        let renamed = TenantChanges { name: Some("Acme SAS".into()), ..Default::default() };
        let Update::Updated(v2) = store.update_tenant(a.id, &renamed, 1, at(1), None).await.unwrap() else {
            panic!("{}", t.name)
        };
        assert_eq!(v2, Tenant { name: "Acme SAS".into(), updated_at: at(1), version: 2, ..a.clone() });

        let upgrade =
            TenantChanges { plan_code: Some("business".into()), status: Some(TenantStatus::Suspended), name: None };
        let Update::Updated(v3) = store.update_tenant(a.id, &upgrade, 2, at(2), None).await.unwrap() else { panic!() };
        assert_eq!(
            v3,
            Tenant {
                plan_code: "business".into(),
                status: TenantStatus::Suspended,
                updated_at: at(2),
                version: 3,
                ..v2
            },
            "{}",
            t.name
        );

        let ghost = TenantChanges { plan_code: Some("ghost".into()), ..Default::default() };
        assert!(
            matches!(store.update_tenant(a.id, &ghost, 3, at(3), None).await, Err(StoreError::ForeignKey(_))),
            "{}",
            t.name
        );
        assert_eq!(store.get_tenant(a.id).await.unwrap(), Some(v3.clone()), "the refused change wrote nothing");
        assert_eq!(
            store.update_tenant(a.id, &renamed, 2, at(3), None).await.unwrap(),
            Update::VersionMismatch { current_version: 3 }
        );
        assert_eq!(
            store.update_tenant(Uuid::from_u128(404), &renamed, 1, at(3), None).await.unwrap(),
            Update::NotFound
        );
    })
    .await;
}

#[tokio::test]
async fn plans_are_listed_by_code_and_updated_conditionally() {
    for_each_store("plans_are_listed_by_code_and_updated_conditionally", |t| async move {
        let store = migrated(&t).await;
        assert!(store.list_plans().await.unwrap().is_empty());
        for code in ["pro", "basic", "enterprise"] {
            store.create_plan(&plan(code, 10, OveragePolicy::Block), None).await.unwrap();
        }
        let codes: Vec<String> = store.list_plans().await.unwrap().into_iter().map(|p| p.code).collect();
        assert_eq!(codes, ["basic", "enterprise", "pro"], "{}", t.name);

        let later = t0() + Duration::days(3) + Duration::microseconds(42);
        let changed = Plan {
            name: "Professional".into(),
            requests_per_minute: 600,
            burst: 50,
            monthly_quota_units: 1_000_000,
            overage_policy: OveragePolicy::Allow,
            currency: "USD".into(),
            base_price_micros: 99_000_000,
            overage_unit_price_micros: 500,
            created_at: later,
            updated_at: later,
            version: 7,
            ..plan("pro", 10, OveragePolicy::Block)
        };
        let Update::Updated(v2) = store.update_plan(&changed, 1, None, None).await.unwrap() else {
            panic!("{}", t.name)
        };
        assert_eq!(v2, Plan { created_at: t0(), version: 2, ..changed.clone() }, "created_at is kept");
        assert_eq!(store.get_plan("pro").await.unwrap(), Some(v2.clone()));
        assert_eq!(
            store.update_plan(&changed, 1, None, None).await.unwrap(),
            Update::VersionMismatch { current_version: 2 }
        );
        let ghost = Plan { code: "ghost".into(), ..changed };
        assert_eq!(store.update_plan(&ghost, 1, None, None).await.unwrap(), Update::NotFound);
        assert_eq!(store.list_plans().await.unwrap()[2], v2, "{}", t.name);
    })
    .await;
}

#[tokio::test]
async fn api_clients_are_listed_oldest_first_and_revoked_idempotently() {
    for_each_store("api_clients_are_listed_oldest_first_and_revoked_idempotently", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let client = |n: u128, tenant: &Tenant, created_at, roles: &[&str]| {
            registration(n, tenant, &format!("app-{n}"), created_at, roles)
        };
        // Created out of order; 3 and 2 tie on created_at (the id decides).
        let c1 = client(1, &a, t0() + Duration::seconds(2), &["Documents.Read", "Documents.Write"]);
        let c3 = client(3, &a, t0(), &[]);
        let c2 = client(2, &a, t0(), &["Usage.Read"]);
        let theirs = client(4, &b, t0() - Duration::days(1), &["Tenant.Admin"]);
        for c in [&c1, &c3, &c2, &theirs] {
            store.create_api_client(c, None).await.unwrap();
        }
        assert_eq!(store.list_api_clients(a.id).await.unwrap(), vec![c2.clone(), c3.clone(), c1.clone()], "{}", t.name);
        assert_eq!(store.list_api_clients(b.id).await.unwrap(), vec![theirs.clone()]);
        assert!(store.list_api_clients(Uuid::from_u128(404)).await.unwrap().is_empty());

        let now = t0() + Duration::hours(1);
        assert_eq!(store.revoke_api_client(b.id, c1.id, now, None).await.unwrap(), Update::NotFound, "{}", t.name);
        let home = a.entra_tenant_id.unwrap();
        let lookup = |app: &'static str| {
            let store = store.clone();
            async move { store.api_clients_for_app(home, app).await.unwrap() }
        };
        assert_eq!(lookup("app-1").await[0].status, ClientStatus::Active, "another tenant cannot revoke");
        let revoked = ApiClient { status: ClientStatus::Revoked, revoked_at: Some(now), version: 2, ..c1.clone() };
        assert_eq!(store.revoke_api_client(a.id, c1.id, now, None).await.unwrap(), Update::Updated(revoked.clone()));
        let again = store.revoke_api_client(a.id, c1.id, now + Duration::hours(1), None).await.unwrap();
        assert_eq!(again, Update::Updated(revoked.clone()), "{}: revoking twice changes nothing", t.name);
        assert_eq!(lookup("app-1").await, vec![revoked.clone()]);
        assert_eq!(store.list_api_clients(a.id).await.unwrap(), vec![c2, c3, revoked]);
        assert_eq!(store.revoke_api_client(a.id, Uuid::from_u128(404), now, None).await.unwrap(), Update::NotFound);
    })
    .await;
}

fn audit_input(n: u128, tenant_id: Option<Uuid>, minute: i64) -> AuditEventInput {
    AuditEventInput {
        id: Uuid::from_u128(0xA000 + n),
        tenant_id,
        occurred_at: t0() + Duration::minutes(minute) + Duration::nanoseconds(123_456_789),
        actor_oid: Some(format!("oid-{}", n % 2)),
        actor_app_id: Some(format!("app-{}", n % 3)),
        actor_tenant_id: Some("9000".into()),
        action: if n.is_multiple_of(2) { "patchDocument".into() } else { "createDocument".into() },
        resource_type: "documents".into(),
        resource_id: Some(format!("doc-{n}")),
        outcome: if n % 4 == 3 { AuditOutcome::Denied } else { AuditOutcome::Succeeded },
        request_id: Some(format!("req-{n}")),
        summary: format!("event {n} — ünïcode"),
        before_hash: n.is_multiple_of(2).then(|| "ab".repeat(32)),
        after_hash: Some("cd".repeat(32)),
        limiter_decision: Some("allowed minute r=4 month r=95 cost=5".into()),
    }
}

/// Checks a whole chain link by link with the shared verifier; returns its length.
fn assert_intact(events: &[AuditEvent]) -> usize {
    let mut verifier = meterline::metering::audit::ChainVerifier::default();
    for e in events {
        assert_eq!(verifier.check(e), None, "chain breaks at {}", e.chain_seq);
    }
    events.len()
}

#[tokio::test]
async fn audit_events_chain_per_tenant_and_list_newest_first_with_filters() {
    for_each_store("audit_events_chain_per_tenant_and_list_newest_first_with_filters", |t| async move {
        let store = migrated(&t).await;
        let (acme, other) = two_tenants(&store).await;
        let first: Vec<AuditEventInput> = vec![
            audit_input(1, Some(acme.id), 1),
            audit_input(2, Some(other.id), 2),
            audit_input(3, Some(acme.id), 3),
            audit_input(4, None, 4),
            audit_input(5, Some(acme.id), 5),
        ];
        assert_eq!(store.record_usage(&[], &first).await.unwrap(), 0);
        // A retried batch skips what it stored already; the new event goes to the end of the chain.
        let again = vec![audit_input(5, Some(acme.id), 5), audit_input(6, Some(acme.id), 6)];
        store.record_usage(&[], &again).await.unwrap();

        let chain = audit_chain_key(Some(acme.id));
        let events = store.audit_chain(&chain, 0, 100).await.unwrap();
        assert_eq!(events.iter().map(|e| e.chain_seq).collect::<Vec<_>>(), vec![1, 2, 3, 4], "{}", t.name);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3, 5, 6].map(|n| Uuid::from_u128(0xA000 + n)));
        assert_eq!(events[0].prev_hash, AUDIT_GENESIS_HASH);
        assert_eq!(assert_intact(&events), 4);
        assert_eq!(events[1], audit_input(3, Some(acme.id), 3).seal(2, &events[0].hash), "every column round-trips");
        assert_eq!(events[0].occurred_at.timestamp_subsec_nanos(), 123_456_000);
        let page = store.audit_chain(&chain, 2, 1).await.unwrap();
        assert_eq!(page.iter().map(|e| e.chain_seq).collect::<Vec<_>>(), vec![3]);
        let others = store.audit_chain(&audit_chain_key(Some(other.id)), 0, 100).await.unwrap();
        assert_eq!((others.len(), others[0].chain_seq), (1, 1), "each tenant has its own chain");
        let platform = store.audit_chain("platform", 0, 100).await.unwrap();
        assert_eq!((platform.len(), platform[0].tenant_id), (1, None));

        let all = AuditFilter::default();
        let listed = |filter: AuditFilter| {
            let store = store.clone();
            async move {
                let mut ids = Vec::new();
                let mut after = None;
                loop {
                    let page = store.list_audit_events(Some(acme.id), &filter, after.as_ref(), 2).await.unwrap();
                    assert!(page.items.len() <= 2);
                    ids.extend(page.items.iter().map(|e| e.id.as_u128() - 0xA000));
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break ids,
                    }
                }
            }
        };
        assert_eq!(listed(all.clone()).await, vec![6, 5, 3, 1], "{}: newest first, in pages", t.name);
        let by = |f: AuditFilter| listed(f);
        assert_eq!(by(AuditFilter { actor: Some("oid-0".into()), ..all.clone() }).await, vec![6]);
        assert_eq!(by(AuditFilter { actor: Some("app-0".into()), ..all.clone() }).await, vec![6, 3], "app id too");
        assert_eq!(by(AuditFilter { action: Some("createDocument".into()), ..all.clone() }).await, vec![5, 3, 1]);
        assert_eq!(by(AuditFilter { outcome: Some(AuditOutcome::Denied), ..all.clone() }).await, vec![3]);
        assert_eq!(by(AuditFilter { resource_id: Some("doc-5".into()), ..all.clone() }).await, vec![5]);
        assert_eq!(by(AuditFilter { resource_type: Some("plans".into()), ..all.clone() }).await, Vec::<u128>::new());
        let window = AuditFilter {
            from: Some(t0() + Duration::minutes(3) + Duration::nanoseconds(123_456_000)),
            to: Some(t0() + Duration::minutes(6)),
            ..all.clone()
        };
        assert_eq!(by(window).await, vec![5, 3], "from inclusive, to exclusive");
        let platform_page = store.list_audit_events(None, &all, None, 10).await.unwrap();
        assert_eq!(platform_page.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![Uuid::from_u128(0xA004)]);
    })
    .await;
}

#[tokio::test]
async fn audit_events_commit_with_their_usage_batch_or_not_at_all() {
    for_each_store("audit_events_commit_with_their_usage_batch_or_not_at_all", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        let usage = |n: u128, tenant_id: Uuid| UsageEvent {
            event_id: Uuid::from_u128(n),
            request_id: format!("req-{n}"),
            tenant_id: Some(tenant_id),
            client_id: None,
            principal_id: None,
            operation_id: "createDocument".into(),
            method: "POST".into(),
            route_template: "/api/v1/documents".into(),
            status: 201,
            units: 5,
            billable: true,
            overage_units: 0,
            latency_micros: 1,
            request_bytes: 0,
            response_bytes: 0,
            occurred_at: t0(),
            recorded_at: t0(),
        };
        let ghost = usage(2, Uuid::from_u128(404));
        assert!(
            store.record_usage(&[usage(1, acme.id), ghost], &[audit_input(1, Some(acme.id), 1)]).await.is_err(),
            "{}",
            t.name
        );
        assert!(store.audit_chain(&audit_chain_key(Some(acme.id)), 0, 10).await.unwrap().is_empty(), "rolled back");
        assert_eq!(store.record_usage(&[usage(1, acme.id)], &[audit_input(1, Some(acme.id), 1)]).await.unwrap(), 1);
        assert_eq!(store.audit_chain(&audit_chain_key(Some(acme.id)), 0, 10).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn two_handles_appending_to_one_chain_concurrently_keep_one_unbroken_chain() {
    for_each_store("two_handles_appending_to_one_chain_concurrently_keep_one_unbroken_chain", |t| async move {
        let store = migrated(&t).await;
        let other = t.second_handle().await;
        let tenant_id = Some(Uuid::from_u128(0x77));
        let appends = (0..40u128).map(|n| {
            let handle = if n % 2 == 0 { store.clone() } else { other.clone() };
            async move {
                // Two events per batch: one for the shared chain, one for the platform chain.
                handle.record_usage(&[], &[audit_input(n, tenant_id, 1), audit_input(100 + n, None, 1)]).await
            }
        });
        for result in futures_util::future::join_all(appends).await {
            result.unwrap_or_else(|e| panic!("{}: append failed: {e:?}", t.name));
        }
        let events = store.audit_chain(&audit_chain_key(tenant_id), 0, 100).await.unwrap();
        assert_eq!(assert_intact(&events), 40, "{}", t.name);
        assert_eq!(events.last().unwrap().chain_seq, 40);
        assert_eq!(assert_intact(&store.audit_chain("platform", 0, 100).await.unwrap()), 40);
    })
    .await;
}

#[tokio::test]
async fn plan_cost_overrides_are_replaced_whole() {
    for_each_store("plan_cost_overrides_are_replaced_whole", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
        assert!(store.plan_operation_costs("pro").await.unwrap().is_empty());
        let first = vec![("listDocuments".to_owned(), 3), ("getDocument".to_owned(), 0)];
        store.set_plan_operation_costs("pro", &first).await.unwrap();
        assert_eq!(
            store.plan_operation_costs("pro").await.unwrap(),
            vec![("getDocument".to_owned(), 0), ("listDocuments".to_owned(), 3)],
            "{}: sorted by operation id",
            t.name
        );
        store.set_plan_operation_costs("pro", &[("getMe".to_owned(), 2)]).await.unwrap();
        assert_eq!(
            store.plan_operation_costs("pro").await.unwrap(),
            vec![("getMe".to_owned(), 2)],
            "replaced, not merged"
        );
        assert!(matches!(store.set_plan_operation_costs("ghost", &first).await, Err(StoreError::ForeignKey(_))));
        assert!(store.plan_operation_costs("ghost").await.unwrap().is_empty());
    })
    .await;
}

#[tokio::test]
async fn a_write_commits_its_ledger_in_its_own_transaction_only_when_it_takes_effect() {
    for_each_store("a_write_commits_its_ledger_in_its_own_transaction_only_when_it_takes_effect", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        let ledger = |n: u128| Ledger {
            usage: UsageEvent {
                event_id: Uuid::from_u128(0x1E_0000 + n),
                request_id: format!("req-{n}"),
                tenant_id: Some(acme.id),
                client_id: Some("app-1".into()),
                principal_id: Some("oid-1".into()),
                operation_id: "patchDocument".into(),
                method: "PATCH".into(),
                route_template: "/api/v1/documents/{id}".into(),
                status: 200,
                units: 5,
                billable: true,
                overage_units: 0,
                latency_micros: 1,
                request_bytes: 10,
                response_bytes: 20,
                occurred_at: t0(),
                recorded_at: t0(),
            },
            audit: Some(audit_input(n, Some(acme.id), 1)),
        };
        let chain = audit_chain_key(Some(acme.id));
        let records = || async { (store.count_usage_events(acme.id).await.unwrap(), store.audit_chain(&chain, 0, 100).await.unwrap()) };

        let doc = document(&acme, 1);
        store.create_document(&doc, None, Some(&ledger(1))).await.unwrap();
        let (usage, audit) = records().await;
        assert_eq!((usage, audit.len()), (1, 1), "{}: a create commits its records", t.name);
        assert_eq!(audit[0].id, ledger(1).audit.unwrap().id);

        assert!(store.create_document(&doc, None, Some(&ledger(2))).await.is_err(), "the id is taken");
        assert_eq!(store.update_document(&doc, 7, Some(&ledger(3))).await.unwrap(), Update::VersionMismatch { current_version: 1 });
        assert_eq!(store.delete_document(acme.id, doc.id, 7, "oid-1", t0(), Some(&ledger(4))).await.unwrap(), Update::VersionMismatch { current_version: 1 });
        let other = tenant(2, "ghost-plan", t0());
        assert!(matches!(store.create_tenant(&other, Some(&ledger(5))).await, Err(StoreError::ForeignKey(_))));
        assert_eq!(store.revoke_api_client(acme.id, Uuid::from_u128(404), t0(), Some(&ledger(6))).await.unwrap(), Update::NotFound);
        let (usage, audit) = records().await;
        assert_eq!((usage, audit.len()), (1, 1), "{}: writes that did not take effect leave no records", t.name);

        assert!(matches!(store.update_document(&doc, 1, Some(&ledger(7))).await.unwrap(), Update::Updated(_)));
        assert_eq!(store.delete_document(acme.id, doc.id, 2, "oid-1", t0(), Some(&ledger(8))).await.unwrap(), Update::Updated(()));
        // The record stage writes the same ids again later: nothing is added.
        let again: Vec<Ledger> = [1, 7, 8].map(ledger).into();
        let usage_again: Vec<UsageEvent> = again.iter().map(|l| l.usage.clone()).collect();
        let audit_again: Vec<AuditEventInput> = again.iter().filter_map(|l| l.audit.clone()).collect();
        assert_eq!(store.record_usage(&usage_again, &audit_again).await.unwrap(), 0, "{}", t.name);
        let (usage, audit) = records().await;
        assert_eq!((usage, audit.len()), (3, 3), "{}: one record per request", t.name);
        assert_eq!(assert_intact(&audit), 3);

        // A plan change and its cost overrides are one write: both or neither, with the ledger.
        let mut metered = store.get_plan("metered").await.unwrap().unwrap();
        metered.name = "Renamed".into();
        let costs = vec![("getDocument".to_owned(), 4)];
        assert_eq!(
            store.update_plan(&metered, 5, Some(&costs), Some(&ledger(9))).await.unwrap(),
            Update::VersionMismatch { current_version: 1 }
        );
        assert!(store.plan_operation_costs("metered").await.unwrap().is_empty(), "{}: a refused change sets no costs", t.name);
        assert!(matches!(store.update_plan(&metered, 1, Some(&costs), Some(&ledger(10))).await.unwrap(), Update::Updated(p) if p.version == 2));
        assert_eq!(store.plan_operation_costs("metered").await.unwrap(), costs);
        assert_eq!(records().await.0, 4);
    })
    .await;
}
