//! The SQLite document store: `impl DocumentStore for SqliteStore` (documents, tags, listing, idempotency keys).

use super::search_plan::{PlanCache, SearchPlan, reads_keys_only, search_plan};
use super::*;
use crate::store::search::{SearchWindow, WritePosition};

/// The most tags a listing may ask for (`DocumentFilter::tags_any`): each is one bound parameter.
pub(super) const MAX_TAGS_ANY: usize = 20;

/// Ids per `IN (...)` list when loading the tags of a page.
pub(super) const TAG_LOAD_CHUNK: usize = 500;

pub(super) const DOCUMENT_COLUMNS: &str = "d.id, d.tenant_id, d.title, d.summary, d.body, d.doc_type, d.jurisdiction, d.status, \
    d.effective_date, d.created_by, d.updated_by, d.created_at, d.updated_at, d.version";
/// How many columns [`DOCUMENT_COLUMNS`] names ([`document_from_row`] reads them by position): counted from it.
const DOCUMENT_COLUMN_COUNT: usize = {
    let bytes = DOCUMENT_COLUMNS.as_bytes();
    let (mut i, mut columns) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            columns += 1;
        }
        i += 1;
    }
    columns
};

/// A document row without its tags (see [`load_tags`]).
pub(super) fn document_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Document, StoreError>> {
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
pub(super) fn load_tags(conn: &Connection, tenant_id: Uuid, documents: &mut [Document]) -> Result<(), StoreError> {
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
pub(super) fn read_document(conn: &Connection, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError> {
    // One statement, so the row and its tags come from one snapshot without a transaction around them, and a
    // read costs one WAL read lock instead of two (the tags as a JSON array, in the primary key's order).
    static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!(
            "SELECT {DOCUMENT_COLUMNS},
                 (SELECT json_group_array(tag) FROM (SELECT tag FROM document_tags t WHERE t.document_id = d.id ORDER BY tag))
             FROM documents d WHERE d.tenant_id = ?1 AND d.id = ?2 AND d.deleted_at IS NULL"
        )
    });
    let found = query_one(conn, &SQL, [tenant_id.to_string(), id.to_string()], |r| {
        let tags: String = r.get(DOCUMENT_COLUMN_COUNT)?;
        Ok(document_from_row(r)?.and_then(|mut document| {
            document.tags = serde_json::from_str(&tags).map_err(|_| corrupt("document tags", &tags))?;
            Ok(document)
        }))
    })?;
    Ok(found)
}

/// The version of a live document of `tenant_id`, to tell a stale version from a missing document.
pub(super) fn live_document_version(conn: &Connection, tenant_id: Uuid, id: Uuid) -> Result<Option<i64>, StoreError> {
    conn.query_row(
        "SELECT version FROM documents WHERE tenant_id = ?1 AND id = ?2 AND deleted_at IS NULL",
        [tenant_id.to_string(), id.to_string()],
        |r| r.get(0),
    )
    .optional()
    .map_err(classify)
}

/// Inserts `document` and its tags.
pub(super) fn insert_document(tx: &Connection, d: &Document) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO documents (id, tenant_id, title, summary, body, doc_type, jurisdiction, status,
             effective_date, created_by, updated_by, created_at, updated_at, version)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)",
    )
    .map_err(classify)?
    .execute(params![
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
    ])
    .map_err(classify)?;
    insert_tags(tx, d)?;
    index_document(tx, d)
}

/// Adds a live document, with its tags, to the search index (`document_search`, migration 10).
fn index_document(tx: &Connection, d: &Document) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO document_search_keys (document_id, tenant_id) VALUES (?1, ?2)")
        .and_then(|mut s| s.execute(params![d.id.to_string(), d.tenant_id.to_string()]))
        .map_err(classify)?;
    let rowid = tx.last_insert_rowid();
    insert_search_row(tx, rowid, d)
}

