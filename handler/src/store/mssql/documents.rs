//! The SQL Server document store: `impl DocumentStore for MssqlStore` (documents, tags, listing, idempotency keys).

use super::queries::{Arg, Assembled};
use super::*;
use crate::store::search::{SearchQuery, SearchWindow, TermKind, WritePosition, indexed_words};

/// The document columns in the order `MssqlStore` reads them, from the table aliased `d`.
macro_rules! document_columns {
    () => {
        "d.id, d.tenant_id, d.title, d.summary, d.body, d.doc_type, d.jurisdiction, d.status, d.effective_date,
    d.created_by, d.updated_by, d.created_at, d.updated_at, d.version"
    };
}

pub(crate) const INSERT_DOCUMENT: &str = "INSERT INTO dbo.documents (id, tenant_id, title, summary, body, doc_type,
    jurisdiction, status, effective_date, created_by, updated_by, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14)";

pub(crate) const INSERT_DOCUMENT_TAG: &str =
    "INSERT INTO dbo.document_tags (document_id, tenant_id, tag) VALUES (@P1, @P2, @P3)";

/// A live document of a tenant (`@P1` tenant, `@P2` id), through the primary key.
pub(crate) const GET_DOCUMENT: &str = concat!(
    "SELECT ",
    document_columns!(),
    "
FROM dbo.documents d WHERE d.tenant_id = @P1 AND d.id = @P2 AND d.deleted_at IS NULL"
);

/// The version of a live document: after a conditional write changed nothing, tells a stale version from absence.
pub(crate) const LIVE_DOCUMENT_VERSION: &str =
    "SELECT version FROM dbo.documents WHERE tenant_id = @P1 AND id = @P2 AND deleted_at IS NULL";

/// Replaces the fields of a live document at version `@P12`; the new version is `@P12 + 1`.
pub(crate) const UPDATE_DOCUMENT: &str =
    "UPDATE dbo.documents SET title = @P1, summary = @P2, body = @P3, doc_type = @P4,
    jurisdiction = @P5, status = @P6, effective_date = @P7, updated_by = @P8, updated_at = @P9, version = @P12 + 1
WHERE tenant_id = @P10 AND id = @P11 AND deleted_at IS NULL AND version = @P12";

pub(crate) const DELETE_DOCUMENT_TAGS: &str =
    "DELETE FROM dbo.document_tags WHERE tenant_id = @P1 AND document_id = @P2";

/// Soft delete (`@P1` now, `@P2` by) of a live document at version `@P5`.
pub(crate) const SOFT_DELETE_DOCUMENT: &str =
    "UPDATE dbo.documents SET deleted_at = @P1, updated_at = @P1, updated_by = @P2, version = version + 1
WHERE tenant_id = @P3 AND id = @P4 AND deleted_at IS NULL AND version = @P5";

/// The search index of a document (`@P1`), before it is indexed again or when it is deleted.
pub(crate) const DELETE_DOCUMENT_WORDS: &str = "DELETE FROM dbo.document_words WHERE document_id = @P1";
pub(crate) const DELETE_DOCUMENT_SEARCH_TEXT: &str = "DELETE FROM dbo.document_search_text WHERE document_id = @P1";

/// A document's words in order (`@P1` document, `@P2` the text of [`indexed_words`]), for phrases.
pub(crate) const INSERT_DOCUMENT_SEARCH_TEXT: &str =
    "INSERT INTO dbo.document_search_text (document_id, words) VALUES (@P1, @P2)";

/// Live documents not in the search index yet (the ones stored before migration 10), a batch at a time.
pub(crate) const UNINDEXED_DOCUMENTS: &str = "SELECT TOP (100) d.tenant_id, d.id FROM dbo.documents d
WHERE d.deleted_at IS NULL AND NOT EXISTS (SELECT 1 FROM dbo.document_search_text s WHERE s.document_id = d.id)";

/// Frees a key whose record has expired (`expires_at <= @P3`): an expired record no longer answers.
pub(crate) const DELETE_EXPIRED_IDEMPOTENCY_KEY: &str =
    "DELETE FROM dbo.idempotency_keys WHERE tenant_id = @P1 AND idempotency_key = @P2 AND expires_at <= @P3";

