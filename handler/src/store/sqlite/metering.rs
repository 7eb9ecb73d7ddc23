//! Metering on SQLite: quota periods (debit, refund, thresholds), the GCRA rate-limit state, admission and
//! usage events.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::*;
use crate::store::MeteringStore;

pub(crate) fn read_quota(
    conn: &Connection,
    tenant_id: Uuid,
    period_start: NaiveDate,
) -> Result<Option<QuotaUsage>, StoreError> {
    let sql = "SELECT tenant_id, period_start, period_end, quota_units, overage_policy, units_used, overage_units,
                      granted_units, plan_code, overage_plan_code
               FROM quota_usage WHERE tenant_id = ?1 AND period_start = ?2";
    query_one(conn, sql, params![tenant_id.to_string(), period_start.to_string()], |r| {
        let (tenant, start, end, policy): (String, String, String, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(4)?);
        let (quota, used, overage, granted): (i64, i64, i64, i64) = (r.get(3)?, r.get(5)?, r.get(6)?, r.get(7)?);
        let (plan_code, overage_plan_code): (Option<String>, Option<String>) = (r.get(8)?, r.get(9)?);
        Ok((|| {
            Ok(QuotaUsage {
                tenant_id: parse_uuid(&tenant)?,
                period_start: parse_date(&start)?,
                period_end: parse_date(&end)?,
                quota_units: quota,
                overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
                units_used: used,
                overage_units: overage,
                granted_units: granted,
                plan_code,
                overage_plan_code,
            })
        })())
    })
}

/// Creates the debit's period row with its quota snapshot unless it exists (its `units` are not used).
pub(crate) fn ensure_period(conn: &Connection, d: &QuotaDebit) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO quota_usage (tenant_id, period_start, period_end, quota_units, overage_policy, updated_at,
             plan_code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (tenant_id, period_start) DO NOTHING",
    )
    .map_err(classify)?
    .execute(params![
        d.tenant_id.to_string(),
        d.period_start.to_string(),
        d.period_end.to_string(),
        d.quota_units,
        d.overage_policy.as_str(),
        timestamp(d.now),
        d.plan_code
    ])
    .map_err(classify)
    .map(drop)
}

/// [`debit_period`], then the thresholds it may have taken billable usage past (a debit that is not a lease's grant).
pub(crate) fn debit_and_announce(conn: &Connection, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    let outcome = debit_period(conn, d)?;
    if let QuotaOutcome::Accepted { units_used, quota_units, .. } = outcome
        && d.crossed_threshold(units_used, quota_units)
    {
        emit_quota_thresholds(conn, d.tenant_id, d.period_start, d.now)?;
    }
    Ok(outcome)
}

