//! The storage contract every store implements, and the stores: embedded SQLite (default) and SQL Server.
//!
//! Handlers and jobs only see `Arc<dyn Store>`. Each implementation must give the same answers and the
//! same concurrency guarantees; `tests/e2e/store_contract.rs` runs one suite against every store.

mod migrations;
mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::config::StoreConfig;

pub use migrations::{AppliedMigration, Migration, MigrationReport, SQLITE as SQLITE_MIGRATIONS};
pub use sqlite::SqliteStore;

/// Why a store operation failed, classified so the API can answer 409 / 503 / 500 on purpose.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store cannot be reached, is busy, timed out, or chose this transaction as a deadlock victim:
    /// transient, so idempotent work may be retried (see `store::mssql::retry`) and clients get 503.
    #[error("store unavailable")]
    Unavailable(#[source] anyhow::Error),
    /// A uniqueness constraint refused the write (SQL Server 2627/2601, SQLite UNIQUE/PRIMARY KEY).
    #[error("conflict: {0}")]
    Conflict(String),
    /// A foreign key refused the write: the referenced row does not exist, or rows still refer to this one.
    #[error("reference violation: {0}")]
    ForeignKey(String),
    /// An applied migration's text differs from the one in this binary.
    #[error(
        "migration {version} ({name}) differs from the one applied to the database (checksum {applied} vs {expected})"
    )]
    MigrationChanged { version: i64, name: String, applied: String, expected: String },
    /// The database has migrations this binary does not know: it is older than the schema.
    #[error("the database has migration {version} which this binary does not know; deploy a newer handler")]
    UnknownMigration { version: i64 },
    #[error(transparent)]
    Other(anyhow::Error),
}

/// One execution of a timer-triggered or hand-started job, as recorded for operators.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRun {
    pub id: uuid::Uuid,
    pub job: String,
    /// `timer`, `cli` or `schedule` (the standalone in-process scheduler).
    pub trigger: String,
    pub is_past_due: bool,
    pub started_at: DateTime<Utc>,
    pub finished_at: DateTime<Utc>,
    /// `succeeded` or `failed`.
    pub outcome: String,
    pub detail: String,
}

/// The storage contract.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Short name of the implementation (`sqlite`, `mssql`), for logs and health output.
    fn kind(&self) -> &'static str;

    /// Succeeds when the store answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Applies pending migrations in order; safe to run twice and from two processes at once.
    async fn migrate(&self) -> Result<MigrationReport, StoreError>;

    /// The migrations recorded in the database's history table, oldest first.
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError>;

    /// Records one job execution.
    async fn record_job_run(&self, run: &JobRun) -> Result<(), StoreError>;

    /// The most recent runs of `job`, newest first.
    async fn recent_job_runs(&self, job: &str, limit: u32) -> Result<Vec<JobRun>, StoreError>;
}

/// Opens the configured store. Does not migrate; see [`Store::migrate`].
pub async fn open(config: &StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreConfig::Mssql { .. } => {
            anyhow::bail!("METERLINE_STORE=mssql: the SQL Server store is not built into this version yet")
        }
    }
}
