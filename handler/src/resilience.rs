//! Circuit breakers and the refusal they (and the store's load shedding) answer with, on the injected clock.
//!
//! A [`Breaker`] guards one dependency (the store, Service Bus, Key Vault, the OpenID provider). It is
//! **closed** while calls succeed; after [`BreakerPolicy::failures_to_open`] consecutive failed calls it
//! **opens**, and for [`BreakerPolicy::open_for`] every call is refused at once with a [`Refusal`] (503
//! `dependency-unavailable` with `Retry-After`) instead of adding to a dependency that is down. Then it is
//! **half-open**: one call at a time goes through as a probe; its success closes the breaker, its failure
//! opens it again for another `open_for`. Each transition is logged once (WARN on opening, INFO otherwise) and
//! counted in `meterline.breaker.transitions`; the state is the `meterline.breaker.state` gauge and part of
//! `GET /api/health/ready`.
//!
//! Time comes from the injected [`Clock`], so tests drive every transition without sleeping.
//!
//! Why our own and not a crate: `failsafe` (the maintained Rust breaker) reads `Instant::now()` itself, so a
//! test would have to sleep through the open period, and tower-based breakers wrap `tower::Service`s, which
//! neither actix-web handlers nor the `azure_core` pipeline are. The state machine is the small part below.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::clock::Clock;

/// When a breaker opens and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerPolicy {
    /// Consecutive failed calls that open the breaker.
    pub failures_to_open: u32,
    /// How long an open breaker refuses before it lets a probe through.
    pub open_for: Duration,
}

impl BreakerPolicy {
    /// Five failures in a row, then five seconds of refusals: long enough that a dependency that is down is
    /// not hammered, short enough that a recovered one is found again within one `Retry-After`.
    pub const DEFAULT: BreakerPolicy = BreakerPolicy { failures_to_open: 5, open_for: Duration::from_secs(5) };

    /// For a client whose every call already retries inside its pipeline (Service Bus and Key Vault: four tries
    /// with backoff, about 3 s when the service refuses connections): three such calls in a row, then 5 s.
    pub const RETRIED_CALLS: BreakerPolicy = BreakerPolicy { failures_to_open: 3, open_for: Duration::from_secs(5) };
}

/// A breaker's state, as health and metrics show it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::Open => "open",
            BreakerState::HalfOpen => "half-open",
        }
    }

    /// The gauge's value: 0 closed, 1 half-open, 2 open (so an alert on `>= 2` means refusing).
    pub fn level(self) -> u64 {
        match self {
            BreakerState::Closed => 0,
            BreakerState::HalfOpen => 1,
            BreakerState::Open => 2,
        }
    }
}

/// Why a call was refused without reaching its dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalKind {
    /// The dependency's breaker is open (or half-open with its probe in flight).
    CircuitOpen,
    /// Too much work already waits for the dependency (queue depth or wait time): shed at once.
    Overloaded,
}

/// A call refused by a breaker or shed by a bounded queue: it never reached the dependency, so nothing it
/// would have written took effect. The API answers it with 503 and `Retry-After` (`error::AppError`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{dependency} {}: refused without calling it; retry in {}s", match .kind { RefusalKind::CircuitOpen => "circuit is open", RefusalKind::Overloaded => "is overloaded" }, .retry_after.as_secs())]
pub struct Refusal {
    pub dependency: &'static str,
    pub kind: RefusalKind,
    /// When a retry may succeed (at least one second).
    pub retry_after: Duration,
}

impl Refusal {
    /// The refusal of a `dependency` whose queue is full or whose wait bound passed.
    pub fn overloaded(dependency: &'static str) -> Self {
        crate::telemetry::metrics::dependency_refusal(dependency, "overloaded");
        Refusal { dependency, kind: RefusalKind::Overloaded, retry_after: Duration::from_secs(1) }
    }

    /// The refusal inside `error`'s cause chain, if the error is one.
    pub fn find(error: &anyhow::Error) -> Option<Refusal> {
        error.chain().find_map(|cause| cause.downcast_ref::<Refusal>().copied())
    }
}

#[derive(Debug, Clone, Copy)]
enum Inner {
    Closed { failures: u32 },
    Open { until: DateTime<Utc> },
    HalfOpen { probing: bool },
}