pub(crate) const INSERT_IDEMPOTENCY: &str =
    "INSERT INTO dbo.idempotency_keys (tenant_id, idempotency_key, operation_id,
    request_hash, status_code, response_headers, response_body, created_at, expires_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9)";

/// A record that has not expired at `@P3`, through the primary key.
pub(crate) const GET_IDEMPOTENCY: &str = "SELECT tenant_id, idempotency_key, operation_id, request_hash, status_code,
    response_headers, response_body, created_at, expires_at
FROM dbo.idempotency_keys WHERE tenant_id = @P1 AND idempotency_key = @P2 AND expires_at > @P3";

/// The most tags a listing may ask for (`DocumentFilter::tags_any`): each is one parameter of the `IN` list.
pub(crate) const MAX_TAGS_ANY: usize = 20;

/// Tenant, live rows and every filter of a document listing, after `FROM dbo.documents d`; with a search, its
/// rank as `r.score`.
fn document_conditions(a: &mut Assembled, tenant_id: Uuid, filter: &DocumentFilter) -> Result<(), StoreError> {
    conditions(a, tenant_id, filter, true)
}

/// [`document_conditions`], with the search's rank only when `ranked`.
fn conditions(a: &mut Assembled, tenant_id: Uuid, filter: &DocumentFilter, ranked: bool) -> Result<(), StoreError> {
    if filter.tags_any.len() > MAX_TAGS_ANY {
        return Err(StoreError::Other(anyhow::anyhow!(
            "a listing may ask for at most {MAX_TAGS_ANY} tags, got {}",
            filter.tags_any.len()
        )));
    }
    // `deleted_at IS NULL` is written literally: SQL Server only uses the filtered indexes when the query says so.
    let tenant = a.bind(Arg::Id(tenant_id));
    if let Some(search) = filter.search.as_ref().filter(|_| ranked) {
        rank_apply(a, &tenant, search);
    }
    a.sql.push_str(&format!("\nWHERE d.tenant_id = {tenant} AND d.deleted_at IS NULL"));
    if let Some(search) = &filter.search {
        search_conditions(a, &tenant, search);
        if let Some(window) = filter.window {
            window_conditions(a, window);
        }
    }
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
    Ok(())
}

/// The word of `kind` (or each word of a phrase) as a condition on `dbo.document_words` aliased `alias`: equality,
/// or `LIKE 'prefix%'` (a word is letters and digits only, so it holds no `LIKE` wildcard).
fn word_condition(a: &mut Assembled, alias: &str, kind: &TermKind) -> Vec<String> {
    match kind {
        TermKind::Word(w) => vec![format!("{alias}.word = {}", a.bind(Arg::Text(w.clone())))],
        TermKind::Prefix(p) => vec![format!("{alias}.word LIKE {}", a.bind(Arg::Text(format!("{p}%"))))],
        TermKind::Phrase(words) => {
            words.iter().map(|w| format!("{alias}.word = {}", a.bind(Arg::Text(w.clone())))).collect()
        }
    }
}

/// `CROSS APPLY` of the search rank, `r.score`: minus the summed weights of the document's words that the
/// required terms look for (lower is better, as SQLite's bm25).
fn rank_apply(a: &mut Assembled, tenant: &str, search: &SearchQuery) {
    let mut wanted = Vec::new();
    for kind in search.required() {
        wanted.extend(word_condition(a, "x", kind));
    }
    a.sql.push_str(&format!(
        "\nCROSS APPLY (SELECT CAST(-ISNULL(SUM(x.weight), 0) AS BIGINT) AS score FROM dbo.document_words x \
         WHERE x.tenant_id = {tenant} AND x.document_id = d.id AND ({})) r",
        wanted.join(" OR ")
    ));
}

