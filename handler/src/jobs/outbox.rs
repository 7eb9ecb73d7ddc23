//! The outbox publisher: sends pending `outbox_messages` rows to Service Bus as CloudEvents, at least once.
//!
//! One run (the `OutboxPublisher` timer, or `handler run-job outbox-publish`) takes the `outbox-publish` lease,
//! reads at most `METERLINE_OUTBOX_BATCH_SIZE` due rows in `(available_at, seq)` order and sends each one, and
//! reads the next batch while the last was full, for up to 20 s. A row
//! is marked sent only after Service Bus answered `201 Created`; a process killed between that answer and the
//! mark sends the row again on the next run (a duplicate with the same CloudEvents id and Service Bus
//! `MessageId`, which consumers and duplicate detection drop; never a loss). A failed send (after the pipeline's
//! own retries of 408/429/5xx and timeouts) records the error and moves `available_at` forward with exponential
//! backoff, so one broken event does not block the others or hammer Service Bus.
//!
//! Every send passes the Service Bus circuit breaker (`AppState::servicebus_breaker`). Once it opens (three
//! failed sends in a row, each already four tries), the run stops at once and leaves the remaining rows due as they are, without an
//! attempt or backoff charged to them: when Service Bus is back, the breaker's probe finds it, and every row
//! goes out on the next run instead of after a backoff each row earned only by the outage.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::azure::servicebus::OutgoingMessage;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{LeaseRequest, OutboxRow};

/// The lease every publisher takes, so two runs never send the same rows at once.
pub const LEASE_NAME: &str = "outbox-publish";

/// How long the lease is taken for: one send's worst case (four tries, each bounded by
/// `METERLINE_OUTBOX_SEND_TIMEOUT_SECS`) plus a margin, plus [`LEASE_RENEWAL`]. Renewed every [`LEASE_RENEWAL`],
/// so every send starts with at least a worst case of lease left. A publisher that dies blocks the next one for
/// at most this long.
pub fn lease_duration(send_timeout: std::time::Duration) -> chrono::Duration {
    chrono::Duration::seconds(4 * send_timeout.as_secs() as i64 + 5) + LEASE_RENEWAL
}

/// How often a run renews its lease (a store write; renewing before every send made two writes per event).
const LEASE_RENEWAL: chrono::Duration = chrono::Duration::seconds(5);

/// How long one run keeps reading full batches: less than the timer's 30 s period, so a backlog drains at the
/// publisher's own speed rather than one batch per tick.
const RUN_BUDGET: std::time::Duration = std::time::Duration::from_secs(20);

/// Delay before the next attempt after `attempts` failed ones: 5 s, 10 s, 20 s, … capped at one hour.
pub fn backoff(attempts: i32) -> chrono::Duration {
    let exponent = attempts.clamp(1, 20) - 1;
    chrono::Duration::seconds((5_i64 << exponent).min(3600))
}

/// The structured-mode CloudEvent of an outbox row (`docs/events.md`).
pub fn cloud_event(row: &OutboxRow, source: &str) -> Value {
    let m = &row.message;
    let data: Value = serde_json::from_str(&m.payload).unwrap_or_else(|_| Value::String(m.payload.clone()));
    let mut event = json!({
        "specversion": "1.0",
        "id": m.id.hyphenated().to_string(),
        "source": source,
        "type": m.event_type,
        "time": m.created_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        "datacontenttype": "application/json",
        "data": data,
    });
    if let Some(subject) = &m.subject {
        event["subject"] = Value::String(subject.clone());
    }
    event
}

/// One bounded run of the publisher; the summary is the job's log line.
pub async fn publish(state: &AppState) -> Result<String, AppError> {
    let now = state.clock.now();
    let Some(sender) = state.outbox_sender.as_ref() else {
        let pending = state.store.pending_outbox(now, 1000).await?.len();
        crate::telemetry::metrics::outbox_backlog(pending as u64);
        return Ok(format!(
            "not configured (set METERLINE_SERVICEBUS_NAMESPACE or METERLINE_SERVICEBUS_CONNECTION_STRING); {pending}{} events wait in the outbox",
            if pending == 1000 { "+" } else { "" }
        ));
    };
    let mut lease =
        Lease { holder: format!("{}:{}", worker_name(state), state.ids.new_id().simple()), renewed_at: None };
    if !lease.keep(state).await? {
        return Ok("skipped: another publisher holds the lease".to_owned());
    }
    let started = std::time::Instant::now();
    let mut run = Run::default();
    let result = loop {
        match publish_batch(state, sender, &mut lease, &mut run).await {
            Ok(true) if started.elapsed() < RUN_BUDGET && !run.paused => continue,
            Ok(_) => break Ok(()),
            Err(err) => break Err(err),
        }
    };
    if let Err(err) = state.store.release_lease(LEASE_NAME, &lease.holder).await {
        tracing::warn!(error = %err, "releasing the outbox lease failed; it expires on its own");
    }
    result?;
    // The backlog metric (an alert watches it): what is still due after this run, counted up to 1000.
    let backlog = if run.full { state.store.pending_outbox(state.clock.now(), 1000).await?.len() as u64 } else { 0 };
    crate::telemetry::metrics::outbox_backlog(backlog);
    let more = match (run.paused, run.full) {
        (true, _) => " (paused: the Service Bus circuit is open; the rest wait, uncharged)",
        (false, true) => " (batch full: more may be due)",
        (false, false) => "",
    };
    Ok(format!("published {} of {} due events, {} failed{more}", run.sent, run.due, run.failed))
}