/// The index's row of a document: each field's words as `store::search::folded_text` folds them (the index's
/// `ascii` tokenizer, migration 17, splits only at the spaces between them), so the index holds exactly the words
/// a query is folded to.
pub(super) fn insert_search_row(tx: &Connection, rowid: i64, d: &Document) -> Result<(), StoreError> {
    use crate::store::search::folded_text;
    let fields = [
        folded_text(&d.title),
        folded_text(d.summary.as_deref().unwrap_or("")),
        folded_text(d.body.as_deref().unwrap_or("")),
        folded_text(&crate::store::search::tags_field(&d.unique_tags())),
    ];
    tx.prepare_cached("INSERT INTO document_search (rowid, title, summary, body, tags) VALUES (?1, ?2, ?3, ?4, ?5)")
        .and_then(|mut s| s.execute(params![rowid, fields[0], fields[1], fields[2], fields[3]]))
        .map_err(classify)
        .map(drop)
}

/// Writes the index's row of every live document again (migration 17, after it made the index anew with the
/// words folded in Rust).
pub(super) fn index_stored_documents(tx: &Connection) -> Result<u64, StoreError> {
    let keys: Vec<(i64, String, String)> = {
        let mut stmt = tx
            .prepare("SELECT search_rowid, tenant_id, document_id FROM document_search_keys ORDER BY search_rowid")
            .map_err(classify)?;
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(classify)?
            .collect::<Result<_, _>>()
            .map_err(classify)?
    };
    let mut indexed = 0;
    for (rowid, tenant, id) in keys {
        let (tenant, id) = (parse_uuid(&tenant)?, parse_uuid(&id)?);
        if let Some(document) = read_document(tx, tenant, id)? {
            insert_search_row(tx, rowid, &document)?;
            indexed += 1;
        }
    }
    Ok(indexed)
}

/// Takes a document out of the search index (deleted, or about to be indexed again).
pub(super) fn unindex_document(tx: &Connection, id: Uuid) -> Result<(), StoreError> {
    let rowid: Option<i64> = tx
        .prepare_cached("SELECT search_rowid FROM document_search_keys WHERE document_id = ?1")
        .and_then(|mut s| s.query_row([id.to_string()], |r| r.get(0)).optional())
        .map_err(classify)?;
    if let Some(rowid) = rowid {
        for sql in
            ["DELETE FROM document_search WHERE rowid = ?1", "DELETE FROM document_search_keys WHERE search_rowid = ?1"]
        {
            tx.prepare_cached(sql).and_then(|mut s| s.execute([rowid])).map_err(classify)?;
        }
    }
    Ok(())
}

/// Indexes a live document's new fields and tags in place of its old ones.
pub(super) fn reindex_document(tx: &Connection, d: &Document) -> Result<(), StoreError> {
    unindex_document(tx, d.id)?;
    index_document(tx, d)
}

/// Inserts the tags of `document` (duplicates written once).
pub(super) fn insert_tags(tx: &Connection, document: &Document) -> Result<(), StoreError> {
    let mut stmt = tx
        .prepare_cached("INSERT INTO document_tags (document_id, tenant_id, tag) VALUES (?1, ?2, ?3)")
        .map_err(classify)?;
    for tag in document.unique_tags() {
        stmt.execute(params![document.id.to_string(), document.tenant_id.to_string(), tag]).map_err(classify)?;
    }
    Ok(())
}