/// Every required term in the document, no excluded one: each word through `dbo.document_words`, a phrase's
/// order through `dbo.document_search_text` (` w1 w2 ` inside the words of one field).
fn search_conditions(a: &mut Assembled, tenant: &str, search: &SearchQuery) {
    let term = |a: &mut Assembled, kind: &TermKind| -> String {
        let mut parts: Vec<String> = word_condition(a, "w", kind)
            .into_iter()
            .map(|word| {
                format!(
                    "d.id IN (SELECT w.document_id FROM dbo.document_words w WHERE w.tenant_id = {tenant} AND {word})"
                )
            })
            .collect();
        if let TermKind::Phrase(words) = kind {
            let pattern = a.bind(Arg::Text(format!("% {} %", words.join(" "))));
            parts.push(format!(
                "EXISTS (SELECT 1 FROM dbo.document_search_text s WHERE s.document_id = d.id AND s.words LIKE {pattern})"
            ));
        }
        format!("({})", parts.join(" AND "))
    };
    for kind in search.required() {
        let condition = term(a, kind);
        a.sql.push_str(&format!("\n    AND {condition}"));
    }
    for kind in search.excluded() {
        let condition = term(a, kind);
        a.sql.push_str(&format!("\n    AND NOT {condition}"));
    }
}

/// The documents of a search window: written after `window.after` and up to `window.through`, positions being
/// (`updated_at` in microseconds, id) ([`WritePosition`]), as a range of `ix_documents_updated`.
fn window_conditions(a: &mut Assembled, window: SearchWindow) {
    let mut bound = |p: WritePosition| {
        let at = DateTime::from_timestamp_micros(p.at).unwrap_or(DateTime::<Utc>::MIN_UTC);
        (a.bind(Arg::Time(at)), a.bind(Arg::Id(p.id)))
    };
    let ((after, after_id), (through, through_id)) = (bound(window.after), bound(window.through));
    a.sql.push_str(&format!(
        "\n    AND d.updated_at >= {after} AND (d.updated_at > {after} OR d.id > {after_id})\
         \n    AND d.updated_at <= {through} AND (d.updated_at < {through} OR d.id <= {through_id})"
    ));
}

/// The newest match (`n` = 1) and the one past `size` (`n` = `size + 1`, if the search has that many) of a search
/// with every filter, newest first by (`updated_at`, id): a walk of `ix_documents_updated` that stops after
/// `size + 1` matches. Both rows present make the window (see [`search_window_from`]).
pub(crate) fn search_window(tenant_id: Uuid, filter: &DocumentFilter, size: u32) -> Result<Assembled, StoreError> {
    let mut a = Assembled::default();
    let walk = a.bind(Arg::Int(i64::from(size) + 1));
    a.sql = format!(
        "SELECT m.updated_at, m.id, m.n FROM (SELECT TOP ({walk}) d.updated_at, d.id, \
         ROW_NUMBER() OVER (ORDER BY d.updated_at DESC, d.id DESC) AS n\nFROM dbo.documents d"
    );
    conditions(&mut a, tenant_id, &filter.unwindowed(), false)?;
    a.sql.push_str(&format!("\nORDER BY d.updated_at DESC, d.id DESC) m\nWHERE m.n = 1 OR m.n = {walk}"));
    Ok(a)
}

/// The window from the rows of [`search_window`]: both the newest match and the one past `size` present.
fn window_from(rows: Vec<Row>, size: u32) -> Result<Option<SearchWindow>, StoreError> {
    let (mut newest, mut past) = (None, None);
    for row in rows {
        let at: DateTime<Utc> = required(&row, 0)?;
        let position = WritePosition { at: at.timestamp_micros(), id: required(&row, 1)? };
        match required::<i64>(&row, 2)? {
            1 => newest = Some(position),
            _ => past = Some(position),
        }
    }
    Ok(match (newest, past) {
        (Some(through), Some(after)) if size > 0 => Some(SearchWindow { size, after, through }),
        _ => None,
    })
}

fn sort_column(key: DocumentSortKey) -> &'static str {
    match key {
        DocumentSortKey::UpdatedAt => "d.updated_at",
        DocumentSortKey::Title => "d.title",
        DocumentSortKey::EffectiveDate => "d.effective_date",
        DocumentSortKey::Relevance => "r.score",
    }
}