impl Inner {
    fn state(&self) -> BreakerState {
        match self {
            Inner::Closed { .. } => BreakerState::Closed,
            Inner::Open { .. } => BreakerState::Open,
            Inner::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }
}

/// One dependency's circuit breaker. Cheap to share (`Arc`); every call goes through [`Breaker::admit`].
pub struct Breaker {
    name: &'static str,
    policy: BreakerPolicy,
    clock: Arc<dyn Clock>,
    inner: Mutex<Inner>,
}

impl std::fmt::Debug for Breaker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker").field("name", &self.name).field("state", &self.state()).finish()
    }
}

impl Breaker {
    pub fn new(name: &'static str, policy: BreakerPolicy, clock: Arc<dyn Clock>) -> Arc<Self> {
        crate::telemetry::metrics::breaker_state(name, BreakerState::Closed.level());
        Arc::new(Breaker { name, policy, clock, inner: Mutex::new(Inner::Closed { failures: 0 }) })
    }

    /// The dependency's name (`store`, `servicebus`, `keyvault`, `openid`).
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The state now (an open breaker whose time is up reads as half-open).
    pub fn state(&self) -> BreakerState {
        let inner = *self.inner.lock().expect("breaker lock");
        match inner {
            Inner::Open { until } if self.clock.now() >= until => BreakerState::HalfOpen,
            other => other.state(),
        }
    }

    /// Seconds until an open breaker lets a probe through (0 unless open).
    pub fn retry_after(&self) -> Duration {
        match *self.inner.lock().expect("breaker lock") {
            Inner::Open { until } => (until - self.clock.now()).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        }
    }

    /// Lets a call through, or refuses it: open, or half-open with a probe already in flight. The returned
    /// [`Attempt`] must be told how the call went; dropped untold (a cancelled call), it frees the probe slot
    /// and counts as nothing.
    pub fn admit(self: &Arc<Self>) -> Result<Attempt, Refusal> {
        let now = self.clock.now();
        let mut inner = self.inner.lock().expect("breaker lock");
        let probe = match *inner {
            Inner::Closed { .. } => false,
            Inner::Open { until } if now >= until => {
                self.transition(&mut inner, Inner::HalfOpen { probing: true });
                true
            }
            Inner::Open { until } => return Err(self.refusal((until - now).to_std().unwrap_or_default())),
            Inner::HalfOpen { probing: false } => {
                *inner = Inner::HalfOpen { probing: true };
                true
            }
            Inner::HalfOpen { probing: true } => return Err(self.refusal(Duration::ZERO)),
        };
        Ok(Attempt { breaker: self.clone(), probe, told: false })
    }

    fn refusal(&self, wait: Duration) -> Refusal {
        crate::telemetry::metrics::dependency_refusal(self.name, "circuit-open");
        Refusal { dependency: self.name, kind: RefusalKind::CircuitOpen, retry_after: wait.max(Duration::from_secs(1)) }
    }

    fn record(&self, success: bool) {
        let now = self.clock.now();
        let mut inner = self.inner.lock().expect("breaker lock");
        let open = Inner::Open { until: now + chrono::Duration::from_std(self.policy.open_for).unwrap_or_default() };
        match (*inner, success) {
            (Inner::Closed { .. }, true) => *inner = Inner::Closed { failures: 0 },
            (Inner::Closed { failures }, false) if failures + 1 >= self.policy.failures_to_open => {
                self.transition(&mut inner, open)
            }
            (Inner::Closed { failures }, false) => *inner = Inner::Closed { failures: failures + 1 },
            (Inner::HalfOpen { .. }, true) => self.transition(&mut inner, Inner::Closed { failures: 0 }),
            (Inner::HalfOpen { .. }, false) => self.transition(&mut inner, open),
            // A call admitted before the breaker opened finished after: the breaker already knows.
            (Inner::Open { .. }, _) => {}
        }
    }

    fn release_probe(&self) {
        let mut inner = self.inner.lock().expect("breaker lock");
        if let Inner::HalfOpen { probing: true } = *inner {
            *inner = Inner::HalfOpen { probing: false };
        }
    }

    /// Moves to `next`, logging and counting the change of state once.
    fn transition(&self, inner: &mut Inner, next: Inner) {
        let (from, to) = (inner.state(), next.state());
        *inner = next;
        if from == to {
            return;
        }
        match to {
            BreakerState::Open => tracing::warn!(
                dependency = self.name,
                from = from.as_str(),
                to = to.as_str(),
                open_for_secs = self.policy.open_for.as_secs(),
                "circuit breaker opened: calls are refused at once"
            ),
            _ => tracing::info!(
                dependency = self.name,
                from = from.as_str(),
                to = to.as_str(),
                "circuit breaker changed state"
            ),
        }
        crate::telemetry::metrics::breaker_transition(self.name, to.as_str());
        crate::telemetry::metrics::breaker_state(self.name, to.level());
    }
}

