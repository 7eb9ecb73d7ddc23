//! Durable usage records with group commit: concurrent requests' events are written in one transaction,
//! and each response waits until the transaction holding its event has committed. A request's audit event,
//! if it has one, rides in the same batch and the same transaction (`MeteringStore::record_usage`).
//!
//! Requests queue their events; the first to find no flush running starts one, a task on its own runtime
//! (its actix worker's thread) that writes every event waiting (up to a batch limit), answers each waiter and repeats until the queue
//! is empty, then ends. Under load a batch forms by itself while the previous one commits; when idle, an
//! event is written at once. There is no recorder thread or long-lived task: the flush runs on the runtime
//! of the request that started it, so on the embedded store an uncontended batch commits without any
//! thread hand-off (`store::sqlite::writer`). A killed process (SIGKILL) can lose only events whose
//! requests have not been answered yet, so no client ever holds a 2xx without its usage record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use crate::store::{AuditEventInput, Store, StoreError, UsageEvent};

/// Most events written in one transaction.
const MAX_BATCH: usize = 512;

type Waiter = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// One request's records: its usage event and, if audited, its audit event.
type Entry = (UsageEvent, Option<AuditEventInput>, Waiter);

/// The handle requests use to record their usage event.
#[derive(Clone)]
pub struct UsageRecorder {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    /// Events waiting for a batch, oldest first.
    waiting: Mutex<Vec<Entry>>,
    /// Whether a flush is running (at most one at a time).
    flushing: AtomicBool,
    counts: Counts,
}

/// What the recorder has written so far: how well group commit amortises the store's transactions.
#[derive(Debug, Default)]
struct Counts {
    batches: AtomicU64,
    events: AtomicU64,
}

/// [`UsageRecorder::stats`]: store transactions (batches) and the usage events they committed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RecorderStats {
    pub batches: u64,
    pub events: u64,
}

impl std::fmt::Debug for UsageRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("UsageRecorder")
    }
}

/// A queue's updates cannot panic, so a poisoned lock is as good as a clean one.
fn lock(waiting: &Mutex<Vec<Entry>>) -> MutexGuard<'_, Vec<Entry>> {
    waiting.lock().unwrap_or_else(PoisonError::into_inner)
}

impl UsageRecorder {
    pub fn new(store: Arc<dyn Store>) -> Self {
        let inner =
            Inner { store, waiting: Mutex::default(), flushing: AtomicBool::new(false), counts: Counts::default() };
        UsageRecorder { inner: Arc::new(inner) }
    }

    /// The batches (one store transaction each) and events written since the start.
    pub fn stats(&self) -> RecorderStats {
        RecorderStats {
            batches: self.inner.counts.batches.load(Ordering::Relaxed),
            events: self.inner.counts.events.load(Ordering::Relaxed),
        }
    }