/// The rank column every listing selects after the document's: the search rank, or 0 for a plain listing.
fn rank_column(filter: &DocumentFilter) -> &'static str {
    if filter.search.is_some() { "r.score" } else { "CAST(0 AS BIGINT)" }
}

/// "Strictly after the cursor" in the listing's order, as a range on the sort index:
/// `key >= v AND (key > v OR id > c)` ascending, mirrored descending. SQL Server sorts NULL first ascending and
/// last descending, as SQLite does; a NULL effective date's cursor carries [`NO_EFFECTIVE_DATE`] (never a
/// storable date) and gets its own branch, since no comparison with NULL is true.
fn keyset(a: &mut Assembled, sort: DocumentSort, cursor: &DocumentCursor) -> Result<(), StoreError> {
    let value = keyset_value(sort, cursor)?.map(|value| match value {
        SortValue::Time(t) => Arg::Time(t),
        SortValue::Text(title) => Arg::Text(title),
        SortValue::Date(date) => Arg::Date(date),
        SortValue::Rank(rank) => Arg::Int(rank),
    });
    let id = a.bind(Arg::Id(cursor.id));
    let v = value.map(|value| a.bind(value));
    let condition = keyset_condition("\n    AND ", sort_column(sort.key), sort.descending, v.as_deref(), &id);
    a.sql.push_str(&condition);
    Ok(())
}

/// One page of a tenant's live documents: `TOP (fetch)` rows matching `filter`, strictly after `after`, in
/// `sort` order with id as the tie-breaker. Served by the filtered index of the sort key (see docs/data-model.md).
pub(crate) fn list_documents(
    tenant_id: Uuid,
    filter: &DocumentFilter,
    sort: DocumentSort,
    after: Option<&DocumentCursor>,
    fetch: i64,
) -> Result<Assembled, StoreError> {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(fetch));
    let rank = rank_column(filter);
    a.sql = format!(concat!("SELECT TOP ({}) ", document_columns!(), ", {}\nFROM dbo.documents d"), top, rank);
    document_conditions(&mut a, tenant_id, filter)?;
    if let Some(cursor) = after {
        keyset(&mut a, sort, cursor)?;
    }
    let direction = if sort.descending { "DESC" } else { "ASC" };
    a.sql.push_str(&format!("\nORDER BY {key} {direction}, d.id {direction}", key = sort_column(sort.key)));
    Ok(a)
}

/// The documents without an effective date that end a newest-first listing by date: `TOP (fetch)` of them
/// matching `filter`, by id descending (see [`crate::store::continues_into_undated`]).
pub(crate) fn undated_documents(tenant_id: Uuid, filter: &DocumentFilter, fetch: i64) -> Result<Assembled, StoreError> {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(fetch));
    let rank = rank_column(filter);
    a.sql = format!(concat!("SELECT TOP ({}) ", document_columns!(), ", {}\nFROM dbo.documents d"), top, rank);
    document_conditions(&mut a, tenant_id, filter)?;
    a.sql.push_str("\n    AND d.effective_date IS NULL\nORDER BY d.id DESC");
    Ok(a)
}

/// How many live documents of the tenant match `filter` (all of them, whatever the cursor and page size).
pub(crate) fn count_documents(tenant_id: Uuid, filter: &DocumentFilter) -> Result<Assembled, StoreError> {
    let mut a = Assembled { sql: "SELECT COUNT_BIG(*) AS n\nFROM dbo.documents d".into(), args: Vec::new() };
    document_conditions(&mut a, tenant_id, filter)?;
    Ok(a)
}

