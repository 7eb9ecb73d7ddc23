//! The audit side of the record stage: which requests leave an audit event, what it says, and the chain verifier.
//!
//! Every state-changing request that succeeded or failed on the server, every 401/403 and every 429 on
//! `/api/v1` yields one audit event, written in the same store transaction as the request's usage event: by
//! the handler's own store write when it changed state (an [`AuditNote`] says what changed; see
//! [`super::ledger`]), else by [`super::stage::record`]. The limit stage leaves its [`LimiterDecision`] in the
//! request extensions. The store places the event in its tenant's hash chain ([`crate::store::audit_hash`]);
//! [`ChainVerifier`] recomputes a chain.

use actix_web::http::{Method, StatusCode};
use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::store::{AUDIT_GENESIS_HASH, AuditEvent, AuditOutcome, audit_hash};

/// What a handler changed, for the audit event of its request.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditNote {
    pub resource_type: String,
    pub resource_id: String,
    /// Hex SHA-256 of the resource's JSON view before the change (`None`: it did not exist).
    pub before_hash: Option<String>,
    /// Hex SHA-256 of the resource's JSON view after the change (`None`: it is gone).
    pub after_hash: Option<String>,
    pub summary: String,
    /// The tenant whose chain records the change when it is not the caller's: a platform administrator's
    /// decision about a tenant's resource belongs in that tenant's trail (the request's usage stays the caller's).
    pub tenant_id: Option<uuid::Uuid>,
}

/// The limit stage's decision about a request, e.g. `rate-limited minute r=0 t=3`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimiterDecision(pub String);

/// Hex SHA-256 of the JSON serialization of `view`.
pub fn content_hash<T: Serialize + ?Sized>(view: &T) -> String {
    let json = serde_json::to_vec(view).expect("views serialize");
    Sha256::digest(json).iter().map(|b| format!("{b:02x}")).collect()
}

impl AuditNote {
    /// What a request changes: `before` and `after` are the resource's API views (`None`: absent).
    pub fn new<T: Serialize + ?Sized>(
        resource_type: &str,
        resource_id: impl ToString,
        before: Option<&T>,
        after: Option<&T>,
        summary: impl Into<String>,
    ) -> Self {
        AuditNote {
            resource_type: resource_type.to_owned(),
            resource_id: resource_id.to_string(),
            before_hash: before.map(content_hash),
            after_hash: after.map(content_hash),
            summary: summary.into(),
            tenant_id: None,
        }
    }

    /// Records the change in `tenant_id`'s chain instead of the caller's.
    pub fn in_tenant(mut self, tenant_id: uuid::Uuid) -> Self {
        self.tenant_id = Some(tenant_id);
        self
    }
}

/// Marks a platform administrator's read of another tenant's data (`routes::scope::scoped_tenant`): the record
/// stage audits it in that tenant's chain, though reads are otherwise not audited.
#[derive(Debug, Clone, Copy)]
pub struct CrossTenantRead(pub uuid::Uuid);

/// Whether a method only reads: its successful requests are not audited.
pub fn is_read(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// Whether a request with this method and answer is audited, and with which outcome.
pub fn outcome(method: &Method, status: StatusCode) -> Option<AuditOutcome> {
    let reads = is_read(method);
    match status.as_u16() {
        401 | 403 => Some(AuditOutcome::Denied),
        429 => Some(AuditOutcome::Rejected),
        _ if reads => None,
        200..=299 => Some(AuditOutcome::Succeeded),
        500..=599 => Some(AuditOutcome::Failed),
        _ => None,
    }
}

/// The resource type a route works on when no note says: the first path segment after `/api/v1/`.
pub fn resource_type_of(route: &str) -> String {
    route
        .strip_prefix("/api/v1/")
        .and_then(|rest| rest.split('/').next())
        .filter(|s| !s.is_empty() && !s.starts_with('{'))
        .unwrap_or("unknown")
        .to_owned()
}

/// Why a chain is broken at an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakReason {
    /// The event's stored hash is not the hash of its columns.
    HashMismatch,
    /// The event's `prev_hash` is not the previous event's hash.
    PrevHashMismatch,
    /// The event's `chain_seq` is not the previous one plus one (an event is missing or the order changed).
    SequenceGap,
    /// The event a verification resumed from no longer has the hash the caller recorded for it (or is gone).
    CheckpointMismatch,
}

impl BreakReason {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakReason::HashMismatch => "hash mismatch",
            BreakReason::PrevHashMismatch => "prev_hash does not match the previous event",
            BreakReason::SequenceGap => "sequence gap",
            BreakReason::CheckpointMismatch => "the event resumed from does not have the recorded hash",
        }
    }
}

/// Most events one verification call checks (about half a second); a longer chain is verified in several calls,
/// each resuming from the head the previous one reached.
pub const VERIFY_LIMIT: u64 = 100_000;

/// Recomputes a chain event by event, in `chain_seq` order, from the genesis hash.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    expected_seq: i64,
    prev_hash: String,
    /// Events examined so far (the broken one included).
    pub checked: u64,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        ChainVerifier { expected_seq: 1, prev_hash: AUDIT_GENESIS_HASH.to_owned(), checked: 0 }
    }
}

