//! Throughput of the usage rollup on SQLite: N raw events (default 1 000 000) rolled up into hourly and daily
//! rollups, from a cold start (nothing rolled up) to caught up.
//!
//! `cargo bench -p handler --bench rollup -- [EVENTS] [BATCH_SIZE] [TENANTS]`. The events are spread over 72
//! hours, 20 operations and 5 clients per tenant, and written with the store's own batch insert before the clock
//! starts; only `rollup_step` calls are timed. Prints one line of figures; BENCHMARKS.md records them.

use std::sync::Arc;
use std::time::Instant;

use chrono::{Duration, TimeZone, Utc};
use meterline::store::*;
use uuid::Uuid;

fn arg(n: usize, default: u64) -> u64 {
    std::env::args().filter(|a| !a.starts_with('-')).nth(n).and_then(|a| a.parse().ok()).unwrap_or(default)
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let (events, batch, tenants) = (arg(1, 1_000_000), arg(2, 50_000) as u32, arg(3, 10) as u128);
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("bench.db")).await.expect("store"));
    store.migrate().await.expect("migrate");
    let t0 = Utc.with_ymd_and_hms(2026, 3, 1, 0, 0, 0).unwrap();
    let plan = Plan {
        code: "bench".into(),
        name: "Bench".into(),
        requests_per_minute: 60,
        burst: 10,
        monthly_quota_units: 1_000_000_000,
        overage_policy: OveragePolicy::Block,
        currency: "EUR".into(),
        base_price_micros: 0,
        overage_unit_price_micros: 0,
        created_at: t0,
        updated_at: t0,
        version: 1,
    };
    store.create_plan(&plan, None).await.expect("plan");
    for i in 0..tenants {
        let tenant = Tenant {
            id: Uuid::from_u128(i + 1),
            entra_tenant_id: None,
            name: format!("Bench {i}"),
            status: TenantStatus::Active,
            plan_code: "bench".into(),
            created_at: t0,
            updated_at: t0,
            version: 1,
            billing: Default::default(),
        };
        store.create_tenant(&tenant, None).await.expect("tenant");
    }
    let seeding = Instant::now();
    let span_micros = 72 * 3_600_000_000_i64;
    let mut chunk = Vec::with_capacity(10_000);
    for i in 0..events {
        let at = t0 + Duration::microseconds(span_micros / events as i64 * i as i64);
        chunk.push(UsageEvent {
            event_id: Uuid::from_u64_pair(0xbe5c, i),
            request_id: String::new(),
            tenant_id: Some(Uuid::from_u128(u128::from(i) % tenants + 1)),
            client_id: Some(format!("client-{}", i / tenants as u64 % 5)),
            principal_id: None,
            operation_id: format!("operation{}", i / tenants as u64 / 5 % 20),
            method: "GET".into(),
            route_template: "/api/v1/x".into(),
            status: if i % 50 == 0 { 500 } else { 200 },
            units: 1 + (i % 5) as i64,
            billable: i % 50 != 0,
            overage_units: 0,
            latency_micros: 200 + (i * 7919 % 400_000) as i64,
            request_bytes: 0,
            response_bytes: 0,
            occurred_at: at,
            recorded_at: at,
            lease_id: None,
            refusal: None,
        });
        if chunk.len() == 10_000 {
            store.record_usage_events(&chunk).await.expect("seed");
            chunk.clear();
        }
    }
    store.record_usage_events(&chunk).await.expect("seed");
    let seeded = seeding.elapsed();
    let now = t0 + Duration::days(4);
    let started = Instant::now();
    let mut steps = 0;
    loop {
        let step = RollupStep { batch_size: batch, settled_before: now, now };
        steps += 1;
        if store.rollup_step(&step).await.expect("step").caught_up {
            break;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "rollup: {events} events, {tenants} tenants, batch {batch}: {steps} steps in {elapsed:.2} s = {:.0} events/s (seeding took {:.1} s)",
        events as f64 / elapsed,
        seeded.as_secs_f64()
    );
}
