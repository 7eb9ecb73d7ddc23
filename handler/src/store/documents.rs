//! The documents aggregate's storage contract: documents and the idempotency records of the requests that
//! created them, every method scoped by tenant.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::*;

/// Documents and the idempotency records of the requests that created them; every method is scoped by tenant, and another tenant's document does not exist.
#[async_trait]
pub trait DocumentStore: Send + Sync + 'static {
    /// Inserts a document with its tags and, in the same transaction, the idempotency record of the
    /// request that created it. `Conflict` when the idempotency key is taken (the caller then replays); a
    /// record that has expired by the new record's `created_at` no longer takes the key and is replaced.
    async fn create_document(
        &self,
        document: &Document,
        idempotency: Option<&IdempotencyRecord>,
        ledger: Option<&Ledger>,
    ) -> Result<(), StoreError>;

    /// A live (not deleted) document of the tenant.
    async fn get_document(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<Document>, StoreError>;

    /// Replaces every field and the tags of a live document if it is still at `expected_version`; the
    /// stored version becomes `expected_version + 1` whatever `document.version` says.
    async fn update_document(
        &self,
        document: &Document,
        expected_version: i64,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Document>, StoreError>;

    /// Soft-deletes a live document if it is still at `expected_version`.
    async fn delete_document(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        by: &str,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<()>, StoreError>;

    /// One keyset page of live documents matching `filter`, in `sort` order with id as the tie-breaker.
    /// `tags_any` may hold at most 20 tags (more is an error: the API must refuse them first).
    async fn list_documents(
        &self,
        tenant_id: Uuid,
        filter: &DocumentFilter,
        sort: DocumentSort,
        after: Option<&DocumentCursor>,
        limit: u32,
        count: bool,
    ) -> Result<DocumentPage, StoreError>;

    /// A stored idempotency record that has not expired at `now`.
    async fn get_idempotency(
        &self,
        tenant_id: Uuid,
        key: &str,
        now: DateTime<Utc>,
    ) -> Result<Option<IdempotencyRecord>, StoreError>;
}
