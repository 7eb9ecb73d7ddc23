//! The SQL Server store: [`MssqlStore`], the storage contract over a bb8 pool of tiberius connections, and its
//! building blocks (connections and the pool, Entra ID tokens, error classification, retry, and every T-SQL
//! statement in `queries`).
//!
//! Every operation runs in one explicit transaction (`XACT_ABORT ON` rolls back on any error). Only
//! idempotent operations are retried on transient faults ([`Retry::Yes`]): reads, migrations, usage inserts
//! keyed by event id, leases. A debit or a conditional update is not, because a commit whose answer was
//! lost may have happened; the caller sees 503 and decides.

pub mod connection;
pub mod errors;
pub(crate) mod integration;
pub mod queries;
pub mod retry;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use secrecy::SecretString;
use tiberius::{ColumnData, Row, ToSql};
use uuid::Uuid;

use crate::store::migrations::{self, AppliedMigration, MigrationReport};
use crate::store::model::*;
use crate::store::usage::*;
use crate::store::{
    AuditStore, DocumentStore, IntegrationStore, JobRun, MeteringStore, OperationsStore, PlanStore, StoreError,
    TenantStore, Update, UsageStore,
};
use crate::store::{documents::*, operations::*, plans::*, tenants::*};
use connection::{MssqlClient, MssqlConnector, MssqlManager, pool_error, pool_with_timeout};
use errors::classify;
use queries as q;
use retry::{RetryPolicy, random_jitter, retry};

mod usage;

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
    /// Stamps the migration history (`applied_at`).
    clock: Arc<dyn crate::clock::Clock>,
}

impl std::fmt::Debug for MssqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlStore").field("pool", &self.pool.state()).finish()
    }
}

impl MssqlStore {
    /// Builds the pool; connections are made on first use, so a database that is briefly away does not stop startup.
    pub async fn open(connection_string: &SecretString) -> Result<Self, StoreError> {
        Self::open_with_clock(connection_string, Arc::new(crate::clock::SystemClock)).await
    }

    /// [`Self::open`] with the clock that stamps the migration history (tests inject a fixed one).
    pub async fn open_with_clock(
        connection_string: &SecretString,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Self, StoreError> {
        let connector = Arc::new(MssqlConnector::new(connection_string)?);
        // Three attempts bounded by POOL_WAIT each: a request fails within about 16 s when the database is away,
        // well inside the Functions HTTP limit, instead of queueing for minutes.
        let retry = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        Ok(MssqlStore {
            pool: pool_with_timeout(connector, POOL_SIZE, POOL_WAIT).await?,
            retry: Arc::new(retry),
            clock,
        })
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

fn quota_from(row: &Row) -> Result<QuotaUsage, StoreError> {
    let policy = text(row, 4)?;
    Ok(QuotaUsage {
        tenant_id: required(row, 0)?,
        period_start: required(row, 1)?,
        period_end: required(row, 2)?,
        quota_units: required(row, 3)?,
        overage_policy: OveragePolicy::parse(&policy).ok_or_else(|| corrupt("overage policy", &policy))?,
        units_used: required(row, 5)?,
        overage_units: required(row, 6)?,
    })
}

pub(super) async fn read_quota(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    start: NaiveDate,
) -> Result<Option<QuotaUsage>, StoreError> {
    rows(conn, q::GET_QUOTA, &[&tenant_id, &start]).await?.first().map(quota_from).transpose()
}

/// An audit event row, in the column order of `audit_columns!`.
fn audit_from(row: &Row) -> Result<AuditEvent, StoreError> {
    let outcome = text(row, 11)?;
    let opt = |i| column::<&str>(row, i).map(|v| v.map(str::to_owned));
    Ok(AuditEvent {
        id: required(row, 0)?,
        chain: text(row, 1)?,
        chain_seq: required(row, 2)?,
        tenant_id: column(row, 3)?,
        occurred_at: required(row, 4)?,
        actor_oid: opt(5)?,
        actor_app_id: opt(6)?,
        actor_tenant_id: opt(7)?,
        action: text(row, 8)?,
        resource_type: text(row, 9)?,
        resource_id: opt(10)?,
        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| corrupt("audit outcome", &outcome))?,
        request_id: opt(12)?,
        summary: text(row, 13)?,
        before_hash: opt(14)?,
        after_hash: opt(15)?,
        limiter_decision: opt(16)?,
        prev_hash: text(row, 17)?,
        hash: text(row, 18)?,
    })
}

/// Debits a quota period (created on first use), refusing under `block` what would exceed the quota.
async fn debit_period(conn: &mut MssqlClient, d: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
    let policy = d.overage_policy.as_str();
    let ensure: [&dyn ToSql; 6] = [&d.tenant_id, &d.period_start, &d.period_end, &d.quota_units, &policy, &d.now];
    execute(conn, q::ENSURE_QUOTA_PERIOD, &ensure).await?;
    let updated = rows(conn, q::DEBIT_QUOTA, &[&d.tenant_id, &d.period_start, &d.units, &d.now]).await?;
    match updated.first() {
        Some(row) => {
            let (units_used, quota_units) = (required(row, 0)?, required(row, 1)?);
            if crosses_threshold(units_used - d.units, units_used, quota_units) {
                integration::emit_quota_thresholds(conn, d.tenant_id, d.period_start, d.now).await?;
            }
            Ok(QuotaOutcome::Accepted { units_used, quota_units, overage_units: required(row, 2)? })
        }
        None => {
            let current = read_quota(conn, d.tenant_id, d.period_start)
                .await?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("quota row vanished inside its transaction")))?;
            Ok(QuotaOutcome::Rejected { units_used: current.units_used, quota_units: current.quota_units })
        }
    }
}

