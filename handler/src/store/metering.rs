//! The metering aggregate's storage contract: quota debits, rate-limit steps, admission, and every request's
//! usage (and audit) records, each atomic across processes sharing the store; with the aggregate's types and the
//! rules both backends share (GCRA, threshold crossing).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::*;

/// Metering primitives, each atomic across processes sharing the store: quota debits, rate-limit steps, admission, and the usage (and audit) records of every request.
#[async_trait]
pub trait MeteringStore: Send + Sync + 'static {
    /// Debits the quota of the debit's period, never beyond the quota under `block`, whatever the concurrency.
    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError>;

    /// Gives back a debit (the operation it paid for failed). Counters never go below zero.
    async fn refund_quota(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        overage_units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The current counter of a period, if any debit created it.
    async fn quota_usage(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Option<QuotaUsage>, StoreError>;

    /// One GCRA step for (tenant, client), computed with [`gcra`] under a row lock.
    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError>;

    /// Up to `want` GCRA steps for (tenant, client) at once, computed with [`gcra_batch`] under the same row lock:
    /// a rate lease's tokens, which its process spends in memory (docs/usage.md, "Rate leases").
    async fn take_rate_tokens(&self, take: &RateLimitTake, want: i64) -> Result<RateTokens, StoreError>;

    /// One request's admission in ONE transaction: [`MeteringStore::take_rate_limit`], then, if the rate limit allowed
    /// it, [`MeteringStore::debit_quota`]. One write instead of two is what the request path pays.
    async fn admit(&self, admission: &Admission) -> Result<AdmissionDecision, StoreError>;

    /// Inserts usage events in one transaction, skipping event ids already stored; returns how many were new.
    async fn record_usage_events(&self, events: &[UsageEvent]) -> Result<u64, StoreError> {
        self.record_usage(events, &[]).await
    }

    /// Inserts usage events and appends audit events in ONE transaction; returns how many usage events were new.
    ///
    /// Usage events already stored (by event id) and audit events already stored (by id) are skipped, so the
    /// whole call may be retried. Audit events are appended in slice order to their chains
    /// ([`audit_chain_key`]): each gets the next `chain_seq` and is hashed with [`AuditEventInput::seal`]
    /// after the chain's head, read in the same transaction under a lock that makes concurrent appenders
    /// (other processes too) wait, so a chain never forks. There is no method that updates or deletes an
    /// audit event.
    async fn record_usage(&self, usage: &[UsageEvent], audit: &[AuditEventInput]) -> Result<u64, StoreError>;

    /// How many usage events a tenant has (all time).
    async fn count_usage_events(&self, tenant_id: Uuid) -> Result<u64, StoreError>;

    /// Sets the response size of a recorded event whose body was streamed after the event was written (its
    /// size was unknown then); true if the event exists. Rollups do not read sizes, so a rolled-up event may
    /// still change here.
    async fn set_response_bytes(&self, event_id: Uuid, response_bytes: i64) -> Result<bool, StoreError>;
}

/// A debit against a tenant's monthly quota. The period row is created on first use with this quota snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDebit {
    pub tenant_id: Uuid,
    /// First day of the UTC calendar month.
    pub period_start: NaiveDate,
    /// First day of the next month.
    pub period_end: NaiveDate,
    pub quota_units: i64,
    pub overage_policy: OveragePolicy,
    /// The tenant's plan now: the plan a period this debit creates (or upgrades) is billed on.
    pub plan_code: String,
    pub units: i64,
    pub now: DateTime<Utc>,
}

/// What a quota debit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOutcome {
    /// Debited. `overage_units` of this debit's units fell beyond the quota (only under `allow`).
    Accepted { units_used: i64, quota_units: i64, overage_units: i64 },
    /// Not debited: the quota is exhausted and the policy is `block`.
    Rejected { units_used: i64, quota_units: i64 },
}

