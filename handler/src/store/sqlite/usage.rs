//! SQLite usage aggregation and billing: the incremental rollup step, reruns from raw events, reports, statements.
//!
//! Times are RFC 3339 text with six fraction digits and `Z`, so a window is a text prefix: the hour of
//! `2026-01-31T23:59:59.000000Z` is `substr(t, 1, 13)` (`2026-01-31T23`), its day `substr(t, 1, 10)`.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::tenants::{TENANT_COLUMNS, tenant_from_row};
use super::{SqliteStore, classify, insert_outbox, parse_date, parse_timestamp, parse_uuid, query_all, timestamp};
use crate::store::usage::*;
use crate::store::{LimitRefusal, OutboxMessage, StoreError, Tenant, UsageStore};

/// The twelve cumulative latency counts of the calls in a group of `usage_events e`, as JSON array text.
macro_rules! histogram_of_events {
    () => {
        "'[' || sum(e.latency_micros < 1000) || ',' || sum(e.latency_micros < 2000) || ',' || \
         sum(e.latency_micros < 5000) || ',' || sum(e.latency_micros < 10000) || ',' || \
         sum(e.latency_micros < 20000) || ',' || sum(e.latency_micros < 50000) || ',' || \
         sum(e.latency_micros < 100000) || ',' || sum(e.latency_micros < 200000) || ',' || \
         sum(e.latency_micros < 500000) || ',' || sum(e.latency_micros < 1000000) || ',' || \
         sum(e.latency_micros < 2000000) || ',' || sum(e.latency_micros < 5000000) || ']'"
    };
}

/// The element-wise sum of the histograms of a group of `usage_rollups r`.
macro_rules! histogram_of_rollups {
    () => {
        "'[' || sum(json_extract(r.latency_histogram, '$[0]')) || ',' || sum(json_extract(r.latency_histogram, '$[1]')) \
         || ',' || sum(json_extract(r.latency_histogram, '$[2]')) || ',' || sum(json_extract(r.latency_histogram, '$[3]')) \
         || ',' || sum(json_extract(r.latency_histogram, '$[4]')) || ',' || sum(json_extract(r.latency_histogram, '$[5]')) \
         || ',' || sum(json_extract(r.latency_histogram, '$[6]')) || ',' || sum(json_extract(r.latency_histogram, '$[7]')) \
         || ',' || sum(json_extract(r.latency_histogram, '$[8]')) || ',' || sum(json_extract(r.latency_histogram, '$[9]')) \
         || ',' || sum(json_extract(r.latency_histogram, '$[10]')) || ',' || sum(json_extract(r.latency_histogram, '$[11]')) || ']'"
    };
}

/// The sums of a group of `usage_events e`, in rollup column order (calls .. quota_refused).
macro_rules! sums_of_events {
    () => {
        concat!(
            "count(*), sum(e.units), sum(CASE WHEN e.billable = 1 THEN e.units ELSE 0 END), sum(e.overage_units), \
             sum(e.status >= 400), sum(e.latency_micros), max(e.latency_micros), ",
            histogram_of_events!(),
            ", count(CASE WHEN e.refusal = 'rate' THEN 1 END), count(CASE WHEN e.refusal = 'quota' THEN 1 END)"
        )
    };
}

const UPSERT_TAIL: &str = "ON CONFLICT (tenant_id, granularity, window_start, operation_id, client_id) DO UPDATE SET
    calls = excluded.calls, units = excluded.units, billable_units = excluded.billable_units,
    overage_units = excluded.overage_units, errors = excluded.errors, latency_sum_micros = excluded.latency_sum_micros,
    latency_max_micros = excluded.latency_max_micros, latency_histogram = excluded.latency_histogram,
    rate_limited = excluded.rate_limited, quota_refused = excluded.quota_refused, updated_at = excluded.updated_at";

const ROLLUP_COLUMNS: &str = "tenant_id, granularity, window_start, operation_id, client_id, calls, units, \
    billable_units, overage_units, errors, latency_sum_micros, latency_max_micros, latency_histogram, rate_limited, \
    quota_refused, updated_at";