/// One GCRA step for (tenant, client) under the state row's update lock; written only when allowed.
async fn take_rate(conn: &mut MssqlClient, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
    let client = take.client_id.as_str();
    let stored: Option<i64> = rows(conn, q::LOCK_RATE_STATE, &[&take.tenant_id, &client])
        .await?
        .first()
        .map(|r| required(r, 0))
        .transpose()?;
    let decision = gcra(stored, take);
    if decision.allowed {
        execute(conn, q::UPSERT_RATE_STATE, &[&take.tenant_id, &client, &decision.tat_micros]).await?;
    }
    Ok(decision)
}

/// Writes a request's [`Ledger`] in the transaction of the write that carried the request out.
async fn write_ledger(conn: &mut MssqlClient, ledger: Option<&Ledger>) -> Result<(), StoreError> {
    if let Some(ledger) = ledger {
        insert_usage_event(conn, &ledger.usage).await?;
        append_audit(conn, ledger.audit.as_slice()).await?;
    }
    Ok(())
}

/// Inserts one usage event unless its `event_id` is stored already; returns the rows inserted (0 or 1).
pub(super) async fn insert_usage_event(conn: &mut MssqlClient, e: &UsageEvent) -> Result<u64, StoreError> {
    let status = e.status as i16;
    let (units, overage) = (e.units as i32, e.overage_units as i32);
    let params: [&dyn ToSql; 17] = [
        &e.event_id,
        &e.request_id.as_str(),
        &e.tenant_id,
        &e.client_id.as_deref(),
        &e.principal_id.as_deref(),
        &e.operation_id.as_str(),
        &e.method.as_str(),
        &e.route_template.as_str(),
        &status,
        &units,
        &e.billable,
        &overage,
        &e.latency_micros,
        &e.request_bytes,
        &e.response_bytes,
        &e.occurred_at,
        &e.recorded_at,
    ];
    execute(conn, q::INSERT_USAGE_EVENT, &params).await
}

