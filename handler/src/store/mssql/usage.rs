//! The SQL Server side of usage aggregation and billing, with its statements (`MERGE` upserts) listed in `STATEMENTS`.

use super::{MssqlStore, Pooled, Retry};
use crate::store::UsageStore;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::integration::insert_outbox;
use super::{MssqlClient, column, execute, required, rows, text};
use crate::store::usage::*;
use crate::store::{OutboxMessage, StoreError, Tenant};

async fn lock_position(conn: &mut MssqlClient, name: &str, now: DateTime<Utc>) -> Result<i64, StoreError> {
    let found = rows(conn, LOCK_POSITION, &[&name, &now]).await?;
    found.first().map(|r| required(r, 0)).transpose().map(|p| p.unwrap_or(0))
}

pub(super) async fn put_position(
    conn: &mut MssqlClient,
    name: &str,
    position: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    execute(conn, PUT_POSITION, &[&name, &position, &now]).await.map(drop)
}

pub(super) async fn rollup_state(conn: &mut MssqlClient) -> Result<RollupState, StoreError> {
    let mut state = RollupState::default();
    for row in rows(conn, READ_POSITIONS, &[]).await? {
        let (name, position): (String, i64) = (text(&row, 0)?, required(&row, 1)?);
        let time = (position != 0).then(|| DateTime::from_timestamp_micros(position)).flatten();
        match name.as_str() {
            ROLLUP_WATERMARK => state.watermark = position,
            ROLLUP_COMPLETE_THROUGH => state.complete_through = time,
            ROLLUP_LAGGING_SINCE => state.lagging_since = time,
            ROLLUP_CLOSED_THROUGH => {
                state.closed_through = NaiveDate::parse_from_str(&position.to_string(), "%Y%m%d").ok();
            }
            _ => {}
        }
    }
    Ok(state)
}

pub(super) async fn rollup_step(conn: &mut MssqlClient, step: &RollupStep) -> Result<RollupProgress, StoreError> {
    let watermark = lock_position(conn, ROLLUP_WATERMARK, step.now).await?;
    let batch = i64::from(step.batch_size.max(1));
    let scan = rows(conn, SCAN_ROLLUP_BATCH, &[&watermark, &batch, &step.settled_before]).await?;
    let (scanned, settled): (i64, Option<i64>) = match scan.first() {
        Some(row) => (required(row, 0)?, column(row, 1)?),
        None => (0, None),
    };
    let new_watermark = settled.unwrap_or(watermark).max(watermark);
    let mut rolled_up = 0;
    if new_watermark > watermark {
        let counted = rows(conn, COUNT_SEQ_RANGE, &[&watermark, &new_watermark]).await?;
        rolled_up = counted.first().map(|r| required::<i64>(r, 0)).transpose()?.unwrap_or(0) as u64;
        let params: [&dyn ToSql; 3] = [&new_watermark, &step.now, &watermark];
        execute(conn, ROLLUP_HOURS_OF_NEW_EVENTS, &params).await?;
        execute(conn, ROLLUP_DAYS_OF_NEW_EVENTS, &params).await?;
        put_position(conn, ROLLUP_WATERMARK, new_watermark, step.now).await?;
    }
    let caught_up = scanned < batch;
    if caught_up {
        put_position(conn, ROLLUP_COMPLETE_THROUGH, step.settled_before.timestamp_micros(), step.now).await?;
    }
    Ok(RollupProgress { scanned: scanned as u64, rolled_up, watermark: new_watermark, caught_up })
}

pub(super) async fn rollup_rerun_hour(
    conn: &mut MssqlClient,
    hour: DateTime<Utc>,
    now: DateTime<Utc>,
) -> Result<u64, StoreError> {
    let watermark = lock_position(conn, ROLLUP_WATERMARK, now).await?;
    let hour = RollupGranularity::Hour.window_of(hour);
    let params: [&dyn ToSql; 3] = [&watermark, &now, &hour];
    Ok(execute(conn, ROLLUP_HOUR_OF_EVERY_TENANT, &params).await?
        + execute(conn, ROLLUP_DAY_OF_EVERY_TENANT, &params).await?)
}

pub(super) async fn purge(conn: &mut MssqlClient, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
    let found = rows(conn, READ_POSITION_HOLDLOCK, &[&ROLLUP_WATERMARK]).await?;
    let watermark: i64 = found.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
    execute(conn, PURGE_USAGE_EVENTS, &[&watermark, &before, &i64::from(limit.max(1))]).await
}

