//! The quota-lease aggregate's storage contract: a process takes a grant of a period's quota units in one
//! transaction and spends it in memory; the grant goes back, less what the usage events naming it spent, when the
//! lease is settled (renewed, expired, or its holder shuts down). With its types and the rules both backends share.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::*;

/// Quota leases (docs/usage.md, "Quota leases"), each operation one transaction, atomic across processes.
#[async_trait]
pub trait QuotaLeaseStore: Send + Sync + 'static {
    /// Settles the period's leases that expired before `request.reclaim_before` (a crashed holder's), raises the
    /// period's quota snapshot to the request's when the plan's is higher (a lowered quota waits for the next
    /// period), then debits the counter by [`lease_size`] units and records the lease: never past the quota under `block` (a
    /// partial grant when less remains, `Exhausted` when less than `min_units` does), the whole ask under `allow`.
    async fn grant_quota_lease(&self, request: &QuotaLeaseRequest) -> Result<QuotaLeaseGrant, StoreError>;

    /// Settles a lease: the units the stored billable usage events naming it did not spend go back to the
    /// counter, and the lease is marked settled. Idempotent: settling a settled lease changes nothing and answers
    /// its figures again. `None` for an unknown lease.
    async fn settle_quota_lease(
        &self,
        lease_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<SettledQuotaLease>, StoreError>;

    /// Settles up to `limit` unsettled leases, of any tenant, that expired before `before` (crash recovery; the
    /// rollup job calls it); returns how many it settled.
    async fn settle_expired_quota_leases(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// A lease as stored.
    async fn get_quota_lease(&self, lease_id: Uuid) -> Result<Option<QuotaLease>, StoreError>;
}

/// A process's request for a quota lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaLeaseRequest {
    pub lease_id: Uuid,
    /// Who takes it (the process instance), for operators; settlement does not depend on it.
    pub holder: String,
    /// The period, its quota and policy as a debit names them (the period row is created with this snapshot on
    /// first use); `units` is the most the lease may take.
    pub debit: QuotaDebit,
    /// The fewest units worth granting (one request's cost): fewer left under `block` is `Exhausted`.
    pub min_units: i64,
    pub expires_at: DateTime<Utc>,
    /// Leases of this period that expired before this instant are settled first: their holders stopped spending
    /// them at expiry, and every usage event they could still write has committed by now (docs/usage.md).
    pub reclaim_before: DateTime<Utc>,
}

/// What a lease request got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaLeaseGrant {
    /// `units` were debited; the counter now stands at `units_used`, and the lease holds the counter's units
    /// `first_unit + 1 ..= first_unit + units` (its overage is [`overage_between`] of those).
    Granted { units: i64, first_unit: i64, units_used: i64, quota_units: i64 },
    /// Nothing was debited: under `block`, fewer than `min_units` are left.
    Exhausted { units_used: i64, quota_units: i64 },
}

/// A settled lease's figures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SettledQuotaLease {
    pub granted_units: i64,
    /// The billable units of the stored usage events naming the lease (never more than granted).
    pub spent_units: i64,
    /// `granted_units - spent_units`, given back to the counter.
    pub returned_units: i64,
}

/// A lease row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaLease {
    pub lease_id: Uuid,
    pub tenant_id: Uuid,
    pub period_start: NaiveDate,
    pub holder: String,
    pub granted_units: i64,
    pub first_unit: i64,
    pub granted_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub settled_at: Option<DateTime<Utc>>,
    pub spent_units: Option<i64>,
}

/// How many units a lease gets when the counter stands at `used` of `quota`: what it asks for (`want`, at least
/// `min`) under `allow`; under `block` what is left, capped by `want`, or none when fewer than `min` are left.
pub fn lease_size(policy: OveragePolicy, quota: i64, used: i64, want: i64, min: i64) -> i64 {
    let (min, want) = (min.max(1), want.max(min.max(1)));
    let size = match policy {
        OveragePolicy::Allow => want,
        OveragePolicy::Block => want.min(quota - used),
    };
    if size >= min { size } else { 0 }
}

/// Whether the plan a grant asks under (`debit`) is an upgrade over the period's snapshot (`quota`, `policy`): a
/// larger quota, or `allow` where the period says `block`. An upgrade applies to the period at once; a downgrade
/// (a smaller quota, `allow` to `block`) from the next period, as Stripe applies plan changes by default.
pub fn is_upgrade(quota: i64, policy: OveragePolicy, debit: &QuotaDebit) -> bool {
    debit.quota_units > quota || (policy == OveragePolicy::Block && debit.overage_policy == OveragePolicy::Allow)
}

