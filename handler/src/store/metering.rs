//! The metering aggregate's storage contract: quota debits, rate-limit steps, admission, and every request's
//! usage (and audit) records, each atomic across processes sharing the store.

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

    /// One GCRA step for (tenant, client), computed with [`model::gcra`] under a row lock.
    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError>;

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
}