/// Recomputes the hour windows listed by `windows` (a query of `tenant_id, hour` with `hour` like
/// `2026-01-31T23`) from raw events with `seq <= ?1`; `?2` is `updated_at`.
fn recompute_hours(windows: &str) -> String {
    format!(
        "WITH w AS ({windows})
INSERT INTO usage_rollups ({ROLLUP_COLUMNS})
SELECT e.tenant_id, 'hour', w.ws, e.operation_id, coalesce(e.client_id, ''), {sums}, ?2
FROM w JOIN usage_events e ON e.tenant_id = w.tenant_id
    AND e.occurred_at >= w.ws AND e.occurred_at < strftime('%Y-%m-%dT%H:%M:00.000000Z', w.ws, '+1 hour')
WHERE e.seq <= ?1
GROUP BY e.tenant_id, w.ws, e.operation_id, coalesce(e.client_id, '')
{UPSERT_TAIL}",
        sums = sums_of_events!()
    )
}

/// Recomputes the day windows listed by `days` (a query of `tenant_id, day` with `day` like `2026-01-31`)
/// from the hour rollups; `?2` is `updated_at`.
fn recompute_days(days: &str) -> String {
    format!(
        "WITH d AS ({days})
INSERT INTO usage_rollups ({ROLLUP_COLUMNS})
SELECT r.tenant_id, 'day', d.day || 'T00:00:00.000000Z', r.operation_id, r.client_id, sum(r.calls), sum(r.units),
    sum(r.billable_units), sum(r.overage_units), sum(r.errors), sum(r.latency_sum_micros), max(r.latency_max_micros),
    {histogram}, sum(r.rate_limited), sum(r.quota_refused), ?2
FROM d JOIN usage_rollups r ON r.tenant_id = d.tenant_id AND r.granularity = 'hour'
    AND r.window_start >= d.day || 'T00:00:00.000000Z' AND r.window_start <= d.day || 'T23:59:59.999999Z'
WHERE ?1 IS NOT NULL
GROUP BY r.tenant_id, d.day, r.operation_id, r.client_id
{UPSERT_TAIL}",
        histogram = histogram_of_rollups!()
    )
}

/// The hour window of every tenant that starts within the UTC hour `?3` (like `2026-01-31T23`, at the tenant's
/// `window_offset_minutes`), or the UTC day of that hour for every tenant with UTC-aligned hours (the others have
/// no day rollups: their hours do not tile UTC days).
const ONE_HOUR_OF_EVERY_TENANT: &str =
    "SELECT id AS tenant_id, ?3 || printf(':%02d:00.000000Z', window_offset_minutes) AS ws FROM tenants";
const ONE_DAY_OF_EVERY_TENANT: &str =
    "SELECT id AS tenant_id, substr(?3, 1, 10) AS day FROM tenants WHERE window_offset_minutes = 0";

pub(super) fn read_position(conn: &Connection, name: &str) -> Result<i64, StoreError> {
    conn.query_row("SELECT position FROM job_watermarks WHERE name = ?1", [name], |r| r.get(0))
        .optional()
        .map_err(classify)
        .map(|p| p.unwrap_or(0))
}

pub(super) fn write_position(
    conn: &Connection,
    name: &str,
    position: i64,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO job_watermarks (name, position, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (name) DO UPDATE SET position = excluded.position, updated_at = excluded.updated_at",
        params![name, position, timestamp(now)],
    )
    .map(drop)
    .map_err(classify)
}

fn micros_to_time(micros: i64) -> Option<DateTime<Utc>> {
    (micros != 0).then(|| DateTime::from_timestamp_micros(micros)).flatten()
}

pub(super) fn rollup_state(conn: &Connection) -> Result<RollupState, StoreError> {
    let closed = read_position(conn, ROLLUP_CLOSED_THROUGH)?;
    Ok(RollupState {
        watermark: read_position(conn, ROLLUP_WATERMARK)?,
        complete_through: micros_to_time(read_position(conn, ROLLUP_COMPLETE_THROUGH)?),
        lagging_since: micros_to_time(read_position(conn, ROLLUP_LAGGING_SINCE)?),
        closed_through: (closed != 0).then(|| NaiveDate::parse_from_str(&closed.to_string(), "%Y%m%d").ok()).flatten(),
    })
}

