//! Metering on SQL Server: quota periods (debit, refund, thresholds), the GCRA rate-limit state, admission and usage events.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::*;
use crate::store::MeteringStore;

fn quota_from(row: &Row) -> Result<QuotaUsage, StoreError> {
    let policy = text(row, 4)?;
    Ok(QuotaUsage {
        tenant_id: required(row, 0)?,
        period_start: required(row, 1)?,
        period_end: required(row, 2)?,
        quota_units: required(row, 3)?,
        overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
        units_used: required(row, 5)?,
        overage_units: required(row, 6)?,
    })
}

pub(crate) async fn read_quota(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    start: NaiveDate,
) -> Result<Option<QuotaUsage>, StoreError> {
    rows(conn, q::GET_QUOTA, &[&tenant_id, &start]).await?.first().map(quota_from).transpose()
}

/// Debits a quota period (created on first use), refusing under `block` what would exceed the quota.
pub(crate) async fn debit_period(conn: &mut MssqlClient, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    let policy = d.overage_policy.as_str();
    let ensure: [&dyn ToSql; 6] = [&d.tenant_id, &d.period_start, &d.period_end, &d.quota_units, &policy, &d.now];
    execute(conn, q::ENSURE_QUOTA_PERIOD, &ensure).await?;
    let updated = rows(conn, q::DEBIT_QUOTA, &[&d.tenant_id, &d.period_start, &d.units, &d.now]).await?;
    match updated.first() {
        Some(row) => {
            let (units_used, quota_units) = (required(row, 0)?, required(row, 1)?);
            if crosses_threshold(units_used - d.units, units_used, quota_units) {
                emit_quota_thresholds(conn, d.tenant_id, d.period_start, d.now).await?;
            }
            Ok(QuotaOutcome::Accepted { units_used, quota_units, overage_units: required(row, 2)? })
        }
        None => {
            let current = read_quota(conn, d.tenant_id, d.period_start)
                .await?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("quota row vanished inside its transaction")))?;
            Ok(QuotaOutcome::Rejected { units_used: current.units_used, quota_units: current.quota_units })
        }
    }
}

/// One GCRA step for (tenant, client) under the state row's update lock; written only when allowed.
pub(crate) async fn take_rate(conn: &mut MssqlClient, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
    let client = take.client_id.as_str();
    let stored: Option<i64> = rows(conn, q::LOCK_RATE_STATE, &[&take.tenant_id, &client])
        .await?
        .first()
        .map(|r| required(r, 0))
        .transpose()?;
    let decision = gcra(stored, take);
    if decision.allowed {
        execute(conn, q::UPSERT_RATE_STATE, &[&take.tenant_id, &client, &decision.tat_micros]).await?;
    }
    Ok(decision)
}

/// Writes a request's [`Ledger`] in the transaction of the write that carried the request out.
pub(crate) async fn write_ledger(conn: &mut MssqlClient, ledger: Option<&Ledger>) -> Result<(), StoreError> {
    if let Some(ledger) = ledger {
        insert_usage_event(conn, &ledger.usage).await?;
        append_audit(conn, ledger.audit.as_slice()).await?;
    }
    Ok(())
}

/// Inserts one usage event unless its `event_id` is stored already; returns the rows inserted (0 or 1).
pub(crate) async fn insert_usage_event(conn: &mut MssqlClient, e: &UsageEvent) -> Result<u64, StoreError> {
    let status = e.status as i16;
    let (units, overage) = (e.units as i32, e.overage_units as i32);
    let params: [&dyn ToSql; 17] = [
        &e.event_id,
        &e.request_id.as_str(),
        &e.tenant_id,
        &e.client_id.as_deref(),
        &e.principal_id.as_deref(),
        &e.operation_id.as_str(),
        &e.method.as_str(),
        &e.route_template.as_str(),
        &status,
        &units,
        &e.billable,
        &overage,
        &e.latency_micros,
        &e.request_bytes,
        &e.response_bytes,
        &e.occurred_at,
        &e.recorded_at,
    ];
    execute(conn, q::INSERT_USAGE_EVENT, &params).await
}

#[async_trait]
impl MeteringStore for MssqlStore {
    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
        in_tx!(self, Retry::No, |conn| debit_period(conn, debit).await)
    }

    async fn refund_quota(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        overage_units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            execute(conn, q::REFUND_QUOTA, &[&tenant_id, &period_start, &units, &overage_units, &now]).await.map(drop)
        })
    }

    async fn quota_usage(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Option<QuotaUsage>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_quota(conn, tenant_id, period_start).await)
    }

    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
        in_tx!(self, Retry::No, |conn| take_rate(conn, take).await)
    }

    async fn admit(&self, admission: &Admission) -> Result<AdmissionDecision, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let rate = take_rate(conn, &admission.rate).await?;
            let debit = match &admission.debit {
                Some(d) if rate.allowed => Some(debit_period(conn, d).await?),
                _ => None,
            };
            Ok(AdmissionDecision { rate, debit })
        })
    }

    async fn record_usage(&self, usage: &[UsageEvent], audit: &[AuditEventInput]) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let mut inserted = 0;
            for e in usage {
                inserted += insert_usage_event(conn, e).await?;
            }
            append_audit(conn, audit).await?;
            Ok(inserted)
        })
    }

    async fn count_usage_events(&self, tenant_id: Uuid) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let row = rows(conn, q::COUNT_USAGE_EVENTS, &[&tenant_id]).await?;
            let n: i64 = row.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
            Ok(n as u64)
        })
    }
}
