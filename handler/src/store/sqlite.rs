//! The embedded store: one SQLite file in WAL mode, a single writer connection and a small pool of readers.
//!
//! rusqlite is blocking, so every call runs on tokio's blocking pool. Writes are serialized through one
//! connection (SQLite allows one writer at a time anyway) and use `BEGIN IMMEDIATE`, so two handler
//! processes on one file queue on the file lock instead of failing half-way. With `synchronous=NORMAL` in
//! WAL mode a committed transaction survives a killed process (SIGKILL); only an OS crash can lose the tail.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode as SqliteCode, OpenFlags, OptionalExtension, params};

use super::migrations::{self, AppliedMigration, MigrationReport};
use super::{JobRun, Store, StoreError};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_IDLE_READERS: usize = 8;

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Mutex<Connection>,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore").field("path", &self.inner.path).finish()
    }
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and its folder.
    pub async fn open(path: &Path) -> Result<Self, StoreError> {
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || {
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir).map_err(|e| {
                    StoreError::Unavailable(anyhow::Error::new(e).context(format!("creating {}", dir.display())))
                })?;
            }
            let writer = connect(&path)?;
            writer.pragma_update(None, "journal_mode", "WAL").map_err(classify)?;
            Ok(SqliteStore {
                inner: Arc::new(Inner { path, writer: Mutex::new(writer), readers: Mutex::new(Vec::new()) }),
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
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let pooled = inner.readers.lock().expect("reader pool lock").pop();
            let conn = match pooled {
                Some(conn) => conn,
                None => connect(&inner.path)?,
            };
            let result = f(&conn);
            let mut readers = inner.readers.lock().expect("reader pool lock");
            if readers.len() < MAX_IDLE_READERS {
                readers.push(conn);
            }
            result
        })
        .await
        .map_err(|e| StoreError::Other(e.into()))?
    }

    /// Runs `f` inside one `BEGIN IMMEDIATE` transaction on the writer connection; commits if it returns Ok.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || {
            let mut conn = inner.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate).map_err(classify)?;
            let value = f(&tx)?;
            tx.commit().map_err(classify)?;
            Ok(value)
        })
        .await
        .map_err(|e| StoreError::Other(e.into()))?
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(anyhow::Error::new(e).context(format!("opening {}", path.display()))))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(classify)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(classify)?;
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

const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT";

fn read_history(conn: &Connection) -> Result<Vec<AppliedMigration>, StoreError> {
    let exists: Option<i64> = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'", [], |r| r.get(0))
        .optional()
        .map_err(classify)?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
        .map_err(classify)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?)))
        .map_err(classify)?;
    rows.map(|row| {
        let (version, name, checksum, applied_at) = row.map_err(classify)?;
        Ok(AppliedMigration { version, name, checksum, applied_at: parse_timestamp(&applied_at)? })
    })
    .collect()
}

#[async_trait]
impl Store for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(drop).map_err(classify)).await
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let known = migrations::SQLITE;
        migrations::check_order(known).map_err(|e| StoreError::Other(anyhow::anyhow!(e)))?;
        // One IMMEDIATE transaction: a second process migrating at the same time waits, then sees it done.
        self.write(move |tx| {
            tx.execute_batch(CREATE_HISTORY).map_err(classify)?;
            let history = read_history(tx)?;
            let mut report = MigrationReport::default();
            for applied in &history {
                let Some(migration) = known.iter().find(|m| m.version == applied.version) else {
                    return Err(StoreError::UnknownMigration { version: applied.version });
                };
                if migration.checksum() != applied.checksum {
                    return Err(StoreError::MigrationChanged {
                        version: applied.version,
                        name: applied.name.clone(),
                        applied: applied.checksum.clone(),
                        expected: migration.checksum(),
                    });
                }
                report.already_applied.push(applied.version);
            }
            for migration in known.iter().filter(|m| !report.already_applied.contains(&m.version)) {
                tx.execute_batch(migration.sql).map_err(|e| {
                    StoreError::Other(
                        anyhow::Error::new(e).context(format!("applying migration {}", migration.version)),
                    )
                })?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                    params![migration.version, migration.name, migration.checksum(), timestamp(Utc::now())],
                )
                .map_err(classify)?;
                report.applied.push(migration.version);
            }
            Ok(report)
        })
        .await
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.read(read_history).await
    }

    async fn record_job_run(&self, run: &JobRun) -> Result<(), StoreError> {
        let run = run.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO job_runs (id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    run.id.to_string(),
                    run.job,
                    run.trigger,
                    run.is_past_due,
                    timestamp(run.started_at),
                    timestamp(run.finished_at),
                    run.outcome,
                    run.detail
                ],
            )
            .map(drop)
            .map_err(classify)
        })
        .await
    }

    async fn recent_job_runs(&self, job: &str, limit: u32) -> Result<Vec<JobRun>, StoreError> {
        let job = job.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail
                     FROM job_runs WHERE job = ?1 ORDER BY started_at DESC, id DESC LIMIT ?2",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map(params![job, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
                .map_err(classify)?;
            rows.map(|row| {
                let (id, job, trigger, is_past_due, started, finished, outcome, detail) = row.map_err(classify)?;
                Ok(JobRun {
                    id: id.parse().map_err(|e| StoreError::Other(anyhow::anyhow!("bad id {id:?}: {e}")))?,
                    job,
                    trigger,
                    is_past_due,
                    started_at: parse_timestamp(&started)?,
                    finished_at: parse_timestamp(&finished)?,
                    outcome,
                    detail,
                })
            })
            .collect()
        })
        .await
    }
}
