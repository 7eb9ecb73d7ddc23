//! The SQL Server side of usage aggregation and billing; the statements are in `queries.rs` (`MERGE` upserts).

use super::{MssqlStore, Pooled, Retry};
use crate::store::UsageStore;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::integration::insert_outbox;
use super::{MssqlClient, column, execute, q, required, rows, text};
use crate::store::usage::*;
use crate::store::{OutboxMessage, StoreError};

async fn lock_position(conn: &mut MssqlClient, name: &str, now: DateTime<Utc>) -> Result<i64, StoreError> {
    let found = rows(conn, q::LOCK_POSITION, &[&name, &now]).await?;
    found.first().map(|r| required(r, 0)).transpose().map(|p| p.unwrap_or(0))
}

pub(super) async fn put_position(
    conn: &mut MssqlClient,
    name: &str,
    position: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    execute(conn, q::PUT_POSITION, &[&name, &position, &now]).await.map(drop)
}

pub(super) async fn rollup_state(conn: &mut MssqlClient) -> Result<RollupState, StoreError> {
    let mut state = RollupState::default();
    for row in rows(conn, q::READ_POSITIONS, &[]).await? {
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
    let scan = rows(conn, q::SCAN_ROLLUP_BATCH, &[&watermark, &batch, &step.settled_before]).await?;
    let (scanned, settled): (i64, Option<i64>) = match scan.first() {
        Some(row) => (required(row, 0)?, column(row, 1)?),
        None => (0, None),
    };
    let new_watermark = settled.unwrap_or(watermark).max(watermark);
    let mut rolled_up = 0;
    if new_watermark > watermark {
        let counted = rows(conn, q::COUNT_SEQ_RANGE, &[&watermark, &new_watermark]).await?;
        rolled_up = counted.first().map(|r| required::<i64>(r, 0)).transpose()?.unwrap_or(0) as u64;
        let params: [&dyn ToSql; 3] = [&new_watermark, &step.now, &watermark];
        execute(conn, q::ROLLUP_HOURS_OF_NEW_EVENTS, &params).await?;
        execute(conn, q::ROLLUP_DAYS_OF_NEW_EVENTS, &params).await?;
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
    Ok(execute(conn, q::ROLLUP_HOUR_OF_EVERY_TENANT, &params).await?
        + execute(conn, q::ROLLUP_DAY_OF_EVERY_TENANT, &params).await?)
}

pub(super) async fn purge(conn: &mut MssqlClient, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
    let found = rows(conn, q::READ_POSITION_HOLDLOCK, &[&ROLLUP_WATERMARK]).await?;
    let watermark: i64 = found.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
    execute(conn, q::PURGE_USAGE_EVENTS, &[&watermark, &before, &i64::from(limit.max(1))]).await
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
    let found = rows(conn, q::USAGE_ROLLUPS, &[&tenant_id, &granularity.as_str(), &from, &to]).await?;
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
    let found = rows(conn, q::READ_POSITION_HOLDLOCK, &[&ROLLUP_WATERMARK]).await?;
    let watermark: i64 = found.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
    let mut out: Vec<UsageRow> = usage_rollups(conn, query.tenant_id, query.granularity, query.from, query.to)
        .await?
        .into_iter()
        .map(|r| UsageRow {
            window_start: r.window_start,
            operation_id: r.operation_id,
            client_id: r.client_id,
            totals: r.totals,
        })
        .collect();
    let tail = match query.granularity {
        RollupGranularity::Hour => q::USAGE_TAIL_HOURS,
        RollupGranularity::Day => q::USAGE_TAIL_DAYS,
    };
    for row in rows(conn, tail, &[&watermark, &query.tenant_id, &query.from, &query.to]).await? {
        out.push(usage_row_from(&row)?);
    }
    Ok(out)
}

fn midnight(date: NaiveDate) -> DateTime<Utc> {
    date.and_hms_opt(0, 0, 0).expect("midnight exists").and_utc()
}

pub(super) async fn statement_drafts(
    conn: &mut MssqlClient,
    period_start: NaiveDate,
    period_end: NaiveDate,
    limit: u32,
) -> Result<Vec<StatementDraft>, StoreError> {
    let (from, to, top) = (midnight(period_start), midnight(period_end), i64::from(limit.max(1)));
    let params: [&dyn ToSql; 5] = [&period_start, &period_end, &from, &to, &top];
    rows(conn, q::STATEMENT_DRAFTS, &params)
        .await?
        .iter()
        .map(|row| {
            Ok(StatementDraft {
                tenant_id: required(row, 0)?,
                plan_code: text(row, 1)?,
                currency: text(row, 2)?,
                quota_units: required(row, 3)?,
                used_units: required(row, 4)?,
                overage_units: required(row, 5)?,
                base_price_micros: required(row, 6)?,
                overage_unit_price_micros: required(row, 7)?,
            })
        })
        .collect()
}

pub(super) async fn insert_statement(
    conn: &mut MssqlClient,
    s: &BillingStatement,
    event: &OutboxMessage,
) -> Result<bool, StoreError> {
    let params: [&dyn ToSql; 13] = [
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
    ];
    let inserted = execute(conn, q::INSERT_STATEMENT, &params).await? == 1;
    if inserted {
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

    async fn statement_drafts(
        &self,
        period_start: NaiveDate,
        period_end: NaiveDate,
        limit: u32,
    ) -> Result<Vec<StatementDraft>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| statement_drafts(conn, period_start, period_end, limit).await)
    }

    async fn insert_billing_statement(
        &self,
        statement: &BillingStatement,
        event: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        // Idempotent: a retried insert finds the statement and writes nothing (the event went with it).
        in_tx!(self, Retry::Yes, |conn| insert_statement(conn, statement, event).await)
    }

    async fn set_closed_through(&self, period_start: NaiveDate, now: DateTime<Utc>) -> Result<(), StoreError> {
        let position: i64 = period_start.format("%Y%m%d").to_string().parse().expect("digits");
        in_tx!(self, Retry::Yes, |conn| put_position(conn, ROLLUP_CLOSED_THROUGH, position, now).await)
    }

    async fn list_billing_statements(&self, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::LIST_STATEMENTS, &[&tenant_id]).await?.iter().map(statement_from).collect()
        })
    }

    async fn get_billing_statement(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
    ) -> Result<Option<BillingStatement>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::GET_STATEMENT, &[&tenant_id, &period_start]).await?.first().map(statement_from).transpose()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_sql_names_every_bound_in_order() {
        for sql in
            [q::ROLLUP_HOURS_OF_NEW_EVENTS, q::ROLLUP_HOUR_OF_EVERY_TENANT, q::USAGE_TAIL_HOURS, q::USAGE_TAIL_DAYS]
        {
            let mut rest = sql;
            for bound in LATENCY_BOUNDS_MICROS {
                let at = rest.find(&format!("e.latency_micros < {bound} THEN")).expect("every bound, in order");
                rest = &rest[at + 1..];
            }
        }
        for sql in [q::ROLLUP_DAYS_OF_NEW_EVENTS, q::ROLLUP_DAY_OF_EVERY_TENANT] {
            for k in 0..LATENCY_BOUNDS_MICROS.len() {
                assert!(sql.contains(&format!("'$[{k}]'")));
            }
            assert!(!sql.contains(&format!("'$[{}]'", LATENCY_BOUNDS_MICROS.len())));
        }
    }
}
