//! The embedded store: one SQLite file in WAL mode, a single writer connection and a small pool of readers.
//!
//! rusqlite is blocking: lookups by key run on the calling thread (cheaper than a hand-off), everything that
//! scans runs on tokio's blocking pool, a bounded number at once. Writes go to one writer thread that owns the
//! write connection (SQLite allows one writer at a time anyway) and commits concurrent writes together
//! ([`writer`]: group commit, one savepoint per write). Its transactions use `BEGIN IMMEDIATE`, so two
//! handler processes on one file queue on the file lock instead of failing half-way. With `synchronous=NORMAL`
//! in WAL mode a committed transaction survives a killed process (SIGKILL); only an OS crash can lose the tail.
//! WAL checkpoints run on their own thread ([`checkpoint`]).

mod checkpoint;
mod writer;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rusqlite::types::Value;
use rusqlite::{Connection, ErrorCode as SqliteCode, OpenFlags, OptionalExtension, params, params_from_iter};
use uuid::Uuid;

use super::migrations::{self, AppliedMigration, MigrationReport};
use super::model::*;
use super::{DocumentStore, JobRun, OperationsStore, PlanStore, StoreError, TenantStore, Update};
use super::{audit::*, metering::*};
use writer::Writer;

mod integration;
/// Store-internal helpers that write outbox events inside an open write transaction.
#[allow(unused_imports)]
pub(crate) use integration::{emit_quota_thresholds, insert_outbox};

mod usage;

mod audit;
mod metering;
/// Write helpers other aggregates call inside their own write transactions.
#[allow(unused_imports)]
pub(crate) use audit::append_audit;
#[allow(unused_imports)]
pub(crate) use metering::{debit_period, insert_usage_event, read_quota, take_rate, write_ledger};

const BUSY_TIMEOUT: Duration = Duration::from_secs(5);
/// Reader connections kept open, and the most reads that run on the blocking pool at once: two per core, at
/// least 4. More scans than that only contend for the cores, and each extra one would open a connection and
/// take a thread (on 2 cores, 16 concurrent searches peaked at 80 MiB unbounded, 36 MiB with 4; BENCHMARKS.md).
fn max_readers() -> usize {
    std::thread::available_parallelism().map_or(4, |n| (2 * n.get()).max(4))
}
/// Each reader's page cache, in KiB (SQLite's default is 2 000). A commit by the writer empties the caches
/// of the other connections in WAL mode anyway, so under writes a larger cache holds little worth keeping;
/// scans read through the OS's file cache.
const READER_CACHE_KIB: i64 = 512;

/// The SQLite implementation of [`Store`].
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    path: PathBuf,
    writer: Writer,
    readers: Mutex<Vec<Connection>>,
    /// Bounds the reads on the blocking pool to `max_readers`, which is also how many readers stay open.
    scans: tokio::sync::Semaphore,
    max_readers: usize,
}

impl Inner {
    /// Runs `f` with a pooled reader connection (a new one when none is idle), then returns it to the pool.
    fn with_reader<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        let pooled = self.readers.lock().expect("reader pool lock").pop();
        let conn = match pooled {
            Some(conn) => conn,
            None => {
                let conn = connect(&self.path)?;
                conn.pragma_update(None, "cache_size", -READER_CACHE_KIB).map_err(classify)?;
                conn
            }
        };
        let result = f(&conn);
        let mut readers = self.readers.lock().expect("reader pool lock");
        if readers.len() < self.max_readers {
            readers.push(conn);
        }
        result
    }
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
            let mut writer = connect(&path)?;
            writer.pragma_update(None, "journal_mode", "WAL").map_err(classify)?;
            checkpoint::install(&mut writer, &path, checkpoint::Thresholds::DEFAULT)?;
            let writer = Writer::start(writer)?;
            let max_readers = max_readers();
            Ok(SqliteStore {
                inner: Arc::new(Inner {
                    path,
                    writer,
                    readers: Mutex::new(Vec::new()),
                    scans: tokio::sync::Semaphore::new(max_readers),
                    max_readers,
                }),
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
        let _permit = self.inner.scans.acquire().await.expect("the read semaphore is never closed");
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || inner.with_reader(f)).await.map_err(|e| StoreError::Other(e.into()))?
    }

    /// Runs `f`, a lookup by key (a few pages, a few microseconds), on the calling thread with a reader
    /// connection. Handing such a read to the blocking pool and back costs more than the read itself (two
    /// thread wake-ups; BENCHMARKS.md). Anything that scans (listings, search, reports) uses [`Self::read`],
    /// so an async worker thread is never held for longer than a point lookup.
    fn read_point<T>(&self, f: impl FnOnce(&Connection) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.inner.with_reader(f)
    }

    /// Runs `f` as one write of the next group commit (see [`writer`]); returns once it is committed.
    /// If `f` fails, its changes are rolled back and nothing else is affected.
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.inner.writer.write(f).await
    }
}