/// A period's quota counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub tenant_id: Uuid,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub quota_units: i64,
    pub overage_policy: OveragePolicy,
    pub units_used: i64,
    pub overage_units: i64,
    /// The units of quota grants counted in `quota_units` (open grants, and the used part of ended ones): the
    /// plan's own quota is `quota_units - granted_units`.
    pub granted_units: i64,
    /// The plan the period is billed on (migration 15; `None` for periods created before it).
    pub plan_code: Option<String>,
    /// The plan whose overage price bills the period's overage, when a move to `allow` through a plan with a
    /// smaller quota kept `plan_code` (migration 18); `None`: `plan_code`'s price.
    pub overage_plan_code: Option<String>,
}

impl QuotaUsage {
    /// The same period with `units_used` in place of the counter (units a lease holds unspent taken off), its
    /// overage no more than what then lies beyond the quota.
    pub fn with_units_used(self, units_used: i64) -> QuotaUsage {
        let units_used = units_used.clamp(0, self.units_used);
        let overage_units = self.overage_units.min((units_used - self.quota_units).max(0));
        QuotaUsage { units_used, overage_units, ..self }
    }
}

/// A rate-limit decision request for the GCRA (generic cell rate algorithm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitTake {
    pub tenant_id: Uuid,
    pub client_id: String,
    pub now_micros: i64,
    /// Microseconds between requests at the sustained rate: 60 s / requests per minute.
    pub emission_interval_micros: i64,
    /// The burst: this many requests may arrive at once after an idle period.
    pub burst: i64,
}

/// A GCRA decision. `tat_micros` is the theoretical arrival time after this decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitDecision {
    pub allowed: bool,
    pub tat_micros: i64,
    /// When rejected: how long until one request would be allowed.
    pub retry_after_micros: i64,
}

/// The error for a quota period row that its own transaction created (or locked) and can no longer find.
pub fn quota_row_vanished() -> StoreError {
    StoreError::Other(anyhow::anyhow!("quota row vanished inside its transaction"))
}

impl QuotaDebit {
    /// Whether this debit, having taken the period to `units_used` of `quota_units`, crossed a threshold.
    pub fn crossed_threshold(&self, units_used: i64, quota_units: i64) -> bool {
        crosses_threshold(units_used - self.units, units_used, quota_units)
    }
}

impl UsageEvent {
    /// This event as recorded after an unconditional debit that added `overage` overage units to its period:
    /// its own overage is never more than its units.
    pub fn with_debited_overage(&self, overage: i64) -> UsageEvent {
        UsageEvent { overage_units: overage.min(self.units), ..self.clone() }
    }

    /// The tenant an externally reported usage event is charged to; one without a tenant cannot be recorded.
    pub fn external_tenant(&self) -> Result<Uuid, StoreError> {
        self.tenant_id.ok_or_else(|| StoreError::Other(anyhow::anyhow!("external usage needs a tenant")))
    }
}

/// Whether a debit that took a period's usage from `before` to `after` units crossed the 80 % or the 100 %
/// threshold of `quota` units: only such a debit pays for the threshold bookkeeping (the flags and the
/// `meterline.quota.threshold-crossed.v1` outbox event, written in the debit's transaction).
pub fn crosses_threshold(before: i64, after: i64, quota: i64) -> bool {
    [80, 100].iter().any(|t| {
        before.saturating_mul(100) < quota.saturating_mul(*t) && after.saturating_mul(100) >= quota.saturating_mul(*t)
    })
}

/// What the limit stage asks of the store for one request: a rate-limit step and, when the operation costs
/// units, a quota debit, decided together in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub rate: RateLimitTake,
    pub debit: Option<QuotaDebit>,
}

/// The store's answer to an [`Admission`]. `debit` is `None` when nothing was to be debited or the rate
/// limit refused the request (a refused request is not debited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionDecision {
    pub rate: RateLimitDecision,
    pub debit: Option<QuotaOutcome>,
}

