//! The SQL Server store: [`MssqlStore`], the storage contract over a bb8 pool of tiberius connections, and its
//! building blocks (connections and the pool, Entra ID tokens, error classification, retry). Each aggregate's file
//! holds its T-SQL statements (those not moved yet are in `queries`); [`STATEMENTS`] lists them all.
//!
//! Every operation runs in one explicit transaction (`XACT_ABORT ON` rolls back on any error). Only
//! idempotent operations are retried on transient faults ([`Retry::Yes`]): reads, migrations, usage inserts
//! keyed by event id, leases. A debit or a conditional update is not, because a commit whose answer was
//! lost may have happened; the caller sees 503 and decides.

pub mod connection;
pub mod errors;
pub mod queries;
pub mod retry;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tiberius::{ColumnData, Row, ToSql};
use uuid::Uuid;

use crate::store::migrations::{self, AppliedMigration, MigrationReport};
use crate::store::model::*;
use crate::store::{DocumentStore, JobRun, OperationsStore, PlanStore, StoreError, TenantStore, Update};
use crate::store::{audit::*, metering::*};
use connection::{MssqlClient, MssqlConnector, MssqlManager, pool_error, pool_with_timeout};
use errors::classify;
use queries as q;
use retry::{RetryPolicy, random_jitter, retry};

/// Connections per handler process. Azure SQL counts sessions per database; scale-out multiplies this.
const POOL_SIZE: u32 = 16;

/// How long an operation waits for a pooled connection before it fails as unavailable (then 503).
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// A pooled connection owned by the operation that uses it.
type Pooled = bb8::PooledConnection<'static, MssqlManager>;

/// Runs `$body` (which sees `$conn: &mut MssqlClient`) in [`MssqlStore::transaction`].
macro_rules! in_tx {
    ($store:expr, $retry:expr, |$conn:ident| $body:expr) => {
        $store
            .transaction($retry, |mut pooled: Pooled| async move {
                let result = async {
                    let $conn: &mut MssqlClient = &mut pooled;
                    $body
                }
                .await;
                (pooled, result)
            })
            .await
    };
}

mod audit;
pub(crate) mod integration;
mod metering;
mod usage;
/// Write helpers other aggregates call inside their own transactions.
#[allow(unused_imports)]
pub(crate) use audit::append_audit;
#[allow(unused_imports)]
pub(crate) use integration::{emit_quota_thresholds, insert_outbox};
#[allow(unused_imports)]
pub(crate) use metering::{debit_period, insert_usage_event, read_quota, take_rate, write_ledger};

/// Every aggregate's statements, for the parse check (`store::tsql_check`); `queries::ALL` holds those not yet
/// moved next to their aggregate.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const STATEMENTS: &[&[(&str, &str)]] =
    &[queries::ALL, metering::STATEMENTS, audit::STATEMENTS, integration::STATEMENTS, usage::STATEMENTS];

/// Whether an operation may run again after a transient fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Yes,
    No,
}

/// The SQL Server implementation of [`Store`].
#[derive(Clone)]
pub struct MssqlStore {
    pool: bb8::Pool<MssqlManager>,
    retry: Arc<RetryPolicy>,
}

impl std::fmt::Debug for MssqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlStore").field("pool", &self.pool.state()).finish()
    }
}

impl MssqlStore {
    /// Builds the pool; connections are made on first use, so a database that is briefly away does not stop startup.
    pub async fn open(connection_string: &SecretString) -> Result<Self, StoreError> {
        let connector = Arc::new(MssqlConnector::new(connection_string)?);
        // Three attempts bounded by POOL_WAIT each: a request fails within about 16 s when the database is away,
        // well inside the Functions HTTP limit, instead of queueing for minutes.
        let retry = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        Ok(MssqlStore { pool: pool_with_timeout(connector, POOL_SIZE, POOL_WAIT).await?, retry: Arc::new(retry) })
    }