/// Appends audit events inside the caller's transaction. Chains are locked in key order (each head read
/// `WITH (UPDLOCK, HOLDLOCK)`), so two batches touching the same chains wait for each other instead of
/// deadlocking; within a chain, events keep their order. Events already stored (a retried batch) are skipped.
async fn append_audit(conn: &mut MssqlClient, events: &[AuditEventInput]) -> Result<(), StoreError> {
    let mut ordered: Vec<&AuditEventInput> = events.iter().collect();
    ordered.sort_by_key(|e| audit_chain_key(e.tenant_id)); // stable: a chain's events keep their order
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    for input in ordered {
        if !rows(conn, q::AUDIT_EVENT_EXISTS, &[&input.id]).await?.is_empty() {
            continue;
        }
        let chain = audit_chain_key(input.tenant_id);
        let (seq, prev) = match heads.get(&chain) {
            Some(head) => head.clone(),
            None => match rows(conn, q::AUDIT_CHAIN_HEAD, &[&chain.as_str()]).await?.first() {
                Some(row) => (required::<i64>(row, 0)?, text(row, 1)?),
                None => (0, AUDIT_GENESIS_HASH.to_owned()),
            },
        };
        let e = input.seal(seq + 1, &prev);
        let params: [&dyn ToSql; 19] = [
            &e.id,
            &e.chain.as_str(),
            &e.chain_seq,
            &e.tenant_id,
            &e.occurred_at,
            &e.actor_oid.as_deref(),
            &e.actor_app_id.as_deref(),
            &e.actor_tenant_id.as_deref(),
            &e.action.as_str(),
            &e.resource_type.as_str(),
            &e.resource_id.as_deref(),
            &e.outcome.as_str(),
            &e.request_id.as_deref(),
            &e.summary.as_str(),
            &e.before_hash.as_deref(),
            &e.after_hash.as_deref(),
            &e.limiter_decision.as_deref(),
            &e.prev_hash.as_str(),
            &e.hash.as_str(),
        ];
        execute(conn, q::INSERT_AUDIT_EVENT, &params).await?;
        heads.insert(chain, (e.chain_seq, e.hash));
    }
    Ok(())
}

#[async_trait]
impl MeteringStore for MssqlStore {
    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError> {
        in_tx!(self, Retry::No, |conn| debit_period(conn, debit).await)
    }

    async fn refund_quota(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        overage_units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        in_tx!(self, Retry::No, |conn| {
            execute(conn, q::REFUND_QUOTA, &[&tenant_id, &period_start, &units, &overage_units, &now]).await.map(drop)
        })
    }

    async fn quota_usage(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Option<QuotaUsage>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| read_quota(conn, tenant_id, period_start).await)
    }

    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
        in_tx!(self, Retry::No, |conn| take_rate(conn, take).await)
    }

    async fn admit(&self, admission: &Admission) -> Result<AdmissionDecision, StoreError> {
        in_tx!(self, Retry::No, |conn| {
            let rate = take_rate(conn, &admission.rate).await?;
            let debit = match &admission.debit {
                Some(d) if rate.allowed => Some(debit_period(conn, d).await?),
                _ => None,
            };
            Ok(AdmissionDecision { rate, debit })
        })
    }

    async fn record_usage(&self, usage: &[UsageEvent], audit: &[AuditEventInput]) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let mut inserted = 0;
            for e in usage {
                inserted += insert_usage_event(conn, e).await?;
            }
            append_audit(conn, audit).await?;
            Ok(inserted)
        })
    }

    async fn count_usage_events(&self, tenant_id: Uuid) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let row = rows(conn, q::COUNT_USAGE_EVENTS, &[&tenant_id]).await?;
            let n: i64 = row.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
            Ok(n as u64)
        })
    }
}

#[async_trait]
impl AuditStore for MssqlStore {
    async fn list_audit_events(
        &self,
        tenant_id: Option<Uuid>,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Page<AuditEvent, AuditCursor>, StoreError> {
        let limit = limit.max(1);
        let statement = &q::list_audit_events(tenant_id, filter, after, i64::from(limit) + 1);
        in_tx!(self, Retry::Yes, |conn| {
            let mut items =
                assembled_rows(conn, statement).await?.iter().map(audit_from).collect::<Result<Vec<_>, _>>()?;
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|e| AuditCursor { occurred_at: e.occurred_at, id: e.id })
            } else {
                None
            };
            Ok(Page { items, next })
        })
    }

    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::AUDIT_CHAIN, &[&chain, &after_seq, &top]).await?.iter().map(audit_from).collect()
        })
    }
}

#[async_trait]
impl IntegrationStore for MssqlStore {
    async fn apply_integration_event(
        &self,
        inbox: &InboxEntry,
        effect: &IntegrationEffect,
    ) -> Result<ApplyOutcome, StoreError> {
        // Not retried: the inbox row makes a second run harmless, but a lost commit answer is for the host to
        // resolve by redelivering (then the inbox says Duplicate).
        let result = in_tx!(self, Retry::No, |conn| integration::apply(conn, inbox, effect).await);
        // XACT_ABORT rolled the whole transaction back, inbox row included.
        match result {
            Err(StoreError::ForeignKey(reason) | StoreError::Conflict(reason)) => Ok(ApplyOutcome::Rejected(reason)),
            other => other,
        }
    }

