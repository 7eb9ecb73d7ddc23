//! Group commit for the embedded store: whoever holds the write connection commits every write waiting together.
//!
//! SQLite has one writer per file. Giving every write its own `BEGIN IMMEDIATE … COMMIT` makes each pay for
//! the lock, the WAL append of every page it touched and the wake-up of the next waiter, one after the
//! other. Here the holder of the write connection takes every write waiting in the queue (up to [`MAX_BATCH`]),
//! runs each in its own `SAVEPOINT` inside one `BEGIN IMMEDIATE` transaction, commits once, and only then
//! answers each caller. A write that fails rolls back to its savepoint and gets its own error; the others still
//! commit. A failed `COMMIT` fails them all. Under load a batch forms by itself while the previous one commits;
//! when idle, a write runs at once. Callers see the same guarantee as before: when `write` returns Ok, the
//! change is committed (durable against a killed process, `synchronous=NORMAL` in WAL mode).
//!
//! The holder is the writer thread, or, for a short write on a request's path ([`Writer::write_here`]: a usage
//! batch), the caller's own thread when no batch is committing ([`Shared::commit_here`]), which saves the
//! hand-off to the thread and back. The WAL hook (`checkpoint`) runs in whichever thread commits.
//!
//! The wait is bounded ([`Bounds`]): a write that finds [`Bounds::max_queued`] writes already waiting to start is refused
//! at once, and a caller that has waited [`Bounds::max_wait`] for a write that has not started takes it back
//! (whoever commits skips it) and is refused. Both refusals are [`Refusal::overloaded`], so the request answers
//! 503 `overloaded` at once instead of queueing into a timeout when the writer is stalled (a batch waiting on
//! the file lock another process holds, a slow disk), and nothing of the refused write ever takes effect.
//! A write that has started is waited for: it is in the store, no longer waiting for it.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError, TryLockError};
use std::time::Duration;

use rusqlite::Connection;
use tokio::sync::oneshot;

use crate::resilience::Refusal;
use crate::store::StoreError;

/// Most writes committed in one transaction; bounds how long one batch holds the file lock.
const MAX_BATCH: usize = 256;

/// How much work may wait for the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bounds {
    /// Writes waiting to start (queued, neither started nor taken back) past which a new one is refused at once.
    pub max_queued: usize,
    /// How long a caller waits for its write to start before taking it back and being refused.
    pub max_wait: Duration,
}

impl Bounds {
    /// Four full batches queued, half a second of waiting. A batch commits in milliseconds (BENCHMARKS.md), so
    /// neither bound is reached unless the writer is stalled; then a write is refused within half a second
    /// instead of waiting out the five-second busy timeout of every batch in front of it, and the usage
    /// recorder's serial batches (one write each) open the store breaker within about 2.5 s.
    pub(super) const DEFAULT: Bounds = Bounds { max_queued: 4 * MAX_BATCH, max_wait: Duration::from_millis(500) };
}

/// Where a queued write is: taken back by its caller, or started by the writer thread (whichever comes first).
const QUEUED: u8 = 0;
const STARTED: u8 = 1;
const ABANDONED: u8 = 2;

/// A write waiting for the writer thread: runs inside the batch, answers after the commit.
trait Job: Send {
    /// Claims the write for the writer thread; false if its caller took it back (then it never runs).
    fn start(&self) -> bool;
    /// Whether a caller's thread may run it ([`Writer::write_here`]); else only the writer thread does.
    fn here(&self) -> bool;
    /// Runs the write on the connection (inside its savepoint); true if it succeeded.
    fn run(&mut self, conn: &Connection) -> bool;
    /// Answers the caller: its own result if the batch committed, else the batch's failure.
    fn finish(self: Box<Self>, batch_failure: Option<&str>);
}

struct Pending<T, F> {
    stage: Arc<AtomicU8>,
    here: bool,
    /// The writer's count of writes waiting to start, which whoever moves this one out of `QUEUED` decrements.
    waiting: Arc<AtomicUsize>,
    write: Option<F>,
    result: Option<Result<T, StoreError>>,
    reply: oneshot::Sender<Result<T, StoreError>>,
}

