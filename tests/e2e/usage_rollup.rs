//! The usage rollup job against every store: concurrent runs, month close with its statement and purge, lag
//! episodes. The store's own rollup contract (random streams against a naive recomputation) is in
//! `store_contract/usage.rs`.

use std::collections::BTreeMap;
use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use meterline::clock::{Clock, ManualClock};
use meterline::config::Config;
use meterline::jobs::{self, Job, JobTrigger};
use meterline::state::AppState;
use meterline::store::*;

use crate::store_contract::usage::{Rng, event, naive, setup_plan, setup_tenants, step, stored, t0};
use crate::support::stores::{TestStore, for_each_store};

/// An application state over `store` with a manual clock and the given settings (the signing key in `dir`).
fn app_state(
    store: Arc<dyn Store>,
    clock: Arc<ManualClock>,
    dir: &std::path::Path,
    settings: &[(&str, &str)],
) -> AppState {
    let key = dir.join("key.pem").display().to_string();
    let mut map: BTreeMap<String, String> = settings.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    map.insert("METERLINE_AUTH_LOCAL_KEY_PATH".into(), key);
    let config = Config::from_lookup(|name| map.get(name).cloned()).unwrap();
    meterline::startup::state(config, store, clock, Arc::new(meterline::clock::TimeOrderedIds)).unwrap()
}

#[tokio::test]
async fn two_rollup_runs_started_together_produce_the_result_of_one() {
    for_each_store("two_rollup_runs_started_together_produce_the_result_of_one", |t: TestStore| async move {
        let store = t.store.clone();
        setup_plan(&store, t0() - Duration::days(30), OveragePolicy::Allow).await;
        let tenants = setup_tenants(&store, 0, 2, t0() - Duration::days(30)).await;
        let mut rng = Rng(99);
        let events: Vec<UsageEvent> = (0..400)
            .map(|i| {
                let at = t0() + Duration::seconds(i * 97);
                event(&mut rng, &tenants, at, at)
            })
            .collect();
        store.record_usage_events(&events).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(t0() + Duration::days(1)));
        let settings = [("METERLINE_ROLLUP_BATCH_SIZE", "37")];
        let a = app_state(store.clone(), clock.clone(), dir.path(), &settings);
        let b = app_state(t.second_handle().await, clock.clone(), dir.path(), &settings);
        // Straight at the store: two steps at once serialize on the watermark and roll each event up once.
        let (x, y) = tokio::join!(step(&a.store, clock.now(), 50), step(&b.store, clock.now(), 50));
        assert_eq!(x.rolled_up + y.rolled_up, 100, "{}", t.name);
        // Two whole job runs at once: one takes the lease and finishes, or both run; the result is the same.
        let (x, y) = tokio::join!(
            jobs::run(&a, Job::UsageRollup, JobTrigger::Cli),
            jobs::run(&b, Job::UsageRollup, JobTrigger::Cli)
        );
        let summaries = [x.unwrap().summary, y.unwrap().summary];
        assert!(summaries.iter().any(|s| s.contains("caught up")), "{summaries:?}");
        assert_eq!(stored(&store, &tenants, RollupGranularity::Hour).await, naive(&events, RollupGranularity::Hour));
        assert_eq!(stored(&store, &tenants, RollupGranularity::Day).await, naive(&events, RollupGranularity::Day));
        assert_eq!(store.rollup_state().await.unwrap().watermark, 400);
        assert_eq!(store.recent_job_runs("usage-rollup", 5).await.unwrap().len(), 2, "both runs are recorded");
    })
    .await;
}

fn outbox(path: &std::path::Path) -> Vec<(String, Option<String>, serde_json::Value)> {
    let conn = rusqlite::Connection::open(path).unwrap();
    let mut stmt = conn.prepare("SELECT event_type, subject, payload FROM outbox_messages ORDER BY seq").unwrap();
    stmt.query_map([], |r| {
        let payload: String = r.get(2)?;
        Ok((r.get(0)?, r.get(1)?, serde_json::from_str(&payload).unwrap()))
    })
    .unwrap()
    .map(Result::unwrap)
    .collect()
}

