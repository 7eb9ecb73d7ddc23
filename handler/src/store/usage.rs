//! Rows and inputs of usage aggregation and billing: rollup progress, rollup rows, report rows, statements.
//!
//! The arithmetic both stores must agree on lives here too: the latency histogram's bucket bounds and its
//! merge, and the quantile read from it. The SQL of each store spells the same bounds out (a unit test in each
//! store module checks that its SQL names every bound, in order).

use async_trait::async_trait;

use super::*;

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

/// `job_watermarks` row: the highest `usage_events.seq` whose event is in the rollups.
pub const ROLLUP_WATERMARK: &str = "usage-rollup";
/// `job_watermarks` row: microseconds since the epoch; every event recorded at or before it is rolled up.
pub const ROLLUP_COMPLETE_THROUGH: &str = "usage-rollup:complete-through";
/// `job_watermarks` row: microseconds since the epoch when the current lag episode began; 0 when not lagging.
pub const ROLLUP_LAGGING_SINCE: &str = "usage-rollup:lagging-since";
/// `job_watermarks` row: the last month (as `YYYYMM01`) whose billing statements are all written; 0 for none.
pub const ROLLUP_CLOSED_THROUGH: &str = "usage-rollup:closed-through";

/// Upper bounds (exclusive, microseconds) of the latency histogram. Element `k` of a histogram counts the
/// calls faster than `LATENCY_BOUNDS_MICROS[k]`: cumulative counts, so two histograms merge by adding elements.
pub const LATENCY_BOUNDS_MICROS: [i64; 12] =
    [1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000, 5_000_000];

/// Window sizes of the stored rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RollupGranularity {
    Hour,
    Day,
}

impl RollupGranularity {
    pub fn as_str(self) -> &'static str {
        match self {
            RollupGranularity::Hour => "hour",
            RollupGranularity::Day => "day",
        }
    }

    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "hour" => Some(RollupGranularity::Hour),
            "day" => Some(RollupGranularity::Day),
            _ => None,
        }
    }

    /// The start of the window containing `t`.
    pub fn window_of(self, t: DateTime<Utc>) -> DateTime<Utc> {
        use chrono::{DurationRound, TimeDelta};
        let size = match self {
            RollupGranularity::Hour => TimeDelta::hours(1),
            RollupGranularity::Day => TimeDelta::days(1),
        };
        t.duration_trunc(size).expect("hours and days divide the epoch evenly")
    }
}

/// How far the usage rollup has got (all kept in `job_watermarks`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RollupState {
    /// Every event with `seq <= watermark` is in the rollups, and no event above it is.
    pub watermark: i64,
    /// Every event recorded at or before this time is in the rollups; `None` until a run first caught up.
    pub complete_through: Option<DateTime<Utc>>,
    /// Start of the current lag episode; `None` when the rollup is not lagging.
    pub lagging_since: Option<DateTime<Utc>>,
    /// First day of the last month whose statements are all written.
    pub closed_through: Option<NaiveDate>,
}

/// One bounded step of the rollup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupStep {
    /// Most events scanned past the watermark.
    pub batch_size: u32,
    /// Events recorded at or before this time are settled: they and every event with a lower `seq` have committed
    /// (now minus the settle margin). Only settled events move the watermark.
    pub settled_before: DateTime<Utc>,
    /// Written to `updated_at` of the rollups.
    pub now: DateTime<Utc>,
}

/// What one rollup step did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RollupProgress {
    /// Events past the old watermark that the step looked at.
    pub scanned: u64,
    /// Events newly covered by the watermark.
    pub rolled_up: u64,
    pub watermark: i64,
    /// The scan reached the end of the table: nothing settled is left for another step.
    pub caught_up: bool,
}

/// One stored rollup row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRollup {
    pub tenant_id: Uuid,
    pub granularity: RollupGranularity,
    pub window_start: DateTime<Utc>,
    pub operation_id: String,
    /// `""` when the calls had no client id.
    pub client_id: String,
    pub totals: UsageTotals,
}