    /// Runs `op` inside one transaction on a pooled connection; commits on Ok, rolls back on Err.
    /// `op` takes the connection and hands it back with its result (see [`in_tx!`]), which keeps the
    /// future free of higher-ranked borrows, so it stays `Send`.
    async fn transaction<T, F, Fut>(&self, retryable: Retry, op: F) -> Result<T, StoreError>
    where
        F: Fn(Pooled) -> Fut,
        Fut: Future<Output = (Pooled, Result<T, StoreError>)>,
    {
        let (this, op) = (self, &op);
        let attempt = move || async move {
            let mut conn = this.pool.get_owned().await.map_err(pool_error)?;
            batch(&mut conn, "BEGIN TRANSACTION").await?;
            let (mut conn, result) = op(conn).await;
            match result {
                Ok(value) => {
                    batch(&mut conn, "COMMIT TRANSACTION").await?;
                    Ok(value)
                }
                Err(err) => {
                    // XACT_ABORT has already rolled back on a server error; this covers errors raised in Rust.
                    let _ = batch(&mut conn, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await;
                    Err(err)
                }
            }
        };
        match retryable {
            Retry::No => attempt().await,
            Retry::Yes => {
                let mut jitter = random_jitter();
                retry(&self.retry, &mut jitter, |_| attempt()).await
            }
        }
    }
}

/// Runs a parameterless batch to completion.
async fn batch(conn: &mut MssqlClient, sql: &str) -> Result<(), StoreError> {
    conn.simple_query(sql).await.map_err(classify)?.into_results().await.map_err(classify)?;
    Ok(())
}

/// Runs a parameterized statement; returns the rows of its first result set.
pub(super) async fn rows(conn: &mut MssqlClient, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>, StoreError> {
    conn.query(sql, params).await.map_err(classify)?.into_first_result().await.map_err(classify)
}

/// Runs a parameterized statement that returns no rows; returns the total rows affected.
pub(super) async fn execute(conn: &mut MssqlClient, sql: &str, params: &[&dyn ToSql]) -> Result<u64, StoreError> {
    Ok(conn.execute(sql, params).await.map_err(classify)?.total())
}

pub(super) fn column<'a, T: tiberius::FromSql<'a>>(row: &'a Row, index: usize) -> Result<Option<T>, StoreError> {
    row.try_get(index).map_err(|e| StoreError::Other(anyhow::anyhow!("column {index}: {e}")))
}

pub(super) fn required<'a, T: tiberius::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    column(row, index)?.ok_or_else(|| StoreError::Other(anyhow::anyhow!("column {index} is NULL")))
}

pub(super) fn text(row: &Row, index: usize) -> Result<String, StoreError> {
    required::<&str>(row, index).map(str::to_owned)
}

fn corrupt(what: &str, raw: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("bad {what} {raw:?} in the database"))
}

fn plan_from(row: &Row) -> Result<Plan, StoreError> {
    let policy = text(row, 5)?;
    Ok(Plan {
        code: text(row, 0)?,
        name: text(row, 1)?,
        requests_per_minute: required(row, 2)?,
        burst: required(row, 3)?,
        monthly_quota_units: required(row, 4)?,
        overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
        currency: text(row, 6)?,
        base_price_micros: required(row, 7)?,
        overage_unit_price_micros: required(row, 8)?,
        created_at: required(row, 9)?,
        updated_at: required(row, 10)?,
        version: required(row, 11)?,
    })
}

fn tenant_from(row: &Row) -> Result<Tenant, StoreError> {
    let status = text(row, 3)?;
    Ok(Tenant {
        id: required(row, 0)?,
        entra_tenant_id: column(row, 1)?,
        name: text(row, 2)?,
        status: TenantStatus::parse(&status).ok_or_else(|| corrupt("tenant status", &status))?,
        plan_code: text(row, 4)?,
        created_at: required(row, 5)?,
        updated_at: required(row, 6)?,
        version: required(row, 7)?,
    })
}

impl ToSql for q::Arg {
    fn to_sql(&self) -> ColumnData<'_> {
        match self {
            q::Arg::Int(v) => v.to_sql(),
            q::Arg::Id(v) => v.to_sql(),
            q::Arg::Text(v) => v.to_sql(),
            q::Arg::Time(v) => v.to_sql(),
            q::Arg::Date(v) => v.to_sql(),
        }
    }
}

