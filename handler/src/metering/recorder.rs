//! Durable usage records with group commit: concurrent requests' events are written in one transaction,
//! and each response waits until the transaction holding its event has committed. A request's audit event,
//! if it has one, rides in the same batch and the same transaction (`MeteringStore::record_usage`).
//!
//! One task owns the writing. It takes every event waiting in the queue (up to a batch limit), writes
//! them together, then answers each waiter. Under load a batch forms by itself while the previous one
//! commits; when idle, an event is written at once. A killed process (SIGKILL) can lose only events
//! whose requests have not been answered yet, so no client ever holds a 2xx without its usage record.

use std::sync::Arc;

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
                if let Err(err) = &result {
                    tracing::error!(error = ?err, events = records.len(), "usage batch failed; its requests answer 503");
                }
                for waiter in waiters {
                    let _ = waiter.send(result.clone());
                }
            }
        });
        UsageRecorder { queue }
    }

    /// Records `event` (and `audit`, appended to its chain in the same transaction) durably; returns once
    /// its batch has committed.
    pub async fn record(&self, event: UsageEvent, audit: Option<AuditEventInput>) -> Result<(), StoreError> {
        let (done, wait) = oneshot::channel();
        self.queue
            .send((event, audit, done))
            .await
            .map_err(|_| StoreError::Unavailable(anyhow::anyhow!("the usage recorder has stopped")))?;
        match wait.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(StoreError::Unavailable(anyhow::anyhow!("recording usage failed: {err}"))),
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!("the usage recorder has stopped"))),
        }
    }
}
