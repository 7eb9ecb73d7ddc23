//! Metering on SQL Server: quota periods (debit, refund, thresholds), the GCRA rate-limit state, admission
//! and usage events.

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
        granted_units: required(row, 7)?,
        plan_code: row.get::<&str, _>(8).map(str::to_owned),
        overage_plan_code: row.get::<&str, _>(9).map(str::to_owned),
    })
}

pub(crate) async fn read_quota(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    start: NaiveDate,
) -> Result<Option<QuotaUsage>, StoreError> {
    rows(conn, GET_QUOTA, &[&tenant_id, &start]).await?.first().map(quota_from).transpose()
}

/// [`debit_period`], then the thresholds it may have taken billable usage past (a debit that is not a lease's grant).
pub(crate) async fn debit_and_announce(conn: &mut MssqlClient, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    let outcome = debit_period(conn, d).await?;
    if let QuotaOutcome::Accepted { units_used, quota_units, .. } = outcome
        && d.crossed_threshold(units_used, quota_units)
    {
        emit_quota_thresholds(conn, d.tenant_id, d.period_start, d.now).await?;
    }
    Ok(outcome)
}

/// Debits a quota period (created on first use), refusing under `block` what would exceed the quota. Announces no
/// threshold: a lease's grant is not usage; see [`debit_and_announce`].
pub(crate) async fn debit_period(conn: &mut MssqlClient, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    ensure_period(conn, d).await?;
    debit_existing_period(conn, d).await
}

/// Creates the debit's period row with its quota snapshot unless it exists.
pub(crate) async fn ensure_period(conn: &mut MssqlClient, d: &QuotaDebit) -> Result<(), StoreError> {
    let policy = d.overage_policy.as_str();
    let plan_code = d.plan_code.as_str();
    let ensure: [&dyn ToSql; 7] =
        [&d.tenant_id, &d.period_start, &d.period_end, &d.quota_units, &policy, &d.now, &plan_code];
    execute(conn, ENSURE_QUOTA_PERIOD, &ensure).await.map(drop)
}

/// [`debit_period`] once the period row exists ([`ensure_period`]).
pub(crate) async fn debit_existing_period(conn: &mut MssqlClient, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    let updated = rows(conn, DEBIT_QUOTA, &[&d.tenant_id, &d.period_start, &d.units, &d.now]).await?;
    match updated.first() {
        Some(row) => Ok(QuotaOutcome::Accepted {
            units_used: required(row, 0)?,
            quota_units: required(row, 1)?,
            overage_units: required(row, 2)?,
        }),
        None => {
            let current = read_quota(conn, d.tenant_id, d.period_start).await?.ok_or_else(quota_row_vanished)?;
            Ok(QuotaOutcome::Rejected { units_used: current.units_used, quota_units: current.quota_units })
        }
    }
}

/// One GCRA step for (tenant, client) under the state row's update lock; written only when allowed.
pub(crate) async fn take_rate(conn: &mut MssqlClient, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
    let decision = gcra(lock_rate_state(conn, take).await?, take);
    if decision.allowed {
        execute(conn, UPSERT_RATE_STATE, &[&take.tenant_id, &take.client_id.as_str(), &decision.tat_micros]).await?;
    }
    Ok(decision)
}

/// Up to `want` GCRA steps for (tenant, client) at once, under the same lock; written only when some are granted.
async fn take_rate_tokens(conn: &mut MssqlClient, take: &RateLimitTake, want: i64) -> Result<RateTokens, StoreError> {
    let tokens = gcra_batch(lock_rate_state(conn, take).await?, take, want);
    if tokens.granted > 0 {
        execute(conn, UPSERT_RATE_STATE, &[&take.tenant_id, &take.client_id.as_str(), &tokens.tat_micros]).await?;
    }
    Ok(tokens)
}