/// One page of a listing on `conn`, in one read transaction: the plan's count, the page, its tags and the count see
/// the same snapshot.
#[allow(clippy::too_many_arguments)]
fn list_on(
    conn: &Connection,
    plans: &PlanCache,
    now: DateTime<Utc>,
    tenant_id: Uuid,
    filter: &DocumentFilter,
    sort: DocumentSort,
    after: Option<&DocumentCursor>,
    limit: u32,
    count: bool,
) -> Result<DocumentPage, StoreError> {
    let tx = conn.unchecked_transaction().map_err(classify)?;
    if let (Some(size), DocumentSortKey::Relevance, None) = (filter.window_to_take(), sort.key, after) {
        let page = first_ranked_page(&tx, tenant_id, filter, size, limit, count)?;
        tx.commit().map_err(classify)?;
        return Ok(page);
    }
    let taken;
    let filter = match filter.window_to_take() {
        Some(size) => {
            taken = DocumentFilter { window: search_window_on(&tx, tenant_id, filter, size)?, ..filter.unwindowed() };
            &taken
        }
        None => filter,
    };
    let plan = search_plan(&tx, plans, now, filter, sort)?;
    let rank = rank_column(filter, plan);
    let mut page = Assembled { sql: format!("SELECT {DOCUMENT_COLUMNS}, {rank}"), values: Vec::new() };
    conditions_with(&mut page, tenant_id, filter, plan)?;
    let reranked;
    let after = match after {
        Some(cursor) if sort.key == DocumentSortKey::Relevance => {
            reranked = rank_now(&tx, tenant_id, filter, cursor)?;
            Some(&reranked)
        }
        after => after,
    };
    if let Some(cursor) = after {
        keyset(&mut page, sort, cursor)?;
    }
    let direction = if sort.descending { "DESC" } else { "ASC" };
    let fetch = page.bind(fetch_size(limit));
    page.sql
        .push_str(&format!(" ORDER BY {key} {direction}, d.id {direction} LIMIT {fetch}", key = sort_column(sort.key)));
    let tail = if continues_into_undated(sort, after) {
        let mut tail = Assembled { sql: format!("SELECT {DOCUMENT_COLUMNS}, {rank}"), values: Vec::new() };
        conditions_with(&mut tail, tenant_id, filter, plan)?;
        let fetch = tail.bind(fetch_size(limit));
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
    let mut items = query_all(&tx, &page.sql, params_from_iter(page.values), ranked_from_row)?;
    if let Some(tail) = tail.filter(|_| room_for_undated(items.len(), limit)) {
        items.extend(query_all(&tx, &tail.sql, params_from_iter(tail.values), ranked_from_row)?);
    }
    let mut page = document_page(items, limit, sort);
    page.window = filter.window;
    load_tags(&tx, tenant_id, &mut page.items)?;
    if let Some(total) = total {
        let n: i64 = tx.query_row(&total.sql, params_from_iter(total.values), |r| r.get(0)).map_err(classify)?;
        page.total = Some(n as u64);
    }
    tx.commit().map_err(classify)?;
    Ok(page)
}

/// A relevance cursor with its document's rank as it is now. bm25 weighs each word by how many documents of the whole
/// index hold it and each field by the index's average length, so any write (another tenant's too) moves every
/// rank a little, and a page that went on from the rank the cursor was issued with would repeat or skip documents
/// nobody changed. Going on from where one of the page's documents ranks now keeps the order of the others as it
/// was: the first of the cursor's anchors (its page's last documents, the last first) that still matches at the
/// version the page read. One that was written since ranks anew, and one that was deleted no longer ranks at all;
/// going on from either would skip or repeat the documents around it. Only when every anchor changed (or a cursor
/// issued before anchors names none) does the page go on from the rank the cursor was issued with.
fn rank_now(
    conn: &Connection,
    tenant_id: Uuid,
    filter: &DocumentFilter,
    cursor: &DocumentCursor,
) -> Result<DocumentCursor, StoreError> {
    let Some(search) = &filter.search else { return Ok(cursor.clone()) };
    let anchors: Vec<(Uuid, Option<i64>)> = if cursor.anchors.is_empty() {
        vec![(cursor.id, None)]
    } else {
        cursor.anchors.iter().map(|(id, version)| (*id, Some(*version))).collect()
    };
    for (id, version) in anchors {
        let mut a = Assembled {
            sql: format!(
                "SELECT {RANK} FROM document_search s JOIN document_search_keys k ON k.search_rowid = s.rowid \
                 JOIN documents d ON d.id = k.document_id WHERE document_search MATCH "
            ),
            values: Vec::new(),
        };
        let matching = a.bind(search.fts5());
        let (id_value, tenant) = (a.bind(id.to_string()), a.bind(tenant_id.to_string()));
        let window = window_condition(&mut a, "s.rowid", filter.window);
        let version = match version {
            Some(version) => format!(" AND d.version = {}", a.bind(version)),
            None => String::new(),
        };
        a.sql.push_str(&format!(
            "{matching} AND k.document_id = {id_value} AND k.tenant_id = {tenant} AND d.tenant_id = {tenant}\
             {version}{window}"
        ));
        let rank: Option<i64> = conn
            .prepare_cached(&a.sql)
            .and_then(|mut s| s.query_row(params_from_iter(a.values), |r| r.get(0)).optional())
            .map_err(classify)?;
        if let Some(rank) = rank {
            return Ok(DocumentCursor::at(SortValue::Rank(rank), id));
        }
    }
    Ok(cursor.clone())
}

/// The first page of a search in relevance order that takes its window: one walk of its `size + 1` newest matches
/// ranks each, which gives the window, the count and the page at once (a walk to find the window, then a ranking
/// of it, read every match twice: for a phrase, whose matches are checked word position by word position, the
/// walk alone cost as much as ranking them). The page's documents are then read by key.
fn first_ranked_page(
    conn: &Connection,
    tenant_id: Uuid,
    filter: &DocumentFilter,
    size: u32,
    limit: u32,
    count: bool,
) -> Result<DocumentPage, StoreError> {
    let mut walk = Assembled { sql: format!("SELECT s.rowid, k.document_id, {RANK}"), values: Vec::new() };
    conditions_with(&mut walk, tenant_id, &filter.unwindowed(), SearchPlan::Keys)?;
    let most = walk.bind(i64::from(size) + 1);
    walk.sql.push_str(&format!(" ORDER BY s.rowid DESC LIMIT {most}"));
    let mut matches: Vec<(i64, String, i64)> =
        query_all(conn, &walk.sql, params_from_iter(walk.values), |r| Ok(Ok((r.get(0)?, r.get(1)?, r.get(2)?))))?;
    let window = match (matches.len() > size as usize, matches.first()) {
        (true, Some(&(newest, _, _))) => matches.pop().map(|(past, _, _)| SearchWindow {
            size,
            after: WritePosition { at: past, id: Uuid::nil() },
            through: WritePosition { at: newest, id: Uuid::nil() },
        }),
        _ => None,
    };
    let total = matches.len() as u64;
    // Best first, then by id: the order of the page query (`ORDER BY rank, d.id`; ids are lower-case text).
    matches.sort_unstable_by(|x, y| (x.2, &x.1).cmp(&(y.2, &y.1)));
    matches.truncate(fetch_size(limit) as usize);
    let mut read = Assembled {
        sql: format!("SELECT {DOCUMENT_COLUMNS} FROM documents d WHERE d.tenant_id = "),
        values: Vec::new(),
    };
    let tenant = read.bind(tenant_id.to_string());
    let ids: Vec<String> = matches.iter().map(|(_, id, _)| read.bind(id.clone())).collect();
    read.sql.push_str(&format!("{tenant} AND d.id IN ({})", ids.join(", ")));
    let mut documents: HashMap<Uuid, Document> = if ids.is_empty() {
        HashMap::new()
    } else {
        query_all(conn, &read.sql, params_from_iter(read.values), document_from_row)?
            .into_iter()
            .map(|d| (d.id, d))
            .collect()
    };
    let mut items = Vec::with_capacity(matches.len());
    for (_, id, rank) in matches {
        let document = documents
            .remove(&parse_uuid(&id)?)
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("a matched document vanished inside its transaction")))?;
        items.push((document, rank));
    }
    let mut page = document_page(items, limit, DocumentSort { key: DocumentSortKey::Relevance, descending: false });
    page.window = window;
    load_tags(conn, tenant_id, &mut page.items)?;
    page.total = count.then_some(total);
    Ok(page)
}