/// The period's snapshot after an upgrade ([`is_upgrade`]): the larger quota, and `allow` if either says so.
pub fn upgraded(quota: i64, policy: OveragePolicy, debit: &QuotaDebit) -> (i64, OveragePolicy) {
    let policy = if debit.overage_policy == OveragePolicy::Allow { OveragePolicy::Allow } else { policy };
    (quota.max(debit.quota_units), policy)
}

/// The plans an upgraded period is billed on from now ([`UpgradedPlans`]), from the period's own quota
/// (`plan_quota`, grants left out) and policy before the upgrade.
pub fn upgraded_plans(plan_quota: i64, policy: OveragePolicy, debit: &QuotaDebit) -> UpgradedPlans {
    if debit.quota_units >= plan_quota {
        return UpgradedPlans { billed_on: Some(debit.plan_code.clone()), overage_priced_by: None };
    }
    let allows_now = policy == OveragePolicy::Block && debit.overage_policy == OveragePolicy::Allow;
    UpgradedPlans { billed_on: None, overage_priced_by: allows_now.then(|| debit.plan_code.clone()) }
}

/// What an upgrade changes in the plans a period is billed on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpgradedPlans {
    /// The new plan when its quota is at least the period's: the period is billed on it from now (base and overage
    /// price alike, and any overage plan set before is dropped). `None`: the plan the period is billed on already.
    pub billed_on: Option<String>,
    /// A move to `allow` through a plan with a smaller quota upgrades the policy only: the period keeps its larger
    /// quota and the plan it is billed on (its base price), and the new plan prices the overage it allows (the
    /// `block` plan's overage price would bill it at a price that plan never charges).
    pub overage_priced_by: Option<String>,
}

/// How many of the counter's units `from + 1 ..= from + n` lie beyond `quota`.
pub fn overage_between(from: i64, n: i64, quota: i64) -> i64 {
    (from + n - quota).max(0) - (from - quota).max(0)
}

/// A settlement's figures from the lease's grant and the billable units its stored usage events spent (a
/// spend above the grant, which the holder never makes, is counted as the grant).
pub fn settlement(granted_units: i64, spent_by_events: i64) -> SettledQuotaLease {
    let spent_units = spent_by_events.clamp(0, granted_units);
    SettledQuotaLease { granted_units, spent_units, returned_units: granted_units - spent_units }
}

/// The outcome of a lease whose debit took the counter to `units_used` of `quota_units`.
pub fn granted(units: i64, units_used: i64, quota_units: i64) -> QuotaLeaseGrant {
    QuotaLeaseGrant::Granted { units, first_unit: units_used - units, units_used, quota_units }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_grants_what_is_left_up_to_the_ask_and_nothing_below_the_minimum() {
        assert_eq!(lease_size(OveragePolicy::Block, 100, 0, 10, 1), 10);
        assert_eq!(lease_size(OveragePolicy::Block, 100, 95, 10, 1), 5, "a partial grant");
        assert_eq!(lease_size(OveragePolicy::Block, 100, 98, 10, 3), 0, "fewer than one request's cost left");
        assert_eq!(lease_size(OveragePolicy::Block, 100, 100, 10, 1), 0);
        assert_eq!(lease_size(OveragePolicy::Block, 100, 120, 10, 1), 0, "a lowered quota leaves nothing");
        assert_eq!(lease_size(OveragePolicy::Block, 100, 0, 0, 2), 2, "the ask is at least the minimum");
    }

    #[test]
    fn allow_grants_the_whole_ask_beyond_the_quota() {
        assert_eq!(lease_size(OveragePolicy::Allow, 100, 100, 10, 1), 10);
        assert_eq!(lease_size(OveragePolicy::Allow, 0, 5, 3, 1), 3);
    }

    #[test]
    fn overage_counts_only_the_units_beyond_the_quota() {
        assert_eq!(overage_between(90, 5, 100), 0);
        assert_eq!(overage_between(98, 5, 100), 3);
        assert_eq!(overage_between(100, 5, 100), 5);
        assert_eq!(overage_between(120, 5, 100), 5);
    }

    #[test]
    fn a_settlement_returns_what_was_not_spent_and_never_more_than_the_grant() {
        assert_eq!(settlement(10, 4), SettledQuotaLease { granted_units: 10, spent_units: 4, returned_units: 6 });
        assert_eq!(settlement(10, 0).returned_units, 10);
        assert_eq!(settlement(10, 12), SettledQuotaLease { granted_units: 10, spent_units: 10, returned_units: 0 });
    }
}
