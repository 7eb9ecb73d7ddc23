//! The unit cost of each operation and whether the quota applies to it: one table, shown in the OpenAPI
//! document as `x-meterline-units` and `x-meterline-quota`.

/// Whether an operation spends the tenant's quota.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Quota {
    /// The call spends its units from the monthly quota (refused with 429 `quota-exceeded` when they are not
    /// left under a `block` plan) and is billed when it succeeds.
    Applies,
    /// A self-service read: what a tenant needs to see why it is limited (its usage, statements, audit trail,
    /// who it is). Rate-limited and recorded like every call, never refused for quota, never billed; its usage
    /// event carries the units as not billable.
    Exempt,
}

use Quota::{Applies, Exempt};

/// Units an operation costs, unless the tenant's plan overrides it (`PUT /api/v1/plans/{code}/costs`, for
/// operations the quota applies to). Reads 1, lists and searches 2, writes 5, exports and verification 10;
/// operations not listed (health, the OpenAPI document) cost nothing.
pub const COSTS: &[(&str, i64, Quota)] = &[
    ("getMe", 1, Exempt),
    ("getWhoAmI", 1, Exempt),
    ("getUsageSummary", 1, Exempt),
    ("getUsage", 2, Exempt),
    ("exportUsage", 10, Exempt),
    ("listTenantUsage", 10, Exempt),
    ("getUsagePipeline", 2, Exempt),
    ("listBillingStatements", 2, Exempt),
    ("getBillingStatement", 1, Exempt),
    ("listAuditEvents", 2, Exempt),
    ("verifyAuditChain", 10, Exempt),
    ("getDocument", 1, Applies),
    ("listDocuments", 2, Applies),
    ("createDocument", 5, Applies),
    ("replaceDocument", 5, Applies),
    ("patchDocument", 5, Applies),
    ("deleteDocument", 5, Applies),
    ("listTenants", 2, Applies),
    ("getTenant", 1, Applies),
    ("createTenant", 5, Applies),
    ("patchTenant", 5, Applies),
    ("suspendTenant", 5, Applies),
    ("reactivateTenant", 5, Applies),
    ("listPlans", 2, Applies),
    ("getPlan", 1, Applies),
    ("createPlan", 5, Applies),
    ("replacePlan", 5, Applies),
    ("getPlanCosts", 1, Applies),
    ("replacePlanCosts", 5, Applies),
    ("listClients", 2, Applies),
    ("registerClient", 5, Applies),
    ("getClient", 1, Applies),
    ("revokeClient", 5, Applies),
    ("setClientLimits", 5, Applies),
    ("listTenantClients", 2, Applies),
    ("getTenantClient", 1, Applies),
    ("approveClient", 5, Applies),
    ("rejectClient", 5, Applies),
    ("listGrants", 2, Applies),
    ("createGrant", 5, Applies),
    ("getGrant", 1, Applies),
    ("revokeGrant", 5, Applies),
];

fn entry(operation_id: &str) -> Option<&'static (&'static str, i64, Quota)> {
    COSTS.iter().find(|(op, _, _)| *op == operation_id)
}

/// The units `operation_id` costs (0 for unmetered or unknown operations).
pub fn units(operation_id: &str) -> i64 {
    entry(operation_id).map_or(0, |(_, units, _)| *units)
}

/// Whether `operation_id` spends the quota: a metered operation that is not [`Quota::Exempt`].
pub fn spends_quota(operation_id: &str) -> bool {
    entry(operation_id).is_some_and(|(_, units, quota)| *units > 0 && *quota == Applies)
}

/// The operations the quota applies to, with their default units: the ones a plan may override.
pub fn billed() -> impl Iterator<Item = (&'static str, i64)> {
    COSTS.iter().filter(|(_, _, quota)| *quota == Applies).map(|(op, units, _)| (*op, *units))
}

/// Adds `x-meterline-units` and `x-meterline-quota` (whether the call spends the quota and is billed) to every
/// operation of the document.
pub fn annotate(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
        {
            let id = op.operation_id.as_deref().unwrap_or_default();
            let mut extensions = op.extensions.take().unwrap_or_default();
            extensions.insert("x-meterline-units".into(), serde_json::Value::from(units(id)));
            extensions.insert("x-meterline-quota".into(), serde_json::Value::from(spends_quota(id)));
            op.extensions = Some(extensions);
        }
    }
}