/// A call a breaker let through; report its outcome with [`Attempt::succeeded`] or [`Attempt::failed`].
#[must_use = "a breaker attempt must report how the call went"]
pub struct Attempt {
    breaker: Arc<Breaker>,
    probe: bool,
    told: bool,
}

impl std::fmt::Debug for Attempt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attempt").field("breaker", &self.breaker.name).field("probe", &self.probe).finish()
    }
}

impl Attempt {
    /// The dependency answered (even if the answer was a refusal of the request itself, like a conflict).
    pub fn succeeded(mut self) {
        self.told = true;
        self.breaker.record(true);
    }

    /// The dependency failed: unreachable, timed out, or answered with a transient server error.
    pub fn failed(mut self) {
        self.told = true;
        self.breaker.record(false);
    }

    /// Reports `success` either way.
    pub fn finish(self, success: bool) {
        if success { self.succeeded() } else { self.failed() }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.told && self.probe {
            self.breaker.release_probe();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    fn breaker() -> (Arc<ManualClock>, Arc<Breaker>) {
        let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
        let policy = BreakerPolicy { failures_to_open: 3, open_for: Duration::from_secs(10) };
        (clock.clone(), Breaker::new("store", policy, clock))
    }

    #[test]
    fn opens_after_the_stated_consecutive_failures_and_a_success_resets_the_count() {
        let (_clock, breaker) = breaker();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().succeeded();
        breaker.admit().unwrap().failed();
        breaker.admit().unwrap().failed();
        assert_eq!(breaker.state(), BreakerState::Closed, "a success in between resets the count");
        breaker.admit().unwrap().failed();
        assert_eq!(breaker.state(), BreakerState::Open);
        let refusal = breaker.admit().unwrap_err();
        assert_eq!(refusal.kind, RefusalKind::CircuitOpen);
        assert_eq!(refusal.dependency, "store");
        assert_eq!(refusal.retry_after, Duration::from_secs(10));
    }

    #[test]
    fn refuses_while_open_then_lets_one_probe_through_whose_success_closes_it() {
        let (clock, breaker) = breaker();
        for _ in 0..3 {
            breaker.admit().unwrap().failed();
        }
        clock.advance(chrono::Duration::seconds(4));
        assert_eq!(breaker.admit().unwrap_err().retry_after, Duration::from_secs(6));
        clock.advance(chrono::Duration::seconds(6));
        assert_eq!(breaker.state(), BreakerState::HalfOpen);
        let probe = breaker.admit().expect("the first call after open_for is the probe");
        assert_eq!(breaker.admit().unwrap_err().kind, RefusalKind::CircuitOpen, "one probe at a time");
        probe.succeeded();
        assert_eq!(breaker.state(), BreakerState::Closed);
        breaker.admit().unwrap().succeeded();
    }

    #[test]
    fn a_failed_probe_opens_it_again_for_a_whole_period_and_a_cancelled_one_frees_the_slot() {
        let (clock, breaker) = breaker();
        for _ in 0..3 {
            breaker.admit().unwrap().failed();
        }
        clock.advance(chrono::Duration::seconds(10));
        drop(breaker.admit().unwrap());
        let probe = breaker.admit().expect("a cancelled probe frees the slot");
        probe.failed();
        assert_eq!(breaker.state(), BreakerState::Open);
        assert_eq!(breaker.admit().unwrap_err().retry_after, Duration::from_secs(10));
    }

    #[test]
    fn a_call_admitted_before_opening_that_finishes_after_changes_nothing() {
        let (_clock, breaker) = breaker();
        let late = breaker.admit().unwrap();
        for _ in 0..3 {
            breaker.admit().unwrap().failed();
        }
        late.succeeded();
        assert_eq!(breaker.state(), BreakerState::Open);
    }

    #[test]
    fn a_refusal_is_found_in_a_cause_chain() {
        let err = anyhow::Error::new(Refusal::overloaded("store")).context("recording usage");
        assert_eq!(Refusal::find(&err).map(|r| r.kind), Some(RefusalKind::Overloaded));
        assert_eq!(Refusal::find(&anyhow::anyhow!("other")), None);
    }
}
