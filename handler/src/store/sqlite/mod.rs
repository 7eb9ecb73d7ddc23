//! The embedded store: one SQLite file in WAL mode, a single writer connection and a small pool of readers.
//!
//! rusqlite is blocking: lookups by key run on the calling thread (cheaper than a hand-off), everything that
//! scans runs on tokio's blocking pool, a bounded number at once. Writes go to one writer thread that owns the
//! write connection (SQLite allows one writer at a time anyway) and commits concurrent writes together
//! ([`writer`]: group commit, one savepoint per write). Its transactions use `BEGIN IMMEDIATE`, so two
//! handler processes on one file queue on the file lock instead of failing half-way. With `synchronous=NORMAL`
//! in WAL mode a committed transaction survives a killed process (SIGKILL); only an OS crash can lose the tail.
//! WAL checkpoints run on their own thread ([`checkpoint`]); the full-text index is merged into one segment
//! when document writes pause ([`search_upkeep`]).

mod checkpoint;
mod search_upkeep;
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
use super::{DocumentStore, JobRun, OperationsStore, PlanStore, StoreError, TenantStore, Update};
use super::{audit::*, documents::*, metering::*, operations::*, plans::*, tenants::*};
use writer::{Bounds, FileIdentity, Writer};

mod integration;
/// Store-internal helpers that write outbox events inside an open write transaction.
#[allow(unused_imports)]
pub(crate) use integration::{emit_quota_thresholds, insert_outbox};

mod client_quota;
mod documents;
mod grants;
mod leases;
mod operations;
mod plans;
mod search_plan;
mod tenants;
mod usage;

mod audit;
mod metering;
/// Write helpers other aggregates call inside their own write transactions.
#[allow(unused_imports)]
pub(crate) use audit::append_audit;
#[allow(unused_imports)]
pub(crate) use metering::{debit_period, insert_usage_event, read_quota, take_rate, write_ledger};

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
    /// The file opened at `path`: readiness and every write batch check the path still names it.
    file: FileIdentity,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    /// Bounds the reads on the blocking pool to `max_readers`, which is also how many readers stay open.
    scans: tokio::sync::Semaphore,
    max_readers: usize,
    /// Stamps the migration history (`applied_at`).
    clock: Arc<dyn crate::clock::Clock>,
    /// Every write passes it: opened by failed batches (a file lock held elsewhere past the busy timeout, a
    /// full disk, writes that waited too long to start), it refuses writes at once while open.
    breaker: Arc<crate::resilience::Breaker>,
    /// The plans of recent searches ([`search_plan::PlanCache`]).
    plans: search_plan::PlanCache,
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

    /// [`Self::open`] with the clock that stamps the migration history and times the search index's upkeep
    /// (tests inject a fixed one).
    pub async fn open_with_clock(path: &Path, clock: Arc<dyn crate::clock::Clock>) -> Result<Self, StoreError> {
        let store = Self::open_unattended(path, clock).await?;
        search_upkeep::spawn(&store.inner);
        Ok(store)
    }

    /// [`Self::open_with_clock`] without the task that compacts the search index: for tests that drive it.
    async fn open_unattended(path: &Path, clock: Arc<dyn crate::clock::Clock>) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(anyhow::Error::new(e).context(format!("creating {}", dir.display())))
                })?;
            }
            if path.is_dir() {
                return Err(StoreError::Unusable {
                    setting: "METERLINE_SQLITE_PATH",
                    reason: format!("{} is a folder, not a database file", path.display()),
                });
            }
            let mut writer = connect(&path)?;
            // Before anything is written (switching to WAL rewrites the header): another application's file is
            // left as it is.
            let foreign = operations::foreign_tables(&writer)?;
            if !foreign.is_empty() {
                return Err(StoreError::Unusable {
                    setting: "METERLINE_SQLITE_PATH",
                    reason: format!(
                        "{} is not a Meterline database: it has tables ({}) and no migration history; name a new file \
                         or a Meterline database",
                        path.display(),
                        foreign.join(", ")
                    ),
                });
            }
            writer.pragma_update(None, "journal_mode", "WAL").map_err(classify)?;
            checkpoint::install(&mut writer, &path, checkpoint::Thresholds::DEFAULT)?;
            let file = FileIdentity::of(&path);
            let writer = Writer::start(writer, file.clone(), Bounds::DEFAULT)?;
            let max_readers = max_readers();
            Ok(SqliteStore {
                inner: Arc::new(Inner {
                    path,
                    file,
                    writer,
                    readers: Mutex::new(Vec::new()),
                    scans: tokio::sync::Semaphore::new(max_readers),
                    max_readers,
                    breaker: crate::resilience::Breaker::new(
                        "store",
                        crate::resilience::BreakerPolicy::DEFAULT,
                        clock.clone(),
                    ),
                    clock,
                    plans: search_plan::PlanCache::default(),
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
    /// If `f` fails, its changes are rolled back and nothing else is affected. Refused at once, without
    /// running, when the writer's queue is full or the store's breaker is open (a [`crate::resilience::Refusal`]).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_on(f, false).await
    }

    /// Runs `f` in one IMMEDIATE transaction on a connection of its own, outside the writer, waiting up to
    /// `lock_wait` for another connection's write lock: for a migration, which at startup may wait for another
    /// process migrating the same file, longer than the writer lets a request's write wait.
    async fn write_alone<T, F>(&self, lock_wait: Duration, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let path = self.inner.path.clone();
        tokio::task::spawn_blocking(move || {
            let conn = connect(&path)?;
            let locked = |e: &rusqlite::Error| {
                matches!(e.sqlite_error_code(), Some(SqliteCode::DatabaseBusy | SqliteCode::DatabaseLocked))
            };
            conn.busy_timeout(Duration::ZERO).map_err(classify)?;
            if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
                if !locked(&e) {
                    return Err(classify(e));
                }
                tracing::info!(path = %path.display(), wait_seconds = lock_wait.as_secs(), "the SQLite store is locked by another connection; waiting for it");
                conn.busy_timeout(lock_wait).map_err(classify)?;
                conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| match locked(&e) {
                    true => StoreError::Unavailable(anyhow::anyhow!(
                        "{} stayed locked by another connection for {} s",
                        path.display(),
                        lock_wait.as_secs()
                    )),
                    false => classify(e),
                })?;
            }
            let result = f(&conn).and_then(|value| conn.execute_batch("COMMIT").map(|()| value).map_err(classify));
            if result.is_err() && !conn.is_autocommit() {
                let _ = conn.execute_batch("ROLLBACK");
            }
            result
        })
        .await
        .map_err(|e| StoreError::Other(e.into()))?
    }

    /// [`Self::write`] for a short write on every request's path (a usage batch), which the calling thread
    /// commits itself when no batch is committing ([`writer::Writer::write_here`]).
    async fn write_here<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.write_on(f, true).await
    }

    async fn write_on<T, F>(&self, f: F, here: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        // A full queue is our own back-pressure, not a failure of the store: refused before the breaker counts.
        if self.inner.writer.is_full() {
            return Err(StoreError::Unavailable(anyhow::Error::new(crate::resilience::Refusal::overloaded("store"))));
        }
        let attempt = self.inner.breaker.admit().map_err(|r| StoreError::Unavailable(anyhow::Error::new(r)))?;
        let result = if here { self.inner.writer.write_here(f).await } else { self.inner.writer.write(f).await };
        attempt.finish(!matches!(result, Err(StoreError::Unavailable(_))));
        result
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(anyhow::Error::new(e).context(format!("opening {}", path.display()))))?;
    // The first statements that read the file: where a file that is not a database is found.
    let classify = |e: rusqlite::Error| match e.sqlite_error_code() {
        Some(SqliteCode::NotADatabase) => StoreError::Unusable {
            setting: "METERLINE_SQLITE_PATH",
            reason: format!("{} is not a SQLite database ({e})", path.display()),
        },
        _ => classify(e),
    };
    conn.busy_timeout(BUSY_TIMEOUT).map_err(classify)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(classify)?;
    // The request path's statements stay prepared (the dynamic listings take a few slots more).
    conn.set_prepared_statement_cache_capacity(64);
    // The query planner's stability guarantee: a plan never depends on a bound value. Without it SQLite marked
    // the search statements to be prepared again whenever a parameter was bound to a new value, so every search
    // (a new `MATCH` string each time) re-parsed and re-planned its statement: 40 % of the search's time on the
    // blocking pool (BENCHMARKS.md, "Prepared once"). No plan here relies on a bound value: partial indexes are
    // chosen from `IS NOT NULL` terms, no `LIKE` pattern is bound, and SQLite has no STAT4 statistics here.
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG, true).map_err(classify)?;
    Ok(conn)
}