pub(super) async fn set_lagging(
    conn: &mut MssqlClient,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    event: Option<&OutboxMessage>,
) -> Result<bool, StoreError> {
    let current = lock_position(conn, ROLLUP_LAGGING_SINCE, now).await?;
    match since {
        Some(since) if current == 0 => {
            put_position(conn, ROLLUP_LAGGING_SINCE, since.timestamp_micros().max(1), now).await?;
            if let Some(event) = event {
                insert_outbox(conn, event).await?;
            }
            Ok(true)
        }
        None if current != 0 => {
            put_position(conn, ROLLUP_LAGGING_SINCE, 0, now).await?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn totals_from(row: &Row, first: usize) -> Result<UsageTotals, StoreError> {
    let histogram = text(row, first + 7)?;
    Ok(UsageTotals {
        calls: required(row, first)?,
        units: required(row, first + 1)?,
        billable_units: required(row, first + 2)?,
        overage_units: required(row, first + 3)?,
        errors: required(row, first + 4)?,
        latency_sum_micros: required(row, first + 5)?,
        latency_max_micros: required(row, first + 6)?,
        latency_histogram: UsageTotals::parse_histogram(&histogram)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad latency histogram {histogram:?} in the database")))?,
        rate_limited: required(row, first + 8)?,
        quota_refused: required(row, first + 9)?,
    })
}

fn usage_row_from(row: &Row) -> Result<UsageRow, StoreError> {
    let window: chrono::NaiveDateTime = required(row, 0)?;
    Ok(UsageRow {
        window_start: window.and_utc(),
        operation_id: text(row, 1)?,
        client_id: text(row, 2)?,
        totals: totals_from(row, 3)?,
    })
}

pub(super) async fn usage_rollups(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    granularity: RollupGranularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<UsageRollup>, StoreError> {
    let found = rows(conn, USAGE_ROLLUPS, &[&tenant_id, &granularity.as_str(), &from, &to]).await?;
    found
        .iter()
        .map(|row| {
            let r = usage_row_from(row)?;
            Ok(UsageRollup {
                tenant_id,
                granularity,
                window_start: r.window_start,
                operation_id: r.operation_id,
                client_id: r.client_id,
                totals: r.totals,
            })
        })
        .collect()
}

pub(super) async fn usage_report(conn: &mut MssqlClient, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    let found = rows(conn, READ_POSITION_HOLDLOCK, &[&ROLLUP_WATERMARK]).await?;
    let watermark: i64 = found.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
    let mut out: Vec<UsageRow> = usage_rollups(conn, query.tenant_id, query.granularity, query.from, query.to)
        .await?
        .into_iter()
        .map(UsageRow::from)
        .collect();
    let offset = query.hour_offset_minutes;
    let found = match query.granularity {
        RollupGranularity::Hour => {
            let params: [&dyn ToSql; 5] = [&watermark, &query.tenant_id, &query.from, &query.to, &offset];
            rows(conn, USAGE_TAIL_HOURS, &params).await?
        }
        RollupGranularity::Day => {
            rows(conn, USAGE_TAIL_DAYS, &[&watermark, &query.tenant_id, &query.from, &query.to]).await?
        }
    };
    for row in found {
        out.push(usage_row_from(&row)?);
    }
    Ok(out)
}

pub(super) async fn tenants_without_statement(
    conn: &mut MssqlClient,
    month: NaiveDate,
    month_end: NaiveDate,
    created_before: DateTime<Utc>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Tenant>, StoreError> {
    let top = i64::from(limit.max(1));
    let params: [&dyn ToSql; 5] = [&month, &month_end, &created_before, &after, &top];
    rows(conn, TENANTS_WITHOUT_STATEMENT, &params).await?.iter().map(super::tenants::tenant_from).collect()
}

pub(super) async fn insert_statement(
    conn: &mut MssqlClient,
    s: &BillingStatement,
    adjustments: &[StatementAdjustment],
    event: &OutboxMessage,
) -> Result<bool, StoreError> {
    let params: [&dyn ToSql; 18] = [
        &s.id,
        &s.tenant_id,
        &s.period_start,
        &s.period_end,
        &s.plan_code.as_str(),
        &s.currency.as_str(),
        &s.quota_units,
        &s.used_units,
        &s.overage_units,
        &s.base_amount_micros,
        &s.overage_amount_micros,
        &s.total_amount_micros,
        &s.created_at,
        &s.granted_units,
        &s.overage_unit_price_micros,
        &s.adjustment_amount_micros,
        &s.starts_at,
        &s.ends_at,
    ];
    let inserted = execute(conn, INSERT_STATEMENT, &params).await? == 1;
    if inserted {
        for a in adjustments {
            let line: [&dyn ToSql; 7] = [
                &a.id,
                &a.statement_id,
                &a.adjusts_statement_id,
                &a.used_units_delta,
                &a.overage_units_delta,
                &a.amount_micros,
                &a.created_at,
            ];
            execute(conn, INSERT_ADJUSTMENT, &line).await?;
        }
        insert_outbox(conn, event).await?;
    }
    Ok(inserted)
}

pub(super) fn statement_from(row: &Row) -> Result<BillingStatement, StoreError> {
    Ok(BillingStatement {
        id: required(row, 0)?,
        tenant_id: required(row, 1)?,
        period_start: required(row, 2)?,
        period_end: required(row, 3)?,
        plan_code: text(row, 4)?,
        currency: text(row, 5)?,
        quota_units: required(row, 6)?,
        used_units: required(row, 7)?,
        overage_units: required(row, 8)?,
        base_amount_micros: required(row, 9)?,
        overage_amount_micros: required(row, 10)?,
        total_amount_micros: required(row, 11)?,
        created_at: required(row, 12)?,
        granted_units: required(row, 13)?,
        overage_unit_price_micros: column(row, 14)?,
        adjustment_amount_micros: required(row, 15)?,
        starts_at: column(row, 16)?,
        ends_at: column(row, 17)?,
    })
}

#[async_trait]
impl UsageStore for MssqlStore {
    async fn rollup_state(&self) -> Result<RollupState, StoreError> {
        in_tx!(self, Retry::Yes, |conn| rollup_state(conn).await)
    }

    async fn rollup_step(&self, step: &RollupStep) -> Result<RollupProgress, StoreError> {
        // Idempotent: the step recomputes rollups from raw events and moves the watermark in one transaction.
        in_tx!(self, Retry::Yes, |conn| rollup_step(conn, step).await)
    }

    async fn rollup_rerun_hour(&self, hour: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| rollup_rerun_hour(conn, hour, now).await)
    }

    async fn purge_usage_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| purge(conn, before, limit).await)
    }

    async fn set_rollup_lagging(
        &self,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        event: Option<&OutboxMessage>,
    ) -> Result<bool, StoreError> {
        in_tx!(self, Retry::Yes, |conn| set_lagging(conn, since, now, event).await)
    }

    async fn usage_rollups(
        &self,
        tenant_id: Uuid,
        granularity: RollupGranularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRollup>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage_rollups(conn, tenant_id, granularity, from, to).await)
    }

    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage_report(conn, query).await)
    }

    async fn tenants_without_statement(
        &self,
        month: NaiveDate,
        month_end: NaiveDate,
        created_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Tenant>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            tenants_without_statement(conn, month, month_end, created_before, after, limit).await
        })
    }

    async fn unbilled_usage(&self, tenant_id: Uuid, before: NaiveDate) -> Result<Vec<UnbilledUsage>, StoreError> {
        let earliest = before - chrono::Months::new(24);
        in_tx!(self, Retry::Yes, |conn| {
            let found = rows(conn, UNBILLED_USAGE, &[&tenant_id, &before, &earliest]).await?;
            let all = found
                .iter()
                .map(|row| {
                    Ok(UnbilledUsage {
                        statement_id: required(row, 0)?,
                        period_start: required(row, 1)?,
                        used_units_delta: required(row, 2)?,
                        overage_units_delta: required(row, 3)?,
                        overage_unit_price_micros: required(row, 4)?,
                        currency: text(row, 5)?,
                    })
                })
                .collect::<Result<Vec<_>, StoreError>>()?;
            Ok(all.into_iter().filter(|u| u.used_units_delta != 0 || u.overage_units_delta != 0).collect())
        })
    }

    async fn insert_billing_statement(
        &self,
        statement: &BillingStatement,
        adjustments: &[StatementAdjustment],
        event: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        // Idempotent: a retried insert finds the statement and writes nothing (the event and lines went with it).
        in_tx!(self, Retry::Yes, |conn| insert_statement(conn, statement, adjustments, event).await)
    }

    async fn statement_adjustments(
        &self,
        tenant_id: Uuid,
        statement_id: Uuid,
    ) -> Result<Vec<StatementAdjustment>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, STATEMENT_ADJUSTMENTS, &[&tenant_id, &statement_id])
                .await?
                .iter()
                .map(|row| {
                    Ok(StatementAdjustment {
                        id: required(row, 0)?,
                        statement_id: required(row, 1)?,
                        adjusts_statement_id: required(row, 2)?,
                        adjusts_period_start: required(row, 3)?,
                        used_units_delta: required(row, 4)?,
                        overage_units_delta: required(row, 5)?,
                        amount_micros: required(row, 6)?,
                        created_at: required(row, 7)?,
                    })
                })
                .collect()
        })
    }

    async fn set_closed_through(&self, period_start: NaiveDate, now: DateTime<Utc>) -> Result<(), StoreError> {
        let position: i64 = period_start.format("%Y%m%d").to_string().parse().expect("digits");
        in_tx!(self, Retry::Yes, |conn| put_position(conn, ROLLUP_CLOSED_THROUGH, position, now).await)
    }

    async fn list_billing_statements(&self, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, LIST_STATEMENTS, &[&tenant_id]).await?.iter().map(statement_from).collect()
        })
    }

    async fn get_billing_statement(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
    ) -> Result<Option<BillingStatement>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, GET_STATEMENT, &[&tenant_id, &period_start]).await?.first().map(statement_from).transpose()
        })
    }
}

