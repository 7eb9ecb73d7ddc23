//! The SQLite plan store: `impl PlanStore for SqliteStore`, the plan row mapper and the plan-cost writer.

use super::*;

pub(super) const PLAN_COLUMNS: &str = "code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency, \
    base_price_micros, overage_unit_price_micros, created_at, updated_at, version";

pub(super) fn plan_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Plan, StoreError>> {
    let policy: String = r.get(5)?;
    let (created, updated): (String, String) = (r.get(9)?, r.get(10)?);
    let (code, name, rpm, burst, quota, currency) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(6)?);
    let (base, overage, version) = (r.get(7)?, r.get(8)?, r.get(11)?);
    Ok((|| {
        Ok(Plan {
            code,
            name,
            requests_per_minute: rpm,
            burst,
            monthly_quota_units: quota,
            overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
            currency,
            base_price_micros: base,
            overage_unit_price_micros: overage,
            created_at: parse_timestamp(&created)?,
            updated_at: parse_timestamp(&updated)?,
            version,
        })
    })())
}

/// Replaces all of a plan's cost overrides (`ForeignKey` for an unknown plan).
pub(super) fn replace_plan_costs(tx: &Connection, code: &str, costs: &[(String, i64)]) -> Result<(), StoreError> {
    if tx.query_row("SELECT 1 FROM plans WHERE code = ?1", [code], |_| Ok(())).optional().map_err(classify)?.is_none() {
        return Err(StoreError::ForeignKey(format!("no plan {code}")));
    }
    tx.execute("DELETE FROM plan_operation_costs WHERE plan_code = ?1", [code]).map_err(classify)?;
    for (operation, units) in costs {
        tx.execute(
            "INSERT INTO plan_operation_costs (plan_code, operation_id, units) VALUES (?1, ?2, ?3)",
            params![code, operation, units],
        )
        .map_err(classify)?;
    }
    Ok(())
}

#[async_trait]
impl PlanStore for SqliteStore {
    async fn create_plan(&self, plan: &Plan, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        let (p, ledger) = (plan.clone(), ledger.cloned());
        self.write(move |tx| {
            let sql = format!(
                "INSERT INTO plans ({PLAN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            );
            tx.execute(
                &sql,
                params![
                    p.code,
                    p.name,
                    p.requests_per_minute,
                    p.burst,
                    p.monthly_quota_units,
                    p.overage_policy.as_str(),
                    p.currency,
                    p.base_price_micros,
                    p.overage_unit_price_micros,
                    timestamp(p.created_at),
                    timestamp(p.updated_at),
                    p.version
                ],
            )
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn get_plan(&self, code: &str) -> Result<Option<Plan>, StoreError> {
        self.read_point(|conn| {
            query_one(conn, &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE code = ?1"), [code], plan_from_row)
        })
    }

    async fn plan_operation_costs(&self, plan_code: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let code = plan_code.to_owned();
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT operation_id, units FROM plan_operation_costs WHERE plan_code = ?1 ORDER BY operation_id",
                [code],
                |r| Ok(Ok((r.get(0)?, r.get(1)?))),
            )
        })
        .await
    }

    async fn set_plan_operation_costs(&self, plan_code: &str, costs: &[(String, i64)]) -> Result<(), StoreError> {
        let (code, costs) = (plan_code.to_owned(), costs.to_vec());
        self.write(move |tx| replace_plan_costs(tx, &code, &costs)).await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        self.read(|conn| query_all(conn, &format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY code"), [], plan_from_row))
            .await
    }

    async fn update_plan(
        &self,
        plan: &Plan,
        expected_version: i64,
        costs: Option<&[(String, i64)]>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Plan>, StoreError> {
        let (p, costs, ledger) = (plan.clone(), costs.map(<[_]>::to_vec), ledger.cloned());
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE plans SET name = ?1, requests_per_minute = ?2, burst = ?3, monthly_quota_units = ?4,
                         overage_policy = ?5, currency = ?6, base_price_micros = ?7, overage_unit_price_micros = ?8,
                         updated_at = ?9, version = version + 1
                     WHERE code = ?10 AND version = ?11",
                    params![
                        p.name,
                        p.requests_per_minute,
                        p.burst,
                        p.monthly_quota_units,
                        p.overage_policy.as_str(),
                        p.currency,
                        p.base_price_micros,
                        p.overage_unit_price_micros,
                        timestamp(p.updated_at),
                        p.code,
                        expected_version
                    ],
                )
                .map_err(classify)?;
            let current =
                query_one(tx, &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE code = ?1"), [&p.code], plan_from_row)?;
            Ok(match (changed, current) {
                (_, None) => Update::NotFound,
                (1, Some(plan)) => {
                    if let Some(costs) = &costs {
                        replace_plan_costs(tx, &plan.code, costs)?;
                    }
                    write_ledger(tx, ledger.as_ref())?;
                    Update::Updated(plan)
                }
                (_, Some(plan)) => Update::VersionMismatch { current_version: plan.version },
            })
        })
        .await
    }
}
