//! The documents aggregate's storage contract: documents and the idempotency records of the requests that
//! created them, every method scoped by tenant.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::search::{SearchQuery, SearchWindow};
use super::*;

/// Documents and the idempotency records of the requests that created them; every method is scoped by tenant, and another tenant's document does not exist.
#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
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
    /// `tags_any` may hold at most 20 tags (more is an error: the API must refuse them first). Relevance order
    /// needs `filter.search` ([`check_sort`]).
    async fn list_documents(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        sort: DocumentSort,
        after: Option<&DocumentCursor>,
        limit: u32,
        count: bool,
    ) -> Result<DocumentPage, StoreError>;

    /// The window of a search (`filter.search`) that matches more than `size` live documents of the tenant with
    /// every filter (its `window` aside): the `size` most recently written ([`SearchWindow`]); `None` without a
    /// search or when it matches at most `size`. Its cost is bounded by `size`: it walks the matches newest first
    /// and stops after `size + 1`.
    async fn search_window(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        size: u32,
    ) -> Result<Option<SearchWindow>, StoreError>;

    /// The counts of each of `fields` over every live document of the tenant matching `filter` (not a page):
    /// at most [`FACET_VALUES`] values per field, commonest first.
    async fn document_facets(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        fields: &[FacetField],
    ) -> Result<Vec<Facet>, StoreError>;

    /// A stored idempotency record that has not expired at `now`.
    async fn get_idempotency(
        &self,
        tenant_id: Uuid,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentStatus {
    Draft,
    Published,
    Archived,
}

impl DocumentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentStatus::Draft => "draft",
            DocumentStatus::Published => "published",
            DocumentStatus::Archived => "archived",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "draft" => Some(DocumentStatus::Draft),
            "published" => Some(DocumentStatus::Published),
            "archived" => Some(DocumentStatus::Archived),
            _ => None,
        }
    }
}

/// A document row with its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub doc_type: String,
    pub jurisdiction: Option<String>,
    pub status: DocumentStatus,
    pub effective_date: Option<NaiveDate>,
    /// Lower-cased, unique, sorted.
    pub tags: Vec<String>,
    pub created_by: String,
    pub updated_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

impl Document {
    /// Its tags once each, in order: the rows of `document_tags` (keyed by document and tag).
    pub(crate) fn unique_tags(&self) -> Vec<&str> {
        let mut tags: Vec<&str> = self.tags.iter().map(String::as_str).collect();
        tags.sort_unstable();
        tags.dedup();
        tags
    }
}

/// Filters of a document listing; every present filter must hold (tags: any of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentFilter {
    pub status: Option<DocumentStatus>,
    pub doc_type: Option<String>,
    pub jurisdiction: Option<String>,
    /// Any of these tags (lower-cased).
    pub tags_any: Vec<String>,
    /// `updated_at >= updated_after` (inclusive).
    pub updated_after: Option<DateTime<Utc>>,
    /// `updated_at < updated_before` (exclusive).
    pub updated_before: Option<DateTime<Utc>>,
    /// `effective_date >= effective_from`.
    pub effective_from: Option<NaiveDate>,
    /// `effective_date <= effective_to`.
    pub effective_to: Option<NaiveDate>,
    /// A full-text search of title, summary, body and tags (`store::search`).
    pub search: Option<SearchQuery>,
    /// With `search`: only its matches in this window ([`DocumentStore::search_window`]).
    pub window: Option<SearchWindow>,
    /// With `search` and no `window`: a listing takes the search's window of this size itself, in the read of its
    /// page (one snapshot and no second call), and reports it in [`DocumentPage::window`].
    pub take_window: Option<u32>,
}

impl DocumentFilter {
    /// The filter without a window: the one a window is taken over.
    pub(crate) fn unwindowed(&self) -> DocumentFilter {
        DocumentFilter { window: None, take_window: None, ..self.clone() }
    }

    /// Whether a listing of this filter takes its search's window first: its size.
    pub(crate) fn window_to_take(&self) -> Option<u32> {
        self.take_window.filter(|_| self.search.is_some() && self.window.is_none())
    }
}

/// What a facet counts: the values of one field over a whole result set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FacetField {
    DocType,
    Jurisdiction,
    Tags,
    Status,
}

