//! Every T-SQL statement the SQL Server store runs, in one place, so `store::tsql_check` can parse-check them all.
//!
//! Parameters are tiberius' positional `@P1`, `@P2`, …; ids bind as UNIQUEIDENTIFIER, times as DATETIME2.
//!
//! Most statements are constants, listed in [`ALL`]. The document listing and the tag lookup of a page have a
//! shape that depends on the request (which filters, how many tags, which order, whether a cursor is given), so
//! they are assembled by [`list_documents`], [`count_documents`] and [`tags_of_documents`] from the fixed
//! fragments in those functions; user values only ever become bound parameters. The parse check cannot see
//! function output through a constant, so [`assembled_examples`] builds every shape those functions produce
//! (each order and direction, with and without a cursor, each filter alone and all together) and
//! `store::tsql_check` parses them with the constants.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::store::StoreError;
use crate::store::model::{
    AuditCursor, AuditFilter, DocumentCursor, DocumentFilter, DocumentSort, DocumentSortKey, NO_EFFECTIVE_DATE,
    SortValue,
};

/// The migration history table, created if missing.
pub const CREATE_HISTORY: &str = "IF OBJECT_ID(N'dbo.schema_migrations', N'U') IS NULL
CREATE TABLE dbo.schema_migrations (
    version    BIGINT       NOT NULL CONSTRAINT pk_schema_migrations PRIMARY KEY,
    name       NVARCHAR(200) NOT NULL,
    checksum   CHAR(64)     NOT NULL,
    applied_at DATETIME2(6) NOT NULL
)";

/// Serializes `migrate` across processes: an exclusive application lock owned by the session.
/// Returns the `sp_getapplock` status (0 or 1 granted; negative means timeout, deadlock or error).
pub const LOCK_MIGRATIONS: &str = "DECLARE @status INT;
EXEC @status = sp_getapplock @Resource = N'meterline:migrations', @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = 120000;
SELECT @status AS status";

pub const UNLOCK_MIGRATIONS: &str =
    "EXEC sp_releaseapplock @Resource = N'meterline:migrations', @LockOwner = N'Session'";

pub const READ_HISTORY: &str = "IF OBJECT_ID(N'dbo.schema_migrations', N'U') IS NOT NULL
SELECT version, name, checksum, applied_at FROM dbo.schema_migrations ORDER BY version";

pub const INSERT_HISTORY: &str =
    "INSERT INTO dbo.schema_migrations (version, name, checksum, applied_at) VALUES (@P1, @P2, @P3, @P4)";

/// Session options every connection sets once: the ANSI settings filtered indexes require for writes,
/// and XACT_ABORT so any error inside a transaction rolls the whole transaction back.
pub const SESSION_OPTIONS: &str = "SET ANSI_NULLS ON;
SET ANSI_PADDING ON;
SET ANSI_WARNINGS ON;
SET ARITHABORT ON;
SET CONCAT_NULL_YIELDS_NULL ON;
SET QUOTED_IDENTIFIER ON;
SET NUMERIC_ROUNDABORT OFF;
SET XACT_ABORT ON";

pub const PING: &str = "SELECT 1 AS ok";

pub const INSERT_JOB_RUN: &str =
    "INSERT INTO dbo.job_runs (id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub const RECENT_JOB_RUNS: &str =
    "SELECT TOP (@P2) id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail
FROM dbo.job_runs WHERE job = @P1 ORDER BY started_at DESC, id DESC";

pub const INSERT_PLAN: &str = "INSERT INTO dbo.plans (code, name, requests_per_minute, burst, monthly_quota_units,
    overage_policy, currency, base_price_micros, overage_unit_price_micros, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12)";

pub const GET_PLAN: &str =
    "SELECT code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency,
    base_price_micros, overage_unit_price_micros, created_at, updated_at, version
FROM dbo.plans WHERE code = @P1";

pub const INSERT_TENANT: &str =
    "INSERT INTO dbo.tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub const GET_TENANT: &str = "SELECT id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants WHERE id = @P1";

pub const GET_TENANT_BY_ENTRA_ID: &str =
    "SELECT id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants WHERE entra_tenant_id = @P1";

/// First page of tenants: `@P1` is the page size plus one (to know whether another page follows).
pub const LIST_TENANTS_FIRST: &str =
    "SELECT TOP (@P1) id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants ORDER BY created_at, id";

/// Next page after the cursor (`@P1` created_at, `@P2` id); index ix_tenants_created.
pub const LIST_TENANTS_AFTER: &str =
    "SELECT TOP (@P3) id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants WHERE created_at > @P1 OR (created_at = @P1 AND id > @P2) ORDER BY created_at, id";

pub const SET_TENANT_STATUS: &str = "UPDATE dbo.tenants SET status = @P1, updated_at = @P2, version = version + 1
WHERE id = @P3 AND version = @P4";

/// The columns `api_client_from` reads, in its order.
macro_rules! api_client_columns {
    () => {
        "id, tenant_id, directory_id, app_id, display_name, status, created_at, revoked_at, decided_by, decided_at, \
         version"
    };
}

pub const INSERT_API_CLIENT: &str = "INSERT INTO dbo.api_client_registrations (id, tenant_id, directory_id, app_id,
    display_name, status, created_at, revoked_at, decided_by, decided_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11)";

pub const INSERT_API_CLIENT_ROLE: &str = "INSERT INTO dbo.api_client_roles (client_id, role) VALUES (@P1, @P2)";

/// Every registration of (directory `@P1`, application `@P2`); index ix_api_client_registrations_app.
pub const API_CLIENTS_FOR_APP: &str = concat!(
    "SELECT ",
    api_client_columns!(),
    " FROM dbo.api_client_registrations WHERE directory_id = @P1 AND app_id = @P2 ORDER BY created_at, id"
);

/// Whether a tenant other than `@P2` owns the directory `@P1` (read under a range lock by an approval).
pub const DIRECTORY_OWNED_BY_OTHER: &str =
    "SELECT TOP (1) id FROM dbo.tenants WITH (UPDLOCK, HOLDLOCK) WHERE entra_tenant_id = @P1 AND id <> @P2";

/// Whether a tenant other than `@P3` holds an active registration of (directory `@P1`, application `@P2`); the
/// range lock serializes two approvals of the same pair.
pub const ACTIVE_ELSEWHERE: &str = "SELECT TOP (1) id FROM dbo.api_client_registrations WITH (UPDLOCK, HOLDLOCK)
WHERE directory_id = @P1 AND app_id = @P2 AND status = 'active' AND tenant_id <> @P3";

/// Decides a pending registration (`@P1` the new status, `@P2` by, `@P3` at, `@P4` tenant, `@P5` id).
pub const DECIDE_API_CLIENT: &str = "UPDATE dbo.api_client_registrations
SET status = @P1, decided_by = @P2, decided_at = @P3, version = version + 1
WHERE tenant_id = @P4 AND id = @P5 AND status = 'pending'";

pub const API_CLIENT_ROLES: &str = "SELECT role FROM dbo.api_client_roles WHERE client_id = @P1 ORDER BY role";

/// Takes the lease if free, expired, or held by the same holder; returns 1 when `@P2` holds it afterwards.
/// The range locks (UPDLOCK, HOLDLOCK) make the check-then-insert atomic against a concurrent acquirer.
pub const ACQUIRE_LEASE: &str = "UPDATE dbo.job_leases WITH (UPDLOCK, HOLDLOCK)
    SET holder = @P2, acquired_at = @P3, expires_at = @P4
    WHERE name = @P1 AND (expires_at <= @P3 OR holder = @P2);
IF @@ROWCOUNT = 0 AND NOT EXISTS (SELECT 1 FROM dbo.job_leases WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)
    INSERT INTO dbo.job_leases (name, holder, acquired_at, expires_at) VALUES (@P1, @P2, @P3, @P4);
SELECT COUNT(*) AS held FROM dbo.job_leases WHERE name = @P1 AND holder = @P2 AND expires_at = @P4";

