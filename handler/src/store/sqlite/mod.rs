//! The embedded store: one SQLite file in WAL mode, a single writer connection and a small pool of readers.
//!
//! rusqlite is blocking: lookups by key run on the calling thread (cheaper than a hand-off), everything that
//! scans runs on tokio's blocking pool, a bounded number at once. Writes go to one writer thread that owns the
//! write connection (SQLite allows one writer at a time anyway) and commits concurrent writes together
//! ([`writer`]: group commit, one savepoint per write). Its transactions use `BEGIN IMMEDIATE`, so two
//! handler processes on one file queue on the file lock instead of failing half-way. With `synchronous=NORMAL`
//! in WAL mode a committed transaction survives a killed process (SIGKILL); only an OS crash can lose the tail.
//! WAL checkpoints run on their own thread ([`checkpoint`]).

mod checkpoint;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode as SqliteCode, OpenFlags, OptionalExtension, params, params_from_iter};
use uuid::Uuid;

use super::migrations::{self, AppliedMigration, MigrationReport};
use super::model::*;
use super::usage::*;
use super::{
    AuditStore, DocumentStore, IntegrationStore, JobRun, MeteringStore, OperationsStore, PlanStore, StoreError,
    TenantStore, Update, UsageStore,
};
use super::{documents::*, operations::*, plans::*, tenants::*};
use writer::Writer;

mod integration;
/// Store-internal helpers that write outbox events inside an open write transaction.
#[allow(unused_imports)]
pub(crate) use integration::{emit_quota_thresholds, insert_outbox};

mod documents;
mod operations;
mod plans;
mod tenants;
mod usage;
use tenants::{TENANT_COLUMNS, tenant_from_row};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections kept open, and the most reads that run on the blocking pool at once: two per core, at
/// least 4. More scans than that only contend for the cores, and each extra one would open a connection and
/// take a thread (on 2 cores, 16 concurrent searches peaked at 80 MiB unbounded, 36 MiB with 4; BENCHMARKS.md).
fn max_readers() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4))
}
/// Each reader's page cache, in KiB (SQLite's default is 2 000). A commit by the writer empties the caches
/// of the other connections in WAL mode anyway, so under writes a larger cache holds little worth keeping;
/// scans read through the OS's file cache.
const READER_CACHE_KIB: i64 = 512;

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    /// Bounds the reads on the blocking pool to `max_readers`, which is also how many readers stay open.
    scans: tokio::sync::Semaphore,
    max_readers: usize,
    /// Stamps the migration history (`applied_at`).
    clock: Arc<dyn crate::clock::Clock>,
}

impl Inner {
    /// Runs `f` with a pooled reader connection (a new one when none is idle), then returns it to the pool.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().expect("reader pool lock").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = connect(&self.path)?;
                conn.pragma_update(None, "cache_size", -READER_CACHE_KIB).map_err(classify)?;
                conn
            }
        };
        let result = f(&conn);
        let mut readers = self.readers.lock().expect("reader pool lock");
        if readers.len() < self.max_readers {
            readers.push(conn);
        }
        result
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its folder.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with_clock(path, Arc::new(crate::clock::SystemClock)).await
    }

    /// [`Self::open`] with the clock that stamps the migration history (tests inject a fixed one).
    pub async fn open_with_clock(path: &Path, clock: Arc<dyn crate::clock::Clock>) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(anyhow::Error::new(e).context(format!("creating {}", dir.display())))
                })?;
            }
            let mut writer = connect(&path)?;
            writer.pragma_update(None, "journal_mode", "WAL").map_err(classify)?;
            checkpoint::install(&mut writer, &path, checkpoint::Thresholds::DEFAULT)?;
            let writer = Writer::start(writer)?;
            let max_readers = max_readers();
            Ok(SqliteStore {
                inner: Arc::new(Inner {
                    path,
                    writer,
                    readers: Mutex::new(Vec::new()),
                    scans: tokio::sync::Semaphore::new(max_readers),
                    max_readers,
                    clock,
                }),
            })
        })
        .await
        .map_err(|e| StoreError::Other(e.into()))?
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let _permit = self.inner.scans.acquire().await.expect("the read semaphore is never closed");
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f)).await.map_err(|e| StoreError::Other(e.into()))?
    }

    /// Runs `f`, a lookup by key (a few pages, a few microseconds), on the calling thread with a reader
    /// connection. Handing such a read to the blocking pool and back costs more than the read itself (two
    /// thread wake-ups; BENCHMARKS.md). Anything that scans (listings, search, reports) uses [`Self::read`],
    /// so an async worker thread is never held for longer than a point lookup.
    fn read_point<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.with_reader(f)
    }

    /// Runs `f` as one write of the next group commit (see [`writer`]); returns once it is committed.
    /// If `f` fails, its changes are rolled back and nothing else is affected.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(anyhow::Error::new(e).context(format!("opening {}", path.display()))))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(classify)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(classify)?;
    // The request path's statements stay prepared (the dynamic listings take a few slots more).
    conn.set_prepared_statement_cache_capacity(64);
    Ok(conn)
}