/// Sums over a set of calls; every field merges by addition (the maximum by `max`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageTotals {
    pub calls: i64,
    /// The cost of every call, charged or not.
    pub units: i64,
    /// The units charged: those of successful calls that debited the quota.
    pub billable_units: i64,
    pub overage_units: i64,
    /// Calls answered with a status of 400 or more.
    pub errors: i64,
    pub latency_sum_micros: i64,
    pub latency_max_micros: i64,
    /// Cumulative counts, one per [`LATENCY_BOUNDS_MICROS`] element.
    pub latency_histogram: Vec<i64>,
    /// Calls refused by a rate limit (429), counted among `errors` too.
    pub rate_limited: i64,
    /// Calls refused by a quota (429), counted among `errors` too.
    pub quota_refused: i64,
}

/// One call, as a rollup counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Call {
    pub units: i64,
    pub billable: bool,
    pub overage_units: i64,
    pub status: i32,
    pub latency_micros: i64,
    pub refusal: Option<LimitRefusal>,
}

impl UsageTotals {
    /// The totals of one call.
    pub fn of_call(call: Call) -> Self {
        let mut totals = UsageTotals::default();
        totals.add_call(call);
        totals
    }

    /// Adds one call into `self` (what [`merge`](Self::merge) of [`of_call`](Self::of_call) does, without
    /// building a second histogram).
    pub fn add_call(&mut self, call: Call) {
        let Call { units, billable, overage_units, status, latency_micros, refusal } = call;
        self.calls += 1;
        self.rate_limited += i64::from(refusal == Some(LimitRefusal::Rate));
        self.quota_refused += i64::from(refusal == Some(LimitRefusal::Quota));
        self.units += units;
        if billable {
            self.billable_units += units;
        }
        self.overage_units += overage_units;
        self.errors += i64::from(status >= 400);
        self.latency_sum_micros += latency_micros;
        self.latency_max_micros = self.latency_max_micros.max(latency_micros);
        if self.latency_histogram.len() < LATENCY_BOUNDS_MICROS.len() {
            self.latency_histogram.resize(LATENCY_BOUNDS_MICROS.len(), 0);
        }
        for (count, bound) in self.latency_histogram.iter_mut().zip(LATENCY_BOUNDS_MICROS) {
            *count += i64::from(latency_micros < bound);
        }
    }

    /// Adds `other` into `self`.
    pub fn merge(&mut self, other: &UsageTotals) {
        self.calls += other.calls;
        self.units += other.units;
        self.billable_units += other.billable_units;
        self.overage_units += other.overage_units;
        self.errors += other.errors;
        self.rate_limited += other.rate_limited;
        self.quota_refused += other.quota_refused;
        self.latency_sum_micros += other.latency_sum_micros;
        self.latency_max_micros = self.latency_max_micros.max(other.latency_max_micros);
        if self.latency_histogram.len() < other.latency_histogram.len() {
            self.latency_histogram.resize(other.latency_histogram.len(), 0);
        }
        for (mine, theirs) in self.latency_histogram.iter_mut().zip(&other.latency_histogram) {
            *mine += theirs;
        }
    }

    /// An upper bound of the `q` quantile (0 < q <= 1) of latency: the first histogram bound below which at
    /// least that share of calls fell, or the maximum when the share lies beyond the last bound.
    pub fn latency_quantile_micros(&self, q: f64) -> i64 {
        if self.calls == 0 {
            return 0;
        }
        let needed = ((self.calls as f64) * q).ceil() as i64;
        self.latency_histogram
            .iter()
            .zip(LATENCY_BOUNDS_MICROS)
            .find(|(count, _)| **count >= needed)
            .map_or(self.latency_max_micros, |(_, bound)| bound.min(self.latency_max_micros.max(1)))
    }

    /// The histogram as stored: a JSON array of integers.
    pub fn histogram_json(&self) -> String {
        serde_json::to_string(&self.latency_histogram).expect("integers serialize")
    }

    /// Parses a stored histogram.
    pub fn parse_histogram(raw: &str) -> Option<Vec<i64>> {
        serde_json::from_str(raw).ok()
    }
}