pub const RELEASE_LEASE: &str = "DELETE FROM dbo.job_leases WHERE name = @P1 AND holder = @P2";

/// Creates the period's counter row on first use, under a key-range lock so two first debits cannot both insert.
pub const ENSURE_QUOTA_PERIOD: &str = "IF NOT EXISTS (SELECT 1 FROM dbo.quota_usage WITH (UPDLOCK, HOLDLOCK)
    WHERE tenant_id = @P1 AND period_start = @P2)
INSERT INTO dbo.quota_usage (tenant_id, period_start, period_end, quota_units, overage_policy, updated_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";

/// The debit: one conditional UPDATE, so concurrent debits can never take the counter past the quota under
/// `block`. Outputs the new total, the quota and this debit's overage units; no row means rejected.
pub const DEBIT_QUOTA: &str = "UPDATE dbo.quota_usage SET
    overage_units = overage_units
        + (CASE WHEN units_used + @P3 > quota_units THEN units_used + @P3 - quota_units ELSE 0 END)
        - (CASE WHEN units_used > quota_units THEN units_used - quota_units ELSE 0 END),
    units_used = units_used + @P3,
    updated_at = @P4
OUTPUT inserted.units_used, inserted.quota_units,
    (CASE WHEN inserted.units_used > inserted.quota_units THEN inserted.units_used - inserted.quota_units ELSE 0 END)
    - (CASE WHEN inserted.units_used - @P3 > inserted.quota_units THEN inserted.units_used - @P3 - inserted.quota_units ELSE 0 END)
WHERE tenant_id = @P1 AND period_start = @P2 AND (overage_policy = 'allow' OR units_used + @P3 <= quota_units)";

pub const REFUND_QUOTA: &str = "UPDATE dbo.quota_usage SET
    units_used = CASE WHEN units_used > @P3 THEN units_used - @P3 ELSE 0 END,
    overage_units = CASE WHEN overage_units > @P4 THEN overage_units - @P4 ELSE 0 END,
    updated_at = @P5
WHERE tenant_id = @P1 AND period_start = @P2";

pub const GET_QUOTA: &str =
    "SELECT tenant_id, period_start, period_end, quota_units, overage_policy, units_used, overage_units
FROM dbo.quota_usage WHERE tenant_id = @P1 AND period_start = @P2";

/// Reads the GCRA state and keeps the key locked until the transaction ends (also when the row is absent).
pub const LOCK_RATE_STATE: &str = "SELECT tat_micros FROM dbo.rate_limit_state WITH (UPDLOCK, HOLDLOCK)
WHERE tenant_id = @P1 AND client_id = @P2";

pub const UPSERT_RATE_STATE: &str =
    "UPDATE dbo.rate_limit_state SET tat_micros = @P3 WHERE tenant_id = @P1 AND client_id = @P2;
IF @@ROWCOUNT = 0
    INSERT INTO dbo.rate_limit_state (tenant_id, client_id, tat_micros) VALUES (@P1, @P2, @P3)";

/// Inserts one usage event unless its id is stored already; the lock hints close the check-then-insert race.
pub const INSERT_USAGE_EVENT: &str =
    "INSERT INTO dbo.usage_events (event_id, request_id, tenant_id, client_id, principal_id,
    operation_id, method, route_template, status, units, billable, overage_units, latency_micros, request_bytes,
    response_bytes, occurred_at, recorded_at)
SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17
WHERE NOT EXISTS (SELECT 1 FROM dbo.usage_events WITH (UPDLOCK, HOLDLOCK) WHERE event_id = @P1)";

pub const COUNT_USAGE_EVENTS: &str = "SELECT COUNT_BIG(*) AS n FROM dbo.usage_events WHERE tenant_id = @P1";

pub const UPDATE_TENANT: &str = "UPDATE dbo.tenants SET name = COALESCE(@P1, name), status = COALESCE(@P2, status),
    plan_code = COALESCE(@P3, plan_code), updated_at = @P4, version = version + 1
WHERE id = @P5 AND version = @P6";

pub const LIST_PLANS: &str =
    "SELECT code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency,
    base_price_micros, overage_unit_price_micros, created_at, updated_at, version
FROM dbo.plans ORDER BY code";

pub const UPDATE_PLAN: &str = "UPDATE dbo.plans SET name = @P1, requests_per_minute = @P2, burst = @P3,
    monthly_quota_units = @P4, overage_policy = @P5, currency = @P6, base_price_micros = @P7,
    overage_unit_price_micros = @P8, updated_at = @P9, version = version + 1
WHERE code = @P10 AND version = @P11";

/// A tenant's clients, oldest first; index ix_api_client_registrations_tenant.
pub const LIST_API_CLIENTS: &str = concat!(
    "SELECT ",
    api_client_columns!(),
    " FROM dbo.api_client_registrations WHERE tenant_id = @P1 ORDER BY created_at, id"
);

/// The roles of every client of a tenant (`@P1`), grouped by client in Rust.
pub const LIST_API_CLIENT_ROLES: &str = "SELECT r.client_id, r.role
FROM dbo.api_client_roles r JOIN dbo.api_client_registrations c ON c.id = r.client_id
WHERE c.tenant_id = @P1 ORDER BY r.client_id, r.role";

/// One client of a tenant (`@P1` tenant, `@P2` id): another tenant's client is not found.
pub const GET_TENANT_API_CLIENT: &str =
    concat!("SELECT ", api_client_columns!(), " FROM dbo.api_client_registrations WHERE tenant_id = @P1 AND id = @P2");

/// Revokes a pending or active client; a revoked or rejected one is left as it is (revoking is idempotent).
pub const REVOKE_API_CLIENT: &str =
    "UPDATE dbo.api_client_registrations SET status = 'revoked', revoked_at = @P3, version = version + 1
WHERE tenant_id = @P1 AND id = @P2 AND status IN ('pending', 'active')";

/// The document columns in the order `MssqlStore` reads them, from the table aliased `d`.
macro_rules! document_columns {
    () => {
        "d.id, d.tenant_id, d.title, d.summary, d.body, d.doc_type, d.jurisdiction, d.status, d.effective_date,
    d.created_by, d.updated_by, d.created_at, d.updated_at, d.version"
    };
}

pub const INSERT_DOCUMENT: &str = "INSERT INTO dbo.documents (id, tenant_id, title, summary, body, doc_type,
    jurisdiction, status, effective_date, created_by, updated_by, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14)";

pub const INSERT_DOCUMENT_TAG: &str =
    "INSERT INTO dbo.document_tags (document_id, tenant_id, tag) VALUES (@P1, @P2, @P3)";

/// A live document of a tenant (`@P1` tenant, `@P2` id), through the primary key.
pub const GET_DOCUMENT: &str = concat!(
    "SELECT ",
    document_columns!(),
    "
FROM dbo.documents d WHERE d.tenant_id = @P1 AND d.id = @P2 AND d.deleted_at IS NULL"
);

/// The version of a live document: after a conditional write changed nothing, tells a stale version from absence.
pub const LIVE_DOCUMENT_VERSION: &str =
    "SELECT version FROM dbo.documents WHERE tenant_id = @P1 AND id = @P2 AND deleted_at IS NULL";

/// Replaces the fields of a live document at version `@P12`; the new version is `@P12 + 1`.
pub const UPDATE_DOCUMENT: &str = "UPDATE dbo.documents SET title = @P1, summary = @P2, body = @P3, doc_type = @P4,
    jurisdiction = @P5, status = @P6, effective_date = @P7, updated_by = @P8, updated_at = @P9, version = @P12 + 1
WHERE tenant_id = @P10 AND id = @P11 AND deleted_at IS NULL AND version = @P12";

pub const DELETE_DOCUMENT_TAGS: &str = "DELETE FROM dbo.document_tags WHERE tenant_id = @P1 AND document_id = @P2";

