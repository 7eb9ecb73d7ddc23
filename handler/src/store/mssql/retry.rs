//! Bounded retry with exponential backoff and full jitter, for idempotent SQL Server work hit by transient faults.
//!
//! Only [`StoreError::Unavailable`] is retried (see [`is_retryable`]; for work that is not idempotent only a
//! deadlock victim, rolled back whole: [`retry_rolled_back`]): throttling, failover, deadlock victims,
//! dropped connections, timeouts. Conflicts, reference violations and everything else fail at once. When the
//! attempts run out the last error is returned, still `Unavailable`, so the API answers 503 with `Retry-After`.
//!
//! Randomness is injected: [`retry`] takes the jitter source; [`jitter_from_seed`] makes one, which the store
//! seeds from its injected clock (`MssqlStore::jitter`).

use std::future::Future;
use std::time::Duration;

use super::errors::{is_retryable, was_rolled_back};
use crate::store::StoreError;

/// How often and how patiently to retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in total, the first included; 0 is treated as 1.
    pub max_attempts: u32,
    /// The ceiling of the delay after the first failure; it doubles after each further failure.
    pub base_delay: Duration,
    /// No delay is longer than this.
    pub max_delay: Duration,
}

impl Default for RetryPolicy {
    /// Five attempts, 100 ms base, 5 s cap: Azure SQL reconfigurations and failovers usually clear within a few
    /// seconds, and the worst case (about 1.5 s of sleeping in total with the cap never reached) stays well inside
    /// an HTTP request's budget.
    fn default() -> Self {
        Self { max_attempts: 5, base_delay: Duration::from_millis(100), max_delay: Duration::from_secs(5) }
    }
}

/// The delay after the `attempt`-th failure (1-based), "full jitter": a uniformly random point between zero and
/// `min(max_delay, base_delay * 2^(attempt-1))`, where `jitter_fraction` in `[0, 1]` is that point (values
/// outside are clamped, NaN counts as 0).
pub fn backoff_delay(policy: &RetryPolicy, attempt: u32, jitter_fraction: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(31);
    let ceiling = policy.base_delay.saturating_mul(1u32 << exponent).min(policy.max_delay);
    let fraction = if jitter_fraction.is_nan() { 0.0 } else { jitter_fraction.clamp(0.0, 1.0) };
    ceiling.mul_f64(fraction)
}

/// Runs `op` until it succeeds, fails with an error that is not retryable, or `policy.max_attempts` attempts have
/// failed; sleeps [`backoff_delay`] (with a fresh `jitter()` draw) between attempts and logs each retry.
///
/// `op` receives the attempt number, starting at 1.
///
/// **Only idempotent work may be passed in**: a read, or a whole transaction that rolls back when it fails (begin,
/// statements, commit, all inside `op`, on a connection taken inside `op`). Never retry a single statement of a
/// larger transaction, nor work whose failure can leave effects behind: after a dropped connection or a timeout
/// the server may have committed, so non-idempotent work could be applied twice.
pub async fn retry<T, F, Fut>(policy: &RetryPolicy, jitter: &mut impl FnMut() -> f64, op: F) -> Result<T, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    retry_when(policy, jitter, op, is_retryable).await
}

/// [`retry`] for work that is not idempotent: only a failure the server proves took nothing into effect (a
/// deadlock victim's transaction is rolled back whole, [`was_rolled_back`]) is tried again.
pub async fn retry_rolled_back<T, F, Fut>(
    policy: &RetryPolicy,
    jitter: &mut impl FnMut() -> f64,
    op: F,
) -> Result<T, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    retry_when(policy, jitter, op, was_rolled_back).await
}

