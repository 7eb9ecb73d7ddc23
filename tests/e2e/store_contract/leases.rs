//! The storage contract for quota leases: grants (whole, partial, none), settlement from the usage events that
//! name a lease (exact, idempotent), reclaiming a crashed holder's expired lease, and concurrent grants that never
//! take a `block` quota past its limit.

use super::*;

fn february() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()
}

fn request(tenant: &Tenant, quota: i64, policy: OveragePolicy, n: u128, want: i64, min: i64) -> QuotaLeaseRequest {
    QuotaLeaseRequest {
        lease_id: Uuid::from_u128(0x1EA5E000 + n),
        holder: format!("process-{}", n % 3),
        debit: QuotaDebit {
            tenant_id: tenant.id,
            period_start: february(),
            period_end: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            quota_units: quota,
            overage_policy: policy,
            plan_code: tenant.plan_code.clone(),
            units: want,
            now: t0(),
        },
        min_units: min,
        expires_at: t0() + Duration::seconds(5),
        reclaim_before: t0() - Duration::seconds(30),
    }
}

/// A usage event of `units` spent from `lease` (billable unless the request failed).
fn spent(tenant: &Tenant, lease: Uuid, n: u128, units: i64, billable: bool) -> UsageEvent {
    UsageEvent {
        event_id: Uuid::from_u128(0xE7E47000 + n),
        request_id: format!("req-{n}"),
        tenant_id: Some(tenant.id),
        client_id: Some("app-1".into()),
        principal_id: None,
        operation_id: "getDocument".into(),
        method: "GET".into(),
        route_template: "/api/v1/documents/{id}".into(),
        status: if billable { 200 } else { 503 },
        units,
        billable,
        overage_units: 0,
        latency_micros: 900,
        request_bytes: 0,
        response_bytes: 100,
        occurred_at: t0(),
        recorded_at: t0(),
        lease_id: Some(lease),
        refusal: None,
    }
}

async fn used(store: &Arc<dyn Store>, tenant: &Tenant) -> (i64, i64) {
    let q = store.quota_usage(tenant.id, february()).await.unwrap().unwrap();
    (q.units_used, q.overage_units)
}

#[tokio::test]
async fn a_lease_takes_what_is_left_and_settles_back_what_its_events_did_not_spend() {
    for_each_store("a_lease_takes_what_is_left_and_settles_back_what_its_events_did_not_spend", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        let first = request(&acme, 100, OveragePolicy::Block, 1, 60, 1);
        assert_eq!(
            store.grant_quota_lease(&first).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 60, first_unit: 0, units_used: 60, quota_units: 100 },
            "{}",
            t.name
        );
        // Less is left than asked for: a partial grant.
        let second = request(&acme, 100, OveragePolicy::Block, 2, 60, 1);
        assert_eq!(
            store.grant_quota_lease(&second).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 40, first_unit: 60, units_used: 100, quota_units: 100 }
        );
        assert_eq!(
            store.grant_quota_lease(&request(&acme, 100, OveragePolicy::Block, 3, 5, 1)).await.unwrap(),
            QuotaLeaseGrant::Exhausted { units_used: 100, quota_units: 100 },
            "nothing left"
        );
        assert!(store.get_quota_lease(Uuid::from_u128(0x1EA5E000 + 3)).await.unwrap().is_none(), "no lease row");
        // The first lease spent 7 units in three requests and failed one (not billable); the second spent 0.
        let events = [
            spent(&acme, first.lease_id, 1, 2, true),
            spent(&acme, first.lease_id, 2, 5, true),
            spent(&acme, first.lease_id, 3, 4, false),
        ];
        store.record_usage_events(&events).await.unwrap();
        let settled = store.settle_quota_lease(first.lease_id, t0()).await.unwrap().unwrap();
        assert_eq!(settled, SettledQuotaLease { granted_units: 60, spent_units: 7, returned_units: 53 });
        assert_eq!(used(&store, &acme).await, (47, 0));
        // Settling again changes nothing.
        assert_eq!(store.settle_quota_lease(first.lease_id, t0()).await.unwrap(), Some(settled));
        assert_eq!(used(&store, &acme).await, (47, 0));
        assert_eq!(store.settle_quota_lease(second.lease_id, t0()).await.unwrap().unwrap().returned_units, 40);
        assert_eq!(used(&store, &acme).await, (7, 0), "the counter equals the billable units spent");
        let stored = store.get_quota_lease(first.lease_id).await.unwrap().unwrap();
        assert_eq!((stored.granted_units, stored.first_unit, stored.spent_units), (60, 0, Some(7)));
        assert_eq!(
            (stored.holder.as_str(), stored.settled_at, stored.period_start),
            ("process-1", Some(t0()), february())
        );
        assert_eq!(store.settle_quota_lease(Uuid::from_u128(0xBAD), t0()).await.unwrap(), None);
    })
    .await;
}

