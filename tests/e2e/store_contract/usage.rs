//! The usage aggregate's storage contract on every store: usage events rolled up by steps of any size, at any
//! time, re-run and retried, always equal a naive recomputation (rollups alone once caught up; rollups plus the
//! tail before). The rollup job's behaviour over both stores (concurrent runs, month close, lag episodes) is in
//! `usage_rollup.rs`, which shares these helpers.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use meterline::store::*;
use uuid::Uuid;

use crate::support::stores::{self, TestStore, for_each_store};

pub(crate) fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap()
}

/// A small deterministic generator (SplitMix64), so every failing case is reproducible from its seed.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

pub(crate) async fn setup_plan(store: &Arc<dyn Store>, created_at: DateTime<Utc>, policy: OveragePolicy) {
    store.migrate().await.unwrap();
    let plan = Plan {
        overage_policy: policy,
        base_price_micros: 49_000_000,
        overage_unit_price_micros: 1_000,
        ..stores::plan("p", 10, created_at)
    };
    store.create_plan(&plan, None).await.unwrap();
}

/// `n` tenants on plan `p`, ids from `first`.
pub(crate) async fn setup_tenants(
    store: &Arc<dyn Store>,
    first: u128,
    n: u128,
    created_at: DateTime<Utc>,
) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in first..first + n {
        let tenant = Tenant {
            id: Uuid::from_u128(0x7000 + i),
            entra_tenant_id: None,
            name: format!("T{i}"),
            status: TenantStatus::Active,
            plan_code: "p".into(),
            created_at,
            updated_at: created_at,
            version: 1,
            billing: Default::default(),
        };
        store.create_tenant(&tenant, None).await.unwrap();
        ids.push(tenant.id);
    }
    ids
}

pub(crate) fn event(
    rng: &mut Rng,
    tenants: &[Uuid],
    occurred_at: DateTime<Utc>,
    recorded_at: DateTime<Utc>,
) -> UsageEvent {
    // ("get", "Me") and ("getMe", none) are different windows whose ids concatenate alike.
    let ops = ["getMe", "get", "createDocument", "getUsage"];
    let clients = [None, Some("Me"), Some("app-b, \"quoted\"")];
    let units = rng.below(6) as i64;
    let billable = rng.below(4) != 0;
    let status = [200, 201, 404, 429, 503][rng.below(5) as usize];
    // Most 429s name the limit that refused them; a few do not (a refusal recorded before refusals were).
    let refusal = match (status, rng.below(3)) {
        (429, 0) => Some(LimitRefusal::Rate),
        (429, 1) => Some(LimitRefusal::Quota),
        _ => None,
    };
    UsageEvent {
        event_id: Uuid::from_u64_pair(rng.next(), rng.next()),
        request_id: "r".into(),
        tenant_id: if rng.below(10) == 0 { None } else { Some(tenants[rng.below(tenants.len() as u64) as usize]) },
        client_id: clients[rng.below(3) as usize].map(str::to_owned),
        principal_id: None,
        operation_id: ops[rng.below(4) as usize].into(),
        method: "GET".into(),
        route_template: "/x".into(),
        status,
        units,
        billable,
        overage_units: if billable { rng.below(units as u64 + 1) as i64 } else { 0 },
        // Spread over every histogram bucket and beyond.
        latency_micros: 1 << rng.below(24),
        request_bytes: 0,
        response_bytes: 0,
        occurred_at,
        recorded_at,
        lease_id: None,
        refusal,
    }
}

pub(crate) type Key = (Uuid, DateTime<Utc>, String, String);

/// The naive recomputation: every distinct event (first copy of an id) with a tenant, summed per window.
pub(crate) fn naive(events: &[UsageEvent], granularity: RollupGranularity) -> BTreeMap<Key, UsageTotals> {
    let mut seen = HashSet::new();
    let mut out: BTreeMap<Key, UsageTotals> = BTreeMap::new();
    for e in events {
        let Some(tenant) = e.tenant_id else { continue };
        if !seen.insert(e.event_id) {
            continue;
        }
        let key = (
            tenant,
            granularity.window_of(e.occurred_at),
            e.operation_id.clone(),
            e.client_id.clone().unwrap_or_default(),
        );
        out.entry(key).or_default().merge(&UsageTotals::of_call(Call {
            units: e.units,
            billable: e.billable,
            overage_units: e.overage_units,
            status: e.status,
            latency_micros: e.latency_micros,
            refusal: e.refusal,
        }));
    }
    out
}