pub(super) fn rollup_step(tx: &Connection, step: &RollupStep) -> Result<RollupProgress, StoreError> {
    let watermark = read_position(tx, ROLLUP_WATERMARK)?;
    let (scanned, settled_max): (i64, Option<i64>) = tx
        .query_row(
            "SELECT count(*), max(CASE WHEN recorded_at <= ?3 THEN seq END)
             FROM (SELECT seq, recorded_at FROM usage_events WHERE seq > ?1 ORDER BY seq LIMIT ?2)",
            params![watermark, i64::from(step.batch_size.max(1)), timestamp(step.settled_before)],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .map_err(classify)?;
    let new_watermark = settled_max.unwrap_or(watermark).max(watermark);
    let mut rolled_up = 0;
    if new_watermark > watermark {
        let now = timestamp(step.now);
        let offsets = window_offsets(tx)?;
        let (events, hours) = sum_new_events(tx, watermark, new_watermark, &offsets)?;
        rolled_up = events;
        let days = days_of(&hours, &offsets);
        add_onto(tx, "hour", &hours, &now)?;
        add_onto(tx, "day", &days, &now)?;
        write_position(tx, ROLLUP_WATERMARK, new_watermark, step.now)?;
    }
    let caught_up = scanned < i64::from(step.batch_size.max(1));
    if caught_up {
        write_position(tx, ROLLUP_COMPLETE_THROUGH, step.settled_before.timestamp_micros(), step.now)?;
    }
    Ok(RollupProgress { scanned: scanned as u64, rolled_up, watermark: new_watermark, caught_up })
}

/// The new calls of one window of one tenant, operation and client.
struct WindowDelta {
    tenant_id: String,
    /// Like `2026-01-31T23:00:00.000000Z`.
    window_start: String,
    operation_id: String,
    client_id: String,
    totals: UsageTotals,
}

/// The tenants whose hour windows start off the UTC hour, with the minutes past it (their time zone's).
fn window_offsets(tx: &Connection) -> Result<HashMap<String, i64>, StoreError> {
    let mut stmt = tx
        .prepare_cached("SELECT id, window_offset_minutes FROM tenants WHERE window_offset_minutes <> 0")
        .map_err(classify)?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))).map_err(classify)?;
    rows.map(|row| row.map_err(classify)).collect()
}

/// The start of the hour window holding the event time `occurred` (`2026-01-31T23:59:00.000000Z`) for hours
/// starting `offset` minutes past the UTC hour, in the same text form.
fn aligned_hour(occurred: &str, offset: i64) -> String {
    match DateTime::parse_from_rfc3339(occurred) {
        Ok(t) => {
            let shifted = t.with_timezone(&Utc) - chrono::Duration::minutes(offset);
            let hour = RollupGranularity::Hour.window_of(shifted) + chrono::Duration::minutes(offset);
            timestamp(hour)
        }
        Err(_) => format!("{}:00:00.000000Z", occurred.get(..13).unwrap_or(occurred)),
    }
}

/// Sums the events with `seq` in `(after, through]` per hour window (of each tenant's alignment, `offsets`), in
/// one pass in `seq` order (consecutive rows of the table, no index). Returns how many events there were, with a
/// tenant or not, and the sums.
fn sum_new_events(
    tx: &Connection,
    after: i64,
    through: i64,
    offsets: &HashMap<String, i64>,
) -> Result<(u64, Vec<WindowDelta>), StoreError> {
    let mut stmt = tx
        .prepare_cached(
            "SELECT tenant_id, occurred_at, operation_id, coalesce(client_id, ''), units, billable,
                 overage_units, status, latency_micros, refusal
             FROM usage_events WHERE seq > ?1 AND seq <= ?2",
        )
        .map_err(classify)?;
    let mut rows = stmt.query([after, through]).map_err(classify)?;
    let mut events = 0;
    let mut deltas: Vec<WindowDelta> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    let mut key = String::new();
    while let Some(row) = rows.next().map_err(classify)? {
        events += 1;
        let text =
            |i: usize| row.get_ref(i).and_then(|v| v.as_str_or_null().map_err(rusqlite::Error::from)).map_err(classify);
        let Some(tenant_id) = text(0)? else { continue };
        let (occurred, operation_id, client_id) =
            (text(1)?.unwrap_or(""), text(2)?.unwrap_or(""), text(3)?.unwrap_or(""));
        let aligned;
        let hour = match offsets.get(tenant_id) {
            Some(offset) => {
                aligned = aligned_hour(occurred, *offset);
                aligned.as_str()
            }
            None => occurred.get(..13).unwrap_or(occurred),
        };
        // Lengths first, so no two windows share a key whatever their ids contain.
        key.clear();
        let _ = write!(
            key,
            "{}:{}:{}:{tenant_id}{hour}{operation_id}{client_id}",
            tenant_id.len(),
            hour.len(),
            operation_id.len()
        );
        let i = match index.get(key.as_str()) {
            Some(&i) => i,
            None => {
                index.insert(key.clone(), deltas.len());
                deltas.push(WindowDelta {
                    tenant_id: tenant_id.to_owned(),
                    window_start: if hour.len() == 13 { format!("{hour}:00:00.000000Z") } else { hour.to_owned() },
                    operation_id: operation_id.to_owned(),
                    client_id: client_id.to_owned(),
                    totals: UsageTotals::default(),
                });
                deltas.len() - 1
            }
        };
        let number = |i: usize| row.get::<_, i64>(i).map_err(classify);
        let refusal = match text(9)? {
            Some("rate") => Some(LimitRefusal::Rate),
            Some("quota") => Some(LimitRefusal::Quota),
            _ => None,
        };
        deltas[i].totals.add_call(Call {
            units: number(4)?,
            billable: number(5)? == 1,
            overage_units: number(6)?,
            status: number(7)? as i32,
            latency_micros: number(8)?,
            refusal,
        });
    }
    Ok((events, deltas))
}