/// Sorts SQLite failures into the store's error classes.
fn classify(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(
            SqliteCode::DatabaseBusy
            | SqliteCode::DatabaseLocked
            | SqliteCode::CannotOpen
            | SqliteCode::SystemIoFailure,
        ) => StoreError::Unavailable(err.into()),
        Some(SqliteCode::ConstraintViolation) => match &err {
            rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                StoreError::ForeignKey(err.to_string())
            }
            _ => StoreError::Conflict(err.to_string()),
        },
        _ => StoreError::Other(err.into()),
    }
}

fn timestamp(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn parse_timestamp(raw: &str) -> Result<DateTime<Utc>, StoreError> {
    DateTime::parse_from_rfc3339(raw)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| StoreError::Other(anyhow::anyhow!("bad timestamp {raw:?} in the database: {e}")))
}

fn parse_uuid(raw: &str) -> Result<Uuid, StoreError> {
    raw.parse().map_err(|e| StoreError::Other(anyhow::anyhow!("bad uuid {raw:?} in the database: {e}")))
}

fn parse_date(raw: &str) -> Result<NaiveDate, StoreError> {
    NaiveDate::parse_from_str(raw, "%Y-%m-%d")
        .map_err(|e| StoreError::Other(anyhow::anyhow!("bad date {raw:?} in the database: {e}")))
}

fn corrupt(what: &str, raw: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("bad {what} {raw:?} in the database"))
}

fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> Result<Option<T>, StoreError> {
    conn.prepare_cached(sql).map_err(classify)?.query_row(params, map).optional().map_err(classify)?.transpose()
}

fn query_all<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = conn.prepare_cached(sql).map_err(classify)?;
    let rows = stmt.query_map(params, map).map_err(classify)?;
    rows.map(|row| row.map_err(classify)?).collect()
}

fn read_quota(conn: &Connection, tenant_id: Uuid, period_start: NaiveDate) -> Result<Option<QuotaUsage>, StoreError> {
    let sql = "SELECT tenant_id, period_start, period_end, quota_units, overage_policy, units_used, overage_units
               FROM quota_usage WHERE tenant_id = ?1 AND period_start = ?2";
    query_one(conn, sql, params![tenant_id.to_string(), period_start.to_string()], |r| {
        let (tenant, start, end, policy): (String, String, String, String) =
            (r.get(0)?, r.get(1)?, r.get(2)?, r.get(4)?);
        let (quota, used, overage): (i64, i64, i64) = (r.get(3)?, r.get(5)?, r.get(6)?);
        Ok((|| {
            Ok(QuotaUsage {
                tenant_id: parse_uuid(&tenant)?,
                period_start: parse_date(&start)?,
                period_end: parse_date(&end)?,
                quota_units: quota,
                overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
                units_used: used,
                overage_units: overage,
            })
        })())
    })
}

