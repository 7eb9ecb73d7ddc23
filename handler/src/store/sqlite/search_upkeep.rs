//! Keeps the embedded store's full-text index in one segment once documents stop being written, so that a search
//! seeks one b-tree per term instead of a dozen.
//!
//! FTS5 writes a segment per transaction and merges them by level (four of a level into one of the next), so an
//! index written one document at a time holds about ten segments, and every lookup in it seeks each of them: the
//! date-order search checks each document it walks against the index by rowid, 22 µs a check on ten segments
//! against 5 µs on one (BENCHMARKS.md, "The index merged into one segment when writes pause"). Merging after each
//! write would rewrite the whole index per document. Instead a task watches the index's structure record (FTS5's
//! list of segments, which every index write and merge rewrites) and, once it has stayed the same for [`QUIET`]
//! and is not what this process's last compaction left, merges the index into one segment
//! ([`SqliteStore::compact_search_index`]): one `merge` with a negative page count starts a merge of every
//! segment, then steps of [`STEP_PAGES`] pages continue it until a step leaves the structure unchanged. Each step
//! is a write of its own on the writer, a few milliseconds, and the task waits four times a step's duration before
//! the next, so other writes commit between steps and few of them wait for one. A document
//! written meanwhile only adds a small segment, which the next quiet period merges.
//!
//! A negative `merge` restarts any merge in progress, and one per document write ran FTS5 out of segment ids
//! after about 1 250 (`SQLITE_FULL`, BENCHMARKS.md "The index's segments"): here there is at most one per quiet
//! period and process. The search index is only an index: a merge changes how its entries are stored, never which.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use chrono::{DateTime, TimeDelta, Utc};
use rusqlite::{Connection, OptionalExtension};

use super::{Inner, SqliteStore, classify};
use crate::store::StoreError;

/// How long the index must stay unwritten before it is merged: a burst of document writes (an import, a batch
/// of edits) is merged once, after it, not after each write.
const QUIET: TimeDelta = TimeDelta::seconds(5);

/// How often the task reads the structure record.
const POLL: Duration = Duration::from_secs(1);

/// Pages a merge step writes at least (FTS5 finishes the term it is in): at 100 000 documents 133 steps of
/// 4 ms on average and 14 ms at most; 64 pages made fewer steps no shorter at their longest (BENCHMARKS.md).
const STEP_PAGES: i64 = 16;

/// How much of the writer's time a compaction leaves to other writes: after each step the task waits this many
/// times the step's own duration, so a fifth as many usage batches queue behind a step as if it stepped at once.
const PACE: u32 = 4;

/// A compaction gives up after this many steps (the index at 100 000 documents takes about 130): it only stops
/// a merge that documents written during it keep feeding; the next quiet period goes on from where it stopped.
const MAX_STEPS: u32 = 20_000;

/// What a compaction did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Compaction {
    /// Merge steps run, the first included.
    pub steps: u32,
    /// The structure record the last step left; `None` if the index does not exist (an unmigrated store).
    structure: Option<Vec<u8>>,
    /// The last step found nothing left to merge; false if the compaction gave up after [`MAX_STEPS`].
    complete: bool,
}

/// When to compact: the structure record as last read, since when it has been so, and what the last compaction left.
#[derive(Debug, Default)]
struct Upkeep {
    seen: Option<(Vec<u8>, DateTime<Utc>)>,
    merged: Option<Vec<u8>>,
    /// [`PACE`] in the task; 0 (step at once) in tests, which must not wait on the wall clock.
    pace: u32,
}

impl Upkeep {
    /// Notes the structure record read at `now`; true if the index is due to be merged.
    fn observe(&mut self, structure: Option<Vec<u8>>, now: DateTime<Utc>) -> bool {
        let Some(structure) = structure else { return false };
        match &self.seen {
            Some((seen, _)) if *seen == structure => {}
            _ => self.seen = Some((structure, now)),
        }
        let (structure, since) = self.seen.as_ref().expect("just set");
        self.merged.as_ref() != Some(structure) && now - *since >= QUIET
    }

    /// The index was merged and left `structure`.
    fn merged(&mut self, structure: Option<Vec<u8>>, now: DateTime<Utc>) {
        self.seen = structure.clone().map(|s| (s, now));
        self.merged = structure;
    }

    /// A compaction failed at `now`: the next try waits a whole quiet period, not the next poll (a store that
    /// refuses writes, or a full disk, would otherwise be asked every second).
    fn failed(&mut self, now: DateTime<Utc>) {
        if let Some((_, since)) = &mut self.seen {
            *since = now;
        }
    }
}