/// The day windows' deltas: the hour deltas summed per UTC day, for the tenants whose hours tile UTC days.
fn days_of(hours: &[WindowDelta], offsets: &HashMap<String, i64>) -> Vec<WindowDelta> {
    let mut days: BTreeMap<(&str, &str, &str, &str), UsageTotals> = BTreeMap::new();
    for hour in hours.iter().filter(|h| !offsets.contains_key(&h.tenant_id)) {
        let day = hour.window_start.get(..10).unwrap_or(&hour.window_start);
        days.entry((&hour.tenant_id, day, &hour.operation_id, &hour.client_id)).or_default().merge(&hour.totals);
    }
    days.into_iter()
        .map(|((tenant_id, day, operation_id, client_id), totals)| WindowDelta {
            tenant_id: tenant_id.to_owned(),
            window_start: format!("{day}T00:00:00.000000Z"),
            operation_id: operation_id.to_owned(),
            client_id: client_id.to_owned(),
            totals,
        })
        .collect()
}

/// Adds each delta onto its rollup of `granularity` (`hour` or `day`), creating the rollups not there yet.
fn add_onto(tx: &Connection, granularity: &str, deltas: &[WindowDelta], now: &str) -> Result<(), StoreError> {
    let mut read = tx
        .prepare_cached(
            "SELECT calls, units, billable_units, overage_units, errors, latency_sum_micros, latency_max_micros,
                 latency_histogram, rate_limited, quota_refused
             FROM usage_rollups
             WHERE tenant_id = ?1 AND granularity = ?2 AND window_start = ?3 AND operation_id = ?4
                 AND client_id = ?5",
        )
        .map_err(classify)?;
    let mut write = tx
        .prepare_cached(&format!(
            "INSERT INTO usage_rollups ({ROLLUP_COLUMNS})
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16) {UPSERT_TAIL}"
        ))
        .map_err(classify)?;
    for delta in deltas {
        let key = params![delta.tenant_id, granularity, delta.window_start, delta.operation_id, delta.client_id];
        let mut totals =
            read.query_row(key, |r| totals_from(r, 0)).optional().map_err(classify)?.transpose()?.unwrap_or_default();
        totals.merge(&delta.totals);
        write
            .execute(params![
                delta.tenant_id,
                granularity,
                delta.window_start,
                delta.operation_id,
                delta.client_id,
                totals.calls,
                totals.units,
                totals.billable_units,
                totals.overage_units,
                totals.errors,
                totals.latency_sum_micros,
                totals.latency_max_micros,
                totals.histogram_json(),
                totals.rate_limited,
                totals.quota_refused,
                now,
            ])
            .map_err(classify)?;
    }
    Ok(())
}

pub(super) fn rollup_rerun_hour(tx: &Connection, hour: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError> {
    let watermark = read_position(tx, ROLLUP_WATERMARK)?;
    let hour_prefix = timestamp(RollupGranularity::Hour.window_of(hour))[..13].to_owned();
    let now = timestamp(now);
    let hours = tx
        .execute(&recompute_hours(ONE_HOUR_OF_EVERY_TENANT), params![watermark, now, hour_prefix])
        .map_err(classify)?;
    let days =
        tx.execute(&recompute_days(ONE_DAY_OF_EVERY_TENANT), params![watermark, now, hour_prefix]).map_err(classify)?;
    Ok((hours + days) as u64)
}

pub(super) fn purge(tx: &Connection, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
    let watermark = read_position(tx, ROLLUP_WATERMARK)?;
    tx.execute(
        "DELETE FROM usage_events WHERE seq IN (
             SELECT seq FROM usage_events WHERE seq <= ?1 ORDER BY seq LIMIT ?3) AND recorded_at < ?2",
        params![watermark, timestamp(before), i64::from(limit.max(1))],
    )
    .map(|n| n as u64)
    .map_err(classify)
}