impl<T, F> Job for Pending<T, F>
where
    T: Send,
    F: FnOnce(&Connection) -> Result<T, StoreError> + Send,
{
    fn start(&self) -> bool {
        let started = self.stage.compare_exchange(QUEUED, STARTED, Ordering::AcqRel, Ordering::Acquire).is_ok();
        if started {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        started
    }

    fn here(&self) -> bool {
        self.here
    }

    fn run(&mut self, conn: &Connection) -> bool {
        let write = self.write.take().expect("a job runs once");
        let result = catch_unwind(AssertUnwindSafe(|| write(conn)))
            .unwrap_or_else(|_| Err(StoreError::Other(anyhow::anyhow!("a store write panicked; it was rolled back"))));
        let ok = result.is_ok();
        self.result = Some(result);
        ok
    }

    fn finish(self: Box<Self>, batch_failure: Option<&str>) {
        // Never started (its batch failed first): it no longer waits either.
        if self.stage.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
        }
        let result = match (batch_failure, self.result) {
            (None, Some(result)) => result,
            (Some(why), _) => Err(StoreError::Unavailable(anyhow::anyhow!("the write batch failed: {why}"))),
            (None, None) => Err(StoreError::Other(anyhow::anyhow!("a write was answered without running"))),
        };
        let _ = self.reply.send(result);
    }
}

/// The handle writes are queued on; the thread stops when it is dropped.
pub(super) struct Writer {
    shared: Arc<Shared>,
    /// Writes queued that have neither started nor been taken back by their callers.
    queued: Arc<AtomicUsize>,
    bounds: Bounds,
}

/// What the handle, the writer thread and the callers committing on their own threads share.
/// The database file the store opened, by device and inode. SQLite keeps writing to an open file that was deleted
/// or replaced (another file moved over the path): the commits succeed, and everything written is gone at the next
/// start, which opens a new, empty file. Every batch checks, inside its transaction and before `COMMIT`, that the
/// path still names the file it writes, so such writes fail (503) instead of being acknowledged.
#[derive(Debug, Clone)]
pub(super) struct FileIdentity {
    path: std::path::PathBuf,
    id: Option<(u64, u64)>,
}

impl FileIdentity {
    /// The identity of the file at `path` now (on platforms without inodes, a check that always passes).
    pub(super) fn of(path: &std::path::Path) -> Self {
        FileIdentity { path: path.to_path_buf(), id: Self::id(path).ok() }
    }

    #[cfg(unix)]
    fn id(path: &std::path::Path) -> std::io::Result<(u64, u64)> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).map(|m| (m.dev(), m.ino()))
    }

    #[cfg(not(unix))]
    fn id(_path: &std::path::Path) -> std::io::Result<(u64, u64)> {
        Ok((0, 0))
    }

    /// Whether the path still names the file opened; why not, if not.
    pub(super) fn check(&self) -> Result<(), String> {
        let Some(opened) = self.id else { return Ok(()) };
        match Self::id(&self.path) {
            Ok(now) if now == opened => Ok(()),
            Ok(_) => Err(format!("{} was replaced by another file while open", self.path.display())),
            Err(e) => Err(format!("{} was removed while open ({e})", self.path.display())),
        }
    }
}

struct Shared {
    /// The write connection, held by whoever commits a batch: a caller ([`Writer::write`]) or the thread.
    conn: Mutex<Connection>,
    /// The file the connection writes; every batch checks it before committing.
    file: FileIdentity,
    jobs: Mutex<Queue>,
    /// Wakes the writer thread when it waits (`Queue::thread_waiting`).
    ready: Condvar,
}

#[derive(Default)]
struct Queue {
    /// Writes waiting for a batch, oldest first.
    waiting: VecDeque<Box<dyn Job>>,
    /// The writer thread is (about to be) parked on [`Shared::ready`].
    thread_waiting: bool,
    /// The handle is gone: the thread commits what is left and ends.
    stopping: bool,
}