pub(crate) async fn stored(
    store: &Arc<dyn Store>,
    tenants: &[Uuid],
    granularity: RollupGranularity,
) -> BTreeMap<Key, UsageTotals> {
    let mut out = BTreeMap::new();
    for tenant in tenants {
        for r in
            store.usage_rollups(*tenant, granularity, t0() - Duration::days(3), t0() + Duration::days(5)).await.unwrap()
        {
            out.insert((*tenant, r.window_start, r.operation_id, r.client_id), r.totals);
        }
    }
    out
}

pub(crate) async fn reported(
    store: &Arc<dyn Store>,
    tenants: &[Uuid],
    granularity: RollupGranularity,
) -> BTreeMap<Key, UsageTotals> {
    let mut out: BTreeMap<Key, UsageTotals> = BTreeMap::new();
    for tenant in tenants {
        let query = UsageQuery {
            tenant_id: *tenant,
            granularity,
            from: t0() - Duration::days(3),
            to: t0() + Duration::days(5),
            hour_offset_minutes: 0,
        };
        for r in store.usage_report(&query).await.unwrap() {
            out.entry((*tenant, r.window_start, r.operation_id, r.client_id)).or_default().merge(&r.totals);
        }
    }
    out
}

pub(crate) const SETTLE: i64 = 120;

pub(crate) async fn step(store: &Arc<dyn Store>, now: DateTime<Utc>, batch_size: u32) -> RollupProgress {
    store.rollup_step(&RollupStep { batch_size, settled_before: now - Duration::seconds(SETTLE), now }).await.unwrap()
}

#[tokio::test]
async fn rollups_equal_a_naive_recomputation_for_random_event_streams() {
    for_each_store("rollups_equal_a_naive_recomputation_for_random_event_streams", |t: TestStore| async move {
        let seeds: u64 = if t.name == "sqlite" { 10 } else { 3 };
        let store = t.store.clone();
        setup_plan(&store, t0() - Duration::days(30), OveragePolicy::Allow).await;
        for seed in 0..seeds {
            // Each seed has its own tenants; earlier seeds' events are all rolled up when it starts.
            let tenants = setup_tenants(&store, u128::from(seed) * 16, 3, t0() - Duration::days(30)).await;
            let mut rng = Rng(seed);
            // Events occur over 30 hours; most are recorded within seconds, some hours late (late arrivals).
            let mut events: Vec<UsageEvent> = (0..150 + rng.below(150))
                .map(|_| {
                    let occurred = t0() + Duration::seconds(rng.below(30 * 3600) as i64);
                    let delay = if rng.below(8) == 0 { rng.below(4 * 3600) } else { rng.below(5) };
                    event(&mut rng, &tenants, occurred, occurred + Duration::seconds(delay as i64))
                })
                .collect();
            events.sort_by_key(|e| e.recorded_at);
            let mut written: Vec<UsageEvent> = Vec::new();
            let mut i = 0;
            while i < events.len() {
                // The recorder's batches, some retried whole (duplicates by event id).
                let chunk: Vec<UsageEvent> = events[i..(i + 1 + rng.below(25) as usize).min(events.len())].to_vec();
                i += chunk.len();
                store.record_usage_events(&chunk).await.unwrap();
                if rng.below(4) == 0 {
                    store.record_usage_events(&chunk).await.unwrap();
                }
                written.extend(chunk.iter().cloned());
                // Some rollup steps of random sizes, at a random time after the last recording (interrupted runs).
                let now = written.last().unwrap().recorded_at + Duration::seconds(rng.below(2 * SETTLE as u64) as i64);
                for _ in 0..rng.below(3) {
                    step(&store, now, 1 + rng.below(40) as u32).await;
                }
                if rng.below(10) == 0 {
                    let hour = t0() + Duration::hours(rng.below(30) as i64);
                    store.rollup_rerun_hour(hour, now).await.unwrap();
                }
                // Rollups plus the tail are always the exact current numbers.
                let expected = naive(&written, RollupGranularity::Hour);
                assert_eq!(
                    reported(&store, &tenants, RollupGranularity::Hour).await,
                    expected,
                    "{} seed {seed}",
                    t.name
                );
            }
            assert_eq!(
                reported(&store, &tenants, RollupGranularity::Day).await,
                naive(&written, RollupGranularity::Day),
                "{} seed {seed}: daily report",
                t.name
            );
            // Run to the end: the rollups alone equal the naive recomputation, hourly and daily.
            let end = events.last().unwrap().recorded_at + Duration::hours(1);
            while !step(&store, end, 1 + rng.below(60) as u32).await.caught_up {}
            assert_eq!(
                stored(&store, &tenants, RollupGranularity::Hour).await,
                naive(&written, RollupGranularity::Hour)
            );
            assert_eq!(stored(&store, &tenants, RollupGranularity::Day).await, naive(&written, RollupGranularity::Day));
            // Re-running any range changes nothing.
            for h in 0..31 {
                store.rollup_rerun_hour(t0() + Duration::hours(h), end).await.unwrap();
            }
            let again = step(&store, end, 1000).await;
            assert_eq!(again.rolled_up, 0);
            assert_eq!(
                stored(&store, &tenants, RollupGranularity::Hour).await,
                naive(&written, RollupGranularity::Hour)
            );
            assert_eq!(stored(&store, &tenants, RollupGranularity::Day).await, naive(&written, RollupGranularity::Day));
            let state = store.rollup_state().await.unwrap();
            assert_eq!(state.complete_through, Some(end - Duration::seconds(SETTLE)));
        }
    })
    .await;
}