pub(super) fn set_lagging(
    tx: &Connection,
    since: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
    event: Option<&OutboxMessage>,
) -> Result<bool, StoreError> {
    let current = read_position(tx, ROLLUP_LAGGING_SINCE)?;
    match since {
        Some(since) if current == 0 => {
            write_position(tx, ROLLUP_LAGGING_SINCE, since.timestamp_micros().max(1), now)?;
            if let Some(event) = event {
                insert_outbox(tx, event)?;
            }
            Ok(true)
        }
        None if current != 0 => {
            write_position(tx, ROLLUP_LAGGING_SINCE, 0, now)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

fn totals_from(r: &rusqlite::Row<'_>, first: usize) -> rusqlite::Result<Result<UsageTotals, StoreError>> {
    let histogram: String = r.get(first + 7)?;
    let (rate_limited, quota_refused): (i64, i64) = (r.get(first + 8)?, r.get(first + 9)?);
    let sums: (i64, i64, i64, i64, i64, i64, i64) = (
        r.get(first)?,
        r.get(first + 1)?,
        r.get(first + 2)?,
        r.get(first + 3)?,
        r.get(first + 4)?,
        r.get(first + 5)?,
        r.get(first + 6)?,
    );
    Ok(UsageTotals::parse_histogram(&histogram)
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad latency histogram {histogram:?} in the database")))
        .map(|latency_histogram| UsageTotals {
            calls: sums.0,
            units: sums.1,
            billable_units: sums.2,
            overage_units: sums.3,
            errors: sums.4,
            latency_sum_micros: sums.5,
            latency_max_micros: sums.6,
            latency_histogram,
            rate_limited,
            quota_refused,
        }))
}

pub(super) fn usage_rollups(
    conn: &Connection,
    tenant_id: Uuid,
    granularity: RollupGranularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<UsageRollup>, StoreError> {
    let mut stmt = conn
        .prepare_cached(
            "SELECT window_start, operation_id, client_id, calls, units, billable_units, overage_units, errors,
                 latency_sum_micros, latency_max_micros, latency_histogram, rate_limited, quota_refused
             FROM usage_rollups WHERE tenant_id = ?1 AND granularity = ?2 AND window_start >= ?3 AND window_start < ?4
             ORDER BY window_start, operation_id, client_id",
        )
        .map_err(classify)?;
    let rows = stmt
        .query_map(params![tenant_id.to_string(), granularity.as_str(), timestamp(from), timestamp(to)], |r| {
            let (window, operation_id, client_id): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
            let totals = totals_from(r, 3)?;
            Ok((|| {
                Ok(UsageRollup {
                    tenant_id,
                    granularity,
                    window_start: parse_timestamp(&window)?,
                    operation_id,
                    client_id,
                    totals: totals?,
                })
            })())
        })
        .map_err(classify)?;
    rows.map(|row| row.map_err(classify)?).collect()
}

/// Rollups plus the tail, in one read transaction (one snapshot).
pub(super) fn usage_report(conn: &Connection, q: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
    conn.execute_batch("BEGIN").map_err(classify)?;
    let result = (|| {
        let watermark = read_position(conn, ROLLUP_WATERMARK)?;
        let mut out: Vec<UsageRow> =
            usage_rollups(conn, q.tenant_id, q.granularity, q.from, q.to)?.into_iter().map(UsageRow::from).collect();
        // Hour windows start `?5` minutes past the UTC hour (the tenant's alignment); days are UTC days.
        let window = match q.granularity {
            RollupGranularity::Hour => {
                "strftime('%Y-%m-%dT%H:%M:00.000000Z', strftime('%Y-%m-%d %H:00:00', substr(e.occurred_at, 1, 19), \
                 printf('-%d minutes', ?5)), printf('+%d minutes', ?5))"
            }
            RollupGranularity::Day => "substr(e.occurred_at, 1, 10) || 'T00:00:00.000000Z'",
        };
        // `+e.tenant_id`: read the tail through the primary key (seq > watermark), the short end of the table.
        let sql = format!(
            "SELECT {window}, e.operation_id, coalesce(e.client_id, ''), {sums}
             FROM usage_events e
             WHERE e.seq > ?1 AND +e.tenant_id = ?2 AND e.occurred_at >= ?3 AND e.occurred_at < ?4
             GROUP BY 1, 2, 3",
            sums = sums_of_events!()
        );
        let mut stmt = conn.prepare_cached(&sql).map_err(classify)?;
        let mut args: Vec<rusqlite::types::Value> =
            vec![watermark.into(), q.tenant_id.to_string().into(), timestamp(q.from).into(), timestamp(q.to).into()];
        if q.granularity == RollupGranularity::Hour {
            args.push(i64::from(q.hour_offset_minutes).into());
        }
        let rows = stmt
            .query_map(rusqlite::params_from_iter(args), |r| {
                let (window, operation_id, client_id): (String, String, String) = (r.get(0)?, r.get(1)?, r.get(2)?);
                let totals = totals_from(r, 3)?;
                Ok((|| {
                    Ok(UsageRow { window_start: parse_timestamp(&window)?, operation_id, client_id, totals: totals? })
                })())
            })
            .map_err(classify)?;
        for row in rows {
            out.push(row.map_err(classify)??);
        }
        Ok(out)
    })();
    conn.execute_batch("COMMIT").map_err(classify)?;
    result
}

/// [`UsageStore::tenants_without_statement`].
pub(super) fn tenants_without_statement(
    conn: &Connection,
    month: NaiveDate,
    month_end: NaiveDate,
    created_before: DateTime<Utc>,
    after: Option<Uuid>,
    limit: u32,
) -> Result<Vec<Tenant>, StoreError> {
    query_all(
        conn,
        &format!(
            "SELECT {TENANT_COLUMNS} FROM tenants t
             WHERE t.created_at < ?3 AND t.id > ?4
               AND NOT EXISTS (SELECT 1 FROM billing_statements b WHERE b.tenant_id = t.id
                   AND b.period_start >= ?1 AND b.period_start < ?2)
             ORDER BY t.id LIMIT ?5"
        ),
        params![
            month.to_string(),
            month_end.to_string(),
            timestamp(created_before),
            after.map_or_else(String::new, |id| id.to_string()),
            i64::from(limit.max(1))
        ],
        tenant_from_row,
    )
}

/// [`UsageStore::unbilled_usage`]: per issued statement, the hour rollups of its period now (its instants; a
/// statement without them is a UTC month), less what it and its adjustments billed. Rollup windows are stored as
/// RFC 3339 text with microseconds, so a UTC month's first instant is its date followed by `T00:00:00.000000Z`.
/// A tenant's hour windows are aligned to its time zone, so they tile its periods exactly.
fn unbilled_usage(conn: &Connection, tenant_id: Uuid, before: NaiveDate) -> Result<Vec<UnbilledUsage>, StoreError> {
    let earliest = before - chrono::Months::new(24);
    let rows = query_all(
        conn,
        "SELECT s.id, s.period_start,
             s.used_total - s.used_units - s.adjusted_used,
             max(0, max(0, s.used_total - s.quota_units) - s.overage_units - s.adjusted_overage),
             coalesce(s.overage_unit_price_micros, p.overage_unit_price_micros, 0), s.currency
         FROM (SELECT b.*,
                 coalesce((SELECT sum(r.billable_units) FROM usage_rollups r WHERE r.tenant_id = b.tenant_id
                     AND r.granularity = 'hour'
                     AND r.window_start >= coalesce(b.starts_at, b.period_start || 'T00:00:00.000000Z')
                     AND r.window_start < coalesce(b.ends_at, b.period_end || 'T00:00:00.000000Z')), 0) AS used_total,
                 coalesce((SELECT sum(a.used_units_delta) FROM statement_adjustments a
                     WHERE a.adjusts_statement_id = b.id), 0) AS adjusted_used,
                 coalesce((SELECT sum(a.overage_units_delta) FROM statement_adjustments a
                     WHERE a.adjusts_statement_id = b.id), 0) AS adjusted_overage
               FROM billing_statements b
               WHERE b.tenant_id = ?1 AND b.period_start < ?2 AND b.period_start >= ?3) s
         LEFT JOIN plans p ON p.code = s.plan_code
         ORDER BY s.period_start",
        params![tenant_id.to_string(), before.to_string(), earliest.to_string()],
        |r| {
            let (id, start): (String, String) = (r.get(0)?, r.get(1)?);
            let (used, overage, price): (i64, i64, i64) = (r.get(2)?, r.get(3)?, r.get(4)?);
            let currency: String = r.get(5)?;
            Ok((|| {
                Ok(UnbilledUsage {
                    statement_id: parse_uuid(&id)?,
                    period_start: parse_date(&start)?,
                    used_units_delta: used,
                    overage_units_delta: overage,
                    overage_unit_price_micros: price,
                    currency,
                })
            })())
        },
    )?;
    Ok(rows.into_iter().filter(|u| u.used_units_delta != 0 || u.overage_units_delta != 0).collect())
}

pub(super) fn insert_statement(
    tx: &Connection,
    s: &BillingStatement,
    adjustments: &[StatementAdjustment],
    event: &OutboxMessage,
) -> Result<bool, StoreError> {
    let inserted = tx
        .execute(
            "INSERT INTO billing_statements (id, tenant_id, period_start, period_end, plan_code, currency, quota_units,
                 used_units, overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at,
                 granted_units, overage_unit_price_micros, adjustment_amount_micros, starts_at, ends_at)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18)
             ON CONFLICT (tenant_id, period_start) DO NOTHING",
            params![
                s.id.to_string(),
                s.tenant_id.to_string(),
                s.period_start.to_string(),
                s.period_end.to_string(),
                s.plan_code,
                s.currency,
                s.quota_units,
                s.used_units,
                s.overage_units,
                s.base_amount_micros,
                s.overage_amount_micros,
                s.total_amount_micros,
                timestamp(s.created_at),
                s.granted_units,
                s.overage_unit_price_micros,
                s.adjustment_amount_micros,
                s.starts_at.map(timestamp),
                s.ends_at.map(timestamp)
            ],
        )
        .map_err(classify)?;
    if inserted == 1 {
        for a in adjustments {
            tx.prepare_cached(
                "INSERT INTO statement_adjustments (id, statement_id, adjusts_statement_id, used_units_delta,
                     overage_units_delta, amount_micros, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )
            .map_err(classify)?
            .execute(params![
                a.id.to_string(),
                a.statement_id.to_string(),
                a.adjusts_statement_id.to_string(),
                a.used_units_delta,
                a.overage_units_delta,
                a.amount_micros,
                timestamp(a.created_at)
            ])
            .map_err(classify)?;
        }
        insert_outbox(tx, event)?;
    }
    Ok(inserted == 1)
}

const STATEMENT_COLUMNS: &str = "id, tenant_id, period_start, period_end, plan_code, currency, quota_units, used_units, \
    overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at, granted_units, \
    overage_unit_price_micros, adjustment_amount_micros, starts_at, ends_at";

fn statement_from(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<BillingStatement, StoreError>> {
    let (id, tenant, start, end, created): (String, String, String, String, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(12)?);
    let (plan_code, currency) = (r.get(4)?, r.get(5)?);
    let numbers: (i64, i64, i64, i64, i64, i64) = (r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?);
    let granted_units: i64 = r.get(13)?;
    let (overage_unit_price_micros, adjustment_amount_micros): (Option<i64>, i64) = (r.get(14)?, r.get(15)?);
    let (starts_at, ends_at): (Option<String>, Option<String>) = (r.get(16)?, r.get(17)?);
    Ok((|| {
        Ok(BillingStatement {
            id: parse_uuid(&id)?,
            tenant_id: parse_uuid(&tenant)?,
            period_start: parse_date(&start)?,
            period_end: parse_date(&end)?,
            plan_code,
            currency,
            quota_units: numbers.0,
            used_units: numbers.1,
            overage_units: numbers.2,
            base_amount_micros: numbers.3,
            overage_amount_micros: numbers.4,
            total_amount_micros: numbers.5,
            created_at: parse_timestamp(&created)?,
            granted_units,
            overage_unit_price_micros,
            adjustment_amount_micros,
            starts_at: starts_at.as_deref().map(parse_timestamp).transpose()?,
            ends_at: ends_at.as_deref().map(parse_timestamp).transpose()?,
        })
    })())
}

pub(super) fn list_statements(conn: &Connection, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError> {
    let sql = format!(
        "SELECT {STATEMENT_COLUMNS} FROM billing_statements WHERE tenant_id = ?1 ORDER BY period_start DESC LIMIT 1000"
    );
    super::query_all(conn, &sql, [tenant_id.to_string()], statement_from)
}

pub(super) fn get_statement(
    conn: &Connection,
    tenant_id: Uuid,
    period_start: NaiveDate,
) -> Result<Option<BillingStatement>, StoreError> {
    let sql = format!("SELECT {STATEMENT_COLUMNS} FROM billing_statements WHERE tenant_id = ?1 AND period_start = ?2");
    super::query_one(conn, &sql, params![tenant_id.to_string(), period_start.to_string()], statement_from)
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn rollup_state(&self) -> Result<RollupState, StoreError> {
        self.read(rollup_state).await
    }

    async fn rollup_step(&self, step: &RollupStep) -> Result<RollupProgress, StoreError> {
        let step = step.clone();
        self.write(move |tx| rollup_step(tx, &step)).await
    }

    async fn rollup_rerun_hour(&self, hour: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |tx| rollup_rerun_hour(tx, hour, now)).await
    }

    async fn purge_usage_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.write(move |tx| purge(tx, before, limit)).await
    }

    async fn set_rollup_lagging(
        &self,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        event: Option<&OutboxMessage>,
    ) -> Result<bool, StoreError> {
        let event = event.cloned();
        self.write(move |tx| set_lagging(tx, since, now, event.as_ref())).await
    }

    async fn usage_rollups(
        &self,
        tenant_id: Uuid,
        granularity: RollupGranularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRollup>, StoreError> {
        self.read(move |conn| usage_rollups(conn, tenant_id, granularity, from, to)).await
    }

    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let query = query.clone();
        self.read(move |conn| usage_report(conn, &query)).await
    }

    async fn tenants_without_statement(
        &self,
        month: NaiveDate,
        month_end: NaiveDate,
        created_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Tenant>, StoreError> {
        self.read(move |conn| tenants_without_statement(conn, month, month_end, created_before, after, limit)).await
    }

    async fn unbilled_usage(&self, tenant_id: Uuid, before: NaiveDate) -> Result<Vec<UnbilledUsage>, StoreError> {
        self.read(move |conn| unbilled_usage(conn, tenant_id, before)).await
    }

    async fn insert_billing_statement(
        &self,
        statement: &BillingStatement,
        adjustments: &[StatementAdjustment],
        event: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        let (statement, adjustments, event) = (statement.clone(), adjustments.to_vec(), event.clone());
        self.write(move |tx| insert_statement(tx, &statement, &adjustments, &event)).await
    }

    async fn statement_adjustments(
        &self,
        tenant_id: Uuid,
        statement_id: Uuid,
    ) -> Result<Vec<StatementAdjustment>, StoreError> {
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT a.id, a.statement_id, a.adjusts_statement_id, o.period_start, a.used_units_delta,
                     a.overage_units_delta, a.amount_micros, a.created_at
                 FROM statement_adjustments a
                 JOIN billing_statements s ON s.id = a.statement_id
                 JOIN billing_statements o ON o.id = a.adjusts_statement_id
                 WHERE s.tenant_id = ?1 AND a.statement_id = ?2
                 ORDER BY o.period_start",
                params![tenant_id.to_string(), statement_id.to_string()],
                |r| {
                    let (id, statement, adjusts, period): (String, String, String, String) =
                        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
                    let (used, overage, amount, created): (i64, i64, i64, String) =
                        (r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?);
                    Ok((|| {
                        Ok(StatementAdjustment {
                            id: parse_uuid(&id)?,
                            statement_id: parse_uuid(&statement)?,
                            adjusts_statement_id: parse_uuid(&adjusts)?,
                            adjusts_period_start: parse_date(&period)?,
                            used_units_delta: used,
                            overage_units_delta: overage,
                            amount_micros: amount,
                            created_at: parse_timestamp(&created)?,
                        })
                    })())
                },
            )
        })
        .await
    }

    async fn set_closed_through(&self, period_start: NaiveDate, now: DateTime<Utc>) -> Result<(), StoreError> {
        let position: i64 = period_start.format("%Y%m%d").to_string().parse().expect("digits");
        self.write(move |tx| write_position(tx, ROLLUP_CLOSED_THROUGH, position, now)).await
    }

    async fn list_billing_statements(&self, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError> {
        self.read(move |conn| list_statements(conn, tenant_id)).await
    }

    async fn get_billing_statement(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
    ) -> Result<Option<BillingStatement>, StoreError> {
        self.read(move |conn| get_statement(conn, tenant_id, period_start)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_histogram_sql_names_every_bound_in_order() {
        let mut events = histogram_of_events!();
        for bound in LATENCY_BOUNDS_MICROS {
            let at = events.find(&format!("e.latency_micros < {bound})")).expect("every bound, in order");
            events = &events[at + 1..];
        }
        let rollups = histogram_of_rollups!();
        for k in 0..LATENCY_BOUNDS_MICROS.len() {
            assert!(rollups.contains(&format!("'$[{k}]'")));
        }
        assert!(!rollups.contains(&format!("'$[{}]'", LATENCY_BOUNDS_MICROS.len())));
    }
}