/// Runs an assembled statement; returns the rows of its first result set.
async fn assembled_rows(conn: &mut MssqlClient, statement: &q::Assembled) -> Result<Vec<Row>, StoreError> {
    let params: Vec<&dyn ToSql> = statement.args.iter().map(|arg| arg as &dyn ToSql).collect();
    rows(conn, &statement.sql, &params).await
}

/// An API client row without its roles.
fn api_client_from(row: &Row) -> Result<ApiClient, StoreError> {
    let status = text(row, 5)?;
    Ok(ApiClient {
        id: required(row, 0)?,
        tenant_id: required(row, 1)?,
        directory_id: column(row, 2)?,
        app_id: text(row, 3)?,
        display_name: text(row, 4)?,
        roles: Vec::new(),
        status: ClientStatus::parse(&status)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown client status {status:?}")))?,
        created_at: required(row, 6)?,
        revoked_at: column(row, 7)?,
        decided_by: column::<&str>(row, 8)?.map(str::to_owned),
        decided_at: column(row, 9)?,
        version: required(row, 10)?,
    })
}

async fn client_roles(conn: &mut MssqlClient, client_id: Uuid) -> Result<Vec<String>, StoreError> {
    rows(conn, q::API_CLIENT_ROLES, &[&client_id]).await?.iter().map(|r| text(r, 0)).collect()
}