/// `FROM`, tenant, live rows and every filter of a document listing (shared by the page and the count).
pub(super) fn document_conditions(
    a: &mut Assembled,
    tenant_id: Uuid,
    filter: &DocumentFilter,
) -> Result<(), StoreError> {
    conditions_with(a, tenant_id, filter, SearchPlan::Drive)
}

/// [`document_conditions`] with a search reached as `plan` says.
fn conditions_with(
    a: &mut Assembled,
    tenant_id: Uuid,
    filter: &DocumentFilter,
    plan: SearchPlan,
) -> Result<(), StoreError> {
    if filter.tags_any.len() > MAX_TAGS_ANY {
        return Err(StoreError::Other(anyhow::anyhow!(
            "a listing may ask for at most {MAX_TAGS_ANY} tags, got {}",
            filter.tags_any.len()
        )));
    }
    let tenant = a.bind(tenant_id.to_string());
    // The check of a document against the index, under the Check plan: written after every other condition.
    let mut check = None;
    match &filter.search {
        Some(search) if plan == SearchPlan::Check => {
            let matching = a.bind(search.fts5());
            let window = window_condition(a, "k.search_rowid", filter.window);
            a.sql.push_str(&format!(" FROM documents d WHERE d.tenant_id = {tenant} AND d.deleted_at IS NULL"));
            check = Some(format!(
                "EXISTS (SELECT 1 FROM document_search_keys k JOIN document_search s ON s.rowid = k.search_rowid \
                 WHERE k.document_id = d.id AND document_search MATCH {matching}{window})"
            ));
        }
        Some(search) if reads_keys_only(filter, plan) => {
            let matching = a.bind(search.fts5());
            let window = window_condition(a, "s.rowid", filter.window);
            a.sql.push_str(&format!(
                " FROM document_search s JOIN document_search_keys k ON k.search_rowid = s.rowid \
                 WHERE document_search MATCH {matching}{window} AND k.tenant_id = {tenant}"
            ));
        }
        // The index drives: its matches, then their documents by key. A window is a rowid range of the index,
        // which FTS5 seeks to (it reads only the doclist entries inside).
        Some(search) => {
            let matching = a.bind(search.fts5());
            let window = window_condition(a, "s.rowid", filter.window);
            a.sql.push_str(&format!(
                " FROM document_search s JOIN document_search_keys k ON k.search_rowid = s.rowid \
                 JOIN documents d ON d.id = k.document_id \
                 WHERE document_search MATCH {matching}{window} AND k.tenant_id = {tenant} AND d.tenant_id = {tenant} \
                 AND d.deleted_at IS NULL"
            ));
        }
        None => a.sql.push_str(&format!(" FROM documents d WHERE d.tenant_id = {tenant} AND d.deleted_at IS NULL")),
    }
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
    let tagged = (!filter.tags_any.is_empty()).then(|| {
        let tags: Vec<String> = filter.tags_any.iter().map(|tag| a.bind(tag.clone())).collect();
        format!("EXISTS (SELECT 1 FROM document_tags t WHERE t.document_id = d.id AND t.tag IN ({}))", tags.join(", "))
    });
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
    // SQLite tests a document's own columns before either subquery, but turns the tags' `EXISTS` into a join
    // it runs after the index check: a `CASE` keeps the cheap tag test first, so the index (a seek of every
    // term's doclist, about 3 µs) checks only the documents with the tag (BENCHMARKS.md, "Checked last").
    match (tagged, check) {
        (Some(tagged), Some(check)) => a.sql.push_str(&format!(" AND CASE WHEN {tagged} THEN {check} ELSE 0 END")),
        (Some(only), None) | (None, Some(only)) => a.sql.push_str(&format!(" AND {only}")),
        (None, None) => {}
    }
    Ok(())
}