/// FTS5's structure record of `document_search` (row 10 of its data table); `None` before migration 10.
fn structure(conn: &Connection) -> Result<Option<Vec<u8>>, StoreError> {
    let exists = conn
        .prepare_cached("SELECT 1 FROM sqlite_schema WHERE type = 'table' AND name = 'document_search_data'")
        .map_err(classify)?
        .exists([])
        .map_err(classify)?;
    if !exists {
        return Ok(None);
    }
    conn.prepare_cached("SELECT block FROM document_search_data WHERE id = 10")
        .map_err(classify)?
        .query_row([], |r| r.get(0))
        .optional()
        .map_err(classify)
}

/// One merge step of `pages` (negative: start merging every segment); returns the structure it left and
/// whether it changed it.
fn merge_step(conn: &Connection, pages: i64) -> Result<(bool, Option<Vec<u8>>), StoreError> {
    let before = structure(conn)?;
    if before.is_none() {
        return Ok((false, None));
    }
    conn.prepare_cached("INSERT INTO document_search (document_search, rank) VALUES ('merge', ?1)")
        .map_err(classify)?
        .execute([pages])
        .map_err(classify)?;
    let after = structure(conn)?;
    Ok((after != before, after))
}

impl SqliteStore {
    /// Merges the full-text index into one segment, a step at a time on the writer (see the module doc).
    /// Searches answer the same before and after; only their cost changes.
    pub async fn compact_search_index(&self) -> Result<Compaction, StoreError> {
        self.compact_paced(0).await
    }

    /// [`Self::compact_search_index`], waiting `pace` times each step's duration after it.
    async fn compact_paced(&self, pace: u32) -> Result<Compaction, StoreError> {
        let mut steps = 0;
        loop {
            let pages = if steps == 0 { -STEP_PAGES } else { STEP_PAGES };
            let started = Instant::now();
            let (changed, structure) = self.write(move |conn| merge_step(conn, pages)).await?;
            steps += 1;
            if !changed || steps >= MAX_STEPS {
                return Ok(Compaction { steps, structure, complete: !changed });
            }
            if pace > 0 {
                tokio::time::sleep(started.elapsed() * pace).await;
            }
        }
    }
}