/// Soft delete (`@P1` now, `@P2` by) of a live document at version `@P5`.
pub const SOFT_DELETE_DOCUMENT: &str =
    "UPDATE dbo.documents SET deleted_at = @P1, updated_at = @P1, updated_by = @P2, version = version + 1
WHERE tenant_id = @P3 AND id = @P4 AND deleted_at IS NULL AND version = @P5";

/// Frees a key whose record has expired (`expires_at <= @P3`): an expired record no longer answers.
pub const DELETE_EXPIRED_IDEMPOTENCY_KEY: &str =
    "DELETE FROM dbo.idempotency_keys WHERE tenant_id = @P1 AND idempotency_key = @P2 AND expires_at <= @P3";

pub const INSERT_IDEMPOTENCY: &str = "INSERT INTO dbo.idempotency_keys (tenant_id, idempotency_key, operation_id,
    request_hash, status_code, response_headers, response_body, created_at, expires_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9)";

/// A record that has not expired at `@P3`, through the primary key.
pub const GET_IDEMPOTENCY: &str = "SELECT tenant_id, idempotency_key, operation_id, request_hash, status_code,
    response_headers, response_body, created_at, expires_at
FROM dbo.idempotency_keys WHERE tenant_id = @P1 AND idempotency_key = @P2 AND expires_at > @P3";

/// The columns of an audit event, in the order `audit_from` reads them.
macro_rules! audit_columns {
    () => {
        "id, chain, chain_seq, tenant_id, occurred_at, actor_oid, actor_app_id, actor_tenant_id, action, resource_type,
    resource_id, outcome, request_id, summary, before_hash, after_hash, limiter_decision, prev_hash, hash"
    };
}

/// Whether an audit event is stored already (a retried batch skips it).
pub const AUDIT_EVENT_EXISTS: &str = "SELECT 1 AS found FROM dbo.audit_events WHERE id = @P1";

/// The head of a chain, read under a key-range update lock held to the end of the transaction (also when the
/// chain is empty): a concurrent appender of the same chain waits here, then reads the new head.
pub const AUDIT_CHAIN_HEAD: &str = "SELECT TOP (1) chain_seq, hash FROM dbo.audit_events WITH (UPDLOCK, HOLDLOCK)
WHERE chain = @P1 ORDER BY chain_seq DESC";

/// Appends one audit event. The table has no UPDATE or DELETE statement anywhere (a ledger table refuses them).
pub const INSERT_AUDIT_EVENT: &str = concat!(
    "INSERT INTO dbo.audit_events (",
    audit_columns!(),
    ")
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17, @P18, @P19)"
);

/// A page of one chain in `chain_seq` order, for verification (served by `ux_audit_events_chain_seq`).
pub const AUDIT_CHAIN: &str = concat!(
    "SELECT TOP (@P3) ",
    audit_columns!(),
    "
FROM dbo.audit_events WHERE chain = @P1 AND chain_seq > @P2 ORDER BY chain_seq"
);

/// The most tags a listing may ask for (`DocumentFilter::tags_any`): each is one parameter of the `IN` list.
pub const MAX_TAGS_ANY: usize = 20;

/// The first and last dates of SQL Server's `DATE`. Dates outside are clamped in filters and cursors (no stored
/// date lies outside, so no answer changes); tiberius would otherwise encode them as a wrong date.
pub const FIRST_DATE: NaiveDate = NaiveDate::from_ymd_opt(1, 1, 1).expect("valid date");
pub const LAST_DATE: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("valid date");

/// A value bound to an assembled statement; `args[0]` is `@P1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Id(Uuid),
    Text(String),
    Time(DateTime<Utc>),
    Date(NaiveDate),
}

/// A statement assembled from fixed fragments, and the values of its placeholders in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assembled {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Assembled {
    /// Binds a value and returns its placeholder, `@P<n>`.
    fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("@P{}", self.args.len())
    }
}

/// `LIKE` pattern for "contains `text`", with T-SQL's wildcards `%`, `_`, `[` and the escape character `\`
/// escaped; used with `ESCAPE '\'`.
pub fn like_contains(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '[' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// Rounds up to whole microseconds, the stored precision (`DATETIME2(6)`): for a stored time `s`, `s >= t` is
/// `s >= ceil(t)` and `s < t` is `s < ceil(t)`, and the same holds on SQLite, which keeps microseconds too.
pub fn ceil_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    match t.timestamp_subsec_nanos() % 1_000 {
        0 => t,
        extra => t + chrono::Duration::nanoseconds(i64::from(1_000 - extra)),
    }
}

/// Tenant, live rows and every filter of a document listing, after `FROM dbo.documents d`.
fn document_conditions(a: &mut Assembled, tenant_id: Uuid, filter: &DocumentFilter) -> Result<(), StoreError> {
    if filter.tags_any.len() > MAX_TAGS_ANY {
        return Err(StoreError::Other(anyhow::anyhow!(
            "a listing may ask for at most {MAX_TAGS_ANY} tags, got {}",
            filter.tags_any.len()
        )));
    }
    // `deleted_at IS NULL` is written literally: SQL Server only uses the filtered indexes when the query says so.
    let tenant = a.bind(Arg::Id(tenant_id));
    a.sql.push_str(&format!("\nWHERE d.tenant_id = {tenant} AND d.deleted_at IS NULL"));
    if let Some(status) = filter.status {
        let p = a.bind(Arg::Text(status.as_str().to_owned()));
        a.sql.push_str(&format!("\n    AND d.status = {p}"));
    }
    if let Some(doc_type) = &filter.doc_type {
        let p = a.bind(Arg::Text(doc_type.clone()));
        a.sql.push_str(&format!("\n    AND d.doc_type = {p}"));
    }
    if let Some(jurisdiction) = &filter.jurisdiction {
        let p = a.bind(Arg::Text(jurisdiction.clone()));
        a.sql.push_str(&format!("\n    AND d.jurisdiction = {p}"));
    }
    if !filter.tags_any.is_empty() {
        let tags: Vec<String> = filter.tags_any.iter().map(|tag| a.bind(Arg::Text(tag.clone()))).collect();
        a.sql.push_str(&format!(
            "\n    AND EXISTS (SELECT 1 FROM dbo.document_tags t WHERE t.document_id = d.id AND t.tag IN ({}))",
            tags.join(", ")
        ));
    }
    if let Some(after) = filter.updated_after {
        let p = a.bind(Arg::Time(ceil_micros(after)));
        a.sql.push_str(&format!("\n    AND d.updated_at >= {p}"));
    }
    if let Some(before) = filter.updated_before {
        let p = a.bind(Arg::Time(ceil_micros(before)));
        a.sql.push_str(&format!("\n    AND d.updated_at < {p}"));
    }
    if let Some(from) = filter.effective_from {
        let p = a.bind(Arg::Date(from.clamp(FIRST_DATE, LAST_DATE)));
        a.sql.push_str(&format!("\n    AND d.effective_date >= {p}"));
    }
    if let Some(to) = filter.effective_to {
        let p = a.bind(Arg::Date(to.clamp(FIRST_DATE, LAST_DATE)));
        a.sql.push_str(&format!("\n    AND d.effective_date <= {p}"));
    }
    if let Some(q) = &filter.q {
        let p = a.bind(Arg::Text(like_contains(q)));
        a.sql.push_str(&format!("\n    AND (d.title LIKE {p} ESCAPE '\\' OR d.summary LIKE {p} ESCAPE '\\')"));
    }
    Ok(())
}

fn sort_column(key: DocumentSortKey) -> &'static str {
    match key {
        DocumentSortKey::UpdatedAt => "d.updated_at",
        DocumentSortKey::Title => "d.title",
        DocumentSortKey::EffectiveDate => "d.effective_date",
    }
}