/// Sorts SQLite failures into the store's error classes.
fn classify(err: rusqlite::Error) -> StoreError {
    match err.sqlite_error_code() {
        Some(
            SqliteCode::DatabaseBusy
            | SqliteCode::DatabaseLocked
            | SqliteCode::CannotOpen
            | SqliteCode::SystemIoFailure
            // A file or folder made read-only under a running process: every write fails until it is fixed, so the
            // calls answer 503 and the breaker opens (readiness then takes the instance out), rather than 500.
            | SqliteCode::ReadOnly
            | SqliteCode::DiskFull,
        ) => StoreError::Unavailable(err.into()),
        Some(SqliteCode::ConstraintViolation) => match &err {
            rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY => {
                StoreError::ForeignKey(err.to_string())
            }
            // A CHECK that fails is a bug of ours (a value the code should have refused), not a duplicate key.
            rusqlite::Error::SqliteFailure(e, _) if e.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_CHECK => {
                StoreError::Other(err.into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_that_cannot_be_written_is_unavailable_not_a_bug() {
        for code in [rusqlite::ffi::SQLITE_READONLY, rusqlite::ffi::SQLITE_FULL, rusqlite::ffi::SQLITE_BUSY] {
            let err = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(code), None);
            assert!(matches!(classify(err), StoreError::Unavailable(_)), "code {code}");
        }
        let bug = rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_ERROR), None);
        assert!(matches!(classify(bug), StoreError::Other(_)));
        let check =
            rusqlite::Error::SqliteFailure(rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_CHECK), None);
        assert!(matches!(classify(check), StoreError::Other(_)), "a failed CHECK is no conflict");
    }
}
