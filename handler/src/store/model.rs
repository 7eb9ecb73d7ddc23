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

/// An application registered to a tenant: its Entra app id (`azp`/`appid`) and the roles it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiClient {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub app_id: String,
    pub display_name: String,
    /// Role names, sorted.
    pub roles: Vec<String>,
    pub active: bool,
    pub created_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    pub version: i64,
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

/// A debit against a tenant's monthly quota. The period row is created on first use with this quota snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaDebit {
    pub tenant_id: Uuid,
    /// First day of the UTC calendar month.
    pub period_start: NaiveDate,
    /// First day of the next month.
    pub period_end: NaiveDate,
    pub quota_units: i64,
    pub overage_policy: OveragePolicy,
    pub units: i64,
    pub now: DateTime<Utc>,
}

/// What a quota debit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaOutcome {
    /// Debited. `overage_units` of this debit's units fell beyond the quota (only under `allow`).
    Accepted { units_used: i64, quota_units: i64, overage_units: i64 },
    /// Not debited: the quota is exhausted and the policy is `block`.
    Rejected { units_used: i64, quota_units: i64 },
}

/// A period's quota counter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaUsage {
    pub tenant_id: Uuid,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub quota_units: i64,
    pub overage_policy: OveragePolicy,
    pub units_used: i64,
    pub overage_units: i64,
}

/// A rate-limit decision request for the GCRA (generic cell rate algorithm).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitTake {
    pub tenant_id: Uuid,
    pub client_id: String,
    pub now_micros: i64,
    /// Microseconds between requests at the sustained rate: 60 s / requests per minute.
    pub emission_interval_micros: i64,
    /// The burst: this many requests may arrive at once after an idle period.
    pub burst: i64,
}

/// A GCRA decision. `tat_micros` is the theoretical arrival time after this decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitDecision {
    pub allowed: bool,
    pub tat_micros: i64,
    /// When rejected: how long until one request would be allowed.
    pub retry_after_micros: i64,
}

/// One API request's usage record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageEvent {
    pub event_id: Uuid,
    pub request_id: String,
    pub tenant_id: Option<Uuid>,
    pub client_id: Option<String>,
    pub principal_id: Option<String>,
    pub operation_id: String,
    pub method: String,
    pub route_template: String,
    pub status: i32,
    pub units: i64,
    pub billable: bool,
    pub overage_units: i64,
    pub latency_micros: i64,
    pub request_bytes: i64,
    pub response_bytes: i64,
    pub occurred_at: DateTime<Utc>,
    pub recorded_at: DateTime<Utc>,
}

/// GCRA arithmetic shared by every store, so both make the same decision from the same stored state.
pub fn gcra(stored_tat_micros: Option<i64>, take: &RateLimitTake) -> RateLimitDecision {
    let tolerance = take.emission_interval_micros * (take.burst.max(1) - 1);
    let tat = stored_tat_micros.unwrap_or(take.now_micros).max(take.now_micros);
    if tat - take.now_micros <= tolerance {
        RateLimitDecision { allowed: true, tat_micros: tat + take.emission_interval_micros, retry_after_micros: 0 }
    } else {
        RateLimitDecision { allowed: false, tat_micros: tat, retry_after_micros: tat - tolerance - take.now_micros }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn take(now: i64) -> RateLimitTake {
        RateLimitTake {
            tenant_id: Uuid::nil(),
            client_id: "c".into(),
            now_micros: now,
            emission_interval_micros: 1_000_000,
            burst: 3,
        }
    }

    #[test]
    fn gcra_allows_the_burst_then_the_rate() {
        let mut tat = None;
        let mut allowed = 0;
        for _ in 0..5 {
            let d = gcra(tat, &take(10_000_000));
            tat = Some(d.tat_micros);
            allowed += d.allowed as i32;
        }
        assert_eq!(allowed, 3, "the burst passes at once");
        let rejected = gcra(tat, &take(10_000_000));
        assert!(!rejected.allowed);
        assert_eq!(rejected.retry_after_micros, 1_000_000, "one emission interval until the next slot");
        assert!(gcra(tat, &take(11_000_000)).allowed, "one more after one interval");
        assert!(gcra(tat, &take(100_000_000)).allowed, "idle time refills");
    }
}
