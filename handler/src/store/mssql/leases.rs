//! Quota leases on SQL Server: grants debited from the period counter under its row lock, settlements from the
//! usage events that name a lease, each lease settled once under its own row lock.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::metering::{debit_existing_period, ensure_period};
use super::*;
use crate::store::leases::*;

fn lease_from(row: &Row) -> Result<QuotaLease, StoreError> {
    Ok(QuotaLease {
        lease_id: required(row, 0)?,
        tenant_id: required(row, 1)?,
        period_start: required(row, 2)?,
        holder: text(row, 3)?,
        granted_units: required(row, 4)?,
        first_unit: required(row, 5)?,
        granted_at: required(row, 6)?,
        expires_at: required(row, 7)?,
        settled_at: column(row, 8)?,
        spent_units: column(row, 9)?,
    })
}

/// Settles one lease inside the caller's transaction (see [`QuotaLeaseStore::settle_quota_lease`]); the lease row's
/// update lock makes a concurrent settler wait, then see it settled.
async fn settle(
    conn: &mut MssqlClient,
    lease_id: Uuid,
    now: DateTime<Utc>,
) -> Result<Option<SettledQuotaLease>, StoreError> {
    let Some(lease) = rows(conn, LOCK_LEASE, &[&lease_id]).await?.first().map(lease_from).transpose()? else {
        return Ok(None);
    };
    if let Some(spent) = lease.spent_units {
        return Ok(Some(settlement(lease.granted_units, spent)));
    }
    let spent: i64 =
        rows(conn, LEASE_SPENT, &[&lease_id]).await?.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
    let settled = settlement(lease.granted_units, spent);
    let back: [&dyn ToSql; 4] = [&lease.tenant_id, &lease.period_start, &settled.returned_units, &now];
    execute(conn, RETURN_LEASE_UNITS, &back).await?;
    execute(conn, MARK_LEASE_SETTLED, &[&lease_id, &now, &settled.spent_units]).await?;
    emit_quota_thresholds(conn, lease.tenant_id, lease.period_start, now).await?;
    Ok(Some(settled))
}

/// Settles the unsettled leases (of one period when `period` is given) that expired before `before`, oldest
/// first, at most `limit`; returns how many.
async fn settle_expired(
    conn: &mut MssqlClient,
    period: Option<(Uuid, NaiveDate)>,
    before: DateTime<Utc>,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, StoreError> {
    let limit = i64::from(limit);
    let found = match period {
        Some((tenant, start)) => rows(conn, EXPIRED_LEASES_OF_PERIOD, &[&tenant, &start, &before, &limit]).await?,
        None => rows(conn, EXPIRED_LEASES, &[&before, &limit]).await?,
    };
    let ids = found.iter().map(|r| required::<Uuid>(r, 0)).collect::<Result<Vec<_>, _>>()?;
    for id in &ids {
        settle(conn, *id, now).await?;
    }
    Ok(ids.len() as u64)
}

#[async_trait]
impl QuotaLeaseStore for MssqlStore {
    async fn grant_quota_lease(&self, request: &QuotaLeaseRequest) -> Result<QuotaLeaseGrant, StoreError> {
        // Not retried: a retry after a lost commit answer would fail on the lease id it had already stored.
        in_tx!(self, Retry::No, |conn| {
            let (r, d) = (request, &request.debit);
            settle_expired(conn, Some((d.tenant_id, d.period_start)), r.reclaim_before, d.now, u32::MAX).await?;
            ensure_period(conn, d).await?;
            super::grants::expire_grants(conn, Some((d.tenant_id, d.period_start)), d.now, u32::MAX).await?;
            // The counter under its update lock: grants of one period queue here, across processes.
            let locked = rows(conn, LOCK_QUOTA_PERIOD, &[&d.tenant_id, &d.period_start]).await?;
            let row = locked.first().ok_or_else(quota_row_vanished)?;
            let (mut quota, used, stored_policy, granted_units): (i64, i64, String, i64) =
                (required(row, 0)?, required(row, 1)?, text(row, 2)?, required(row, 3)?);
            let mut policy =
                OveragePolicy::parse(&stored_policy).ok_or_else(|| corrupt("overage policy", &stored_policy))?;
            // An upgrade (a raised quota, `block` to `allow`) applies to the period at once; a downgrade waits for
            // the next period.
            if is_upgrade(quota - granted_units, policy, d) {
                let (plan_quota, upgraded_policy) = upgraded(quota - granted_units, policy, d);
                let plans = crate::store::upgraded_plans(quota - granted_units, policy, d);
                (quota, policy) = (plan_quota + granted_units, upgraded_policy);
                execute(
                    conn,
                    UPGRADE_PERIOD,
                    &[
                        &d.tenant_id,
                        &d.period_start,
                        &quota,
                        &policy.as_str(),
                        &d.now,
                        &plans.billed_on,
                        &plans.overage_priced_by,
                    ],
                )
                .await?;
            }
            let units = lease_size(policy, quota, used, d.units, r.min_units);
            if units == 0 {
                return Ok(QuotaLeaseGrant::Exhausted { units_used: used, quota_units: quota });
            }
            let (units_used, quota_units) =
                match debit_existing_period(conn, &QuotaDebit { units, ..d.clone() }).await? {
                    QuotaOutcome::Accepted { units_used, quota_units, .. } => (units_used, quota_units),
                    QuotaOutcome::Rejected { .. } => {
                        return Err(StoreError::Other(anyhow::anyhow!(
                            "a sized lease grant was refused under the row lock"
                        )));
                    }
                };
            let first_unit = units_used - units;
            let params: [&dyn ToSql; 8] = [
                &r.lease_id,
                &d.tenant_id,
                &d.period_start,
                &r.holder.as_str(),
                &units,
                &first_unit,
                &d.now,
                &r.expires_at,
            ];
            execute(conn, INSERT_LEASE, &params).await?;
            // The usage events recorded since the last grant or settlement may have crossed a threshold.
            emit_quota_thresholds(conn, d.tenant_id, d.period_start, d.now).await?;
            Ok(granted(units, units_used, quota_units))
        })
    }

    async fn settle_quota_lease(
        &self,
        lease_id: Uuid,
        now: DateTime<Utc>,
    ) -> Result<Option<SettledQuotaLease>, StoreError> {
        // Idempotent (a settled lease is answered as it is), so a transient fault may run it again.
        in_tx!(self, Retry::Yes, |conn| settle(conn, lease_id, now).await)
    }

    async fn settle_expired_quota_leases(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
        limit: u32,
    ) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| settle_expired(conn, None, before, now, limit).await)
    }

    async fn get_quota_lease(&self, lease_id: Uuid) -> Result<Option<QuotaLease>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| rows(conn, GET_LEASE, &[&lease_id]).await?.first().map(lease_from).transpose())
    }
}