    async fn quarantine_message(&self, message: &QuarantinedMessage) -> Result<(), StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let m = message;
            if !rows(conn, q::GET_QUARANTINED, &[&m.id]).await?.is_empty() {
                return Ok(()); // a retried insert whose first commit went through
            }
            let params: [&dyn ToSql; 8] = [
                &m.id,
                &m.received_at,
                &m.message_id.as_deref(),
                &m.delivery_count,
                &m.content_type.as_deref(),
                &m.reason.as_str(),
                &m.raw_body.as_str(),
                &m.replayed_at,
            ];
            execute(conn, q::INSERT_QUARANTINE, &params).await.map(drop)
        })
    }

    async fn list_quarantine(&self, limit: u32) -> Result<Vec<QuarantinedMessage>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::LIST_QUARANTINE, &[&top]).await?.iter().map(integration::quarantined_from).collect()
        })
    }

    async fn get_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedMessage>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::GET_QUARANTINED, &[&id]).await?.first().map(integration::quarantined_from).transpose()
        })
    }

    async fn mark_quarantine_replayed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        in_tx!(self, Retry::Yes, |conn| Ok(execute(conn, q::MARK_QUARANTINE_REPLAYED, &[&id, &now]).await? == 1))
    }

    async fn pending_outbox(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::PENDING_OUTBOX, &[&now, &top]).await?.iter().map(integration::outbox_from).collect()
        })
    }

    async fn mark_outbox_sent(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        // Idempotent: only an unsent row changes.
        in_tx!(self, Retry::Yes, |conn| execute(conn, q::MARK_OUTBOX_SENT, &[&id, &now]).await.map(drop))
    }

    async fn mark_outbox_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(1000).collect();
        let error = error.as_str();
        in_tx!(self, Retry::No, |conn| {
            execute(conn, q::MARK_OUTBOX_FAILED, &[&id, &error, &next_attempt_at]).await.map(drop)
        })
    }

    async fn list_outbox(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::LIST_OUTBOX, &[&after_seq, &top]).await?.iter().map(integration::outbox_from).collect()
        })
    }
}

#[async_trait]
impl UsageStore for MssqlStore {
    async fn rollup_state(&self) -> Result<RollupState, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage::rollup_state(conn).await)
    }

    async fn rollup_step(&self, step: &RollupStep) -> Result<RollupProgress, StoreError> {
        // Idempotent: the step recomputes rollups from raw events and moves the watermark in one transaction.
        in_tx!(self, Retry::Yes, |conn| usage::rollup_step(conn, step).await)
    }

    async fn rollup_rerun_hour(&self, hour: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage::rollup_rerun_hour(conn, hour, now).await)
    }

    async fn purge_usage_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage::purge(conn, before, limit).await)
    }

    async fn set_rollup_lagging(
        &self,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        event: Option<&OutboxMessage>,
    ) -> Result<bool, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage::set_lagging(conn, since, now, event).await)
    }

    async fn usage_rollups(
        &self,
        tenant_id: Uuid,
        granularity: RollupGranularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRollup>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage::usage_rollups(conn, tenant_id, granularity, from, to).await)
    }

    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage::usage_report(conn, query).await)
    }

    async fn statement_drafts(
        &self,
        period_start: NaiveDate,
        period_end: NaiveDate,
        limit: u32,
    ) -> Result<Vec<StatementDraft>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| usage::statement_drafts(conn, period_start, period_end, limit).await)
    }

    async fn insert_billing_statement(
        &self,
        statement: &BillingStatement,
        event: &OutboxMessage,
    ) -> Result<bool, StoreError> {
        // Idempotent: a retried insert finds the statement and writes nothing (the event went with it).
        in_tx!(self, Retry::Yes, |conn| usage::insert_statement(conn, statement, event).await)
    }

    async fn set_closed_through(&self, period_start: NaiveDate, now: DateTime<Utc>) -> Result<(), StoreError> {
        let position: i64 = period_start.format("%Y%m%d").to_string().parse().expect("digits");
        in_tx!(self, Retry::Yes, |conn| usage::put_position(conn, ROLLUP_CLOSED_THROUGH, position, now).await)
    }

    async fn list_billing_statements(&self, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::LIST_STATEMENTS, &[&tenant_id]).await?.iter().map(usage::statement_from).collect()
        })
    }

    async fn get_billing_statement(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
    ) -> Result<Option<BillingStatement>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::GET_STATEMENT, &[&tenant_id, &period_start])
                .await?
                .first()
                .map(usage::statement_from)
                .transpose()
        })
    }
}