/// ` AND {rowid} > after AND {rowid} <= through` for a search window (its positions are search index rowids,
/// [`WritePosition`]), else nothing.
fn window_condition(a: &mut Assembled, rowid: &str, window: Option<SearchWindow>) -> String {
    let Some(window) = window else { return String::new() };
    let (after, through) = (a.bind(window.after.at), a.bind(window.through.at));
    format!(" AND {rowid} > {after} AND {rowid} <= {through}")
}

/// The window of a search with more than `size` matches: the rowids of the `size + 1` newest matches of the
/// tenant with every filter, walked newest first in the index's rowid order (a rowid is given at each write of a
/// document, so the order is the order of writes), and the window the `size` newest of them. One doclist walk
/// that stops after `size + 1` matches.
fn search_window_on(
    conn: &Connection,
    tenant_id: Uuid,
    filter: &DocumentFilter,
    size: u32,
) -> Result<Option<SearchWindow>, StoreError> {
    if filter.search.is_none() {
        return Ok(None);
    }
    let unwindowed = filter.unwindowed();
    let mut a =
        Assembled { sql: "SELECT min(rowid), max(rowid), count(*) FROM (SELECT s.rowid".into(), values: Vec::new() };
    conditions_with(&mut a, tenant_id, &unwindowed, SearchPlan::Keys)?;
    let walk = a.bind(i64::from(size) + 1);
    a.sql.push_str(&format!(" ORDER BY s.rowid DESC LIMIT {walk})"));
    let (oldest, newest, walked): (Option<i64>, Option<i64>, i64) = conn
        .prepare_cached(&a.sql)
        .and_then(|mut s| s.query_row(params_from_iter(a.values), |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))))
        .map_err(classify)?;
    Ok(match (oldest, newest) {
        (Some(oldest), Some(newest)) if walked > i64::from(size) => Some(SearchWindow {
            size,
            after: WritePosition { at: oldest, id: Uuid::nil() },
            through: WritePosition { at: newest, id: Uuid::nil() },
        }),
        _ => None,
    })
}