    /// Records the usage event `build` makes (and its audit event, appended to its chain in the same transaction)
    /// durably; returns once its batch has committed. A failed batch is logged once for all its requests, so
    /// callers do not log the error again.
    ///
    /// A flush runs on the runtime of the request that started it, so it can be dropped with that runtime (an
    /// actix worker that stops while another still serves requests) before it answers; then its requests make
    /// their records again and queue them on their own runtime. The store skips an event or audit id it has, so
    /// whether or not the dropped flush had committed it, each record is stored once.
    pub async fn record(&self, build: impl Fn() -> (UsageEvent, Option<AuditEventInput>)) -> Result<(), StoreError> {
        let answer = match self.queue(build()).await {
            Err(_dropped) => self.queue(build()).await,
            answer => answer,
        };
        match answer {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(StoreError::Unavailable(match refusal(&err) {
                Some(refused) => anyhow::Error::new(refused).context("recording usage was refused"),
                None => anyhow::anyhow!("recording usage failed: {err}"),
            })),
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!("the usage recorder's flush was stopped twice"))),
        }
    }

    /// Queues one record, starts a flush if none is running, and waits for its answer (an error if the flush that
    /// took it was dropped before answering).
    async fn queue(
        &self,
        (event, audit): (UsageEvent, Option<AuditEventInput>),
    ) -> Result<Result<(), Arc<StoreError>>, oneshot::error::RecvError> {
        let (done, wait) = oneshot::channel();
        lock(&self.inner.waiting).push((event, audit, done));
        self.start_flush();
        wait.await
    }

    /// Queues a usage event nobody waits for: the record of a request whose client left before its answer
    /// (`super::abandoned`). The next flush writes it; this call starts one if none is running and the thread has a
    /// runtime to run it on (else the next record queued starts it).
    pub fn record_detached(&self, event: UsageEvent) {
        let (done, _) = oneshot::channel();
        lock(&self.inner.waiting).push((event, None, done));
        if tokio::runtime::Handle::try_current().is_ok() {
            self.start_flush();
        }
    }

    /// Starts a flush unless one is running.
    fn start_flush(&self) {
        if !self.inner.flushing.swap(true, Ordering::AcqRel) {
            // A task, not a request's future: a client that goes away must not stop other requests' batch.
            let flush = Flush { inner: Arc::clone(&self.inner), holding: true };
            tokio::spawn(async move { flush.run().await });
        }
    }
}

/// The running flush: holds [`Inner::flushing`] and clears it when it ends, also if its task is dropped
/// (its runtime shutting down), so the next event starts a new one.
struct Flush {
    inner: Arc<Inner>,
    /// Whether this flush still holds the flag.
    holding: bool,
}

impl Flush {
    async fn run(mut self) {
        let inner = Arc::clone(&self.inner);
        loop {
            // Lets the requests already woken on this worker queue their records before the batch is taken:
            // 4.1 instead of 2.4 to 2.8 records a commit, a tenth less CPU a request (BENCHMARKS.md, "One yield
            // before a usage batch is taken"). A second yield batched a little more and let the tail grow.
            tokio::task::yield_now().await;
            let batch: Vec<Entry> = {
                let mut waiting = lock(&inner.waiting);
                let n = waiting.len().min(MAX_BATCH);
                waiting.drain(..n).collect()
            };
            if batch.is_empty() {
                inner.flushing.store(false, Ordering::Release);
                // An event queued after the take above found the flag still set and started no flush: take
                // the flag back for it, unless a flush it started has it.
                if lock(&inner.waiting).is_empty() || inner.flushing.swap(true, Ordering::AcqRel) {
                    self.holding = false;
                    return;
                }
                continue;
            }
            inner.write(batch).await;
        }
    }
}

impl Drop for Flush {
    /// A flush dropped before it ended (its runtime shut down) frees the flag and lets go of the records still
    /// queued, whose requests then queue them again ([`UsageRecorder::record`]): left queued, they could wait for a
    /// flush that no request starts. The flag goes first, so a record queued meanwhile starts a flush of its own.
    fn drop(&mut self) {
        if self.holding {
            self.inner.flushing.store(false, Ordering::Release);
            drop(std::mem::take(&mut *lock(&self.inner.waiting)));
        }
    }
}

impl Inner {
    /// Writes one batch and answers its waiters.
    async fn write(&self, batch: Vec<Entry>) {
        let mut records = Vec::with_capacity(batch.len());
        let mut audit = Vec::new();
        let mut waiters = Vec::with_capacity(batch.len());
        for (usage, audited, waiter) in batch {
            records.push(usage);
            audit.extend(audited);
            waiters.push(waiter);
        }
        let result = self.store.record_usage(&records, &audit).await.map(drop).map_err(Arc::new);
        self.counts.batches.fetch_add(1, Ordering::Relaxed);
        self.counts.events.fetch_add(records.len() as u64, Ordering::Relaxed);
        match &result {
            // Refused without reaching the store (breaker open, writer overloaded): the breaker logged
            // its opening once and the refusals are counted (`meterline.dependency.refusals`).
            Err(err) if refusal(err).is_some() => {
                tracing::debug!(error = ?err, events = records.len(), "usage batch refused; its requests answer 503")
            }
            Err(err) => {
                tracing::error!(error = ?err, events = records.len(), "usage batch failed; its requests answer 503")
            }
            Ok(()) => {}
        }
        for waiter in waiters {
            let _ = waiter.send(result.clone());
        }
    }
}