#[tokio::test]
async fn fewer_units_left_than_one_request_costs_grant_nothing_under_block_and_anything_under_allow() {
    for_each_store("fewer_units_left_than_one_request_costs", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 10, OveragePolicy::Block).await;
        store.grant_quota_lease(&request(&acme, 10, OveragePolicy::Block, 1, 8, 1)).await.unwrap();
        assert_eq!(
            store.grant_quota_lease(&request(&acme, 10, OveragePolicy::Block, 2, 5, 3)).await.unwrap(),
            QuotaLeaseGrant::Exhausted { units_used: 8, quota_units: 10 },
            "{}: 2 left, a request costs 3",
            t.name
        );

        let other = tenant(2, "metered", t0());
        store.create_tenant(&other, None).await.unwrap();
        let allow = |n, want| request(&other, 10, OveragePolicy::Allow, n, want, 1);
        store.grant_quota_lease(&allow(10, 8)).await.unwrap();
        // The period keeps its snapshot: `allow` grants beyond the quota, and the counter counts the overage.
        assert_eq!(
            store.grant_quota_lease(&allow(11, 5)).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 5, first_unit: 8, units_used: 13, quota_units: 10 }
        );
        assert_eq!(used(&store, &other).await, (13, 3));
        store.record_usage_events(&[spent(&other, allow(11, 5).lease_id, 20, 1, true)]).await.unwrap();
        store.settle_quota_lease(allow(11, 5).lease_id, t0()).await.unwrap();
        assert_eq!(used(&store, &other).await, (9, 0), "four units back: under the quota again");
    })
    .await;
}

#[tokio::test]
async fn a_crashed_holders_expired_lease_is_reclaimed_exactly_by_the_next_grant_or_the_sweep() {
    for_each_store("a_crashed_holders_expired_lease_is_reclaimed", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        // A holder takes 50, spends 12 in durable events, then dies without settling.
        let crashed = request(&acme, 100, OveragePolicy::Block, 1, 50, 1);
        store.grant_quota_lease(&crashed).await.unwrap();
        store.record_usage_events(&[spent(&acme, crashed.lease_id, 1, 12, true)]).await.unwrap();
        // While it has not expired beyond the reclaim margin, another grant leaves it alone.
        let early = request(&acme, 100, OveragePolicy::Block, 2, 100, 1);
        assert_eq!(
            store.grant_quota_lease(&early).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 50, first_unit: 50, units_used: 100, quota_units: 100 },
            "{}",
            t.name
        );
        store.settle_quota_lease(early.lease_id, t0()).await.unwrap();
        assert_eq!(used(&store, &acme).await, (50, 0));
        // Later, the next grant of the period reclaims it first: 38 unspent units come back before it is sized.
        let later = t0() + Duration::minutes(5);
        let next = QuotaLeaseRequest {
            debit: QuotaDebit { now: later, ..request(&acme, 100, OveragePolicy::Block, 3, 100, 1).debit },
            reclaim_before: later - Duration::seconds(30),
            expires_at: later + Duration::seconds(5),
            ..request(&acme, 100, OveragePolicy::Block, 3, 100, 1)
        };
        assert_eq!(
            store.grant_quota_lease(&next).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 88, first_unit: 12, units_used: 100, quota_units: 100 }
        );
        let reclaimed = store.get_quota_lease(crashed.lease_id).await.unwrap().unwrap();
        assert_eq!((reclaimed.spent_units, reclaimed.settled_at), (Some(12), Some(later)));

        // The sweep (the rollup job's) settles expired leases of every tenant, a bounded number at a time.
        let other = tenant(2, "metered", t0());
        store.create_tenant(&other, None).await.unwrap();
        for n in 10..13 {
            store.grant_quota_lease(&request(&other, 100, OveragePolicy::Block, n, 10, 1)).await.unwrap();
        }
        assert_eq!(store.settle_expired_quota_leases(t0(), later, 10).await.unwrap(), 0, "none expired before t0");
        let sweep_at = later + Duration::minutes(1);
        assert_eq!(store.settle_expired_quota_leases(later, sweep_at, 2).await.unwrap(), 2);
        assert_eq!(store.settle_expired_quota_leases(later, sweep_at, 10).await.unwrap(), 1);
        assert_eq!(store.settle_expired_quota_leases(later, sweep_at, 10).await.unwrap(), 0);
        assert_eq!(used(&store, &other).await, (0, 0));
        // `next` has not expired before `later`: still held.
        assert!(store.get_quota_lease(next.lease_id).await.unwrap().unwrap().settled_at.is_none());
    })
    .await;
}