/// The twelve cumulative latency counts of a group of `usage_events e`, as JSON array text.
macro_rules! tsql_histogram_of_events {
    () => {
        "CONCAT('[', SUM(CASE WHEN e.latency_micros < 1000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 2000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 5000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 10000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 20000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 50000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 100000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 200000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 500000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 1000000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 2000000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 5000000 THEN 1 ELSE 0 END), ']')"
    };
}

/// The element-wise sum of the histograms of a group of `usage_rollups r`.
macro_rules! tsql_histogram_of_rollups {
    () => {
        "CONCAT('[', SUM(CAST(JSON_VALUE(r.latency_histogram, '$[0]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[1]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[2]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[3]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[4]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[5]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[6]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[7]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[8]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[9]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[10]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[11]') AS BIGINT)), ']')"
    };
}

/// The sums of a group of `usage_events e`, named as the rollup columns (all BIGINT).
macro_rules! tsql_sums_of_events {
    () => {
        concat!(
            "COUNT_BIG(*) AS calls, SUM(CAST(e.units AS BIGINT)) AS units,
        SUM(CASE WHEN e.billable = 1 THEN CAST(e.units AS BIGINT) ELSE 0 END) AS billable_units,
        SUM(CAST(e.overage_units AS BIGINT)) AS overage_units,
        SUM(CASE WHEN e.status >= 400 THEN CAST(1 AS BIGINT) ELSE 0 END) AS errors,
        SUM(e.latency_micros) AS latency_sum_micros, MAX(e.latency_micros) AS latency_max_micros,
        ",
            tsql_histogram_of_events!(),
            " AS latency_histogram,
        SUM(CASE WHEN e.refusal = N'rate' THEN CAST(1 AS BIGINT) ELSE 0 END) AS rate_limited,
        SUM(CASE WHEN e.refusal = N'quota' THEN CAST(1 AS BIGINT) ELSE 0 END) AS quota_refused"
        )
    };
}

