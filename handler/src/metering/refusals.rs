//! Repeated refusals audited once per window. The first 401, 403 or 429 of a caller, operation and answer in a
//! window is audited as it happens; the repeats are counted, and when the window ends one audit event says how many
//! there were and when. Without it, a client sending refused calls as fast as it can (a garbage token, or past its
//! rate limit, which refuses without touching the store) appended an audit event per call to a chain that is never
//! purged, and made every later verification of that chain longer.
//!
//! Every refused call still has its usage event; only the audit trail coalesces. The counts live in this process
//! until their window ends ([`RefusalAudits::flush`], every second in `serve` and at shutdown), so a crash loses at
//! most one window's count of repeats, never a first refusal.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard, PoisonError};

use chrono::{DateTime, TimeDelta, Utc};
use uuid::Uuid;

use crate::clock::IdGenerator;
use crate::store::{AuditEventInput, AuditOutcome, Store, StoreError};

/// Most (caller, operation, answer) kinds counted at once; past it every refusal is audited on its own again.
const MAX_KINDS: usize = 10_000;

/// A kind of refusal: who was refused, in which chain, doing what, answered how.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RefusalKind {
    /// The chain's tenant (`None`: the platform chain).
    pub tenant_id: Option<Uuid>,
    pub actor_oid: Option<String>,
    pub actor_app_id: Option<String>,
    pub actor_tenant_id: Option<String>,
    /// The operation id (`unknown` for a path no operation serves).
    pub action: String,
    pub outcome: AuditOutcome,
    pub method: String,
    pub route: String,
    pub status: u16,
    /// The answer's problem code (`x-ms-error-code`): a scope missing and a tenant suspended are two kinds of 403.
    pub code: String,
}

/// Most resource ids a window lists; past them it counts.
const MAX_RESOURCES: usize = 10;

/// The refusals of one kind since its window opened.
#[derive(Debug, Clone)]
struct Window {
    opened_at: DateTime<Utc>,
    /// The audit event of the refusal that opened the window.
    first: Uuid,
    repeats: u64,
    last_at: DateTime<Utc>,
    /// The resources the repeats named (their path's id), the first [`MAX_RESOURCES`] of them.
    resources: std::collections::BTreeSet<String>,
    /// Repeats that named a resource not in `resources`.
    other_resources: u64,
}

impl Window {
    fn open(first: Uuid, now: DateTime<Utc>) -> Self {
        Window { opened_at: now, first, repeats: 0, last_at: now, resources: Default::default(), other_resources: 0 }
    }

    fn repeat(&mut self, resource: Option<String>, now: DateTime<Utc>) {
        self.repeats += 1;
        self.last_at = now;
        match resource {
            Some(id) if self.resources.contains(&id) => {}
            Some(id) if self.resources.len() < MAX_RESOURCES => {
                self.resources.insert(id);
            }
            Some(_) => self.other_resources += 1,
            None => {}
        }
    }
}

/// The per-process counts of repeated refusals.
#[derive(Debug)]
pub struct RefusalAudits {
    window: Option<TimeDelta>,
    open: Mutex<HashMap<RefusalKind, Window>>,
    /// Summaries made and not yet written (a failed flush puts its summaries back here).
    due: Mutex<Vec<AuditEventInput>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl RefusalAudits {
    /// Counts repeats for `window`; `None` audits every refusal.
    pub fn new(window: Option<std::time::Duration>) -> Self {
        RefusalAudits {
            window: window.and_then(|w| TimeDelta::from_std(w).ok()),
            open: Mutex::default(),
            due: Mutex::default(),
        }
    }

    /// Whether the refusal of `kind` at `now`, whose audit event would be `audit_id` and which named `resource` (its
    /// path's id), is audited (the first of its kind in the window) or only counted.
    pub fn admit(
        &self,
        kind: RefusalKind,
        audit_id: Uuid,
        resource: Option<String>,
        now: DateTime<Utc>,
        ids: &dyn IdGenerator,
    ) -> bool {
        let Some(window) = self.window else { return true };
        let mut open = lock(&self.open);
        let full = open.len() >= MAX_KINDS;
        match open.get_mut(&kind) {
            Some(w) if now < w.opened_at + window => {
                w.repeat(resource, now);
                false
            }
            Some(w) => {
                let ended = std::mem::replace(w, Window::open(audit_id, now));
                if let Some(summary) = summary(&kind, &ended, now, ids) {
                    lock(&self.due).push(summary);
                }
                true
            }
            None if full => true,
            None => {
                open.insert(kind, Window::open(audit_id, now));
                true
            }
        }
    }

    /// Ends the windows that are over at `now` (every one when `all`, at shutdown) and appends one audit event per
    /// window with repeats, saying how many; returns how many it appended. On failure the summaries wait for the
    /// next flush.
    pub async fn flush(
        &self,
        store: &dyn Store,
        now: DateTime<Utc>,
        ids: &dyn IdGenerator,
        all: bool,
    ) -> Result<usize, StoreError> {
        let mut summaries = std::mem::take(&mut *lock(&self.due));
        if let Some(window) = self.window {
            let mut open = lock(&self.open);
            open.retain(|kind, w| {
                let over = all || now >= w.opened_at + window;
                if over && let Some(summary) = summary(kind, w, now, ids) {
                    summaries.push(summary);
                }
                !over
            });
        }
        if summaries.is_empty() {
            return Ok(0);
        }
        match store.record_usage(&[], &summaries).await {
            Ok(_) => Ok(summaries.len()),
            Err(err) => {
                lock(&self.due).extend(summaries);
                Err(err)
            }
        }
    }

    /// Flushes the windows that ended every `interval` on the current runtime, until the counts are dropped.
    pub fn flush_every(
        self: &std::sync::Arc<Self>,
        store: std::sync::Arc<dyn Store>,
        clock: std::sync::Arc<dyn crate::clock::Clock>,
        ids: std::sync::Arc<dyn IdGenerator>,
        interval: std::time::Duration,
    ) {
        let weak = std::sync::Arc::downgrade(self);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(audits) = weak.upgrade() else { return };
                if let Err(err) = audits.flush(&*store, clock.now(), &*ids, false).await {
                    tracing::warn!(error = ?err, "appending the counts of repeated refusals failed; retried next second");
                }
            }
        });
    }
}

