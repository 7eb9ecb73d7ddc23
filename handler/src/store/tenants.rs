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
        after: Option<&CreatedCursor>,
        limit: u32,
    ) -> Result<Page<Tenant, CreatedCursor>, StoreError>;

    /// How many tenants there are (the `count` of a tenant listing).
    async fn count_tenants(&self) -> Result<u64, StoreError>;

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

    /// A tenant's API clients with `status` (any when `None`), ordered by (created_at, id), strictly after
    /// `after`; at most `limit`, like [`TenantStore::list_tenants`].
    async fn list_api_clients(
        &self,
        tenant_id: Uuid,
        status: Option<ClientStatus>,
        after: Option<&CreatedCursor>,
        limit: u32,
    ) -> Result<Page<ApiClient, CreatedCursor>, StoreError>;

    /// How many clients of `tenant_id` have `status` (any when `None`): the `count` of a client listing.
    async fn count_api_clients(&self, tenant_id: Uuid, status: Option<ClientStatus>) -> Result<u64, StoreError>;

    /// One client of `tenant_id` with its roles; a client of another tenant is `None`.
    async fn get_api_client(&self, tenant_id: Uuid, id: Uuid) -> Result<Option<ApiClient>, StoreError>;

    /// Revokes a pending or active client of `tenant_id` (a client of another tenant is `NotFound`) if it is still
    /// at `expected_version` (else `VersionMismatch`): sets `status = 'revoked'`, `revoked_at` and bumps the
    /// version. Idempotent: revoking a revoked (or rejected) client changes nothing and returns `Updated` with the
    /// row as it is (its first `revoked_at`, its version), whatever version was named
    /// ([`revocation_precondition`]).
    async fn revoke_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        now: DateTime<Utc>,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError>;

    /// Sets a client's limits if it is still at `expected_version` (else `VersionMismatch`; another tenant's is
    /// `NotFound`), bumping its version, in one transaction with the ledger.
    async fn set_client_limits(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        limits: &ClientLimits,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError>;

    /// Registers an API client with its roles; `Conflict` if the same tenant holds a pending or active
    /// registration of the same (directory, application). Other tenants' registrations never conflict.
    async fn create_api_client(&self, client: &ApiClient, ledger: Option<&Ledger>) -> Result<(), StoreError>;

    /// Every registration, of any tenant and status, of the application `app_id` for the directory `directory_id`
    /// (usually none or one; [`crate::auth::guard`] decides which applies), oldest first, with roles.
    async fn api_clients_for_app(&self, directory_id: Uuid, app_id: &str) -> Result<Vec<ApiClient>, StoreError>;

    /// Approves or rejects a pending registration of `tenant_id` (`NotFound` for another tenant's or an unknown
    /// id) still at `expected_version` (else `VersionMismatch`), bumping its version, in one transaction with the
    /// ledger. `Conflict` (nothing changes) when it is not pending, or, for an approval, when its directory is
    /// another tenant's own directory or another tenant holds an active registration of the same (directory,
    /// application).
    async fn decide_api_client(
        &self,
        tenant_id: Uuid,
        id: Uuid,
        expected_version: i64,
        decision: &ClientDecision,
        ledger: Option<&Ledger>,
    ) -> Result<Update<ApiClient>, StoreError>;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TenantStatus {
    Active,
    Suspended,
    Closed,
}

impl TenantStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TenantStatus::Active => "active",
            TenantStatus::Suspended => "suspended",
            TenantStatus::Closed => "closed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "active" => Some(TenantStatus::Active),
            "suspended" => Some(TenantStatus::Suspended),
            "closed" => Some(TenantStatus::Closed),
            _ => None,
        }
    }
}

/// A tenant row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: Uuid,
    /// The Entra ID directory (`tid` claim) this tenant maps to, if any.
    pub entra_tenant_id: Option<Uuid>,
    pub name: String,
    pub status: TenantStatus,
    pub plan_code: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
    /// When its billing periods start; fixed when the tenant is created.
    pub billing: TenantBilling,
}