/// "Strictly after the cursor" in the listing's order, as a range on the sort index:
/// `key >= v AND (key > v OR id > c)` ascending, mirrored descending. SQL Server sorts NULL first ascending and
/// last descending, as SQLite does; a NULL effective date's cursor carries [`NO_EFFECTIVE_DATE`] (never a
/// storable date) and gets its own branch, since no comparison with NULL is true.
fn keyset(a: &mut Assembled, sort: DocumentSort, cursor: &DocumentCursor) -> Result<(), StoreError> {
    let value = match (sort.key, &cursor.value) {
        (DocumentSortKey::UpdatedAt, SortValue::Time(t)) => Some(Arg::Time(*t)),
        (DocumentSortKey::Title, SortValue::Text(title)) => Some(Arg::Text(title.clone())),
        (DocumentSortKey::EffectiveDate, SortValue::Date(date)) if *date == NO_EFFECTIVE_DATE => None,
        (DocumentSortKey::EffectiveDate, SortValue::Date(date)) => {
            Some(Arg::Date((*date).clamp(FIRST_DATE, LAST_DATE)))
        }
        (key, value) => {
            return Err(StoreError::Other(anyhow::anyhow!("a {value:?} cursor does not fit the {key:?} order")));
        }
    };
    let key = sort_column(sort.key);
    let id = a.bind(Arg::Id(cursor.id));
    let (beyond, from) = if sort.descending { ("<", "<=") } else { (">", ">=") };
    let fragment = match value {
        Some(value) => {
            let v = a.bind(value);
            // Descending by date, the undated documents after these are a query of their own (`undated_documents`).
            format!("\n    AND {key} {from} {v} AND ({key} {beyond} {v} OR d.id {beyond} {id})")
        }
        None if sort.descending => format!("\n    AND d.effective_date IS NULL AND d.id < {id}"),
        None => format!("\n    AND (d.effective_date IS NOT NULL OR d.id > {id})"),
    };
    a.sql.push_str(&fragment);
    Ok(())
}

/// One page of a tenant's live documents: `TOP (fetch)` rows matching `filter`, strictly after `after`, in
/// `sort` order with id as the tie-breaker. Served by the filtered index of the sort key (see docs/data-model.md).
pub fn list_documents(
    tenant_id: Uuid,
    filter: &DocumentFilter,
    sort: DocumentSort,
    after: Option<&DocumentCursor>,
    fetch: i64,
) -> Result<Assembled, StoreError> {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(fetch));
    a.sql = format!(concat!("SELECT TOP ({}) ", document_columns!(), "\nFROM dbo.documents d"), top);
    document_conditions(&mut a, tenant_id, filter)?;
    if let Some(cursor) = after {
        keyset(&mut a, sort, cursor)?;
    }
    let direction = if sort.descending { "DESC" } else { "ASC" };
    a.sql.push_str(&format!("\nORDER BY {key} {direction}, d.id {direction}", key = sort_column(sort.key)));
    Ok(a)
}

/// The documents without an effective date that end a newest-first listing by date: `TOP (fetch)` of them
/// matching `filter`, by id descending (see [`crate::store::model::continues_into_undated`]).
pub fn undated_documents(tenant_id: Uuid, filter: &DocumentFilter, fetch: i64) -> Result<Assembled, StoreError> {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(fetch));
    a.sql = format!(concat!("SELECT TOP ({}) ", document_columns!(), "\nFROM dbo.documents d"), top);
    document_conditions(&mut a, tenant_id, filter)?;
    a.sql.push_str("\n    AND d.effective_date IS NULL\nORDER BY d.id DESC");
    Ok(a)
}

/// How many live documents of the tenant match `filter` (all of them, whatever the cursor and page size).
pub fn count_documents(tenant_id: Uuid, filter: &DocumentFilter) -> Result<Assembled, StoreError> {
    let mut a = Assembled { sql: "SELECT COUNT_BIG(*) AS n\nFROM dbo.documents d".into(), args: Vec::new() };
    document_conditions(&mut a, tenant_id, filter)?;
    Ok(a)
}

/// Ids per `IN (...)` list of [`tags_of_documents`], well below SQL Server's 2100 parameters per request.
pub const TAG_LOAD_CHUNK: usize = 500;

/// The tags of some documents of one tenant: `@P1` the tenant, then one parameter per document id.
pub fn tags_of_documents(tenant_id: Uuid, ids: &[Uuid]) -> Assembled {
    let mut a = Assembled::default();
    let tenant = a.bind(Arg::Id(tenant_id));
    let ids: Vec<String> = ids.iter().map(|id| a.bind(Arg::Id(*id))).collect();
    a.sql = format!(
        "SELECT document_id, tag FROM dbo.document_tags WHERE tenant_id = {tenant} AND document_id IN ({})",
        ids.join(", ")
    );
    a
}

/// One page of a tenant's audit events (`None`: the platform events, `tenant_id IS NULL`), newest first, strictly
/// after `after`: `TOP (fetch)` on `ix_audit_events_tenant_time`.
pub fn list_audit_events(
    tenant_id: Option<Uuid>,
    filter: &AuditFilter,
    after: Option<&AuditCursor>,
    fetch: i64,
) -> Assembled {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(fetch));
    a.sql = format!(concat!("SELECT TOP ({}) ", audit_columns!(), "\nFROM dbo.audit_events"), top);
    match tenant_id {
        Some(id) => {
            let p = a.bind(Arg::Id(id));
            a.sql.push_str(&format!("\nWHERE tenant_id = {p}"));
        }
        None => a.sql.push_str("\nWHERE tenant_id IS NULL"),
    }
    if let Some(actor) = &filter.actor {
        let p = a.bind(Arg::Text(actor.clone()));
        a.sql.push_str(&format!("\n    AND (actor_oid = {p} OR actor_app_id = {p})"));
    }
    for (column, value) in
        [("action", &filter.action), ("resource_type", &filter.resource_type), ("resource_id", &filter.resource_id)]
    {
        if let Some(value) = value {
            let p = a.bind(Arg::Text(value.clone()));
            a.sql.push_str(&format!("\n    AND {column} = {p}"));
        }
    }
    if let Some(outcome) = filter.outcome {
        let p = a.bind(Arg::Text(outcome.as_str().to_owned()));
        a.sql.push_str(&format!("\n    AND outcome = {p}"));
    }
    if let Some(from) = filter.from {
        let p = a.bind(Arg::Time(ceil_micros(from)));
        a.sql.push_str(&format!("\n    AND occurred_at >= {p}"));
    }
    if let Some(to) = filter.to {
        let p = a.bind(Arg::Time(ceil_micros(to)));
        a.sql.push_str(&format!("\n    AND occurred_at < {p}"));
    }
    if let Some(cursor) = after {
        let t = a.bind(Arg::Time(cursor.occurred_at));
        let id = a.bind(Arg::Id(cursor.id));
        a.sql.push_str(&format!("\n    AND occurred_at <= {t} AND (occurred_at < {t} OR id < {id})"));
    }
    a.sql.push_str("\nORDER BY occurred_at DESC, id DESC");
    a
}