impl ChainVerifier {
    /// A verifier that resumes after a chain head the caller recorded: `event` is the stored event at that head's
    /// `chain_seq` (none if it is gone), `hash` the hash recorded for it. `Err` if the stored event is gone, no longer
    /// has that hash, or its columns no longer hash to it.
    pub fn resume(event: Option<&AuditEvent>, seq: i64, hash: &str) -> Result<Self, BreakReason> {
        match event {
            Some(e) if e.chain_seq == seq && e.hash == hash && audit_hash(&e.prev_hash, e) == e.hash => {
                Ok(ChainVerifier { expected_seq: seq + 1, prev_hash: hash.to_owned(), checked: 0 })
            }
            _ => Err(BreakReason::CheckpointMismatch),
        }
    }

    /// Checks the next event; `Some` at the first broken link (then stop: later links are not meaningful).
    pub fn check(&mut self, event: &AuditEvent) -> Option<BreakReason> {
        self.checked += 1;
        if event.chain_seq != self.expected_seq {
            return Some(BreakReason::SequenceGap);
        }
        if event.prev_hash != self.prev_hash {
            return Some(BreakReason::PrevHashMismatch);
        }
        if audit_hash(&self.prev_hash, event) != event.hash {
            return Some(BreakReason::HashMismatch);
        }
        self.expected_seq += 1;
        self.prev_hash.clone_from(&event.hash);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::AuditEventInput;
    use uuid::Uuid;

    fn chain(n: u128) -> Vec<AuditEvent> {
        let mut prev = AUDIT_GENESIS_HASH.to_owned();
        (1..=n)
            .map(|i| {
                let input = AuditEventInput {
                    id: Uuid::from_u128(i),
                    tenant_id: Some(Uuid::from_u128(9)),
                    occurred_at: chrono::DateTime::from_timestamp(1_800_000_000 + i as i64, 0).unwrap(),
                    actor_oid: Some("oid".into()),
                    actor_app_id: None,
                    actor_tenant_id: None,
                    action: "patchDocument".into(),
                    resource_type: "documents".into(),
                    resource_id: None,
                    outcome: AuditOutcome::Succeeded,
                    request_id: None,
                    summary: format!("event {i}"),
                    before_hash: None,
                    after_hash: None,
                    limiter_decision: None,
                };
                let e = input.seal(i as i64, &prev);
                prev.clone_from(&e.hash);
                e
            })
            .collect()
    }

    fn first_break(events: &[AuditEvent]) -> Option<(i64, BreakReason)> {
        let mut v = ChainVerifier::default();
        events.iter().find_map(|e| v.check(e).map(|r| (e.chain_seq, r)))
    }

    #[test]
    fn the_verifier_finds_the_first_broken_link() {
        let intact = chain(5);
        assert_eq!(first_break(&intact), None);
        let mut edited = intact.clone();
        edited[2].summary = "rewritten".into();
        assert_eq!(first_break(&edited), Some((3, BreakReason::HashMismatch)));
        let mut removed = intact.clone();
        removed.remove(2);
        assert_eq!(first_break(&removed), Some((4, BreakReason::SequenceGap)));
        let mut relinked = intact.clone();
        relinked[3].prev_hash = "f".repeat(64);
        assert_eq!(first_break(&relinked), Some((4, BreakReason::PrevHashMismatch)));
        let mut rehashed = intact.clone();
        // Rewriting an event and its own hash still breaks the next link.
        rehashed[1].summary = "forged".into();
        rehashed[1].hash = audit_hash(&rehashed[1].prev_hash, &rehashed[1]);
        assert_eq!(first_break(&rehashed), Some((3, BreakReason::PrevHashMismatch)));
    }

    #[test]
    fn which_requests_are_audited() {
        assert_eq!(outcome(&Method::POST, StatusCode::CREATED), Some(AuditOutcome::Succeeded));
        assert_eq!(outcome(&Method::GET, StatusCode::OK), None);
        assert_eq!(outcome(&Method::GET, StatusCode::FORBIDDEN), Some(AuditOutcome::Denied));
        assert_eq!(outcome(&Method::GET, StatusCode::UNAUTHORIZED), Some(AuditOutcome::Denied));
        assert_eq!(outcome(&Method::GET, StatusCode::TOO_MANY_REQUESTS), Some(AuditOutcome::Rejected));
        assert_eq!(outcome(&Method::DELETE, StatusCode::SERVICE_UNAVAILABLE), Some(AuditOutcome::Failed));
        assert_eq!(outcome(&Method::GET, StatusCode::SERVICE_UNAVAILABLE), None);
        assert_eq!(outcome(&Method::PATCH, StatusCode::PRECONDITION_FAILED), None);
        assert_eq!(resource_type_of("/api/v1/documents/{id}"), "documents");
        assert_eq!(resource_type_of("/api/v1/tenants/{id}/suspend"), "tenants");
        assert_eq!(resource_type_of("unmatched"), "unknown");
    }
}