#[tokio::test]
async fn concurrent_grants_from_two_handles_never_take_a_block_quota_past_its_limit() {
    for_each_store("concurrent_grants_never_take_a_block_quota_past_its_limit", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        let other = t.second_handle().await;
        let grants = (0..40u128).map(|n| {
            let store = if n % 2 == 0 { store.clone() } else { other.clone() };
            let request = request(&acme, 100, OveragePolicy::Block, n, 7, 1);
            async move { store.grant_quota_lease(&request).await.unwrap() }
        });
        let outcomes = futures_util::future::join_all(grants).await;
        let total: i64 = outcomes
            .iter()
            .map(|o| match o {
                QuotaLeaseGrant::Granted { units, .. } => *units,
                QuotaLeaseGrant::Exhausted { .. } => 0,
            })
            .sum();
        assert_eq!(total, 100, "{}: every unit granted once, none beyond the quota", t.name);
        let mut ranges: Vec<(i64, i64)> = outcomes
            .iter()
            .filter_map(|o| match o {
                QuotaLeaseGrant::Granted { units, first_unit, .. } => Some((*first_unit, *units)),
                QuotaLeaseGrant::Exhausted { .. } => None,
            })
            .collect();
        ranges.sort_unstable();
        let mut next = 0;
        for (first, units) in ranges {
            assert_eq!(first, next, "the grants' unit ranges tile the quota");
            next = first + units;
        }
        assert_eq!(used(&store, &acme).await, (100, 0));
    })
    .await;
}

#[tokio::test]
async fn an_upgrade_applies_to_the_period_at_the_next_grant_and_a_downgrade_does_not() {
    for_each_store("an_upgrade_applies_at_the_next_grant", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 10, OveragePolicy::Block).await;
        store.grant_quota_lease(&request(&acme, 10, OveragePolicy::Block, 1, 10, 1)).await.unwrap();
        assert!(matches!(
            store.grant_quota_lease(&request(&acme, 10, OveragePolicy::Block, 2, 1, 1)).await.unwrap(),
            QuotaLeaseGrant::Exhausted { units_used: 10, quota_units: 10 }
        ));
        // The tenant moves to a plan with 25 units: the next grant sees them, and the period is billed on it.
        let bigger = QuotaLeaseRequest {
            debit: QuotaDebit {
                plan_code: "bigger".into(),
                ..request(&acme, 25, OveragePolicy::Block, 3, 20, 1).debit
            },
            ..request(&acme, 25, OveragePolicy::Block, 3, 20, 1)
        };
        assert_eq!(
            store.grant_quota_lease(&bigger).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 15, first_unit: 10, units_used: 25, quota_units: 25 },
            "{}",
            t.name
        );
        // Back to 10: the period keeps 25 until it ends, and the plan it is billed on.
        let period_plan = || async { store.quota_usage(acme.id, february()).await.unwrap().unwrap().plan_code };
        assert_eq!(period_plan().await.as_deref(), Some("bigger"), "{}", t.name);
        let small = QuotaLeaseRequest {
            debit: QuotaDebit { plan_code: "small".into(), ..request(&acme, 10, OveragePolicy::Block, 4, 5, 1).debit },
            ..request(&acme, 10, OveragePolicy::Block, 4, 5, 1)
        };
        let lower = store.grant_quota_lease(&small).await.unwrap();
        assert_eq!(lower, QuotaLeaseGrant::Exhausted { units_used: 25, quota_units: 25 });
        assert_eq!(store.quota_usage(acme.id, february()).await.unwrap().unwrap().quota_units, 25);
        assert_eq!(period_plan().await.as_deref(), Some("bigger"), "{}: a downgrade waits", t.name);
        // To a pay-as-you-go plan (`allow`, even with a smaller quota): an upgrade, at once; the units beyond the
        // period's quota are overage.
        let payg = QuotaLeaseRequest {
            debit: QuotaDebit { plan_code: "payg".into(), ..request(&acme, 10, OveragePolicy::Allow, 5, 4, 1).debit },
            ..request(&acme, 10, OveragePolicy::Allow, 5, 4, 1)
        };
        assert_eq!(
            store.grant_quota_lease(&payg).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 4, first_unit: 25, units_used: 29, quota_units: 25 },
            "{}",
            t.name
        );
        let period = store.quota_usage(acme.id, february()).await.unwrap().unwrap();
        assert_eq!((period.overage_policy, period.units_used, period.overage_units), (OveragePolicy::Allow, 29, 4));
        // An upgrade of the policy only (its quota is smaller): the period keeps its quota and the plan it is billed
        // on, never the larger quota at the smaller plan's price; the plan that allowed the overage prices it.
        assert_eq!(period.plan_code.as_deref(), Some("bigger"), "{}", t.name);
        assert_eq!(period.overage_plan_code.as_deref(), Some("payg"), "{}", t.name);
        // A later upgrade by quota bills the whole period on the new plan, its overage price included.
        let biggest = QuotaLeaseRequest {
            debit: QuotaDebit {
                plan_code: "biggest".into(),
                ..request(&acme, 40, OveragePolicy::Allow, 7, 1, 1).debit
            },
            ..request(&acme, 40, OveragePolicy::Allow, 7, 1, 1)
        };
        assert!(matches!(store.grant_quota_lease(&biggest).await.unwrap(), QuotaLeaseGrant::Granted { .. }));
        let period = store.quota_usage(acme.id, february()).await.unwrap().unwrap();
        assert_eq!(
            (period.plan_code.as_deref(), period.overage_plan_code.as_deref(), period.quota_units),
            (Some("biggest"), None, 40),
            "{}",
            t.name
        );
        // And back to `block`: a downgrade, from the next period.
        let back = store.grant_quota_lease(&request(&acme, 25, OveragePolicy::Block, 8, 1, 1)).await.unwrap();
        assert!(matches!(back, QuotaLeaseGrant::Granted { units: 1, .. }), "{}: {back:?}", t.name);
    })
    .await;
}

