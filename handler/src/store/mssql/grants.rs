//! Quota grants on SQL Server: a grant and its period's raised quota in one transaction; ending a grant gives
//! back its unused part under the period row's update lock, the lock every lease grant and debit takes.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::metering::ensure_period;
use super::*;
use crate::store::grants::*;

fn grant_from(row: &Row) -> Result<QuotaGrant, StoreError> {
    Ok(QuotaGrant {
        id: required(row, 0)?,
        tenant_id: required(row, 1)?,
        period_start: required(row, 2)?,
        units: required(row, 3)?,
        reason: text(row, 4)?,
        granted_by: text(row, 5)?,
        granted_at: required(row, 6)?,
        expires_at: required(row, 7)?,
        ended_at: column(row, 8)?,
        revoked_by: column::<&str>(row, 9)?.map(str::to_owned),
        returned_units: column(row, 10)?,
        version: required(row, 11)?,
    })
}

/// Ends an open grant inside the caller's transaction: gives back its unused part, computed under the period
/// row's update lock, and marks it ended (revoked when `revoked_by` is given).
async fn end_grant(
    conn: &mut MssqlClient,
    grant: &QuotaGrant,
    revoked_by: Option<&str>,
    now: DateTime<Utc>,
) -> Result<QuotaGrant, StoreError> {
    let locked = rows(conn, LOCK_GRANT_PERIOD, &[&grant.tenant_id, &grant.period_start]).await?;
    let row = locked.first().ok_or_else(quota_row_vanished)?;
    let (quota, used): (i64, i64) = (required(row, 0)?, required(row, 1)?);
    let returned = returned_units(grant.units, quota, used);
    let back: [&dyn ToSql; 4] = [&grant.tenant_id, &grant.period_start, &returned, &now];
    execute(conn, RETURN_GRANT_UNITS, &back).await?;
    let ended: [&dyn ToSql; 4] = [&grant.id, &now, &revoked_by, &returned];
    execute(conn, END_GRANT, &ended).await?;
    Ok(QuotaGrant {
        ended_at: Some(now),
        revoked_by: revoked_by.map(str::to_owned),
        returned_units: Some(returned),
        version: grant.version + 1,
        ..grant.clone()
    })
}

/// Ends the open grants (of one period when `period` is given) that expired at or before `now`, oldest expiry
/// first, at most `limit`, each at its own expiry; returns how many.
pub(crate) async fn expire_grants(
    conn: &mut MssqlClient,
    period: Option<(Uuid, NaiveDate)>,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, StoreError> {
    let limit = i64::from(limit);
    let found = match period {
        Some((tenant, start)) => rows(conn, EXPIRED_GRANTS_OF_PERIOD, &[&limit, &tenant, &start, &now]).await?,
        None => rows(conn, EXPIRED_GRANTS, &[&limit, &now]).await?,
    };
    let expired = found.iter().map(grant_from).collect::<Result<Vec<_>, _>>()?;
    for grant in &expired {
        end_grant(conn, grant, None, grant.expires_at).await?;
    }
    Ok(expired.len() as u64)
}

#[async_trait]
impl QuotaGrantStore for MssqlStore {
    async fn create_quota_grant(
        &self,
        grant: &QuotaGrant,
        plan: &PeriodPlan,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError> {
        // Not retried: a retry after a lost commit answer would fail on the grant id it had already stored.
        in_tx!(self, Retry::No, |conn| {
            super::documents::store_idempotency(conn, idempotency).await?;
            let g = grant;
            ensure_period(conn, &plan.first_use(g)).await?;
            execute(conn, ADD_GRANT_UNITS, &[&g.tenant_id, &g.period_start, &g.units, &g.granted_at]).await?;
            let insert: [&dyn ToSql; 9] = [
                &g.id,
                &g.tenant_id,
                &g.period_start,
                &g.units,
                &g.reason.as_str(),
                &g.granted_by.as_str(),
                &g.granted_at,
                &g.expires_at,
                &g.version,
            ];
            execute(conn, INSERT_GRANT, &insert).await?;
            write_ledger(conn, ledger).await
        })
    }

    async fn list_quota_grants(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Vec<QuotaGrant>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, LIST_GRANTS, &[&tenant_id, &period_start]).await?.iter().map(grant_from).collect()
        })
    }

    async fn get_quota_grant(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<QuotaGrant>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, GET_GRANT, &[&tenant_id, &id]).await?.first().map(grant_from).transpose()
        })
    }

    async fn revoke_quota_grant(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        by: &str,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<QuotaGrant>, StoreError> {
        // Idempotent (an ended grant is answered as it is, stored ledger ids are skipped): a transient fault may
        // run it again.
        in_tx!(self, Retry::Yes, |conn| {
            let current = rows(conn, LOCK_GRANT, &[&tenant_id, &id]).await?.first().map(grant_from).transpose()?;
            match revocation(current, expected_version, now) {
                Revocation::Answer(answer) => Ok(answer),
                Revocation::End { grant, at, revoked } => {
                    let ended = end_grant(conn, &grant, revoked.then_some(by), at).await?;
                    // Only a revocation is the request's change; an expiry it merely came across is not.
                    if revoked {
                        write_ledger(conn, ledger).await?;
                    }
                    Ok(Update::Updated(ended))
                }
            }
        })
    }

    async fn expire_quota_grants(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        in_tx!(self, Retry::No, |conn| expire_grants(conn, None, now, limit).await)
    }
}