const AUDIT_COLUMNS: &str = "id, chain, chain_seq, tenant_id, occurred_at, actor_oid, actor_app_id, actor_tenant_id, \
    action, resource_type, resource_id, outcome, request_id, summary, before_hash, after_hash, limiter_decision, \
    prev_hash, hash";

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditEvent, StoreError>> {
    let (id, chain, chain_seq, tenant, occurred): (String, String, i64, Option<String>, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (actor_oid, actor_app_id, actor_tenant_id): (Option<String>, Option<String>, Option<String>) =
        (r.get(5)?, r.get(6)?, r.get(7)?);
    let (action, resource_type, resource_id, outcome): (String, String, Option<String>, String) =
        (r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?);
    let (request_id, summary, before_hash, after_hash): (Option<String>, String, Option<String>, Option<String>) =
        (r.get(12)?, r.get(13)?, r.get(14)?, r.get(15)?);
    let (limiter_decision, prev_hash, hash): (Option<String>, String, String) = (r.get(16)?, r.get(17)?, r.get(18)?);
    Ok((|| {
        Ok(AuditEvent {
            id: parse_uuid(&id)?,
            chain,
            chain_seq,
            tenant_id: tenant.as_deref().map(parse_uuid).transpose()?,
            occurred_at: parse_timestamp(&occurred)?,
            actor_oid,
            actor_app_id,
            actor_tenant_id,
            action,
            resource_type,
            resource_id,
            outcome: AuditOutcome::parse(&outcome).ok_or_else(|| corrupt("audit outcome", &outcome))?,
            request_id,
            summary,
            before_hash,
            after_hash,
            limiter_decision,
            prev_hash,
            hash,
        })
    })())
}

/// Appends audit events to their chains inside the caller's write transaction. The writer is the only
/// writer (`BEGIN IMMEDIATE` also holds off other processes), so the head read here is still the head at
/// commit. Events whose id is stored already are skipped (a retried batch).
fn append_audit(tx: &Connection, events: &[AuditEventInput]) -> Result<(), StoreError> {
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    for input in events {
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM audit_events WHERE id = ?1", [input.id.to_string()], |r| r.get(0))
            .optional()
            .map_err(classify)?;
        if exists.is_some() {
            continue;
        }
        let chain = audit_chain_key(input.tenant_id);
        let (seq, prev) = match heads.get(&chain) {
            Some(head) => head.clone(),
            None => tx
                .query_row(
                    "SELECT chain_seq, hash FROM audit_events WHERE chain = ?1 ORDER BY chain_seq DESC LIMIT 1",
                    [&chain],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(classify)?
                .unwrap_or((0, AUDIT_GENESIS_HASH.to_owned())),
        };
        let e = input.seal(seq + 1, &prev);
        tx.prepare_cached(
            "INSERT INTO audit_events (id, chain, chain_seq, tenant_id, occurred_at, actor_oid, actor_app_id,
                 actor_tenant_id, action, resource_type, resource_id, outcome, request_id, summary, before_hash,
                 after_hash, limiter_decision, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )
        .map_err(classify)?
        .execute(params![
            e.id.to_string(),
            e.chain,
            e.chain_seq,
            e.tenant_id.map(|t| t.to_string()),
            timestamp(e.occurred_at),
            e.actor_oid,
            e.actor_app_id,
            e.actor_tenant_id,
            e.action,
            e.resource_type,
            e.resource_id,
            e.outcome.as_str(),
            e.request_id,
            e.summary,
            e.before_hash,
            e.after_hash,
            e.limiter_decision,
            e.prev_hash,
            e.hash
        ])
        .map_err(classify)?;
        heads.insert(chain, (e.chain_seq, e.hash));
    }
    Ok(())
}

/// Debits a quota period (created on first use), refusing under `block` what would exceed the quota.
fn debit_period(conn: &Connection, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    let (tenant, start) = (d.tenant_id.to_string(), d.period_start.to_string());
    conn.prepare_cached(
        "INSERT INTO quota_usage (tenant_id, period_start, period_end, quota_units, overage_policy, updated_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tenant_id, period_start) DO NOTHING",
    )
    .map_err(classify)?
    .execute(params![
        tenant,
        start,
        d.period_end.to_string(),
        d.quota_units,
        d.overage_policy.as_str(),
        timestamp(d.now)
    ])
    .map_err(classify)?;
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
            if crosses_threshold(units_used - d.units, units_used, quota_units) {
                integration::emit_quota_thresholds(conn, d.tenant_id, d.period_start, d.now)?;
            }
            QuotaOutcome::Accepted { units_used, quota_units, overage_units }
        }
        None => {
            let current = read_quota(conn, d.tenant_id, d.period_start)?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("quota row vanished inside its transaction")))?;
            QuotaOutcome::Rejected { units_used: current.units_used, quota_units: current.quota_units }
        }
    })
}