fn connect(path: &Path) -> Result<Connection, StoreError> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE | OpenFlags::SQLITE_OPEN_NO_MUTEX;
    let conn = Connection::open_with_flags(path, flags)
        .map_err(|e| StoreError::Unavailable(anyhow::Error::new(e).context(format!("opening {}", path.display()))))?;
    conn.busy_timeout(BUSY_TIMEOUT).map_err(classify)?;
    conn.pragma_update(None, "synchronous", "NORMAL").map_err(classify)?;
    conn.pragma_update(None, "foreign_keys", "ON").map_err(classify)?;
    // The request path's statements stay prepared (the dynamic listings take a few slots more).
    conn.set_prepared_statement_cache_capacity(64);
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

fn read_tenant_row(conn: &Connection, id: Uuid) -> Result<Option<Tenant>, StoreError> {
    query_one(conn, &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"), [id.to_string()], tenant_from_row)
}

const API_CLIENT_COLUMNS: &str = "id, tenant_id, directory_id, app_id, display_name, status, created_at, revoked_at, \
     decided_by, decided_at, version";

/// An API client row without its roles (`roles` is empty; see [`read_api_client`]).
fn api_client_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<ApiClient, StoreError>> {
    let (id, tenant, directory, app_id, name): (String, String, Option<String>, String, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (status, created, revoked): (String, String, Option<String>) = (r.get(5)?, r.get(6)?, r.get(7)?);
    let (decided_by, decided_at, version): (Option<String>, Option<String>, i64) = (r.get(8)?, r.get(9)?, r.get(10)?);
    Ok((|| {
        Ok(ApiClient {
            id: parse_uuid(&id)?,
            tenant_id: parse_uuid(&tenant)?,
            directory_id: directory.as_deref().map(parse_uuid).transpose()?,
            app_id,
            display_name: name,
            roles: Vec::new(),
            status: ClientStatus::parse(&status)
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("unknown client status {status:?}")))?,
            created_at: parse_timestamp(&created)?,
            revoked_at: revoked.as_deref().map(parse_timestamp).transpose()?,
            decided_by,
            decided_at: decided_at.as_deref().map(parse_timestamp).transpose()?,
            version,
        })
    })())
}

fn client_roles(conn: &Connection, client_id: Uuid) -> Result<Vec<String>, StoreError> {
    query_all(
        conn,
        "SELECT role FROM api_client_roles WHERE client_id = ?1 ORDER BY role",
        [client_id.to_string()],
        |r| Ok(Ok(r.get::<_, String>(0)?)),
    )
}

/// A client of `tenant_id` with its roles; a client of another tenant is `None`.
fn read_api_client(conn: &Connection, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiClient>, StoreError> {
    let sql = format!("SELECT {API_CLIENT_COLUMNS} FROM api_client_registrations WHERE tenant_id = ?1 AND id = ?2");
    let Some(mut client) = query_one(conn, &sql, [tenant_id.to_string(), id.to_string()], api_client_from_row)? else {
        return Ok(None);
    };
    client.roles = client_roles(conn, client.id)?;
    Ok(Some(client))
}

/// The most tags a listing may ask for (`DocumentFilter::tags_any`): each is one bound parameter.
const MAX_TAGS_ANY: usize = 20;

/// Ids per `IN (...)` list when loading the tags of a page.
const TAG_LOAD_CHUNK: usize = 500;

/// The first and last dates both stores can hold (SQL Server `DATE`); dates outside are clamped in filters and
/// cursors, which changes no answer because no stored date lies outside.
const FIRST_DATE: NaiveDate = NaiveDate::from_ymd_opt(1, 1, 1).expect("valid date");
const LAST_DATE: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("valid date");

const DOCUMENT_COLUMNS: &str = "d.id, d.tenant_id, d.title, d.summary, d.body, d.doc_type, d.jurisdiction, d.status, \
    d.effective_date, d.created_by, d.updated_by, d.created_at, d.updated_at, d.version";

/// A document row without its tags (see [`load_tags`]).
fn document_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Document, StoreError>> {
    let (id, tenant, title, summary, body): (String, String, String, Option<String>, Option<String>) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (doc_type, jurisdiction, status, effective): (String, Option<String>, String, Option<String>) =
        (r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?);
    let (created_by, updated_by, created, updated, version): (String, String, String, String, i64) =
        (r.get(9)?, r.get(10)?, r.get(11)?, r.get(12)?, r.get(13)?);
    Ok((|| {
        Ok(Document {
            id: parse_uuid(&id)?,
            tenant_id: parse_uuid(&tenant)?,
            title,
            summary,
            body,
            doc_type,
            jurisdiction,
            status: DocumentStatus::parse(&status).ok_or_else(|| corrupt("document status", &status))?,
            effective_date: effective.as_deref().map(parse_date).transpose()?,
            tags: Vec::new(),
            created_by,
            updated_by,
            created_at: parse_timestamp(&created)?,
            updated_at: parse_timestamp(&updated)?,
            version,
        })
    })())
}

/// Fills in the tags of `documents`, all of `tenant_id`, each set sorted.
fn load_tags(conn: &Connection, tenant_id: Uuid, documents: &mut [Document]) -> Result<(), StoreError> {
    for chunk in documents.chunks_mut(TAG_LOAD_CHUNK) {
        let placeholders: Vec<String> = (0..chunk.len()).map(|i| format!("?{}", i + 2)).collect();
        let sql = format!(
            // `+tenant_id` keeps the tenant filter but stops SQLite (without ANALYZE statistics) from choosing
            // ix_document_tags_tag, which read every tag of the tenant on every page; the primary key
            // (document_id, tag) then serves the page's ids directly.
            "SELECT document_id, tag FROM document_tags WHERE +tenant_id = ?1 AND document_id IN ({})",
            placeholders.join(", ")
        );
        let values = std::iter::once(tenant_id.to_string()).chain(chunk.iter().map(|d| d.id.to_string()));
        let pairs = query_all(conn, &sql, params_from_iter(values), |r| {
            let (id, tag): (String, String) = (r.get(0)?, r.get(1)?);
            Ok(parse_uuid(&id).map(|id| (id, tag)))
        })?;
        let mut by_document: HashMap<Uuid, Vec<String>> = HashMap::new();
        for (id, tag) in pairs {
            by_document.entry(id).or_default().push(tag);
        }
        for document in chunk {
            document.tags = by_document.remove(&document.id).unwrap_or_default();
            document.tags.sort();
        }
    }
    Ok(())
}

/// A live document of `tenant_id` with its tags.
fn read_document(conn: &Connection, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError> {
    let sql = format!(
        "SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.tenant_id = ?1 AND d.id = ?2 AND d.deleted_at IS NULL"
    );
    let Some(document) = query_one(conn, &sql, [tenant_id.to_string(), id.to_string()], document_from_row)? else {
        return Ok(None);
    };
    let mut one = [document];
    load_tags(conn, tenant_id, &mut one)?;
    let [document] = one;
    Ok(Some(document))
}

/// The version of a live document of `tenant_id`, to tell a stale version from a missing document.
fn live_document_version(conn: &Connection, tenant_id: Uuid, id: Uuid) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "SELECT version FROM documents WHERE tenant_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        [tenant_id.to_string(), id.to_string()],
        |r| r.get(0),
    )
    .optional()
    .map_err(classify)
}