/// Raises the period's quota by a new grant; overage shrinks by what the grant now covers.
pub(crate) const ADD_GRANT_UNITS: &str = "UPDATE dbo.quota_usage SET quota_units = quota_units + @P3,
    granted_units = granted_units + @P3,
    overage_units = CASE WHEN units_used > quota_units + @P3 THEN units_used - quota_units - @P3 ELSE 0 END,
    updated_at = @P4
WHERE tenant_id = @P1 AND period_start = @P2";

pub(crate) const INSERT_GRANT: &str = "INSERT INTO dbo.quota_grants (id, tenant_id, period_start, units, reason,
    granted_by, granted_at, expires_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9)";

/// The counter an ending grant gives back to, under the row's update lock (as a lease grant reads it).
pub(crate) const LOCK_GRANT_PERIOD: &str = "SELECT quota_units, units_used
FROM dbo.quota_usage WITH (UPDLOCK, HOLDLOCK) WHERE tenant_id = @P1 AND period_start = @P2";

/// Takes an ending grant's unused part (`@P3`, computed under the lock) off the period's quota.
pub(crate) const RETURN_GRANT_UNITS: &str = "UPDATE dbo.quota_usage SET quota_units = quota_units - @P3,
    granted_units = granted_units - @P3,
    updated_at = @P4
WHERE tenant_id = @P1 AND period_start = @P2";

pub(crate) const END_GRANT: &str = "UPDATE dbo.quota_grants SET ended_at = @P2, revoked_by = @P3,
    returned_units = @P4, version = version + 1
WHERE id = @P1 AND ended_at IS NULL";

pub(crate) const LIST_GRANTS: &str =
    "SELECT id, tenant_id, period_start, units, reason, granted_by, granted_at, expires_at,
    ended_at, revoked_by, returned_units, version
FROM dbo.quota_grants WHERE tenant_id = @P1 AND period_start = @P2 ORDER BY granted_at, id";

pub(crate) const GET_GRANT: &str =
    "SELECT id, tenant_id, period_start, units, reason, granted_by, granted_at, expires_at,
    ended_at, revoked_by, returned_units, version
FROM dbo.quota_grants WHERE tenant_id = @P1 AND id = @P2";

/// A grant under its update lock: a concurrent revocation waits, then sees it ended.
pub(crate) const LOCK_GRANT: &str =
    "SELECT id, tenant_id, period_start, units, reason, granted_by, granted_at, expires_at,
    ended_at, revoked_by, returned_units, version
FROM dbo.quota_grants WITH (UPDLOCK, ROWLOCK) WHERE tenant_id = @P1 AND id = @P2";

/// Every tenant's expired open grants (the rollup job's sweep); rows another sweeper holds are skipped.
pub(crate) const EXPIRED_GRANTS: &str =
    "SELECT TOP (@P1) id, tenant_id, period_start, units, reason, granted_by, granted_at, expires_at,
    ended_at, revoked_by, returned_units, version
FROM dbo.quota_grants WITH (UPDLOCK, READPAST) WHERE ended_at IS NULL AND expires_at <= @P2
ORDER BY expires_at, id";

/// One period's expired open grants (a lease grant ends them before it reads the counter).
pub(crate) const EXPIRED_GRANTS_OF_PERIOD: &str =
    "SELECT TOP (@P1) id, tenant_id, period_start, units, reason, granted_by, granted_at, expires_at,
    ended_at, revoked_by, returned_units, version
FROM dbo.quota_grants WITH (UPDLOCK) WHERE tenant_id = @P2 AND period_start = @P3 AND ended_at IS NULL
    AND expires_at <= @P4
ORDER BY expires_at, id";

/// Every statement of this file, for `store::tsql_check` (registered in `mssql::STATEMENTS`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("ADD_GRANT_UNITS", ADD_GRANT_UNITS),
    ("INSERT_GRANT", INSERT_GRANT),
    ("LOCK_GRANT_PERIOD", LOCK_GRANT_PERIOD),
    ("RETURN_GRANT_UNITS", RETURN_GRANT_UNITS),
    ("END_GRANT", END_GRANT),
    ("LIST_GRANTS", LIST_GRANTS),
    ("GET_GRANT", GET_GRANT),
    ("LOCK_GRANT", LOCK_GRANT),
    ("EXPIRED_GRANTS", EXPIRED_GRANTS),
    ("EXPIRED_GRANTS_OF_PERIOD", EXPIRED_GRANTS_OF_PERIOD),
];