#[tokio::test]
async fn the_first_month_close_ever_bills_the_months_before_it_too() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("first.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let october = Utc.with_ymd_and_hms(2025, 10, 1, 0, 0, 0).unwrap();
    setup_plan(&store, october, OveragePolicy::Allow).await;
    // Tenants since October, with usage every month until the job first runs in February (its timer was down, or
    // the usage came from another system); one more created in December owes nothing before it.
    let tenants = setup_tenants(&store, 0, 2, october).await;
    let december = setup_tenants(&store, 5, 1, Utc.with_ymd_and_hms(2025, 12, 1, 0, 0, 0).unwrap()).await;
    let mut rng = Rng(11);
    let events: Vec<UsageEvent> = (0..120)
        .map(|i| {
            let at = october + Duration::days(i);
            event(&mut rng, &tenants, at, at + Duration::seconds(1))
        })
        .collect();
    store.record_usage_events(&events).await.unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 2, 1, 0, 30, 0).unwrap()));
    let settings = [("METERLINE_USAGE_LATENESS_SECS", "900"), ("METERLINE_ROLLUP_SETTLE_SECS", "120")];
    let state = app_state(store.clone(), clock.clone(), dir.path(), &settings);
    let outcome = jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert!(outcome.summary.contains("10 statements written"), "{}", outcome.summary);
    for tenant in &tenants {
        let periods: Vec<String> = store
            .list_billing_statements(*tenant)
            .await
            .unwrap()
            .iter()
            .map(|s| s.period_start.format("%Y-%m").to_string())
            .collect();
        let mut periods = periods;
        periods.sort();
        assert_eq!(periods, ["2025-10", "2025-11", "2025-12", "2026-01"], "{tenant}");
    }
    let late = store.list_billing_statements(december[0]).await.unwrap();
    assert_eq!(late.len(), 2, "December and January only: {late:?}");
}

#[tokio::test]
async fn a_final_month_gets_one_immutable_statement_with_its_event_then_raw_events_are_purged() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("close.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    let january = Utc.with_ymd_and_hms(2026, 1, 1, 0, 0, 0).unwrap();
    setup_plan(&store, january, OveragePolicy::Allow).await;
    // Created at the start of January: they owe nothing for December.
    let tenants = setup_tenants(&store, 0, 2, january).await;
    let late_tenant = setup_tenants(&store, 5, 1, january + Duration::days(40)).await;
    let mut rng = Rng(7);
    let events: Vec<UsageEvent> = (0..300)
        .map(|i| {
            let at = january + Duration::minutes(i * 148);
            event(&mut rng, &tenants, at, at + Duration::seconds(1))
        })
        .collect();
    store.record_usage_events(&events).await.unwrap();
    let clock = Arc::new(ManualClock::new(Utc.with_ymd_and_hms(2026, 2, 1, 0, 10, 0).unwrap()));
    let settings = [("METERLINE_USAGE_LATENESS_SECS", "900"), ("METERLINE_ROLLUP_SETTLE_SECS", "120")];
    let state = app_state(store.clone(), clock.clone(), dir.path(), &settings);
    // 00:10 on February 1st: January is not final yet (lateness 15 minutes).
    jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert!(store.list_billing_statements(tenants[0]).await.unwrap().is_empty());
    clock.set(Utc.with_ymd_and_hms(2026, 2, 1, 0, 30, 0).unwrap());
    let outcome = jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert!(outcome.summary.contains("2 statements written"), "{}", outcome.summary);
    let expected = naive(&events, RollupGranularity::Day);
    for tenant in &tenants {
        let statements = store.list_billing_statements(*tenant).await.unwrap();
        assert_eq!(statements.len(), 1);
        let s = &statements[0];
        let used: i64 = expected.iter().filter(|(k, _)| k.0 == *tenant).map(|(_, t)| t.billable_units).sum();
        // Billed: the units past the quota of 10, at 1 000 micro-EUR each, rounded to the cent.
        let overage = (used - 10).max(0);
        let amount = meterline::store::to_minor_unit(overage * 1_000, "EUR");
        assert_eq!(amount % 10_000, 0, "whole cents");
        assert_eq!((s.used_units, s.overage_units, s.quota_units), (used, overage, 10));
        assert_eq!((s.base_amount_micros, s.overage_amount_micros), (49_000_000, amount));
        assert_eq!(s.total_amount_micros, 49_000_000 + amount);
        assert_eq!(store.get_billing_statement(*tenant, s.period_start).await.unwrap().as_ref(), Some(s));
    }
    assert!(store.list_billing_statements(late_tenant[0]).await.unwrap().is_empty(), "created after January");
    let events_out = outbox(&path);
    assert_eq!(events_out.len(), 2);
    for (event_type, subject, data) in &events_out {
        assert_eq!(event_type, "meterline.billing.statement-ready.v1");
        let tenant = data["tenantId"].as_str().unwrap();
        assert_eq!(subject.as_deref(), Some(format!("tenants/{tenant}/statements/2026-01").as_str()));
        assert_eq!(data["period"], "2026-01");
    }
    // A very late January event changes the rollups, never the statement; nothing is emitted twice.
    let before = store.list_billing_statements(tenants[0]).await.unwrap();
    let mut late = event(&mut rng, &tenants[..1], january + Duration::days(3), clock.now());
    late.billable = true;
    late.units = 5;
    store.record_usage_events(&[late]).await.unwrap();
    clock.set(Utc.with_ymd_and_hms(2026, 2, 1, 1, 0, 0).unwrap());
    let outcome = jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert!(outcome.summary.contains("0 statements written"), "{}", outcome.summary);
    assert_eq!(store.list_billing_statements(tenants[0]).await.unwrap(), before);
    assert_eq!(outbox(&path).len(), 2);
    // Retention: rolled-up raw events older than 35 days go; the rollups stay.
    let rollups_before = stored(&store, &tenants, RollupGranularity::Hour).await;
    let jan_rollups: Vec<_> =
        store.usage_rollups(tenants[0], RollupGranularity::Day, january, january + Duration::days(31)).await.unwrap();
    clock.set(Utc.with_ymd_and_hms(2026, 3, 10, 0, 0, 0).unwrap());
    let outcome = jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert!(outcome.summary.contains("301 raw events purged"), "{}", outcome.summary);
    assert_eq!(
        store.count_usage_events(tenants[0]).await.unwrap() + store.count_usage_events(tenants[1]).await.unwrap(),
        0
    );
    assert_eq!(stored(&store, &tenants, RollupGranularity::Hour).await, rollups_before);
    assert_eq!(
        store.usage_rollups(tenants[0], RollupGranularity::Day, january, january + Duration::days(31)).await.unwrap(),
        jan_rollups
    );
    // A re-run over purged hours is refused instead of wiping their rollups; so are ranges out of any clock's
    // reach and ranges past now, as errors, not panics or hours of work.
    assert!(jobs::rollup::rerun(&state, january, january + Duration::days(1)).await.is_err());
    let year_one = Utc.with_ymd_and_hms(1, 1, 1, 0, 0, 0).unwrap();
    assert!(jobs::rollup::rerun(&state, year_one, year_one + Duration::days(1)).await.is_err());
    let now = clock.now();
    let far = Utc.with_ymd_and_hms(9999, 12, 31, 23, 59, 59).unwrap();
    let refused = jobs::rollup::rerun(&state, now - Duration::hours(2), far).await.unwrap_err();
    assert!(format!("{refused:?}").contains("current hour"), "{refused:?}");
}