macro_rules! tsql_hour_of {
    ($t:literal) => {
        concat!(
            "DATEADD(HOUR, DATEDIFF(HOUR, CAST('2000-01-01' AS DATETIME2(0)), ",
            $t,
            "), CAST('2000-01-01' AS DATETIME2(0)))"
        )
    };
}

/// Overwrites the rollups of `granularity` with the rows of `source` (an aliased derived table `s` with
/// `tenant_id, ws, operation_id, client_id` and the sums); `@P2` is `updated_at`.
macro_rules! tsql_merge_rollups {
    ($granularity:literal, $source:expr) => {
        concat!(
            "MERGE INTO dbo.usage_rollups AS t
USING (",
            $source,
            ") AS s
ON t.tenant_id = s.tenant_id AND t.granularity = '",
            $granularity,
            "' AND t.window_start = s.ws
    AND t.operation_id = s.operation_id AND t.client_id = s.client_id
WHEN MATCHED THEN UPDATE SET calls = s.calls, units = s.units, billable_units = s.billable_units,
    overage_units = s.overage_units, errors = s.errors, latency_sum_micros = s.latency_sum_micros,
    latency_max_micros = s.latency_max_micros, latency_histogram = s.latency_histogram,
    rate_limited = s.rate_limited, quota_refused = s.quota_refused, updated_at = @P2
WHEN NOT MATCHED THEN INSERT (tenant_id, granularity, window_start, operation_id, client_id, calls, units,
    billable_units, overage_units, errors, latency_sum_micros, latency_max_micros, latency_histogram, rate_limited,
    quota_refused, updated_at)
VALUES (s.tenant_id, '",
            $granularity,
            "', s.ws, s.operation_id, s.client_id, s.calls, s.units, s.billable_units,
    s.overage_units, s.errors, s.latency_sum_micros, s.latency_max_micros, s.latency_histogram, s.rate_limited,
    s.quota_refused, @P2);"
        )
    };
}

/// Hour windows listed by `windows` (derived table `w` of `tenant_id, ws`), recomputed from raw events with
/// `seq <= @P1`.
macro_rules! tsql_hours_source {
    ($windows:literal) => {
        concat!(
            "SELECT e.tenant_id, w.ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
            tsql_sums_of_events!(),
            "
    FROM (", $windows, ") AS w
    JOIN dbo.usage_events e ON e.tenant_id = w.tenant_id AND e.occurred_at >= w.ws AND e.occurred_at < DATEADD(HOUR, 1, w.ws)
    WHERE e.seq <= @P1
    GROUP BY e.tenant_id, w.ws, e.operation_id, COALESCE(e.client_id, N'')"
        )
    };
}

/// Day windows listed by `days` (derived table `d` of `tenant_id, ws`), recomputed from the hour rollups.
macro_rules! tsql_days_source {
    ($days:literal) => {
        concat!(
            "SELECT r.tenant_id, d.ws, r.operation_id, r.client_id, SUM(r.calls) AS calls, SUM(r.units) AS units,
        SUM(r.billable_units) AS billable_units, SUM(r.overage_units) AS overage_units, SUM(r.errors) AS errors,
        SUM(r.latency_sum_micros) AS latency_sum_micros, MAX(r.latency_max_micros) AS latency_max_micros,
        ",
            tsql_histogram_of_rollups!(),
            " AS latency_histogram, SUM(r.rate_limited) AS rate_limited, SUM(r.quota_refused) AS quota_refused
    FROM (",
            $days,
            ") AS d
    JOIN dbo.usage_rollups r ON r.tenant_id = d.tenant_id AND r.granularity = 'hour'
        AND r.window_start >= d.ws AND r.window_start < DATEADD(DAY, 1, d.ws)
    GROUP BY r.tenant_id, d.ws, r.operation_id, r.client_id"
        )
    };
}

/// The `job_watermarks` row `@P1`, created at 0 if missing and locked until the transaction ends: rollup steps
/// of two processes serialize here.
pub(crate) const LOCK_POSITION: &str =
    "IF NOT EXISTS (SELECT 1 FROM dbo.job_watermarks WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)
    INSERT INTO dbo.job_watermarks (name, position, updated_at) VALUES (@P1, 0, @P2);
SELECT position FROM dbo.job_watermarks WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1";

/// A `job_watermarks` position, read under a shared lock held to the end of the transaction: the usage report
/// reads the watermark, the rollups and the tail while no rollup step can commit (its last write is this row).
pub(crate) const READ_POSITION_HOLDLOCK: &str =
    "SELECT position FROM dbo.job_watermarks WITH (HOLDLOCK) WHERE name = @P1";

pub(crate) const READ_POSITIONS: &str = "SELECT name, position FROM dbo.job_watermarks WHERE name LIKE 'usage-rollup%'";

pub(crate) const PUT_POSITION: &str = "UPDATE dbo.job_watermarks SET position = @P2, updated_at = @P3 WHERE name = @P1;
IF @@ROWCOUNT = 0
    INSERT INTO dbo.job_watermarks (name, position, updated_at) VALUES (@P1, @P2, @P3)";

/// How many events lie past the watermark `@P1` within the batch of `@P2`, and the highest settled `seq` among them.
pub(crate) const SCAN_ROLLUP_BATCH: &str =
    "SELECT COUNT_BIG(*) AS scanned, MAX(CASE WHEN b.recorded_at <= @P3 THEN b.seq END) AS settled
FROM (SELECT TOP (@P2) seq, recorded_at FROM dbo.usage_events WHERE seq > @P1 ORDER BY seq) AS b";

pub(crate) const COUNT_SEQ_RANGE: &str =
    "SELECT COUNT_BIG(*) AS n FROM dbo.usage_events WHERE seq > @P1 AND seq <= @P2";

/// The hour windows of the events with `seq` in `(@P3, @P1]`, recomputed. `@P2`: updated_at.
pub(crate) const ROLLUP_HOURS_OF_NEW_EVENTS: &str = tsql_merge_rollups!(
    "hour",
    tsql_hours_source!(
        "SELECT DISTINCT e.tenant_id, DATEADD(MINUTE, t.window_offset_minutes, DATEADD(HOUR,
            DATEDIFF(HOUR, CAST('2000-01-01' AS DATETIME2(0)), DATEADD(MINUTE, -t.window_offset_minutes, e.occurred_at)),
            CAST('2000-01-01' AS DATETIME2(0)))) AS ws
        FROM dbo.usage_events e JOIN dbo.tenants t ON t.id = e.tenant_id
        WHERE e.seq > @P3 AND e.seq <= @P1"
    )
);

