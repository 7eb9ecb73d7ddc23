//! Database rows and the inputs/outcomes of store operations. These are not wire types: the API maps them.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use super::{documents::*, plans::*, tenants::*};

/// One page of a listing; `next` is `None` on the last page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page<T, C> {
    pub items: Vec<T>,
    pub next: Option<C>,
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

/// Whether a debit that took a period's usage from `before` to `after` units crossed the 80 % or the 100 %
/// threshold of `quota` units: only such a debit pays for the threshold bookkeeping (the flags and the
/// `meterline.quota.threshold-crossed.v1` outbox event, written in the debit's transaction).
pub fn crosses_threshold(before: i64, after: i64, quota: i64) -> bool {
    [80, 100].iter().any(|t| {
        before.saturating_mul(100) < quota.saturating_mul(*t) && after.saturating_mul(100) >= quota.saturating_mul(*t)
    })
}

/// What the limit stage asks of the store for one request: a rate-limit step and, when the operation costs
/// units, a quota debit, decided together in one transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Admission {
    pub rate: RateLimitTake,
    pub debit: Option<QuotaDebit>,
}

/// The store's answer to an [`Admission`]. `debit` is `None` when nothing was to be debited or the rate
/// limit refused the request (a refused request is not debited).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdmissionDecision {
    pub rate: RateLimitDecision,
    pub debit: Option<QuotaOutcome>,
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

/// A request's own records, handed to the store write that carries out the request so they commit in the
/// write's transaction: its usage event and, when audited, its audit event. Written only if the write takes
/// effect (created, or `Update::Updated`); the record stage's later insert of the same ids is then a no-op.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ledger {
    pub usage: UsageEvent,
    pub audit: Option<AuditEventInput>,
}

/// What became of an audited request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AuditOutcome {
    /// A state-changing request that succeeded.
    Succeeded,
    /// Authentication or authorization refused it (401, 403).
    Denied,
    /// A rate limit or the quota refused it (429).
    Rejected,
    /// A state-changing request that failed on the server (5xx).
    Failed,
}

impl AuditOutcome {
    pub const ALL: &'static [AuditOutcome] =
        &[AuditOutcome::Succeeded, AuditOutcome::Denied, AuditOutcome::Rejected, AuditOutcome::Failed];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditOutcome::Succeeded => "succeeded",
            AuditOutcome::Denied => "denied",
            AuditOutcome::Rejected => "rejected",
            AuditOutcome::Failed => "failed",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        AuditOutcome::ALL.iter().copied().find(|o| o.as_str() == raw)
    }
}

/// An audit event before the store places it in its chain (`chain`, `chain_seq`, `prev_hash`, `hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEventInput {
    pub id: Uuid,
    /// `None` for events without a tenant: they go to the `platform` chain.
    pub tenant_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub actor_oid: Option<String>,
    pub actor_app_id: Option<String>,
    /// The token's directory (`tid`), whatever tenant it maps to.
    pub actor_tenant_id: Option<String>,
    /// The operation id.
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub outcome: AuditOutcome,
    pub request_id: Option<String>,
    pub summary: String,
    /// Hex SHA-256 of the resource's JSON view before and after the change.
    pub before_hash: Option<String>,
    pub after_hash: Option<String>,
    pub limiter_decision: Option<String>,
}

/// A stored audit event: an input placed at `chain_seq` of `chain`, linked to its predecessor by `prev_hash`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditEvent {
    pub id: Uuid,
    pub chain: String,
    pub chain_seq: i64,
    pub tenant_id: Option<Uuid>,
    pub occurred_at: DateTime<Utc>,
    pub actor_oid: Option<String>,
    pub actor_app_id: Option<String>,
    pub actor_tenant_id: Option<String>,
    pub action: String,
    pub resource_type: String,
    pub resource_id: Option<String>,
    pub outcome: AuditOutcome,
    pub request_id: Option<String>,
    pub summary: String,
    pub before_hash: Option<String>,
    pub after_hash: Option<String>,
    pub limiter_decision: Option<String>,
    pub prev_hash: String,
    pub hash: String,
}

