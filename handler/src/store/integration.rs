//! The integration aggregate's storage contract: the Service Bus inbox, the quarantine and the outbox; with
//! their row and message types and the events the store emits (`event_types`).

use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
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

    /// Stores a message that can never be applied, once: a message whose `identity` is stored already only adds a
    /// delivery to that row (and raises its delivery count). Returns the id of the row that holds it.
    async fn quarantine_message(&self, message: &QuarantinedMessage) -> Result<Uuid, StoreError>;

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

/// An event Meterline emits, as written to `outbox_messages` in the transaction of the change that causes it.
/// The publisher wraps `payload` (the CloudEvents `data`) in the envelope; see `docs/events.md`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxMessage {
    /// The CloudEvents `id`, stable across publish retries.
    pub id: Uuid,
    /// The CloudEvents `type`, e.g. `meterline.tenant.suspended.v1`.
    pub event_type: String,
    /// The CloudEvents `subject`, e.g. `tenants/<id>`.
    pub subject: Option<String>,
    /// The CloudEvents `data`, JSON text.
    pub payload: String,
    pub created_at: DateTime<Utc>,
    /// Not published before this time.
    pub available_at: DateTime<Utc>,
}

/// CloudEvents types Meterline emits.
pub mod event_types {
    pub const TENANT_SUSPENDED: &str = "meterline.tenant.suspended.v1";
    pub const TENANT_REACTIVATED: &str = "meterline.tenant.reactivated.v1";
    pub const QUOTA_THRESHOLD_CROSSED: &str = "meterline.quota.threshold-crossed.v1";
    pub const STATEMENT_READY: &str = "meterline.billing.statement-ready.v1";
    pub const ROLLUP_LAGGING: &str = "meterline.usage.rollup-lagging.v1";
}

impl OutboxMessage {
    /// The event for a tenant's status change from `from` to `tenant.status`, if that change is announced:
    /// active → suspended is `tenant.suspended`, suspended → active is `tenant.reactivated`. Its id is derived
    /// from the tenant and its new version, so each change has exactly one event.
    pub fn tenant_status_change(from: TenantStatus, tenant: &Tenant, now: DateTime<Utc>) -> Option<Self> {
        let event_type = match (from, tenant.status) {
            (TenantStatus::Active, TenantStatus::Suspended) => event_types::TENANT_SUSPENDED,
            (TenantStatus::Suspended, TenantStatus::Active) => event_types::TENANT_REACTIVATED,
            _ => return None,
        };
        let tenant_id = tenant.id.hyphenated().to_string();
        let payload = serde_json::json!({
            "tenantId": tenant_id,
            "status": tenant.status.as_str(),
            "previousStatus": from.as_str(),
            "version": tenant.version,
            "changedAt": tenant.updated_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        });
        Some(OutboxMessage {
            id: deterministic_id(event_type, &[&tenant_id, &tenant.version.to_string()]),
            event_type: event_type.to_owned(),
            subject: Some(format!("tenants/{tenant_id}")),
            payload: payload.to_string(),
            created_at: now,
            available_at: now,
        })
    }

    /// The event for a quota counter crossing `threshold` percent (80 or 100) in a period; one id per tenant,
    /// period and threshold, so the threshold is announced once however many debits race past it.
    pub fn quota_threshold_crossed(usage: &QuotaUsage, threshold: i64, now: DateTime<Utc>) -> Self {
        let tenant_id = usage.tenant_id.hyphenated().to_string();
        let period = usage.period_start.to_string();
        let payload = serde_json::json!({
            "tenantId": tenant_id,
            "periodStart": period,
            "threshold": threshold,
            "quotaUnits": usage.quota_units,
            "unitsUsed": usage.units_used,
        });
        OutboxMessage {
            id: deterministic_id(event_types::QUOTA_THRESHOLD_CROSSED, &[&tenant_id, &period, &threshold.to_string()]),
            event_type: event_types::QUOTA_THRESHOLD_CROSSED.to_owned(),
            subject: Some(format!("tenants/{tenant_id}/quota/{period}")),
            payload: payload.to_string(),
            created_at: now,
            available_at: now,
        }
    }
}

