//! The plans aggregate's storage contract: plans and their per-operation cost overrides.

use async_trait::async_trait;

use super::*;

/// Plans and their per-operation cost overrides.
#[async_trait]
pub trait PlanStore: Send + Sync + 'static {
    /// Inserts a plan; `Conflict` if the code exists.
    async fn create_plan(&self, plan: &Plan, ledger: Option<&Ledger>) -> Result<(), StoreError>;

    async fn get_plan(&self, code: &str) -> Result<Option<Plan>, StoreError>;

    /// All plans, ordered by code (there are few).
    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError>;

    /// Replaces a plan's fields (all but code and created_at) if it is still at `expected_version`, and with
    /// `costs` also all of its cost overrides, in one transaction.
    async fn update_plan(
        &self,
        plan: &Plan,
        expected_version: i64,
        costs: Option<&[(String, i64)]>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Plan>, StoreError>;

    /// The plan's overrides of operation costs, sorted by operation id (empty: the defaults apply).
    async fn plan_operation_costs(&self, plan_code: &str) -> Result<Vec<(String, i64)>, StoreError>;

    /// Replaces all of a plan's cost overrides in one transaction (`ForeignKey` for an unknown plan).
    async fn set_plan_operation_costs(&self, plan_code: &str, costs: &[(String, i64)]) -> Result<(), StoreError>;
}

/// A plan row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub code: String,
    pub name: String,
    pub requests_per_minute: i32,
    pub burst: i32,
    pub monthly_quota_units: i64,
    pub overage_policy: OveragePolicy,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    pub base_price_micros: i64,
    pub overage_unit_price_micros: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OveragePolicy {
    /// Reject calls beyond the monthly quota.
    Block,
    /// Let them through and count them as overage.
    Allow,
}

impl OveragePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OveragePolicy::Block => "block",
            OveragePolicy::Allow => "allow",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "block" => Some(OveragePolicy::Block),
            "allow" => Some(OveragePolicy::Allow),
            _ => None,
        }
    }
}