/// The refusal a failed batch met, if the store refused it without trying (`resilience`).
fn refusal(err: &StoreError) -> Option<crate::resilience::Refusal> {
    match err {
        StoreError::Unavailable(cause) => crate::resilience::Refusal::find(cause),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::SqliteStore;

    /// Counts the ERROR events logged while it is the default subscriber.
    struct ErrorLines(Arc<std::sync::atomic::AtomicUsize>);

    impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for ErrorLines {
        fn on_event(&self, event: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
            if *event.metadata().level() == tracing::Level::ERROR {
                self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    }

    /// A `getMe` usage event with id `n`.
    fn event(n: u128, tenant_id: Option<uuid::Uuid>) -> UsageEvent {
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        UsageEvent {
            event_id: uuid::Uuid::from_u128(n),
            request_id: format!("r{n}"),
            tenant_id,
            client_id: None,
            principal_id: None,
            operation_id: "getMe".into(),
            method: "GET".into(),
            route_template: "/api/v1/me".into(),
            status: 200,
            units: 1,
            billable: false,
            overage_units: 0,
            latency_micros: 1,
            request_bytes: 0,
            response_bytes: 0,
            occurred_at: at,
            recorded_at: at,
            lease_id: None,
            refusal: None,
        }
    }

    #[test]
    fn the_records_of_a_flush_dropped_with_its_runtime_are_made_again_and_stored_once() {
        use crate::store::prelude::*;
        use futures_util::FutureExt as _;
        let runtime = || tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let main = runtime();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("r.db");
        let store = main.block_on(async {
            let store = SqliteStore::open(&path).await.unwrap();
            store.migrate().await.unwrap();
            Arc::new(store)
        });
        let recorder = UsageRecorder::new(store);
        // A worker's request queues its record and starts the flush on the worker's runtime, which stops (the
        // request gone with it) before the flush has run.
        let worker = runtime();
        worker.block_on(async { assert!(recorder.record(|| (event(1, None), None)).now_or_never().is_none()) });
        // Another worker's request queues behind that flush.
        let mut other = Box::pin(recorder.record(|| (event(2, None), None)));
        main.block_on(async { assert!((&mut other).now_or_never().is_none(), "waits for the running flush") });
        drop(worker);

        main.block_on(other).expect("made again and recorded on its own runtime");
        let stored: Vec<String> = rusqlite::Connection::open(&path)
            .unwrap()
            .prepare("SELECT event_id FROM usage_events")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(stored, vec![uuid::Uuid::from_u128(2).to_string()]);
    }

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_requests_and_is_logged_once() {
        use crate::store::prelude::*;
        use tracing_subscriber::layer::SubscriberExt as _;
        let lines = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(ErrorLines(lines.clone())));
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("r.db")).await.unwrap());
        store.migrate().await.unwrap();
        let recorder = UsageRecorder::new(store);
        // A tenant that does not exist: the batch's foreign key fails, and with it every event in it.
        let missing = Some(uuid::Uuid::from_u128(404));
        // On this single-threaded runtime all three are queued before the flush task runs: one batch.
        let results =
            futures_util::future::join_all((1..=3).map(|n| recorder.record(move || (event(n, missing), None)))).await;
        assert!(results.iter().all(Result::is_err), "{results:?}");
        assert_eq!(lines.load(std::sync::atomic::Ordering::SeqCst), 1, "one line for the batch, none per request");
    }
}
