//! Quota grants on SQLite: a grant and its period's raised quota in one write; ending a grant gives back its
//! unused part under the one writer.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, params};
use uuid::Uuid;

use super::metering::ensure_period;
use super::*;
use crate::store::grants::*;

const GRANT_COLUMNS: &str = "id, tenant_id, period_start, units, reason, granted_by, granted_at, expires_at, ended_at, \
                             revoked_by, returned_units, version";

fn grant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<QuotaGrant, StoreError>> {
    let (id, tenant, start): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
    let (units, reason, granted_by): (i64, String, String) = (r.get(3)?, r.get(4)?, r.get(5)?);
    let (granted_at, expires_at, ended_at): (String, String, Option<String>) = (r.get(6)?, r.get(7)?, r.get(8)?);
    let (revoked_by, returned_units, version): (Option<String>, Option<i64>, i64) = (r.get(9)?, r.get(10)?, r.get(11)?);
    Ok((|| {
        Ok(QuotaGrant {
            id: parse_uuid(&id)?,
            tenant_id: parse_uuid(&tenant)?,
            period_start: parse_date(&start)?,
            units,
            reason,
            granted_by,
            granted_at: parse_timestamp(&granted_at)?,
            expires_at: parse_timestamp(&expires_at)?,
            ended_at: ended_at.as_deref().map(parse_timestamp).transpose()?,
            revoked_by,
            returned_units,
            version,
        })
    })())
}

fn read_grant(conn: &Connection, tenant_id: Uuid, id: Uuid) -> Result<Option<QuotaGrant>, StoreError> {
    let sql = format!("SELECT {GRANT_COLUMNS} FROM quota_grants WHERE tenant_id = ?1 AND id = ?2");
    query_one(conn, &sql, params![tenant_id.to_string(), id.to_string()], grant_from_row)
}

/// Ends an open grant inside the caller's write: gives back its unused part and marks it ended (revoked when
/// `revoked_by` is given). Returns the grant as it now stands.
fn end_grant(
    conn: &Connection,
    grant: &QuotaGrant,
    revoked_by: Option<&str>,
    now: DateTime<Utc>,
) -> Result<QuotaGrant, StoreError> {
    let period = read_quota(conn, grant.tenant_id, grant.period_start)?.ok_or_else(quota_row_vanished)?;
    let returned = returned_units(grant.units, period.quota_units, period.units_used);
    conn.prepare_cached(
        "UPDATE quota_usage SET quota_units = quota_units - ?3, granted_units = granted_units - ?3, updated_at = ?4
         WHERE tenant_id = ?1 AND period_start = ?2",
    )
    .map_err(classify)?
    .execute(params![grant.tenant_id.to_string(), grant.period_start.to_string(), returned, timestamp(now)])
    .map_err(classify)?;
    conn.prepare_cached(
        "UPDATE quota_grants SET ended_at = ?2, revoked_by = ?3, returned_units = ?4, version = version + 1
         WHERE id = ?1 AND ended_at IS NULL",
    )
    .map_err(classify)?
    .execute(params![grant.id.to_string(), timestamp(now), revoked_by, returned])
    .map_err(classify)?;
    Ok(QuotaGrant {
        ended_at: Some(now),
        revoked_by: revoked_by.map(str::to_owned),
        returned_units: Some(returned),
        version: grant.version + 1,
        ..grant.clone()
    })
}

/// Ends the open grants (of one period when `period` is given) that expired at or before `now`, oldest expiry
/// first, at most `limit`; returns how many.
pub(crate) fn expire_grants(
    conn: &Connection,
    period: Option<(Uuid, NaiveDate)>,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<u64, StoreError> {
    let expired: Vec<QuotaGrant> = match period {
        Some((tenant, start)) => query_all(
            conn,
            &format!(
                "SELECT {GRANT_COLUMNS} FROM quota_grants WHERE tenant_id = ?1 AND period_start = ?2
                 AND ended_at IS NULL AND expires_at <= ?3 ORDER BY expires_at, id LIMIT ?4"
            ),
            params![tenant.to_string(), start.to_string(), timestamp(now), limit],
            grant_from_row,
        )?,
        None => query_all(
            conn,
            &format!(
                "SELECT {GRANT_COLUMNS} FROM quota_grants WHERE ended_at IS NULL AND expires_at <= ?1
                 ORDER BY expires_at, id LIMIT ?2"
            ),
            params![timestamp(now), limit],
            grant_from_row,
        )?,
    };
    for grant in &expired {
        // An expiry ends the grant at its own instant, however late the sweep runs.
        end_grant(conn, grant, None, grant.expires_at)?;
    }
    Ok(expired.len() as u64)
}

#[async_trait]
impl QuotaGrantStore for SqliteStore {
    async fn create_quota_grant(
        &self,
        grant: &QuotaGrant,
        plan: &PeriodPlan,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError> {
        let (g, plan, record, ledger) = (grant.clone(), plan.clone(), idempotency.cloned(), ledger.cloned());
        self.write(move |tx| {
            super::documents::store_idempotency(tx, record.as_ref())?;
            let (tenant, start) = (g.tenant_id.to_string(), g.period_start.to_string());
            ensure_period(tx, &plan.first_use(&g))?;
            tx.prepare_cached(
                "UPDATE quota_usage SET quota_units = quota_units + ?3, granted_units = granted_units + ?3,
                     overage_units = max(0, units_used - quota_units - ?3), updated_at = ?4
                 WHERE tenant_id = ?1 AND period_start = ?2",
            )
            .map_err(classify)?
            .execute(params![tenant, start, g.units, timestamp(g.granted_at)])
            .map_err(classify)?;
            tx.prepare_cached(
                "INSERT INTO quota_grants (id, tenant_id, period_start, units, reason, granted_by, granted_at,
                     expires_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(classify)?
            .execute(params![
                g.id.to_string(),
                tenant,
                start,
                g.units,
                g.reason,
                g.granted_by,
                timestamp(g.granted_at),
                timestamp(g.expires_at),
                g.version
            ])
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn list_quota_grants(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Vec<QuotaGrant>, StoreError> {
        self.read(move |conn| {
            query_all(
                conn,
                &format!(
                    "SELECT {GRANT_COLUMNS} FROM quota_grants WHERE tenant_id = ?1 AND period_start = ?2
                     ORDER BY granted_at, id"
                ),
                params![tenant_id.to_string(), period_start.to_string()],
                grant_from_row,
            )
        })
        .await
    }

    async fn get_quota_grant(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<QuotaGrant>, StoreError> {
        self.read_point(|conn| read_grant(conn, tenant_id, id))
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
        let (by, ledger) = (by.to_owned(), ledger.cloned());
        self.write(move |tx| {
            match revocation(read_grant(tx, tenant_id, id)?, expected_version, now) {
                Revocation::Answer(answer) => Ok(answer),
                Revocation::End { grant, at, revoked } => {
                    let ended = end_grant(tx, &grant, revoked.then_some(by.as_str()), at)?;
                    // Only a revocation is the request's change; an expiry it merely came across is not.
                    if revoked {
                        write_ledger(tx, ledger.as_ref())?;
                    }
                    Ok(Update::Updated(ended))
                }
            }
        })
        .await
    }

    async fn expire_quota_grants(&self, now: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.write(move |tx| expire_grants(tx, None, now, limit)).await
    }
}