/// The commonest values of one facet over every live document of the tenant matching `filter`.
pub(crate) fn facet_values(
    tenant_id: Uuid,
    filter: &DocumentFilter,
    field: FacetField,
) -> Result<Assembled, StoreError> {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(i64::from(FACET_VALUES)));
    if field == FacetField::Tags {
        a.sql = format!(
            "SELECT TOP ({top}) t.tag, COUNT_BIG(*) AS n FROM dbo.document_tags t\nWHERE t.document_id IN (SELECT d.id FROM dbo.documents d"
        );
        document_conditions(&mut a, tenant_id, filter)?;
        a.sql.push_str(")\nGROUP BY t.tag ORDER BY n DESC, t.tag");
    } else {
        let column = match field {
            FacetField::DocType => "d.doc_type",
            FacetField::Jurisdiction => "d.jurisdiction",
            FacetField::Status | FacetField::Tags => "d.status",
        };
        a.sql = format!("SELECT TOP ({top}) {column}, COUNT_BIG(*) AS n FROM dbo.documents d");
        document_conditions(&mut a, tenant_id, filter)?;
        a.sql.push_str(&format!("\n    AND {column} IS NOT NULL\nGROUP BY {column} ORDER BY n DESC, {column}"));
    }
    Ok(a)
}

/// Words per multi-row insert of [`insert_words`]: 4 parameters each, under SQL Server's 2 100 per request.
pub(crate) const WORDS_PER_INSERT: usize = 500;

/// One multi-row insert of a document's words (at most [`WORDS_PER_INSERT`]) with their weights.
pub(crate) fn insert_words(tenant_id: Uuid, document_id: Uuid, words: &[(String, i32)]) -> Assembled {
    let mut a = Assembled::default();
    let rows: Vec<String> = words
        .iter()
        .map(|(word, weight)| {
            let (t, w, d, n) = (
                a.bind(Arg::Id(tenant_id)),
                a.bind(Arg::Text(word.clone())),
                a.bind(Arg::Id(document_id)),
                a.bind(Arg::Int(i64::from(*weight))),
            );
            format!("({t}, {w}, {d}, {n})")
        })
        .collect();
    a.sql = format!("INSERT INTO dbo.document_words (tenant_id, word, document_id, weight) VALUES {}", rows.join(", "));
    a
}

/// Ids per `IN (...)` list of [`tags_of_documents`], well below SQL Server's 2100 parameters per request.
pub(crate) const TAG_LOAD_CHUNK: usize = 500;

/// The tags of some documents of one tenant: `@P1` the tenant, then one parameter per document id.
pub(crate) fn tags_of_documents(tenant_id: Uuid, ids: &[Uuid]) -> Assembled {
    let mut a = Assembled::default();
    let tenant = a.bind(Arg::Id(tenant_id));
    let ids: Vec<String> = ids.iter().map(|id| a.bind(Arg::Id(*id))).collect();
    a.sql = format!(
        "SELECT document_id, tag FROM dbo.document_tags WHERE tenant_id = {tenant} AND document_id IN ({})",
        ids.join(", ")
    );
    a
}

/// Every statement of this file, for `store::tsql_check` (registered in `mssql::STATEMENTS`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
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
    ("DELETE_DOCUMENT_WORDS", DELETE_DOCUMENT_WORDS),
    ("DELETE_DOCUMENT_SEARCH_TEXT", DELETE_DOCUMENT_SEARCH_TEXT),
    ("INSERT_DOCUMENT_SEARCH_TEXT", INSERT_DOCUMENT_SEARCH_TEXT),
    ("UNINDEXED_DOCUMENTS", UNINDEXED_DOCUMENTS),
];

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
pub(super) async fn assembled_rows(conn: &mut MssqlClient, statement: &q::Assembled) -> Result<Vec<Row>, StoreError> {
    let params: Vec<&dyn ToSql> = statement.args.iter().map(|arg| arg as &dyn ToSql).collect();
    rows(conn, &statement.sql, &params).await
}

