//! The T-SQL statements of the aggregates whose statements have not moved next to their code yet (each moved
//! aggregate's file lists its own in `STATEMENTS`); `mssql::STATEMENTS` registers them all for `store::tsql_check`.
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
    DocumentCursor, DocumentFilter, DocumentSort, DocumentSortKey, NO_EFFECTIVE_DATE, SortValue,
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
    pub(crate) fn bind(&mut self, arg: Arg) -> String {
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

/// Every shape the assembling functions produce, named, for the parse check (`store::tsql_check`).
#[cfg(test)]
pub fn assembled_examples() -> Vec<(String, Assembled)> {
    use chrono::TimeZone;

    use crate::store::model::DocumentStatus;
    use crate::store::{AuditCursor, AuditFilter};

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
        outcome: Some(crate::store::AuditOutcome::Denied),
        from: Some(t),
        to: Some(t),
    };
    let audit_cursor = AuditCursor { occurred_at: t, id };
    for (tenant_name, tenant_id) in [("tenant", Some(tenant)), ("platform", None)] {
        for (filter_name, filter) in [("no filter", AuditFilter::default()), ("all filters", audit.clone())] {
            for cursor in [None, Some(&audit_cursor)] {
                let name = format!("list_audit_events {tenant_name} {filter_name} cursor={}", cursor.is_some());
                out.push((name, super::audit::list_audit_events(tenant_id, &filter, cursor, 26)));
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

// Integration: inbox, effects of integration messages, quarantine, outbox.

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
];
