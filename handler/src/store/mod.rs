//! The storage contract every store implements, and the stores: embedded SQLite (default) and SQL Server.
//!
//! Handlers and jobs only see `Arc<dyn Store>`. Each implementation must give the same answers and the
//! same concurrency guarantees; `tests/e2e/store_contract.rs` runs one suite against every store.

mod migrations;
pub mod model;
pub mod mssql;
mod sqlite;
#[cfg(test)]
mod tsql_check;
pub mod usage;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::config::StoreConfig;

pub use migrations::{AppliedMigration, Migration, MigrationReport, SQLITE as SQLITE_MIGRATIONS};
pub use model::*;
pub use sqlite::SqliteStore;
pub use usage::*;

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
///
/// A write method that carries out an API request takes the request's [`Ledger`] and, if the write takes
/// effect, inserts its usage event and appends its audit event in the write's own transaction (as
/// [`Store::record_usage`] would, ids already stored being skipped): a crash can never keep the change and
/// lose its records. Pass `None` for writes that are not an API request's (seeding, jobs, tests).
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

    // Plans and tenants.

    /// Inserts a plan; `Conflict` if the code exists.
    async fn create_plan(&self, plan: &Plan, ledger: Option<&Ledger>) -> Result<(), StoreError>;

    async fn get_plan(&self, code: &str) -> Result<Option<Plan>, StoreError>;

    /// Inserts a tenant; `Conflict` if the id or Entra tenant id exists, `ForeignKey` if the plan does not.
    async fn create_tenant(&self, tenant: &Tenant, ledger: Option<&Ledger>) -> Result<(), StoreError>;

    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError>;

    async fn get_tenant_by_entra_id(&self, entra_tenant_id: Uuid) -> Result<Option<Tenant>, StoreError>;

    /// Tenants ordered by (created_at, id), strictly after `after`; at most `limit` (the store fetches one
    /// more to know whether a next page exists). Rows inserted while paging never duplicate or hide others.
    async fn list_tenants(
        &self,
        after: Option<&TenantCursor>,
        limit: u32,
    ) -> Result<Page<Tenant, TenantCursor>, StoreError>;

    /// Sets the status if the row is still at `expected_version`; bumps the version and `updated_at`. A change
    /// from active to suspended, or back, writes its `tenant.suspended` / `tenant.reactivated` event to the
    /// outbox in the same transaction.
    async fn set_tenant_status(
        &self,
        id: Uuid,
        status: TenantStatus,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<Update<Tenant>, StoreError>;

    /// Applies `changes` if the row is still at `expected_version` (`ForeignKey` for an unknown plan); a status
    /// change writes its outbox event in the same transaction, like [`Store::set_tenant_status`].
    async fn update_tenant(
        &self,
        id: Uuid,
        changes: &TenantChanges,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Tenant>, StoreError>;

    /// All plans, ordered by code (there are few).
    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError>;

    /// Replaces a plan's fields (all but code and created_at) if it is still at `expected_version`, and with
    /// `costs` also all of its cost overrides, in one transaction.
    async fn update_plan(
        &self,
        plan: &Plan,
        expected_version: i64,
        costs: Option<&[(String, i64)]>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Plan>, StoreError>;

    /// The plan's overrides of operation costs, sorted by operation id (empty: the defaults apply).
    async fn plan_operation_costs(&self, plan_code: &str) -> Result<Vec<(String, i64)>, StoreError>;

    /// Replaces all of a plan's cost overrides in one transaction (`ForeignKey` for an unknown plan).
    async fn set_plan_operation_costs(&self, plan_code: &str, costs: &[(String, i64)]) -> Result<(), StoreError>;

    /// A tenant's API clients, oldest first.
    async fn list_api_clients(&self, tenant_id: Uuid) -> Result<Vec<ApiClient>, StoreError>;

    /// Revokes a pending or active client of `tenant_id` (a client of another tenant is `NotFound`): sets
    /// `status = 'revoked'`, `revoked_at` and bumps the version. Idempotent: revoking a revoked (or rejected)
    /// client changes nothing and returns `Updated` with the row as it is (its first `revoked_at`, its version).
    async fn revoke_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError>;

    // Documents: every method is scoped by tenant; another tenant's document does not exist.

    /// Inserts a document with its tags and, in the same transaction, the idempotency record of the
    /// request that created it. `Conflict` when the idempotency key is taken (the caller then replays); a
    /// record that has expired by the new record's `created_at` no longer takes the key and is replaced.
    async fn create_document(
        &self,
        document: &Document,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError>;

    /// A live (not deleted) document of the tenant.
    async fn get_document(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError>;

    /// Replaces every field and the tags of a live document if it is still at `expected_version`; the
    /// stored version becomes `expected_version + 1` whatever `document.version` says.
    async fn update_document(
        &self,
        document: &Document,
        expected_version: i64,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Document>, StoreError>;

    /// Soft-deletes a live document if it is still at `expected_version`.
    async fn delete_document(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        by: &str,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<()>, StoreError>;

    /// One keyset page of live documents matching `filter`, in `sort` order with id as the tie-breaker.
    /// `tags_any` may hold at most 20 tags (more is an error: the API must refuse them first).
    async fn list_documents(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        sort: DocumentSort,
        after: Option<&DocumentCursor>,
        limit: u32,
        count: bool,
    ) -> Result<DocumentPage, StoreError>;

    /// A stored idempotency record that has not expired at `now`.
    async fn get_idempotency(
        &self,
        tenant_id: Uuid,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;

    /// Registers an API client with its roles; `Conflict` if the same tenant holds a pending or active
    /// registration of the same (directory, application). Other tenants' registrations never conflict.
    async fn create_api_client(&self, client: &ApiClient, ledger: Option<&Ledger>) -> Result<(), StoreError>;

    /// Every registration, of any tenant and status, of the application `app_id` for the directory `directory_id`
    /// (usually none or one; [`crate::auth::guard`] decides which applies), oldest first, with roles.
    async fn api_clients_for_app(&self, directory_id: Uuid, app_id: &str) -> Result<Vec<ApiClient>, StoreError>;

    /// Approves or rejects a pending registration of `tenant_id` (`NotFound` for another tenant's or an unknown
    /// id), bumping its version, in one transaction with the ledger. `Conflict` (nothing changes) when it is not
    /// pending, or, for an approval, when its directory is another tenant's own directory or another tenant holds
    /// an active registration of the same (directory, application).
    async fn decide_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        decision: &ClientDecision,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError>;

    // Single-runner jobs.

    /// Takes the lease if it is free, expired, or already held by the same holder (a renewal).
    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<bool, StoreError>;

    /// Gives the lease up if `holder` holds it; returns whether it did.
    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError>;

    // Metering primitives: each is atomic across processes sharing the store.

    /// Debits the quota of the debit's period, never beyond the quota under `block`, whatever the concurrency.
    async fn debit_quota(&self, debit: &QuotaDebit) -> Result<QuotaOutcome, StoreError>;

    /// Gives back a debit (the operation it paid for failed). Counters never go below zero.
    async fn refund_quota(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
        units: i64,
        overage_units: i64,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// The current counter of a period, if any debit created it.
    async fn quota_usage(&self, tenant_id: Uuid, period_start: NaiveDate) -> Result<Option<QuotaUsage>, StoreError>;

    /// One GCRA step for (tenant, client), computed with [`model::gcra`] under a row lock.
    async fn take_rate_limit(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError>;

    /// One request's admission in ONE transaction: [`Store::take_rate_limit`], then, if the rate limit allowed
    /// it, [`Store::debit_quota`]. One write instead of two is what the request path pays.
    async fn admit(&self, admission: &Admission) -> Result<AdmissionDecision, StoreError>;

    /// Inserts usage events in one transaction, skipping event ids already stored; returns how many were new.
    async fn record_usage_events(&self, events: &[UsageEvent]) -> Result<u64, StoreError> {
        self.record_usage(events, &[]).await
    }

    /// Inserts usage events and appends audit events in ONE transaction; returns how many usage events were new.
    ///
    /// Usage events already stored (by event id) and audit events already stored (by id) are skipped, so the
    /// whole call may be retried. Audit events are appended in slice order to their chains
    /// ([`audit_chain_key`]): each gets the next `chain_seq` and is hashed with [`AuditEventInput::seal`]
    /// after the chain's head, read in the same transaction under a lock that makes concurrent appenders
    /// (other processes too) wait, so a chain never forks. There is no method that updates or deletes an
    /// audit event.
    async fn record_usage(&self, usage: &[UsageEvent], audit: &[AuditEventInput]) -> Result<u64, StoreError>;

    /// One keyset page of audit events of a tenant (`None`: the platform events, without a tenant) matching
    /// `filter`, newest first (`occurred_at DESC, id DESC`), strictly after `after`; at most `limit`.
    async fn list_audit_events(
        &self,
        tenant_id: Option<Uuid>,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Page<AuditEvent, AuditCursor>, StoreError>;

    /// The events of `chain` with `chain_seq > after_seq`, in `chain_seq` order; at most `limit`.
    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;

    /// How many usage events a tenant has (all time).
    async fn count_usage_events(&self, tenant_id: Uuid) -> Result<u64, StoreError>;

    // Integration: the Service Bus inbox, the quarantine and the outbox.

    /// Applies an integration message: inserts its inbox row and performs `effect` in ONE transaction.
    /// `Duplicate` when `(source, event_id)` is in the inbox already (concurrent deliveries of one message
    /// apply it once); `Rejected` (nothing written) when the effect can never apply as it is.
    async fn apply_integration_event(
        &self,
        inbox: &InboxEntry,
        effect: &IntegrationEffect,
    ) -> Result<ApplyOutcome, StoreError>;

    /// Stores a message that can never be applied.
    async fn quarantine_message(&self, message: &QuarantinedMessage) -> Result<(), StoreError>;

    /// Quarantined messages, newest first; at most `limit`.
    async fn list_quarantine(&self, limit: u32) -> Result<Vec<QuarantinedMessage>, StoreError>;

    async fn get_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedMessage>, StoreError>;

    /// Records that an operator replayed a quarantined message successfully; false if there is no such message.
    async fn mark_quarantine_replayed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Outbox rows not sent yet and available at `now`, in `(available_at, seq)` order; at most `limit`.
    async fn pending_outbox(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;

    /// Marks an outbox row sent (only once: a row sent already keeps its first `sent_at`).
    async fn mark_outbox_sent(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records a failed publish attempt: `attempts + 1`, the error, and the time of the next attempt.
    async fn mark_outbox_failed(&self, id: Uuid, error: &str, next_attempt_at: DateTime<Utc>)
    -> Result<(), StoreError>;

    /// Every outbox row, sent or not, in `seq` order after `after_seq`; at most `limit` (operators, tests).
    async fn list_outbox(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;

    // Usage aggregation and billing (see `jobs::rollup` and docs/data-model.md, "Usage rollup").

    /// The rollup's progress.
    async fn rollup_state(&self) -> Result<RollupState, StoreError>;

    /// One bounded rollup step in ONE transaction: scans at most `batch_size` events past the watermark, moves
    /// the watermark to the highest settled `seq` among them, brings every hour and day window those events
    /// fall in up to the new watermark, and sets `complete_through` to `settled_before` when the scan reached
    /// the end. Afterwards each rollup row equals the aggregate of its window's raw events with `seq` up to the
    /// watermark: SQL Server recomputes the windows from raw events (a lower `seq` can commit after a higher
    /// one there), SQLite adds the sums of the new events (its one writer commits `seq` in order). Either way
    /// a step that runs twice finds the watermark moved and changes nothing; steps of two processes serialize.
    async fn rollup_step(&self, step: &RollupStep) -> Result<RollupProgress, StoreError>;

    /// Recomputes, for every tenant, the hour window starting at `hour` and then the day window containing it,
    /// from raw events with `seq` up to the watermark; returns how many rollup rows it wrote.
    async fn rollup_rerun_hour(&self, hour: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Deletes at most `limit` rolled-up events (`seq <= watermark`) recorded before `before`, oldest `seq` first.
    async fn purge_usage_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Starts (`Some`) or ends (`None`) a lag episode. Starting one that is already running changes nothing;
    /// starting a new one writes `event` to the outbox in the same transaction. Returns whether the state changed.
    async fn set_rollup_lagging(
        &self,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        event: Option<&OutboxMessage>,
    ) -> Result<bool, StoreError>;

    /// Rollup rows of one tenant and granularity with windows starting in `[from, to)`, in key order.
    async fn usage_rollups(
        &self,
        tenant_id: Uuid,
        granularity: RollupGranularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRollup>, StoreError>;

    /// The usage of one tenant per window, operation and client: the rollups plus the events past the watermark
    /// (the tail), read from one snapshot, so no event is counted twice or missed while a rollup step commits.
    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    /// Tenants created before `period_end` that have no statement for the period yet (at most `limit`, by id),
    /// with their plan, quota snapshot and the period's billable and overage units from the day rollups.
    async fn statement_drafts(
        &self,
        period_start: NaiveDate,
        period_end: NaiveDate,
        limit: u32,
    ) -> Result<Vec<StatementDraft>, StoreError>;

    /// Writes a statement and its outbox event in one transaction; `false` (and nothing written) when the
    /// tenant already has a statement for the period. Statements are never updated.
    async fn insert_billing_statement(
        &self,
        statement: &BillingStatement,
        event: &OutboxMessage,
    ) -> Result<bool, StoreError>;

    /// Records that every statement of the month starting `period_start` is written.
    async fn set_closed_through(&self, period_start: NaiveDate, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// A tenant's statements, newest period first.
    async fn list_billing_statements(&self, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError>;

    async fn get_billing_statement(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
    ) -> Result<Option<BillingStatement>, StoreError>;
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

/// Opens the configured store. Does not migrate; see [`Store::migrate`].
pub async fn open(config: &StoreConfig) -> anyhow::Result<Arc<dyn Store>> {
    match config {
        StoreConfig::Sqlite { path } => Ok(Arc::new(SqliteStore::open(path).await?)),
        StoreConfig::Mssql { connection_string } => Ok(Arc::new(mssql::MssqlStore::open(connection_string).await?)),
    }
}