// After `in_tx!`, which they use.
mod documents;
mod operations;
mod plans;
mod tenants;
use documents::assembled_rows;
use tenants::read_tenant;

/// Every T-SQL statement constant the SQL Server store runs, one list per file, for `store::tsql_check`
/// (parse check) and the completeness test below; `queries::ALL` holds what has not moved to its aggregate yet.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const STATEMENTS: &[&[(&str, &str)]] =
    &[queries::ALL, operations::STATEMENTS, tenants::STATEMENTS, plans::STATEMENTS, documents::STATEMENTS];

#[cfg(test)]
mod tests {
    use std::path::Path;

    /// The `const NAME: &str` items of `source` whose value is T-SQL (a statement keyword, a `dbo.` table or
    /// a statement built by `concat!`/a `tsql_` macro), read from the source text.
    fn tsql_constants(source: &str) -> Vec<String> {
        let keywords =
            ["SELECT", "INSERT", "UPDATE", "DELETE", "IF ", "DECLARE", "SET ", "EXEC", "MERGE", "WITH", "CREATE"];
        let mut names = Vec::new();
        for (at, _) in source.match_indices("const ") {
            let rest = &source[at + "const ".len()..];
            let Some((name, tail)) = rest.split_once(": &str") else { continue };
            if !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') || name == "STATEMENTS" {
                continue;
            }
            let value = tail.trim_start().trim_start_matches('=').trim_start();
            let value = &value[..value.find(";\n").unwrap_or(value.len())];
            let text = value.trim_start_matches('"');
            if value.contains("dbo.")
                || value.starts_with("concat!")
                || value.starts_with("tsql_")
                || keywords.iter().any(|k| text.starts_with(k))
            {
                names.push(name.to_owned());
            }
        }
        names
    }

    /// Every T-SQL constant of `store/mssql/*.rs` is in its file's list, and every file's list is in
    /// [`super::STATEMENTS`], so `store::tsql_check` parses every statement the store can run.
    #[test]
    fn every_tsql_constant_is_registered_for_the_parse_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/mssql");
        let registry = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
        let registry = &registry[registry.find("pub(crate) const STATEMENTS").unwrap()..];
        let registry = &registry[..registry.find("];").unwrap()];
        let mut failures = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
        files.sort();
        for path in files {
            let source = std::fs::read_to_string(&path).unwrap();
            let source = source.split("#[cfg(test)]\nmod tests").next().unwrap();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let constants = tsql_constants(source);
            if constants.is_empty() {
                continue;
            }
            let list_name = if stem == "queries" { "ALL" } else { "STATEMENTS" };
            let Some(start) = source.find(&format!("const {list_name}: &[(&str, &str)]")) else {
                failures.push(format!("{stem}.rs has T-SQL constants but no {list_name} list"));
                continue;
            };
            let list = &source[start..];
            let list = &list[..list.find("];").unwrap()];
            for name in constants {
                if !list.contains(&format!("(\"{name}\", {name})")) {
                    failures.push(format!("{stem}.rs: {name} is missing from its {list_name}"));
                }
            }
            if !registry.contains(&format!("{stem}::{list_name}")) {
                failures.push(format!("mssql::STATEMENTS does not list {stem}::{list_name}"));
            }
        }
        assert!(failures.is_empty(), "unregistered T-SQL:\n{}", failures.join("\n"));
    }

    #[test]
    fn the_scanner_finds_tsql_constants_only() {
        let source = "pub(crate) const GET: &str = \"SELECT 1\";\nconst NAME: &str = \"meterline\";\n\
                      pub const CAT: &str = concat!(\"SELECT \", \"1\");\npub(crate) const STATEMENTS: &[(&str, &str)] = &[];\n";
        assert_eq!(tsql_constants(source), ["GET", "CAT"]);
    }
}