/// The `prev_hash` of the first event of every chain.
pub const AUDIT_GENESIS_HASH: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// The chain an event of `tenant_id` belongs to: `tenant:<uuid>`, or `platform` without a tenant.
pub fn audit_chain_key(tenant_id: Option<Uuid>) -> String {
    match tenant_id {
        Some(id) => format!("tenant:{}", id.hyphenated()),
        None => "platform".to_owned(),
    }
}

/// Keeps at most `max` UTF-16 code units (SQL Server's `NVARCHAR(n)` counts those), cutting at a character.
fn clip(text: &str, max: usize) -> String {
    let mut units = 0;
    let mut end = 0;
    for (i, c) in text.char_indices() {
        units += c.len_utf16();
        if units > max {
            break;
        }
        end = i + c.len_utf8();
    }
    text[..end].to_owned()
}

/// A hash column holds 64 lower-case hex digits or nothing.
fn hash_or_none(value: Option<String>) -> Option<String> {
    value.filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())).map(|h| h.to_ascii_lowercase())
}

impl AuditEventInput {
    /// The event as stored at `chain_seq` after `prev_hash`: every text clipped to its column's width (the
    /// narrower SQL Server one), the time truncated to microseconds, and `hash` computed by [`audit_hash`].
    /// Both stores store exactly these values, so the hash can be recomputed from the row.
    pub fn seal(&self, chain_seq: i64, prev_hash: &str) -> AuditEvent {
        let opt = |v: &Option<String>, max: usize| v.as_deref().map(|v| clip(v, max));
        let micros = self.occurred_at.timestamp_micros();
        let mut event = AuditEvent {
            id: self.id,
            chain: audit_chain_key(self.tenant_id),
            chain_seq,
            tenant_id: self.tenant_id,
            occurred_at: DateTime::from_timestamp_micros(micros).unwrap_or(self.occurred_at),
            actor_oid: opt(&self.actor_oid, 128),
            actor_app_id: opt(&self.actor_app_id, 128),
            actor_tenant_id: opt(&self.actor_tenant_id, 64),
            action: clip(&self.action, 64),
            resource_type: clip(&self.resource_type, 64),
            resource_id: opt(&self.resource_id, 128),
            outcome: self.outcome,
            request_id: opt(&self.request_id, 64),
            summary: clip(&self.summary, 2000),
            before_hash: hash_or_none(self.before_hash.clone()),
            after_hash: hash_or_none(self.after_hash.clone()),
            limiter_decision: opt(&self.limiter_decision, 200),
            prev_hash: prev_hash.to_owned(),
            hash: String::new(),
        };
        event.hash = audit_hash(prev_hash, &event);
        event
    }
}