/// Inserts the tags of `document` (duplicates written once).
fn insert_tags(tx: &Connection, document: &Document) -> Result<(), StoreError> {
    let mut tags: Vec<&str> = document.tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    tags.dedup();
    let mut stmt = tx
        .prepare_cached("INSERT INTO document_tags (document_id, tenant_id, tag) VALUES (?1, ?2, ?3)")
        .map_err(classify)?;
    for tag in tags {
        stmt.execute(params![document.id.to_string(), document.tenant_id.to_string(), tag]).map_err(classify)?;
    }
    Ok(())
}

/// Refuses effective dates SQL Server's `DATE` cannot hold, so both stores accept the same documents.
fn check_effective_date(document: &Document) -> Result<(), StoreError> {
    match document.effective_date {
        Some(date) if !(FIRST_DATE..=LAST_DATE).contains(&date) => {
            Err(StoreError::Other(anyhow::anyhow!("effective date {date} is outside 0001-01-01..9999-12-31")))
        }
        _ => Ok(()),
    }
}

/// Rounds up to whole microseconds, the stored precision: for a stored time `s`, `s >= t` is `s >= ceil(t)`
/// and `s < t` is `s < ceil(t)`, so the time filters stay exact for inputs with nanoseconds.
fn ceil_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    match t.timestamp_subsec_nanos() % 1_000 {
        0 => t,
        extra => t + chrono::Duration::nanoseconds(i64::from(1_000 - extra)),
    }
}