#[tokio::test]
async fn a_streamed_responses_size_is_set_on_its_recorded_event() {
    for_each_store("a_streamed_responses_size_is_set_on_its_recorded_event", |t: TestStore| async move {
        let store = t.store.clone();
        setup_plan(&store, t0() - Duration::days(30), OveragePolicy::Allow).await;
        let tenants = setup_tenants(&store, 9_000, 1, t0() - Duration::days(30)).await;
        let recorded = event(&mut Rng(7), &tenants, t0(), t0());
        store.record_usage_events(std::slice::from_ref(&recorded)).await.unwrap();
        assert!(store.set_response_bytes(recorded.event_id, 12_345).await.unwrap());
        assert!(store.set_response_bytes(recorded.event_id, 12_346).await.unwrap(), "set again: the last size wins");
        assert!(!store.set_response_bytes(Uuid::from_u64_pair(1, 2), 1).await.unwrap(), "no such event");
        assert_eq!(store.record_usage_events(&[recorded]).await.unwrap(), 0, "still one event");
    })
    .await;
}

/// A statement of `tenant` for `month` of 2026 billing `used` units (`overage` beyond the quota), with
/// `adjustment` micro-units of adjustment lines.
fn statement(tenant: Uuid, n: u128, month: u32, used: i64, overage: i64, adjustment: i64) -> BillingStatement {
    let start = chrono::NaiveDate::from_ymd_opt(2026, month, 1).unwrap();
    BillingStatement {
        id: Uuid::from_u128(0x5747_0000 + n),
        tenant_id: tenant,
        period_start: start,
        period_end: start + chrono::Months::new(1),
        plan_code: "p".into(),
        currency: "EUR".into(),
        quota_units: 10,
        used_units: used,
        overage_units: overage,
        base_amount_micros: 49_000_000,
        overage_amount_micros: overage * 1_000,
        total_amount_micros: 49_000_000 + overage * 1_000,
        created_at: t0(),
        granted_units: 0,
        starts_at: Some(start.and_hms_opt(0, 0, 0).unwrap().and_utc()),
        ends_at: Some((start + chrono::Months::new(1)).and_hms_opt(0, 0, 0).unwrap().and_utc()),
        overage_unit_price_micros: Some(2_000),
        adjustment_amount_micros: adjustment,
    }
}

fn ready(n: u128) -> OutboxMessage {
    OutboxMessage {
        id: Uuid::from_u128(0x0B0_0000 + n),
        event_type: "meterline.billing.statement-ready.v1".into(),
        subject: None,
        payload: "{}".into(),
        created_at: t0(),
        available_at: t0(),
    }
}