/// Upgrades a period's snapshot to the quota and overage policy [`upgraded`] computed under the row's lock.
/// Thresholds already announced this period stay announced: each is announced once a period.
pub(crate) const UPGRADE_PERIOD: &str = "UPDATE dbo.quota_usage SET quota_units = @P3, overage_policy = @P4,
    overage_units = CASE WHEN units_used > @P3 THEN units_used - @P3 ELSE 0 END,
    updated_at = @P5, plan_code = COALESCE(@P6, plan_code),
    overage_plan_code = CASE WHEN @P6 IS NOT NULL THEN NULL ELSE COALESCE(@P7, overage_plan_code) END
WHERE tenant_id = @P1 AND period_start = @P2";

pub(crate) const LOCK_QUOTA_PERIOD: &str = "SELECT quota_units, units_used, overage_policy, granted_units
FROM dbo.quota_usage WITH (UPDLOCK, HOLDLOCK) WHERE tenant_id = @P1 AND period_start = @P2";

pub(crate) const INSERT_LEASE: &str = "INSERT INTO dbo.quota_leases (lease_id, tenant_id, period_start, holder,
    granted_units, first_unit, granted_at, expires_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub(crate) const GET_LEASE: &str = "SELECT lease_id, tenant_id, period_start, holder, granted_units, first_unit,
    granted_at, expires_at, settled_at, spent_units
FROM dbo.quota_leases WHERE lease_id = @P1";

pub(crate) const LOCK_LEASE: &str = "SELECT lease_id, tenant_id, period_start, holder, granted_units, first_unit,
    granted_at, expires_at, settled_at, spent_units
FROM dbo.quota_leases WITH (UPDLOCK, HOLDLOCK) WHERE lease_id = @P1";

/// What a lease spent: the billable units of the usage events naming it.
pub(crate) const LEASE_SPENT: &str = "SELECT COALESCE(SUM(CAST(units AS BIGINT)), 0) AS spent
FROM dbo.usage_events WHERE lease_id = @P1 AND billable = 1";

/// Gives a lease's unspent units back; the overage is what lies beyond the quota afterwards.
pub(crate) const RETURN_LEASE_UNITS: &str = "UPDATE dbo.quota_usage SET
    units_used = CASE WHEN units_used > @P3 THEN units_used - @P3 ELSE 0 END,
    overage_units = CASE WHEN units_used - @P3 > quota_units THEN units_used - @P3 - quota_units ELSE 0 END,
    updated_at = @P4
WHERE tenant_id = @P1 AND period_start = @P2";

pub(crate) const MARK_LEASE_SETTLED: &str =
    "UPDATE dbo.quota_leases SET settled_at = @P2, spent_units = @P3 WHERE lease_id = @P1 AND settled_at IS NULL";

pub(crate) const EXPIRED_LEASES_OF_PERIOD: &str = "SELECT TOP (@P4) lease_id FROM dbo.quota_leases
WHERE tenant_id = @P1 AND period_start = @P2 AND settled_at IS NULL AND expires_at < @P3
ORDER BY expires_at";

pub(crate) const EXPIRED_LEASES: &str = "SELECT TOP (@P2) lease_id FROM dbo.quota_leases
WHERE settled_at IS NULL AND expires_at < @P1
ORDER BY expires_at";

/// Every statement above, by name, for the parse check (`store::tsql_check`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("UPGRADE_PERIOD", UPGRADE_PERIOD),
    ("LOCK_QUOTA_PERIOD", LOCK_QUOTA_PERIOD),
    ("INSERT_LEASE", INSERT_LEASE),
    ("GET_LEASE", GET_LEASE),
    ("LOCK_LEASE", LOCK_LEASE),
    ("LEASE_SPENT", LEASE_SPENT),
    ("RETURN_LEASE_UNITS", RETURN_LEASE_UNITS),
    ("MARK_LEASE_SETTLED", MARK_LEASE_SETTLED),
    ("EXPIRED_LEASES_OF_PERIOD", EXPIRED_LEASES_OF_PERIOD),
    ("EXPIRED_LEASES", EXPIRED_LEASES),
];