/// Every shape the assembling functions produce, named, for the parse check (`store::tsql_check`).
#[cfg(test)]
pub fn assembled_examples() -> Vec<(String, Assembled)> {
    use chrono::TimeZone;

    use crate::store::model::DocumentStatus;

    let tenant = Uuid::from_u128(1);
    let id = Uuid::from_u128(2);
    let t = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
    let full = DocumentFilter {
        status: Some(DocumentStatus::Published),
        doc_type: Some("contract".into()),
        jurisdiction: Some("FR".into()),
        tags_any: vec!["a".into(), "b".into(), "c".into()],
        updated_after: Some(t),
        updated_before: Some(t),
        effective_from: Some(date),
        effective_to: Some(date),
        q: Some("50% [draft]_\\".into()),
    };
    let alone: Vec<(&str, DocumentFilter)> = vec![
        ("status", DocumentFilter { status: full.status, ..Default::default() }),
        ("doc_type", DocumentFilter { doc_type: full.doc_type.clone(), ..Default::default() }),
        ("jurisdiction", DocumentFilter { jurisdiction: full.jurisdiction.clone(), ..Default::default() }),
        ("one tag", DocumentFilter { tags_any: vec!["a".into()], ..Default::default() }),
        ("updated_after", DocumentFilter { updated_after: full.updated_after, ..Default::default() }),
        ("updated_before", DocumentFilter { updated_before: full.updated_before, ..Default::default() }),
        ("effective_from", DocumentFilter { effective_from: full.effective_from, ..Default::default() }),
        ("effective_to", DocumentFilter { effective_to: full.effective_to, ..Default::default() }),
        ("q", DocumentFilter { q: full.q.clone(), ..Default::default() }),
        ("all filters", full.clone()),
        ("no filter", DocumentFilter::default()),
    ];
    let mut out = Vec::new();
    for key in [DocumentSortKey::UpdatedAt, DocumentSortKey::Title, DocumentSortKey::EffectiveDate] {
        let value = match key {
            DocumentSortKey::UpdatedAt => SortValue::Time(t),
            DocumentSortKey::Title => SortValue::Text("Lease".into()),
            DocumentSortKey::EffectiveDate => SortValue::Date(date),
        };
        let mut cursors = vec![("first page", None), ("next page", Some(DocumentCursor { value, id }))];
        if key == DocumentSortKey::EffectiveDate {
            let undated = DocumentCursor { value: SortValue::Date(NO_EFFECTIVE_DATE), id };
            cursors.push(("next page after an undated document", Some(undated)));
        }
        for descending in [false, true] {
            for (cursor_name, cursor) in &cursors {
                for filter in [&DocumentFilter::default(), &full] {
                    let sort = DocumentSort { key, descending };
                    let name = format!("list_documents {key:?} descending={descending} {cursor_name} {filter:?}");
                    out.push((name, list_documents(tenant, filter, sort, cursor.as_ref(), 21).expect("assembles")));
                }
            }
        }
    }
    out.push(("undated_documents all filters".to_owned(), undated_documents(tenant, &full, 21).expect("assembles")));
    for (name, filter) in &alone {
        let sort = DocumentSort { key: DocumentSortKey::UpdatedAt, descending: true };
        out.push((
            format!("list_documents {name}"),
            list_documents(tenant, filter, sort, None, 21).expect("assembles"),
        ));
        out.push((format!("count_documents {name}"), count_documents(tenant, filter).expect("assembles")));
    }
    let audit = AuditFilter {
        actor: Some("oid".into()),
        action: Some("createDocument".into()),
        resource_type: Some("documents".into()),
        resource_id: Some("x".into()),
        outcome: Some(crate::store::model::AuditOutcome::Denied),
        from: Some(t),
        to: Some(t),
    };
    let audit_cursor = AuditCursor { occurred_at: t, id };
    for (tenant_name, tenant_id) in [("tenant", Some(tenant)), ("platform", None)] {
        for (filter_name, filter) in [("no filter", AuditFilter::default()), ("all filters", audit.clone())] {
            for cursor in [None, Some(&audit_cursor)] {
                let name = format!("list_audit_events {tenant_name} {filter_name} cursor={}", cursor.is_some());
                out.push((name, list_audit_events(tenant_id, &filter, cursor, 26)));
            }
        }
    }
    out.push(("tags_of_documents 1".into(), tags_of_documents(tenant, &[id])));
    out.push(("tags_of_documents 3".into(), tags_of_documents(tenant, &[id, tenant, id])));
    out
}

pub const PLAN_COSTS: &str =
    "SELECT operation_id, units FROM dbo.plan_operation_costs WHERE plan_code = @P1 ORDER BY operation_id";

pub const PLAN_EXISTS: &str = "SELECT COUNT(*) AS n FROM dbo.plans WITH (UPDLOCK, HOLDLOCK) WHERE code = @P1";

pub const DELETE_PLAN_COSTS: &str = "DELETE FROM dbo.plan_operation_costs WHERE plan_code = @P1";

pub const INSERT_PLAN_COST: &str =
    "INSERT INTO dbo.plan_operation_costs (plan_code, operation_id, units) VALUES (@P1, @P2, @P3)";

// Usage aggregation and billing (docs/data-model.md, "Usage rollup"). Windows: an hour starts at
// DATEADD(HOUR, DATEDIFF(HOUR, @epoch, t), @epoch) with @epoch = 2000-01-01 as DATETIME2(0); a day at CAST(t AS DATE).

/// The twelve cumulative latency counts of a group of `usage_events e`, as JSON array text.
macro_rules! tsql_histogram_of_events {
    () => {
        "CONCAT('[', SUM(CASE WHEN e.latency_micros < 1000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 2000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 5000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 10000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 20000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 50000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 100000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 200000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 500000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 1000000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 2000000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 5000000 THEN 1 ELSE 0 END), ']')"
    };
}

/// The element-wise sum of the histograms of a group of `usage_rollups r`.
macro_rules! tsql_histogram_of_rollups {
    () => {
        "CONCAT('[', SUM(CAST(JSON_VALUE(r.latency_histogram, '$[0]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[1]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[2]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[3]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[4]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[5]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[6]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[7]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[8]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[9]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[10]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[11]') AS BIGINT)), ']')"
    };
}

/// The sums of a group of `usage_events e`, named as the rollup columns (all BIGINT).
macro_rules! tsql_sums_of_events {
    () => {
        concat!(
            "COUNT_BIG(*) AS calls, SUM(CAST(e.units AS BIGINT)) AS units,
        SUM(CASE WHEN e.billable = 1 THEN CAST(e.units AS BIGINT) ELSE 0 END) AS billable_units,
        SUM(CAST(e.overage_units AS BIGINT)) AS overage_units,
        SUM(CASE WHEN e.status >= 400 THEN CAST(1 AS BIGINT) ELSE 0 END) AS errors,
        SUM(e.latency_micros) AS latency_sum_micros, MAX(e.latency_micros) AS latency_max_micros,
        ",
            tsql_histogram_of_events!(),
            " AS latency_histogram"
        )
    };
}

macro_rules! tsql_hour_of {
    ($t:literal) => {
        concat!(
            "DATEADD(HOUR, DATEDIFF(HOUR, CAST('2000-01-01' AS DATETIME2(0)), ",
            $t,
            "), CAST('2000-01-01' AS DATETIME2(0)))"
        )
    };
}