async fn lock_rate_state(conn: &mut MssqlClient, take: &RateLimitTake) -> Result<Option<i64>, StoreError> {
    let client = take.client_id.as_str();
    rows(conn, LOCK_RATE_STATE, &[&take.tenant_id, &client]).await?.first().map(|r| required(r, 0)).transpose()
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
    let narrow = Narrowed::of(e);
    execute(conn, INSERT_USAGE_EVENT, &usage_event_params(e, &narrow)).await
}

/// Inserts usage events, skipping ids stored already (and repeats within `events`); returns how many were new.
/// A whole batch is one statement, so one round trip, up to [`USAGE_EVENTS_PER_INSERT`] events.
pub(crate) async fn insert_usage_events(conn: &mut MssqlClient, events: &[UsageEvent]) -> Result<u64, StoreError> {
    let mut seen = std::collections::HashSet::new();
    let unique: Vec<&UsageEvent> = events.iter().filter(|e| seen.insert(e.event_id)).collect();
    let mut inserted = 0;
    for chunk in unique.chunks(USAGE_EVENTS_PER_INSERT) {
        let narrow: Vec<Narrowed> = chunk.iter().map(|e| Narrowed::of(e)).collect();
        let params: Vec<&dyn ToSql> =
            chunk.iter().zip(&narrow).flat_map(|(e, narrow)| usage_event_params(e, narrow)).collect();
        inserted += execute(conn, &insert_usage_events_sql(chunk.len()), &params).await?;
    }
    Ok(inserted)
}

/// The columns of a usage event whose SQL types differ from the row type's: `SMALLINT` status, `INT` units, the
/// refusal as text.
struct Narrowed {
    status: i16,
    units: i32,
    overage_units: i32,
    refusal: Option<&'static str>,
}

impl Narrowed {
    fn of(e: &UsageEvent) -> Self {
        Narrowed {
            status: e.status as i16,
            units: e.units as i32,
            overage_units: e.overage_units as i32,
            refusal: e.refusal.map(LimitRefusal::as_str),
        }
    }
}

/// One usage event's 19 parameters, in the column order of [`INSERT_USAGE_EVENT`] and [`insert_usage_events_sql`].
fn usage_event_params<'a>(e: &'a UsageEvent, narrow: &'a Narrowed) -> [&'a dyn ToSql; USAGE_EVENT_PARAMS] {
    [
        &e.event_id,
        &e.request_id,
        &e.tenant_id,
        &e.client_id,
        &e.principal_id,
        &e.operation_id,
        &e.method,
        &e.route_template,
        &narrow.status,
        &narrow.units,
        &e.billable,
        &narrow.overage_units,
        &e.latency_micros,
        &e.request_bytes,
        &e.response_bytes,
        &e.occurred_at,
        &e.recorded_at,
        &e.lease_id,
        &narrow.refusal,
    ]
}

const USAGE_EVENT_PARAMS: usize = 19;

/// Usage events per multi-row insert: SQL Server takes at most 2 100 parameters a request, and a row binds 19.
pub(crate) const USAGE_EVENTS_PER_INSERT: usize = 100;
const _: () = assert!(USAGE_EVENTS_PER_INSERT * USAGE_EVENT_PARAMS <= 2100, "SQL Server's parameter limit");

/// A multi-row insert of `rows` usage events (parameters as [`usage_event_params`], row after row). A row whose
/// `event_id` is stored already is skipped; the key-range lock keeps two concurrent batches from both inserting
/// one id, as in [`INSERT_USAGE_EVENT`]. The ids within one statement must differ.
pub(crate) fn insert_usage_events_sql(rows: usize) -> String {
    const COLUMNS: &str = "event_id, request_id, tenant_id, client_id, principal_id, operation_id, method, \
        route_template, status, units, billable, overage_units, latency_micros, request_bytes, response_bytes, \
        occurred_at, recorded_at, lease_id, refusal";
    let values: Vec<String> = (0..rows)
        .map(|row| {
            let first = row * USAGE_EVENT_PARAMS;
            let placeholders: Vec<String> = (1..=USAGE_EVENT_PARAMS).map(|i| format!("@P{}", first + i)).collect();
            format!("({})", placeholders.join(", "))
        })
        .collect();
    format!(
        "INSERT INTO dbo.usage_events ({COLUMNS})\nSELECT {COLUMNS} FROM (VALUES {}) AS v ({COLUMNS})\n\
         WHERE NOT EXISTS (SELECT 1 FROM dbo.usage_events AS u WITH (UPDLOCK, HOLDLOCK) WHERE u.event_id = v.event_id)",
        values.join(",\n")
    )
}