/// A tenant's billing calendar as stored: its periods start on `anchor_day` at local midnight in `time_zone`;
/// its hour rollups start `window_offset_minutes` past the UTC hour (`metering::period`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantBilling {
    pub anchor_day: i32,
    pub time_zone: String,
    pub window_offset_minutes: i32,
}

impl Default for TenantBilling {
    fn default() -> Self {
        TenantBilling { anchor_day: 1, time_zone: "UTC".into(), window_offset_minutes: 0 }
    }
}

/// Where an API-client registration stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientStatus {
    /// For another directory than the tenant's own: waits for a platform administrator; applies to nothing yet.
    Pending,
    /// Applies to the tokens of its (directory, application).
    Active,
    /// A platform administrator refused it; applies to nothing.
    Rejected,
    /// Withdrawn by the tenant: the application's tokens from its directory are refused (`ClientRevoked`).
    Revoked,
}

impl ClientStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ClientStatus::Pending => "pending",
            ClientStatus::Active => "active",
            ClientStatus::Rejected => "rejected",
            ClientStatus::Revoked => "revoked",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "pending" => Some(ClientStatus::Pending),
            "active" => Some(ClientStatus::Active),
            "rejected" => Some(ClientStatus::Rejected),
            "revoked" => Some(ClientStatus::Revoked),
            _ => None,
        }
    }
}

/// An application id as registrations store it and tokens are compared with it: trimmed and lower case. Entra's
/// application ids are GUIDs (tokens carry them lower case); SQL Server compares text ignoring case and SQLite does
/// not, so without this a registration spelled in upper case would cap its application on one store only.
pub fn app_key(app_id: &str) -> String {
    app_id.trim().to_lowercase()
}

/// An application registered to a tenant for one directory: tokens whose `tid` is `directory_id` and whose
/// `azp`/`appid` is `app_id` map to `tenant_id`, with at most `roles` (docs/security.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    pub id: Uuid,
    pub tenant_id: Uuid,
    /// The directory (`tid`) of the tokens this registration applies to. `None` only for a registration made
    /// before registrations were bound to directories whose tenant had no directory: migration 3 revoked it.
    pub directory_id: Option<Uuid>,
    pub app_id: String,
    pub display_name: String,
    /// Role names, sorted.
    pub roles: Vec<String>,
    pub status: ClientStatus,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    /// The platform administrator who approved or rejected a registration for another directory.
    pub decided_by: Option<String>,
    pub decided_at: Option<DateTime<Utc>>,
    pub version: i64,
    /// The tenant administrator's caps on this client's share of the tenant's limits.
    pub limits: ClientLimits,
}

/// A tenant administrator's caps on one client's share of the tenant's limits (`None`: no cap): units of the
/// tenant's monthly quota, and requests per minute below the plan's (docs/usage.md, "Client limits").
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ClientLimits {
    pub quota_units: Option<i64>,
    pub requests_per_minute: Option<i32>,
}

/// The page of a tenant listing fetched with one row more than `limit` (see [`Page::cut`]).
pub(crate) fn tenant_page(items: Vec<Tenant>, limit: u32) -> Page<Tenant, CreatedCursor> {
    Page::cut(items, limit, |t| CreatedCursor { created_at: t.created_at, id: t.id })
}

/// The page of a client listing fetched with one row more than `limit` (see [`Page::cut`]).
pub(crate) fn client_page(items: Vec<ApiClient>, limit: u32) -> Page<ApiClient, CreatedCursor> {
    Page::cut(items, limit, |c| CreatedCursor { created_at: c.created_at, id: c.id })
}

/// Roles as a listing reads them, one comma-joined column per client (role names hold no comma), sorted.
pub(crate) fn split_roles(joined: Option<&str>) -> Vec<String> {
    let mut roles: Vec<String> = joined.unwrap_or("").split(',').filter(|r| !r.is_empty()).map(str::to_owned).collect();
    roles.sort();
    roles
}

/// Why a conditional client write wrote nothing: the client is not this tenant's, or no longer at the version the
/// caller read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refused {
    NotFound,
    Stale { current_version: i64 },
}