/// A document row without its tags (see [`load_tags`]), in the column order of `document_columns!`.
pub(super) fn document_from(row: &Row) -> Result<Document, StoreError> {
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
pub(super) async fn load_tags(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    documents: &mut [Document],
) -> Result<(), StoreError> {
    for chunk in documents.chunks_mut(TAG_LOAD_CHUNK) {
        let ids: Vec<Uuid> = chunk.iter().map(|d| d.id).collect();
        let mut by_document: HashMap<Uuid, Vec<String>> = HashMap::new();
        for row in assembled_rows(conn, &tags_of_documents(tenant_id, &ids)).await? {
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
pub(super) async fn read_document(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<Document>, StoreError> {
    let found = rows(conn, GET_DOCUMENT, &[&tenant_id, &id]).await?;
    let Some(document) = found.first().map(document_from).transpose()? else { return Ok(None) };
    let mut one = [document];
    load_tags(conn, tenant_id, &mut one).await?;
    let [document] = one;
    Ok(Some(document))
}

/// The version of a live document of `tenant_id`, to tell a stale version from a missing document.
pub(super) async fn live_document_version(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    id: Uuid,
) -> Result<Option<i64>, StoreError> {
    rows(conn, LIVE_DOCUMENT_VERSION, &[&tenant_id, &id]).await?.first().map(|r| required(r, 0)).transpose()
}

/// Inserts `document` and its tags.
pub(super) async fn insert_document(conn: &mut MssqlClient, d: &Document) -> Result<(), StoreError> {
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
    execute(conn, INSERT_DOCUMENT, &params).await?;
    insert_tags(conn, d).await?;
    index_document(conn, d).await
}

/// Writes a live document's words and their order into the search index (`document_words`, migration 10).
pub(super) async fn index_document(conn: &mut MssqlClient, d: &Document) -> Result<(), StoreError> {
    let tags = crate::store::search::tags_field(&d.unique_tags());
    let (words, text) =
        indexed_words([d.title.as_str(), d.summary.as_deref().unwrap_or(""), d.body.as_deref().unwrap_or(""), &tags]);
    for chunk in words.chunks(WORDS_PER_INSERT) {
        assembled_rows(conn, &insert_words(d.tenant_id, d.id, chunk)).await?;
    }
    execute(conn, INSERT_DOCUMENT_SEARCH_TEXT, &[&d.id, &text.as_str()]).await.map(drop)
}

/// Takes a document out of the search index.
pub(super) async fn unindex_document(conn: &mut MssqlClient, id: Uuid) -> Result<(), StoreError> {
    execute(conn, DELETE_DOCUMENT_WORDS, &[&id]).await?;
    execute(conn, DELETE_DOCUMENT_SEARCH_TEXT, &[&id]).await.map(drop)
}

/// Indexes a live document's new fields and tags in place of its old ones.
pub(super) async fn reindex_document(conn: &mut MssqlClient, d: &Document) -> Result<(), StoreError> {
    unindex_document(conn, d.id).await?;
    index_document(conn, d).await
}

/// Indexes every live document stored before the search index existed; runs inside migration 10's transaction.
pub(super) async fn index_stored_documents(conn: &mut MssqlClient) -> Result<u64, StoreError> {
    let mut indexed = 0;
    loop {
        let batch = rows(conn, UNINDEXED_DOCUMENTS, &[]).await?;
        if batch.is_empty() {
            return Ok(indexed);
        }
        for row in &batch {
            let (tenant_id, id): (Uuid, Uuid) = (required(row, 0)?, required(row, 1)?);
            if let Some(document) = read_document(conn, tenant_id, id).await? {
                index_document(conn, &document).await?;
                indexed += 1;
            }
        }
    }
}

/// Inserts the tags of `document` (duplicates written once).
pub(super) async fn insert_tags(conn: &mut MssqlClient, document: &Document) -> Result<(), StoreError> {
    for tag in document.unique_tags() {
        execute(conn, INSERT_DOCUMENT_TAG, &[&document.id, &document.tenant_id, &tag]).await?;
    }
    Ok(())
}

pub(super) fn idempotency_from(row: &Row) -> Result<IdempotencyRecord, StoreError> {
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

/// Stores the response a created resource answers with under its idempotency key, in the creating transaction;
/// a key in use is a `Conflict` (the primary key), which the caller answers by replaying the stored response.
pub(super) async fn store_idempotency(
    conn: &mut MssqlClient,
    record: Option<&IdempotencyRecord>,
) -> Result<(), StoreError> {
    let Some(r) = record else { return Ok(()) };
    let key = r.key.as_str();
    execute(conn, DELETE_EXPIRED_IDEMPOTENCY_KEY, &[&r.tenant_id, &key, &r.created_at]).await?;
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
    execute(conn, INSERT_IDEMPOTENCY, &params).await.map(drop)
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
            store_idempotency(conn, idempotency).await?;
            insert_document(conn, document).await?;
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
            if execute(conn, UPDATE_DOCUMENT, &params).await? == 0 {
                return Ok(match live_document_version(conn, d.tenant_id, d.id).await? {
                    None => Update::NotFound,
                    Some(current_version) => Update::VersionMismatch { current_version },
                });
            }
            execute(conn, DELETE_DOCUMENT_TAGS, &[&d.tenant_id, &d.id]).await?;
            insert_tags(conn, d).await?;
            reindex_document(conn, d).await?;
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
            if execute(conn, SOFT_DELETE_DOCUMENT, &params).await? == 1 {
                unindex_document(conn, id).await?;
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
        check_sort(sort, filter)?;
        let limit = limit.max(1);
        let take =
            &filter.window_to_take().map(|size| Ok((size, search_window(tenant_id, filter, size)?))).transpose()?;
        // One transaction; see docs/data-model.md on what the count and the page can see under READ COMMITTED.
        in_tx!(self, Retry::Yes, |conn| {
            let taken;
            let filter = match take {
                Some((size, statement)) => {
                    let window = window_from(assembled_rows(conn, statement).await?, *size)?;
                    taken = DocumentFilter { window, ..filter.unwindowed() };
                    &taken
                }
                None => filter,
            };
            let page = &list_documents(tenant_id, filter, sort, after, fetch_size(limit))?;
            let tail = &if continues_into_undated(sort, after) {
                Some(undated_documents(tenant_id, filter, fetch_size(limit))?)
            } else {
                None
            };
            let total = &if count { Some(count_documents(tenant_id, filter)?) } else { None };
            let ranked =
                |row: &Row| -> Result<(Document, i64), StoreError> { Ok((document_from(row)?, required(row, 14)?)) };
            let mut items = assembled_rows(conn, page).await?.iter().map(ranked).collect::<Result<Vec<_>, _>>()?;
            if let Some(tail) = tail.as_ref().filter(|_| room_for_undated(items.len(), limit)) {
                for row in assembled_rows(conn, tail).await? {
                    items.push(ranked(&row)?);
                }
            }
            let mut page = document_page(items, limit, sort);
            page.window = filter.window;
            load_tags(conn, tenant_id, &mut page.items).await?;
            if let Some(statement) = total {
                let n: i64 =
                    assembled_rows(conn, statement).await?.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
                page.total = Some(n as u64);
            }
            Ok(page)
        })
    }

    async fn search_window(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        size: u32,
    ) -> Result<Option<SearchWindow>, StoreError> {
        if filter.search.is_none() {
            return Ok(None);
        }
        let statement = &search_window(tenant_id, filter, size)?;
        in_tx!(self, Retry::Yes, |conn| window_from(assembled_rows(conn, statement).await?, size))
    }

    async fn document_facets(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        fields: &[FacetField],
    ) -> Result<Vec<Facet>, StoreError> {
        let queries = &fields
            .iter()
            .map(|&field| Ok((field, facet_values(tenant_id, filter, field)?)))
            .collect::<Result<Vec<_>, StoreError>>()?;
        in_tx!(self, Retry::Yes, |conn| {
            let mut facets = Vec::with_capacity(queries.len());
            for (field, statement) in queries {
                let mut values = Vec::new();
                for row in assembled_rows(conn, statement).await? {
                    values.push((text(&row, 0)?, required::<i64>(&row, 1)? as u64));
                }
                facets.push(Facet { field: *field, values });
            }
            Ok(facets)
        })
    }

    async fn get_idempotency(
        &self,
        tenant_id: Uuid,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, GET_IDEMPOTENCY, &[&tenant_id, &key, &now]).await?.first().map(idempotency_from).transpose()
        })
    }
}