/// A client of `tenant_id` with its roles; a client of another tenant is `None`.
async fn read_api_client(conn: &mut MssqlClient, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiClient>, StoreError> {
    let found = rows(conn, q::GET_TENANT_API_CLIENT, &[&tenant_id, &id]).await?;
    let Some(mut client) = found.first().map(api_client_from).transpose()? else { return Ok(None) };
    client.roles = client_roles(conn, client.id).await?;
    Ok(Some(client))
}

/// A document row without its tags (see [`load_tags`]), in the column order of `document_columns!`.
fn document_from(row: &Row) -> Result<Document, StoreError> {
    let status = text(row, 7)?;
    Ok(Document {
        id: required(row, 0)?,
        tenant_id: required(row, 1)?,
        title: text(row, 2)?,
        summary: column::<&str>(row, 3)?.map(str::to_owned),
        body: column::<&str>(row, 4)?.map(str::to_owned),
        doc_type: text(row, 5)?,
        jurisdiction: column::<&str>(row, 6)?.map(str::to_owned),
        status: DocumentStatus::parse(&status).ok_or_else(|| corrupt("document status", &status))?,
        effective_date: column(row, 8)?,
        tags: Vec::new(),
        created_by: text(row, 9)?,
        updated_by: text(row, 10)?,
        created_at: required(row, 11)?,
        updated_at: required(row, 12)?,
        version: required(row, 13)?,
    })
}

/// Fills in the tags of `documents`, all of `tenant_id`, each set sorted (in Rust, so both stores agree).
async fn load_tags(conn: &mut MssqlClient, tenant_id: Uuid, documents: &mut [Document]) -> Result<(), StoreError> {
    for chunk in documents.chunks_mut(q::TAG_LOAD_CHUNK) {
        let ids: Vec<Uuid> = chunk.iter().map(|d| d.id).collect();
        let mut by_document: HashMap<Uuid, Vec<String>> = HashMap::new();
        for row in assembled_rows(conn, &q::tags_of_documents(tenant_id, &ids)).await? {
            by_document.entry(required(&row, 0)?).or_default().push(text(&row, 1)?);
        }
        for document in chunk {
            document.tags = by_document.remove(&document.id).unwrap_or_default();
            document.tags.sort();
        }
    }
    Ok(())
}

/// A live document of `tenant_id` with its tags.
async fn read_document(conn: &mut MssqlClient, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError> {
    let found = rows(conn, q::GET_DOCUMENT, &[&tenant_id, &id]).await?;
    let Some(document) = found.first().map(document_from).transpose()? else { return Ok(None) };
    let mut one = [document];
    load_tags(conn, tenant_id, &mut one).await?;
    let [document] = one;
    Ok(Some(document))
}

/// The version of a live document of `tenant_id`, to tell a stale version from a missing document.
async fn live_document_version(conn: &mut MssqlClient, tenant_id: Uuid, id: Uuid) -> Result<Option<i64>, StoreError> {
    rows(conn, q::LIVE_DOCUMENT_VERSION, &[&tenant_id, &id]).await?.first().map(|r| required(r, 0)).transpose()
}

/// Inserts the tags of `document` (duplicates written once).
async fn insert_tags(conn: &mut MssqlClient, document: &Document) -> Result<(), StoreError> {
    let mut tags: Vec<&str> = document.tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    tags.dedup();
    for tag in tags {
        execute(conn, q::INSERT_DOCUMENT_TAG, &[&document.id, &document.tenant_id, &tag]).await?;
    }
    Ok(())
}

/// Refuses effective dates `DATE` cannot hold (tiberius would encode them as another date).
fn check_effective_date(document: &Document) -> Result<(), StoreError> {
    match document.effective_date {
        Some(date) if !(q::FIRST_DATE..=q::LAST_DATE).contains(&date) => {
            Err(StoreError::Other(anyhow::anyhow!("effective date {date} is outside 0001-01-01..9999-12-31")))
        }
        _ => Ok(()),
    }
}

/// The cursor of a listed document in `key` order.
fn cursor_of(document: &Document, key: DocumentSortKey) -> DocumentCursor {
    let value = match key {
        DocumentSortKey::UpdatedAt => SortValue::Time(document.updated_at),
        DocumentSortKey::Title => SortValue::Text(document.title.clone()),
        DocumentSortKey::EffectiveDate => SortValue::Date(document.effective_date.unwrap_or(NO_EFFECTIVE_DATE)),
    };
    DocumentCursor { value, id: document.id }
}

fn idempotency_from(row: &Row) -> Result<IdempotencyRecord, StoreError> {
    let status: i16 = required(row, 4)?;
    Ok(IdempotencyRecord {
        tenant_id: required(row, 0)?,
        key: text(row, 1)?,
        operation_id: text(row, 2)?,
        request_hash: text(row, 3)?,
        status_code: u16::try_from(status).map_err(|_| corrupt("status code", &status.to_string()))?,
        response_headers: text(row, 5)?,
        response_body: required::<&[u8]>(row, 6)?.to_vec(),
        created_at: required(row, 7)?,
        expires_at: required(row, 8)?,
    })
}

pub(super) async fn read_tenant(conn: &mut MssqlClient, id: Uuid) -> Result<Option<Tenant>, StoreError> {
    rows(conn, q::GET_TENANT, &[&id]).await?.first().map(tenant_from).transpose()
}

async fn read_history(conn: &mut MssqlClient) -> Result<Vec<AppliedMigration>, StoreError> {
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
async fn migrate_locked(conn: &mut MssqlClient) -> Result<MigrationReport, StoreError> {
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

/// Replaces all of a plan's cost overrides (`ForeignKey` for an unknown plan).
async fn replace_plan_costs(conn: &mut MssqlClient, code: &str, costs: &[(String, i64)]) -> Result<(), StoreError> {
    let exists: i32 =
        rows(conn, q::PLAN_EXISTS, &[&code]).await?.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
    if exists == 0 {
        return Err(StoreError::ForeignKey(format!("no plan {code}")));
    }
    execute(conn, q::DELETE_PLAN_COSTS, &[&code]).await?;
    for (operation, units) in costs {
        let units = i32::try_from(*units).map_err(|_| StoreError::Other(anyhow::anyhow!("cost out of range")))?;
        execute(conn, q::INSERT_PLAN_COST, &[&code, &operation.as_str(), &units]).await?;
    }
    Ok(())
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

#[async_trait]
impl TenantStore for MssqlStore {
    async fn create_tenant(&self, tenant: &Tenant, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let t = tenant;
            let params: [&dyn ToSql; 8] = [
                &t.id,
                &t.entra_tenant_id,
                &t.name.as_str(),
                &t.status.as_str(),
                &t.plan_code.as_str(),
                &t.created_at,
                &t.updated_at,
                &t.version,
            ];
            execute(conn, q::INSERT_TENANT, &params).await?;
            write_ledger(conn, ledger).await
        })
    }

    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_tenant(conn, id).await)
    }

    async fn get_tenant_by_entra_id(&self, entra_tenant_id: Uuid) -> Result<Option<Tenant>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::GET_TENANT_BY_ENTRA_ID, &[&entra_tenant_id]).await?.first().map(tenant_from).transpose()
        })
    }

    async fn list_tenants(
        &self,
        after: Option<&TenantCursor>,
        limit: u32,
    ) -> Result<Page<Tenant, TenantCursor>, StoreError> {
        let limit = limit.max(1);
        let fetch = i64::from(limit) + 1;
        in_tx!(self, Retry::Yes, |conn| {
            let found = match after {
                None => rows(conn, q::LIST_TENANTS_FIRST, &[&fetch]).await?,
                Some(cursor) => rows(conn, q::LIST_TENANTS_AFTER, &[&cursor.created_at, &cursor.id, &fetch]).await?,
            };
            let mut items = found.iter().map(tenant_from).collect::<Result<Vec<_>, _>>()?;
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|t| TenantCursor { created_at: t.created_at, id: t.id })
            } else {
                None
            };
            Ok(Page { items, next })
        })
    }

    async fn set_tenant_status(
        &self,
        id: Uuid,
        status: TenantStatus,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<Update<Tenant>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let before = read_tenant(conn, id).await?;
            let changed =
                execute(conn, q::SET_TENANT_STATUS, &[&status.as_str(), &now, &id, &expected_version]).await?;
            Ok(match (changed, read_tenant(conn, id).await?, before) {
                (_, None, _) => Update::NotFound,
                (1, Some(tenant), Some(before)) => {
                    integration::announce_status_change(conn, before.status, &tenant, now).await?;
                    Update::Updated(tenant)
                }
                (1, Some(tenant), None) => Update::Updated(tenant),
                (_, Some(tenant), _) => Update::VersionMismatch { current_version: tenant.version },
            })
        })
    }

    async fn update_tenant(
        &self,
        id: Uuid,
        changes: &TenantChanges,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Tenant>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let c = changes;
            let params: [&dyn ToSql; 6] = [
                &c.name.as_deref(),
                &c.status.map(TenantStatus::as_str),
                &c.plan_code.as_deref(),
                &now,
                &id,
                &expected_version,
            ];
            let before = read_tenant(conn, id).await?;
            let changed = execute(conn, q::UPDATE_TENANT, &params).await?;
            Ok(match (changed, read_tenant(conn, id).await?, before) {
                (_, None, _) => Update::NotFound,
                (1, Some(tenant), Some(before)) => {
                    integration::announce_status_change(conn, before.status, &tenant, now).await?;
                    write_ledger(conn, ledger).await?;
                    Update::Updated(tenant)
                }
                (1, Some(tenant), None) => {
                    write_ledger(conn, ledger).await?;
                    Update::Updated(tenant)
                }
                (_, Some(tenant), _) => Update::VersionMismatch { current_version: tenant.version },
            })
        })
    }

    async fn list_api_clients(&self, tenant_id: Uuid) -> Result<Vec<ApiClient>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let mut clients = rows(conn, q::LIST_API_CLIENTS, &[&tenant_id])
                .await?
                .iter()
                .map(api_client_from)
                .collect::<Result<Vec<_>, _>>()?;
            let mut by_client: HashMap<Uuid, Vec<String>> = HashMap::new();
            for row in rows(conn, q::LIST_API_CLIENT_ROLES, &[&tenant_id]).await? {
                by_client.entry(required(&row, 0)?).or_default().push(text(&row, 1)?);
            }
            for client in &mut clients {
                client.roles = by_client.remove(&client.id).unwrap_or_default();
            }
            Ok(clients)
        })
    }

    async fn revoke_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        // Idempotent (only an active client changes; stored ledger ids are skipped), so a transient fault may
        // run it again.
        in_tx!(self, Retry::Yes, |conn| {
            execute(conn, q::REVOKE_API_CLIENT, &[&tenant_id, &id, &now]).await?;
            Ok(match read_api_client(conn, tenant_id, id).await? {
                Some(client) => {
                    write_ledger(conn, ledger).await?;
                    Update::Updated(client)
                }
                None => Update::NotFound,
            })
        })
    }

    async fn create_api_client(&self, client: &ApiClient, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let c = client;
            let decided_by = c.decided_by.as_deref();
            let params: [&dyn ToSql; 11] = [
                &c.id,
                &c.tenant_id,
                &c.directory_id,
                &c.app_id.as_str(),
                &c.display_name.as_str(),
                &c.status.as_str(),
                &c.created_at,
                &c.revoked_at,
                &decided_by,
                &c.decided_at,
                &c.version,
            ];
            execute(conn, q::INSERT_API_CLIENT, &params).await?;
            for role in &c.roles {
                execute(conn, q::INSERT_API_CLIENT_ROLE, &[&c.id, &role.as_str()]).await?;
            }
            write_ledger(conn, ledger).await
        })
    }

    async fn api_clients_for_app(&self, directory_id: Uuid, app_id: &str) -> Result<Vec<ApiClient>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let mut clients = rows(conn, q::API_CLIENTS_FOR_APP, &[&directory_id, &app_id])
                .await?
                .iter()
                .map(api_client_from)
                .collect::<Result<Vec<_>, _>>()?;
            for client in &mut clients {
                client.roles = client_roles(conn, client.id).await?;
            }
            Ok(clients)
        })
    }

    async fn decide_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        decision: &ClientDecision,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        // Idempotent (only a pending row changes, a decided one is a Conflict, stored ledger ids are skipped),
        // but a retry after a lost commit answer would report that Conflict: not retried.
        in_tx!(self, Retry::No, |conn| {
            let Some(client) = read_api_client(conn, tenant_id, id).await? else { return Ok(Update::NotFound) };
            check_decidable(&client)?;
            if decision.approve {
                let app_id = client.app_id.as_str();
                let owned =
                    !rows(conn, q::DIRECTORY_OWNED_BY_OTHER, &[&client.directory_id, &tenant_id]).await?.is_empty();
                let taken =
                    !rows(conn, q::ACTIVE_ELSEWHERE, &[&client.directory_id, &app_id, &tenant_id]).await?.is_empty();
                check_approvable(owned, taken)?;
            }
            let status = if decision.approve { ClientStatus::Active } else { ClientStatus::Rejected }.as_str();
            let by = decision.by.as_str();
            execute(conn, q::DECIDE_API_CLIENT, &[&status, &by, &decision.at, &tenant_id, &id]).await?;
            write_ledger(conn, ledger).await?;
            Ok(read_api_client(conn, tenant_id, id).await?.map_or(Update::NotFound, Update::Updated))
        })
    }
}