/// A search match's rank: bm25 with the fields weighted (`store::search::FIELD_WEIGHTS`), lower is better, as an
/// integer (10^-12 of a point) so that a cursor holds it exactly. That fine: a word in more than half of the
/// index's documents gets FTS5's floor weight of 10^-6, so its matches score about 10^-6 a point, and millionths
/// tied them all. Only valid in a query that matches `document_search`.
const RANK: &str = "CAST(bm25(document_search, 10.0, 4.0, 1.0, 3.0) * 1000000000000 AS INTEGER)";

/// The sort column of a listing.
pub(super) fn sort_column(key: DocumentSortKey) -> &'static str {
    match key {
        DocumentSortKey::UpdatedAt => "d.updated_at",
        DocumentSortKey::Title => "d.title",
        DocumentSortKey::EffectiveDate => "d.effective_date",
        DocumentSortKey::Relevance => RANK,
    }
}

/// The rank column every listing selects after the document's: the search rank when the index drives a search,
/// else 0 (a plain listing, or a search checked per document, which is never in relevance order).
fn rank_column(filter: &DocumentFilter, plan: SearchPlan) -> &'static str {
    if filter.search.is_some() && plan == SearchPlan::Drive { RANK } else { "0" }
}

/// A listed row: the document (without tags) and its rank.
fn ranked_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<(Document, i64), StoreError>> {
    let rank: i64 = r.get(14)?;
    Ok(document_from_row(r)?.map(|d| (d, rank)))
}