/// A usage report query: one tenant, windows of `granularity` starting in `[from, to)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageQuery {
    pub tenant_id: Uuid,
    pub granularity: RollupGranularity,
    /// Window-aligned.
    pub from: DateTime<Utc>,
    /// Window-aligned, exclusive.
    pub to: DateTime<Utc>,
    /// The minutes past the UTC hour the tenant's hour windows start at (`TenantBilling::window_offset_minutes`).
    pub hour_offset_minutes: i32,
}

/// One row of a usage report: a window, operation and client, from the rollups plus the not-yet-rolled tail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UsageRow {
    pub window_start: DateTime<Utc>,
    pub operation_id: String,
    pub client_id: String,
    pub totals: UsageTotals,
}

/// A stored rollup as a report row (the report drops the tenant and granularity it was asked for).
impl From<UsageRollup> for UsageRow {
    fn from(r: UsageRollup) -> Self {
        UsageRow {
            window_start: r.window_start,
            operation_id: r.operation_id,
            client_id: r.client_id,
            totals: r.totals,
        }
    }
}

/// A billing statement row: one per tenant and month, written once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BillingStatement {
    pub id: Uuid,
    pub tenant_id: Uuid,
    pub period_start: NaiveDate,
    pub period_end: NaiveDate,
    pub plan_code: String,
    pub currency: String,
    pub quota_units: i64,
    pub used_units: i64,
    pub overage_units: i64,
    pub base_amount_micros: i64,
    pub overage_amount_micros: i64,
    pub total_amount_micros: i64,
    pub created_at: DateTime<Utc>,
    /// The units of `quota_units` that grants added.
    pub granted_units: i64,
    /// The instants its period began and ended (`None` on statements written before migration 9: UTC months).
    pub starts_at: Option<DateTime<Utc>>,
    pub ends_at: Option<DateTime<Utc>>,
    /// The overage unit price it billed at (`None` on statements written before migration 7).
    pub overage_unit_price_micros: Option<i64>,
    /// The sum of its adjustment lines (usage of earlier, issued months rolled up after they were billed); the
    /// tenant owes `total_amount_micros + adjustment_amount_micros`.
    pub adjustment_amount_micros: i64,
}

/// An adjustment line on a statement: usage of an issued statement's month rolled up after it was written, billed
/// on a later statement, never by changing the issued one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StatementAdjustment {
    pub id: Uuid,
    /// The statement the line appears on.
    pub statement_id: Uuid,
    /// The issued statement it corrects, and its month.
    pub adjusts_statement_id: Uuid,
    pub adjusts_period_start: NaiveDate,
    pub used_units_delta: i64,
    pub overage_units_delta: i64,
    pub amount_micros: i64,
    pub created_at: DateTime<Utc>,
}

/// `micros` (millionths of `currency`) rounded to the currency's minor unit (ISO 4217: cents for EUR, whole yen
/// for JPY, thousandths for KWD), half away from zero: what a statement can charge. A code without a minor unit
/// of its own (none passes plan validation) keeps two decimals.
pub fn to_minor_unit(micros: i64, currency: &str) -> i64 {
    let exponent = iso_currency::Currency::from_code(currency).and_then(|c| c.exponent()).unwrap_or(2).min(6);
    let step = 10_i64.pow(6 - u32::from(exponent));
    let rounded = (micros.unsigned_abs() + step.unsigned_abs() / 2) / step.unsigned_abs() * step.unsigned_abs();
    i64::try_from(rounded).map_or(i64::MAX, |r| if micros < 0 { -r } else { r })
}

/// A period's overage: the billable units past its quota as the period ended (the plan's units, an upgrade made
/// during the period and the grant units used included), whatever the quota was when each call was admitted. A
/// grant or an upgrade that comes after an overage covers it, as the usage summary shows at once; the statement
/// bills what the summary showed at the period's end. Each usage event's `overage_units` stays what its admission
/// saw (the usage report sums those).
pub fn period_overage(used_units: i64, quota_units: i64) -> i64 {
    used_units.saturating_sub(quota_units).max(0)
}

