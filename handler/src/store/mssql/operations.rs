//! The SQL Server operations store: `impl OperationsStore for MssqlStore` (ping, migrations, job runs, leases).

use super::*;

/// The migration history table, created if missing; run only while holding the migration applock.
pub(crate) const CREATE_HISTORY: &str = "IF OBJECT_ID(N'dbo.schema_migrations', N'U') IS NULL
CREATE TABLE dbo.schema_migrations (
    version    BIGINT       NOT NULL CONSTRAINT pk_schema_migrations PRIMARY KEY,
    name       NVARCHAR(200) NOT NULL,
    checksum   CHAR(64)     NOT NULL,
    applied_at DATETIME2(6) NOT NULL
)";

/// Serializes `migrate` across processes: an exclusive application lock owned by the session.
/// Returns the `sp_getapplock` status (0 or 1 granted; negative means timeout, deadlock or error).
pub(crate) const LOCK_MIGRATIONS: &str = "DECLARE @status INT;
EXEC @status = sp_getapplock @Resource = N'meterline:migrations', @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = 120000;
SELECT @status AS status";

pub(crate) const UNLOCK_MIGRATIONS: &str =
    "EXEC sp_releaseapplock @Resource = N'meterline:migrations', @LockOwner = N'Session'";

pub(crate) const READ_HISTORY: &str = "IF OBJECT_ID(N'dbo.schema_migrations', N'U') IS NOT NULL
SELECT version, name, checksum, applied_at FROM dbo.schema_migrations ORDER BY version";

pub(crate) const INSERT_HISTORY: &str =
    "INSERT INTO dbo.schema_migrations (version, name, checksum, applied_at) VALUES (@P1, @P2, @P3, @P4)";

pub(crate) const PING: &str = "SELECT 1 AS ok";

/// [`OperationsStore::probe_write`]: one row updated to itself. A database set read-only (or a read-only replica)
/// refuses it; SQL Server may skip logging an update that changes nothing, so a full log is found by the next
/// real write instead.
pub(crate) const PROBE_WRITE: &str = "UPDATE dbo.schema_migrations SET applied_at = applied_at
WHERE version = (SELECT MAX(version) FROM dbo.schema_migrations)";

pub(crate) const INSERT_JOB_RUN: &str =
    "INSERT INTO dbo.job_runs (id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub(crate) const RECENT_JOB_RUNS: &str =
    "SELECT TOP (@P2) id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail
FROM dbo.job_runs WHERE job = @P1 ORDER BY started_at DESC, id DESC";

/// Takes the lease if free, expired, or held by the same holder; returns 1 when `@P2` holds it afterwards.
/// The range locks (UPDLOCK, HOLDLOCK) make the check-then-insert atomic against a concurrent acquirer.
pub(crate) const ACQUIRE_LEASE: &str = "UPDATE dbo.job_leases WITH (UPDLOCK, HOLDLOCK)
    SET holder = @P2, acquired_at = @P3, expires_at = @P4
    WHERE name = @P1 AND (expires_at <= @P3 OR holder = @P2);
IF @@ROWCOUNT = 0 AND NOT EXISTS (SELECT 1 FROM dbo.job_leases WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)
    INSERT INTO dbo.job_leases (name, holder, acquired_at, expires_at) VALUES (@P1, @P2, @P3, @P4);
SELECT COUNT(*) AS held FROM dbo.job_leases WHERE name = @P1 AND holder = @P2 AND expires_at = @P4";

pub(crate) const RELEASE_LEASE: &str = "DELETE FROM dbo.job_leases WHERE name = @P1 AND holder = @P2";

/// Every statement of this file, for `store::tsql_check` (registered in `mssql::STATEMENTS`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("CREATE_HISTORY", CREATE_HISTORY),
    ("LOCK_MIGRATIONS", LOCK_MIGRATIONS),
    ("UNLOCK_MIGRATIONS", UNLOCK_MIGRATIONS),
    ("READ_HISTORY", READ_HISTORY),
    ("INSERT_HISTORY", INSERT_HISTORY),
    ("PING", PING),
    ("PROBE_WRITE", PROBE_WRITE),
    ("INSERT_JOB_RUN", INSERT_JOB_RUN),
    ("RECENT_JOB_RUNS", RECENT_JOB_RUNS),
    ("ACQUIRE_LEASE", ACQUIRE_LEASE),
    ("RELEASE_LEASE", RELEASE_LEASE),
];

pub(super) async fn read_history(conn: &mut MssqlClient) -> Result<Vec<AppliedMigration>, StoreError> {
    let rows = conn.simple_query(READ_HISTORY).await.map_err(classify)?.into_results().await.map_err(classify)?;
    rows.into_iter()
        .flatten()
        .map(|row| {
            Ok(AppliedMigration {
                version: required(&row, 0)?,
                name: text(&row, 1)?,
                checksum: text(&row, 2)?,
                applied_at: required(&row, 3)?,
            })
        })
        .collect()
}