/// The day windows of the events with `seq` in `(@P3, @P1]`, recomputed from the hour rollups. A tenant whose
/// hours start off the UTC hour (`window_offset_minutes`) has no UTC day rollups: its hours do not tile UTC days.
pub(crate) const ROLLUP_DAYS_OF_NEW_EVENTS: &str = tsql_merge_rollups!(
    "day",
    tsql_days_source!(
        "SELECT DISTINCT e.tenant_id, CAST(CAST(e.occurred_at AS DATE) AS DATETIME2(0)) AS ws
        FROM dbo.usage_events e JOIN dbo.tenants t ON t.id = e.tenant_id
        WHERE e.seq > @P3 AND e.seq <= @P1 AND t.window_offset_minutes = 0"
    )
);

/// The hour window of every tenant that starts within the UTC hour `@P3` (at its `window_offset_minutes`),
/// recomputed from raw events with `seq <= @P1`.
pub(crate) const ROLLUP_HOUR_OF_EVERY_TENANT: &str = tsql_merge_rollups!(
    "hour",
    tsql_hours_source!(
        "SELECT id AS tenant_id, DATEADD(MINUTE, window_offset_minutes, CAST(@P3 AS DATETIME2(0))) AS ws FROM dbo.tenants"
    )
);

/// The day containing `@P3` of every tenant, recomputed from the hour rollups.
pub(crate) const ROLLUP_DAY_OF_EVERY_TENANT: &str = tsql_merge_rollups!(
    "day",
    tsql_days_source!(
        "SELECT id AS tenant_id, CAST(CAST(@P3 AS DATE) AS DATETIME2(0)) AS ws FROM dbo.tenants
        WHERE window_offset_minutes = 0"
    )
);

