//! WAL checkpoints for the embedded store, mostly off the writer thread, so a commit never waits for one.
//!
//! SQLite's automatic checkpoint runs inside the commit that crosses 1 000 WAL pages: that commit, and every
//! request queued behind the single writer, waits while the checkpoint copies pages into the database file
//! and syncs it twice. Here the writer connection's WAL hook only counts: after each commit past
//! `background_at` pages it wakes a checkpointer thread, which runs a `PASSIVE` checkpoint on its own
//! connection while the writer goes on committing. A passive checkpoint cannot finish while new frames keep
//! arriving, and SQLite only rewinds the WAL after one has, so under sustained writes the writer itself
//! checkpoints once the WAL reaches `inline_at`: by then the background has copied nearly everything, so
//! that pause is short. The two take turns on a lock: a checkpoint finding another one running gives up at
//! once (SQLite never waits for the checkpoint lock), so without it a checkpointer descheduled mid-pass
//! would let the WAL grow without bound; with it, the writer's pass waits for the background one to end and
//! the WAL never holds much more than `inline_at` pages (unless a reader pins an older snapshot).
//! Durability is unchanged: a commit is durable once it is in the WAL; checkpoints only move pages.

use std::os::raw::c_int;
use std::path::Path;
use std::sync::{Arc, Mutex, mpsc};

use rusqlite::Connection;
use rusqlite::wal::CheckpointMode;

use super::{classify, connect};
use crate::store::StoreError;

/// When to checkpoint, in WAL pages.
#[derive(Debug, Clone, Copy)]
pub(super) struct Thresholds {
    /// The background checkpointer is woken.
    pub background_at: c_int,
    /// The writer checkpoints in its own commit, as SQLite's automatic checkpoint would.
    pub inline_at: c_int,
    /// Past `background_at`, the checkpointer is woken again only once this many pages have been added.
    pub background_every: c_int,
}

impl Thresholds {
    /// 8 MiB and 32 MiB of 4 KiB pages. Below 2 000 pages nothing is checkpointed, so a burst of writes
    /// commits without one. Past it, the checkpointer is woken once per 256 new pages (1 MiB), so it keeps up
    /// and the writer's own pass at 8 000 finds at most about that much left to copy. Waking it after every
    /// commit made each small commit pay a passive checkpoint (its locks, its WAL-index walk and the database
    /// file's sync): 52 against 45-47 µs of the handler's CPU per metered GET, and 0.52 against 0.33 ms p50 at
    /// half load (BENCHMARKS.md, "The checkpointer woken per 1 MiB"). Waking it only once per 2 000 pages went
    /// too far the other way: the writer's pass then found up to 2 000 frames to copy while requests queued
    /// (p99 of a metered GET 24 ms instead of 3.4 ms, `e90172b`).
    pub(super) const DEFAULT: Thresholds = Thresholds { background_at: 2_000, inline_at: 8_000, background_every: 256 };

    /// A WAL file left larger than this after it was rewound is truncated to it.
    fn wal_size_limit(self) -> i64 {
        i64::from(self.inline_at) * 4096
    }
}