/// One GCRA step for (tenant, client); the state is written only when the request is allowed.
fn take_rate(conn: &Connection, t: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
    let (tenant, client) = (t.tenant_id.to_string(), t.client_id.clone());
    let stored: Option<i64> = conn
        .prepare_cached("SELECT tat_micros FROM rate_limit_state WHERE tenant_id = ?1 AND client_id = ?2")
        .map_err(classify)?
        .query_row(params![tenant, client], |r| r.get(0))
        .optional()
        .map_err(classify)?;
    let decision = gcra(stored, t);
    if decision.allowed {
        conn.prepare_cached(
            "INSERT INTO rate_limit_state (tenant_id, client_id, tat_micros) VALUES (?1, ?2, ?3)
             ON CONFLICT (tenant_id, client_id) DO UPDATE SET tat_micros = excluded.tat_micros",
        )
        .map_err(classify)?
        .execute(params![tenant, client, decision.tat_micros])
        .map_err(classify)?;
    }
    Ok(decision)
}

/// Writes a request's [`Ledger`] in the transaction of the write that carried the request out.
fn write_ledger(tx: &Connection, ledger: Option<&Ledger>) -> Result<(), StoreError> {
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
             response_bytes, occurred_at, recorded_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
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
        timestamp(e.recorded_at)
    ])
    .map_err(classify)
}

#[async_trait]
impl MeteringStore for SqliteStore {
    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
        let d = debit.clone();
        self.write(move |conn| debit_period(conn, &d)).await
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

    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
        let t = take.clone();
        self.write(move |conn| take_rate(conn, &t)).await
    }

    async fn admit(&self, admission: &Admission) -> Result<AdmissionDecision, StoreError> {
        let a = admission.clone();
        self.write(move |conn| {
            let rate = take_rate(conn, &a.rate)?;
            let debit = match &a.debit {
                Some(d) if rate.allowed => Some(debit_period(conn, d)?),
                _ => None,
            };
            Ok(AdmissionDecision { rate, debit })
        })
        .await
    }

    async fn record_usage(&self, usage: &[UsageEvent], audit: &[AuditEventInput]) -> Result<u64, StoreError> {
        let (events, audit) = (usage.to_vec(), audit.to_vec());
        self.write(move |tx| {
            let mut inserted = 0;
            for e in &events {
                inserted += insert_usage_event(tx, e)? as u64;
            }
            append_audit(tx, &audit)?;
            Ok(inserted)
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

#[async_trait]
impl AuditStore for SqliteStore {
    async fn list_audit_events(
        &self,
        tenant_id: Option<Uuid>,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Page<AuditEvent, AuditCursor>, StoreError> {
        let limit = limit.max(1);
        let mut a = Assembled { sql: format!("SELECT {AUDIT_COLUMNS} FROM audit_events"), values: Vec::new() };
        match tenant_id {
            Some(id) => {
                let p = a.bind(id.to_string());
                a.sql.push_str(&format!(" WHERE tenant_id = {p}"));
            }
            None => a.sql.push_str(" WHERE tenant_id IS NULL"),
        }
        if let Some(actor) = &filter.actor {
            let p = a.bind(actor.clone());
            a.sql.push_str(&format!(" AND (actor_oid = {p} OR actor_app_id = {p})"));
        }
        for (column, value) in
            [("action", &filter.action), ("resource_type", &filter.resource_type), ("resource_id", &filter.resource_id)]
        {
            if let Some(value) = value {
                let p = a.bind(value.clone());
                a.sql.push_str(&format!(" AND {column} = {p}"));
            }
        }
        if let Some(outcome) = filter.outcome {
            let p = a.bind(outcome.as_str().to_owned());
            a.sql.push_str(&format!(" AND outcome = {p}"));
        }
        if let Some(from) = filter.from {
            let p = a.bind(timestamp(ceil_micros(from)));
            a.sql.push_str(&format!(" AND occurred_at >= {p}"));
        }
        if let Some(to) = filter.to {
            let p = a.bind(timestamp(ceil_micros(to)));
            a.sql.push_str(&format!(" AND occurred_at < {p}"));
        }
        if let Some(cursor) = after {
            let (t, id) = (a.bind(timestamp(cursor.occurred_at)), a.bind(cursor.id.to_string()));
            a.sql.push_str(&format!(" AND occurred_at <= {t} AND (occurred_at < {t} OR id < {id})"));
        }
        let fetch = a.bind(i64::from(limit) + 1);
        a.sql.push_str(&format!(" ORDER BY occurred_at DESC, id DESC LIMIT {fetch}"));
        self.read(move |conn| {
            let mut items = query_all(conn, &a.sql, params_from_iter(a.values), audit_from_row)?;
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|e| AuditCursor { occurred_at: e.occurred_at, id: e.id })
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let chain = chain.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE chain = ?1 AND chain_seq > ?2 ORDER BY chain_seq LIMIT ?3"
            );
            query_all(conn, &sql, params![chain, after_seq, i64::from(limit.max(1))], audit_from_row)
        })
        .await
    }
}

#[async_trait]
impl IntegrationStore for SqliteStore {
    async fn apply_integration_event(
        &self,
        inbox: &InboxEntry,
        effect: &IntegrationEffect,
    ) -> Result<ApplyOutcome, StoreError> {
        integration::apply(self, inbox, effect).await
    }

    async fn quarantine_message(&self, message: &QuarantinedMessage) -> Result<(), StoreError> {
        integration::quarantine(self, message).await
    }

    async fn list_quarantine(&self, limit: u32) -> Result<Vec<QuarantinedMessage>, StoreError> {
        integration::list_quarantine(self, limit).await
    }

    async fn get_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedMessage>, StoreError> {
        integration::get_quarantined(self, id).await
    }

    async fn mark_quarantine_replayed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        integration::mark_replayed(self, id, now).await
    }

    async fn pending_outbox(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        integration::pending_outbox(self, now, limit).await
    }

    async fn mark_outbox_sent(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        integration::mark_sent(self, id, now).await
    }

    async fn mark_outbox_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        integration::mark_failed(self, id, error, next_attempt_at).await
    }

    async fn list_outbox(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        integration::list_outbox(self, after_seq, limit).await
    }
}