async fn retry_when<T, F, Fut>(
    policy: &RetryPolicy,
    jitter: &mut impl FnMut() -> f64,
    mut op: F,
    worth_retrying: fn(&StoreError) -> bool,
) -> Result<T, StoreError>
where
    F: FnMut(u32) -> Fut,
    Fut: Future<Output = Result<T, StoreError>>,
{
    let max_attempts = policy.max_attempts.max(1);
    let mut attempt = 1;
    loop {
        match op(attempt).await {
            Ok(value) => return Ok(value),
            Err(err) if !worth_retrying(&err) => return Err(err),
            Err(StoreError::Unavailable(cause)) if attempt >= max_attempts => {
                return Err(StoreError::Unavailable(cause.context(format!("gave up after {attempt} attempts"))));
            }
            Err(err) => {
                let delay = backoff_delay(policy, attempt, jitter());
                tracing::warn!(
                    attempt,
                    max_attempts,
                    delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                    error = %describe(&err),
                    "transient store failure; retrying"
                );
                tokio::time::sleep(delay).await;
                attempt += 1;
            }
        }
    }
}

/// A deterministic jitter source (xorshift64*) yielding values in `[0, 1)`; the same seed gives the same sequence.
pub fn jitter_from_seed(seed: u64) -> impl FnMut() -> f64 + Send + 'static {
    // xorshift must not start at zero; any fixed odd constant will do.
    let mut state = if seed == 0 { 0x9E37_79B9_7F4A_7C15 } else { seed };
    move || {
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let value = state.wrapping_mul(0x2545_F491_4F6C_DD1D);
        // the top 53 bits fill an f64 mantissa exactly
        (value >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// The error with its causes, for the log line (`StoreError::Unavailable` alone displays as "store unavailable").
fn describe(err: &StoreError) -> String {
    match err {
        StoreError::Unavailable(cause) => format!("store unavailable: {cause:#}"),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn policy() -> RetryPolicy {
        RetryPolicy { max_attempts: 4, base_delay: Duration::from_millis(100), max_delay: Duration::from_millis(500) }
    }

    fn transient() -> StoreError {
        StoreError::Unavailable(anyhow::anyhow!("SQL Server error 40613 (transient)"))
    }

    #[test]
    fn delays_double_up_to_the_cap() {
        let p = policy();
        let ceilings: Vec<_> = (1..=6).map(|a| backoff_delay(&p, a, 1.0).as_millis()).collect();
        assert_eq!(ceilings, [100, 200, 400, 500, 500, 500]);
        assert_eq!(backoff_delay(&p, 3, 0.5), Duration::from_millis(200));
        assert_eq!(backoff_delay(&p, 3, 0.0), Duration::ZERO);
    }

    #[test]
    fn delays_never_exceed_the_cap_whatever_the_jitter_or_attempt() {
        let p = RetryPolicy::default();
        let mut jitter = jitter_from_seed(7);
        for attempt in [0, 1, 2, 5, 10, 31, 32, 64, u32::MAX] {
            for _ in 0..50 {
                assert!(backoff_delay(&p, attempt, jitter()) <= p.max_delay, "attempt {attempt}");
            }
            for odd in [-1.0, 2.0, f64::NAN, f64::INFINITY] {
                assert!(backoff_delay(&p, attempt, odd) <= p.max_delay);
            }
        }
        assert_eq!(backoff_delay(&p, 4, f64::NAN), Duration::ZERO);
        assert_eq!(backoff_delay(&p, 40, 7.0), p.max_delay);
    }

    #[test]
    fn the_default_suits_azure_sql() {
        let p = RetryPolicy::default();
        assert_eq!(
            (p.max_attempts, p.base_delay, p.max_delay),
            (5, Duration::from_millis(100), Duration::from_secs(5))
        );
    }

    #[test]
    fn seeded_jitter_is_deterministic_and_in_range() {
        let a: Vec<f64> = std::iter::repeat_with(jitter_from_seed(42)).take(1000).collect();
        let b: Vec<f64> = std::iter::repeat_with(jitter_from_seed(42)).take(1000).collect();
        assert_eq!(a, b);
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = a.iter().sum::<f64>() / a.len() as f64;
        assert!((0.4..0.6).contains(&mean), "mean {mean}");
        let c: Vec<f64> = std::iter::repeat_with(jitter_from_seed(43)).take(10).collect();
        assert_ne!(a[..10], c[..]);
        let mut zero = jitter_from_seed(0);
        assert!((0.0..1.0).contains(&zero()));
    }

    #[tokio::test(start_paused = true)]
    async fn succeeds_after_transient_failures_and_sleeps_the_backoff() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result = retry(&policy(), &mut || 1.0, |attempt| {
            let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
            assert_eq!(attempt, n, "attempts are numbered from 1");
            async move { if attempt < 3 { Err(transient()) } else { Ok(attempt * 10) } }
        })
        .await;
        assert_eq!(result.unwrap(), 30);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        // two sleeps at full jitter: 100 ms + 200 ms of (paused, auto-advanced) time
        assert_eq!(started.elapsed(), Duration::from_millis(300));
    }

    #[tokio::test(start_paused = true)]
    async fn work_that_is_not_idempotent_is_retried_only_after_a_deadlock_rolled_it_back() {
        let deadlock = || super::super::errors::classify_server_error(1205, "chosen as the deadlock victim");
        let calls = AtomicU32::new(0);
        let result = retry_rolled_back(&policy(), &mut || 0.0, |attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { if attempt < 2 { Err(deadlock()) } else { Ok(attempt) } }
        })
        .await;
        assert_eq!((result.unwrap(), calls.load(Ordering::SeqCst)), (2, 2));
        // Another transient failure (a timeout, a dropped connection) may have committed: not tried again.
        let calls = AtomicU32::new(0);
        let result: Result<(), _> = retry_rolled_back(&policy(), &mut || 0.0, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err(transient()) }
        })
        .await;
        assert!(result.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn does_not_retry_conflicts_reference_violations_or_other_errors() {
        for make in [
            (|| StoreError::Conflict("dup".into())) as fn() -> StoreError,
            || StoreError::ForeignKey("missing parent".into()),
            || StoreError::Other(anyhow::anyhow!("syntax error")),
        ] {
            let calls = AtomicU32::new(0);
            let started = tokio::time::Instant::now();
            let result: Result<(), _> = retry(&policy(), &mut || 1.0, |_| {
                calls.fetch_add(1, Ordering::SeqCst);
                async move { Err(make()) }
            })
            .await;
            let err = result.unwrap_err();
            assert!(!is_retryable(&err), "{err:?}");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{err:?}");
            assert_eq!(started.elapsed(), Duration::ZERO);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn gives_up_after_max_attempts_with_the_last_error_still_unavailable() {
        let calls = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = retry(&policy(), &mut || 1.0, |attempt| {
            calls.fetch_add(1, Ordering::SeqCst);
            async move { Err(StoreError::Unavailable(anyhow::anyhow!("failure #{attempt}"))) }
        })
        .await;
        assert_eq!(calls.load(Ordering::SeqCst), 4);
        let StoreError::Unavailable(cause) = result.unwrap_err() else { panic!("not unavailable") };
        let text = format!("{cause:#}");
        assert!(text.contains("failure #4") && text.contains("gave up after 4 attempts"), "{text}");
        // 100 + 200 + 400 ms between the four attempts, none after the last
        assert_eq!(started.elapsed(), Duration::from_millis(700));
    }

    #[tokio::test(start_paused = true)]
    async fn the_jitter_is_drawn_once_per_retry_and_scales_the_delay() {
        let mut draws = 0;
        let mut jitter = || {
            draws += 1;
            0.5
        };
        let started = tokio::time::Instant::now();
        let result: Result<(), _> = retry(&policy(), &mut jitter, |_| async { Err(transient()) }).await;
        assert!(result.is_err());
        assert_eq!(draws, 3);
        assert_eq!(started.elapsed(), Duration::from_millis(350));
    }

    #[tokio::test(start_paused = true)]
    async fn zero_attempts_still_runs_once() {
        let calls = AtomicU32::new(0);
        let p = RetryPolicy { max_attempts: 0, ..policy() };
        let result: Result<(), _> = retry(&p, &mut || 0.0, |_| {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err(transient()) }
        })
        .await;
        assert!(matches!(result, Err(StoreError::Unavailable(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }
}