/// The thresholds announced so far: (threshold, the `unitsUsed` the event states).
async fn thresholds(store: &Arc<dyn Store>) -> Vec<(i64, i64)> {
    let rows = store.list_outbox(0, 100).await.unwrap();
    rows.iter()
        .filter(|r| r.message.event_type == "meterline.quota.threshold-crossed.v1")
        .map(|r| {
            let d: serde_json::Value = serde_json::from_str(&r.message.payload).unwrap();
            (d["threshold"].as_i64().unwrap(), d["unitsUsed"].as_i64().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn thresholds_are_announced_on_billable_usage_not_on_units_a_lease_holds() {
    for_each_store("thresholds_are_announced_on_billable_usage_not_on_units_a_lease_holds", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        // A grant of 90 takes the counter to 90 % with nothing used.
        let first = request(&acme, 100, OveragePolicy::Block, 1, 90, 1);
        store.grant_quota_lease(&first).await.unwrap();
        assert_eq!(thresholds(&store).await, vec![], "{}: a grant is not usage", t.name);
        // 79 units spent, then another grant (the counter at 95): billable usage is still below 80 %.
        let events: Vec<_> = (1..=79).map(|n| spent(&acme, first.lease_id, n, 1, true)).collect();
        store.record_usage_events(&events).await.unwrap();
        let second = request(&acme, 100, OveragePolicy::Block, 2, 5, 1);
        store.grant_quota_lease(&second).await.unwrap();
        assert_eq!(thresholds(&store).await, vec![], "{}: 79 of 100 used", t.name);
        // One more billable unit and a failed request: 80 % is announced at the settlement, with what was used.
        store
            .record_usage_events(&[
                spent(&acme, first.lease_id, 80, 1, true),
                spent(&acme, first.lease_id, 81, 3, false),
            ])
            .await
            .unwrap();
        store.settle_quota_lease(first.lease_id, t0()).await.unwrap();
        assert_eq!(thresholds(&store).await, vec![(80, 80)], "{}", t.name);
        store.settle_quota_lease(second.lease_id, t0()).await.unwrap();
        assert_eq!(used(&store, &acme).await, (80, 0));
        // The rest of the quota granted and spent: 100 % is announced when that lease settles.
        let third = request(&acme, 100, OveragePolicy::Block, 3, 20, 1);
        store.grant_quota_lease(&third).await.unwrap();
        assert_eq!(thresholds(&store).await, vec![(80, 80)], "{}: the counter at 100, 80 used", t.name);
        let events: Vec<_> = (100..120).map(|n| spent(&acme, third.lease_id, n, 1, true)).collect();
        store.record_usage_events(&events).await.unwrap();
        let exhausted = store.grant_quota_lease(&request(&acme, 100, OveragePolicy::Block, 4, 1, 1)).await.unwrap();
        assert_eq!(exhausted, QuotaLeaseGrant::Exhausted { units_used: 100, quota_units: 100 });
        store.settle_quota_lease(third.lease_id, t0()).await.unwrap();
        assert_eq!(thresholds(&store).await, vec![(80, 80), (100, 100)], "{}", t.name);
    })
    .await;
}