#[async_trait]
impl PlanStore for MssqlStore {
    async fn create_plan(&self, plan: &Plan, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let p = plan;
            let params: [&dyn ToSql; 12] = [
                &p.code.as_str(),
                &p.name.as_str(),
                &p.requests_per_minute,
                &p.burst,
                &p.monthly_quota_units,
                &p.overage_policy.as_str(),
                &p.currency.as_str(),
                &p.base_price_micros,
                &p.overage_unit_price_micros,
                &p.created_at,
                &p.updated_at,
                &p.version,
            ];
            execute(conn, q::INSERT_PLAN, &params).await?;
            write_ledger(conn, ledger).await
        })
    }

    async fn get_plan(&self, code: &str) -> Result<Option<Plan>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| rows(conn, q::GET_PLAN, &[&code]).await?.first().map(plan_from).transpose())
    }

    async fn plan_operation_costs(&self, plan_code: &str) -> Result<Vec<(String, i64)>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::PLAN_COSTS, &[&plan_code])
                .await?
                .iter()
                .map(|row| Ok((text(row, 0)?, i64::from(required::<i32>(row, 1)?))))
                .collect()
        })
    }

    async fn set_plan_operation_costs(&self, plan_code: &str, costs: &[(String, i64)]) -> Result<(), StoreError> {
        in_tx!(self, Retry::Yes, |conn| replace_plan_costs(conn, plan_code, costs).await)
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| rows(conn, q::LIST_PLANS, &[]).await?.iter().map(plan_from).collect())
    }

    async fn update_plan(
        &self,
        plan: &Plan,
        expected_version: i64,
        costs: Option<&[(String, i64)]>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Plan>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let p = plan;
            let params: [&dyn ToSql; 11] = [
                &p.name.as_str(),
                &p.requests_per_minute,
                &p.burst,
                &p.monthly_quota_units,
                &p.overage_policy.as_str(),
                &p.currency.as_str(),
                &p.base_price_micros,
                &p.overage_unit_price_micros,
                &p.updated_at,
                &p.code.as_str(),
                &expected_version,
            ];
            let changed = execute(conn, q::UPDATE_PLAN, &params).await?;
            let current = rows(conn, q::GET_PLAN, &[&p.code.as_str()]).await?.first().map(plan_from).transpose()?;
            Ok(match (changed, current) {
                (_, None) => Update::NotFound,
                (1, Some(plan)) => {
                    if let Some(costs) = costs {
                        replace_plan_costs(conn, &plan.code, costs).await?;
                    }
                    write_ledger(conn, ledger).await?;
                    Update::Updated(plan)
                }
                (_, Some(plan)) => Update::VersionMismatch { current_version: plan.version },
            })
        })
    }
}