/// "Strictly after the cursor" in the listing's order, written as a range on the sort index
/// (`key >= v AND (key > v OR id > c)`, mirrored for descending order). NULL effective dates sort first
/// ascending and last descending (SQLite's NULL order), and their cursor carries [`NO_EFFECTIVE_DATE`].
pub(super) fn keyset(a: &mut Assembled, sort: DocumentSort, cursor: &DocumentCursor) -> Result<(), StoreError> {
    let value: Option<Value> = keyset_value(sort, cursor)?.map(|value| match value {
        SortValue::Time(t) => timestamp(t).into(),
        SortValue::Text(title) => title.into(),
        SortValue::Date(date) => date.to_string().into(),
        SortValue::Rank(rank) => rank.into(),
    });
    let id = a.bind(cursor.id.to_string());
    let v = value.map(|value| a.bind(value));
    let condition = keyset_condition(" AND ", sort_column(sort.key), sort.descending, v.as_deref(), &id);
    a.sql.push_str(&condition);
    Ok(())
}

/// A facet's values, commonest first and ties by value (SQLite's `ORDER BY 2 DESC, 1` on text: byte order), at
/// most [`FACET_VALUES`].
fn commonest(counts: HashMap<String, u64>) -> Vec<(String, u64)> {
    let mut values: Vec<(String, u64)> = counts.into_iter().collect();
    values.sort_unstable_by(|(a, m), (b, n)| n.cmp(m).then_with(|| a.cmp(b)));
    values.truncate(FACET_VALUES as usize);
    values
}

/// The column a facet counts (tags have their own table).
fn facet_column(field: FacetField) -> &'static str {
    match field {
        FacetField::DocType => "d.doc_type",
        FacetField::Jurisdiction => "d.jurisdiction",
        FacetField::Status => "d.status",
        FacetField::Tags => "t.tag",
    }
}

pub(super) const IDEMPOTENCY_COLUMNS: &str = "tenant_id, idempotency_key, operation_id, request_hash, status_code, \
    response_headers, response_body, created_at, expires_at";