impl<T> From<Refused> for Update<T> {
    fn from(refused: Refused) -> Self {
        match refused {
            Refused::NotFound => Update::NotFound,
            Refused::Stale { current_version } => Update::VersionMismatch { current_version },
        }
    }
}

/// A conditional client write's precondition, checked on the row read in its transaction.
pub(crate) fn client_precondition(current: Option<ApiClient>, expected_version: i64) -> Result<ApiClient, Refused> {
    match current {
        None => Err(Refused::NotFound),
        Some(c) if c.version != expected_version => Err(Refused::Stale { current_version: c.version }),
        Some(c) => Ok(c),
    }
}

/// A revocation's precondition. A client already revoked or rejected passes whatever version was named: the
/// revocation is already reflected in it and writes nothing, so the answer is the row as it is (RFC 9110 §13.1.1
/// allows the 2xx), and a retry after a lost commit answer gets the same.
pub(crate) fn revocation_precondition(current: Option<ApiClient>, expected_version: i64) -> Result<ApiClient, Refused> {
    match current {
        Some(c) if matches!(c.status, ClientStatus::Revoked | ClientStatus::Rejected) => Ok(c),
        current => client_precondition(current, expected_version),
    }
}

/// A registration can be approved or rejected only while it is pending (both stores).
/// The outcome of a conditional tenant write (`updated`: it changed the row at the expected version) from the row
/// read before and after it in one transaction, with the outbox event announcing a status change, which the
/// backend writes in that transaction.
pub(crate) fn tenant_written(
    updated: bool,
    before: Option<Tenant>,
    after: Option<Tenant>,
    now: DateTime<Utc>,
) -> Update<(Tenant, Option<OutboxMessage>)> {
    match (updated, after) {
        (_, None) => Update::NotFound,
        (true, Some(tenant)) => {
            let announcement = before.and_then(|b| OutboxMessage::tenant_status_change(b.status, &tenant, now));
            Update::Updated((tenant, announcement))
        }
        (false, Some(tenant)) => Update::VersionMismatch { current_version: tenant.version },
    }
}

pub fn check_decidable(client: &ApiClient) -> Result<(), StoreError> {
    match client.status {
        ClientStatus::Pending => Ok(()),
        other => Err(StoreError::Conflict(format!("the registration is {}, not pending", other.as_str()))),
    }
}

/// An approval may not take another tenant's directory, nor an application another tenant serves from that
/// directory already (both stores; `owned_by_other` and `active_elsewhere` are read in the approving transaction).
pub fn check_approvable(owned_by_other: bool, active_elsewhere: bool) -> Result<(), StoreError> {
    if owned_by_other {
        return Err(StoreError::Conflict(
            "the directory is another tenant's own directory: its tokens belong to that tenant".into(),
        ));
    }
    if active_elsewhere {
        return Err(StoreError::Conflict(
            "another tenant holds an active registration of this application for this directory".into(),
        ));
    }
    Ok(())
}

/// A platform administrator's decision on a pending registration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientDecision {
    pub approve: bool,
    /// Who decided (the administrator's object id, or app id).
    pub by: String,
    pub at: DateTime<Utc>,
}

/// Changes to a tenant; `None` leaves a field as it is.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TenantChanges {
    pub name: Option<String>,
    pub status: Option<TenantStatus>,
    pub plan_code: Option<String>,
}

impl TenantChanges {
    /// The row [`crate::store::TenantStore::update_tenant`] writes when `tenant` is the row it changes.
    pub fn applied_to(&self, tenant: &Tenant, now: DateTime<Utc>) -> Tenant {
        let mut next = tenant.clone();
        if let Some(name) = &self.name {
            next.name.clone_from(name);
        }
        if let Some(status) = self.status {
            next.status = status;
        }
        if let Some(plan_code) = &self.plan_code {
            next.plan_code.clone_from(plan_code);
        }
        next.updated_at = now;
        next.version += 1;
        next
    }
}

/// A position in a listing ordered by (created_at, id) (tenants, API clients): the last row seen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreatedCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}