/// The most values a facet returns: the commonest, ties by value.
pub const FACET_VALUES: u32 = 20;

/// The counts of one facet: at most [`FACET_VALUES`] values, commonest first (ties by value); documents without a
/// value (no jurisdiction, no tags) are not counted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Facet {
    pub field: FacetField,
    pub values: Vec<(String, u64)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentSortKey {
    UpdatedAt,
    Title,
    /// Documents without an effective date sort as if dated [`NO_EFFECTIVE_DATE`].
    EffectiveDate,
    /// Only with a search: the store's rank, best first (a lower rank is a better match; ascending only).
    Relevance,
}

/// Where documents without an effective date sort: before every real date.
pub const NO_EFFECTIVE_DATE: NaiveDate = NaiveDate::MIN;

/// Whether a page in `sort` order after `after` may continue into the documents without an effective date:
/// newest date first, after a dated document. Those come last, and "after the cursor or undated" is no index
/// range, so the stores read the dated rest and the undated ones as two range queries of one snapshot.
pub fn continues_into_undated(sort: DocumentSort, after: Option<&DocumentCursor>) -> bool {
    sort.key == DocumentSortKey::EffectiveDate
        && sort.descending
        && matches!(after, Some(DocumentCursor { value: SortValue::Date(d), .. }) if *d != NO_EFFECTIVE_DATE)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentSort {
    pub key: DocumentSortKey,
    pub descending: bool,
}

/// The sort value of the last row of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    Time(DateTime<Utc>),
    Text(String),
    Date(NaiveDate),
    /// A search rank (lower is better), as the store computed it.
    Rank(i64),
}

/// Keyset position: the last row's sort value and id (the tie-breaker, in the same direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentCursor {
    pub value: SortValue,
    pub id: Uuid,
    /// In relevance order: the page's last documents, the last first (at most [`RANK_ANCHORS`]), each with the
    /// version the page read. A store whose ranks move with every write (SQLite's bm25) goes on after the first of
    /// them that still matches unchanged, ranked as it is now; empty in the other orders.
    pub anchors: Vec<(Uuid, i64)>,
}

/// How many of a relevance page's last documents its cursor names ([`DocumentCursor::anchors`]): the next page
/// goes on from where it left off unless all of them were written or deleted in between.
pub const RANK_ANCHORS: usize = 10;

impl DocumentCursor {
    /// A cursor at `value`, `id`, naming no anchors.
    pub fn at(value: SortValue, id: Uuid) -> Self {
        DocumentCursor { value, id, anchors: Vec::new() }
    }
}

/// A page of documents; `total` only when counting was asked for (all matches, not just this page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentPage {
    pub items: Vec<Document>,
    pub next: Option<DocumentCursor>,
    pub total: Option<u64>,
    /// The search window the page (and `total`) cover: the filter's, or the one it took ([`DocumentFilter::take_window`]).
    pub window: Option<SearchWindow>,
}

/// A stored first response to a POST carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub tenant_id: Uuid,
    pub key: String,
    pub operation_id: String,
    /// Hex SHA-256 of the request (method, path, body).
    pub request_hash: String,
    pub status_code: u16,
    /// Response headers to replay, as a JSON object of strings.
    pub response_headers: String,
    pub response_body: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A document's `doc_type` or `jurisdiction` as stored and compared: trimmed and lower case (both are ASCII codes),
/// so both stores match and group them alike (SQL Server ignores case, SQLite does not).
pub fn document_code(code: &str) -> String {
    code.trim().to_ascii_lowercase()
}

/// The first and last dates both stores can hold (SQL Server `DATE`); dates outside are clamped in filters and
/// cursors, which changes no answer because no stored date lies outside (tiberius would otherwise encode them
/// as a wrong date).
pub(crate) const FIRST_DATE: NaiveDate = NaiveDate::from_ymd_opt(1, 1, 1).expect("valid date");
pub(crate) const LAST_DATE: NaiveDate = NaiveDate::from_ymd_opt(9999, 12, 31).expect("valid date");

