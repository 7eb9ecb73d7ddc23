//! The storage contract every store implements, and the stores: embedded SQLite (default) and SQL Server.
//!
//! Handlers and jobs only see `Arc<dyn Store>`. Each implementation must give the same answers and the
//! same concurrency guarantees; `tests/e2e/store_contract.rs` runs one suite against every store.

pub mod audit;
pub mod client_quota;
pub mod documents;
pub mod grants;
pub mod integration;
pub mod leases;
pub mod metering;
mod migrations;
pub mod model;
pub mod mssql;
pub mod operations;
pub mod plans;
pub mod search;
mod sqlite;
pub mod tenants;
#[cfg(test)]
mod tsql_check;
pub mod usage;

use std::sync::Arc;

use chrono::{DateTime, Utc};

use crate::config::StoreConfig;

pub use documents::*;
pub use migrations::{AppliedMigration, Migration, MigrationReport, SQLITE as SQLITE_MIGRATIONS};
pub use model::*;
pub use operations::*;
pub use plans::*;
pub use sqlite::SqliteStore;
pub use tenants::*;
pub use usage::*;

pub use audit::*;
pub use client_quota::*;
pub use documents::DocumentStore;
pub use grants::*;
pub use integration::*;
pub use leases::*;
pub use metering::*;
pub use operations::OperationsStore;
pub use plans::PlanStore;
pub use tenants::TenantStore;

/// Every aggregate's trait, for code that holds a concrete store (`SqliteStore`) rather than `dyn Store`:
/// `use meterline::store::prelude::*;` brings all their methods into scope.
pub mod prelude {
    pub use super::{
        AuditStore, ClientQuotaStore, DocumentStore, IntegrationStore, MeteringStore, OperationsStore, PlanStore,
        QuotaGrantStore, QuotaLeaseStore, Store, TenantStore, UsageStore,
    };
}

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
    #[error(
        "the database lacks migrations {versions:?} and METERLINE_AUTO_MIGRATE is off: run `handler migrate` first"
    )]
    MigrationsPending { versions: Vec<i64> },
    /// What the store's setting names is not a store this handler can use (a file that is not a SQLite database,
    /// or another application's database): a configuration error, which the command line exits 2 for.
    #[error("{setting}: {reason}")]
    Unusable { setting: &'static str, reason: String },
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

/// The storage contract: the union of the aggregates' contracts, so `Arc<dyn Store>` stays the one handle.
/// Methods of every aggregate are callable on `dyn Store` without importing the aggregate's trait; a new
/// aggregate adds its trait here and to the blanket impl below.
///
/// A write method that carries out an API request takes the request's [`Ledger`] and, if the write takes
/// effect, inserts its usage event and appends its audit event in the write's own transaction (as
/// [`MeteringStore::record_usage`] would, ids already stored being skipped): a crash can never keep the change
/// and lose its records. Pass `None` for writes that are not an API request's (seeding, jobs, tests).
pub trait Store:
    OperationsStore
    + TenantStore
    + PlanStore
    + DocumentStore
    + MeteringStore
    + QuotaLeaseStore
    + QuotaGrantStore
    + ClientQuotaStore
    + AuditStore
    + IntegrationStore
    + UsageStore
{
}

impl<
    T: OperationsStore
        + TenantStore
        + PlanStore
        + DocumentStore
        + MeteringStore
        + QuotaLeaseStore
        + QuotaGrantStore
        + ClientQuotaStore
        + AuditStore
        + IntegrationStore
        + UsageStore
        + ?Sized,
> Store for T
{
}

/// The outcome of a conditional (optimistic-concurrency) update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Update<T> {
    Updated(T),
    NotFound,
    /// The row exists at another version (the client's ETag is stale).
    VersionMismatch {
        current_version: i64,
    },
}

impl<T> Update<T> {
    /// The same outcome with the updated value mapped.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Update<U> {
        match self {
            Update::Updated(value) => Update::Updated(f(value)),
            Update::NotFound => Update::NotFound,
            Update::VersionMismatch { current_version } => Update::VersionMismatch { current_version },
        }
    }
}

/// Opens the configured store; `clock` stamps its migration history. Does not migrate; see [`OperationsStore::migrate`].
pub async fn open(config: &StoreConfig, clock: Arc<dyn crate::clock::Clock>) -> anyhow::Result<Arc<dyn Store>> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open_with_clock(path, clock).await?)),
        StoreConfig::Mssql { connection_string } => {
            Ok(Arc::new(mssql::MssqlStore::open_with_clock(connection_string, clock).await?))
        }
    }
}

/// Refuses a store whose schema is not this build's: a migration it lacks (with `METERLINE_AUTO_MIGRATE` off,
/// nothing applies it, and every call would fail), one it has that this build does not know (but a newer
/// release's on top of all of ours, which the report lists), or one changed since it was applied. What `migrate` checks before it applies anything, without applying anything.
pub async fn check_migrated(store: &dyn Store) -> Result<MigrationReport, StoreError> {
    let known = match store.kind() {
        "mssql" => migrations::MSSQL,
        _ => migrations::SQLITE,
    };
    let (report, pending) = migrations::verify(known, &store.applied_migrations().await?)?;
    if pending.is_empty() {
        return Ok(report);
    }
    Err(StoreError::MigrationsPending { versions: pending.iter().map(|m| m.version).collect() })
}