/// At most `@P3` rolled-up events (`seq <= @P1`) recorded before `@P2`, from the oldest `seq`.
pub(crate) const PURGE_USAGE_EVENTS: &str = "DELETE FROM dbo.usage_events
WHERE seq IN (SELECT TOP (@P3) seq FROM dbo.usage_events WHERE seq <= @P1 ORDER BY seq) AND recorded_at < @P2";

pub(crate) const USAGE_ROLLUPS: &str = "SELECT window_start, operation_id, client_id, calls, units, billable_units,
    overage_units, errors, latency_sum_micros, latency_max_micros, latency_histogram, rate_limited, quota_refused
FROM dbo.usage_rollups WHERE tenant_id = @P1 AND granularity = @P2 AND window_start >= @P3 AND window_start < @P4
ORDER BY window_start, operation_id, client_id";

/// The tail of a tenant's usage: events past the watermark `@P1`, per hour window (starting `@P5` minutes past
/// the UTC hour, the tenant's `window_offset_minutes`), operation and client. The window is computed once per row
/// (`CROSS APPLY`) and grouped by name, so the grouping never depends on matching two parameterized expressions.
pub(crate) const USAGE_TAIL_HOURS: &str = concat!(
    "SELECT w.ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
    tsql_sums_of_events!(),
    "
FROM dbo.usage_events e
CROSS APPLY (SELECT DATEADD(MINUTE, @P5, ",
    tsql_hour_of!("DATEADD(MINUTE, -@P5, e.occurred_at)"),
    ") AS ws) AS w
WHERE e.seq > @P1 AND e.tenant_id = @P2 AND e.occurred_at >= @P3 AND e.occurred_at < @P4
GROUP BY w.ws, e.operation_id, COALESCE(e.client_id, N'')"
);

/// The same per day.
pub(crate) const USAGE_TAIL_DAYS: &str = concat!(
    "SELECT CAST(CAST(e.occurred_at AS DATE) AS DATETIME2(0)) AS ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
    tsql_sums_of_events!(),
    "
FROM dbo.usage_events e WHERE e.seq > @P1 AND e.tenant_id = @P2 AND e.occurred_at >= @P3 AND e.occurred_at < @P4
GROUP BY CAST(CAST(e.occurred_at AS DATE) AS DATETIME2(0)), e.operation_id, COALESCE(e.client_id, N'')"
);

/// Tenants created before `@P3` without a statement for a period starting in `[@P1, @P2)`, by id after `@P4`
/// (NULL: from the first), at most `@P5`.
pub(crate) const TENANTS_WITHOUT_STATEMENT: &str = "SELECT TOP (@P5) t.id, t.entra_tenant_id, t.name, t.status,
    t.plan_code, t.created_at, t.updated_at, t.version, t.billing_anchor_day, t.time_zone, t.window_offset_minutes
FROM dbo.tenants t
WHERE t.created_at < @P3 AND (@P4 IS NULL OR t.id > @P4)
    AND NOT EXISTS (SELECT 1 FROM dbo.billing_statements b WHERE b.tenant_id = t.id
        AND b.period_start >= @P1 AND b.period_start < @P2)
ORDER BY t.id";

/// A statement, unless the tenant has one for the period (the key-range lock closes the race).
pub(crate) const INSERT_STATEMENT: &str = "INSERT INTO dbo.billing_statements (id, tenant_id, period_start, period_end,
    plan_code, currency, quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros,
    total_amount_micros, created_at, granted_units, overage_unit_price_micros, adjustment_amount_micros, starts_at,
    ends_at)
SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17, @P18
WHERE NOT EXISTS (SELECT 1 FROM dbo.billing_statements WITH (UPDLOCK, HOLDLOCK)
    WHERE tenant_id = @P2 AND period_start = @P3)";

pub(crate) const LIST_STATEMENTS: &str =
    "SELECT TOP (1000) id, tenant_id, period_start, period_end, plan_code, currency,
    quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at,
    granted_units, overage_unit_price_micros, adjustment_amount_micros, starts_at, ends_at
FROM dbo.billing_statements WHERE tenant_id = @P1 ORDER BY period_start DESC";

pub(crate) const GET_STATEMENT: &str = "SELECT id, tenant_id, period_start, period_end, plan_code, currency,
    quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at,
    granted_units, overage_unit_price_micros, adjustment_amount_micros, starts_at, ends_at
FROM dbo.billing_statements WHERE tenant_id = @P1 AND period_start = @P2";

pub(crate) const INSERT_ADJUSTMENT: &str = "INSERT INTO dbo.statement_adjustments (id, statement_id,
    adjusts_statement_id, used_units_delta, overage_units_delta, amount_micros, created_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7)";