/// One API request's usage record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub event_id: Uuid,
    pub request_id: String,
    pub tenant_id: Option<Uuid>,
    pub client_id: Option<String>,
    pub principal_id: Option<String>,
    pub operation_id: String,
    pub method: String,
    pub route_template: String,
    pub status: i32,
    pub units: i64,
    pub billable: bool,
    pub overage_units: i64,
    pub latency_micros: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
    /// The quota lease the request spent its units from (`docs/usage.md`, "Quota leases"); `None` when it was
    /// debited directly or cost nothing.
    pub lease_id: Option<Uuid>,
    /// Which limit refused the request (a 429 of the limit stage); `None` for every other answer.
    pub refusal: Option<LimitRefusal>,
}

/// The limit that refused a request: a rate limit (the tenant's or a client's per minute) or a quota (the
/// tenant's or a capped client's per period).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitRefusal {
    Rate,
    Quota,
}

impl LimitRefusal {
    pub fn as_str(self) -> &'static str {
        match self {
            LimitRefusal::Rate => "rate",
            LimitRefusal::Quota => "quota",
        }
    }
}

/// A request's own records, handed to the store write that carries out the request so they commit in the
/// write's transaction: its usage event and, when audited, its audit event. Written only if the write takes
/// effect (created, or `Update::Updated`); the record stage's later insert of the same ids is then a no-op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub usage: UsageEvent,
    pub audit: Option<AuditEventInput>,
}

/// GCRA arithmetic shared by every store, so both make the same decision from the same stored state.
pub fn gcra(stored_tat_micros: Option<i64>, take: &RateLimitTake) -> RateLimitDecision {
    let tokens = gcra_batch(stored_tat_micros, take, 1);
    RateLimitDecision {
        allowed: tokens.granted == 1,
        tat_micros: tokens.tat_micros,
        retry_after_micros: tokens.retry_after_micros,
    }
}

/// What [`gcra_batch`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateTokens {
    /// Requests allowed now, each one emission interval of the theoretical arrival time: 0 when even one is
    /// refused.
    pub granted: i64,
    /// The theoretical arrival time after the granted steps (unchanged when none is granted).
    pub tat_micros: i64,
    /// When none is granted: how long until one request would be allowed.
    pub retry_after_micros: i64,
}

/// Up to `want` GCRA steps at once: as many as the burst tolerance allows, each advancing the theoretical arrival
/// time by one emission interval, exactly as that many single steps in a row would; none (with the retry-after
/// of one request) when even the first would be refused.
pub fn gcra_batch(stored_tat_micros: Option<i64>, take: &RateLimitTake, want: i64) -> RateTokens {
    let interval = take.emission_interval_micros.max(1);
    let tolerance = interval * (take.burst.max(1) - 1);
    let tat = stored_tat_micros.unwrap_or(take.now_micros).max(take.now_micros);
    let room = tolerance - (tat - take.now_micros);
    if room < 0 {
        return RateTokens { granted: 0, tat_micros: tat, retry_after_micros: -room };
    }
    let granted = (room / interval + 1).min(want.max(1));
    RateTokens { granted, tat_micros: tat + granted * interval, retry_after_micros: 0 }
}