/// Refuses effective dates SQL Server's `DATE` cannot hold, so both stores accept the same documents.
pub(crate) fn check_effective_date(document: &Document) -> Result<(), StoreError> {
    match document.effective_date {
        Some(date) if !(FIRST_DATE..=LAST_DATE).contains(&date) => {
            Err(StoreError::Other(anyhow::anyhow!("effective date {date} is outside 0001-01-01..9999-12-31")))
        }
        _ => Ok(()),
    }
}

/// The rows each query of a listing fetches for a page of `limit`: one more, to know whether another page follows.
pub(crate) fn fetch_size(limit: u32) -> i64 {
    i64::from(limit) + 1
}

/// Whether the `fetched` dated rows of a page of `limit` leave room for the undated tail (see
/// [`continues_into_undated`]); only then is the tail read.
pub(crate) fn room_for_undated(fetched: usize, limit: u32) -> bool {
    fetched <= limit as usize
}

/// The page of a document listing from its rows (dated, then the undated tail) fetched with [`fetch_size`],
/// each with its rank (0 when the listing is no search); its tags and `total` are the backend's to fill in.
pub(crate) fn document_page(items: Vec<(Document, i64)>, limit: u32, sort: DocumentSort) -> DocumentPage {
    let Page { items, mut next } = Page::cut(items, limit, |(d, rank)| cursor_of(d, *rank, sort.key));
    if let (Some(next), DocumentSortKey::Relevance) = (next.as_mut(), sort.key) {
        next.anchors = items.iter().rev().take(RANK_ANCHORS).map(|(d, _)| (d.id, d.version)).collect();
    }
    DocumentPage { items: items.into_iter().map(|(d, _)| d).collect(), next, total: None, window: None }
}

/// The cursor of a listed document (of search rank `rank`) in `key` order (an undated document's carries
/// [`NO_EFFECTIVE_DATE`]).
pub(crate) fn cursor_of(document: &Document, rank: i64, key: DocumentSortKey) -> DocumentCursor {
    let value = match key {
        DocumentSortKey::UpdatedAt => SortValue::Time(document.updated_at),
        DocumentSortKey::Title => SortValue::Text(document.title.clone()),
        DocumentSortKey::EffectiveDate => SortValue::Date(document.effective_date.unwrap_or(NO_EFFECTIVE_DATE)),
        DocumentSortKey::Relevance => SortValue::Rank(rank),
    };
    DocumentCursor::at(value, document.id)
}

/// Whether a listing in `sort` order can be served: relevance needs a search to rank by, and is best first only.
pub(crate) fn check_sort(sort: DocumentSort, filter: &DocumentFilter) -> Result<(), StoreError> {
    match sort.key {
        DocumentSortKey::Relevance if filter.search.is_none() || sort.descending => {
            Err(StoreError::Other(anyhow::anyhow!("relevance order needs a search and is ascending by rank only")))
        }
        _ => Ok(()),
    }
}

/// The sort value of a keyset cursor, checked against the order (a cursor of another order is refused), with
/// dates clamped to what both stores hold; `None` is an undated document's cursor ([`NO_EFFECTIVE_DATE`]).
pub(crate) fn keyset_value(sort: DocumentSort, cursor: &DocumentCursor) -> Result<Option<SortValue>, StoreError> {
    match (sort.key, &cursor.value) {
        (DocumentSortKey::UpdatedAt, SortValue::Time(t)) => Ok(Some(SortValue::Time(*t))),
        (DocumentSortKey::Title, SortValue::Text(title)) => Ok(Some(SortValue::Text(title.clone()))),
        (DocumentSortKey::EffectiveDate, SortValue::Date(date)) if *date == NO_EFFECTIVE_DATE => Ok(None),
        (DocumentSortKey::EffectiveDate, SortValue::Date(date)) => {
            Ok(Some(SortValue::Date((*date).clamp(FIRST_DATE, LAST_DATE))))
        }
        (DocumentSortKey::Relevance, SortValue::Rank(rank)) => Ok(Some(SortValue::Rank(*rank))),
        (key, value) => Err(StoreError::Other(anyhow::anyhow!("a {value:?} cursor does not fit the {key:?} order"))),
    }
}

