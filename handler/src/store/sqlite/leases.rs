//! Quota leases on SQLite: grants debited from the period counter under the one writer, settlements from the
//! usage events that name a lease.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::*;
use crate::store::leases::*;

const LEASE_COLUMNS: &str = "lease_id, tenant_id, period_start, holder, granted_units, first_unit, granted_at, \
                             expires_at, settled_at, spent_units";

fn lease_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<QuotaLease, StoreError>> {
    let (id, tenant, start, holder): (String, String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    let (granted_units, first_unit): (i64, i64) = (r.get(4)?, r.get(5)?);
    let (granted_at, expires_at, settled_at): (String, String, Option<String>) = (r.get(6)?, r.get(7)?, r.get(8)?);
    let spent_units: Option<i64> = r.get(9)?;
    Ok((|| {
        Ok(QuotaLease {
            lease_id: parse_uuid(&id)?,
            tenant_id: parse_uuid(&tenant)?,
            period_start: parse_date(&start)?,
            holder,
            granted_units,
            first_unit,
            granted_at: parse_timestamp(&granted_at)?,
            expires_at: parse_timestamp(&expires_at)?,
            settled_at: settled_at.as_deref().map(parse_timestamp).transpose()?,
            spent_units,
        })
    })())
}

fn read_lease(conn: &Connection, lease_id: Uuid) -> Result<Option<QuotaLease>, StoreError> {
    let sql = format!("SELECT {LEASE_COLUMNS} FROM quota_leases WHERE lease_id = ?1");
    query_one(conn, &sql, [lease_id.to_string()], lease_from_row)
}

/// Settles one lease inside the caller's write transaction (see [`QuotaLeaseStore::settle_quota_lease`]).
fn settle(tx: &Connection, lease_id: Uuid, now: DateTime<Utc>) -> Result<Option<SettledQuotaLease>, StoreError> {
    let Some(lease) = read_lease(tx, lease_id)? else { return Ok(None) };
    if let Some(spent) = lease.spent_units {
        return Ok(Some(settlement(lease.granted_units, spent)));
    }
    let spent: i64 = tx
        .prepare_cached("SELECT coalesce(sum(units), 0) FROM usage_events WHERE lease_id = ?1 AND billable = 1")
        .map_err(classify)?
        .query_row([lease_id.to_string()], |r| r.get(0))
        .map_err(classify)?;
    let settled = settlement(lease.granted_units, spent);
    tx.prepare_cached(
        "UPDATE quota_usage SET units_used = max(0, units_used - ?3),
             overage_units = max(0, units_used - ?3 - quota_units), updated_at = ?4
         WHERE tenant_id = ?1 AND period_start = ?2",
    )
    .map_err(classify)?
    .execute(params![
        lease.tenant_id.to_string(),
        lease.period_start.to_string(),
        settled.returned_units,
        timestamp(now)
    ])
    .map_err(classify)?;
    tx.prepare_cached("UPDATE quota_leases SET settled_at = ?2, spent_units = ?3 WHERE lease_id = ?1")
        .map_err(classify)?
        .execute(params![lease_id.to_string(), timestamp(now), settled.spent_units])
        .map_err(classify)?;
    emit_quota_thresholds(tx, lease.tenant_id, lease.period_start, now)?;
    Ok(Some(settled))
}

/// Settles the unsettled leases (of one period when `period` is given) that expired before `before`, oldest
/// first, at most `limit`; returns how many.
fn settle_expired(
    tx: &Connection,
    period: Option<(Uuid, chrono::NaiveDate)>,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, StoreError> {
    let ids: Vec<String> = match period {
        Some((tenant, start)) => tx
            .prepare_cached(
                "SELECT lease_id FROM quota_leases
                 WHERE tenant_id = ?1 AND period_start = ?2 AND settled_at IS NULL AND expires_at < ?3
                 ORDER BY expires_at LIMIT ?4",
            )
            .map_err(classify)?
            .query_map(params![tenant.to_string(), start.to_string(), timestamp(before), limit], |r| r.get(0))
            .map_err(classify)?
            .collect::<Result<_, _>>()
            .map_err(classify)?,
        None => tx
            .prepare_cached(
                "SELECT lease_id FROM quota_leases WHERE settled_at IS NULL AND expires_at < ?1
                 ORDER BY expires_at LIMIT ?2",
            )
            .map_err(classify)?
            .query_map(params![timestamp(before), limit], |r| r.get(0))
            .map_err(classify)?
            .collect::<Result<_, _>>()
            .map_err(classify)?,
    };
    for id in &ids {
        settle(tx, parse_uuid(id)?, now)?;
    }
    Ok(ids.len() as u64)
}

#[async_trait]
impl QuotaLeaseStore for SqliteStore {
    async fn grant_quota_lease(&self, request: &QuotaLeaseRequest) -> Result<QuotaLeaseGrant, StoreError> {
        let r = request.clone();
        self.write(move |tx| {
            let d = &r.debit;
            settle_expired(tx, Some((d.tenant_id, d.period_start)), r.reclaim_before, d.now, u32::MAX)?;
            grants::expire_grants(tx, Some((d.tenant_id, d.period_start)), d.now, u32::MAX)?;
            // The period row's snapshot decides (as for a debit); before its first debit, the request's. An
            // upgrade (a raised quota, `block` to `allow`) applies to the period at once; a downgrade waits for the
            // next period.
            let (quota, used, policy) = match read_quota(tx, d.tenant_id, d.period_start)? {
                Some(q) if is_upgrade(q.quota_units - q.granted_units, q.overage_policy, d) => {
                    let (plan_quota, policy) = upgraded(q.quota_units - q.granted_units, q.overage_policy, d);
                    let quota = plan_quota + q.granted_units;
                    let plans = crate::store::upgraded_plans(q.quota_units - q.granted_units, q.overage_policy, d);
                    tx.prepare_cached(
                        "UPDATE quota_usage SET quota_units = ?3, overage_policy = ?4,
                             overage_units = max(0, units_used - ?3), updated_at = ?5,
                             plan_code = coalesce(?6, plan_code),
                             overage_plan_code = CASE WHEN ?6 IS NOT NULL THEN NULL
                                 ELSE coalesce(?7, overage_plan_code) END
                         WHERE tenant_id = ?1 AND period_start = ?2",
                    )
                    .map_err(classify)?
                    .execute(params![
                        d.tenant_id.to_string(),
                        d.period_start.to_string(),
                        quota,
                        policy.as_str(),
                        timestamp(d.now),
                        plans.billed_on,
                        plans.overage_priced_by
                    ])
                    .map_err(classify)?;
                    (quota, q.units_used, policy)
                }
                Some(q) => (q.quota_units, q.units_used, q.overage_policy),
                None => (d.quota_units, 0, d.overage_policy),
            };
            let units = lease_size(policy, quota, used, d.units, r.min_units);
            if units == 0 {
                return Ok(QuotaLeaseGrant::Exhausted { units_used: used, quota_units: quota });
            }
            let (units_used, quota_units) = match debit_period(tx, &QuotaDebit { units, ..d.clone() })? {
                QuotaOutcome::Accepted { units_used, quota_units, .. } => (units_used, quota_units),
                // Under the one writer nothing changed the counter since it was read: a rejection is a bug.
                QuotaOutcome::Rejected { .. } => {
                    return Err(StoreError::Other(anyhow::anyhow!("a sized lease grant was refused")));
                }
            };
            tx.prepare_cached(
                "INSERT INTO quota_leases (lease_id, tenant_id, period_start, holder, granted_units, first_unit,
                     granted_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
            )
            .map_err(classify)?
            .execute(params![
                r.lease_id.to_string(),
                d.tenant_id.to_string(),
                d.period_start.to_string(),
                r.holder,
                units,
                units_used - units,
                timestamp(d.now),
                timestamp(r.expires_at)
            ])
            .map_err(classify)?;
            // The usage events recorded since the last grant or settlement may have crossed a threshold.
            emit_quota_thresholds(tx, d.tenant_id, d.period_start, d.now)?;
            Ok(granted(units, units_used, quota_units))
        })
        .await
    }

    async fn settle_quota_lease(
        &self,
        lease_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<SettledQuotaLease>, StoreError> {
        self.write(move |tx| settle(tx, lease_id, now)).await
    }

    async fn settle_expired_quota_leases(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.write(move |tx| settle_expired(tx, None, before, now, limit)).await
    }

    async fn get_quota_lease(&self, lease_id: Uuid) -> Result<Option<QuotaLease>, StoreError> {
        self.read_point(|conn| read_lease(conn, lease_id))
    }
}