#[async_trait]
impl DocumentStore for MssqlStore {
    async fn create_document(
        &self,
        document: &Document,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError> {
        check_effective_date(document)?;
        in_tx!(self, Retry::No, |conn| {
            if let Some(r) = idempotency {
                let key = r.key.as_str();
                execute(conn, q::DELETE_EXPIRED_IDEMPOTENCY_KEY, &[&r.tenant_id, &key, &r.created_at]).await?;
                let status = i16::try_from(r.status_code)
                    .map_err(|_| StoreError::Other(anyhow::anyhow!("status code {} out of range", r.status_code)))?;
                let params: [&dyn ToSql; 9] = [
                    &r.tenant_id,
                    &key,
                    &r.operation_id.as_str(),
                    &r.request_hash.as_str(),
                    &status,
                    &r.response_headers.as_str(),
                    &r.response_body.as_slice(),
                    &r.created_at,
                    &r.expires_at,
                ];
                execute(conn, q::INSERT_IDEMPOTENCY, &params).await?;
            }
            let d = document;
            let params: [&dyn ToSql; 14] = [
                &d.id,
                &d.tenant_id,
                &d.title.as_str(),
                &d.summary.as_deref(),
                &d.body.as_deref(),
                &d.doc_type.as_str(),
                &d.jurisdiction.as_deref(),
                &d.status.as_str(),
                &d.effective_date,
                &d.created_by.as_str(),
                &d.updated_by.as_str(),
                &d.created_at,
                &d.updated_at,
                &d.version,
            ];
            execute(conn, q::INSERT_DOCUMENT, &params).await?;
            insert_tags(conn, d).await?;
            write_ledger(conn, ledger).await
        })
    }

    async fn get_document(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_document(conn, tenant_id, id).await)
    }