#[tokio::test]
async fn a_lagging_rollup_emits_one_event_per_lag_episode() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lag.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    setup_plan(&store, t0() - Duration::days(1), OveragePolicy::Block).await;
    let tenants = setup_tenants(&store, 0, 1, t0() - Duration::days(1)).await;
    let clock = Arc::new(ManualClock::new(t0()));
    let settings = [("METERLINE_ROLLUP_BATCH_SIZE", "2"), ("METERLINE_ROLLUP_LAG_ALERT_SECS", "600")];
    let state = app_state(store.clone(), clock.clone(), dir.path(), &settings);
    let lagging = || outbox(&path).into_iter().filter(|e| e.0 == "meterline.usage.rollup-lagging.v1").count();
    jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert_eq!(lagging(), 0);
    // Two hours later, a full batch of events too recent to roll up: the rollup cannot reach the end.
    let mut rng = Rng(3);
    let now = t0() + Duration::hours(2);
    let recent: Vec<UsageEvent> = (0..3).map(|_| event(&mut rng, &tenants, now, now)).collect();
    store.record_usage_events(&recent).await.unwrap();
    clock.set(now + Duration::seconds(10));
    jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert_eq!(lagging(), 1);
    let payload = &outbox(&path)[0].2;
    assert!(payload["lagSeconds"].as_i64().unwrap() > 600, "{payload}");
    clock.set(now + Duration::seconds(20));
    jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert_eq!(lagging(), 1, "once per episode");
    // Settled: caught up, the episode ends; the next lag is a new episode.
    clock.set(now + Duration::minutes(5));
    jobs::run(&state, Job::UsageRollup, JobTrigger::Cli).await.unwrap();
    assert_eq!(store.rollup_state().await.unwrap().lagging_since, None);
    let later = now + Duration::hours(3);
    let recent: Vec<UsageEvent> = (0..3).map(|_| event(&mut rng, &tenants, later, later)).collect();
    store.record_usage_events(&recent).await.unwrap();
    clock.set(later + Duration::seconds(10));
    jobs::run(&state, Job::UsageRollup, JobTrigger::Timer { is_past_due: true, schedule: None }).await.unwrap();
    assert_eq!(lagging(), 2);
}