#[async_trait]
impl UsageStore for SqliteStore {
    async fn rollup_state(&self) -> Result<RollupState, StoreError> {
        self.read(usage::rollup_state).await
    }

    async fn rollup_step(&self, step: &RollupStep) -> Result<RollupProgress, StoreError> {
        let step = step.clone();
        self.write(move |tx| usage::rollup_step(tx, &step)).await
    }

    async fn rollup_rerun_hour(&self, hour: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError> {
        self.write(move |tx| usage::rollup_rerun_hour(tx, hour, now)).await
    }

    async fn purge_usage_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        self.write(move |tx| usage::purge(tx, before, limit)).await
    }

    async fn set_rollup_lagging(
        &self,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        event: Option<&OutboxMessage>,
    ) -> Result<bool, StoreError> {
        let event = event.cloned();
        self.write(move |tx| usage::set_lagging(tx, since, now, event.as_ref())).await
    }

    async fn usage_rollups(
        &self,
        tenant_id: Uuid,
        granularity: RollupGranularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRollup>, StoreError> {
        self.read(move |conn| usage::usage_rollups(conn, tenant_id, granularity, from, to)).await
    }

    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        let query = query.clone();
        self.read(move |conn| usage::usage_report(conn, &query)).await
    }

    async fn statement_drafts(
        &self,
        period_start: NaiveDate,
        period_end: NaiveDate,
        limit: u32,
    ) -> Result<Vec<StatementDraft>, StoreError> {
        self.read(move |conn| usage::statement_drafts(conn, period_start, period_end, limit)).await
    }

    async fn insert_billing_statement(
        &self,
        statement: &BillingStatement,
        event: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        let (statement, event) = (statement.clone(), event.clone());
        self.write(move |tx| usage::insert_statement(tx, &statement, &event)).await
    }

    async fn set_closed_through(&self, period_start: NaiveDate, now: DateTime<Utc>) -> Result<(), StoreError> {
        let position: i64 = period_start.format("%Y%m%d").to_string().parse().expect("digits");
        self.write(move |tx| usage::write_position(tx, ROLLUP_CLOSED_THROUGH, position, now)).await
    }

    async fn list_billing_statements(&self, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError> {
        self.read(move |conn| usage::list_statements(conn, tenant_id)).await
    }

    async fn get_billing_statement(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
    ) -> Result<Option<BillingStatement>, StoreError> {
        self.read(move |conn| usage::get_statement(conn, tenant_id, period_start)).await
    }
}

/// `LIKE` pattern for "contains `text`", with SQLite's wildcards `%`, `_` and the escape character `\`
/// escaped (used with `ESCAPE '\'`; `[` is not special in SQLite's LIKE).
fn like_contains(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A statement assembled from fixed fragments, with its values bound in placeholder order (`?1` first).
#[derive(Default)]
struct Assembled {
    sql: String,
    values: Vec<Value>,
}

impl Assembled {
    /// Binds a value and returns its placeholder.
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("?{}", self.values.len())
    }
}