/// A lock nothing can leave half-updated: a poisoned one is as good as a clean one (every write runs under
/// `catch_unwind`, and the queue's updates cannot panic).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Writer {
    /// Starts the writer thread; `conn` is written through this writer only from now on.
    pub(super) fn start(conn: Connection, file: FileIdentity, bounds: Bounds) -> Result<Writer, StoreError> {
        let shared = Arc::new(Shared { conn: Mutex::new(conn), file, jobs: Mutex::default(), ready: Condvar::new() });
        let for_thread = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("sqlite-writer".to_owned())
            .spawn(move || run(&for_thread))
            .map_err(|e| StoreError::Other(anyhow::Error::new(e).context("starting the SQLite writer thread")))?;
        Ok(Writer { shared, queued: Arc::default(), bounds })
    }

    /// Whether a write now would be refused for the queue's depth.
    pub(super) fn is_full(&self) -> bool {
        self.queued.load(Ordering::Acquire) >= self.bounds.max_queued
    }

    /// Runs `write` in the next batch on the writer thread; returns its result once the batch has committed, or
    /// a [`Refusal::overloaded`] (and the write never runs) if the queue is full or it did not start in time.
    pub(super) async fn write<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(write, false).await
    }

    /// [`Self::write`] for a short write on a request's path (a usage batch): if no batch is committing, the
    /// calling thread commits it at once with whatever else short is waiting ([`Shared::commit_here`]).
    pub(super) async fn write_here<T, F>(&self, write: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.queue(write, true).await
    }

    async fn queue<T, F>(&self, write: F, here: bool) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    {
        if self.is_full() {
            return Err(overloaded());
        }
        let (reply, mut answer) = oneshot::channel();
        let stage = Arc::new(AtomicU8::new(QUEUED));
        let waiting = self.queued.clone();
        let job = Box::new(Pending { stage: stage.clone(), here, waiting, write: Some(write), result: None, reply });
        self.queued.fetch_add(1, Ordering::AcqRel);
        lock(&self.shared.jobs).waiting.push_back(job);
        if here {
            self.shared.commit_here();
        }
        self.shared.hand_over();
        match tokio::time::timeout(self.bounds.max_wait, &mut answer).await {
            Ok(answered) => answered.map_err(|_| stopped())?,
            Err(_) if stage.compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire).is_ok() => {
                self.queued.fetch_sub(1, Ordering::AcqRel);
                Err(overloaded())
            }
            // Started before we gave up: it is running in the store now, so its answer is the outcome.
            Err(_) => answer.await.map_err(|_| stopped())?,
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        lock(&self.shared.jobs).stopping = true;
        self.shared.ready.notify_one();
    }
}

fn overloaded() -> StoreError {
    StoreError::Unavailable(anyhow::Error::new(Refusal::overloaded("store")))
}

fn stopped() -> StoreError {
    StoreError::Unavailable(anyhow::anyhow!("the SQLite writer thread has stopped"))
}

