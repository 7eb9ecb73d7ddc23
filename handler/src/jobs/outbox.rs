//! The outbox publisher: sends pending `outbox_messages` rows to Service Bus as CloudEvents, at least once.
//!
//! One run (the `OutboxPublisher` timer, or `handler run-job outbox-publish`) takes the `outbox-publish` lease,
//! reads at most `METERLINE_OUTBOX_BATCH_SIZE` due rows in `(available_at, seq)` order and sends each one. A row
//! is marked sent only after Service Bus answered `201 Created`; a process killed between that answer and the
//! mark sends the row again on the next run (a duplicate with the same CloudEvents id and Service Bus
//! `MessageId`, which consumers and duplicate detection drop; never a loss). A failed send (after the pipeline's
//! own retries of 408/429/5xx and timeouts) records the error and moves `available_at` forward with exponential
//! backoff, so one broken event does not block the others or hammer Service Bus.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::azure::servicebus::OutgoingMessage;
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{LeaseRequest, OutboxRow};

/// The lease every publisher takes, so two runs never send the same rows at once.
pub const LEASE_NAME: &str = "outbox-publish";

/// How long the lease is taken for, renewed before each send: one send's worst case (four tries, each bounded
/// by `METERLINE_OUTBOX_SEND_TIMEOUT_SECS`) plus a margin. A publisher that dies blocks the next one for at most
/// this long.
pub fn lease_duration(send_timeout: std::time::Duration) -> chrono::Duration {
    chrono::Duration::seconds(4 * send_timeout.as_secs() as i64 + 5)
}

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
    let holder = format!("{}:{}", worker_name(state), state.ids.new_id().simple());
    if !take_lease(state, &holder).await? {
        return Ok("skipped: another publisher holds the lease".to_owned());
    }
    let result = publish_batch(state, sender, &holder, now).await;
    if let Err(err) = state.store.release_lease(LEASE_NAME, &holder).await {
        tracing::warn!(error = %err, "releasing the outbox lease failed; it expires on its own");
    }
    result
}

/// Takes or renews the lease for one more send.
async fn take_lease(state: &AppState, holder: &str) -> Result<bool, AppError> {
    let now = state.clock.now();
    let lease = LeaseRequest {
        name: LEASE_NAME.to_owned(),
        holder: holder.to_owned(),
        now,
        expires_at: now + lease_duration(state.config.integration.outbox_send_timeout),
    };
    Ok(state.store.acquire_lease(&lease).await?)
}

async fn publish_batch(
    state: &AppState,
    sender: &crate::azure::servicebus::ServiceBusSender,
    holder: &str,
    now: DateTime<Utc>,
) -> Result<String, AppError> {
    let config = &state.config.integration;
    let batch = u32::try_from(config.outbox_batch_size).unwrap_or(u32::MAX);
    let rows = state.store.pending_outbox(now, batch).await?;
    let (mut sent, mut failed) = (0, 0);
    for row in &rows {
        if !take_lease(state, holder).await? {
            tracing::warn!("the outbox lease was taken over; stopping this run");
            break;
        }
        let message = OutgoingMessage {
            message_id: row.message.id.hyphenated().to_string(),
            label: Some(row.message.event_type.clone()),
            content_type: "application/cloudevents+json; charset=utf-8".to_owned(),
            body: cloud_event(row, &config.outbox_source).to_string(),
        };
        match sender.send(&message, state.clock.now().timestamp()).await {
            Ok(()) => {
                state.store.mark_outbox_sent(row.message.id, state.clock.now()).await?;
                sent += 1;
            }
            Err(err) => {
                let next = state.clock.now() + backoff(row.attempts + 1);
                tracing::warn!(
                    event_id = %row.message.id,
                    event_type = %row.message.event_type,
                    attempts = row.attempts + 1,
                    next_attempt_at = %next,
                    error = %err,
                    "outbox event not published; it will be retried"
                );
                state.store.mark_outbox_failed(row.message.id, &err.to_string(), next).await?;
                failed += 1;
            }
        }
    }
    let full = rows.len() as u32 == batch;
    // The backlog metric (an alert watches it): what is still due after this run, counted up to 1000.
    let backlog =
        if full { state.store.pending_outbox(state.clock.now(), 1000).await?.len() } else { rows.len() - sent };
    crate::telemetry::metrics::outbox_backlog(backlog as u64);
    let more = if full { " (batch full: more may be due)" } else { "" };
    Ok(format!("published {sent} of {} due events, {failed} failed{more}", rows.len()))
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
