//! The tenants aggregate's storage contract: tenants and the API clients registered for them.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::*;

/// Tenants and the API clients registered for them.
#[async_trait]
pub trait TenantStore: Send + Sync + 'static {
    /// Inserts a tenant; `Conflict` if the id or Entra tenant id exists, `ForeignKey` if the plan does not.
    async fn create_tenant(&self, tenant: &Tenant, ledger: Option<&Ledger>) -> Result<(), StoreError>;

    async fn get_tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError>;

    async fn get_tenant_by_entra_id(&self, entra_tenant_id: Uuid) -> Result<Option<Tenant>, StoreError>;

    /// Tenants ordered by (created_at, id), strictly after `after`; at most `limit` (the store fetches one
    /// more to know whether a next page exists). Rows inserted while paging never duplicate or hide others.
    async fn list_tenants(
        &self,
        after: Option<&TenantCursor>,
        limit: u32,
    ) -> Result<Page<Tenant, TenantCursor>, StoreError>;

    /// Sets the status if the row is still at `expected_version`; bumps the version and `updated_at`. A change
    /// from active to suspended, or back, writes its `tenant.suspended` / `tenant.reactivated` event to the
    /// outbox in the same transaction.
    async fn set_tenant_status(
        &self,
        id: Uuid,
        status: TenantStatus,
        expected_version: i64,
        now: DateTime<Utc>,
    ) -> Result<Update<Tenant>, StoreError>;

    /// Applies `changes` if the row is still at `expected_version` (`ForeignKey` for an unknown plan); a status
    /// change writes its outbox event in the same transaction, like [`TenantStore::set_tenant_status`].
    async fn update_tenant(
        &self,
        id: Uuid,
        changes: &TenantChanges,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<Tenant>, StoreError>;

    /// A tenant's API clients, oldest first.
    async fn list_api_clients(&self, tenant_id: Uuid) -> Result<Vec<ApiClient>, StoreError>;

    /// Revokes a pending or active client of `tenant_id` (a client of another tenant is `NotFound`): sets
    /// `status = 'revoked'`, `revoked_at` and bumps the version. Idempotent: revoking a revoked (or rejected)
    /// client changes nothing and returns `Updated` with the row as it is (its first `revoked_at`, its version).
    async fn revoke_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError>;

    /// Registers an API client with its roles; `Conflict` if the same tenant holds a pending or active
    /// registration of the same (directory, application). Other tenants' registrations never conflict.
    async fn create_api_client(&self, client: &ApiClient, ledger: Option<&Ledger>) -> Result<(), StoreError>;

    /// Every registration, of any tenant and status, of the application `app_id` for the directory `directory_id`
    /// (usually none or one; [`crate::auth::guard`] decides which applies), oldest first, with roles.
    async fn api_clients_for_app(&self, directory_id: Uuid, app_id: &str) -> Result<Vec<ApiClient>, StoreError>;

    /// Approves or rejects a pending registration of `tenant_id` (`NotFound` for another tenant's or an unknown
    /// id), bumping its version, in one transaction with the ledger. `Conflict` (nothing changes) when it is not
    /// pending, or, for an approval, when its directory is another tenant's own directory or another tenant holds
    /// an active registration of the same (directory, application).
    async fn decide_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        decision: &ClientDecision,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError>;
}
