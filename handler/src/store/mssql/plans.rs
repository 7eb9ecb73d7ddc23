//! The SQL Server plan store: `impl PlanStore for MssqlStore`, the plan row mapper and the plan-cost writer.

use super::*;

pub(crate) const INSERT_PLAN: &str =
    "INSERT INTO dbo.plans (code, name, requests_per_minute, burst, monthly_quota_units,
    overage_policy, currency, base_price_micros, overage_unit_price_micros, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12)";

pub(crate) const GET_PLAN: &str =
    "SELECT code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency,
    base_price_micros, overage_unit_price_micros, created_at, updated_at, version
FROM dbo.plans WHERE code = @P1";

pub(crate) const LIST_PLANS: &str =
    "SELECT code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency,
    base_price_micros, overage_unit_price_micros, created_at, updated_at, version
FROM dbo.plans ORDER BY code";

pub(crate) const UPDATE_PLAN: &str = "UPDATE dbo.plans SET name = @P1, requests_per_minute = @P2, burst = @P3,
    monthly_quota_units = @P4, overage_policy = @P5, currency = @P6, base_price_micros = @P7,
    overage_unit_price_micros = @P8, updated_at = @P9, version = version + 1
WHERE code = @P10 AND version = @P11";

pub(crate) const PLAN_COSTS: &str =
    "SELECT operation_id, units FROM dbo.plan_operation_costs WHERE plan_code = @P1 ORDER BY operation_id";

pub(crate) const PLAN_EXISTS: &str = "SELECT COUNT(*) AS n FROM dbo.plans WITH (UPDLOCK, HOLDLOCK) WHERE code = @P1";

pub(crate) const DELETE_PLAN_COSTS: &str = "DELETE FROM dbo.plan_operation_costs WHERE plan_code = @P1";

pub(crate) const INSERT_PLAN_COST: &str =
    "INSERT INTO dbo.plan_operation_costs (plan_code, operation_id, units) VALUES (@P1, @P2, @P3)";

/// Every statement of this file, for `store::tsql_check` (registered in `mssql::STATEMENTS`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("INSERT_PLAN", INSERT_PLAN),
    ("GET_PLAN", GET_PLAN),
    ("LIST_PLANS", LIST_PLANS),
    ("UPDATE_PLAN", UPDATE_PLAN),
    ("PLAN_COSTS", PLAN_COSTS),
    ("PLAN_EXISTS", PLAN_EXISTS),
    ("DELETE_PLAN_COSTS", DELETE_PLAN_COSTS),
    ("INSERT_PLAN_COST", INSERT_PLAN_COST),
];

pub(super) fn plan_from(row: &Row) -> Result<Plan, StoreError> {
    let policy = text(row, 5)?;
    Ok(Plan {
        code: text(row, 0)?,
        name: text(row, 1)?,
        requests_per_minute: required(row, 2)?,
        burst: required(row, 3)?,
        monthly_quota_units: required(row, 4)?,
        overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
        currency: text(row, 6)?,
        base_price_micros: required(row, 7)?,
        overage_unit_price_micros: required(row, 8)?,
        created_at: required(row, 9)?,
        updated_at: required(row, 10)?,
        version: required(row, 11)?,
    })
}

/// Replaces all of a plan's cost overrides (`ForeignKey` for an unknown plan).
pub(super) async fn replace_plan_costs(
    conn: &mut MssqlClient,
    code: &str,
    costs: &[(String, i64)],
) -> Result<(), StoreError> {
    let exists: i32 =
        rows(conn, PLAN_EXISTS, &[&code]).await?.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
    if exists == 0 {
        return Err(StoreError::ForeignKey(format!("no plan {code}")));
    }
    execute(conn, DELETE_PLAN_COSTS, &[&code]).await?;
    for (operation, units) in costs {
        let units = i32::try_from(*units).map_err(|_| StoreError::Other(anyhow::anyhow!("cost out of range")))?;
        execute(conn, INSERT_PLAN_COST, &[&code, &operation.as_str(), &units]).await?;
    }
    Ok(())
}

#[async_trait]
impl PlanStore for MssqlStore {
    async fn create_plan(&self, plan: &Plan, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let p = plan;
            let params: [&dyn ToSql; 12] = [
                &p.code.as_str(),
                &p.name.as_str(),
                &p.requests_per_minute,
                &p.burst,
                &p.monthly_quota_units,
                &p.overage_policy.as_str(),
                &p.currency.as_str(),
                &p.base_price_micros,
                &p.overage_unit_price_micros,
                &p.created_at,
                &p.updated_at,
                &p.version,
            ];
            execute(conn, INSERT_PLAN, &params).await?;
            write_ledger(conn, ledger).await
        })
    }

    async fn get_plan(&self, code: &str) -> Result<Option<Plan>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| rows(conn, GET_PLAN, &[&code]).await?.first().map(plan_from).transpose())
    }

    async fn plan_operation_costs(&self, plan_code: &str) -> Result<Vec<(String, i64)>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, PLAN_COSTS, &[&plan_code])
                .await?
                .iter()
                .map(|row| Ok((text(row, 0)?, i64::from(required::<i32>(row, 1)?))))
                .collect()
        })
    }

    async fn set_plan_operation_costs(&self, plan_code: &str, costs: &[(String, i64)]) -> Result<(), StoreError> {
        in_tx!(self, Retry::Yes, |conn| replace_plan_costs(conn, plan_code, costs).await)
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| rows(conn, LIST_PLANS, &[]).await?.iter().map(plan_from).collect())
    }

    async fn update_plan(
        &self,
        plan: &Plan,
        expected_version: i64,
        costs: Option<&[(String, i64)]>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Plan>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let p = plan;
            let params: [&dyn ToSql; 11] = [
                &p.name.as_str(),
                &p.requests_per_minute,
                &p.burst,
                &p.monthly_quota_units,
                &p.overage_policy.as_str(),
                &p.currency.as_str(),
                &p.base_price_micros,
                &p.overage_unit_price_micros,
                &p.updated_at,
                &p.code.as_str(),
                &expected_version,
            ];
            let changed = execute(conn, UPDATE_PLAN, &params).await?;
            let current = rows(conn, GET_PLAN, &[&p.code.as_str()]).await?.first().map(plan_from).transpose()?;
            Ok(match (changed, current) {
                (_, None) => Update::NotFound,
                (1, Some(plan)) => {
                    if let Some(costs) = costs {
                        replace_plan_costs(conn, &plan.code, costs).await?;
                    }
                    write_ledger(conn, ledger).await?;
                    Update::Updated(plan)
                }
                (_, Some(plan)) => Update::VersionMismatch { current_version: plan.version },
            })
        })
    }
}