#[tokio::test]
async fn usage_rolled_up_after_a_statement_is_unbilled_until_an_adjustment_line_bills_it() {
    for_each_store("usage_rolled_up_after_a_statement_is_unbilled_until_an_adjustment_line_bills_it", |t| async move {
        let store = t.store.clone();
        let created = t0() - Duration::days(60);
        setup_plan(&store, created, OveragePolicy::Allow).await;
        let tenants = setup_tenants(&store, 1, 2, created).await;
        let (a, b) = (tenants[0], tenants[1]);
        let in_january = Utc.with_ymd_and_hms(2026, 1, 10, 12, 0, 0).unwrap();
        let billed = |n: u64, units: i64, overage: i64, tenant: Uuid| UsageEvent {
            event_id: Uuid::from_u64_pair(7, n),
            tenant_id: Some(tenant),
            units,
            billable: true,
            overage_units: overage,
            status: 200,
            lease_id: None,
            ..event(&mut Rng(n), &tenants, in_january, in_january)
        };
        store.record_usage(&[billed(1, 4, 0, a), billed(2, 9, 3, a), billed(3, 5, 0, b)], &[]).await.unwrap();
        step(&store, t0(), 1000).await;
        let january = statement(a, 1, 1, 13, 3, 0);
        assert!(store.insert_billing_statement(&january, &[], &ready(1)).await.unwrap(), "{}", t.name);
        let february = chrono::NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
        assert_eq!(store.unbilled_usage(a, february).await.unwrap(), vec![], "{}: all billed", t.name);
        // B's January: 5 of its quota of 10 used.
        let b_january = statement(b, 9, 1, 5, 0, 0);
        assert!(store.insert_billing_statement(&b_january, &[], &ready(9)).await.unwrap(), "{}", t.name);

        // Two late January events arrive and are rolled up. B's was admitted as overage (before a grant, say),
        // but its period's quota covers it: overage is what the period's units make past its quota.
        store.record_usage(&[billed(4, 6, 6, a), billed(5, 2, 2, b)], &[]).await.unwrap();
        step(&store, t0() + Duration::hours(1), 1000).await;
        let unbilled = store.unbilled_usage(a, february).await.unwrap();
        let expected = UnbilledUsage {
            statement_id: january.id,
            period_start: january.period_start,
            used_units_delta: 6,
            overage_units_delta: 6,
            overage_unit_price_micros: 2_000,
            currency: "EUR".into(),
        };
        assert_eq!(unbilled, vec![expected], "{}", t.name);
        assert_eq!(store.unbilled_usage(a, january.period_start).await.unwrap(), vec![], "only months before");
        let b_unbilled = UnbilledUsage {
            statement_id: b_january.id,
            period_start: b_january.period_start,
            used_units_delta: 2,
            overage_units_delta: 0,
            overage_unit_price_micros: 2_000,
            currency: "EUR".into(),
        };
        assert_eq!(store.unbilled_usage(b, february).await.unwrap(), vec![b_unbilled], "{}: within B's quota", t.name);

        let line = StatementAdjustment {
            id: Uuid::from_u128(0xAD1),
            statement_id: Uuid::from_u128(0x5747_0002),
            adjusts_statement_id: january.id,
            adjusts_period_start: january.period_start,
            used_units_delta: 6,
            overage_units_delta: 6,
            amount_micros: 12_000,
            created_at: t0(),
        };
        let feb = statement(a, 2, 2, 0, 0, 12_000);
        assert!(store.insert_billing_statement(&feb, std::slice::from_ref(&line), &ready(2)).await.unwrap());
        assert_eq!(store.statement_adjustments(a, feb.id).await.unwrap(), vec![line.clone()], "{}", t.name);
        assert_eq!(store.statement_adjustments(b, feb.id).await.unwrap(), vec![], "another tenant sees none");
        assert_eq!(store.get_billing_statement(a, feb.period_start).await.unwrap(), Some(feb.clone()));
        let march = chrono::NaiveDate::from_ymd_opt(2026, 3, 1).unwrap();
        assert_eq!(store.unbilled_usage(a, march).await.unwrap(), vec![], "{}: billed once", t.name);
        // A second write of February changes nothing, its lines included.
        let again = StatementAdjustment { id: Uuid::from_u128(0xAD2), ..line };
        assert!(!store.insert_billing_statement(&feb, &[again], &ready(3)).await.unwrap());
        assert_eq!(store.statement_adjustments(a, feb.id).await.unwrap().len(), 1);
        assert_eq!(store.get_billing_statement(a, january.period_start).await.unwrap(), Some(january), "never edited");
    })
    .await;
}

