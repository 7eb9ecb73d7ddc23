//! The storage contract for quota grants: a grant raises its period's quota at once (creating the period row),
//! lease grants see it, revocation and expiry give back exactly the unused part, and a plan upgrade keeps the
//! granted units on top of the new plan's quota.

use super::*;

fn february() -> NaiveDate {
    NaiveDate::from_ymd_opt(2026, 2, 1).unwrap()
}

fn feb_plan(quota: i64) -> PeriodPlan {
    PeriodPlan {
        period_end: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
        quota_units: quota,
        overage_policy: OveragePolicy::Block,
        plan_code: "pro".into(),
    }
}

fn grant(tenant: &Tenant, n: u128, units: i64, expires_at: DateTime<Utc>) -> QuotaGrant {
    QuotaGrant {
        id: Uuid::from_u128(0x6_0000 + n),
        tenant_id: tenant.id,
        period_start: february(),
        units,
        reason: format!("credit {n}"),
        granted_by: "platform-admin".into(),
        granted_at: t0(),
        expires_at,
        ended_at: None,
        revoked_by: None,
        returned_units: None,
        version: 1,
    }
}

/// A lease request of `want` units of February at `now` under a `block` plan of `quota`.
fn lease(tenant: &Tenant, n: u128, quota: i64, want: i64, now: DateTime<Utc>) -> QuotaLeaseRequest {
    QuotaLeaseRequest {
        lease_id: Uuid::from_u128(0x7_0000 + n),
        holder: "process-1".into(),
        debit: QuotaDebit {
            tenant_id: tenant.id,
            period_start: february(),
            period_end: NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(),
            quota_units: quota,
            overage_policy: OveragePolicy::Block,
            plan_code: tenant.plan_code.clone(),
            units: want,
            now,
        },
        min_units: 1,
        expires_at: now + Duration::seconds(5),
        reclaim_before: now - Duration::seconds(60),
    }
}

async fn period(store: &Arc<dyn Store>, tenant: &Tenant) -> (i64, i64, i64) {
    let q = store.quota_usage(tenant.id, february()).await.unwrap().unwrap();
    (q.quota_units, q.granted_units, q.units_used)
}