/// The audit event that closes a window with repeats: who, what, how many, between when, naming which resources.
/// It occurs when it is appended (`now`), so a reader that polls the trail by time finds it after the events before.
fn summary(kind: &RefusalKind, window: &Window, now: DateTime<Utc>, ids: &dyn IdGenerator) -> Option<AuditEventInput> {
    let named = window.resources.iter().map(String::as_str).collect::<Vec<_>>().join(", ");
    let resources = match (named.is_empty(), window.other_resources) {
        (true, _) => String::new(),
        (false, 0) => format!("; resources {named}"),
        (false, more) => format!("; resources {named} and {more} more"),
    };
    let time = |t: DateTime<Utc>| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    (window.repeats > 0).then(|| AuditEventInput {
        id: ids.new_id(),
        tenant_id: kind.tenant_id,
        occurred_at: now,
        actor_oid: kind.actor_oid.clone(),
        actor_app_id: kind.actor_app_id.clone(),
        actor_tenant_id: kind.actor_tenant_id.clone(),
        action: kind.action.clone(),
        resource_type: super::audit::resource_type_of(&kind.route),
        resource_id: None,
        outcome: kind.outcome,
        request_id: None,
        summary: format!(
            "{} more {} {} answered {} {} from {} to {}, counted, not audited one by one (the first: audit event {}){resources}",
            window.repeats,
            kind.method,
            kind.route,
            kind.status,
            kind.code,
            time(window.opened_at),
            time(window.last_at),
            window.first,
        ),
        before_hash: None,
        after_hash: None,
        limiter_decision: None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Ids;
    impl IdGenerator for Ids {
        fn new_id(&self) -> Uuid {
            Uuid::from_u128(7)
        }
    }

    fn kind(status: u16) -> RefusalKind {
        RefusalKind {
            tenant_id: None,
            actor_oid: None,
            actor_app_id: None,
            actor_tenant_id: None,
            action: "listDocuments".into(),
            outcome: AuditOutcome::Denied,
            method: "GET".into(),
            route: "/api/v1/documents".into(),
            status,
            code: "Unauthenticated".into(),
        }
    }

    #[test]
    fn the_first_refusal_of_a_kind_is_audited_and_its_repeats_counted_until_the_window_ends() {
        let t0 = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").unwrap().to_utc();
        let audits = RefusalAudits::new(Some(std::time::Duration::from_secs(60)));
        let at = |s| t0 + TimeDelta::seconds(s);
        assert!(audits.admit(kind(401), Uuid::from_u128(1), None, at(0), &Ids));
        assert!(!audits.admit(kind(401), Uuid::from_u128(2), Some("d-1".into()), at(10), &Ids));
        assert!(!audits.admit(kind(401), Uuid::from_u128(3), Some("d-2".into()), at(59), &Ids));
        assert!(audits.admit(kind(403), Uuid::from_u128(4), None, at(59), &Ids), "another answer is another kind");
        // The window is over: this one is audited and the two repeats are due as one summary.
        assert!(audits.admit(kind(401), Uuid::from_u128(5), None, at(60), &Ids));
        let due = lock(&audits.due).clone();
        assert_eq!(due.len(), 1);
        assert!(
            due[0]
                .summary
                .starts_with("2 more GET /api/v1/documents answered 401 Unauthenticated from 2026-12-07T10:00:00.000Z"),
            "{}",
            due[0].summary
        );
        assert!(due[0].summary.ends_with("; resources d-1, d-2"), "{}", due[0].summary);
        assert!(due[0].summary.contains(&format!("the first: audit event {}", Uuid::from_u128(1))));
        assert_eq!(due[0].occurred_at, at(60), "it occurs when it is appended");
        assert!(!audits.admit(kind(403), Uuid::from_u128(6), None, at(60), &Ids));
    }

    #[test]
    fn the_same_status_for_another_reason_is_another_kind() {
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").unwrap().to_utc();
        let audits = RefusalAudits::new(Some(std::time::Duration::from_secs(60)));
        let suspended = RefusalKind { code: "TenantSuspended".into(), ..kind(403) };
        assert!(audits.admit(kind(403), Uuid::from_u128(1), None, now, &Ids));
        assert!(audits.admit(suspended.clone(), Uuid::from_u128(2), None, now, &Ids), "audited: another reason");
        assert!(!audits.admit(suspended, Uuid::from_u128(3), None, now, &Ids));
    }

    #[test]
    fn no_window_audits_every_refusal() {
        let audits = RefusalAudits::new(None);
        let now = DateTime::parse_from_rfc3339("2026-12-07T10:00:00Z").unwrap().to_utc();
        assert!((0..3).all(|i| audits.admit(kind(429), Uuid::from_u128(i), None, now, &Ids)));
    }
}