#[async_trait]
impl MeteringStore for MssqlStore {
    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
        in_tx!(self, Retry::No, |conn| debit_and_announce(conn, debit).await)
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
            execute(conn, REFUND_QUOTA, &[&tenant_id, &period_start, &units, &overage_units, &now]).await.map(drop)
        })
    }

    async fn quota_usage(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Option<QuotaUsage>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_quota(conn, tenant_id, period_start).await)
    }

    async fn take_rate_tokens(&self, take: &RateLimitTake, want: i64) -> Result<RateTokens, StoreError> {
        in_tx!(self, Retry::No, |conn| take_rate_tokens(conn, take, want).await)
    }

    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
        in_tx!(self, Retry::No, |conn| take_rate(conn, take).await)
    }

    async fn admit(&self, admission: &Admission) -> Result<AdmissionDecision, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let rate = take_rate(conn, &admission.rate).await?;
            let debit = match &admission.debit {
                Some(d) if rate.allowed => Some(debit_and_announce(conn, d).await?),
                _ => None,
            };
            Ok(AdmissionDecision { rate, debit })
        })
    }

    async fn record_usage(&self, usage: &[UsageEvent], audit: &[AuditEventInput]) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let inserted = insert_usage_events(conn, usage).await?;
            append_audit(conn, audit).await?;
            Ok(inserted)
        })
    }

    async fn set_response_bytes(&self, event_id: Uuid, response_bytes: i64) -> Result<bool, StoreError> {
        let response_bytes = response_bytes.max(0);
        in_tx!(self, Retry::Yes, |conn| {
            execute(conn, SET_RESPONSE_BYTES, &[&event_id, &response_bytes]).await.map(|n| n > 0)
        })
    }

    async fn count_usage_events(&self, tenant_id: Uuid) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let row = rows(conn, COUNT_USAGE_EVENTS, &[&tenant_id]).await?;
            let n: i64 = row.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
            Ok(n as u64)
        })
    }
}

/// Creates the period's counter row on first use, under a key-range lock so two first debits cannot both insert.
pub(crate) const ENSURE_QUOTA_PERIOD: &str = "IF NOT EXISTS (SELECT 1 FROM dbo.quota_usage WITH (UPDLOCK, HOLDLOCK)
    WHERE tenant_id = @P1 AND period_start = @P2)
INSERT INTO dbo.quota_usage (tenant_id, period_start, period_end, quota_units, overage_policy, updated_at, plan_code)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7)";

/// The debit: one conditional UPDATE, so concurrent debits can never take the counter past the quota under
/// `block`. Outputs the new total, the quota and this debit's overage units; no row means rejected.
pub(crate) const DEBIT_QUOTA: &str = "UPDATE dbo.quota_usage SET
    overage_units = overage_units
        + (CASE WHEN units_used + @P3 > quota_units THEN units_used + @P3 - quota_units ELSE 0 END)
        - (CASE WHEN units_used > quota_units THEN units_used - quota_units ELSE 0 END),
    units_used = units_used + @P3,
    updated_at = @P4
OUTPUT inserted.units_used, inserted.quota_units,
    (CASE WHEN inserted.units_used > inserted.quota_units THEN inserted.units_used - inserted.quota_units ELSE 0 END)
    - (CASE WHEN inserted.units_used - @P3 > inserted.quota_units THEN inserted.units_used - @P3 - inserted.quota_units ELSE 0 END)