#[tokio::test]
async fn a_tenant_whose_hours_start_half_past_gets_aligned_hour_windows_and_no_utc_days() {
    for_each_store("a_tenant_whose_hours_start_half_past_gets_aligned_hour_windows_and_no_utc_days", |t| async move {
        let store = t.store.clone();
        let created = t0() - Duration::days(1);
        setup_plan(&store, created, OveragePolicy::Block).await;
        let kolkata = Tenant {
            id: Uuid::from_u128(0x7_1AB),
            entra_tenant_id: None,
            name: "Mumbai".into(),
            status: TenantStatus::Active,
            plan_code: "p".into(),
            created_at: created,
            updated_at: created,
            version: 1,
            billing: TenantBilling { anchor_day: 15, time_zone: "Asia/Kolkata".into(), window_offset_minutes: 30 },
        };
        store.create_tenant(&kolkata, None).await.unwrap();
        assert_eq!(store.get_tenant(kolkata.id).await.unwrap().unwrap().billing, kolkata.billing, "{}", t.name);
        let at = |h: u32, m: u32| Utc.with_ymd_and_hms(2026, 3, 1, h, m, 0).unwrap();
        let event = |n: u64, occurred: DateTime<Utc>| UsageEvent {
            event_id: Uuid::from_u64_pair(9, n),
            tenant_id: Some(kolkata.id),
            units: 1,
            billable: true,
            overage_units: 0,
            status: 200,
            lease_id: None,
            ..super::usage::event(&mut Rng(n), &[kolkata.id], occurred, occurred)
        };
        store.record_usage(&[event(1, at(18, 10)), event(2, at(18, 40)), event(3, at(19, 20))], &[]).await.unwrap();
        let query = |granularity| UsageQuery {
            tenant_id: kolkata.id,
            granularity,
            from: at(17, 30),
            to: at(20, 30),
            hour_offset_minutes: 30,
        };
        let windows = |rows: Vec<UsageRow>| {
            let mut by: BTreeMap<DateTime<Utc>, i64> = BTreeMap::new();
            for r in rows {
                *by.entry(r.window_start).or_default() += r.totals.calls;
            }
            by.into_iter().collect::<Vec<_>>()
        };
        let expected = vec![(at(17, 30), 1), (at(18, 30), 2)];
        // From the tail before any step, then from the rollups after one: the same half-past windows.
        assert_eq!(windows(store.usage_report(&query(RollupGranularity::Hour)).await.unwrap()), expected, "{}", t.name);
        step(&store, at(23, 0), 1000).await;
        let hours = store.usage_rollups(kolkata.id, RollupGranularity::Hour, at(0, 0), at(23, 0)).await.unwrap();
        assert_eq!(windows(hours.into_iter().map(UsageRow::from).collect()), expected, "{}", t.name);
        let days =
            store.usage_rollups(kolkata.id, RollupGranularity::Day, at(0, 0), at(0, 0) + Duration::days(2)).await;
        assert_eq!(days.unwrap(), vec![], "{}: its hours do not tile UTC days, so it has none", t.name);
        // Re-running the UTC hour 18:00 recomputes the window that starts in it, 18:30, and nothing else.
        store.rollup_rerun_hour(at(18, 0), at(23, 0)).await.unwrap();
        let again = store.usage_rollups(kolkata.id, RollupGranularity::Hour, at(0, 0), at(23, 0)).await.unwrap();
        assert_eq!(windows(again.into_iter().map(UsageRow::from).collect()), expected);

        // It lacks a statement for a period starting in March until one is written.
        let (march, april) =
            (NaiveDate::from_ymd_opt(2026, 3, 1).unwrap(), NaiveDate::from_ymd_opt(2026, 4, 1).unwrap());
        let lacking = store.tenants_without_statement(march, april, at(23, 0), None, 10).await.unwrap();
        assert_eq!(lacking.iter().map(|t| t.id).collect::<Vec<_>>(), vec![kolkata.id], "{}", t.name);
        assert_eq!(
            store.tenants_without_statement(march, april, at(23, 0), Some(kolkata.id), 10).await.unwrap(),
            vec![]
        );
    })
    .await;
}