/// The hash of an audit event: lower-case hex of
/// `SHA-256("meterline-audit-v1" || prev_hash || field_1 || … || field_16)`, where `prev_hash` is the 64 hex
/// characters of the previous event's hash (or [`AUDIT_GENESIS_HASH`]) and each field, in the order below, is
/// `0x00` when NULL, else `0x01`, its length in bytes as a big-endian u64, and its UTF-8 bytes: `id` (lower-case
/// hyphenated), `chain`, `chain_seq` (decimal), `tenant_id` (lower-case hyphenated), `occurred_at` (RFC 3339 in
/// UTC with exactly six fraction digits and `Z`), `actor_oid`, `actor_app_id`, `actor_tenant_id`, `action`,
/// `resource_type`, `resource_id`, `outcome`, `request_id`, `summary`, `before_hash`, `after_hash`,
/// `limiter_decision`. The event's own `prev_hash` and `hash` columns are not read: the link is `prev_hash`.
///
/// Both stores and the verifier call this one function.
pub fn audit_hash(prev_hash: &str, e: &AuditEvent) -> String {
    use sha2::{Digest, Sha256};
    let mut hasher = Sha256::new();
    hasher.update(b"meterline-audit-v1");
    hasher.update(prev_hash.as_bytes());
    let mut field = |value: Option<&str>| match value {
        None => hasher.update([0u8]),
        Some(v) => {
            hasher.update([1u8]);
            hasher.update((v.len() as u64).to_be_bytes());
            hasher.update(v.as_bytes());
        }
    };
    let id = e.id.hyphenated().to_string();
    let tenant = e.tenant_id.map(|t| t.hyphenated().to_string());
    let time = e.occurred_at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    field(Some(&id));
    field(Some(&e.chain));
    field(Some(&e.chain_seq.to_string()));
    field(tenant.as_deref());
    field(Some(&time));
    field(e.actor_oid.as_deref());
    field(e.actor_app_id.as_deref());
    field(e.actor_tenant_id.as_deref());
    field(Some(&e.action));
    field(Some(&e.resource_type));
    field(e.resource_id.as_deref());
    field(Some(e.outcome.as_str()));
    field(e.request_id.as_deref());
    field(Some(&e.summary));
    field(e.before_hash.as_deref());
    field(e.after_hash.as_deref());
    field(e.limiter_decision.as_deref());
    hasher.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// Filters of the audit listing; every present filter must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditFilter {
    /// Matches `actor_oid` or `actor_app_id`.
    pub actor: Option<String>,
    pub action: Option<String>,
    pub resource_type: Option<String>,
    pub resource_id: Option<String>,
    pub outcome: Option<AuditOutcome>,
    /// `occurred_at >= from` (inclusive).
    pub from: Option<DateTime<Utc>>,
    /// `occurred_at < to` (exclusive).
    pub to: Option<DateTime<Utc>>,
}

/// Keyset position in the audit listing (newest first): the last event's time and id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditCursor {
    pub occurred_at: DateTime<Utc>,
    pub id: Uuid,
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

