//! The audit aggregate's storage contract: listing events and reading chains (events are appended with the
//! usage records, see [`MeteringStore::record_usage`]).

use async_trait::async_trait;
use uuid::Uuid;

use super::*;

/// Reading the audit trail (appending happens with the usage records, see [`MeteringStore::record_usage`]).
#[async_trait]
pub trait AuditStore: Send + Sync + 'static {
    /// One keyset page of audit events of a tenant (`None`: the platform events, without a tenant) matching
    /// `filter`, newest first (`occurred_at DESC, id DESC`), strictly after `after`; at most `limit`.
    async fn list_audit_events(
        &self,
        tenant_id: Option<Uuid>,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Page<AuditEvent, AuditCursor>, StoreError>;

    /// The events of `chain` with `chain_seq > after_seq`, in `chain_seq` order; at most `limit`.
    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
}