#[tokio::test]
async fn a_grant_raises_the_period_at_once_and_gives_back_only_its_unused_part() {
    for_each_store("a_grant_raises_the_period_at_once_and_gives_back_only_its_unused_part", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let late = t0() + Duration::days(20);
        // The first use of February is a grant: the period row starts from the plan (10) plus the grant.
        let five = grant(&a, 1, 5, late);
        store.create_quota_grant(&five, &feb_plan(10), None, None).await.unwrap();
        assert_eq!(period(&store, &a).await, (15, 5, 0), "{}", t.name);
        // A lease takes all 15; the 16th unit is refused.
        let took = store.grant_quota_lease(&lease(&a, 1, 10, 100, t0())).await.unwrap();
        assert!(matches!(took, QuotaLeaseGrant::Granted { units: 15, .. }), "{}: {took:?}", t.name);
        assert!(matches!(
            store.grant_quota_lease(&lease(&a, 2, 10, 1, t0())).await.unwrap(),
            QuotaLeaseGrant::Exhausted { units_used: 15, quota_units: 15 }
        ));
        // A second grant serves the blocked tenant at the next lease grant.
        let three = grant(&a, 2, 3, late);
        store.create_quota_grant(&three, &feb_plan(10), None, None).await.unwrap();
        assert!(matches!(
            store.grant_quota_lease(&lease(&a, 3, 10, 100, t0())).await.unwrap(),
            QuotaLeaseGrant::Granted { units: 3, units_used: 18, quota_units: 18, .. }
        ));
        assert_eq!(
            store.list_quota_grants(a.id, february()).await.unwrap(),
            vec![five.clone(), three.clone()],
            "{}",
            t.name
        );
        assert_eq!(store.list_quota_grants(b.id, february()).await.unwrap(), vec![]);
        assert_eq!(store.get_quota_grant(b.id, five.id).await.unwrap(), None, "another tenant's grant is not found");

        // Revoking a fully used grant gives nothing back; a stale version or another tenant changes nothing.
        assert_eq!(
            store.revoke_quota_grant(a.id, three.id, 7, "ops", t0(), None).await.unwrap(),
            Update::VersionMismatch { current_version: 1 }
        );
        assert_eq!(store.revoke_quota_grant(b.id, three.id, 1, "ops", t0(), None).await.unwrap(), Update::NotFound);
        let Update::Updated(revoked) = store.revoke_quota_grant(a.id, three.id, 1, "ops", t0(), None).await.unwrap()
        else {
            panic!("{}", t.name)
        };
        assert_eq!((revoked.returned_units, revoked.revoked_by.as_deref(), revoked.version), (Some(0), Some("ops"), 2));
        assert_eq!(period(&store, &a).await, (18, 8, 18), "{}: the used part stays granted", t.name);
        assert_eq!(
            store.revoke_quota_grant(a.id, three.id, 1, "ops", t0(), None).await.unwrap(),
            Update::Updated(revoked.clone()),
            "an ended grant is answered as it is"
        );

        // Settling the lease with 12 units spent returns 6: the counter is at 12 of 18.
        let QuotaLeaseGrant::Granted { .. } = took else { unreachable!() };
        let first = Uuid::from_u128(0x7_0001);
        let spent: Vec<UsageEvent> = (0..12)
            .map(|n| UsageEvent {
                event_id: Uuid::from_u128(0xE_0000 + n),
                request_id: format!("req-{n}"),
                tenant_id: Some(a.id),
                client_id: None,
                principal_id: None,
                operation_id: "getDocument".into(),
                method: "GET".into(),
                route_template: "/api/v1/documents/{id}".into(),
                status: 200,
                units: 1,
                billable: true,
                overage_units: 0,
                latency_micros: 1,
                request_bytes: 0,
                response_bytes: 1,
                occurred_at: t0(),
                recorded_at: t0(),
                lease_id: Some(first),
                refusal: None,
            })
            .collect();
        store.record_usage(&spent, &[]).await.unwrap();
        store.settle_quota_lease(first, t0()).await.unwrap();
        store.settle_quota_lease(Uuid::from_u128(0x7_0003), t0()).await.unwrap();
        assert_eq!(period(&store, &a).await, (18, 8, 12), "{}", t.name);

        // The five-unit grant expires: the counter can give back 6 but the grant only holds 5; a sweep before
        // the expiry ends nothing.
        assert_eq!(store.expire_quota_grants(late - Duration::seconds(1), 100).await.unwrap(), 0);
        assert_eq!(store.expire_quota_grants(late, 100).await.unwrap(), 1, "{}", t.name);
        assert_eq!(period(&store, &a).await, (13, 3, 12), "{}: the plan's 10 and the 3 used granted units", t.name);
        let expired = store.get_quota_grant(a.id, five.id).await.unwrap().unwrap();
        assert_eq!((expired.ended_at, expired.revoked_by, expired.returned_units), (Some(late), None, Some(5)));
        assert_eq!(store.expire_quota_grants(late + Duration::days(1), 100).await.unwrap(), 0, "once");

        // An upgrade to 20 units keeps the 3 granted units on top.
        let upgraded = store.grant_quota_lease(&lease(&a, 4, 20, 100, late)).await.unwrap();
        assert!(
            matches!(upgraded, QuotaLeaseGrant::Granted { units: 11, quota_units: 23, .. }),
            "{}: {upgraded:?}",
            t.name
        );
        assert_eq!(period(&store, &a).await, (23, 3, 23));
    })
    .await;
}

#[tokio::test]
async fn a_lease_grant_ends_its_periods_expired_grants_before_it_reads_the_counter() {
    for_each_store("a_lease_grant_ends_its_periods_expired_grants_first", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        let soon = t0() + Duration::hours(1);
        store.create_quota_grant(&grant(&a, 1, 5, soon), &feb_plan(10), None, None).await.unwrap();
        let before = store.grant_quota_lease(&lease(&a, 1, 10, 100, t0())).await.unwrap();
        assert!(matches!(before, QuotaLeaseGrant::Granted { units: 15, .. }), "{}: {before:?}", t.name);
        store.settle_quota_lease(Uuid::from_u128(0x7_0001), t0()).await.unwrap();
        // Nothing was spent; past the grant's expiry the period has the plan's 10 units only.
        let after = store.grant_quota_lease(&lease(&a, 2, 10, 100, soon)).await.unwrap();
        assert!(matches!(after, QuotaLeaseGrant::Granted { units: 10, quota_units: 10, .. }), "{}: {after:?}", t.name);
        let ended = store.get_quota_grant(a.id, Uuid::from_u128(0x6_0001)).await.unwrap().unwrap();
        assert_eq!((ended.ended_at, ended.returned_units), (Some(soon), Some(5)));
    })
    .await;
}