/// The publisher's hold on [`LEASE_NAME`].
struct Lease {
    holder: String,
    renewed_at: Option<DateTime<Utc>>,
}

impl Lease {
    /// Takes the lease, or renews it if [`LEASE_RENEWAL`] has passed since; false if another holds it.
    async fn keep(&mut self, state: &AppState) -> Result<bool, AppError> {
        let now = state.clock.now();
        if self.renewed_at.is_some_and(|at| now < at + LEASE_RENEWAL) {
            return Ok(true);
        }
        let expires_at = now + lease_duration(state.config.integration.outbox_send_timeout);
        let lease = LeaseRequest { name: LEASE_NAME.to_owned(), holder: self.holder.clone(), now, expires_at };
        let held = state.store.acquire_lease(&lease).await?;
        self.renewed_at = held.then_some(now);
        Ok(held)
    }
}

/// What one run did.
#[derive(Debug, Default)]
struct Run {
    due: usize,
    sent: usize,
    failed: usize,
    /// The last batch read was full: more may be due.
    full: bool,
    /// The Service Bus breaker refused a send: the run stopped there.
    paused: bool,
}

/// Sends one batch of due rows, in order; true if it was full and the lease is still held (read another).
///
/// A row is marked sent once Service Bus took it; the mark commits while the next row is sent, and every mark
/// of the batch has committed before the batch ends (the next batch must not read those rows again).
async fn publish_batch(
    state: &AppState,
    sender: &crate::azure::servicebus::ServiceBusSender,
    lease: &mut Lease,
    run: &mut Run,
) -> Result<bool, AppError> {
    let config = &state.config.integration;
    let batch = u32::try_from(config.outbox_batch_size).unwrap_or(u32::MAX);
    let rows = state.store.pending_outbox(state.clock.now(), batch).await?;
    run.due += rows.len();
    run.full = rows.len() as u32 == batch;
    let mut marks = tokio::task::JoinSet::new();
    let mut held = true;
    for row in &rows {
        if !lease.keep(state).await? {
            tracing::warn!("the outbox lease was taken over; stopping this run");
            held = false;
            break;
        }
        let message = OutgoingMessage {
            message_id: row.message.id.hyphenated().to_string(),
            label: Some(row.message.event_type.clone()),
            content_type: "application/cloudevents+json; charset=utf-8".to_owned(),
            body: cloud_event(row, &config.outbox_source).to_string(),
        };
        let Ok(attempt) = state.servicebus_breaker.admit() else {
            run.paused = true;
            break;
        };
        let started = std::time::Instant::now();
        let sent = sender.send(&message, state.clock.now().timestamp()).await;
        attempt.finish(sent.is_ok());
        match sent {
            Ok(()) => {
                crate::telemetry::metrics::outbox_published(&row.message.event_type);
                let (store, id, now) = (state.store.clone(), row.message.id, state.clock.now());
                marks.spawn(async move { store.mark_outbox_sent(id, now).await });
                run.sent += 1;
            }
            Err(err) => {
                let next = state.clock.now() + backoff(row.attempts + 1);
                tracing::warn!(
                    event_id = %row.message.id,
                    event_type = %row.message.event_type,
                    attempts = row.attempts + 1,
                    next_attempt_at = %next,
                    took_ms = started.elapsed().as_millis() as u64,
                    error = %err,
                    "outbox event not published; it will be retried"
                );
                state.store.mark_outbox_failed(row.message.id, &err.to_string(), next).await?;
                run.failed += 1;
            }
        }
    }
    while let Some(mark) = marks.join_next().await {
        mark.map_err(|e| AppError::internal(anyhow::anyhow!("marking an outbox row sent panicked: {e}")))??;
    }
    Ok(held && run.full && !run.paused)
}

fn worker_name(state: &AppState) -> String {
    match &state.config.runtime {
        crate::config::Runtime::FunctionsHost { worker_id: Some(id) } => id.clone(),
        _ => "standalone".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_and_is_capped() {
        assert_eq!(backoff(1).num_seconds(), 5);
        assert_eq!(backoff(2).num_seconds(), 10);
        assert_eq!(backoff(4).num_seconds(), 40);
        assert_eq!(backoff(30).num_seconds(), 3600);
        assert_eq!(backoff(0).num_seconds(), 5);
    }
}
