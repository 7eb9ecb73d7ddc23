//! The audit aggregate's storage contract: listing events and reading chains (events are appended with the
//! usage records, see [`MeteringStore::record_usage`]); with the event types and the hash-chain rules both
//! backends share (sealing, `audit_hash`, the chain key).

use async_trait::async_trait;
use uuid::Uuid;

use super::model::clip_utf16 as clip;
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

    /// How many audit events of a tenant (`None`: the platform's) match `filter` (the `count` of a listing).
    async fn count_audit_events(&self, tenant_id: Option<Uuid>, filter: &AuditFilter) -> Result<u64, StoreError>;

    /// The events of `chain` with `chain_seq > after_seq`, in `chain_seq` order; at most `limit`.
    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError>;
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

/// The chain heads an append batch has written so far. Each event is sealed onto the head of its chain: the
/// stored head the first time the batch touches that chain (`None` for an empty chain: the genesis hash), then
/// the event the batch appended to it last. Both backends append through it; they only read heads and insert.
#[derive(Debug, Default)]
pub struct ChainHeads(std::collections::HashMap<String, (i64, String)>);

impl ChainHeads {
    /// The head of `chain` (sequence number and hash) when this batch has appended to it already.
    pub fn get(&self, chain: &str) -> Option<(i64, String)> {
        self.0.get(chain).cloned()
    }

    /// Seals `input` as the event after `head` in its chain and remembers it as that chain's head.
    pub fn seal(&mut self, input: &AuditEventInput, head: Option<(i64, String)>) -> AuditEvent {
        let (seq, prev) = head.unwrap_or_else(|| (0, AUDIT_GENESIS_HASH.to_owned()));
        let event = input.seal(seq + 1, &prev);
        self.0.insert(event.chain.clone(), (event.chain_seq, event.hash.clone()));
        event
    }
}

/// The page of an audit listing fetched with one row more than `limit` (see [`Page::cut`]).
pub fn audit_page(items: Vec<AuditEvent>, limit: u32) -> Page<AuditEvent, AuditCursor> {
    Page::cut(items, limit, |e| AuditCursor { occurred_at: e.occurred_at, id: e.id })
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn an_audit_page_has_a_cursor_only_when_the_extra_row_was_fetched() {
        let event = |n: u128| AuditEvent { id: Uuid::from_u128(n), ..input().seal(1, AUDIT_GENESIS_HASH) };
        let full = audit_page(vec![event(3), event(2), event(1)], 2);
        assert_eq!(full.items.iter().map(|e| e.id).collect::<Vec<_>>(), [Uuid::from_u128(3), Uuid::from_u128(2)]);
        let cursor = full.next.expect("more follow");
        assert_eq!((cursor.id, cursor.occurred_at), (Uuid::from_u128(2), full.items[1].occurred_at));
        let last = audit_page(vec![event(1)], 2);
        assert_eq!((last.items.len(), last.next), (1, None));
    }

    #[test]
    fn a_batch_seals_each_event_onto_the_last_one_of_its_chain() {
        let mut heads = ChainHeads::default();
        let first = heads.seal(&input(), None);
        assert_eq!((first.chain_seq, first.prev_hash.as_str()), (1, AUDIT_GENESIS_HASH));
        assert_eq!(heads.get(&first.chain), Some((1, first.hash.clone())));
        let second = heads.seal(&input(), heads.get(&first.chain));
        assert_eq!((second.chain_seq, second.prev_hash.as_str()), (2, first.hash.as_str()));
        let stored = heads.seal(&AuditEventInput { tenant_id: None, ..input() }, Some((41, "ab".repeat(32))));
        assert_eq!((stored.chain.as_str(), stored.chain_seq), ("platform", 42));
        assert_eq!(heads.get("platform"), Some((42, stored.hash.clone())));
    }
}