impl Shared {
    /// Commits the short writes at the front of the queue on the calling thread, unless a batch is committing
    /// already (then whoever commits it looks at the queue again once done).
    ///
    /// Handing each batch to the writer thread and its answers back cost two thread wake-ups per batch, much
    /// of a metered call's latency when the CPU is not saturated (BENCHMARKS.md, "Usage batches committed on
    /// the caller's thread"). A caller's thread does not wait for another process's file lock (busy timeout 0
    /// for its attempt): a batch that finds the file locked goes back to the queue for the writer thread, whose
    /// wait is bounded by the busy timeout and each caller's `max_wait`.
    fn commit_here(&self) {
        let conn = match self.conn.try_lock() {
            Ok(conn) => conn,
            Err(TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(TryLockError::WouldBlock) => return,
        };
        let _ = conn.busy_timeout(Duration::ZERO);
        self.commit_waiting(&conn, Caller::Request);
        let _ = conn.busy_timeout(super::BUSY_TIMEOUT);
    }

    /// Wakes the writer thread if it sleeps while writes wait. Every caller calls it after queueing (and
    /// after committing on its own thread, once the connection is released), so a write queued while someone
    /// else held the connection is never left without a committer: it was queued before the holder released
    /// the connection, so the holder's call here sees it.
    fn hand_over(&self) {
        let queue = lock(&self.jobs);
        if !queue.waiting.is_empty() && queue.thread_waiting {
            drop(queue);
            self.ready.notify_one();
        }
    }

    /// Takes up to [`MAX_BATCH`] waiting writes (on a request's thread only the short ones at the front) and
    /// commits them as one batch (see [`commit_batch`]), then answers each caller.
    fn commit_waiting(&self, conn: &Connection, caller: Caller) {
        let mut batch: Vec<Box<dyn Job>> = {
            let mut queue = lock(&self.jobs);
            let n =
                queue.waiting.iter().take(MAX_BATCH).take_while(|job| caller == Caller::Thread || job.here()).count();
            queue.waiting.drain(..n).collect()
        };
        if batch.is_empty() {
            return;
        }
        let failure = match commit_batch(conn, &self.file, &mut batch) {
            Ok(()) => None,
            // Not started (a job starts after BEGIN): back to the front of the queue, in order, for the thread.
            Err(Failure::Locked(_)) if caller == Caller::Request => {
                let mut queue = lock(&self.jobs);
                for job in batch.into_iter().rev() {
                    queue.waiting.push_front(job);
                }
                return;
            }
            Err(Failure::Locked(why) | Failure::Failed(why)) => {
                tracing::error!(writes = batch.len(), error = %why, "an SQLite write batch failed; its writes answer 503");
                Some(why)
            }
        };
        for job in batch.drain(..) {
            job.finish(failure.as_deref());
        }
    }
}

/// Who commits a batch: a request's thread (which never waits for the file lock) or the writer thread.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Request,
    Thread,
}

/// The writer thread: commits whatever callers left in the queue (the file was locked, or they queued while
/// another batch was committing), until the handle is gone and the queue is empty.
fn run(shared: &Shared) {
    loop {
        {
            let mut queue = lock(&shared.jobs);
            while queue.waiting.is_empty() {
                if queue.stopping {
                    return;
                }
                queue.thread_waiting = true;
                queue = shared.ready.wait(queue).unwrap_or_else(PoisonError::into_inner);
                queue.thread_waiting = false;
            }
        }
        let conn = lock(&shared.conn);
        shared.commit_waiting(&conn, Caller::Thread);
    }
}

/// Why a batch did not commit.
enum Failure {
    /// `BEGIN IMMEDIATE` found the file locked by another connection (past the busy timeout, if any).
    Locked(String),
    Failed(String),
}

/// Runs one parameterless statement, prepared once per connection.
fn statement(conn: &Connection, sql: &str) -> Result<(), String> {
    conn.prepare_cached(sql).and_then(|mut s| s.execute([])).map(drop).map_err(|e| format!("{sql}: {e}"))
}

