//! The store's own operations: health, migrations, job runs and single-runner leases.

use async_trait::async_trait;

use super::*;

/// Runs of the store itself: health, migrations, job runs and single-runner leases.
#[async_trait]
pub trait OperationsStore: Send + Sync + 'static {
    /// Short name of the implementation (`sqlite`, `mssql`), for logs and health output.
    fn kind(&self) -> &'static str;

    /// The full-text index `q` searches (docs/data-model.md): `fts5` (SQLite's FTS5) or `word-index` (the
    /// handler's own word table on SQL Server, which every SQL Server flavour can hold).
    fn search_index(&self) -> &'static str;

    /// The circuit breaker every write (SQLite) or transaction (SQL Server) passes, for health and tests.
    fn breaker(&self) -> &std::sync::Arc<crate::resilience::Breaker>;

    /// Succeeds when the store answers a trivial query.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Succeeds when the store takes a write that nothing any caller reads sees (SQLite: 128 KiB written and
    /// removed again; SQL Server: the newest migration history row rewritten as it is). Through the store's breaker like every write, so while the breaker is
    /// half-open this is its probe: readiness asks it then, because a read answers from a store whose writes
    /// still fail (a full disk, a read-only file), and a ready instance takes traffic that would only fail.
    async fn probe_write(&self) -> Result<(), StoreError>;

    /// Applies pending migrations in order; safe to run twice and from two processes at once.
    async fn migrate(&self) -> Result<MigrationReport, StoreError>;

    /// The migrations recorded in the database's history table, oldest first.
    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError>;

    /// Records one job execution.
    async fn record_job_run(&self, run: &JobRun) -> Result<(), StoreError>;

    /// The most recent runs of `job`, newest first.
    async fn recent_job_runs(&self, job: &str, limit: u32) -> Result<Vec<JobRun>, StoreError>;

    /// Takes the lease if it is free, expired, or already held by the same holder (a renewal).
    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<bool, StoreError>;

    /// Gives the lease up if `holder` holds it; returns whether it did.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError>;
}

/// A lease for single-runner jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub name: String,
    /// Who asks: e.g. the worker id plus a random suffix. Renewing is acquiring again with the same holder.
    pub holder: String,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}