/// Overwrites the rollups of `granularity` with the rows of `source` (an aliased derived table `s` with
/// `tenant_id, ws, operation_id, client_id` and the sums); `@P2` is `updated_at`.
macro_rules! tsql_merge_rollups {
    ($granularity:literal, $source:expr) => {
        concat!(
            "MERGE INTO dbo.usage_rollups AS t
USING (",
            $source,
            ") AS s
ON t.tenant_id = s.tenant_id AND t.granularity = '",
            $granularity,
            "' AND t.window_start = s.ws
    AND t.operation_id = s.operation_id AND t.client_id = s.client_id
WHEN MATCHED THEN UPDATE SET calls = s.calls, units = s.units, billable_units = s.billable_units,
    overage_units = s.overage_units, errors = s.errors, latency_sum_micros = s.latency_sum_micros,
    latency_max_micros = s.latency_max_micros, latency_histogram = s.latency_histogram, updated_at = @P2
WHEN NOT MATCHED THEN INSERT (tenant_id, granularity, window_start, operation_id, client_id, calls, units,
    billable_units, overage_units, errors, latency_sum_micros, latency_max_micros, latency_histogram, updated_at)
VALUES (s.tenant_id, '",
            $granularity,
            "', s.ws, s.operation_id, s.client_id, s.calls, s.units, s.billable_units,
    s.overage_units, s.errors, s.latency_sum_micros, s.latency_max_micros, s.latency_histogram, @P2);"
        )
    };
}

/// Hour windows listed by `windows` (derived table `w` of `tenant_id, ws`), recomputed from raw events with
/// `seq <= @P1`.
macro_rules! tsql_hours_source {
    ($windows:literal) => {
        concat!(
            "SELECT e.tenant_id, w.ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
            tsql_sums_of_events!(),
            "
    FROM (", $windows, ") AS w
    JOIN dbo.usage_events e ON e.tenant_id = w.tenant_id AND e.occurred_at >= w.ws AND e.occurred_at < DATEADD(HOUR, 1, w.ws)
    WHERE e.seq <= @P1
    GROUP BY e.tenant_id, w.ws, e.operation_id, COALESCE(e.client_id, N'')"
        )
    };
}

/// Day windows listed by `days` (derived table `d` of `tenant_id, ws`), recomputed from the hour rollups.
macro_rules! tsql_days_source {
    ($days:literal) => {
        concat!(
            "SELECT r.tenant_id, d.ws, r.operation_id, r.client_id, SUM(r.calls) AS calls, SUM(r.units) AS units,
        SUM(r.billable_units) AS billable_units, SUM(r.overage_units) AS overage_units, SUM(r.errors) AS errors,
        SUM(r.latency_sum_micros) AS latency_sum_micros, MAX(r.latency_max_micros) AS latency_max_micros,
        ",
            tsql_histogram_of_rollups!(),
            " AS latency_histogram
    FROM (",
            $days,
            ") AS d
    JOIN dbo.usage_rollups r ON r.tenant_id = d.tenant_id AND r.granularity = 'hour'
        AND r.window_start >= d.ws AND r.window_start < DATEADD(DAY, 1, d.ws)
    GROUP BY r.tenant_id, d.ws, r.operation_id, r.client_id"
        )
    };
}

/// The `job_watermarks` row `@P1`, created at 0 if missing and locked until the transaction ends: rollup steps
/// of two processes serialize here.
pub const LOCK_POSITION: &str =
    "IF NOT EXISTS (SELECT 1 FROM dbo.job_watermarks WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)
    INSERT INTO dbo.job_watermarks (name, position, updated_at) VALUES (@P1, 0, @P2);
SELECT position FROM dbo.job_watermarks WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1";

/// A `job_watermarks` position, read under a shared lock held to the end of the transaction: the usage report
/// reads the watermark, the rollups and the tail while no rollup step can commit (its last write is this row).
pub const READ_POSITION_HOLDLOCK: &str = "SELECT position FROM dbo.job_watermarks WITH (HOLDLOCK) WHERE name = @P1";

pub const READ_POSITIONS: &str = "SELECT name, position FROM dbo.job_watermarks WHERE name LIKE 'usage-rollup%'";

pub const PUT_POSITION: &str = "UPDATE dbo.job_watermarks SET position = @P2, updated_at = @P3 WHERE name = @P1;
IF @@ROWCOUNT = 0
    INSERT INTO dbo.job_watermarks (name, position, updated_at) VALUES (@P1, @P2, @P3)";

/// How many events lie past the watermark `@P1` within the batch of `@P2`, and the highest settled `seq` among them.
pub const SCAN_ROLLUP_BATCH: &str =
    "SELECT COUNT_BIG(*) AS scanned, MAX(CASE WHEN b.recorded_at <= @P3 THEN b.seq END) AS settled
FROM (SELECT TOP (@P2) seq, recorded_at FROM dbo.usage_events WHERE seq > @P1 ORDER BY seq) AS b";

pub const COUNT_SEQ_RANGE: &str = "SELECT COUNT_BIG(*) AS n FROM dbo.usage_events WHERE seq > @P1 AND seq <= @P2";

/// The hour windows of the events with `seq` in `(@P3, @P1]`, recomputed. `@P2`: updated_at.
pub const ROLLUP_HOURS_OF_NEW_EVENTS: &str = tsql_merge_rollups!(
    "hour",
    tsql_hours_source!(
        "SELECT DISTINCT tenant_id, DATEADD(HOUR, DATEDIFF(HOUR, CAST('2000-01-01' AS DATETIME2(0)), occurred_at), CAST('2000-01-01' AS DATETIME2(0))) AS ws
        FROM dbo.usage_events WHERE seq > @P3 AND seq <= @P1 AND tenant_id IS NOT NULL"
    )
);

/// The day windows of the events with `seq` in `(@P3, @P1]`, recomputed from the hour rollups.
pub const ROLLUP_DAYS_OF_NEW_EVENTS: &str = tsql_merge_rollups!(
    "day",
    tsql_days_source!(
        "SELECT DISTINCT tenant_id, CAST(CAST(occurred_at AS DATE) AS DATETIME2(0)) AS ws
        FROM dbo.usage_events WHERE seq > @P3 AND seq <= @P1 AND tenant_id IS NOT NULL"
    )
);

/// The hour `@P3` of every tenant, recomputed from raw events with `seq <= @P1`.
pub const ROLLUP_HOUR_OF_EVERY_TENANT: &str = tsql_merge_rollups!(
    "hour",
    tsql_hours_source!("SELECT id AS tenant_id, CAST(@P3 AS DATETIME2(0)) AS ws FROM dbo.tenants")
);

/// The day containing `@P3` of every tenant, recomputed from the hour rollups.
pub const ROLLUP_DAY_OF_EVERY_TENANT: &str = tsql_merge_rollups!(
    "day",
    tsql_days_source!("SELECT id AS tenant_id, CAST(CAST(@P3 AS DATE) AS DATETIME2(0)) AS ws FROM dbo.tenants")
);

/// At most `@P3` rolled-up events (`seq <= @P1`) recorded before `@P2`, from the oldest `seq`.
pub const PURGE_USAGE_EVENTS: &str = "DELETE FROM dbo.usage_events
WHERE seq IN (SELECT TOP (@P3) seq FROM dbo.usage_events WHERE seq <= @P1 ORDER BY seq) AND recorded_at < @P2";

// Integration: inbox, effects of integration messages, quarantine, outbox.

/// Inserts an outbox event in the caller's transaction (a taken id is a unique-index violation).
pub const INSERT_OUTBOX: &str =
    "INSERT INTO dbo.outbox_messages (id, event_type, subject, payload, created_at, available_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";

/// Flags the 80 % threshold of a period once it is reached; one row changed means this transaction announces it.
pub const FLAG_QUOTA_80: &str = "UPDATE dbo.quota_usage SET notified_80 = 1
WHERE tenant_id = @P1 AND period_start = @P2 AND notified_80 = 0 AND units_used > 0 AND units_used * 100 >= quota_units * 80";

/// Flags the 100 % threshold of a period once it is reached.
pub const FLAG_QUOTA_100: &str = "UPDATE dbo.quota_usage SET notified_100 = 1
WHERE tenant_id = @P1 AND period_start = @P2 AND notified_100 = 0 AND units_used > 0 AND units_used >= quota_units";

/// Inserts the inbox row unless `(source, event_id)` is there; the key-range lock makes a concurrent delivery of
/// the same message wait and then insert nothing (0 rows: a duplicate).
pub const INSERT_INBOX: &str = "INSERT INTO dbo.inbox_messages (source, event_id, event_type, processed_at)
SELECT @P1, @P2, @P3, @P4
WHERE NOT EXISTS (SELECT 1 FROM dbo.inbox_messages WITH (UPDLOCK, HOLDLOCK) WHERE source = @P1 AND event_id = @P2)";

/// The tenant's status, with the row locked until the transaction ends.
pub const LOCK_TENANT_STATUS: &str = "SELECT status FROM dbo.tenants WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";

pub const INSERT_ACTIVE_TENANT: &str =
    "INSERT INTO dbo.tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, N'active', @P4, @P5, @P5, 1)";

pub const UPDATE_TENANT_FROM_EVENT: &str = "UPDATE dbo.tenants SET name = @P2, plan_code = @P3,
    entra_tenant_id = COALESCE(@P4, entra_tenant_id), updated_at = @P5, version = version + 1
WHERE id = @P1";

pub const SET_TENANT_STATUS_FROM_EVENT: &str =
    "UPDATE dbo.tenants SET status = @P2, updated_at = @P3, version = version + 1 WHERE id = @P1";

pub const CHANGE_TENANT_PLAN: &str = "UPDATE dbo.tenants SET plan_code = @P2, updated_at = @P3, version = version + 1 WHERE id = @P1 AND plan_code <> @P2";

/// The owner of a document id (deleted or not), locked so a concurrent insert of the same id waits.
pub const DOCUMENT_OWNER: &str = "SELECT tenant_id FROM dbo.documents WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";

/// Replaces every field of a document from an integration message (and undeletes it).
pub const REPLACE_DOCUMENT_FROM_EVENT: &str = "UPDATE dbo.documents SET title = @P3, summary = @P4, body = @P5,
    doc_type = @P6, jurisdiction = @P7, status = @P8, effective_date = @P9, updated_by = @P10, updated_at = @P11,
    deleted_at = NULL, version = version + 1
WHERE tenant_id = @P1 AND id = @P2";

/// The quota and overage policy of a tenant's plan.
pub const TENANT_PLAN_QUOTA: &str = "SELECT p.monthly_quota_units, p.overage_policy
FROM dbo.tenants t JOIN dbo.plans p ON p.code = t.plan_code WHERE t.id = @P1";

pub const USAGE_EVENT_EXISTS: &str = "SELECT 1 AS found FROM dbo.usage_events WHERE event_id = @P1";

/// A debit that is never refused (external usage has happened): outputs this debit's overage units.
pub const DEBIT_QUOTA_UNCONDITIONALLY: &str = "UPDATE dbo.quota_usage SET
    overage_units = overage_units
        + (CASE WHEN units_used + @P3 > quota_units THEN units_used + @P3 - quota_units ELSE 0 END)
        - (CASE WHEN units_used > quota_units THEN units_used - quota_units ELSE 0 END),
    units_used = units_used + @P3,
    updated_at = @P4
OUTPUT
    (CASE WHEN inserted.units_used > inserted.quota_units THEN inserted.units_used - inserted.quota_units ELSE 0 END)
    - (CASE WHEN inserted.units_used - @P3 > inserted.quota_units THEN inserted.units_used - @P3 - inserted.quota_units ELSE 0 END)
WHERE tenant_id = @P1 AND period_start = @P2";

pub const INSERT_QUARANTINE: &str = "INSERT INTO dbo.quarantine_messages (id, received_at, message_id, delivery_count,
    content_type, reason, raw_body, replayed_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub const LIST_QUARANTINE: &str = "SELECT TOP (@P1) id, received_at, message_id, delivery_count, content_type, reason,
    raw_body, replayed_at
FROM dbo.quarantine_messages ORDER BY received_at DESC, id DESC";

pub const GET_QUARANTINED: &str = "SELECT id, received_at, message_id, delivery_count, content_type, reason, raw_body,
    replayed_at
FROM dbo.quarantine_messages WHERE id = @P1";

pub const MARK_QUARANTINE_REPLAYED: &str = "UPDATE dbo.quarantine_messages SET replayed_at = @P2 WHERE id = @P1";

/// The publisher's page: unsent rows that are due, through the filtered index `ix_outbox_pending`.
pub const PENDING_OUTBOX: &str = "SELECT TOP (@P2) seq, id, event_type, subject, payload, created_at, available_at,
    attempts, last_error, sent_at
FROM dbo.outbox_messages WHERE sent_at IS NULL AND available_at <= @P1 ORDER BY available_at, seq";

pub const MARK_OUTBOX_SENT: &str =
    "UPDATE dbo.outbox_messages SET sent_at = @P2, attempts = attempts + 1, last_error = NULL
WHERE id = @P1 AND sent_at IS NULL";

pub const MARK_OUTBOX_FAILED: &str = "UPDATE dbo.outbox_messages SET attempts = attempts + 1, last_error = @P2,
    available_at = @P3
WHERE id = @P1 AND sent_at IS NULL";

pub const LIST_OUTBOX: &str = "SELECT TOP (@P2) seq, id, event_type, subject, payload, created_at, available_at,
    attempts, last_error, sent_at
FROM dbo.outbox_messages WHERE seq > @P1 ORDER BY seq";
pub const USAGE_ROLLUPS: &str = "SELECT window_start, operation_id, client_id, calls, units, billable_units,
    overage_units, errors, latency_sum_micros, latency_max_micros, latency_histogram
FROM dbo.usage_rollups WHERE tenant_id = @P1 AND granularity = @P2 AND window_start >= @P3 AND window_start < @P4
ORDER BY window_start, operation_id, client_id";

/// The tail of a tenant's usage: events past the watermark `@P1`, per hour, operation and client.
pub const USAGE_TAIL_HOURS: &str = concat!(
    "SELECT ",
    tsql_hour_of!("e.occurred_at"),
    " AS ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
    tsql_sums_of_events!(),
    "
FROM dbo.usage_events e WHERE e.seq > @P1 AND e.tenant_id = @P2 AND e.occurred_at >= @P3 AND e.occurred_at < @P4
GROUP BY ",
    tsql_hour_of!("e.occurred_at"),
    ", e.operation_id, COALESCE(e.client_id, N'')"
);

/// The same per day.
pub const USAGE_TAIL_DAYS: &str = concat!(
    "SELECT CAST(CAST(e.occurred_at AS DATE) AS DATETIME2(0)) AS ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
    tsql_sums_of_events!(),
    "
FROM dbo.usage_events e WHERE e.seq > @P1 AND e.tenant_id = @P2 AND e.occurred_at >= @P3 AND e.occurred_at < @P4
GROUP BY CAST(CAST(e.occurred_at AS DATE) AS DATETIME2(0)), e.operation_id, COALESCE(e.client_id, N'')"
);

/// Tenants created before the period's end (`@P4`) without a statement for `@P1`, with the period's usage.
pub const STATEMENT_DRAFTS: &str = "SELECT TOP (@P5) t.id, t.plan_code, p.currency,
    COALESCE(q.quota_units, p.monthly_quota_units) AS quota_units,
    COALESCE((SELECT SUM(r.billable_units) FROM dbo.usage_rollups r WHERE r.tenant_id = t.id
        AND r.granularity = 'day' AND r.window_start >= @P3 AND r.window_start < @P4), 0) AS used_units,
    COALESCE((SELECT SUM(r.overage_units) FROM dbo.usage_rollups r WHERE r.tenant_id = t.id
        AND r.granularity = 'day' AND r.window_start >= @P3 AND r.window_start < @P4), 0) AS overage_units,
    p.base_price_micros, p.overage_unit_price_micros
FROM dbo.tenants t JOIN dbo.plans p ON p.code = t.plan_code
LEFT JOIN dbo.quota_usage q ON q.tenant_id = t.id AND q.period_start = @P1
WHERE t.created_at < @P4 AND @P2 IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM dbo.billing_statements b WHERE b.tenant_id = t.id AND b.period_start = @P1)
ORDER BY t.id";

/// A statement, unless the tenant has one for the period (the key-range lock closes the race).
pub const INSERT_STATEMENT: &str = "INSERT INTO dbo.billing_statements (id, tenant_id, period_start, period_end,
    plan_code, currency, quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros,
    total_amount_micros, created_at)
SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13
WHERE NOT EXISTS (SELECT 1 FROM dbo.billing_statements WITH (UPDLOCK, HOLDLOCK)
    WHERE tenant_id = @P2 AND period_start = @P3)";

pub const LIST_STATEMENTS: &str = "SELECT TOP (1000) id, tenant_id, period_start, period_end, plan_code, currency,
    quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at
FROM dbo.billing_statements WHERE tenant_id = @P1 ORDER BY period_start DESC";

pub const GET_STATEMENT: &str = "SELECT id, tenant_id, period_start, period_end, plan_code, currency,
    quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at
FROM dbo.billing_statements WHERE tenant_id = @P1 AND period_start = @P2";

/// Every constant statement above, named, for the parse check (the assembled ones: [`assembled_examples`]).
pub const ALL: &[(&str, &str)] = &[
    ("PLAN_COSTS", PLAN_COSTS),
    ("PLAN_EXISTS", PLAN_EXISTS),
    ("DELETE_PLAN_COSTS", DELETE_PLAN_COSTS),
    ("INSERT_PLAN_COST", INSERT_PLAN_COST),
    ("CREATE_HISTORY", CREATE_HISTORY),
    ("LOCK_MIGRATIONS", LOCK_MIGRATIONS),
    ("UNLOCK_MIGRATIONS", UNLOCK_MIGRATIONS),
    ("READ_HISTORY", READ_HISTORY),
    ("INSERT_HISTORY", INSERT_HISTORY),
    ("SESSION_OPTIONS", SESSION_OPTIONS),
    ("PING", PING),
    ("INSERT_JOB_RUN", INSERT_JOB_RUN),
    ("RECENT_JOB_RUNS", RECENT_JOB_RUNS),
    ("INSERT_PLAN", INSERT_PLAN),
    ("GET_PLAN", GET_PLAN),
    ("INSERT_TENANT", INSERT_TENANT),
    ("GET_TENANT", GET_TENANT),
    ("GET_TENANT_BY_ENTRA_ID", GET_TENANT_BY_ENTRA_ID),
    ("LIST_TENANTS_FIRST", LIST_TENANTS_FIRST),
    ("LIST_TENANTS_AFTER", LIST_TENANTS_AFTER),
    ("SET_TENANT_STATUS", SET_TENANT_STATUS),
    ("INSERT_API_CLIENT", INSERT_API_CLIENT),
    ("INSERT_API_CLIENT_ROLE", INSERT_API_CLIENT_ROLE),
    ("API_CLIENTS_FOR_APP", API_CLIENTS_FOR_APP),
    ("DIRECTORY_OWNED_BY_OTHER", DIRECTORY_OWNED_BY_OTHER),
    ("ACTIVE_ELSEWHERE", ACTIVE_ELSEWHERE),
    ("DECIDE_API_CLIENT", DECIDE_API_CLIENT),
    ("API_CLIENT_ROLES", API_CLIENT_ROLES),
    ("ACQUIRE_LEASE", ACQUIRE_LEASE),
    ("RELEASE_LEASE", RELEASE_LEASE),
    ("ENSURE_QUOTA_PERIOD", ENSURE_QUOTA_PERIOD),
    ("DEBIT_QUOTA", DEBIT_QUOTA),
    ("REFUND_QUOTA", REFUND_QUOTA),
    ("GET_QUOTA", GET_QUOTA),
    ("LOCK_RATE_STATE", LOCK_RATE_STATE),
    ("UPSERT_RATE_STATE", UPSERT_RATE_STATE),
    ("INSERT_USAGE_EVENT", INSERT_USAGE_EVENT),
    ("COUNT_USAGE_EVENTS", COUNT_USAGE_EVENTS),
    ("UPDATE_TENANT", UPDATE_TENANT),
    ("LIST_PLANS", LIST_PLANS),
    ("UPDATE_PLAN", UPDATE_PLAN),
    ("LIST_API_CLIENTS", LIST_API_CLIENTS),
    ("LIST_API_CLIENT_ROLES", LIST_API_CLIENT_ROLES),
    ("GET_TENANT_API_CLIENT", GET_TENANT_API_CLIENT),
    ("REVOKE_API_CLIENT", REVOKE_API_CLIENT),
    ("INSERT_DOCUMENT", INSERT_DOCUMENT),
    ("INSERT_DOCUMENT_TAG", INSERT_DOCUMENT_TAG),
    ("GET_DOCUMENT", GET_DOCUMENT),
    ("LIVE_DOCUMENT_VERSION", LIVE_DOCUMENT_VERSION),
    ("UPDATE_DOCUMENT", UPDATE_DOCUMENT),
    ("DELETE_DOCUMENT_TAGS", DELETE_DOCUMENT_TAGS),
    ("SOFT_DELETE_DOCUMENT", SOFT_DELETE_DOCUMENT),
    ("DELETE_EXPIRED_IDEMPOTENCY_KEY", DELETE_EXPIRED_IDEMPOTENCY_KEY),
    ("INSERT_IDEMPOTENCY", INSERT_IDEMPOTENCY),
    ("GET_IDEMPOTENCY", GET_IDEMPOTENCY),
    ("AUDIT_EVENT_EXISTS", AUDIT_EVENT_EXISTS),
    ("AUDIT_CHAIN_HEAD", AUDIT_CHAIN_HEAD),
    ("INSERT_AUDIT_EVENT", INSERT_AUDIT_EVENT),
    ("AUDIT_CHAIN", AUDIT_CHAIN),
    ("INSERT_OUTBOX", INSERT_OUTBOX),
    ("FLAG_QUOTA_80", FLAG_QUOTA_80),
    ("FLAG_QUOTA_100", FLAG_QUOTA_100),
    ("INSERT_INBOX", INSERT_INBOX),
    ("LOCK_TENANT_STATUS", LOCK_TENANT_STATUS),
    ("INSERT_ACTIVE_TENANT", INSERT_ACTIVE_TENANT),
    ("UPDATE_TENANT_FROM_EVENT", UPDATE_TENANT_FROM_EVENT),
    ("SET_TENANT_STATUS_FROM_EVENT", SET_TENANT_STATUS_FROM_EVENT),
    ("CHANGE_TENANT_PLAN", CHANGE_TENANT_PLAN),
    ("DOCUMENT_OWNER", DOCUMENT_OWNER),
    ("REPLACE_DOCUMENT_FROM_EVENT", REPLACE_DOCUMENT_FROM_EVENT),
    ("TENANT_PLAN_QUOTA", TENANT_PLAN_QUOTA),
    ("USAGE_EVENT_EXISTS", USAGE_EVENT_EXISTS),
    ("DEBIT_QUOTA_UNCONDITIONALLY", DEBIT_QUOTA_UNCONDITIONALLY),
    ("INSERT_QUARANTINE", INSERT_QUARANTINE),
    ("LIST_QUARANTINE", LIST_QUARANTINE),
    ("GET_QUARANTINED", GET_QUARANTINED),
    ("MARK_QUARANTINE_REPLAYED", MARK_QUARANTINE_REPLAYED),
    ("PENDING_OUTBOX", PENDING_OUTBOX),
    ("MARK_OUTBOX_SENT", MARK_OUTBOX_SENT),
    ("MARK_OUTBOX_FAILED", MARK_OUTBOX_FAILED),
    ("LIST_OUTBOX", LIST_OUTBOX),
    ("LOCK_POSITION", LOCK_POSITION),
    ("READ_POSITION_HOLDLOCK", READ_POSITION_HOLDLOCK),
    ("READ_POSITIONS", READ_POSITIONS),
    ("PUT_POSITION", PUT_POSITION),
    ("SCAN_ROLLUP_BATCH", SCAN_ROLLUP_BATCH),
    ("COUNT_SEQ_RANGE", COUNT_SEQ_RANGE),
    ("ROLLUP_HOURS_OF_NEW_EVENTS", ROLLUP_HOURS_OF_NEW_EVENTS),
    ("ROLLUP_DAYS_OF_NEW_EVENTS", ROLLUP_DAYS_OF_NEW_EVENTS),
    ("ROLLUP_HOUR_OF_EVERY_TENANT", ROLLUP_HOUR_OF_EVERY_TENANT),
    ("ROLLUP_DAY_OF_EVERY_TENANT", ROLLUP_DAY_OF_EVERY_TENANT),
    ("PURGE_USAGE_EVENTS", PURGE_USAGE_EVENTS),
    ("USAGE_ROLLUPS", USAGE_ROLLUPS),
    ("USAGE_TAIL_HOURS", USAGE_TAIL_HOURS),
    ("USAGE_TAIL_DAYS", USAGE_TAIL_DAYS),
    ("STATEMENT_DRAFTS", STATEMENT_DRAFTS),
    ("INSERT_STATEMENT", INSERT_STATEMENT),
    ("LIST_STATEMENTS", LIST_STATEMENTS),
    ("GET_STATEMENT", GET_STATEMENT),
];