/// A stored outbox row, as the publisher and operators see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    pub seq: i64,
    pub message: OutboxMessage,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// A message that can never be applied, kept whole with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuarantinedMessage {
    pub id: Uuid,
    /// When it was first quarantined.
    pub received_at: DateTime<Utc>,
    pub message_id: Option<String>,
    /// The highest Service Bus delivery count seen.
    pub delivery_count: Option<i32>,
    pub content_type: Option<String>,
    pub reason: String,
    pub raw_body: String,
    pub replayed_at: Option<DateTime<Utc>>,
    /// What makes a redelivery the same message ([`QuarantinedMessage::identity_of`]); `None` for rows quarantined
    /// before identities were kept, which are never merged.
    pub identity: Option<String>,
    /// How many deliveries of it were quarantined (1 when stored; more for redeliveries).
    pub deliveries: i64,
    /// When the last of them arrived (`None` while there was one).
    pub last_received_at: Option<DateTime<Utc>>,
}

impl QuarantinedMessage {
    /// The identity of a delivered message: SHA-256 over its Service Bus message id and its body, each
    /// length-prefixed. A redelivery has both the same; another message with the same body has another id.
    pub fn identity_of(message_id: Option<&str>, body: &str) -> String {
        use sha2::{Digest, Sha256};
        let mut hasher = Sha256::new();
        for part in [message_id.unwrap_or(""), body] {
            hasher.update((part.len() as u64).to_be_bytes());
            hasher.update(part.as_bytes());
        }
        hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// The inbox row of an integration message: its CloudEvents `(source, id)` and type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub source: String,
    pub event_id: String,
    pub event_type: String,
    pub processed_at: DateTime<Utc>,
}

/// A document as an integration message delivers it (a whole replacement of the stored fields and tags).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentUpsert {
    pub id: Uuid,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub doc_type: String,
    pub jurisdiction: Option<String>,
    pub status: DocumentStatus,
    pub effective_date: Option<NaiveDate>,
    /// Lower-cased, unique, sorted.
    pub tags: Vec<String>,
}

impl DocumentUpsert {
    /// The document row this message makes when the document is new (version 1, created and updated by `actor`
    /// at `now`); an existing one keeps its creation and gets the same fields.
    pub(crate) fn to_document(&self, tenant_id: Uuid, actor: &str, now: DateTime<Utc>) -> Document {
        Document {
            id: self.id,
            tenant_id,
            title: self.title.clone(),
            summary: self.summary.clone(),
            body: self.body.clone(),
            doc_type: self.doc_type.clone(),
            jurisdiction: self.jurisdiction.clone(),
            status: self.status,
            effective_date: self.effective_date,
            tags: self.tags.clone(),
            created_by: actor.to_owned(),
            updated_by: actor.to_owned(),
            created_at: now,
            updated_at: now,
            version: 1,
        }
    }
}

/// What an integration message does, applied by [`crate::store::IntegrationStore::apply_integration_event`] in the same
/// transaction as its inbox row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntegrationEffect {
    /// Creates the tenant (active) or updates its name, plan and directory.
    UpsertTenant { tenant_id: Uuid, name: String, plan_code: String, entra_tenant_id: Option<Uuid> },
    /// Sets the tenant's status (emits `tenant.suspended` / `tenant.reactivated` when it changes).
    SetTenantStatus { tenant_id: Uuid, status: TenantStatus },
    /// Moves the tenant to another plan.
    ChangePlan { tenant_id: Uuid, plan_code: String },
    /// Creates or replaces documents of one tenant, all or nothing.
    UpsertDocuments { tenant_id: Uuid, actor: String, documents: Vec<DocumentUpsert> },
    /// Meters usage measured elsewhere: one usage event and a quota debit of its own period, never refused
    /// (the usage has happened; beyond the quota it counts as overage).
    RecordUsage { event: UsageEvent, period_start: NaiveDate, period_end: NaiveDate },
}

/// What applying an integration message did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApplyOutcome {
    /// Applied now, with its inbox row.
    Applied,
    /// Its `(source, id)` is in the inbox already: nothing was done.
    Duplicate,
    /// It can never apply as it is (unknown tenant or plan, a document of another tenant): nothing was done.
    Rejected(String),
}

/// The rejection of an event about a tenant the store does not know.
pub fn unknown_tenant(tenant_id: Uuid) -> StoreError {
    StoreError::ForeignKey(format!("unknown tenant {tenant_id}"))
}

/// The rejection of an event naming an unknown plan, with a reason an operator can act on (the foreign key
/// would say less).
pub fn unknown_plan(code: &str) -> StoreError {
    StoreError::ForeignKey(format!("unknown plan {code:?}"))
}

/// The rejection of an upsert of a document that another tenant owns.
pub fn foreign_document(id: Uuid) -> StoreError {
    StoreError::Conflict(format!("document {id} belongs to another tenant"))
}
