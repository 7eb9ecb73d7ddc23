//! A capped API client's share of its tenant's quota: a counter per (client, period), debited with one
//! conditional write per call so concurrent calls never take it past the cap (docs/usage.md, "Client limits").

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::*;

/// A debit of a capped client's counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientQuotaDebit {
    pub tenant_id: Uuid,
    /// The registration (`api_client_registrations.id`).
    pub client_id: Uuid,
    pub period_start: NaiveDate,
    /// The client's cap for the period.
    pub cap: i64,
    pub units: i64,
    pub now: DateTime<Utc>,
}

/// What a client debit did: the counter after it, or as it stands when the cap refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientQuotaOutcome {
    Accepted { units_used: i64 },
    Rejected { units_used: i64 },
}

#[async_trait]
pub trait ClientQuotaStore: Send + Sync {
    /// Adds `units` to the client's counter of the period (created on first use) unless that would pass `cap`.
    async fn debit_client_quota(&self, debit: &ClientQuotaDebit) -> Result<ClientQuotaOutcome, StoreError>;

    /// Gives back a debit whose call failed; the counter never goes below zero.
    async fn refund_client_quota(
        &self,
        client_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The client's counter of the period (0 before its first debit).
    async fn client_quota_used(&self, client_id: Uuid, period_start: NaiveDate) -> Result<i64, StoreError>;
}