/// Starts the task that compacts the index of `inner`'s store when its writes pause; it ends with the store.
/// Without a tokio runtime (nothing to run it on) the index is left to FTS5's own merging.
pub(super) fn spawn(inner: &Arc<Inner>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
    let store: Weak<Inner> = Arc::downgrade(inner);
    runtime.spawn(async move {
        let mut ticks = tokio::time::interval(POLL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut upkeep = Upkeep { pace: PACE, ..Upkeep::default() };
        loop {
            ticks.tick().await;
            let Some(inner) = store.upgrade() else { return };
            SqliteStore { inner }.look_after_search_index(&mut upkeep).await;
        }
    });
}

impl SqliteStore {
    /// One look at the index: compacts it if it is due; returns the compaction it ran.
    async fn look_after_search_index(&self, upkeep: &mut Upkeep) -> Option<Compaction> {
        let due = match self.read_point(structure) {
            Ok(structure) => upkeep.observe(structure, self.inner.clock.now()),
            Err(err) => {
                tracing::debug!(error = %err, "reading the search index's structure failed");
                false
            }
        };
        if !due {
            return None;
        }
        match self.compact_paced(upkeep.pace).await {
            Ok(done) if done.complete => {
                tracing::info!(steps = done.steps, "search index compacted into one segment");
                upkeep.merged(done.structure.clone(), self.inner.clock.now());
                Some(done)
            }
            // Documents written during it kept it going: the next quiet period goes on from where it stopped.
            Ok(done) => {
                tracing::info!(
                    steps = done.steps,
                    "search index merge stopped before the end; the next quiet period goes on"
                );
                upkeep.failed(self.inner.clock.now());
                Some(done)
            }
            Err(err) => {
                tracing::warn!(error = %err, "compacting the search index failed; the next quiet period retries");
                upkeep.failed(self.inner.clock.now());
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::store::OperationsStore;

    fn at(secs: i64) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2027, 3, 1, 12, 0, 0).unwrap() + TimeDelta::seconds(secs)
    }

    #[test]
    fn the_index_is_due_once_its_structure_has_stayed_the_same_for_the_quiet_period() {
        let mut upkeep = Upkeep::default();
        assert!(!upkeep.observe(None, at(0)), "no index, nothing to merge");
        assert!(!upkeep.observe(Some(vec![1]), at(0)));
        assert!(!upkeep.observe(Some(vec![1]), at(4)));
        assert!(!upkeep.observe(Some(vec![2]), at(5)), "a write restarts the quiet period");
        assert!(!upkeep.observe(Some(vec![2]), at(9)));
        assert!(upkeep.observe(Some(vec![2]), at(10)));
        upkeep.merged(Some(vec![3]), at(11));
        assert!(!upkeep.observe(Some(vec![3]), at(100)), "what the compaction left is not merged again");
        assert!(!upkeep.observe(Some(vec![4]), at(101)));
        assert!(upkeep.observe(Some(vec![4]), at(106)), "written since: merged once quiet again");
        upkeep.failed(at(107));
        assert!(!upkeep.observe(Some(vec![4]), at(108)), "a failed compaction is not retried at the next poll");
        assert!(upkeep.observe(Some(vec![4]), at(112)), "but after another quiet period");
    }

    /// Index entries written one transaction each, as the API writes documents (`rowid` from `first`).
    fn index_one_by_one(conn: &Connection, first: i64, count: i64) {
        for rowid in first..first + count {
            let body = if rowid % 3 == 0 { "annual customs regulation" } else { "tax guidance" };
            conn.execute(
                "INSERT INTO document_search (rowid, title, summary, body, tags) VALUES (?1, ?2, '', ?3, '')",
                rusqlite::params![rowid, format!("title {rowid}"), body],
            )
            .unwrap();
        }
    }

    fn segments(conn: &Connection) -> i64 {
        conn.query_row("SELECT count(DISTINCT segid) FROM document_search_idx", [], |r| r.get(0)).unwrap()
    }

    fn matches(conn: &Connection, query: &str) -> Vec<i64> {
        let mut stmt =
            conn.prepare("SELECT rowid FROM document_search WHERE document_search MATCH ?1 ORDER BY rowid").unwrap();
        stmt.query_map([query], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    }

    #[tokio::test]
    async fn a_compaction_leaves_one_segment_that_finds_what_the_many_found() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search.db");
        let store = SqliteStore::open_unattended(&path, Arc::new(crate::clock::SystemClock)).await.unwrap();
        assert_eq!(store.compact_search_index().await.unwrap().steps, 1, "no index yet: nothing to merge");
        store.migrate().await.unwrap();
        let conn = super::super::connect(&path).unwrap();
        index_one_by_one(&conn, 1, 300);
        conn.execute("DELETE FROM document_search WHERE rowid = 3", []).unwrap();
        let before = (segments(&conn), matches(&conn, "regulation"), matches(&conn, "title"), matches(&conn, "tax*"));
        assert!(before.0 > 3, "one transaction a document leaves many segments: {}", before.0);

        let done = store.compact_search_index().await.unwrap();
        assert!(done.steps >= 2, "the merge is started, then stepped until a step finds nothing left");
        assert!(done.complete);
        assert_eq!(segments(&conn), 1);
        let after = (matches(&conn, "regulation"), matches(&conn, "title"), matches(&conn, "tax*"));
        assert_eq!((before.1, before.2, before.3), after);
        assert_eq!(after.0.len(), 99, "every third of 300, less the deleted one");
        assert_eq!(done.structure, structure(&conn).unwrap());

        // Documents written while a compaction runs: both finish, nothing is lost, the next one merges them.
        let writes = tokio::task::spawn_blocking(move || {
            index_one_by_one(&conn, 1_000, 100);
            conn
        });
        let (compacted, conn) = tokio::join!(store.compact_search_index(), writes);
        compacted.unwrap();
        let conn = conn.unwrap();
        assert_eq!(matches(&conn, "title").len(), 299 + 100);
        store.compact_search_index().await.unwrap();
        assert_eq!(segments(&conn), 1);
        assert_eq!(matches(&conn, "title").len(), 299 + 100);
    }

    #[tokio::test]
    async fn the_store_compacts_its_index_once_document_writes_have_paused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("search.db");
        let clock = Arc::new(crate::clock::ManualClock::new(at(0)));
        let store = SqliteStore::open_unattended(&path, clock.clone()).await.unwrap();
        store.migrate().await.unwrap();
        let conn = super::super::connect(&path).unwrap();
        let mut upkeep = Upkeep::default();
        index_one_by_one(&conn, 1, 100);
        assert_eq!(store.look_after_search_index(&mut upkeep).await, None, "just written");
        clock.advance(TimeDelta::seconds(4));
        index_one_by_one(&conn, 200, 10);
        assert_eq!(store.look_after_search_index(&mut upkeep).await, None, "written again");
        clock.advance(TimeDelta::seconds(4));
        assert_eq!(store.look_after_search_index(&mut upkeep).await, None, "quiet for 4 s only");
        assert!(segments(&conn) > 1);
        clock.advance(TimeDelta::seconds(1));
        assert!(store.look_after_search_index(&mut upkeep).await.is_some(), "quiet for 5 s");
        assert_eq!(segments(&conn), 1);
        assert_eq!(matches(&conn, "title").len(), 110);
        clock.advance(TimeDelta::seconds(60));
        assert_eq!(store.look_after_search_index(&mut upkeep).await, None, "nothing written since");
    }
}
