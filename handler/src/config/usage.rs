//! Usage aggregation and billing settings: the rollup's batch, run time and settle margin, the lateness window
//! before a month closes, raw-event retention, the lag alert, whether standalone `serve` runs the timers, and the
//! quota leases' lifetime and size.

use std::time::Duration;

use super::{ConfigError, duration, parse_bool, parse_bounded, parse_number};

/// Usage aggregation and billing settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageConfig {
    pub rollup_batch_size: u32,
    pub rollup_max_run: Duration,
    pub rollup_settle: Duration,
    pub lateness: Duration,
    pub retention: Duration,
    pub lag_alert: Duration,
    pub standalone_timers: bool,
    /// How long a quota lease may be spent; `None` (`METERLINE_QUOTA_LEASE_SECS=0`): every metered request
    /// debits the store's counter itself.
    pub quota_lease: Option<Duration>,
    /// How much of a process's recent spending one grant covers.
    pub quota_lease_target: Duration,
    /// How long a batch of rate-limit steps may be spent; `None` (`METERLINE_RATE_LEASE_MS=0`): one store step per
    /// request.
    pub rate_lease: Option<Duration>,
    /// How long a repeated refusal (401, 403, 429) of one caller, operation and answer is counted instead of
    /// audited one by one; `None` (`METERLINE_REFUSAL_AUDIT_WINDOW_SECS=0`): every refusal is audited.
    pub refusal_audit_window: Option<Duration>,
}

/// Reads the rollup, lateness, retention and timer settings, each within the bounds the jobs need.
pub(super) fn usage_config(get: &dyn Fn(&str) -> Option<String>) -> Result<UsageConfig, ConfigError> {
    let batch = parse_number("METERLINE_ROLLUP_BATCH_SIZE", get("METERLINE_ROLLUP_BATCH_SIZE"), 50_000, 1..=1_000_000)?;
    let max_run = parse_bounded(
        "METERLINE_ROLLUP_MAX_RUN_SECS",
        get("METERLINE_ROLLUP_MAX_RUN_SECS"),
        60,
        1..=240,
        "seconds; the host kills invocations at functionTimeout",
    )?;
    let settle = parse_bounded(
        "METERLINE_ROLLUP_SETTLE_SECS",
        get("METERLINE_ROLLUP_SETTLE_SECS"),
        120,
        0..=3_600,
        "seconds; the rollup and the statements wait this long behind now",
    )?;
    let lateness =
        parse_number("METERLINE_USAGE_LATENESS_SECS", get("METERLINE_USAGE_LATENESS_SECS"), 900, 0..=86_400)?;
    let retention_days = parse_bounded(
        "METERLINE_USAGE_RETENTION_DAYS",
        get("METERLINE_USAGE_RETENTION_DAYS"),
        35,
        2..=3_660,
        "days: ten years of raw events",
    )?;
    let lag_alert =
        parse_number("METERLINE_ROLLUP_LAG_ALERT_SECS", get("METERLINE_ROLLUP_LAG_ALERT_SECS"), 1800, 1..=86_400)?;
    let standalone_timers = match get("METERLINE_STANDALONE_TIMERS") {
        Some(raw) => parse_bool("METERLINE_STANDALONE_TIMERS", &raw)?,
        None => true,
    };
    let lease_secs = parse_bounded(
        "METERLINE_QUOTA_LEASE_SECS",
        get("METERLINE_QUOTA_LEASE_SECS"),
        5,
        0..=60,
        "plan changes and returned units reach other processes within it",
    )?;
    let target_ms =
        parse_number("METERLINE_QUOTA_LEASE_TARGET_MS", get("METERLINE_QUOTA_LEASE_TARGET_MS"), 500, 1..=60_000)?;
    let rate_lease_ms = parse_bounded(
        "METERLINE_RATE_LEASE_MS",
        get("METERLINE_RATE_LEASE_MS"),
        500,
        0..=5_000,
        "a batch may shift this much of the rate into a window",
    )?;
    let refusal_window = parse_bounded(
        "METERLINE_REFUSAL_AUDIT_WINDOW_SECS",
        get("METERLINE_REFUSAL_AUDIT_WINDOW_SECS"),
        60,
        0..=3_600,
        "seconds a repeated refusal is counted, then audited once with its count",
    )?;
    Ok(UsageConfig {
        refusal_audit_window: (refusal_window > 0).then(|| Duration::from_secs(refusal_window as u64)),
        rate_lease: (rate_lease_ms > 0).then(|| Duration::from_millis(rate_lease_ms as u64)),
        quota_lease: (lease_secs > 0).then(|| Duration::from_secs(lease_secs as u64)),
        quota_lease_target: Duration::from_millis(target_ms as u64),
        rollup_batch_size: u32::try_from(batch).unwrap_or(u32::MAX),
        rollup_max_run: Duration::from_secs(max_run as u64),
        rollup_settle: Duration::from_secs(settle as u64),
        lateness: Duration::from_secs(lateness as u64),
        retention: duration("METERLINE_USAGE_RETENTION_DAYS", retention_days, Duration::from_secs(86_400))?,
        lag_alert: Duration::from_secs(lag_alert as u64),
        standalone_timers,
    })
}
