//! Capped clients' quota counters on SQL Server: the row is created under a key-range lock, then one conditional
//! UPDATE debits it, so concurrent calls of any process never take it past the cap.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tiberius::ToSql;
use uuid::Uuid;

use super::*;
use crate::store::client_quota::*;

#[async_trait]
impl ClientQuotaStore for MssqlStore {
    async fn debit_client_quota(&self, debit: &ClientQuotaDebit) -> Result<ClientQuotaOutcome, StoreError> {
        // Not retried: a retry after a lost commit answer would debit twice.
        in_tx!(self, Retry::No, |conn| {
            let d = debit;
            execute(conn, ENSURE_CLIENT_PERIOD, &[&d.client_id, &d.period_start, &d.tenant_id, &d.now]).await?;
            let params: [&dyn ToSql; 5] = [&d.client_id, &d.period_start, &d.units, &d.now, &d.cap];
            let debited = rows(conn, DEBIT_CLIENT_QUOTA, &params).await?;
            Ok(match debited.first() {
                Some(row) => ClientQuotaOutcome::Accepted { units_used: required(row, 0)? },
                None => ClientQuotaOutcome::Rejected { units_used: used(conn, d.client_id, d.period_start).await? },
            })
        })
    }

    async fn refund_client_quota(
        &self,
        client_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            execute(conn, REFUND_CLIENT_QUOTA, &[&client_id, &period_start, &units, &now]).await.map(drop)
        })
    }

    async fn client_quota_used(&self, client_id: Uuid, period_start: NaiveDate) -> Result<i64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| used(conn, client_id, period_start).await)
    }
}

async fn used(conn: &mut MssqlClient, client_id: Uuid, period_start: NaiveDate) -> Result<i64, StoreError> {
    let found = rows(conn, CLIENT_QUOTA_USED, &[&client_id, &period_start]).await?;
    Ok(found.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0))
}

/// Creates the client's period row on first use, under a key-range lock so two first debits cannot both insert.
pub(crate) const ENSURE_CLIENT_PERIOD: &str =
    "IF NOT EXISTS (SELECT 1 FROM dbo.client_quota_usage WITH (UPDLOCK, HOLDLOCK)
    WHERE client_id = @P1 AND period_start = @P2)
INSERT INTO dbo.client_quota_usage (client_id, period_start, tenant_id, units_used, updated_at)
VALUES (@P1, @P2, @P3, 0, @P4)";

/// The debit: no row when the cap (`@P5`) refuses it.
pub(crate) const DEBIT_CLIENT_QUOTA: &str = "UPDATE dbo.client_quota_usage SET units_used = units_used + @P3,
    updated_at = @P4
OUTPUT inserted.units_used
WHERE client_id = @P1 AND period_start = @P2 AND units_used + @P3 <= @P5";

pub(crate) const REFUND_CLIENT_QUOTA: &str = "UPDATE dbo.client_quota_usage SET
    units_used = CASE WHEN units_used > @P3 THEN units_used - @P3 ELSE 0 END,
    updated_at = @P4
WHERE client_id = @P1 AND period_start = @P2";

pub(crate) const CLIENT_QUOTA_USED: &str =
    "SELECT units_used FROM dbo.client_quota_usage WHERE client_id = @P1 AND period_start = @P2";

/// Every statement of this file, for `store::tsql_check` (registered in `mssql::STATEMENTS`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("ENSURE_CLIENT_PERIOD", ENSURE_CLIENT_PERIOD),
    ("DEBIT_CLIENT_QUOTA", DEBIT_CLIENT_QUOTA),
    ("REFUND_CLIENT_QUOTA", REFUND_CLIENT_QUOTA),
    ("CLIENT_QUOTA_USED", CLIENT_QUOTA_USED),
];
