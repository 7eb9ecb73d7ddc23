//! Durable usage records with group commit: concurrent requests' events are written in one transaction,
//! and each response waits until the transaction holding its event has committed. A request's audit event,
//! if it has one, rides in the same batch and the same transaction (`MeteringStore::record_usage`).
//!
//! One task owns the writing. It takes every event waiting in the queue (up to a batch limit), writes
//! them together, then answers each waiter. Under load a batch forms by itself while the previous one
//! commits; when idle, an event is written at once. A killed process (SIGKILL) can lose only events
//! whose requests have not been answered yet, so no client ever holds a 2xx without its usage record.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{mpsc, oneshot};

use crate::store::{AuditEventInput, Store, StoreError, UsageEvent};

/// Most events written in one transaction.
const MAX_BATCH: usize = 512;

type Waiter = oneshot::Sender<Result<(), Arc<StoreError>>>;

/// One request's records: its usage event and, if audited, its audit event.
type Entry = (UsageEvent, Option<AuditEventInput>, Waiter);

/// The handle requests use to record their usage event.
#[derive(Clone)]
pub struct UsageRecorder {
    queue: mpsc::Sender<Entry>,
    counts: Arc<Counts>,
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

impl UsageRecorder {
    /// Starts the writer task on the current runtime.
    pub fn start(store: Arc<dyn Store>) -> Self {
        let (queue, mut events) = mpsc::channel::<Entry>(MAX_BATCH * 8);
        let counts = Arc::new(Counts::default());
        let counted = Arc::clone(&counts);
        tokio::spawn(async move {
            let mut batch = Vec::with_capacity(MAX_BATCH);
            while events.recv_many(&mut batch, MAX_BATCH).await > 0 {
                let mut records = Vec::with_capacity(batch.len());
                let mut audit = Vec::new();
                let mut waiters = Vec::with_capacity(batch.len());
                for (usage, audited, waiter) in batch.drain(..) {
                    records.push(usage);
                    audit.extend(audited);
                    waiters.push(waiter);
                }
                let result = store.record_usage(&records, &audit).await.map(drop).map_err(Arc::new);
                counted.batches.fetch_add(1, Ordering::Relaxed);
                counted.events.fetch_add(records.len() as u64, Ordering::Relaxed);
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
        });
        UsageRecorder { queue, counts }
    }

    /// The batches (one store transaction each) and events written since the start.
    pub fn stats(&self) -> RecorderStats {
        RecorderStats {
            batches: self.counts.batches.load(Ordering::Relaxed),
            events: self.counts.events.load(Ordering::Relaxed),
        }
    }

    /// Records `event` (and `audit`, appended to its chain in the same transaction) durably; returns once
    /// its batch has committed. A failed batch is logged here, once for all its requests, so callers do not
    /// log the error again (a stopped recorder means its task panicked, which logged the panic).
    pub async fn record(&self, event: UsageEvent, audit: Option<AuditEventInput>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send((event, audit, done))
            .await
            .map_err(|_| StoreError::Unavailable(anyhow::anyhow!("the usage recorder has stopped")))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(StoreError::Unavailable(match refusal(&err) {
                Some(refused) => anyhow::Error::new(refused).context("recording usage was refused"),
                None => anyhow::anyhow!("recording usage failed: {err}"),
            })),
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!("the usage recorder has stopped"))),
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

    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_requests_and_is_logged_once() {
        use crate::store::prelude::*;
        use tracing_subscriber::layer::SubscriberExt as _;
        let lines = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let _default = tracing::subscriber::set_default(tracing_subscriber::registry().with(ErrorLines(lines.clone())));
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(SqliteStore::open(&dir.path().join("r.db")).await.unwrap());
        store.migrate().await.unwrap();
        let recorder = UsageRecorder::start(store);
        let at = chrono::DateTime::from_timestamp(1_800_000_000, 0).unwrap();
        // A tenant that does not exist: the batch's foreign key fails, and with it every event in it.
        let event = |n: u128| UsageEvent {
            event_id: uuid::Uuid::from_u128(n),
            request_id: format!("r{n}"),
            tenant_id: Some(uuid::Uuid::from_u128(404)),
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
        };
        // On this single-threaded runtime all three are queued before the writer task runs: one batch.
        let results = futures_util::future::join_all((1..=3).map(|n| recorder.record(event(n), None))).await;
        assert!(results.iter().all(Result::is_err), "{results:?}");
        assert_eq!(lines.load(std::sync::atomic::Ordering::SeqCst), 1, "one line for the batch, none per request");
    }
}
