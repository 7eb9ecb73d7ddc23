//! Database rows and the inputs/outcomes of store operations. These are not wire types: the API maps them.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// A plan row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub code: String,
    pub name: String,
    pub requests_per_minute: i32,
    pub burst: i32,
    pub monthly_quota_units: i64,
    pub overage_policy: OveragePolicy,
    /// ISO 4217 code, e.g. `EUR`.
    pub currency: String,
    pub base_price_micros: i64,
    pub overage_unit_price_micros: i64,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OveragePolicy {
    /// Reject calls beyond the monthly quota.
    Block,
    /// Let them through and count them as overage.
    Allow,
}

impl OveragePolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            OveragePolicy::Block => "block",
            OveragePolicy::Allow => "allow",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "block" => Some(OveragePolicy::Block),
            "allow" => Some(OveragePolicy::Allow),
            _ => None,
        }
    }
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
}

/// A registration can be approved or rejected only while it is pending (both stores).
pub fn check_decidable(client: &ApiClient) -> Result<(), super::StoreError> {
    match client.status {
        ClientStatus::Pending => Ok(()),
        other => Err(super::StoreError::Conflict(format!("the registration is {}, not pending", other.as_str()))),
    }
}

/// An approval may not take another tenant's directory, nor an application another tenant serves from that
/// directory already (both stores; `owned_by_other` and `active_elsewhere` are read in the approving transaction).
pub fn check_approvable(owned_by_other: bool, active_elsewhere: bool) -> Result<(), super::StoreError> {
    if owned_by_other {
        return Err(super::StoreError::Conflict(
            "the directory is another tenant's own directory: its tokens belong to that tenant".into(),
        ));
    }
    if active_elsewhere {
        return Err(super::StoreError::Conflict(
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentStatus {
    Draft,
    Published,
    Archived,
}

impl DocumentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DocumentStatus::Draft => "draft",
            DocumentStatus::Published => "published",
            DocumentStatus::Archived => "archived",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "draft" => Some(DocumentStatus::Draft),
            "published" => Some(DocumentStatus::Published),
            "archived" => Some(DocumentStatus::Archived),
            _ => None,
        }
    }
}

/// A document row with its tags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Document {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub title: String,
    pub summary: Option<String>,
    pub body: Option<String>,
    pub doc_type: String,
    pub jurisdiction: Option<String>,
    pub status: DocumentStatus,
    pub effective_date: Option<NaiveDate>,
    /// Lower-cased, unique, sorted.
    pub tags: Vec<String>,
    pub created_by: String,
    pub updated_by: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub version: i64,
}

/// Filters of a document listing; every present filter must hold (tags: any of them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DocumentFilter {
    pub status: Option<DocumentStatus>,
    pub doc_type: Option<String>,
    pub jurisdiction: Option<String>,
    /// Any of these tags (lower-cased).
    pub tags_any: Vec<String>,
    /// `updated_at >= updated_after` (inclusive).
    pub updated_after: Option<DateTime<Utc>>,
    /// `updated_at < updated_before` (exclusive).
    pub updated_before: Option<DateTime<Utc>>,
    /// `effective_date >= effective_from`.
    pub effective_from: Option<NaiveDate>,
    /// `effective_date <= effective_to`.
    pub effective_to: Option<NaiveDate>,
    /// Case-insensitive substring of title or summary; `%`, `_` and `[` match themselves.
    pub q: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DocumentSortKey {
    UpdatedAt,
    Title,
    /// Documents without an effective date sort as if dated [`NO_EFFECTIVE_DATE`].
    EffectiveDate,
}

/// Where documents without an effective date sort: before every real date.
pub const NO_EFFECTIVE_DATE: NaiveDate = NaiveDate::MIN;

/// Whether a page in `sort` order after `after` may continue into the documents without an effective date:
/// newest date first, after a dated document. Those come last, and "after the cursor or undated" is no index
/// range, so the stores read the dated rest and the undated ones as two range queries of one snapshot.
pub fn continues_into_undated(sort: DocumentSort, after: Option<&DocumentCursor>) -> bool {
    sort.key == DocumentSortKey::EffectiveDate
        && sort.descending
        && matches!(after, Some(DocumentCursor { value: SortValue::Date(d), .. }) if *d != NO_EFFECTIVE_DATE)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DocumentSort {
    pub key: DocumentSortKey,
    pub descending: bool,
}

/// The sort value of the last row of a page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SortValue {
    Time(DateTime<Utc>),
    Text(String),
    Date(NaiveDate),
}

/// Keyset position: the last row's sort value and id (the tie-breaker, in the same direction).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentCursor {
    pub value: SortValue,
    pub id: Uuid,
}

/// A page of documents; `total` only when counting was asked for (all matches, not just this page).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DocumentPage {
    pub items: Vec<Document>,
    pub next: Option<DocumentCursor>,
    pub total: Option<u64>,
}

/// A stored first response to a POST carrying an idempotency key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyRecord {
    pub tenant_id: Uuid,
    pub key: String,
    pub operation_id: String,
    /// Hex SHA-256 of the request (method, path, body).
    pub request_hash: String,
    pub status_code: u16,
    /// Response headers to replay, as a JSON object of strings.
    pub response_headers: String,
    pub response_body: Vec<u8>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
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

/// A position in a keyset-paginated listing: the sort key of the last row seen and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TenantCursor {
    pub created_at: DateTime<Utc>,
    pub id: Uuid,
}

/// One page of a listing; `next` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
}

/// A lease for single-runner jobs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseRequest {
    pub name: String,
    /// Who asks: e.g. the worker id plus a random suffix. Renewing is acquiring again with the same holder.
    pub holder: String,
    pub now: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
}

/// A deterministic id: the first 16 bytes of SHA-256 over `namespace` and each part (length-prefixed), stamped as
/// an RFC 9562 version-8 UUID. The same inputs give the same id in every process, so a retried write that derives
/// its ids this way (an outbox event, a usage event from a CloudEvent) can never insert a second copy.
pub fn deterministic_id(namespace: &str, parts: &[&str]) -> Uuid {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(namespace.as_bytes());
    for part in parts {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    uuid::Builder::from_custom_bytes(bytes).into_uuid()
}