/// `LIKE` pattern for "contains `text`", with SQLite's wildcards `%`, `_` and the escape character `\`
/// escaped (used with `ESCAPE '\'`; `[` is not special in SQLite's LIKE).
fn like_contains(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// A statement assembled from fixed fragments, with its values bound in placeholder order (`?1` first).
#[derive(Default)]
struct Assembled {
    sql: String,
    values: Vec<Value>,
}

impl Assembled {
    /// Binds a value and returns its placeholder.
    fn bind(&mut self, value: impl Into<Value>) -> String {
        self.values.push(value.into());
        format!("?{}", self.values.len())
    }
}

/// `FROM`, tenant, live rows and every filter of a document listing (shared by the page and the count).
fn document_conditions(a: &mut Assembled, tenant_id: Uuid, filter: &DocumentFilter) -> Result<(), StoreError> {
    if filter.tags_any.len() > MAX_TAGS_ANY {
        return Err(StoreError::Other(anyhow::anyhow!(
            "a listing may ask for at most {MAX_TAGS_ANY} tags, got {}",
            filter.tags_any.len()
        )));
    }
    let tenant = a.bind(tenant_id.to_string());
    a.sql.push_str(&format!(" FROM documents d WHERE d.tenant_id = {tenant} AND d.deleted_at IS NULL"));
    if let Some(status) = filter.status {
        let p = a.bind(status.as_str().to_owned());
        a.sql.push_str(&format!(" AND d.status = {p}"));
    }
    if let Some(doc_type) = &filter.doc_type {
        let p = a.bind(doc_type.clone());
        a.sql.push_str(&format!(" AND d.doc_type = {p}"));
    }
    if let Some(jurisdiction) = &filter.jurisdiction {
        let p = a.bind(jurisdiction.clone());
        a.sql.push_str(&format!(" AND d.jurisdiction = {p}"));
    }
    if !filter.tags_any.is_empty() {
        let tags: Vec<String> = filter.tags_any.iter().map(|tag| a.bind(tag.clone())).collect();
        a.sql.push_str(&format!(
            " AND EXISTS (SELECT 1 FROM document_tags t WHERE t.document_id = d.id AND t.tag IN ({}))",
            tags.join(", ")
        ));
    }
    if let Some(after) = filter.updated_after {
        let p = a.bind(timestamp(ceil_micros(after)));
        a.sql.push_str(&format!(" AND d.updated_at >= {p}"));
    }
    if let Some(before) = filter.updated_before {
        let p = a.bind(timestamp(ceil_micros(before)));
        a.sql.push_str(&format!(" AND d.updated_at < {p}"));
    }
    if let Some(from) = filter.effective_from {
        let p = a.bind(from.clamp(FIRST_DATE, LAST_DATE).to_string());
        a.sql.push_str(&format!(" AND d.effective_date >= {p}"));
    }
    if let Some(to) = filter.effective_to {
        let p = a.bind(to.clamp(FIRST_DATE, LAST_DATE).to_string());
        a.sql.push_str(&format!(" AND d.effective_date <= {p}"));
    }
    if let Some(q) = &filter.q {
        let p = a.bind(like_contains(q));
        a.sql.push_str(&format!(" AND (d.title LIKE {p} ESCAPE '\\' OR d.summary LIKE {p} ESCAPE '\\')"));
    }
    Ok(())
}

/// The sort column of a listing.
fn sort_column(key: DocumentSortKey) -> &'static str {
    match key {
        DocumentSortKey::UpdatedAt => "d.updated_at",
        DocumentSortKey::Title => "d.title",
        DocumentSortKey::EffectiveDate => "d.effective_date",
    }
}

