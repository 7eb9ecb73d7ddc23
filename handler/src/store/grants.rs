//! Quota grants: units a platform administrator adds to a tenant's period, with a reason and an expiry
//! (docs/usage.md, "Grants"). The rows and the trait; the rule of what an ending grant gives back.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::*;

/// A grant row. Open while `ended_at` is `None`; it ends by expiring (at `expires_at`) or by revocation
/// (`revoked_by`), and then `returned_units` says how much of it the counter had not used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaGrant {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The period it adds to (first day of the month).
    pub period_start: NaiveDate,
    pub units: i64,
    pub reason: String,
    /// Who granted it (the platform administrator's object id or application id).
    pub granted_by: String,
    pub granted_at: DateTime<Utc>,
    /// At the latest the period's end.
    pub expires_at: DateTime<Utc>,
    pub ended_at: Option<DateTime<Utc>>,
    pub revoked_by: Option<String>,
    pub returned_units: Option<i64>,
    pub version: i64,
}

/// The plan a period row starts from when a grant is its first use: the snapshot a first debit would take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeriodPlan {
    pub period_end: NaiveDate,
    pub quota_units: i64,
    pub overage_policy: OveragePolicy,
    /// The tenant's plan, which a period the grant creates is billed on.
    pub plan_code: String,
}

impl PeriodPlan {
    /// The period row `grant` creates when it is its period's first use: the snapshot a first debit would take.
    pub(crate) fn first_use(&self, grant: &QuotaGrant) -> QuotaDebit {
        QuotaDebit {
            tenant_id: grant.tenant_id,
            period_start: grant.period_start,
            period_end: self.period_end,
            quota_units: self.quota_units,
            overage_policy: self.overage_policy,
            plan_code: self.plan_code.clone(),
            units: 0,
            now: grant.granted_at,
        }
    }
}

#[async_trait]
pub trait QuotaGrantStore: Send + Sync {
    /// Records an open grant and raises its period's quota (`quota_units` and `granted_units` of `quota_usage`) by
    /// its units, in one transaction with the ledger and the response stored under its idempotency key (a key in
    /// use is a `Conflict` and nothing is written); the period row is created from `plan` if it has none yet.
    async fn create_quota_grant(
        &self,
        grant: &QuotaGrant,
        plan: &PeriodPlan,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError>;

    /// A tenant's grants of one period, oldest first.
    async fn list_quota_grants(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Vec<QuotaGrant>, StoreError>;

    /// One grant of `tenant_id`; another tenant's is `None`.
    async fn get_quota_grant(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<QuotaGrant>, StoreError>;

    /// Ends an open grant of `tenant_id` now (`by` revokes it), if it is still at `expected_version`, giving back
    /// its unused part ([`returned_units`]) and bumping its version. An ended grant (expired or revoked) is
    /// answered as it is, whatever version was named: the revocation is already reflected.
    async fn revoke_quota_grant(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        by: &str,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<QuotaGrant>, StoreError>;

    /// Ends the open grants that expired at or before `now`, oldest expiry first, at most `limit`, each giving
    /// back its unused part; returns how many. The rollup job sweeps with it; a lease grant ends its own period's
    /// expired grants itself before it reads the counter.
    async fn expire_quota_grants(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;
}

/// What an ending grant of `units` gives back when the period's counter stands at `used` of `quota`: the part
/// of it the counter has not used, never taking the quota below what is used. Units held by open quota leases
/// count as used, so a grant ending while leases hold its units gives back less (never more) than exact.
pub fn returned_units(units: i64, quota: i64, used: i64) -> i64 {
    units.min((quota - used).max(0))
}

/// What a revocation does with the grant as read in its transaction (both stores).
#[derive(Debug)]
pub(crate) enum Revocation {
    /// Nothing to write; the answer: no such grant, a stale version, or a grant already ended (the revocation is
    /// already reflected, whatever version was named).
    Answer(Update<QuotaGrant>),
    /// End it at `at`: revoked by the caller when `revoked`, else it expired then and no sweep has ended it yet.
    End { grant: QuotaGrant, at: DateTime<Utc>, revoked: bool },
}

/// [`Revocation`] of `current` at `now`, if the caller read it at `expected_version`.
pub(crate) fn revocation(current: Option<QuotaGrant>, expected_version: i64, now: DateTime<Utc>) -> Revocation {
    match current {
        None => Revocation::Answer(Update::NotFound),
        Some(g) if g.ended_at.is_some() => Revocation::Answer(Update::Updated(g)),
        Some(g) if g.version != expected_version => {
            Revocation::Answer(Update::VersionMismatch { current_version: g.version })
        }
        Some(g) if g.expires_at <= now => Revocation::End { at: g.expires_at, grant: g, revoked: false },
        Some(g) => Revocation::End { grant: g, at: now, revoked: true },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ending_grant_gives_back_only_what_the_counter_has_not_used() {
        assert_eq!(returned_units(10, 110, 50), 10, "unused: all of it");
        assert_eq!(returned_units(10, 110, 104), 6, "partly used");
        assert_eq!(returned_units(10, 110, 110), 0, "used up");
        assert_eq!(returned_units(10, 110, 130), 0, "beyond the quota (allow): nothing");
    }
}