WHERE tenant_id = @P1 AND period_start = @P2 AND (overage_policy = 'allow' OR units_used + @P3 <= quota_units)";

pub(crate) const REFUND_QUOTA: &str = "UPDATE dbo.quota_usage SET
    units_used = CASE WHEN units_used > @P3 THEN units_used - @P3 ELSE 0 END,
    overage_units = CASE WHEN overage_units > @P4 THEN overage_units - @P4 ELSE 0 END,
    updated_at = @P5
WHERE tenant_id = @P1 AND period_start = @P2";

pub(crate) const GET_QUOTA: &str =
    "SELECT tenant_id, period_start, period_end, quota_units, overage_policy, units_used, overage_units, granted_units,
    plan_code, overage_plan_code
FROM dbo.quota_usage WHERE tenant_id = @P1 AND period_start = @P2";

/// Reads the GCRA state and keeps the key locked until the transaction ends (also when the row is absent).
pub(crate) const LOCK_RATE_STATE: &str = "SELECT tat_micros FROM dbo.rate_limit_state WITH (UPDLOCK, HOLDLOCK)
WHERE tenant_id = @P1 AND client_id = @P2";

pub(crate) const UPSERT_RATE_STATE: &str =
    "UPDATE dbo.rate_limit_state SET tat_micros = @P3 WHERE tenant_id = @P1 AND client_id = @P2;
IF @@ROWCOUNT = 0
    INSERT INTO dbo.rate_limit_state (tenant_id, client_id, tat_micros) VALUES (@P1, @P2, @P3)";

/// Inserts one usage event unless its id is stored already; the lock hints close the check-then-insert race.
pub(crate) const INSERT_USAGE_EVENT: &str =
    "INSERT INTO dbo.usage_events (event_id, request_id, tenant_id, client_id, principal_id,
    operation_id, method, route_template, status, units, billable, overage_units, latency_micros, request_bytes,
    response_bytes, occurred_at, recorded_at, lease_id, refusal)
SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17, @P18, @P19
WHERE NOT EXISTS (SELECT 1 FROM dbo.usage_events WITH (UPDLOCK, HOLDLOCK) WHERE event_id = @P1)";

pub(crate) const COUNT_USAGE_EVENTS: &str = "SELECT COUNT_BIG(*) AS n FROM dbo.usage_events WHERE tenant_id = @P1";

/// The size of a streamed response, once its body has been sent.
pub(crate) const SET_RESPONSE_BYTES: &str = "UPDATE dbo.usage_events SET response_bytes = @P2 WHERE event_id = @P1";

/// Every statement above, by name, for the parse check (`store::tsql_check`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("ENSURE_QUOTA_PERIOD", ENSURE_QUOTA_PERIOD),
    ("DEBIT_QUOTA", DEBIT_QUOTA),
    ("REFUND_QUOTA", REFUND_QUOTA),
    ("GET_QUOTA", GET_QUOTA),
    ("LOCK_RATE_STATE", LOCK_RATE_STATE),
    ("UPSERT_RATE_STATE", UPSERT_RATE_STATE),
    ("INSERT_USAGE_EVENT", INSERT_USAGE_EVENT),
    ("COUNT_USAGE_EVENTS", COUNT_USAGE_EVENTS),
    ("SET_RESPONSE_BYTES", SET_RESPONSE_BYTES),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_multi_row_insert_binds_each_placeholder_once() {
        for rows in [1, 2, 7, USAGE_EVENTS_PER_INSERT] {
            let sql = insert_usage_events_sql(rows);
            let mut used: Vec<usize> = sql
                .match_indices("@P")
                .map(|(at, _)| sql[at + 2..].chars().take_while(char::is_ascii_digit).collect::<String>())
                .map(|digits| digits.parse().unwrap())
                .collect();
            used.sort_unstable();
            assert_eq!(used, (1..=rows * USAGE_EVENT_PARAMS).collect::<Vec<_>>(), "{rows} rows");
        }
    }
}