/// Runs every job of the batch in its own savepoint inside one IMMEDIATE transaction and commits.
fn commit_batch(conn: &Connection, file: &FileIdentity, batch: &mut [Box<dyn Job>]) -> Result<(), Failure> {
    // IMMEDIATE takes the file lock now (waiting up to the connection's busy timeout for another process).
    if let Err(e) = conn.execute_batch("BEGIN IMMEDIATE") {
        let why = format!("BEGIN IMMEDIATE: {e}");
        let locked = matches!(
            e.sqlite_error_code(),
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
        );
        return Err(if locked { Failure::Locked(why) } else { Failure::Failed(why) });
    }
    let outcome = (|| {
        for job in batch.iter_mut() {
            if !job.start() {
                continue; // its caller stopped waiting before the batch got the lock: it never runs
            }
            statement(conn, "SAVEPOINT job")?;
            if job.run(conn) {
                statement(conn, "RELEASE job")?;
            } else {
                statement(conn, "ROLLBACK TO job")?;
                statement(conn, "RELEASE job")?;
            }
        }
        file.check()?;
        conn.execute_batch("COMMIT").map_err(|e| format!("COMMIT: {e}"))
    })();
    if outcome.is_err() && !conn.is_autocommit() {
        let _ = conn.execute_batch("ROLLBACK");
    }
    outcome.map_err(Failure::Failed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The rows of the tests' table `t`, in order.
    fn stored(conn: &Connection) -> Vec<i64> {
        conn.prepare("SELECT n FROM t ORDER BY n")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    }

    fn writer_on(dir: &tempfile::TempDir) -> (Writer, Connection) {
        writer_bounded(dir, Bounds::DEFAULT)
    }

    fn writer_bounded(dir: &tempfile::TempDir, bounds: Bounds) -> (Writer, Connection) {
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY)").unwrap();
        (Writer::start(conn, FileIdentity::of(&path), bounds).unwrap(), Connection::open(&path).unwrap())
    }

    /// The name of the thread a write ran on.
    fn thread_name() -> String {
        std::thread::current().name().unwrap_or_default().to_owned()
    }

    /// A write of `n` into `t` that answers the name of the thread it ran on.
    fn insert_naming_thread(n: i64) -> impl FnOnce(&Connection) -> Result<String, StoreError> + Send + 'static {
        move |conn| {
            conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(|e| StoreError::Other(e.into()))?;
            Ok(thread_name())
        }
    }

    #[tokio::test]
    async fn a_short_write_commits_on_its_callers_thread_and_any_other_on_the_writer_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = writer_on(&dir);
        let caller = thread_name();
        let here = writer.write_here(insert_naming_thread(1)).await.unwrap();
        assert_eq!(here, caller, "no batch was committing: the caller committed its own");
        let queued = writer.write(insert_naming_thread(2)).await.unwrap();
        assert_eq!(queued, "sqlite-writer");
        assert_eq!(stored(&reader), vec![1, 2]);
    }

    #[tokio::test]
    async fn a_callers_thread_never_waits_for_another_process_lock() {
        use futures_util::FutureExt as _;
        let dir = tempfile::tempdir().unwrap();
        let (writer, reader) = writer_on(&dir);
        let holder = Connection::open(dir.path().join("w.db")).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();
        let write = writer.write_here(insert_naming_thread(1));
        let mut write = std::pin::pin!(write);
        let polled = std::time::Instant::now();
        assert!((&mut write).now_or_never().is_none(), "the file is locked: not committed yet");
        assert!(
            polled.elapsed() < Duration::from_secs(1),
            "the caller's attempt gave up at once instead of waiting out the 5 s busy timeout: {:?}",
            polled.elapsed()
        );
        holder.execute_batch("COMMIT").unwrap();
        assert_eq!(write.await.unwrap(), "sqlite-writer", "the writer thread committed it once the lock was free");
        assert_eq!(stored(&reader), vec![1]);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_or_panicking_write_rolls_back_alone_and_the_rest_of_its_batch_commits() {
        let dir = tempfile::tempdir().unwrap();
        // Not a test of the wait bound: twenty panics, each printing its backtrace when the tests run with
        // RUST_BACKTRACE, can hold the writer past the default 500 ms on a busy machine.
        let patient = Bounds { max_wait: Duration::from_secs(60), ..Bounds::DEFAULT };
        let (writer, reader) = writer_bounded(&dir, patient);
        let writer = std::sync::Arc::new(writer);
        let tasks: Vec<_> = (0..200i64)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move {
                    let write = move |conn: &Connection| {
                        conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map_err(|e| StoreError::Other(e.into()))?;
                        match n % 10 {
                            3 => Err(StoreError::Conflict(format!("write {n} refused"))),
                            7 => panic!("write {n} panics"),
                            _ => Ok(n),
                        }
                    };
                    // Half on the writer thread, half committed by whichever caller finds the connection free.
                    if n % 2 == 0 { writer.write(write).await } else { writer.write_here(write).await }
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
        let stored = stored(&reader);
        let expected: Vec<i64> = (0..200).filter(|n| n % 10 != 3 && n % 10 != 7).collect();
        assert_eq!(stored, expected, "exactly the successful writes are committed");
    }

    #[tokio::test]
    async fn a_write_to_a_file_removed_or_replaced_while_open_fails_instead_of_being_acknowledged() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _reader) = writer_on(&dir);
        let insert = |n: i64| {
            move |conn: &Connection| {
                conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map(drop).map_err(|e| StoreError::Other(e.into()))
            }
        };
        writer.write(insert(1)).await.unwrap();
        let path = dir.path().join("w.db");
        std::fs::rename(&path, dir.path().join("moved.db")).unwrap();
        let removed = writer.write(insert(2)).await.unwrap_err();
        assert!(matches!(removed, StoreError::Unavailable(_)));
        let why = format!("{:#}", anyhow::Error::new(removed));
        assert!(why.contains("was removed while open"), "{why}");
        std::fs::write(&path, b"another file now").unwrap();
        let replaced = format!("{:#}", anyhow::Error::new(writer.write(insert(3)).await.unwrap_err()));
        assert!(replaced.contains("was replaced by another file while open"), "{replaced}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stalled_writer_refuses_past_its_bounds_at_once_and_refused_writes_never_run() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.db");
        let conn = Connection::open(&path).unwrap();
        conn.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE t (n INTEGER PRIMARY KEY)").unwrap();
        let bounds = Bounds { max_queued: 4, max_wait: Duration::from_millis(200) };
        let writer = Arc::new(Writer::start(conn, FileIdentity::of(&path), bounds).unwrap());
        let insert = |n: i64| {
            move |conn: &Connection| {
                conn.execute("INSERT INTO t (n) VALUES (?1)", [n]).map(drop).map_err(|e| StoreError::Other(e.into()))
            }
        };
        let is_overloaded = |result: &Result<(), StoreError>| match result {
            Err(StoreError::Unavailable(cause)) => Refusal::find(cause) == Some(Refusal::overloaded("store")),
            _ => false,
        };
        // Another connection holds the write lock: the writer's next BEGIN IMMEDIATE waits (busy timeout 5 s).
        let holder = Connection::open(&path).unwrap();
        holder.execute_batch("BEGIN IMMEDIATE").unwrap();

        let waited = std::time::Instant::now();
        let first = writer.write(insert(1)).await;
        assert!(is_overloaded(&first), "a write that cannot start in time is refused: {first:?}");
        assert!(
            waited.elapsed() < Duration::from_secs(2),
            "after max_wait, not the busy timeout: {:?}",
            waited.elapsed()
        );

        let queued: Vec<_> = (2..6)
            .map(|n| {
                let writer = writer.clone();
                tokio::spawn(async move { writer.write(insert(n)).await })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !writer.is_full() {
            assert!(std::time::Instant::now() < deadline, "four queued writes fill the queue");
            tokio::task::yield_now().await;
        }
        let shed = std::time::Instant::now();
        let refused = writer.write(insert(6)).await;
        assert!(is_overloaded(&refused), "a full queue refuses at once: {refused:?}");
        assert!(shed.elapsed() < Duration::from_millis(50), "{:?}", shed.elapsed());
        for task in queued {
            let result = task.await.unwrap();
            assert!(is_overloaded(&result), "{result:?}");
        }

        assert!(!writer.is_full(), "writes taken back no longer count against the queue");
        holder.execute_batch("COMMIT").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while let Err(err) = writer.write(insert(7)).await {
            assert!(std::time::Instant::now() < deadline, "the writer works again once the lock is free: {err:?}");
        }
        let stored = stored(&holder);
        assert_eq!(stored, vec![7], "no refused write ran, even after the writer got the lock");
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
