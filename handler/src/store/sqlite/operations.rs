//! The SQLite operations store: `impl OperationsStore for SqliteStore` (ping, migrations, job runs, leases).

use super::*;

pub(super) const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT";

pub(super) fn read_history(conn: &Connection) -> Result<Vec<AppliedMigration>, StoreError> {
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
impl OperationsStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn search_index(&self) -> &'static str {
        "fts5"
    }

    fn breaker(&self) -> &std::sync::Arc<crate::resilience::Breaker> {
        &self.inner.breaker
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.read(|conn| conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(drop).map_err(classify)).await
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let known = migrations::SQLITE;
        migrations::check_order(known).map_err(|e| StoreError::Other(anyhow::anyhow!(e)))?;
        // One IMMEDIATE transaction: a second process migrating at the same time waits, then sees it done.
        let clock = self.inner.clock.clone();
        self.write(move |tx| {
            tx.execute_batch(CREATE_HISTORY).map_err(classify)?;
            let history = read_history(tx)?;
            let (mut report, pending) = migrations::verify(known, &history)?;
            for migration in pending {
                tx.execute_batch(migration.sql).map_err(|e| {
                    StoreError::Other(
                        anyhow::Error::new(e).context(format!("applying migration {}", migration.version)),
                    )
                })?;
                tx.execute(
                    "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
                    params![migration.version, migration.name, migration.checksum(), timestamp(clock.now())],
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

    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<bool, StoreError> {
        let r = request.clone();
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "INSERT INTO job_leases (name, holder, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at,
                         expires_at = excluded.expires_at
                     WHERE job_leases.expires_at <= excluded.acquired_at OR job_leases.holder = excluded.holder",
                    params![r.name, r.holder, timestamp(r.now), timestamp(r.expires_at)],
                )
                .map_err(classify)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |tx| {
            let changed = tx
                .execute("DELETE FROM job_leases WHERE name = ?1 AND holder = ?2", params![name, holder])
                .map_err(classify)?;
            Ok(changed == 1)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[tokio::test]
    async fn the_injected_clock_stamps_the_migration_history() {
        let dir = tempfile::tempdir().unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        let clock = Arc::new(crate::clock::ManualClock::new(at));
        let store = SqliteStore::open_with_clock(&dir.path().join("m.db"), clock).await.unwrap();
        store.migrate().await.unwrap();
        let history = store.applied_migrations().await.unwrap();
        assert!(!history.is_empty());
        assert!(history.iter().all(|m| m.applied_at == at));
    }
}