    async fn update_document(
        &self,
        document: &Document,
        expected_version: i64,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Document>, StoreError> {
        check_effective_date(document)?;
        in_tx!(self, Retry::No, |conn| {
            let d = document;
            let params: [&dyn ToSql; 12] = [
                &d.title.as_str(),
                &d.summary.as_deref(),
                &d.body.as_deref(),
                &d.doc_type.as_str(),
                &d.jurisdiction.as_deref(),
                &d.status.as_str(),
                &d.effective_date,
                &d.updated_by.as_str(),
                &d.updated_at,
                &d.tenant_id,
                &d.id,
                &expected_version,
            ];
            if execute(conn, q::UPDATE_DOCUMENT, &params).await? == 0 {
                return Ok(match live_document_version(conn, d.tenant_id, d.id).await? {
                    None => Update::NotFound,
                    Some(current_version) => Update::VersionMismatch { current_version },
                });
            }
            execute(conn, q::DELETE_DOCUMENT_TAGS, &[&d.tenant_id, &d.id]).await?;
            insert_tags(conn, d).await?;
            let updated = read_document(conn, d.tenant_id, d.id)
                .await?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("document vanished inside its transaction")))?;
            write_ledger(conn, ledger).await?;
            Ok(Update::Updated(updated))
        })
    }

    async fn delete_document(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        by: &str,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<()>, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let params: [&dyn ToSql; 5] = [&now, &by, &tenant_id, &id, &expected_version];
            if execute(conn, q::SOFT_DELETE_DOCUMENT, &params).await? == 1 {
                write_ledger(conn, ledger).await?;
                return Ok(Update::Updated(()));
            }
            Ok(match live_document_version(conn, tenant_id, id).await? {
                None => Update::NotFound,
                Some(current_version) => Update::VersionMismatch { current_version },
            })
        })
    }

    async fn list_documents(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        sort: DocumentSort,
        after: Option<&DocumentCursor>,
        limit: u32,
        count: bool,
    ) -> Result<DocumentPage, StoreError> {
        let limit = limit.max(1);
        let page = &q::list_documents(tenant_id, filter, sort, after, i64::from(limit) + 1)?;
        let tail = &if continues_into_undated(sort, after) {
            Some(q::undated_documents(tenant_id, filter, i64::from(limit) + 1)?)
        } else {
            None
        };
        let total = &if count { Some(q::count_documents(tenant_id, filter)?) } else { None };
        // One transaction; see docs/data-model.md on what the count and the page can see under READ COMMITTED.
        in_tx!(self, Retry::Yes, |conn| {
            let mut items =
                assembled_rows(conn, page).await?.iter().map(document_from).collect::<Result<Vec<_>, _>>()?;
            if let Some(tail) = tail.as_ref().filter(|_| items.len() <= limit as usize) {
                for row in assembled_rows(conn, tail).await? {
                    items.push(document_from(&row)?);
                }
            }
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|d| cursor_of(d, sort.key))
            } else {
                None
            };
            load_tags(conn, tenant_id, &mut items).await?;
            let total = match total {
                Some(statement) => {
                    let n: i64 = assembled_rows(conn, statement)
                        .await?
                        .first()
                        .map(|r| required(r, 0))
                        .transpose()?
                        .unwrap_or(0);
                    Some(n as u64)
                }
                None => None,
            };
            Ok(DocumentPage { items, next, total })
        })
    }

    async fn get_idempotency(
        &self,
        tenant_id: Uuid,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::GET_IDEMPOTENCY, &[&tenant_id, &key, &now]).await?.first().map(idempotency_from).transpose()
        })
    }
}

/// Creates an empty database `name` on the server of `server_connection_string` and returns a connection
/// string for it. For the contract tests: each test gets its own database.
pub async fn create_test_database(server_connection_string: &str, name: &str) -> Result<String, StoreError> {
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Other(anyhow::anyhow!("test database names are [A-Za-z0-9_]+, got {name:?}")));
    }
    let connector = MssqlConnector::new(&SecretString::from(server_connection_string.to_owned()))?;
    let mut conn = connector.connect().await?;
    batch(&mut conn, &format!("CREATE DATABASE [{name}]")).await?;
    let without_database: Vec<&str> = server_connection_string
        .split(';')
        .filter(|part| {
            let key = part.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !part.trim().is_empty() && key != "database" && key != "initial catalog"
        })
        .collect();
    Ok(format!("{};Database={name}", without_database.join(";")))
}
