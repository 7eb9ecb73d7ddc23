//! How the SQLite store reaches a search's documents ([`SearchPlan`]): from the full-text index, or walking a
//! listing's sort index and checking each document against it; and the plans of recent searches ([`PlanCache`]).

use super::*;

/// How a search reaches its documents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SearchPlan {
    /// The index drives: its matches, then their documents by key. Right when the matches are few, and the only
    /// way to rank them (`bm25` needs the index as the outer loop).
    Drive,
    /// The listing's sort index drives and each document is checked against the index by its rowid: a page in
    /// date or title order of a word most documents contain stops after a page of matches, instead of joining
    /// and sorting all of them.
    Check,
    /// As [`SearchPlan::Drive`], for a walk that needs only the matches' rowids, ids and ranks: when no filter is
    /// on a document's own fields, the documents are not read at all, because every key is a live document of
    /// its tenant (a document enters and leaves the index in the transaction that writes it). Reading each
    /// match's document was two b-tree seeks a match, two fifths of a relevance walk (BENCHMARKS.md).
    Keys,
}

/// Whether `documents::conditions_with` reads only the index's keys for `filter` under `plan` (no `d` in the `FROM`).
pub(super) fn reads_keys_only(filter: &DocumentFilter, plan: SearchPlan) -> bool {
    plan == SearchPlan::Keys && filter.search.is_some() && searches_only(filter)
}

/// Whether `filter` asks about nothing but the search (and its window): no condition on the documents' fields.
fn searches_only(filter: &DocumentFilter) -> bool {
    let DocumentFilter {
        status,
        doc_type,
        jurisdiction,
        tags_any,
        updated_after,
        updated_before,
        effective_from,
        effective_to,
        search: _,
        window: _,
        take_window: _,
    } = filter;
    status.is_none()
        && doc_type.is_none()
        && jurisdiction.is_none()
        && tags_any.is_empty()
        && updated_after.is_none()
        && updated_before.is_none()
        && effective_from.is_none()
        && effective_to.is_none()
}

/// Matches (of every tenant) past which a search in another order than relevance is checked per document
/// ([`SearchPlan::Check`]) rather than driven by the index: counting this many costs a walk of one doclist.
const DRIVE_AT_MOST: i64 = 2_000;

/// How many documents of every tenant the index expression `expression` (`SearchQuery::fts5`) matches, counted
/// up to `cap + 1` (one walk of the doclists).
fn matches_at_most(conn: &Connection, expression: &str, cap: i64) -> Result<i64, StoreError> {
    conn.prepare_cached("SELECT count(*) FROM (SELECT 1 FROM document_search WHERE document_search MATCH ?1 LIMIT ?2)")
        .and_then(|mut s| s.query_row(params![expression, cap + 1], |r| r.get(0)))
        .map_err(classify)
}

/// How long [`PlanCache`] keeps a search's plan.
const PLAN_KEPT_FOR: chrono::TimeDelta = chrono::TimeDelta::seconds(30);
/// How many searches' plans [`PlanCache`] keeps at most; when full it starts again empty.
const PLANS_KEPT: usize = 1_024;

/// The plans of recent searches in another order than relevance, by their index expression. Choosing one counts
/// the matches up to [`DRIVE_AT_MOST`], a walk of that many doclist entries for a common word (a tenth of a
/// date-order search's time, BENCHMARKS.md), and how many documents hold a word changes slowly. A plan kept past
/// such a change costs time, never a result: both plans return the same page.
#[derive(Default)]
pub(super) struct PlanCache(Mutex<HashMap<String, (SearchPlan, DateTime<Utc>)>>);

impl PlanCache {
    fn get(&self, expression: &str, now: DateTime<Utc>) -> Option<SearchPlan> {
        let plans = self.0.lock().expect("plan cache lock");
        plans.get(expression).filter(|(_, chosen)| now - *chosen < PLAN_KEPT_FOR).map(|(plan, _)| *plan)
    }

    fn put(&self, expression: String, plan: SearchPlan, now: DateTime<Utc>) {
        let mut plans = self.0.lock().expect("plan cache lock");
        if plans.len() >= PLANS_KEPT {
            plans.clear();
        }
        plans.insert(expression, (plan, now));
    }
}

/// The plan for a page of `filter` in `sort` order: [`SearchPlan::Check`] for a search in another order than
/// relevance that matches more than [`DRIVE_AT_MOST`] documents, else [`SearchPlan::Drive`].
pub(super) fn search_plan(
    conn: &Connection,
    plans: &PlanCache,
    now: DateTime<Utc>,
    filter: &DocumentFilter,
    sort: DocumentSort,
) -> Result<SearchPlan, StoreError> {
    let Some(search) = filter.search.as_ref().filter(|_| sort.key != DocumentSortKey::Relevance) else {
        return Ok(SearchPlan::Drive);
    };
    let expression = search.fts5();
    if let Some(plan) = plans.get(&expression, now) {
        return Ok(plan);
    }
    let matches = matches_at_most(conn, &expression, DRIVE_AT_MOST)?;
    let plan = if matches > DRIVE_AT_MOST { SearchPlan::Check } else { SearchPlan::Drive };
    plans.put(expression, plan, now);
    Ok(plan)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_search_plan_is_kept_for_a_while_and_the_cache_stays_bounded() {
        let plans = PlanCache::default();
        let t0 = DateTime::<Utc>::from_timestamp(1_800_000_000, 0).unwrap();
        plans.put("regulation".into(), SearchPlan::Check, t0);
        assert_eq!(
            plans.get("regulation", t0 + PLAN_KEPT_FOR - chrono::TimeDelta::seconds(1)),
            Some(SearchPlan::Check)
        );
        assert_eq!(plans.get("regulation", t0 + PLAN_KEPT_FOR), None, "counted again once it is old");
        assert_eq!(plans.get("regulations", t0), None);
        for n in 0..PLANS_KEPT {
            plans.put(format!("word{n}"), SearchPlan::Drive, t0);
        }
        assert!(plans.0.lock().unwrap().len() <= PLANS_KEPT);
        assert_eq!(plans.get("regulation", t0), None, "a full cache starts again empty");
    }
}
