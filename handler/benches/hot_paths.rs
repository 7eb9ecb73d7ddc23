//! Micro-benchmarks of the request path's pure steps and its one store write: the limiter decision,
//! problem+json rendering and invocation-envelope parsing.
//!
//! `cargo bench -p handler --bench hot_paths`. Figures and the machine are recorded in BENCHMARKS.md.

use std::hint::black_box;
use std::sync::Arc;

use actix_web::ResponseError;
use actix_web::body::MessageBody;
use chrono::NaiveDate;
use criterion::{Criterion, criterion_group, criterion_main};
use meterline::error::{AppError, ErrorCode, FieldError};
use meterline::functions::payload::{HttpRequestData, Invocation, ServiceBusMessage};
use meterline::store::prelude::*;
use meterline::store::{
    Admission, OveragePolicy, Plan, QuotaDebit, RateLimitTake, SqliteStore, Tenant, TenantStatus, gcra,
};
use uuid::Uuid;

fn limiter(c: &mut Criterion) {
    let mut group = c.benchmark_group("limiter");
    let take = RateLimitTake {
        tenant_id: Uuid::from_u128(1),
        client_id: "app".into(),
        now_micros: 1_800_000_000_000_000,
        emission_interval_micros: 1_000,
        burst: 100,
    };
    group.bench_function("gcra arithmetic", |b| b.iter(|| gcra(black_box(Some(1_800_000_000_050_000)), &take)));

    // The whole decision as the limit stage makes it: one store transaction (rate step + quota debit) on SQLite,
    // one request at a time (no group commit to share).
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime");
    let dir = tempfile::tempdir().expect("temp dir");
    let now = chrono::Utc::now();
    let store: Arc<dyn Store> = runtime.block_on(async {
        let store = SqliteStore::open(&dir.path().join("bench.db")).await.expect("store");
        store.migrate().await.expect("migrate");
        let plan = Plan {
            code: "bench".into(),
            name: "Bench".into(),
            requests_per_minute: 1_000_000,
            burst: 1_000_000,
            monthly_quota_units: i64::MAX / 4,
            overage_policy: OveragePolicy::Block,
            currency: "EUR".into(),
            base_price_micros: 0,
            overage_unit_price_micros: 0,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        store.create_plan(&plan, None).await.expect("plan");
        let tenant = Tenant {
            id: Uuid::from_u128(1),
            entra_tenant_id: None,
            name: "Bench".into(),
            status: TenantStatus::Active,
            plan_code: "bench".into(),
            created_at: now,
            updated_at: now,
            version: 1,
            billing: Default::default(),
        };
        store.create_tenant(&tenant, None).await.expect("tenant");
        Arc::new(store)
    });
    let admission = |now_micros| Admission {
        rate: RateLimitTake { now_micros, ..take.clone() },
        debit: Some(QuotaDebit {
            tenant_id: Uuid::from_u128(1),
            period_start: NaiveDate::from_ymd_opt(2026, 11, 1).unwrap(),
            period_end: NaiveDate::from_ymd_opt(2026, 12, 1).unwrap(),
            quota_units: i64::MAX / 4,
            overage_policy: OveragePolicy::Block,
            plan_code: "bench".into(),
            units: 1,
            now,
        }),
    };
    let mut clock = now.timestamp_micros();
    group.bench_function("admit on SQLite (rate step + quota debit, one transaction)", |b| {
        b.iter(|| {
            clock += 1_000_000;
            runtime.block_on(store.admit(&admission(clock))).expect("admit")
        })
    });
    group.finish();
}

fn problem_rendering(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let err = AppError::new(ErrorCode::ValidationFailed).with_field_errors(vec![
        FieldError::new("title", "length", "must be 1 to 300 characters"),
        FieldError::new("query.maxpagesize", "range", "must be between 1 and 100"),
    ]);
    c.bench_function("problem+json: validation-failed with two field errors", |b| {
        b.iter(|| {
            let response = black_box(&err).error_response();
            runtime.block_on(async { response.into_body().try_into_bytes().map(|b| b.len()).unwrap_or_default() })
        })
    });
}

fn envelopes(c: &mut Criterion) {
    let mut group = c.benchmark_group("invocation envelope");
    let http = serde_json::json!({
        "Data": {"req": {"Url": "https://app.azurewebsites.net/api/v1/documents/3f1c9a2e-8b7d-4c1e-9f0a-2d4b6c8e0a1f?x=1",
            "Method": "GET", "Query": {"x": "1"},
            "Headers": {"Authorization": ["Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln"], "Accept": ["application/json"]},
            "Params": {"rest": "3f1c9a2e-8b7d-4c1e-9f0a-2d4b6c8e0a1f"}, "Identities": []}},
        "Metadata": {"rest": "\"3f1c9a2e-8b7d-4c1e-9f0a-2d4b6c8e0a1f\"", "Query": {"x": "\"1\""},
            "sys": {"MethodName": "Documents", "UtcNow": "\"2026-11-24T08:00:00Z\"", "RandGuid": "\"0f8fad5b-d9cb-469f-a165-70867728950e\""}}
    })
    .to_string()
    .into_bytes();
    group.bench_function("HTTP request (default mode)", |b| {
        b.iter(|| {
            let invocation = Invocation::parse(black_box(&http)).expect("parses");
            HttpRequestData::from_value(invocation.data("req").expect("Data.req")).expect("an HTTP request")
        })
    });
    let body = serde_json::json!({"specversion": "1.0", "id": "e-1", "source": "/crm", "type": "meterline.tenant.upserted.v1",
        "time": "2026-11-24T08:00:00Z", "datacontenttype": "application/json", "data": {"tenantId": "t-1", "name": "Acme"}});
    let service_bus = serde_json::json!({
        "Data": {"message": serde_json::to_string(&body.to_string()).unwrap()},
        "Metadata": {"MessageId": "\"m-1\"", "DeliveryCount": "\"1\"", "ContentType": "\"application/json\"",
            "EnqueuedTimeUtc": "\"2026-11-24T08:00:00\"", "specversion": "\"1.0\"", "id": "\"e-1\"",
            "sys": {"MethodName": "IntegrationEvents"}}
    })
    .to_string()
    .into_bytes();
    group.bench_function("Service Bus message (CloudEvent body)", |b| {
        b.iter(|| {
            let invocation = Invocation::parse(black_box(&service_bus)).expect("parses");
            ServiceBusMessage::from_invocation(&invocation, "message").expect("a message")
        })
    });
    group.finish();
}

criterion_group!(benches, limiter, problem_rendering, envelopes);
criterion_main!(benches);
