//! Capped clients' quota counters on SQLite: one conditional UPDATE per debit under the one writer.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{OptionalExtension, params};
use uuid::Uuid;

use super::*;
use crate::store::client_quota::*;

#[async_trait]
impl ClientQuotaStore for SqliteStore {
    async fn debit_client_quota(&self, debit: &ClientQuotaDebit) -> Result<ClientQuotaOutcome, StoreError> {
        let d = debit.clone();
        self.write(move |tx| {
            let (client, start) = (d.client_id.to_string(), d.period_start.to_string());
            tx.prepare_cached(
                "INSERT INTO client_quota_usage (client_id, period_start, tenant_id, units_used, updated_at)
                 VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT (client_id, period_start) DO NOTHING",
            )
            .map_err(classify)?
            .execute(params![client, start, d.tenant_id.to_string(), timestamp(d.now)])
            .map_err(classify)?;
            let debited: Option<i64> = tx
                .prepare_cached(
                    "UPDATE client_quota_usage SET units_used = units_used + ?3, updated_at = ?4
                     WHERE client_id = ?1 AND period_start = ?2 AND units_used + ?3 <= ?5
                     RETURNING units_used",
                )
                .map_err(classify)?
                .query_row(params![client, start, d.units, timestamp(d.now), d.cap], |r| r.get(0))
                .optional()
                .map_err(classify)?;
            Ok(match debited {
                Some(units_used) => ClientQuotaOutcome::Accepted { units_used },
                None => ClientQuotaOutcome::Rejected { units_used: used(tx, d.client_id, d.period_start)? },
            })
        })
        .await
    }

    async fn refund_client_quota(
        &self,
        client_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE client_quota_usage SET units_used = max(0, units_used - ?3), updated_at = ?4
                 WHERE client_id = ?1 AND period_start = ?2",
                params![client_id.to_string(), period_start.to_string(), units, timestamp(now)],
            )
            .map_err(classify)
            .map(drop)
        })
        .await
    }

    async fn client_quota_used(&self, client_id: Uuid, period_start: NaiveDate) -> Result<i64, StoreError> {
        self.read_point(|conn| used(conn, client_id, period_start))
    }
}

fn used(conn: &rusqlite::Connection, client_id: Uuid, period_start: NaiveDate) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT units_used FROM client_quota_usage WHERE client_id = ?1 AND period_start = ?2")
        .map_err(classify)?
        .query_row(params![client_id.to_string(), period_start.to_string()], |r| r.get(0))
        .optional()
        .map_err(classify)
        .map(|u| u.unwrap_or(0))
}
