//! The storage contract for quota debits, rate limits, admission, usage events and ledgers.

use super::*;

fn debit(tenant: &Tenant, quota: i64, policy: OveragePolicy, units: i64) -> QuotaDebit {
    QuotaDebit {
        tenant_id: tenant.id,
        period_start: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
        period_end: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        quota_units: quota,
        overage_policy: policy,
        plan_code: tenant.plan_code.clone(),
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

/// A step of client `app-1`'s rate limit at `now_micros`: 60 a minute, a burst of 10.
fn take(now_micros: i64) -> RateLimitTake {
    RateLimitTake {
        tenant_id: Uuid::from_u128(1),
        client_id: "app-1".into(),
        now_micros,
        emission_interval_micros: 1_000_000,
        burst: 10,
    }
}

#[tokio::test]
async fn the_rate_limit_state_is_shared_and_exact() {
    for_each_store("the_rate_limit_state_is_shared_and_exact", |t| async move {
        let store = migrated(&t).await;
        let other = t.second_handle().await;
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
async fn batches_of_rate_steps_across_handles_never_exceed_what_single_steps_would_allow() {
    for_each_store("batches_of_rate_steps_across_handles", |t| async move {
        let store = migrated(&t).await;
        let other = t.second_handle().await;
        let now = 1_800_000_000_000_000;
        let batches = (0..12).map(|i| {
            let store = if i % 2 == 0 { store.clone() } else { other.clone() };
            async move { store.take_rate_tokens(&take(now), 3).await.unwrap() }
        });
        let batches = futures_util::future::join_all(batches).await;
        assert_eq!(
            batches.iter().map(|b| b.granted).sum::<i64>(),
            10,
            "{}: the burst, in batches of at most 3",
            t.name
        );
        assert!(batches.iter().all(|b| b.granted <= 3));
        let refused = batches.iter().find(|b| b.granted == 0).unwrap();
        assert_eq!(refused.retry_after_micros, 1_000_000);
        // Two intervals later two steps are free: a batch takes them both, and single steps see the same state.
        assert_eq!(store.take_rate_tokens(&take(now + 2_000_000), 5).await.unwrap().granted, 2);
        assert!(!other.take_rate_limit(&take(now + 2_000_000)).await.unwrap().allowed);
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
            lease_id: None,
            refusal: None,
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
                lease_id: None,
                refusal: None,
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
        assert_eq!(store.revoke_api_client(acme.id, Uuid::from_u128(404), 1, t0(), Some(&ledger(6))).await.unwrap(), Update::NotFound);
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