/// Debits a quota period (created on first use), refusing under `block` what would exceed the quota. Announces no
/// threshold: a lease's grant is not usage ([`emit_quota_thresholds`]); see [`debit_and_announce`].
pub(crate) fn debit_period(conn: &Connection, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    let (tenant, start) = (d.tenant_id.to_string(), d.period_start.to_string());
    ensure_period(conn, d)?;
    // One conditional UPDATE: the same statement shape as on SQL Server, so both refuse identically.
    let updated: Option<(i64, i64, i64)> = conn
        .prepare_cached("UPDATE quota_usage SET
                 overage_units = overage_units + max(0, units_used + ?3 - quota_units) - max(0, units_used - quota_units),
                 units_used = units_used + ?3,
                 updated_at = ?4
             WHERE tenant_id = ?1 AND period_start = ?2
               AND (overage_policy = 'allow' OR units_used + ?3 <= quota_units)
             RETURNING units_used, quota_units, max(0, units_used - quota_units) - max(0, units_used - ?3 - quota_units)")
        .map_err(classify)?
        .query_row(
            params![tenant, start, d.units, timestamp(d.now)],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(classify)?;
    Ok(match updated {
        Some((units_used, quota_units, overage_units)) => {
            QuotaOutcome::Accepted { units_used, quota_units, overage_units }
        }
        None => {
            let current = read_quota(conn, d.tenant_id, d.period_start)?.ok_or_else(quota_row_vanished)?;
            QuotaOutcome::Rejected { units_used: current.units_used, quota_units: current.quota_units }
        }
    })
}

/// One GCRA step for (tenant, client); the state is written only when the request is allowed.
pub(crate) fn take_rate(conn: &Connection, t: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
    let stored = rate_state(conn, t)?;
    let decision = gcra(stored, t);
    if decision.allowed {
        store_rate_state(conn, t, decision.tat_micros)?;
    }
    Ok(decision)
}

/// Up to `want` GCRA steps for (tenant, client) at once; the state is written only when some are granted.
fn take_rate_tokens(conn: &Connection, t: &RateLimitTake, want: i64) -> Result<RateTokens, StoreError> {
    let tokens = gcra_batch(rate_state(conn, t)?, t, want);
    if tokens.granted > 0 {
        store_rate_state(conn, t, tokens.tat_micros)?;
    }
    Ok(tokens)
}

fn rate_state(conn: &Connection, t: &RateLimitTake) -> Result<Option<i64>, StoreError> {
    conn.prepare_cached("SELECT tat_micros FROM rate_limit_state WHERE tenant_id = ?1 AND client_id = ?2")
        .map_err(classify)?
        .query_row(params![t.tenant_id.to_string(), t.client_id], |r| r.get(0))
        .optional()
        .map_err(classify)
}

fn store_rate_state(conn: &Connection, t: &RateLimitTake, tat_micros: i64) -> Result<(), StoreError> {
    conn.prepare_cached(
        "INSERT INTO rate_limit_state (tenant_id, client_id, tat_micros) VALUES (?1, ?2, ?3)
         ON CONFLICT (tenant_id, client_id) DO UPDATE SET tat_micros = excluded.tat_micros",
    )
    .map_err(classify)?
    .execute(params![t.tenant_id.to_string(), t.client_id, tat_micros])
    .map_err(classify)?;
    Ok(())
}

/// Writes a request's [`Ledger`] in the transaction of the write that carried the request out.
pub(crate) fn write_ledger(tx: &Connection, ledger: Option<&Ledger>) -> Result<(), StoreError> {
    if let Some(ledger) = ledger {
        insert_usage_event(tx, &ledger.usage)?;
        append_audit(tx, ledger.audit.as_slice())?;
    }
    Ok(())
}

/// Inserts one usage event unless its `event_id` is stored already; returns the rows inserted (0 or 1).
pub(crate) fn insert_usage_event(conn: &Connection, e: &UsageEvent) -> Result<usize, StoreError> {
    conn.prepare_cached(
        "INSERT INTO usage_events (event_id, request_id, tenant_id, client_id, principal_id, operation_id, method,
             route_template, status, units, billable, overage_units, latency_micros, request_bytes,
             response_bytes, occurred_at, recorded_at, lease_id, refusal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)
         ON CONFLICT (event_id) DO NOTHING",
    )
    .map_err(classify)?
    .execute(params![
        e.event_id.to_string(),
        e.request_id,
        e.tenant_id.map(|id| id.to_string()),
        e.client_id,
        e.principal_id,
        e.operation_id,
        e.method,
        e.route_template,
        e.status,
        e.units,
        e.billable,
        e.overage_units,
        e.latency_micros,
        e.request_bytes,
        e.response_bytes,
        timestamp(e.occurred_at),
        timestamp(e.recorded_at),
        e.lease_id.map(|id| id.to_string()),
        e.refusal.map(LimitRefusal::as_str)
    ])
    .map_err(classify)
}

#[async_trait]
impl MeteringStore for SqliteStore {
    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
        let d = debit.clone();
        self.write(move |conn| debit_and_announce(conn, &d)).await
    }

    async fn refund_quota(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        overage_units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        self.write(move |tx| {
            tx.execute(
                "UPDATE quota_usage SET units_used = max(0, units_used - ?3), overage_units = max(0, overage_units - ?4),
                     updated_at = ?5
                 WHERE tenant_id = ?1 AND period_start = ?2",
                params![tenant_id.to_string(), period_start.to_string(), units, overage_units, timestamp(now)],
            )
            .map(drop)
            .map_err(classify)
        })
        .await
    }

    async fn quota_usage(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Option<QuotaUsage>, StoreError> {
        self.read_point(|conn| read_quota(conn, tenant_id, period_start))
    }

    async fn take_rate_tokens(&self, take: &RateLimitTake, want: i64) -> Result<RateTokens, StoreError> {
        let t = take.clone();
        self.write(move |conn| take_rate_tokens(conn, &t, want)).await
    }

    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
        let t = take.clone();
        self.write(move |conn| take_rate(conn, &t)).await
    }

    async fn admit(&self, admission: &Admission) -> Result<AdmissionDecision, StoreError> {
        let a = admission.clone();
        self.write(move |conn| {
            let rate = take_rate(conn, &a.rate)?;
            let debit = match &a.debit {
                Some(d) if rate.allowed => Some(debit_and_announce(conn, d)?),
                _ => None,
            };
            Ok(AdmissionDecision { rate, debit })
        })
        .await
    }

    async fn record_usage(&self, usage: &[UsageEvent], audit: &[AuditEventInput]) -> Result<u64, StoreError> {
        let (events, audit) = (usage.to_vec(), audit.to_vec());
        self.write_here(move |tx| {
            let mut inserted = 0;
            for e in &events {
                inserted += insert_usage_event(tx, e)? as u64;
            }
            append_audit(tx, &audit)?;
            Ok(inserted)
        })
        .await
    }

    async fn set_response_bytes(&self, event_id: Uuid, response_bytes: i64) -> Result<bool, StoreError> {
        self.write(move |conn| {
            conn.prepare_cached("UPDATE usage_events SET response_bytes = ?2 WHERE event_id = ?1")
                .and_then(|mut s| s.execute(params![event_id.to_string(), response_bytes.max(0)]))
                .map(|n| n > 0)
                .map_err(classify)
        })
        .await
    }

    async fn count_usage_events(&self, tenant_id: Uuid) -> Result<u64, StoreError> {
        self.read(move |conn| {
            conn.query_row("SELECT count(*) FROM usage_events WHERE tenant_id = ?1", [tenant_id.to_string()], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as u64)
            .map_err(classify)
        })
        .await
    }
}
