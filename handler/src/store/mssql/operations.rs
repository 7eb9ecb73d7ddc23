//! The SQL Server operations store: `impl OperationsStore for MssqlStore` (ping, migrations, job runs, leases).

use super::*;

pub(super) async fn read_history(conn: &mut MssqlClient) -> Result<Vec<AppliedMigration>, StoreError> {
    let rows = conn.simple_query(q::READ_HISTORY).await.map_err(classify)?.into_results().await.map_err(classify)?;
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
pub(super) async fn migrate_locked(conn: &mut MssqlClient) -> Result<MigrationReport, StoreError> {
    let known = migrations::MSSQL;
    let history = read_history(conn).await?;
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
        batch(conn, "BEGIN TRANSACTION").await?;
        let applied = async {
            batch(conn, migration.sql).await?;
            let (checksum, now) = (migration.checksum(), Utc::now());
            execute(conn, q::INSERT_HISTORY, &[&migration.version, &migration.name, &checksum.as_str(), &now]).await?;
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

    async fn ping(&self) -> Result<(), StoreError> {
        let mut conn = self.pool.get().await.map_err(pool_error)?;
        batch(&mut conn, q::PING).await
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        migrations::check_order(migrations::MSSQL).map_err(|e| StoreError::Other(anyhow::anyhow!(e)))?;
        let mut jitter = random_jitter();
        retry(&self.retry, &mut jitter, |_| async {
            let mut conn = self.pool.get().await.map_err(pool_error)?;
            batch(&mut conn, q::CREATE_HISTORY).await?;
            let status: i32 = conn
                .simple_query(q::LOCK_MIGRATIONS)
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
            let report = migrate_locked(&mut conn).await;
            let unlocked = batch(&mut conn, q::UNLOCK_MIGRATIONS).await;
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
            execute(conn, q::INSERT_JOB_RUN, &params).await.map(drop)
        })
    }

    async fn recent_job_runs(&self, job: &str, limit: u32) -> Result<Vec<JobRun>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let limit = i64::from(limit);
            rows(conn, q::RECENT_JOB_RUNS, &[&job, &limit])
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
                rows(conn, q::ACQUIRE_LEASE, &[&r.name.as_str(), &r.holder.as_str(), &r.now, &r.expires_at])
                    .await?
                    .first()
                    .map(|row| required(row, 0))
                    .transpose()?;
            Ok(held == Some(1))
        })
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        in_tx!(self, Retry::Yes, |conn| Ok(execute(conn, q::RELEASE_LEASE, &[&name, &holder]).await? == 1))
    }
}