/// Replaces `writer`'s automatic checkpoint with the background checkpointer; the thread stops when
/// `writer` is closed.
pub(super) fn install(writer: &mut Connection, path: &Path, at: Thresholds) -> Result<(), StoreError> {
    let checkpointer = connect(path)?;
    let (wake, woken) = mpsc::sync_channel::<()>(1);
    // Held for each checkpoint pass, by whichever side runs it. Nothing panics while holding it, and the
    // lock guards no data, so a poisoned lock is as good as a clean one.
    let turn = Arc::new(Mutex::new(()));
    let background_turn = Arc::clone(&turn);
    std::thread::Builder::new()
        .name("sqlite-checkpoint".to_owned())
        .spawn(move || {
            // Wake-ups while a checkpoint runs coalesce into the one queued slot.
            while woken.recv().is_ok() {
                let _turn = background_turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Err(err) = checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %err, "a background WAL checkpoint failed; the next one retries");
                }
            }
        })
        .map_err(|e| StoreError::Other(anyhow::Error::new(e).context("starting the SQLite checkpoint thread")))?;
    writer.pragma_update(None, "journal_size_limit", at.wal_size_limit()).map_err(classify)?;
    // The hook runs after each commit, on whichever thread committed (`writer`). It must answer Ok: an error
    // would make the (already durable) commit report a failure.
    // The WAL size at the last wake-up; a smaller size than it means the WAL was rewound since.
    let mut woken_at: c_int = 0;
    writer
        .wal_hook(Some(move |wal: &mut rusqlite::hooks::Wal, pages: c_int| {
            if pages >= at.inline_at {
                // Waits out a background pass rather than skipping this one; that pass has copied most
                // frames already, so what is left here is short.
                let _turn = turn.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                if let Err(err) = wal.checkpoint_v2(CheckpointMode::PASSIVE) {
                    tracing::debug!(error = %err, pages, "the writer's own WAL checkpoint did not run");
                }
            } else if pages >= at.background_at && (pages < woken_at || pages - woken_at >= at.background_every) {
                woken_at = pages;
                let _ = wake.try_send(());
            }
            Ok(())
        }))
        .map_err(classify)
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    /// The production shape, scaled down: woken past 50 pages, once per 20 new ones; the writer at 400.
    const AT: Thresholds = Thresholds { background_at: 50, inline_at: 400, background_every: 20 };

    fn writer(dir: &tempfile::TempDir) -> Connection {
        writer_at(dir, AT)
    }

    fn writer_at(dir: &tempfile::TempDir, at: Thresholds) -> Connection {
        let path = dir.path().join("c.db");
        let mut conn = connect(&path).unwrap();
        conn.pragma_update(None, "journal_mode", "WAL").unwrap();
        conn.execute_batch("CREATE TABLE t (n INTEGER PRIMARY KEY, pad BLOB NOT NULL)").unwrap();
        install(&mut conn, &path, at).unwrap();
        conn
    }

    /// Commits `rows` rows of a page each, `per_commit` at a time.
    fn write(conn: &Connection, from: i64, rows: i64, per_commit: i64) {
        for start in (from..from + rows).step_by(per_commit as usize) {
            let tx = conn.unchecked_transaction().unwrap();
            for n in start..start + per_commit {
                tx.execute("INSERT INTO t (n, pad) VALUES (?1, zeroblob(4000))", [n]).unwrap();
            }
            tx.commit().unwrap();
        }
    }

    fn size(path: std::path::PathBuf) -> u64 {
        std::fs::metadata(path).map_or(0, |m| m.len())
    }

    #[test]
    fn past_the_background_threshold_pages_reach_the_database_file_without_the_writer_checkpointing() {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer(&dir);
        let before = size(dir.path().join("c.db"));
        // About 200 pages: past `background_at`, far below `inline_at`, so only the checkpointer can copy them.
        write(&conn, 0, 200, 10);
        let deadline = Instant::now() + Duration::from_secs(10);
        while size(dir.path().join("c.db")) < before + 150 * 4000 {
            assert!(Instant::now() < deadline, "the background checkpointer never copied the WAL into the database");
            std::thread::sleep(Duration::from_millis(20));
        }
        let count: i64 = conn.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
        assert_eq!(count, 200);
    }

    #[test]
    fn under_sustained_writes_the_wal_stays_bounded_and_every_row_survives_reopening() {
        // Woken once per 20 pages (as in production, scaled) and after every commit (the bound's worst case for
        // the turn-taking between the two passes): the same bound either way.
        for every in [AT.background_every, 1] {
            sustained_writes_stay_bounded(Thresholds { background_every: every, ..AT });
        }
    }

    fn sustained_writes_stay_bounded(at: Thresholds) {
        let dir = tempfile::tempdir().unwrap();
        let conn = writer_at(&dir, at);
        let wal = dir.path().join("c.db-wal");
        let mut largest = 0;
        for round in 0..40 {
            write(&conn, round * 100, 100, 5);
            largest = largest.max(size(wal.clone()));
        }
        // 4 000 pages were written, ten times `inline_at`. The commit that takes the WAL to `inline_at` pages is
        // followed by the writer's own checkpoint, which copies every frame (no reader pins an older snapshot),
        // so the next commit rewinds the WAL: it never holds more than `inline_at` pages plus one commit's
        // (5 rows, the pages above them, the table's root). This fails under CPU load if the writer's pass
        // skips instead of waiting for a background one.
        let bound = (at.inline_at as u64 + 10) * (4096 + 24) + 32;
        assert!(largest <= bound, "{at:?}: the WAL grew to {largest} bytes (bound {bound})");
        drop(conn);
        let reopened = Connection::open(dir.path().join("c.db")).unwrap();
        let (count, sum): (i64, i64) =
            reopened.query_row("SELECT count(*), sum(n) FROM t", [], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
        assert_eq!((count, sum), (4000, (0..4000).sum::<i64>()));
    }
}
