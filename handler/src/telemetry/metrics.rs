//! The metrics Meterline exports, behind a small typed API: one function per thing worth counting.
//!
//! Call sites use the free functions ([`request`], [`limiter_rejection`], ...). They do nothing at all until
//! [`super::init`] installed an exporter, so tests and local runs pay nothing. The instrument names are what
//! the alerts in `bicep/modules/alerts.bicep` query (Application Insights `customMetrics.name`).

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::metrics::{Counter, Gauge, Histogram, Meter};

/// Request latency by operation, in seconds (histogram; attributes `operation`, `http.response.status_code`).
pub const REQUEST_DURATION: &str = "meterline.request.duration";
/// Requests refused by the rate limiter or the quota (counter; attribute `kind`: `rate` or `quota`).
pub const LIMITER_REJECTIONS: &str = "meterline.limiter.rejections";
/// Quota units consumed by successful requests (counter; attribute `kind`: `included` or `overage`).
pub const QUOTA_UNITS: &str = "meterline.quota.units";
/// Quota-lease units by what happened to them (counter; attribute `kind`: `granted`, taken from the store by a
/// grant, or `returned`, given back unspent when the lease was settled); `meterline.quota.lease.grants` counts the
/// grants, so grants per request is the admission's store transactions per request.
pub const QUOTA_LEASE_UNITS: &str = "meterline.quota.lease.units";
/// Quota-lease grants taken from the store (counter).
pub const QUOTA_LEASE_GRANTS: &str = "meterline.quota.lease.grants";
/// Expired quota leases of crashed holders settled by the rollup job (counter).
pub const QUOTA_LEASES_RECLAIMED: &str = "meterline.quota.lease.reclaimed";
/// Rate-limit steps taken from the store in batches (counter; attribute `kind`: `granted`, or `forfeited` when a
/// batch expired before its process spent them).
pub const RATE_LEASE_STEPS: &str = "meterline.rate.lease.steps";
/// How far the usage rollup is behind, in seconds (gauge).
pub const ROLLUP_LAG: &str = "meterline.rollup.lag";
/// Integration messages by outcome (counter; attribute `outcome`).
pub const CONSUMER_OUTCOMES: &str = "meterline.consumer.outcomes";
/// Outbox events waiting to be published (gauge).
pub const OUTBOX_BACKLOG: &str = "meterline.outbox.backlog";
/// Outbox events Service Bus took (counter; attribute `type`, the CloudEvents type: the quota threshold alert
/// counts `meterline.quota.threshold-crossed.v1`).
pub const OUTBOX_PUBLISHED: &str = "meterline.outbox.published";
/// A dependency's circuit breaker: 0 closed, 1 half-open, 2 open (gauge; attribute `dependency`).
pub const BREAKER_STATE: &str = "meterline.breaker.state";
/// Circuit breaker state changes (counter; attributes `dependency`, `to`: `open`, `half-open` or `closed`).
pub const BREAKER_TRANSITIONS: &str = "meterline.breaker.transitions";
/// Calls refused without reaching their dependency (counter; attributes `dependency`, `kind`: `circuit-open`
/// or `overloaded`, shed because too much work already waited).
pub const DEPENDENCY_REFUSALS: &str = "meterline.dependency.refusals";

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterKind {
    /// The plan's requests per minute (GCRA), 429 `rate-limited`.
    Rate,
    /// The tenant's monthly quota with a blocking plan, 429 `quota-exceeded`.
    Quota,
}

impl LimiterKind {
    pub fn as_str(self) -> &'static str {
        match self {
            LimiterKind::Rate => "rate",
            LimiterKind::Quota => "quota",
        }
    }
}

/// What the Service Bus consumer did with one message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsumerOutcome {
    /// Applied; the message is completed.
    Processed,
    /// Seen before (same message id); completed without effect.
    Duplicate,
    /// A transient failure; the message is abandoned and redelivered.
    Retried,
    /// Unprocessable; set aside for `handler quarantine replay` and completed.
    Quarantined,
}

impl ConsumerOutcome {
    pub fn as_str(self) -> &'static str {
        match self {
            ConsumerOutcome::Processed => "processed",
            ConsumerOutcome::Duplicate => "duplicate",
            ConsumerOutcome::Retried => "retried",
            ConsumerOutcome::Quarantined => "quarantined",
        }
    }
}

