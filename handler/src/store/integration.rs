//! The integration aggregate's storage contract: the Service Bus inbox, the quarantine and the outbox.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::*;

/// Integration: the Service Bus inbox, the quarantine and the outbox.
#[async_trait]
pub trait IntegrationStore: Send + Sync + 'static {
    /// Applies an integration message: inserts its inbox row and performs `effect` in ONE transaction.
    /// `Duplicate` when `(source, event_id)` is in the inbox already (concurrent deliveries of one message
    /// apply it once); `Rejected` (nothing written) when the effect can never apply as it is.
    async fn apply_integration_event(
        &self,
        inbox: &InboxEntry,
        effect: &IntegrationEffect,
    ) -> Result<ApplyOutcome, StoreError>;

    /// Stores a message that can never be applied.
    async fn quarantine_message(&self, message: &QuarantinedMessage) -> Result<(), StoreError>;

    /// Quarantined messages, newest first; at most `limit`.
    async fn list_quarantine(&self, limit: u32) -> Result<Vec<QuarantinedMessage>, StoreError>;

    async fn get_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedMessage>, StoreError>;

    /// Records that an operator replayed a quarantined message successfully; false if there is no such message.
    async fn mark_quarantine_replayed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError>;

    /// Outbox rows not sent yet and available at `now`, in `(available_at, seq)` order; at most `limit`.
    async fn pending_outbox(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;

    /// Marks an outbox row sent (only once: a row sent already keeps its first `sent_at`).
    async fn mark_outbox_sent(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// Records a failed publish attempt: `attempts + 1`, the error, and the time of the next attempt.
    async fn mark_outbox_failed(&self, id: Uuid, error: &str, next_attempt_at: DateTime<Utc>)
    -> Result<(), StoreError>;

    /// Every outbox row, sent or not, in `seq` order after `after_seq`; at most `limit` (operators, tests).
    async fn list_outbox(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError>;
}