pub(super) fn idempotency_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<IdempotencyRecord, StoreError>> {
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

/// Stores the response a created resource answers with under its idempotency key, in the creating transaction;
/// a key in use is a `Conflict` (the unique key), which the caller answers by replaying the stored response.
pub(super) fn store_idempotency(tx: &Connection, record: Option<&IdempotencyRecord>) -> Result<(), StoreError> {
    let Some(r) = record else { return Ok(()) };
    let (tenant, key) = (r.tenant_id.to_string(), r.key.as_str());
    // An expired record no longer answers (see get_idempotency), so its key is free again.
    tx.execute(
        // Keys compare without regard to case, as SQL Server's default collation compares its key column.
        "DELETE FROM idempotency_keys WHERE tenant_id = ?1 AND idempotency_key = ?2 COLLATE NOCASE AND expires_at <= ?3",
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
    .map_err(classify)
    .map(drop)
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
            store_idempotency(tx, record.as_ref())?;
            insert_document(tx, &d)?;
            write_ledger(tx, ledger.as_ref())
        })
        .await
    }

    async fn get_document(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError> {
        self.read_point(|conn| read_document(conn, tenant_id, id))
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
            reindex_document(tx, &d)?;
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
                unindex_document(tx, id)?;
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
        check_sort(sort, filter)?;
        let limit = limit.max(1);
        let (filter, after) = (filter.clone(), after.cloned());
        let (inner, now) = (self.inner.clone(), self.inner.clock.now());
        self.read(move |conn| list_on(conn, &inner.plans, now, tenant_id, &filter, sort, after.as_ref(), limit, count))
            .await
    }

    async fn search_window(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        size: u32,
    ) -> Result<Option<SearchWindow>, StoreError> {
        let filter = filter.clone();
        self.read(move |conn| search_window_on(conn, tenant_id, &filter, size)).await
    }

    async fn document_facets(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        fields: &[FacetField],
    ) -> Result<Vec<Facet>, StoreError> {
        // One walk of the matches reads every facet that is a column of the document; the tags take a second,
        // from the matches to their tags by key (`document_id IN (matches)` let SQLite walk every document of
        // the tenant and run the search once per document), which needs only the index's keys when it can.
        let columns: Vec<FacetField> = fields.iter().copied().filter(|f| *f != FacetField::Tags).collect();
        let by_column = (!columns.is_empty())
            .then(|| {
                let selected: Vec<&str> = columns.iter().map(|&f| facet_column(f)).collect();
                let mut a = Assembled { sql: format!("SELECT {}", selected.join(", ")), values: Vec::new() };
                document_conditions(&mut a, tenant_id, filter).map(|()| a)
            })
            .transpose()?;
        let by_tag = fields
            .contains(&FacetField::Tags)
            .then(|| {
                let id = if reads_keys_only(filter, SearchPlan::Keys) { "k.document_id" } else { "d.id" };
                let mut a = Assembled { sql: format!("SELECT t.tag, count(*) FROM (SELECT {id} AS id"), values: Vec::new() };
                conditions_with(&mut a, tenant_id, filter, SearchPlan::Keys)?;
                let top = a.bind(i64::from(FACET_VALUES));
                a.sql.push_str(&format!(
                    ") m CROSS JOIN document_tags t ON t.document_id = m.id GROUP BY t.tag ORDER BY 2 DESC, 1 LIMIT {top}"
                ));
                Ok::<_, StoreError>(a)
            })
            .transpose()?;
        let fields = fields.to_vec();
        self.read(move |conn| {
            // One snapshot for every facet.
            let tx = conn.unchecked_transaction().map_err(classify)?;
            let mut counted: Vec<HashMap<String, u64>> = vec![HashMap::new(); columns.len()];
            if let Some(a) = by_column {
                let mut stmt = tx.prepare_cached(&a.sql).map_err(classify)?;
                let mut rows = stmt.query(params_from_iter(a.values)).map_err(classify)?;
                while let Some(row) = rows.next().map_err(classify)? {
                    for (i, counts) in counted.iter_mut().enumerate() {
                        if let Some(value) = row.get::<_, Option<String>>(i).map_err(classify)? {
                            *counts.entry(value).or_default() += 1;
                        }
                    }
                }
            }
            let tags = match by_tag {
                Some(a) => query_all(&tx, &a.sql, params_from_iter(a.values), |r| {
                    let (value, n): (String, i64) = (r.get(0)?, r.get(1)?);
                    Ok(Ok((value, n as u64)))
                })?,
                None => Vec::new(),
            };
            tx.commit().map_err(classify)?;
            let by_field: HashMap<FacetField, Vec<(String, u64)>> =
                columns.into_iter().zip(counted.into_iter().map(commonest)).chain([(FacetField::Tags, tags)]).collect();
            Ok(fields.into_iter().map(|field| Facet { field, values: by_field[&field].clone() }).collect())
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
                 WHERE tenant_id = ?1 AND idempotency_key = ?2 COLLATE NOCASE AND expires_at > ?3"
            );
            query_one(conn, &sql, params![tenant_id.to_string(), key, timestamp(now)], idempotency_from_row)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_facet_keeps_its_commonest_values_ties_in_byte_order() {
        let mut counts: HashMap<String, u64> = (0..30).map(|i| (format!("v{i:02}"), 1)).collect();
        counts.insert("Zeta".into(), 5);
        counts.insert("alpha".into(), 5);
        counts.insert("Éire".into(), 2);
        let values = commonest(counts);
        assert_eq!(values.len(), FACET_VALUES as usize);
        assert_eq!(values[..3], [("Zeta".into(), 5), ("alpha".into(), 5), ("Éire".into(), 2)]);
        assert_eq!(values[3], ("v00".into(), 1));
        assert_eq!(values.last().unwrap(), &("v16".into(), 1));
    }
}