/// "Strictly after the cursor" in the listing's order, as a range on the sort index, given the placeholders of
/// the cursor's sort value (`v`, `None` for an undated cursor) and id: `key >= v AND (key > v OR id > c)`
/// ascending, mirrored descending. An undated cursor gets its own branch (no comparison with NULL is true):
/// descending, the undated rest by id; ascending, every dated document or the undated ones after the id.
/// `and` starts each condition (the stores differ only in layout).
pub(crate) fn keyset_condition(and: &str, key: &str, descending: bool, v: Option<&str>, id: &str) -> String {
    let (beyond, from) = if descending { ("<", "<=") } else { (">", ">=") };
    match v {
        // Descending by date, the undated documents after these are a query of their own.
        Some(v) => format!("{and}{key} {from} {v} AND ({key} {beyond} {v} OR d.id {beyond} {id})"),
        None if descending => format!("{and}d.effective_date IS NULL AND d.id < {id}"),
        None => format!("{and}(d.effective_date IS NOT NULL OR d.id > {id})"),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn document(effective_date: Option<NaiveDate>) -> Document {
        let at = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        Document {
            id: Uuid::from_u128(7),
            tenant_id: Uuid::from_u128(1),
            title: "Lease".into(),
            summary: None,
            body: None,
            doc_type: "contract".into(),
            jurisdiction: None,
            status: DocumentStatus::Draft,
            effective_date,
            tags: Vec::new(),
            created_by: "a".into(),
            updated_by: "a".into(),
            created_at: at,
            updated_at: at,
            version: 1,
        }
    }

    #[test]
    fn effective_dates_outside_sql_servers_date_range_are_refused() {
        assert!(check_effective_date(&document(None)).is_ok());
        assert!(check_effective_date(&document(Some(FIRST_DATE))).is_ok());
        assert!(check_effective_date(&document(Some(LAST_DATE))).is_ok());
        assert!(check_effective_date(&document(FIRST_DATE.pred_opt())).is_err());
        assert!(check_effective_date(&document(LAST_DATE.succ_opt())).is_err());
    }

    #[test]
    fn the_cursor_carries_the_sort_value_and_an_undated_document_sorts_first() {
        let dated = document(NaiveDate::from_ymd_opt(2026, 2, 1));
        let undated = document(None);
        assert_eq!(cursor_of(&dated, 0, DocumentSortKey::Title).value, SortValue::Text("Lease".into()));
        assert_eq!(cursor_of(&dated, 0, DocumentSortKey::UpdatedAt).value, SortValue::Time(dated.updated_at));
        assert_eq!(
            cursor_of(&dated, 0, DocumentSortKey::EffectiveDate).value,
            SortValue::Date(dated.effective_date.unwrap())
        );
        assert_eq!(cursor_of(&undated, 0, DocumentSortKey::EffectiveDate).value, SortValue::Date(NO_EFFECTIVE_DATE));
        assert_eq!(cursor_of(&undated, 0, DocumentSortKey::Title).id, undated.id);
    }

    #[test]
    fn the_keyset_plan_splits_on_an_undated_cursor_and_refuses_a_foreign_one() {
        let by_date = |descending| DocumentSort { key: DocumentSortKey::EffectiveDate, descending };
        let undated = DocumentCursor::at(SortValue::Date(NO_EFFECTIVE_DATE), Uuid::from_u128(7));
        assert_eq!(keyset_value(by_date(true), &undated).unwrap(), None);
        let title = DocumentCursor::at(SortValue::Text("Lease".into()), Uuid::from_u128(7));
        assert!(keyset_value(by_date(false), &title).is_err());
        assert_eq!(keyset_condition(" AND ", "k", false, Some("?2"), "?1"), " AND k >= ?2 AND (k > ?2 OR d.id > ?1)");
        assert_eq!(keyset_condition(" AND ", "k", true, Some("?2"), "?1"), " AND k <= ?2 AND (k < ?2 OR d.id < ?1)");
        assert_eq!(keyset_condition(" AND ", "k", true, None, "?1"), " AND d.effective_date IS NULL AND d.id < ?1");
        assert_eq!(
            keyset_condition(" AND ", "k", false, None, "?1"),
            " AND (d.effective_date IS NOT NULL OR d.id > ?1)"
        );
    }
}
