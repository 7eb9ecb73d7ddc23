//! The unit cost of each operation: one table, shown in the OpenAPI document as `x-meterline-units`.

/// Units an operation costs when it succeeds, unless the tenant's plan overrides it
/// (`PUT /api/v1/plans/{code}/costs`). Reads 1, lists and searches 2, writes 5, exports 10; operations not
/// listed (health, the OpenAPI document) cost nothing and cannot be overridden.
pub const COSTS: &[(&str, i64)] = &[
    ("getMe", 1),
    ("getWhoAmI", 1),
    ("getUsageSummary", 1),
    ("getUsage", 2),
    ("exportUsage", 10),
    ("listBillingStatements", 2),
    ("getBillingStatement", 1),
    ("getDocument", 1),
    ("listDocuments", 2),
    ("createDocument", 5),
    ("replaceDocument", 5),
    ("patchDocument", 5),
    ("deleteDocument", 5),
    ("listTenants", 2),
    ("getTenant", 1),
    ("createTenant", 5),
    ("patchTenant", 5),
    ("suspendTenant", 5),
    ("reactivateTenant", 5),
    ("listPlans", 2),
    ("getPlan", 1),
    ("createPlan", 5),
    ("replacePlan", 5),
    ("getPlanCosts", 1),
    ("replacePlanCosts", 5),
    ("listClients", 2),
    ("registerClient", 5),
    ("getClient", 1),
    ("revokeClient", 5),
    ("listTenantClients", 2),
    ("getTenantClient", 1),
    ("approveClient", 5),
    ("rejectClient", 5),
    ("listAuditEvents", 2),
    ("verifyAuditChain", 10),
];

/// The units `operation_id` costs (0 for unmetered or unknown operations).
pub fn units(operation_id: &str) -> i64 {
    COSTS.iter().find(|(op, _)| *op == operation_id).map_or(0, |(_, units)| *units)
}

/// Adds `x-meterline-units` to every operation of the document.
pub fn annotate(doc: &mut utoipa::openapi::OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for op in
            [&mut item.get, &mut item.put, &mut item.post, &mut item.delete, &mut item.patch].into_iter().flatten()
        {
            let cost = op.operation_id.as_deref().map_or(0, units);
            let mut extensions = op.extensions.take().unwrap_or_default();
            extensions.insert("x-meterline-units".into(), serde_json::Value::from(cost));
            op.extensions = Some(extensions);
        }
    }
}