/// Whether `units_used` has reached `threshold` percent of `quota_units` (a zero quota is reached at once).
pub fn quota_threshold_reached(units_used: i64, quota_units: i64, threshold: i64) -> bool {
    i128::from(units_used) * 100 >= i128::from(quota_units) * i128::from(threshold)
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
    pub received_at: DateTime<Utc>,
    pub message_id: Option<String>,
    pub delivery_count: Option<i32>,
    pub content_type: Option<String>,
    pub reason: String,
    pub raw_body: String,
    pub replayed_at: Option<DateTime<Utc>>,
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

/// Rounds up to whole microseconds, the stored precision (SQLite text, SQL Server `DATETIME2(6)`): for a stored
/// time `s`, `s >= t` is `s >= ceil(t)` and `s < t` is `s < ceil(t)`, so the time filters of both stores stay
/// exact for inputs with nanoseconds.
pub(crate) fn ceil_micros(t: DateTime<Utc>) -> DateTime<Utc> {
    match t.timestamp_subsec_nanos() % 1_000 {
        0 => t,
        extra => t + chrono::Duration::nanoseconds(i64::from(1_000 - extra)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceil_micros_rounds_sub_microsecond_times_up_and_keeps_whole_microseconds() {
        use chrono::TimeZone;
        let whole = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap() + chrono::Duration::microseconds(5);
        assert_eq!(ceil_micros(whole), whole);
        assert_eq!(ceil_micros(whole + chrono::Duration::nanoseconds(1)), whole + chrono::Duration::microseconds(1));
        assert_eq!(ceil_micros(whole + chrono::Duration::nanoseconds(999)), whole + chrono::Duration::microseconds(1));
    }

    #[test]
    fn a_threshold_is_crossed_by_the_debit_that_reaches_it_and_no_other() {
        assert!(crosses_threshold(79, 80, 100));
        assert!(crosses_threshold(70, 100, 100));
        assert!(crosses_threshold(95, 105, 100), "100 % crossed into overage");
        assert!(!crosses_threshold(80, 81, 100), "already past 80 %");
        assert!(!crosses_threshold(100, 120, 100));
        assert!(!crosses_threshold(0, 5, 0), "a zero quota has no thresholds to announce");
        assert!(crosses_threshold(0, 8, 10));
    }

    fn input() -> AuditEventInput {
        AuditEventInput {
            id: Uuid::from_u128(7),
            tenant_id: Some(Uuid::from_u128(1)),
            occurred_at: DateTime::from_timestamp(1_800_000_000, 123_456_789).unwrap(),
            actor_oid: Some("oid".into()),
            actor_app_id: None,
            actor_tenant_id: Some("tid".into()),
            action: "createDocument".into(),
            resource_type: "documents".into(),
            resource_id: Some("d1".into()),
            outcome: AuditOutcome::Succeeded,
            request_id: Some("r1".into()),
            summary: "created".into(),
            before_hash: None,
            after_hash: Some("AB".repeat(32)),
            limiter_decision: Some("allowed".into()),
        }
    }

    #[test]
    fn audit_hashes_chain_and_cover_every_field() {
        let first = input().seal(1, AUDIT_GENESIS_HASH);
        assert_eq!(first.chain, "tenant:00000000-0000-0000-0000-000000000001");
        assert_eq!(first.occurred_at.timestamp_subsec_nanos(), 123_456_000, "truncated to micros");
        assert_eq!(first.after_hash.as_deref(), Some("ab".repeat(32).as_str()), "hashes are lower-case");
        assert_eq!(first.hash.len(), 64);
        assert_eq!(audit_hash(AUDIT_GENESIS_HASH, &first), first.hash, "recomputable from the row");
        let second = input().seal(2, &first.hash);
        assert_ne!(second.hash, first.hash);
        assert_ne!(audit_hash(AUDIT_GENESIS_HASH, &second), second.hash, "the link is part of the hash");
        // NULL and empty differ; moving a byte between adjacent fields changes the hash.
        let none = AuditEvent { actor_app_id: None, ..first.clone() };
        let empty = AuditEvent { actor_app_id: Some(String::new()), ..first.clone() };
        assert_ne!(audit_hash(AUDIT_GENESIS_HASH, &none), audit_hash(AUDIT_GENESIS_HASH, &empty));
        let a = AuditEvent { action: "ab".into(), resource_type: "c".into(), ..first.clone() };
        let b = AuditEvent { action: "a".into(), resource_type: "bc".into(), ..first.clone() };
        assert_ne!(audit_hash(AUDIT_GENESIS_HASH, &a), audit_hash(AUDIT_GENESIS_HASH, &b));
        let edited = AuditEvent { outcome: AuditOutcome::Failed, ..first.clone() };
        assert_ne!(audit_hash(AUDIT_GENESIS_HASH, &edited), first.hash);
        let platform = AuditEventInput { tenant_id: None, ..input() }.seal(1, AUDIT_GENESIS_HASH);
        assert_eq!(platform.chain, "platform");
    }

    #[test]
    fn audit_texts_are_clipped_to_the_narrowest_column() {
        let long = AuditEventInput { summary: "é".repeat(3000), action: "x".repeat(100), ..input() };
        let sealed = long.seal(1, AUDIT_GENESIS_HASH);
        assert_eq!(sealed.summary.chars().count(), 2000);
        assert_eq!(sealed.action.len(), 64);
        assert_eq!(clip("a😀b", 2), "a", "a surrogate pair is never split");
        let bad = AuditEventInput { before_hash: Some("not a hash".into()), ..input() }.seal(1, AUDIT_GENESIS_HASH);
        assert_eq!(bad.before_hash, None);
    }

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