/// Whether `units_used` has reached `threshold` percent of `quota_units` (a zero quota is reached at once).
pub fn quota_threshold_reached(units_used: i64, quota_units: i64, threshold: i64) -> bool {
    i128::from(units_used) * 100 >= i128::from(quota_units) * i128::from(threshold)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_threshold_is_crossed_by_the_debit_that_reaches_it_and_no_other() {
        assert!(crosses_threshold(79, 80, 100));
        assert!(crosses_threshold(70, 100, 100));
        assert!(crosses_threshold(95, 105, 100), "100 % crossed into overage");
        assert!(!crosses_threshold(80, 81, 100), "already past 80 %");
        assert!(!crosses_threshold(100, 120, 100));
        assert!(!crosses_threshold(0, 5, 0), "a zero quota has no thresholds to announce");
        assert!(crosses_threshold(0, 8, 10));
    }

    fn take(now: i64) -> RateLimitTake {
        RateLimitTake {
            tenant_id: Uuid::nil(),
            client_id: "c".into(),
            now_micros: now,
            emission_interval_micros: 1_000_000,
            burst: 3,
        }
    }

    #[test]
    fn a_batch_of_steps_decides_exactly_as_the_single_steps_in_a_row() {
        for want in [1, 2, 3, 5] {
            for start in [None, Some(500_000), Some(2_700_000), Some(9_000_000)] {
                let batch = gcra_batch(start, &take(1_000_000), want);
                let (mut tat, mut allowed) = (start, 0);
                for _ in 0..want {
                    let step = gcra(tat, &take(1_000_000));
                    if !step.allowed {
                        break;
                    }
                    (tat, allowed) = (Some(step.tat_micros), allowed + 1);
                }
                assert_eq!(batch.granted, allowed, "want {want} from {start:?}");
                if allowed > 0 {
                    assert_eq!(Some(batch.tat_micros), tat);
                } else {
                    assert_eq!(batch.retry_after_micros, gcra(start, &take(1_000_000)).retry_after_micros);
                }
            }
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..5 {
            let d = gcra(tat, &take(10_000_000));
            tat = Some(d.tat_micros);
            allowed += d.allowed as i32;
        }
        assert_eq!(allowed, 3, "the burst passes at once");
        let rejected = gcra(tat, &take(10_000_000));
        assert!(!rejected.allowed);
        assert_eq!(rejected.retry_after_micros, 1_000_000, "one emission interval until the next slot");
        assert!(gcra(tat, &take(11_000_000)).allowed, "one more after one interval");
        assert!(gcra(tat, &take(100_000_000)).allowed, "idle time refills");
    }

    #[test]
    fn a_debit_crossed_a_threshold_when_its_own_units_took_the_period_past_it() {
        let debit = QuotaDebit {
            tenant_id: Uuid::nil(),
            period_start: NaiveDate::from_ymd_opt(2026, 1, 1).unwrap(),
            period_end: NaiveDate::from_ymd_opt(2026, 2, 1).unwrap(),
            quota_units: 100,
            overage_policy: OveragePolicy::Allow,
            plan_code: "p".into(),
            units: 5,
            now: DateTime::from_timestamp(1_800_000_000, 0).unwrap(),
        };
        assert!(debit.crossed_threshold(82, 100), "77 -> 82 crosses 80 %");
        assert!(!debit.crossed_threshold(86, 100), "81 -> 86 was past 80 % already");
        assert!(debit.crossed_threshold(103, 100), "98 -> 103 crosses 100 %");
    }

    #[test]
    fn external_usage_needs_a_tenant_and_keeps_its_overage_within_its_units() {
        let at = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        let e = UsageEvent {
            event_id: Uuid::from_u128(9),
            request_id: "r".into(),
            tenant_id: Some(Uuid::from_u128(1)),
            client_id: None,
            principal_id: None,
            operation_id: "op".into(),
            method: "POST".into(),
            route_template: "/x".into(),
            status: 200,
            units: 3,
            billable: true,
            overage_units: 0,
            latency_micros: 1,
            request_bytes: 0,
            response_bytes: 0,
            occurred_at: at,
            recorded_at: at,
            lease_id: None,
            refusal: None,
        };
        assert_eq!(e.external_tenant().unwrap(), Uuid::from_u128(1));
        assert!(UsageEvent { tenant_id: None, ..e.clone() }.external_tenant().is_err());
        assert_eq!(e.with_debited_overage(10).overage_units, 3, "never more than the event's units");
        assert_eq!(e.with_debited_overage(2).overage_units, 2);
    }
}
