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
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::{Connection, ErrorCode as SqliteCode, OpenFlags, OptionalExtension, params};
use uuid::Uuid;

use super::migrations::{self, AppliedMigration, MigrationReport};
use super::model::*;
use super::{JobRun, Store, StoreError, Update};

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

const PLAN_COLUMNS: &str = "code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency, \
    base_price_micros, overage_unit_price_micros, created_at, updated_at, version";

fn plan_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Plan, StoreError>> {
    let policy: String = r.get(5)?;
    let (created, updated): (String, String) = (r.get(9)?, r.get(10)?);
    let (code, name, rpm, burst, quota, currency) = (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(6)?);
    let (base, overage, version) = (r.get(7)?, r.get(8)?, r.get(11)?);
    Ok((|| {
        Ok(Plan {
            code,
            name,
            requests_per_minute: rpm,
            burst,
            monthly_quota_units: quota,
            overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
            currency,
            base_price_micros: base,
            overage_unit_price_micros: overage,
            created_at: parse_timestamp(&created)?,
            updated_at: parse_timestamp(&updated)?,
            version,
        })
    })())
}

const TENANT_COLUMNS: &str = "id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version";

fn tenant_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Tenant, StoreError>> {
    let (id, entra, name, status, plan_code): (String, Option<String>, String, String, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (created, updated, version): (String, String, i64) = (r.get(5)?, r.get(6)?, r.get(7)?);
    Ok((|| {
        Ok(Tenant {
            id: parse_uuid(&id)?,
            entra_tenant_id: entra.as_deref().map(parse_uuid).transpose()?,
            name,
            status: TenantStatus::parse(&status).ok_or_else(|| corrupt("tenant status", &status))?,
            plan_code,
            created_at: parse_timestamp(&created)?,
            updated_at: parse_timestamp(&updated)?,
            version,
        })
    })())
}

fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> Result<Option<T>, StoreError> {
    conn.query_row(sql, params, map).optional().map_err(classify)?.transpose()
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

    async fn create_plan(&self, plan: &Plan) -> Result<(), StoreError> {
        let p = plan.clone();
        self.write(move |tx| {
            let sql = format!(
                "INSERT INTO plans ({PLAN_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)"
            );
            tx.execute(
                &sql,
                params![
                    p.code,
                    p.name,
                    p.requests_per_minute,
                    p.burst,
                    p.monthly_quota_units,
                    p.overage_policy.as_str(),
                    p.currency,
                    p.base_price_micros,
                    p.overage_unit_price_micros,
                    timestamp(p.created_at),
                    timestamp(p.updated_at),
                    p.version
                ],
            )
            .map(drop)
            .map_err(classify)
        })
        .await
    }

    async fn get_plan(&self, code: &str) -> Result<Option<Plan>, StoreError> {
        let code = code.to_owned();
        self.read(move |conn| {
            query_one(conn, &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE code = ?1"), [code], plan_from_row)
        })
        .await
    }

    async fn create_tenant(&self, tenant: &Tenant) -> Result<(), StoreError> {
        let t = tenant.clone();
        self.write(move |tx| {
            let sql = format!("INSERT INTO tenants ({TENANT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)");
            tx.execute(
                &sql,
                params![
                    t.id.to_string(),
                    t.entra_tenant_id.map(|id| id.to_string()),
                    t.name,
                    t.status.as_str(),
                    t.plan_code,
                    timestamp(t.created_at),
                    timestamp(t.updated_at),
                    t.version
                ],
            )
            .map(drop)
            .map_err(classify)
        })
        .await
    }

    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        self.read(move |conn| {
            query_one(
                conn,
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"),
                [id.to_string()],
                tenant_from_row,
            )
        })
        .await
    }

    async fn get_tenant_by_entra_id(&self, entra_tenant_id: Uuid) -> Result<Option<Tenant>, StoreError> {
        self.read(move |conn| {
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE entra_tenant_id = ?1");
            query_one(conn, &sql, [entra_tenant_id.to_string()], tenant_from_row)
        })
        .await
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantCursor>,
        limit: u32,
    ) -> Result<Page<Tenant, TenantCursor>, StoreError> {
        let after = after.cloned();
        let limit = limit.max(1);
        self.read(move |conn| {
            let mut items = match &after {
                None => query_all(
                    conn,
                    &format!("SELECT {TENANT_COLUMNS} FROM tenants ORDER BY created_at, id LIMIT ?1"),
                    params![limit + 1],
                    tenant_from_row,
                )?,
                Some(cursor) => query_all(
                    conn,
                    &format!(
                        "SELECT {TENANT_COLUMNS} FROM tenants WHERE created_at > ?1 OR (created_at = ?1 AND id > ?2)
                         ORDER BY created_at, id LIMIT ?3"
                    ),
                    params![timestamp(cursor.created_at), cursor.id.to_string(), limit + 1],
                    tenant_from_row,
                )?,
            };
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|t| TenantCursor { created_at: t.created_at, id: t.id })
            } else {
                None
            };
            Ok(Page { items, next })
        })
        .await
    }

    async fn set_tenant_status(
        &self,
        id: Uuid,
        status: TenantStatus,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<Update<Tenant>, StoreError> {
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE tenants SET status = ?1, updated_at = ?2, version = version + 1 WHERE id = ?3 AND version = ?4",
                    params![status.as_str(), timestamp(now), id.to_string(), expected_version],
                )
                .map_err(classify)?;
            let current =
                query_one(tx, &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"), [id.to_string()], tenant_from_row)?;
            Ok(match (changed, current) {
                (_, None) => Update::NotFound,
                (1, Some(tenant)) => Update::Updated(tenant),
                (_, Some(tenant)) => Update::VersionMismatch { current_version: tenant.version },
            })
        })
        .await
    }

    async fn create_api_client(&self, client: &ApiClient) -> Result<(), StoreError> {
        let c = client.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO api_clients (id, tenant_id, app_id, display_name, status, created_at, revoked_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    c.id.to_string(),
                    c.tenant_id.to_string(),
                    c.app_id,
                    c.display_name,
                    if c.active { "active" } else { "revoked" },
                    timestamp(c.created_at),
                    c.revoked_at.map(timestamp),
                    c.version
                ],
            )
            .map_err(classify)?;
            for role in &c.roles {
                tx.execute(
                    "INSERT INTO api_client_roles (client_id, role) VALUES (?1, ?2)",
                    params![c.id.to_string(), role],
                )
                .map_err(classify)?;
            }
            Ok(())
        })
        .await
    }

    async fn get_api_client_by_app_id(&self, app_id: &str) -> Result<Option<ApiClient>, StoreError> {
        let app_id = app_id.to_owned();
        self.read(move |conn| {
            let sql = "SELECT id, tenant_id, app_id, display_name, status, created_at, revoked_at, version
                       FROM api_clients WHERE app_id = ?1";
            let Some(mut client) = query_one(conn, sql, [app_id], |r| {
                let (id, tenant, app_id, name, status): (String, String, String, String, String) =
                    (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
                let (created, revoked, version): (String, Option<String>, i64) = (r.get(5)?, r.get(6)?, r.get(7)?);
                Ok((|| {
                    Ok(ApiClient {
                        id: parse_uuid(&id)?,
                        tenant_id: parse_uuid(&tenant)?,
                        app_id,
                        display_name: name,
                        roles: Vec::new(),
                        active: status == "active",
                        created_at: parse_timestamp(&created)?,
                        revoked_at: revoked.as_deref().map(parse_timestamp).transpose()?,
                        version,
                    })
                })())
            })?
            else {
                return Ok(None);
            };
            client.roles = query_all(
                conn,
                "SELECT role FROM api_client_roles WHERE client_id = ?1 ORDER BY role",
                [client.id.to_string()],
                |r| Ok(Ok(r.get::<_, String>(0)?)),
            )?;
            Ok(Some(client))
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

    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
        let d = debit.clone();
        self.write(move |tx| {
            let (tenant, start) = (d.tenant_id.to_string(), d.period_start.to_string());
            tx.execute(
                "INSERT INTO quota_usage (tenant_id, period_start, period_end, quota_units, overage_policy, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (tenant_id, period_start) DO NOTHING",
                params![tenant, start, d.period_end.to_string(), d.quota_units, d.overage_policy.as_str(), timestamp(d.now)],
            )
            .map_err(classify)?;
            // One conditional UPDATE: the same statement shape as on SQL Server, so both refuse identically.
            let updated: Option<(i64, i64, i64)> = tx
                .query_row(
                    "UPDATE quota_usage SET
                         overage_units = overage_units + max(0, units_used + ?3 - quota_units) - max(0, units_used - quota_units),
                         units_used = units_used + ?3,
                         updated_at = ?4
                     WHERE tenant_id = ?1 AND period_start = ?2
                       AND (overage_policy = 'allow' OR units_used + ?3 <= quota_units)
                     RETURNING units_used, quota_units, max(0, units_used - quota_units) - max(0, units_used - ?3 - quota_units)",
                    params![tenant, start, d.units, timestamp(d.now)],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()
                .map_err(classify)?;
            Ok(match updated {
                Some((units_used, quota_units, overage_units)) => {
                    QuotaOutcome::Accepted { units_used, quota_units, overage_units }
                }
                None => {
                    let current = read_quota(tx, d.tenant_id, d.period_start)?
                        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("quota row vanished inside its transaction")))?;
                    QuotaOutcome::Rejected { units_used: current.units_used, quota_units: current.quota_units }
                }
            })
        })
        .await
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
        self.read(move |conn| read_quota(conn, tenant_id, period_start)).await
    }

    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
        let t = take.clone();
        self.write(move |tx| {
            let (tenant, client) = (t.tenant_id.to_string(), t.client_id.clone());
            let stored: Option<i64> = tx
                .query_row(
                    "SELECT tat_micros FROM rate_limit_state WHERE tenant_id = ?1 AND client_id = ?2",
                    params![tenant, client],
                    |r| r.get(0),
                )
                .optional()
                .map_err(classify)?;
            let decision = gcra(stored, &t);
            if decision.allowed {
                tx.execute(
                    "INSERT INTO rate_limit_state (tenant_id, client_id, tat_micros) VALUES (?1, ?2, ?3)
                     ON CONFLICT (tenant_id, client_id) DO UPDATE SET tat_micros = excluded.tat_micros",
                    params![tenant, client, decision.tat_micros],
                )
                .map_err(classify)?;
            }
            Ok(decision)
        })
        .await
    }

    async fn record_usage_events(&self, events: &[UsageEvent]) -> Result<u64, StoreError> {
        let events = events.to_vec();
        self.write(move |tx| {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO usage_events (event_id, request_id, tenant_id, client_id, principal_id, operation_id, method,
                         route_template, status, units, billable, overage_units, latency_micros, request_bytes,
                         response_bytes, occurred_at, recorded_at)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17)
                     ON CONFLICT (event_id) DO NOTHING",
                )
                .map_err(classify)?;
            let mut inserted = 0;
            for e in &events {
                inserted += stmt
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
                    .map_err(classify)? as u64;
            }
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