/// Per issued statement of `@P1` for a period starting in `[@P3, @P2)`: the billable units of its period's hour
/// rollups now (its instants; without them a UTC month) less what it and its adjustments billed, and the overage
/// those units make past its quota (`store::usage::period_overage`) less the overage billed, never below zero
/// (`UsageStore::unbilled_usage`).
pub(crate) const UNBILLED_USAGE: &str = "SELECT s.id, s.period_start,
    u.used_total - s.used_units - a.adjusted_used AS used_units_delta,
    CASE WHEN o.overage_due > 0 THEN o.overage_due ELSE 0 END AS overage_units_delta,
    COALESCE(s.overage_unit_price_micros, p.overage_unit_price_micros, 0) AS overage_unit_price_micros, s.currency
FROM dbo.billing_statements s
LEFT JOIN dbo.plans p ON p.code = s.plan_code
CROSS APPLY (SELECT COALESCE(SUM(r.billable_units), 0) AS used_total FROM dbo.usage_rollups r
    WHERE r.tenant_id = s.tenant_id AND r.granularity = 'hour'
        AND r.window_start >= COALESCE(s.starts_at, CAST(s.period_start AS DATETIME2(6)))
        AND r.window_start < COALESCE(s.ends_at, CAST(s.period_end AS DATETIME2(6)))) u