/// What an issued statement has not billed: its month's billable and overage units as the day rollups hold them
/// now, less what the statement and its adjustments billed (non-zero only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnbilledUsage {
    pub statement_id: Uuid,
    pub period_start: NaiveDate,
    pub used_units_delta: i64,
    pub overage_units_delta: i64,
    /// The statement's overage unit price, else (an older statement) its plan's current one.
    pub overage_unit_price_micros: i64,
    /// The adjusted statement's currency: a line is billed only on a statement in the same currency.
    pub currency: String,
}

/// Usage aggregation and billing (see `jobs::rollup` and docs/data-model.md, "Usage rollup").
#[async_trait]
pub trait UsageStore: Send + Sync + 'static {
    /// The rollup's progress.
    async fn rollup_state(&self) -> Result<RollupState, StoreError>;

    /// One bounded rollup step in ONE transaction: scans at most `batch_size` events past the watermark, moves
    /// the watermark to the highest settled `seq` among them, brings every hour and day window those events
    /// fall in up to the new watermark, and sets `complete_through` to `settled_before` when the scan reached
    /// the end. Afterwards each rollup row equals the aggregate of its window's raw events with `seq` up to the
    /// watermark: SQL Server recomputes the windows from raw events (a lower `seq` can commit after a higher
    /// one there), SQLite adds the sums of the new events (its one writer commits `seq` in order). Either way
    /// a step that runs twice finds the watermark moved and changes nothing; steps of two processes serialize.
    async fn rollup_step(&self, step: &RollupStep) -> Result<RollupProgress, StoreError>;

    /// Recomputes, for every tenant, the hour window starting at `hour` and then the day window containing it,
    /// from raw events with `seq` up to the watermark; returns how many rollup rows it wrote.
    async fn rollup_rerun_hour(&self, hour: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Deletes at most `limit` rolled-up events (`seq <= watermark`) recorded before `before`, oldest `seq` first.
    async fn purge_usage_events(&self, before: DateTime<Utc>, limit: u32) -> Result<u64, StoreError>;

    /// Starts (`Some`) or ends (`None`) a lag episode. Starting one that is already running changes nothing;
    /// starting a new one writes `event` to the outbox in the same transaction. Returns whether the state changed.
    async fn set_rollup_lagging(
        &self,
        since: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
        event: Option<&OutboxMessage>,
    ) -> Result<bool, StoreError>;

    /// Rollup rows of one tenant and granularity with windows starting in `[from, to)`, in key order.
    async fn usage_rollups(
        &self,
        tenant_id: Uuid,
        granularity: RollupGranularity,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<UsageRollup>, StoreError>;

    /// The usage of one tenant per window, operation and client: the rollups plus the events past the watermark
    /// (the tail), read from one snapshot, so no event is counted twice or missed while a rollup step commits.
    async fn usage_report(&self, query: &UsageQuery) -> Result<Vec<UsageRow>, StoreError>;

    /// Tenants created before `created_before` that have no statement for a period starting in `[month,
    /// month_end)`, by id after `after`, at most `limit`: the tenants whose statement of that month the rollup
    /// job has yet to write (each has its own period in the month, by its calendar).
    async fn tenants_without_statement(
        &self,
        month: NaiveDate,
        month_end: NaiveDate,
        created_before: DateTime<Utc>,
        after: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<Tenant>, StoreError>;

    /// What the tenant's issued statements of months before `before` (at most the 24 before it) have not billed,
    /// oldest first: the adjustment lines its next statement carries. The units are the period's billable units
    /// rolled up since; the overage is what all of them make past the statement's quota ([`period_overage`]) less
    /// the overage already billed, never below zero (a statement never credits overage it billed).
    async fn unbilled_usage(&self, tenant_id: Uuid, before: NaiveDate) -> Result<Vec<UnbilledUsage>, StoreError>;

    /// Writes a statement, its adjustment lines and its outbox event in one transaction; `false` (and nothing
    /// written) when the tenant already has a statement for the period. Statements are never updated.
    async fn insert_billing_statement(
        &self,
        statement: &BillingStatement,
        adjustments: &[StatementAdjustment],
        event: &OutboxMessage,
    ) -> Result<bool, StoreError>;

    /// The adjustment lines on a statement of `tenant_id`, oldest adjusted month first.
    async fn statement_adjustments(
        &self,
        tenant_id: Uuid,
        statement_id: Uuid,
    ) -> Result<Vec<StatementAdjustment>, StoreError>;

    /// Records that every statement of the month starting `period_start` is written.
    async fn set_closed_through(&self, period_start: NaiveDate, now: DateTime<Utc>) -> Result<(), StoreError>;

    /// A tenant's statements, newest period first.
    async fn list_billing_statements(&self, tenant_id: Uuid) -> Result<Vec<BillingStatement>, StoreError>;

    async fn get_billing_statement(
        &self,
        tenant_id: Uuid,
        period_start: NaiveDate,
    ) -> Result<Option<BillingStatement>, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_are_rounded_to_the_currencys_minor_unit() {
        assert_eq!(to_minor_unit(1_004_500_000, "JPY"), 1_005_000_000, "half a yen rounds up");
        assert_eq!(to_minor_unit(1_004_499_999, "JPY"), 1_004_000_000);
        assert_eq!(to_minor_unit(12_345_678, "EUR"), 12_350_000);
        assert_eq!(to_minor_unit(12_344_999, "EUR"), 12_340_000);
        assert_eq!(to_minor_unit(1_234_567, "KWD"), 1_235_000, "three decimals");
        assert_eq!(to_minor_unit(-1_005_000, "EUR"), -1_010_000, "a credit rounds away from zero too");
        assert_eq!(to_minor_unit(0, "EUR"), 0);
    }

    fn call(units: i64, billable: bool, status: i32, latency_micros: i64, refusal: Option<LimitRefusal>) -> Call {
        Call { units, billable, overage_units: 0, status, latency_micros, refusal }
    }

    #[test]
    fn histograms_are_cumulative_and_merge_by_addition() {
        let mut a = UsageTotals::of_call(call(2, true, 200, 1_500, None));
        assert_eq!(a.latency_histogram[..3], [0, 1, 1]);
        a.merge(&UsageTotals::of_call(call(2, false, 500, 700, None)));
        a.merge(&UsageTotals::of_call(call(2, false, 429, 900, Some(LimitRefusal::Quota))));
        assert_eq!((a.calls, a.units, a.billable_units, a.errors, a.latency_max_micros), (3, 6, 2, 2, 1_500));
        assert_eq!((a.rate_limited, a.quota_refused), (0, 1));
        assert_eq!(a.latency_histogram[..3], [2, 3, 3]);
        let mut added = UsageTotals::of_call(call(2, true, 200, 1_500, None));
        added.add_call(call(2, false, 500, 700, None));
        added.add_call(call(2, false, 429, 900, Some(LimitRefusal::Quota)));
        assert_eq!(added, a, "adding a call in place is merging its totals");
        assert_eq!(a.latency_quantile_micros(0.5), 1_000);
        assert_eq!(a.latency_quantile_micros(0.95), 1_500, "never above the maximum");
        let slow = UsageTotals::of_call(call(1, true, 200, 9_000_000, None));
        assert_eq!(slow.latency_quantile_micros(0.5), 9_000_000, "beyond the last bound: the maximum");
        assert_eq!(UsageTotals::parse_histogram(&a.histogram_json()), Some(a.latency_histogram.clone()));
    }

    #[test]
    fn windows_start_on_whole_utc_hours_and_days() {
        use chrono::TimeZone;
        let t = Utc.with_ymd_and_hms(2026, 3, 4, 5, 6, 7).unwrap();
        assert_eq!(RollupGranularity::Hour.window_of(t), Utc.with_ymd_and_hms(2026, 3, 4, 5, 0, 0).unwrap());
        assert_eq!(RollupGranularity::Day.window_of(t), Utc.with_ymd_and_hms(2026, 3, 4, 0, 0, 0).unwrap());
    }
}