/// Applies pending migrations on one connection that holds the session-scoped migration lock throughout.
pub(super) async fn migrate_locked(
    conn: &mut MssqlClient,
    clock: &dyn crate::clock::Clock,
) -> Result<MigrationReport, StoreError> {
    let known = migrations::MSSQL;
    let history = read_history(conn).await?;
    let (mut report, pending) = migrations::verify(known, &history)?;
    for migration in pending {
        batch(conn, "BEGIN TRANSACTION").await?;
        let applied = async {
            batch(conn, migration.sql).await?;
            if crate::store::migrations::indexes_stored_documents(migration) {
                // The words of the documents already stored: the index is complete when the migration commits.
                super::documents::index_stored_documents(conn).await?;
            }
            let (checksum, now) = (migration.checksum(), clock.now());
            execute(conn, INSERT_HISTORY, &[&migration.version, &migration.name, &checksum.as_str(), &now]).await?;
            batch(conn, "COMMIT TRANSACTION").await
        }
        .await;
        if let Err(err) = applied {
            let _ = batch(conn, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await;
            return Err(match err {
                StoreError::Other(e) => {
                    StoreError::Other(e.context(format!("applying migration {}", migration.version)))
                }
                other => other,
            });
        }
        report.applied.push(migration.version);
    }
    Ok(report)
}

#[async_trait]
impl OperationsStore for MssqlStore {
    fn kind(&self) -> &'static str {
        "mssql"
    }

    fn search_index(&self) -> &'static str {
        "word-index"
    }

    fn breaker(&self) -> &std::sync::Arc<crate::resilience::Breaker> {
        &self.breaker
    }

    /// Through the breaker and within the transaction timeout like every other call: a bare pooled query would
    /// hang the readiness probe for as long as a stalled server holds it, and a probe cut off by its client
    /// would hand the pool a connection with a request still on the wire.
    async fn ping(&self) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| batch(conn, PING).await)
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| batch(conn, PROBE_WRITE).await)
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        migrations::check_order(migrations::MSSQL).map_err(|e| StoreError::Other(anyhow::anyhow!(e)))?;
        let mut jitter = self.jitter();
        retry(&self.retry, &mut jitter, |_| async {
            let mut conn = self.pool.get().await.map_err(pool_error)?;
            // The applock first: two processes migrating at once must not both run the
            // `IF OBJECT_ID(...) IS NULL CREATE TABLE` of the history (the loser would fail with error 2714).
            let status: i32 = conn
                .simple_query(LOCK_MIGRATIONS)
                .await
                .map_err(classify)?
                .into_row()
                .await
                .map_err(classify)?
                .and_then(|row| row.get(0))
                .unwrap_or(-999);
            if status < 0 {
                return Err(StoreError::Unavailable(anyhow::anyhow!("sp_getapplock for migrations returned {status}")));
            }
            // Under the session-owned lock: create the history table if missing, then read and apply.
            let report = async {
                batch(&mut conn, CREATE_HISTORY).await?;
                migrate_locked(&mut conn, self.clock.as_ref()).await
            }
            .await;
            let unlocked = batch(&mut conn, UNLOCK_MIGRATIONS).await;
            let report = report?;
            unlocked?;
            Ok(report)
        })
        .await
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_history(conn).await)
    }

    async fn record_job_run(&self, run: &JobRun) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let params: [&dyn ToSql; 8] = [
                &run.id,
                &run.job.as_str(),
                &run.trigger.as_str(),
                &run.is_past_due,
                &run.started_at,
                &run.finished_at,
                &run.outcome.as_str(),
                &run.detail.as_str(),
            ];
            execute(conn, INSERT_JOB_RUN, &params).await.map(drop)
        })
    }

    async fn recent_job_runs(&self, job: &str, limit: u32) -> Result<Vec<JobRun>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let limit = i64::from(limit);
            rows(conn, RECENT_JOB_RUNS, &[&job, &limit])
                .await?
                .iter()
                .map(|row| {
                    Ok(JobRun {
                        id: required(row, 0)?,
                        job: text(row, 1)?,
                        trigger: text(row, 2)?,
                        is_past_due: required(row, 3)?,
                        started_at: required(row, 4)?,
                        finished_at: required(row, 5)?,
                        outcome: text(row, 6)?,
                        detail: text(row, 7)?,
                    })
                })
                .collect()
        })
    }

    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<bool, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let r = request;
            let held: Option<i32> =
                rows(conn, ACQUIRE_LEASE, &[&r.name.as_str(), &r.holder.as_str(), &r.now, &r.expires_at])
                    .await?
                    .first()
                    .map(|row| required(row, 0))
                    .transpose()?;
            Ok(held == Some(1))
        })
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        in_tx!(self, Retry::Yes, |conn| Ok(execute(conn, RELEASE_LEASE, &[&name, &holder]).await? == 1))
    }
}