/// "Strictly after the cursor" in the listing's order, written as a range on the sort index
/// (`key >= v AND (key > v OR id > c)`, mirrored for descending order). NULL effective dates sort first
/// ascending and last descending (SQLite's NULL order), and their cursor carries [`NO_EFFECTIVE_DATE`].
fn keyset(a: &mut Assembled, sort: DocumentSort, cursor: &DocumentCursor) -> Result<(), StoreError> {
    let value: Option<Value> = match (sort.key, &cursor.value) {
        (DocumentSortKey::UpdatedAt, SortValue::Time(t)) => Some(timestamp(*t).into()),
        (DocumentSortKey::Title, SortValue::Text(title)) => Some(title.clone().into()),
        (DocumentSortKey::EffectiveDate, SortValue::Date(date)) if *date == NO_EFFECTIVE_DATE => None,
        (DocumentSortKey::EffectiveDate, SortValue::Date(date)) => {
            Some((*date).clamp(FIRST_DATE, LAST_DATE).to_string().into())
        }
        (key, value) => {
            return Err(StoreError::Other(anyhow::anyhow!("a {value:?} cursor does not fit the {key:?} order")));
        }
    };
    let key = sort_column(sort.key);
    let id = a.bind(cursor.id.to_string());
    let (beyond, from) = if sort.descending { ("<", "<=") } else { (">", ">=") };
    let fragment = match value {
        Some(value) => {
            let v = a.bind(value);
            // Descending by date, the undated documents after these are a query of their own (`undated_tail`).
            format!(" AND {key} {from} {v} AND ({key} {beyond} {v} OR d.id {beyond} {id})")
        }
        None if sort.descending => format!(" AND d.effective_date IS NULL AND d.id < {id}"),
        None => format!(" AND (d.effective_date IS NOT NULL OR d.id > {id})"),
    };
    a.sql.push_str(&fragment);
    Ok(())
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

const IDEMPOTENCY_COLUMNS: &str = "tenant_id, idempotency_key, operation_id, request_hash, status_code, \
    response_headers, response_body, created_at, expires_at";

fn idempotency_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<IdempotencyRecord, StoreError>> {
    let (tenant, key, operation_id, request_hash, status): (String, String, String, String, i64) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (headers, body, created, expires): (String, Vec<u8>, String, String) =
        (r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?);
    Ok((|| {
        Ok(IdempotencyRecord {
            tenant_id: parse_uuid(&tenant)?,
            key,
            operation_id,
            request_hash,
            status_code: u16::try_from(status).map_err(|_| corrupt("status code", &status.to_string()))?,
            response_headers: headers,
            response_body: body,
            created_at: parse_timestamp(&created)?,
            expires_at: parse_timestamp(&expires)?,
        })
    })())
}

fn query_one<T>(
    conn: &Connection,
    sql: &str,
    params: impl rusqlite::Params,
    map: fn(&rusqlite::Row<'_>) -> rusqlite::Result<Result<T, StoreError>>,
) -> Result<Option<T>, StoreError> {
    conn.prepare_cached(sql).map_err(classify)?.query_row(params, map).optional().map_err(classify)?.transpose()
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

const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT";

/// Replaces all of a plan's cost overrides (`ForeignKey` for an unknown plan).
fn replace_plan_costs(tx: &Connection, code: &str, costs: &[(String, i64)]) -> Result<(), StoreError> {
    if tx.query_row("SELECT 1 FROM plans WHERE code = ?1", [code], |_| Ok(())).optional().map_err(classify)?.is_none() {
        return Err(StoreError::ForeignKey(format!("no plan {code}")));
    }
    tx.execute("DELETE FROM plan_operation_costs WHERE plan_code = ?1", [code]).map_err(classify)?;
    for (operation, units) in costs {
        tx.execute(
            "INSERT INTO plan_operation_costs (plan_code, operation_id, units) VALUES (?1, ?2, ?3)",
            params![code, operation, units],
        )
        .map_err(classify)?;
    }
    Ok(())
}

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
impl OperationsStore for SqliteStore {
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

#[async_trait]
impl TenantStore for SqliteStore {
    async fn create_tenant(&self, tenant: &Tenant, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        let (t, ledger) = (tenant.clone(), ledger.cloned());
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
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        self.read_point(|conn| {
            query_one(
                conn,
                &format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE id = ?1"),
                [id.to_string()],
                tenant_from_row,
            )
        })
    }

    async fn get_tenant_by_entra_id(&self, entra_tenant_id: Uuid) -> Result<Option<Tenant>, StoreError> {
        self.read_point(|conn| {
            let sql = format!("SELECT {TENANT_COLUMNS} FROM tenants WHERE entra_tenant_id = ?1");
            query_one(conn, &sql, [entra_tenant_id.to_string()], tenant_from_row)
        })
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
            let before = read_tenant_row(tx, id)?;
            let changed = tx
                .execute(
                    "UPDATE tenants SET status = ?1, updated_at = ?2, version = version + 1 WHERE id = ?3 AND version = ?4",
                    params![status.as_str(), timestamp(now), id.to_string(), expected_version],
                )
                .map_err(classify)?;
            let current = read_tenant_row(tx, id)?;
            Ok(match (changed, current, before) {
                (_, None, _) => Update::NotFound,
                (1, Some(tenant), Some(before)) => {
                    integration::announce_status_change(tx, before.status, &tenant, now)?;
                    Update::Updated(tenant)
                }
                (1, Some(tenant), None) => Update::Updated(tenant),
                (_, Some(tenant), _) => Update::VersionMismatch { current_version: tenant.version },
            })
        })
        .await
    }

    async fn update_tenant(
        &self,
        id: Uuid,
        changes: &TenantChanges,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Tenant>, StoreError> {
        let (changes, ledger) = (changes.clone(), ledger.cloned());
        self.write(move |tx| {
            let before = read_tenant_row(tx, id)?;
            let changed = tx
                .execute(
                    "UPDATE tenants SET name = coalesce(?1, name), status = coalesce(?2, status),
                         plan_code = coalesce(?3, plan_code), updated_at = ?4, version = version + 1
                     WHERE id = ?5 AND version = ?6",
                    params![
                        changes.name,
                        changes.status.map(TenantStatus::as_str),
                        changes.plan_code,
                        timestamp(now),
                        id.to_string(),
                        expected_version
                    ],
                )
                .map_err(classify)?;
            let current = read_tenant_row(tx, id)?;
            Ok(match (changed, current, before) {
                (_, None, _) => Update::NotFound,
                (1, Some(tenant), Some(before)) => {
                    integration::announce_status_change(tx, before.status, &tenant, now)?;
                    write_ledger(tx, ledger.as_ref())?;
                    Update::Updated(tenant)
                }
                (1, Some(tenant), None) => {
                    write_ledger(tx, ledger.as_ref())?;
                    Update::Updated(tenant)
                }
                (_, Some(tenant), _) => Update::VersionMismatch { current_version: tenant.version },
            })
        })
        .await
    }

    async fn list_api_clients(&self, tenant_id: Uuid) -> Result<Vec<ApiClient>, StoreError> {
        self.read(move |conn| {
            // One read transaction: the clients and their roles come from the same snapshot.
            let tx = conn.unchecked_transaction().map_err(classify)?;
            let tenant = tenant_id.to_string();
            let sql =
                format!("SELECT {API_CLIENT_COLUMNS} FROM api_client_registrations WHERE tenant_id = ?1 ORDER BY created_at, id");
            let mut clients = query_all(&tx, &sql, [&tenant], api_client_from_row)?;
            let roles = query_all(
                &tx,
                "SELECT r.client_id, r.role FROM api_client_roles r JOIN api_client_registrations c ON c.id = r.client_id
                 WHERE c.tenant_id = ?1 ORDER BY r.client_id, r.role",
                [&tenant],
                |r| {
                    let (client, role): (String, String) = (r.get(0)?, r.get(1)?);
                    Ok(parse_uuid(&client).map(|client| (client, role)))
                },
            )?;
            tx.commit().map_err(classify)?;
            let mut by_client: HashMap<Uuid, Vec<String>> = HashMap::new();
            for (client, role) in roles {
                by_client.entry(client).or_default().push(role);
            }
            for client in &mut clients {
                client.roles = by_client.remove(&client.id).unwrap_or_default();
            }
            Ok(clients)
        })
        .await
    }

    async fn revoke_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError> {
        let ledger = ledger.cloned();
        self.write(move |tx| {
            tx.execute(
                "UPDATE api_client_registrations SET status = 'revoked', revoked_at = ?1, version = version + 1
                 WHERE tenant_id = ?2 AND id = ?3 AND status IN ('pending', 'active')",
                params![timestamp(now), tenant_id.to_string(), id.to_string()],
            )
            .map_err(classify)?;
            // Revoked now or before: either way the client is revoked, and the row says since when.
            Ok(match read_api_client(tx, tenant_id, id)? {
                Some(client) => {
                    write_ledger(tx, ledger.as_ref())?;
                    Update::Updated(client)
                }
                None => Update::NotFound,
            })
        })
        .await
    }

    async fn create_api_client(&self, client: &ApiClient, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        let (c, ledger) = (client.clone(), ledger.cloned());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO api_client_registrations (id, tenant_id, directory_id, app_id, display_name, status,
                     created_at, revoked_at, decided_by, decided_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
                params![
                    c.id.to_string(),
                    c.tenant_id.to_string(),
                    c.directory_id.map(|d| d.to_string()),
                    c.app_id,
                    c.display_name,
                    c.status.as_str(),
                    timestamp(c.created_at),
                    c.revoked_at.map(timestamp),
                    c.decided_by,
                    c.decided_at.map(timestamp),
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
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn api_clients_for_app(&self, directory_id: Uuid, app_id: &str) -> Result<Vec<ApiClient>, StoreError> {
        self.read_point(|conn| {
            let sql = format!(
                "SELECT {API_CLIENT_COLUMNS} FROM api_client_registrations WHERE directory_id = ?1 AND app_id = ?2
                 ORDER BY created_at, id"
            );
            let mut clients = query_all(conn, &sql, params![directory_id.to_string(), app_id], api_client_from_row)?;
            for client in &mut clients {
                client.roles = client_roles(conn, client.id)?;
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
        let (decision, ledger) = (decision.clone(), ledger.cloned());
        self.write(move |tx| {
            let Some(client) = read_api_client(tx, tenant_id, id)? else {
                return Ok(Update::NotFound);
            };
            check_decidable(&client)?;
            if decision.approve {
                let directory = client.directory_id.map(|d| d.to_string());
                let owner: Option<String> = tx
                    .query_row(
                        "SELECT id FROM tenants WHERE entra_tenant_id = ?1 AND id <> ?2",
                        params![directory, tenant_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(classify)?;
                let taken: Option<String> = tx
                    .query_row(
                        "SELECT id FROM api_client_registrations
                         WHERE directory_id = ?1 AND app_id = ?2 AND status = 'active' AND tenant_id <> ?3 LIMIT 1",
                        params![directory, client.app_id, tenant_id.to_string()],
                        |r| r.get(0),
                    )
                    .optional()
                    .map_err(classify)?;
                check_approvable(owner.is_some(), taken.is_some())?;
            }
            tx.execute(
                "UPDATE api_client_registrations SET status = ?1, decided_by = ?2, decided_at = ?3,
                     version = version + 1
                 WHERE tenant_id = ?4 AND id = ?5 AND status = 'pending'",
                params![
                    if decision.approve { "active" } else { "rejected" },
                    decision.by,
                    timestamp(decision.at),
                    tenant_id.to_string(),
                    id.to_string()
                ],
            )
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())?;
            Ok(read_api_client(tx, tenant_id, id)?.map_or(Update::NotFound, Update::Updated))
        })
        .await
    }
}

#[async_trait]
impl PlanStore for SqliteStore {
    async fn create_plan(&self, plan: &Plan, ledger: Option<&Ledger>) -> Result<(), StoreError> {
        let (p, ledger) = (plan.clone(), ledger.cloned());
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
            .map_err(classify)?;
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn get_plan(&self, code: &str) -> Result<Option<Plan>, StoreError> {
        self.read_point(|conn| {
            query_one(conn, &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE code = ?1"), [code], plan_from_row)
        })
    }

    async fn plan_operation_costs(&self, plan_code: &str) -> Result<Vec<(String, i64)>, StoreError> {
        let code = plan_code.to_owned();
        self.read(move |conn| {
            query_all(
                conn,
                "SELECT operation_id, units FROM plan_operation_costs WHERE plan_code = ?1 ORDER BY operation_id",
                [code],
                |r| Ok(Ok((r.get(0)?, r.get(1)?))),
            )
        })
        .await
    }

    async fn set_plan_operation_costs(&self, plan_code: &str, costs: &[(String, i64)]) -> Result<(), StoreError> {
        let (code, costs) = (plan_code.to_owned(), costs.to_vec());
        self.write(move |tx| replace_plan_costs(tx, &code, &costs)).await
    }

    async fn list_plans(&self) -> Result<Vec<Plan>, StoreError> {
        self.read(|conn| query_all(conn, &format!("SELECT {PLAN_COLUMNS} FROM plans ORDER BY code"), [], plan_from_row))
            .await
    }

    async fn update_plan(
        &self,
        plan: &Plan,
        expected_version: i64,
        costs: Option<&[(String, i64)]>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Plan>, StoreError> {
        let (p, costs, ledger) = (plan.clone(), costs.map(<[_]>::to_vec), ledger.cloned());
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE plans SET name = ?1, requests_per_minute = ?2, burst = ?3, monthly_quota_units = ?4,
                         overage_policy = ?5, currency = ?6, base_price_micros = ?7, overage_unit_price_micros = ?8,
                         updated_at = ?9, version = version + 1
                     WHERE code = ?10 AND version = ?11",
                    params![
                        p.name,
                        p.requests_per_minute,
                        p.burst,
                        p.monthly_quota_units,
                        p.overage_policy.as_str(),
                        p.currency,
                        p.base_price_micros,
                        p.overage_unit_price_micros,
                        timestamp(p.updated_at),
                        p.code,
                        expected_version
                    ],
                )
                .map_err(classify)?;
            let current =
                query_one(tx, &format!("SELECT {PLAN_COLUMNS} FROM plans WHERE code = ?1"), [&p.code], plan_from_row)?;
            Ok(match (changed, current) {
                (_, None) => Update::NotFound,
                (1, Some(plan)) => {
                    if let Some(costs) = &costs {
                        replace_plan_costs(tx, &plan.code, costs)?;
                    }
                    write_ledger(tx, ledger.as_ref())?;
                    Update::Updated(plan)
                }
                (_, Some(plan)) => Update::VersionMismatch { current_version: plan.version },
            })
        })
        .await
    }
}

#[async_trait]
impl DocumentStore for SqliteStore {
    async fn create_document(
        &self,
        document: &Document,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError> {
        check_effective_date(document)?;
        let (d, record, ledger) = (document.clone(), idempotency.cloned(), ledger.cloned());
        self.write(move |tx| {
            if let Some(r) = &record {
                let (tenant, key) = (r.tenant_id.to_string(), r.key.as_str());
                // An expired record no longer answers (see get_idempotency), so its key is free again.
                tx.execute(
                    "DELETE FROM idempotency_keys WHERE tenant_id = ?1 AND idempotency_key = ?2 AND expires_at <= ?3",
                    params![tenant, key, timestamp(r.created_at)],
                )
                .map_err(classify)?;
                tx.execute(
                    &format!("INSERT INTO idempotency_keys ({IDEMPOTENCY_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"),
                    params![
                        tenant,
                        key,
                        r.operation_id,
                        r.request_hash,
                        r.status_code,
                        r.response_headers,
                        r.response_body,
                        timestamp(r.created_at),
                        timestamp(r.expires_at)
                    ],
                )
                .map_err(classify)?;
            }
            tx.execute(
                "INSERT INTO documents (id, tenant_id, title, summary, body, doc_type, jurisdiction, status,
                     effective_date, created_by, updated_by, created_at, updated_at, version)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
                params![
                    d.id.to_string(),
                    d.tenant_id.to_string(),
                    d.title,
                    d.summary,
                    d.body,
                    d.doc_type,
                    d.jurisdiction,
                    d.status.as_str(),
                    d.effective_date.map(|date| date.to_string()),
                    d.created_by,
                    d.updated_by,
                    timestamp(d.created_at),
                    timestamp(d.updated_at),
                    d.version
                ],
            )
            .map_err(classify)?;
            insert_tags(tx, &d)?;
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn get_document(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError> {
        self.read_point(|conn| {
            let tx = conn.unchecked_transaction().map_err(classify)?;
            let document = read_document(&tx, tenant_id, id)?;
            tx.commit().map_err(classify)?;
            Ok(document)
        })
    }

    async fn update_document(
        &self,
        document: &Document,
        expected_version: i64,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Document>, StoreError> {
        check_effective_date(document)?;
        let (d, ledger) = (document.clone(), ledger.cloned());
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE documents SET title = ?1, summary = ?2, body = ?3, doc_type = ?4, jurisdiction = ?5,
                         status = ?6, effective_date = ?7, updated_by = ?8, updated_at = ?9, version = ?12 + 1
                     WHERE tenant_id = ?10 AND id = ?11 AND deleted_at IS NULL AND version = ?12",
                    params![
                        d.title,
                        d.summary,
                        d.body,
                        d.doc_type,
                        d.jurisdiction,
                        d.status.as_str(),
                        d.effective_date.map(|date| date.to_string()),
                        d.updated_by,
                        timestamp(d.updated_at),
                        d.tenant_id.to_string(),
                        d.id.to_string(),
                        expected_version
                    ],
                )
                .map_err(classify)?;
            if changed == 0 {
                return Ok(match live_document_version(tx, d.tenant_id, d.id)? {
                    None => Update::NotFound,
                    Some(current_version) => Update::VersionMismatch { current_version },
                });
            }
            tx.execute(
                "DELETE FROM document_tags WHERE tenant_id = ?1 AND document_id = ?2",
                params![d.tenant_id.to_string(), d.id.to_string()],
            )
            .map_err(classify)?;
            insert_tags(tx, &d)?;
            let updated = read_document(tx, d.tenant_id, d.id)?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("document vanished inside its transaction")))?;
            write_ledger(tx, ledger.as_ref())?;
            Ok(Update::Updated(updated))
        })
        .await
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
        let (by, ledger) = (by.to_owned(), ledger.cloned());
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE documents SET deleted_at = ?1, updated_at = ?1, updated_by = ?2, version = version + 1
                     WHERE tenant_id = ?3 AND id = ?4 AND deleted_at IS NULL AND version = ?5",
                    params![timestamp(now), by, tenant_id.to_string(), id.to_string(), expected_version],
                )
                .map_err(classify)?;
            if changed == 1 {
                write_ledger(tx, ledger.as_ref())?;
                return Ok(Update::Updated(()));
            }
            Ok(match live_document_version(tx, tenant_id, id)? {
                None => Update::NotFound,
                Some(current_version) => Update::VersionMismatch { current_version },
            })
        })
        .await
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
        let mut page = Assembled { sql: format!("SELECT {DOCUMENT_COLUMNS}"), values: Vec::new() };
        document_conditions(&mut page, tenant_id, filter)?;
        if let Some(cursor) = after {
            keyset(&mut page, sort, cursor)?;
        }
        let direction = if sort.descending { "DESC" } else { "ASC" };
        let fetch = page.bind(i64::from(limit) + 1);
        page.sql.push_str(&format!(
            " ORDER BY {key} {direction}, d.id {direction} LIMIT {fetch}",
            key = sort_column(sort.key)
        ));
        let tail = if continues_into_undated(sort, after) {
            let mut tail = Assembled { sql: format!("SELECT {DOCUMENT_COLUMNS}"), values: Vec::new() };
            document_conditions(&mut tail, tenant_id, filter)?;
            let fetch = tail.bind(i64::from(limit) + 1);
            tail.sql.push_str(&format!(" AND d.effective_date IS NULL ORDER BY d.id DESC LIMIT {fetch}"));
            Some(tail)
        } else {
            None
        };
        let total = if count {
            let mut total = Assembled { sql: "SELECT count(*)".into(), values: Vec::new() };
            document_conditions(&mut total, tenant_id, filter)?;
            Some(total)
        } else {
            None
        };
        self.read(move |conn| {
            // One read transaction: the page, its tags and the count see the same snapshot.
            let tx = conn.unchecked_transaction().map_err(classify)?;
            let mut items = query_all(&tx, &page.sql, params_from_iter(page.values), document_from_row)?;
            if let Some(tail) = tail.filter(|_| items.len() <= limit as usize) {
                items.extend(query_all(&tx, &tail.sql, params_from_iter(tail.values), document_from_row)?);
            }
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|d| cursor_of(d, sort.key))
            } else {
                None
            };
            load_tags(&tx, tenant_id, &mut items)?;
            let total = match total {
                Some(total) => Some(
                    tx.query_row(&total.sql, params_from_iter(total.values), |r| r.get::<_, i64>(0))
                        .map_err(classify)? as u64,
                ),
                None => None,
            };
            tx.commit().map_err(classify)?;
            Ok(DocumentPage { items, next, total })
        })
        .await
    }

    async fn get_idempotency(
        &self,
        tenant_id: Uuid,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        let key = key.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {IDEMPOTENCY_COLUMNS} FROM idempotency_keys
                 WHERE tenant_id = ?1 AND idempotency_key = ?2 AND expires_at > ?3"
            );
            query_one(conn, &sql, params![tenant_id.to_string(), key, timestamp(now)], idempotency_from_row)
        })
        .await
    }
}