CROSS APPLY (SELECT COALESCE(SUM(x.used_units_delta), 0) AS adjusted_used,
        COALESCE(SUM(x.overage_units_delta), 0) AS adjusted_overage
    FROM dbo.statement_adjustments x WHERE x.adjusts_statement_id = s.id) a
CROSS APPLY (SELECT CASE WHEN u.used_total > s.quota_units THEN u.used_total - s.quota_units ELSE 0 END
        - s.overage_units - a.adjusted_overage AS overage_due) o
WHERE s.tenant_id = @P1 AND s.period_start < @P2 AND s.period_start >= @P3
ORDER BY s.period_start";

pub(crate) const STATEMENT_ADJUSTMENTS: &str = "SELECT a.id, a.statement_id, a.adjusts_statement_id, o.period_start,
    a.used_units_delta, a.overage_units_delta, a.amount_micros, a.created_at
FROM dbo.statement_adjustments a
JOIN dbo.billing_statements s ON s.id = a.statement_id
JOIN dbo.billing_statements o ON o.id = a.adjusts_statement_id
WHERE s.tenant_id = @P1 AND a.statement_id = @P2
ORDER BY o.period_start";

/// Every statement above, by name, for the parse check (`store::tsql_check`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("LOCK_POSITION", LOCK_POSITION),
    ("READ_POSITION_HOLDLOCK", READ_POSITION_HOLDLOCK),
    ("READ_POSITIONS", READ_POSITIONS),
    ("PUT_POSITION", PUT_POSITION),
    ("SCAN_ROLLUP_BATCH", SCAN_ROLLUP_BATCH),
    ("COUNT_SEQ_RANGE", COUNT_SEQ_RANGE),
    ("ROLLUP_HOURS_OF_NEW_EVENTS", ROLLUP_HOURS_OF_NEW_EVENTS),
    ("ROLLUP_DAYS_OF_NEW_EVENTS", ROLLUP_DAYS_OF_NEW_EVENTS),
    ("ROLLUP_HOUR_OF_EVERY_TENANT", ROLLUP_HOUR_OF_EVERY_TENANT),
    ("ROLLUP_DAY_OF_EVERY_TENANT", ROLLUP_DAY_OF_EVERY_TENANT),
    ("PURGE_USAGE_EVENTS", PURGE_USAGE_EVENTS),
    ("USAGE_ROLLUPS", USAGE_ROLLUPS),
    ("USAGE_TAIL_HOURS", USAGE_TAIL_HOURS),
    ("USAGE_TAIL_DAYS", USAGE_TAIL_DAYS),
    ("TENANTS_WITHOUT_STATEMENT", TENANTS_WITHOUT_STATEMENT),
    ("INSERT_STATEMENT", INSERT_STATEMENT),
    ("LIST_STATEMENTS", LIST_STATEMENTS),
    ("GET_STATEMENT", GET_STATEMENT),
    ("INSERT_ADJUSTMENT", INSERT_ADJUSTMENT),
    ("UNBILLED_USAGE", UNBILLED_USAGE),
    ("STATEMENT_ADJUSTMENTS", STATEMENT_ADJUSTMENTS),
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_sql_names_every_bound_in_order() {
        for sql in [ROLLUP_HOURS_OF_NEW_EVENTS, ROLLUP_HOUR_OF_EVERY_TENANT, USAGE_TAIL_HOURS, USAGE_TAIL_DAYS] {
            let mut rest = sql;
            for bound in LATENCY_BOUNDS_MICROS {
                let at = rest.find(&format!("e.latency_micros < {bound} THEN")).expect("every bound, in order");
                rest = &rest[at + 1..];
            }
        }
        for sql in [ROLLUP_DAYS_OF_NEW_EVENTS, ROLLUP_DAY_OF_EVERY_TENANT] {
            for k in 0..LATENCY_BOUNDS_MICROS.len() {
                assert!(sql.contains(&format!("'$[{k}]'")));
            }
            assert!(!sql.contains(&format!("'$[{}]'", LATENCY_BOUNDS_MICROS.len())));
        }
    }
}
