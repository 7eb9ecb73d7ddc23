//! Group commit for the embedded store: one thread owns the write connection and commits concurrent writes together.
//!
//! SQLite has one writer per file. Giving every write its own `BEGIN IMMEDIATE … COMMIT` makes each pay for
//! the lock, the WAL append of every page it touched and the wake-up of the next waiter, one after the
//! other. Here the writer thread takes every write waiting in its queue (up to [`MAX_BATCH`]), runs each in
//! its own `SAVEPOINT` inside one `BEGIN IMMEDIATE` transaction, commits once, and only then answers each
//! caller. A write that fails rolls back to its savepoint and gets its own error; the others still commit.
//! A failed `COMMIT` fails them all. Under load a batch forms by itself while the previous one commits;
//! when idle, a write runs at once. Callers see the same guarantee as before: when `write` returns Ok, the
//! change is committed (durable against a killed process, `synchronous=NORMAL` in WAL mode).

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::mpsc;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::store::StoreError;

/// Most writes committed in one transaction; bounds how long one batch holds the file lock.
const MAX_BATCH: usize = 256;

/// A write waiting for the writer thread: runs inside the batch, answers after the commit.
trait Job: Send {
    /// Runs the write on the connection (inside its savepoint); true if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: its own result if the batch committed, else the batch's failure.
    fn finish(self: Box<Self>, batch_failure: Option<&str>);
}

struct Pending<T, F> {
    write: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn run(&mut self, conn: &Connection) -> bool {
        let write = self.write.take().expect("a job runs once");
        let result = catch_unwind(AssertUnwindSafe(|| write(conn)))
            .unwrap_or_else(|_| Err(StoreError::Other(anyhow::anyhow!("a store write panicked; it was rolled back"))));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, batch_failure: Option<&str>) {
        let result = match (batch_failure, self.result) {
            (None, Some(result)) => result,
            (Some(why), _) => Err(StoreError::Unavailable(anyhow::anyhow!("the write batch failed: {why}"))),
            (None, None) => Err(StoreError::Other(anyhow::anyhow!("a write was answered without running"))),
        };
        let _ = self.reply.send(result);
    }
}

/// The handle writes are queued on; the thread stops when the last handle is dropped.
pub(super) struct Writer {
    queue: mpsc::Sender<Box<dyn Job>>,
}

impl Writer {
    /// Starts the writer thread, which owns `conn` from now on.
    pub(super) fn start(conn: Connection) -> Result<Writer, StoreError> {
        let (queue, jobs) = mpsc::channel::<Box<dyn Job>>();
        std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || run(conn, jobs))
            .map_err(|e| StoreError::Other(anyhow::Error::new(e).context("starting the SQLite writer thread")))?;
        Ok(Writer { queue })
    }

    /// Runs `write` in the next batch; returns its result once the batch has committed.
    pub(super) async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let job = Box::new(Pending { write: Some(write), result: None, reply });
        self.queue.send(job).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

fn stopped() -> StoreError {
    StoreError::Unavailable(anyhow::anyhow!("the SQLite writer thread has stopped"))
}

/// The writer thread: batch, run, commit, answer, until every handle is gone.
fn run(conn: Connection, jobs: mpsc::Receiver<Box<dyn Job>>) {
    let mut batch: Vec<Box<dyn Job>> = Vec::with_capacity(MAX_BATCH);
    while let Ok(first) = jobs.recv() {
        batch.push(first);
        while batch.len() < MAX_BATCH {
            match jobs.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let failure = commit_batch(&conn, &mut batch).err();
        if let Some(why) = &failure {
            tracing::error!(writes = batch.len(), error = %why, "an SQLite write batch failed; its writes answer 503");
        }
        for job in batch.drain(..) {
            job.finish(failure.as_deref());
        }
    }
}

/// Runs one parameterless statement, prepared once per connection.
fn statement(conn: &Connection, sql: &str) -> Result<(), String> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop).map_err(|e| format!("{sql}: {e}"))
}

/// Runs every job of the batch in its own savepoint inside one IMMEDIATE transaction and commits.
fn commit_batch(conn: &Connection, batch: &mut [Box<dyn Job>]) -> Result<(), String> {
    // IMMEDIATE takes the file lock now (waiting up to the busy timeout for another process).
    conn.execute_batch("BEGIN IMMEDIATE").map_err(|e| format!("BEGIN IMMEDIATE: {e}"))?;
    let outcome = (|| {
        for job in batch.iter_mut() {
            statement(conn, "SAVEPOINT job")?;
            if job.run(conn) {
                statement(conn, "RELEASE job")?;
            } else {
                statement(conn, "ROLLBACK TO job")?;
                statement(conn, "RELEASE job")?;
            }
        }
        conn.execute_batch("COMMIT").map_err(|e| format!("COMMIT: {e}"))
    })();
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;

    fn writer_on(dir: &tempfile::TempDir) -> (Writer, Connection) {
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY)").unwrap();
        (Writer::start(conn).unwrap(), Connection::open(&path).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_or_panicking_write_rolls_back_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = writer_on(&dir);
        let writer = std::sync::Arc::new(writer);
        let tasks: Vec<_> = (0..200i64)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    writer
                        .write(move |conn| {
                            conn.execute("INSERT INTO t (n) VALUES (?1)", [n])
                                .map_err(|e| StoreError::Other(e.into()))?;
                            match n % 10 {
                                3 => Err(StoreError::Conflict(format!("write {n} refused"))),
                                7 => panic!("write {n} panics"),
                                _ => Ok(n),
                            }
                        })
                        .await
                })
            })
            .collect();
        let mut answered = Vec::new();
        for task in tasks {
            answered.push(task.await.unwrap());
        }
        for (n, result) in answered.iter().enumerate() {
            match n % 10 {
                3 => assert!(matches!(result, Err(StoreError::Conflict(_))), "{n}: {result:?}"),
                7 => assert!(matches!(result, Err(StoreError::Other(_))), "{n}: {result:?}"),
                _ => assert_eq!(result.as_ref().unwrap(), &(n as i64)),
            }
        }
        let stored: Vec<i64> = reader
            .prepare("SELECT n FROM t ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected: Vec<i64> = (0..200).filter(|n| n % 10 != 3 && n % 10 != 7).collect();
        assert_eq!(stored, expected, "exactly the successful writes are committed");
    }

    #[tokio::test]
    async fn a_write_is_visible_to_other_connections_when_it_returns() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = writer_on(&dir);
        for n in 0..20i64 {
            writer
                .write(move |conn| {
                    conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(|e| StoreError::Other(e.into()))
                })
                .await
                .unwrap();
            let count: i64 = reader.query_row("SELECT count(*) FROM t", [], |r| r.get(0)).unwrap();
            assert_eq!(count, n + 1);
        }
    }
}
