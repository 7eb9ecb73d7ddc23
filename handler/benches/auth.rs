//! Micro-benchmarks of token validation: a cache hit against a full RS256 verification.
//!
//! `cargo bench -p handler --bench auth`. Figures and the machine are recorded in BENCHMARKS.md.

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use meterline::auth::local::{self, DevTokenRequest};
use meterline::auth::{AuthSettings, Authenticator, KeySource};
use meterline::clock::SystemClock;

fn setup() -> (Authenticator, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let key = local::load_or_create(&dir.path().join("bench.pem")).expect("dev key");
    let request = DevTokenRequest {
        directory_id: "aaaaaaaa-0000-0000-0000-000000000001".into(),
        roles: vec!["Documents.Read".into(), "Documents.Write".into()],
        scopes: Vec::new(),
        app_id: "bench-client".into(),
        object_id: "bench-oid".into(),
        name: None,
        ttl: Duration::from_secs(3600),
    };
    let token = local::mint(&key, &request, chrono::Utc::now().timestamp()).expect("token");
    let source = KeySource::Local { kid: key.kid.clone(), key: key.verification, issuer: local::LOCAL_ISSUER.into() };
    let settings = AuthSettings {
        platform_directories: None,
        audiences: vec![local::LOCAL_AUDIENCE.into()],
        allowed_tenants: None,
        clock_skew: Duration::from_secs(60),
        cache_size: 10_000,
    };
    (Authenticator::new(source, settings, Arc::new(SystemClock)), token)
}

fn validation(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
    let (auth, token) = setup();
    let now = chrono::Utc::now().timestamp();
    let mut group = c.benchmark_group("token");
    group.bench_function("uncached_rs256_validation", |b| {
        b.to_async(&runtime).iter(|| async { auth.validate(&token, now).await.expect("valid") })
    });
    runtime.block_on(auth.authenticate(&token)).expect("warm the cache");
    group.bench_function("cached_authenticate", |b| {
        b.to_async(&runtime).iter(|| async { auth.authenticate(&token).await.expect("valid") })
    });
    group.finish();
}

criterion_group!(benches, validation);
criterion_main!(benches);