/// The instruments, created once from one meter.
#[derive(Debug, Clone)]
pub struct Metrics {
    request_duration: Histogram<f64>,
    limiter_rejections: Counter<u64>,
    quota_units: Counter<u64>,
    quota_lease_units: Counter<u64>,
    quota_lease_grants: Counter<u64>,
    quota_leases_reclaimed: Counter<u64>,
    rate_lease_steps: Counter<u64>,
    rollup_lag: Gauge<f64>,
    consumer_outcomes: Counter<u64>,
    outbox_backlog: Gauge<u64>,
    outbox_published: Counter<u64>,
    breaker_state: Gauge<u64>,
    breaker_transitions: Counter<u64>,
    dependency_refusals: Counter<u64>,
}

impl Metrics {
    pub fn new(meter: &Meter) -> Self {
        Self {
            request_duration: meter
                .f64_histogram(REQUEST_DURATION)
                .with_unit("s")
                .with_description("Latency of API requests and invocations, by operation")
                .with_boundaries(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0])
                .build(),
            limiter_rejections: meter
                .u64_counter(LIMITER_REJECTIONS)
                .with_description("Requests refused by the rate limit or the monthly quota")
                .build(),
            quota_units: meter
                .u64_counter(QUOTA_UNITS)
                .with_unit("{unit}")
                .with_description("Quota units consumed by successful requests")
                .build(),
            quota_lease_units: meter
                .u64_counter(QUOTA_LEASE_UNITS)
                .with_unit("{unit}")
                .with_description("Quota units granted to this process's leases, and returned unspent")
                .build(),
            quota_lease_grants: meter
                .u64_counter(QUOTA_LEASE_GRANTS)
                .with_description("Quota-lease grants taken from the store")
                .build(),
            quota_leases_reclaimed: meter
                .u64_counter(QUOTA_LEASES_RECLAIMED)
                .with_description("Expired quota leases of crashed holders settled by the rollup job")
                .build(),
            rate_lease_steps: meter
                .u64_counter(RATE_LEASE_STEPS)
                .with_description("Rate-limit steps taken from the store in batches, and those forfeited unspent")
                .build(),
            rollup_lag: meter
                .f64_gauge(ROLLUP_LAG)
                .with_unit("s")
                .with_description("How far the usage rollup is behind the newest usage event")
                .build(),
            consumer_outcomes: meter
                .u64_counter(CONSUMER_OUTCOMES)
                .with_description("Integration messages by what the consumer did with them")
                .build(),
            outbox_backlog: meter
                .u64_gauge(OUTBOX_BACKLOG)
                .with_unit("{event}")
                .with_description("Outbox events waiting to be published")
                .build(),
            outbox_published: meter
                .u64_counter(OUTBOX_PUBLISHED)
                .with_unit("{event}")
                .with_description("Outbox events Service Bus took, by CloudEvents type")
                .build(),
            breaker_state: meter
                .u64_gauge(BREAKER_STATE)
                .with_description("Circuit breaker state by dependency: 0 closed, 1 half-open, 2 open")
                .build(),
            breaker_transitions: meter
                .u64_counter(BREAKER_TRANSITIONS)
                .with_description("Circuit breaker state changes by dependency and new state")
                .build(),
            dependency_refusals: meter
                .u64_counter(DEPENDENCY_REFUSALS)
                .with_description("Calls refused without reaching their dependency: circuit open or overloaded")
                .build(),
        }
    }

    pub fn request(&self, operation: &str, status: u16, latency: Duration) {
        self.request_duration.record(
            latency.as_secs_f64(),
            &[
                KeyValue::new("operation", operation.to_owned()),
                KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
    }

    pub fn limiter_rejection(&self, kind: LimiterKind) {
        self.limiter_rejections.add(1, &[KeyValue::new("kind", kind.as_str())]);
    }

    pub fn quota_consumed(&self, units: i64, overage_units: i64) {
        let overage = overage_units.clamp(0, units.max(0));
        let included = units.max(0) - overage;
        if included > 0 {
            self.quota_units.add(included as u64, &[KeyValue::new("kind", "included")]);
        }
        if overage > 0 {
            self.quota_units.add(overage as u64, &[KeyValue::new("kind", "overage")]);
        }
    }

    pub fn quota_lease_granted(&self, units: i64) {
        self.quota_lease_grants.add(1, &[]);
        self.quota_lease_units.add(units.max(0) as u64, &[KeyValue::new("kind", "granted")]);
    }

    pub fn quota_lease_settled(&self, returned_units: i64) {
        if returned_units > 0 {
            self.quota_lease_units.add(returned_units as u64, &[KeyValue::new("kind", "returned")]);
        }
    }

    pub fn quota_leases_reclaimed(&self, leases: u64) {
        if leases > 0 {
            self.quota_leases_reclaimed.add(leases, &[]);
        }
    }

    pub fn rate_lease_steps(&self, granted: i64, forfeited: i64) {
        if granted > 0 {
            self.rate_lease_steps.add(granted as u64, &[KeyValue::new("kind", "granted")]);
        }
        if forfeited > 0 {
            self.rate_lease_steps.add(forfeited as u64, &[KeyValue::new("kind", "forfeited")]);
        }
    }

    pub fn rollup_lag(&self, lag: Duration) {
        self.rollup_lag.record(lag.as_secs_f64(), &[]);
    }

    pub fn consumer_outcome(&self, outcome: ConsumerOutcome) {
        self.consumer_outcomes.add(1, &[KeyValue::new("outcome", outcome.as_str())]);
    }

    pub fn outbox_backlog(&self, events: u64) {
        self.outbox_backlog.record(events, &[]);
    }

    pub fn outbox_published(&self, event_type: &str) {
        self.outbox_published.add(1, &[KeyValue::new("type", event_type.to_owned())]);
    }

    pub fn breaker_state(&self, dependency: &'static str, level: u64) {
        self.breaker_state.record(level, &[KeyValue::new("dependency", dependency)]);
    }

    pub fn breaker_transition(&self, dependency: &'static str, to: &'static str) {
        self.breaker_transitions.add(1, &[KeyValue::new("dependency", dependency), KeyValue::new("to", to)]);
    }

    pub fn dependency_refusal(&self, dependency: &'static str, kind: &'static str) {
        self.dependency_refusals.add(1, &[KeyValue::new("dependency", dependency), KeyValue::new("kind", kind)]);
    }
}

static GLOBAL: OnceLock<Metrics> = OnceLock::new();

/// Makes `metrics` the instruments the free functions record to (once per process; later calls are ignored).
pub(super) fn install(metrics: Metrics) {
    let _ = GLOBAL.set(metrics);
}

fn with(f: impl FnOnce(&Metrics)) {
    if let Some(metrics) = GLOBAL.get() {
        f(metrics);
    }
}

/// One API request or invocation finished: its operation id (or route), status and latency.
pub fn request(operation: &str, status: u16, latency: Duration) {
    with(|m| m.request(operation, status, latency));
}

/// The limiter refused a request.
pub fn limiter_rejection(kind: LimiterKind) {
    with(|m| m.limiter_rejection(kind));
}

/// A successful request consumed `units` of its tenant's quota, `overage_units` of them beyond it.
pub fn quota_consumed(units: i64, overage_units: i64) {
    with(|m| m.quota_consumed(units, overage_units));
}

/// This process took a quota lease of `units` from the store.
pub fn quota_lease_granted(units: i64) {
    with(|m| m.quota_lease_granted(units));
}

/// A quota lease was settled and gave `returned_units` back to the store.
pub fn quota_lease_settled(returned_units: i64) {
    with(|m| m.quota_lease_settled(returned_units));
}

/// The rollup job settled `leases` expired quota leases of crashed holders.
pub fn quota_leases_reclaimed(leases: u64) {
    with(|m| m.quota_leases_reclaimed(leases));
}

/// A process took `granted` rate-limit steps in a batch, and forfeited `forfeited` of its previous batch.
pub fn rate_lease_steps(granted: i64, forfeited: i64) {
    with(|m| m.rate_lease_steps(granted, forfeited));
}

/// The usage rollup finished a step and is now `lag` behind the newest usage event.
pub fn rollup_lag(lag: Duration) {
    with(|m| m.rollup_lag(lag));
}

/// The Service Bus consumer finished with one message.
pub fn consumer_outcome(outcome: ConsumerOutcome) {
    with(|m| m.consumer_outcome(outcome));
}

/// The outbox publisher saw `events` unpublished events.
pub fn outbox_backlog(events: u64) {
    with(|m| m.outbox_backlog(events));
}

/// Service Bus took an outbox event of `event_type`.
pub fn outbox_published(event_type: &str) {
    with(|m| m.outbox_published(event_type));
}

/// A dependency's circuit breaker is now at `level` (0 closed, 1 half-open, 2 open).
pub fn breaker_state(dependency: &'static str, level: u64) {
    with(|m| m.breaker_state(dependency, level));
}

/// A dependency's circuit breaker changed state to `to`.
pub fn breaker_transition(dependency: &'static str, to: &'static str) {
    with(|m| m.breaker_transition(dependency, to));
}

/// A call was refused without reaching `dependency` (`kind`: `circuit-open` or `overloaded`).
pub fn dependency_refusal(dependency: &'static str, kind: &'static str) {
    with(|m| m.dependency_refusal(dependency, kind));
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::metrics::MeterProvider as _;
    use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
    use opentelemetry_sdk::metrics::{InMemoryMetricExporter, PeriodicReader, SdkMeterProvider};

    /// Every data point exported, as (metric name, sorted attributes, value or sum, count).
    fn export(record: impl FnOnce(&Metrics)) -> Vec<(String, Vec<String>, f64, u64)> {
        let exporter = InMemoryMetricExporter::default();
        let provider =
            SdkMeterProvider::builder().with_reader(PeriodicReader::builder(exporter.clone()).build()).build();
        record(&Metrics::new(&provider.meter("meterline")));
        provider.force_flush().unwrap();
        let mut points = Vec::new();
        let attrs = |it: &mut dyn Iterator<Item = &KeyValue>| {
            let mut v: Vec<String> = it.map(|kv| format!("{}={}", kv.key, kv.value)).collect();
            v.sort();
            v
        };
        for resource in exporter.get_finished_metrics().unwrap() {
            for metric in resource.scope_metrics().flat_map(|s| s.metrics()) {
                let name = metric.name().to_owned();
                match metric.data() {
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        for p in h.data_points() {
                            points.push((name.clone(), attrs(&mut p.attributes()), p.sum(), p.count()));
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            points.push((name.clone(), attrs(&mut p.attributes()), p.value(), 1));
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Gauge(g)) => {
                        for p in g.data_points() {
                            points.push((name.clone(), attrs(&mut p.attributes()), p.value() as f64, 1));
                        }
                    }
                    AggregatedMetrics::U64(MetricData::Sum(s)) => {
                        for p in s.data_points() {
                            points.push((name.clone(), attrs(&mut p.attributes()), p.value() as f64, 1));
                        }
                    }
                    other => panic!("{name}: unexpected aggregation {other:?}"),
                }
            }
        }
        points.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
        points
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn each_call_exports_its_metric_with_its_attributes() {
        let points = export(|m| {
            m.request("listDocuments", 200, Duration::from_millis(30));
            m.request("listDocuments", 200, Duration::from_millis(10));
            m.request("createDocument", 429, Duration::from_millis(2));
            m.limiter_rejection(LimiterKind::Rate);
            m.limiter_rejection(LimiterKind::Quota);
            m.limiter_rejection(LimiterKind::Quota);
            m.quota_consumed(5, 2);
            m.quota_consumed(1, 0);
            m.rollup_lag(Duration::from_secs(90));
            m.consumer_outcome(ConsumerOutcome::Processed);
            m.consumer_outcome(ConsumerOutcome::Quarantined);
            m.outbox_backlog(7);
        });
        let expected = vec![
            (CONSUMER_OUTCOMES, strings(&["outcome=processed"]), 1.0, 1),
            (CONSUMER_OUTCOMES, strings(&["outcome=quarantined"]), 1.0, 1),
            (LIMITER_REJECTIONS, strings(&["kind=quota"]), 2.0, 1),
            (LIMITER_REJECTIONS, strings(&["kind=rate"]), 1.0, 1),
            (OUTBOX_BACKLOG, vec![], 7.0, 1),
            (QUOTA_UNITS, strings(&["kind=included"]), 4.0, 1),
            (QUOTA_UNITS, strings(&["kind=overage"]), 2.0, 1),
            (REQUEST_DURATION, strings(&["http.response.status_code=200", "operation=listDocuments"]), 0.04, 2),
            (REQUEST_DURATION, strings(&["http.response.status_code=429", "operation=createDocument"]), 0.002, 1),
            (ROLLUP_LAG, vec![], 90.0, 1),
        ];
        assert_eq!(points.len(), expected.len(), "{points:#?}");
        for (got, want) in points.iter().zip(expected) {
            assert_eq!((got.0.as_str(), &got.1, got.3), (want.0, &want.1, want.3), "{points:#?}");
            assert!((got.2 - want.2).abs() < 1e-9, "{} {:?}: {} != {}", got.0, got.1, got.2, want.2);
        }
    }

    #[test]
    fn quota_consumption_never_goes_negative() {
        let points = export(|m| {
            m.quota_consumed(0, 0);
            m.quota_consumed(3, 9);
            m.quota_consumed(-1, 0);
        });
        assert_eq!(points, vec![(QUOTA_UNITS.to_owned(), strings(&["kind=overage"]), 3.0, 1)]);
    }

    #[test]
    fn the_free_functions_do_nothing_before_an_exporter_is_installed() {
        // The unit-test process never calls `install`: these must not panic or allocate instruments.
        request("x", 200, Duration::ZERO);
        limiter_rejection(LimiterKind::Rate);
        outbox_backlog(1);
        assert!(GLOBAL.get().is_none());
    }
}
