//! The T-SQL statements of the SQL Server store not yet moved to their aggregate's file, and what the
//! statements assembled at run time share (`Arg`, `Assembled`, `like_contains`, `ceil_micros`, the `DATE` range).
//!
//! Parameters are tiberius' positional `@P1`, `@P2`, …; ids bind as UNIQUEIDENTIFIER, times as DATETIME2.
//!
//! Each aggregate's file (`mssql/<aggregate>.rs`) holds its statements and lists them in its `STATEMENTS`;
//! [`ALL`] lists the constants still here, and `mssql::STATEMENTS` registers every list for `store::tsql_check`.
//! The document listing and the audit listing have a shape that depends on the request, so they are assembled
//! from fixed fragments (`mssql::documents::list_documents`, [`list_audit_events`]); user values only ever
//! become bound parameters. The parse check cannot see function output through a constant, so
//! [`assembled_examples`] builds every shape those functions produce (each order and direction, with and
//! without a cursor, each filter alone and all together) and `store::tsql_check` parses them with the constants.

use chrono::{DateTime, NaiveDate, Utc};
use uuid::Uuid;

use crate::store::model::{AuditCursor, AuditFilter, ceil_micros};

/// Session options every connection sets once: the ANSI settings filtered indexes require for writes,
/// and XACT_ABORT so any error inside a transaction rolls the whole transaction back.
pub const SESSION_OPTIONS: &str = "SET ANSI_NULLS ON;
SET ANSI_PADDING ON;
SET ANSI_WARNINGS ON;
SET ARITHABORT ON;
SET CONCAT_NULL_YIELDS_NULL ON;
SET QUOTED_IDENTIFIER ON;
SET NUMERIC_ROUNDABORT OFF;
SET XACT_ABORT ON";

/// Creates the period's counter row on first use, under a key-range lock so two first debits cannot both insert.
pub const ENSURE_QUOTA_PERIOD: &str = "IF NOT EXISTS (SELECT 1 FROM dbo.quota_usage WITH (UPDLOCK, HOLDLOCK)
    WHERE tenant_id = @P1 AND period_start = @P2)
INSERT INTO dbo.quota_usage (tenant_id, period_start, period_end, quota_units, overage_policy, updated_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";

/// The debit: one conditional UPDATE, so concurrent debits can never take the counter past the quota under
/// `block`. Outputs the new total, the quota and this debit's overage units; no row means rejected.
pub const DEBIT_QUOTA: &str = "UPDATE dbo.quota_usage SET
    overage_units = overage_units
        + (CASE WHEN units_used + @P3 > quota_units THEN units_used + @P3 - quota_units ELSE 0 END)
        - (CASE WHEN units_used > quota_units THEN units_used - quota_units ELSE 0 END),
    units_used = units_used + @P3,
    updated_at = @P4
OUTPUT inserted.units_used, inserted.quota_units,
    (CASE WHEN inserted.units_used > inserted.quota_units THEN inserted.units_used - inserted.quota_units ELSE 0 END)
    - (CASE WHEN inserted.units_used - @P3 > inserted.quota_units THEN inserted.units_used - @P3 - inserted.quota_units ELSE 0 END)
WHERE tenant_id = @P1 AND period_start = @P2 AND (overage_policy = 'allow' OR units_used + @P3 <= quota_units)";

pub const REFUND_QUOTA: &str = "UPDATE dbo.quota_usage SET
    units_used = CASE WHEN units_used > @P3 THEN units_used - @P3 ELSE 0 END,
    overage_units = CASE WHEN overage_units > @P4 THEN overage_units - @P4 ELSE 0 END,
    updated_at = @P5
WHERE tenant_id = @P1 AND period_start = @P2";

pub const GET_QUOTA: &str =
    "SELECT tenant_id, period_start, period_end, quota_units, overage_policy, units_used, overage_units
FROM dbo.quota_usage WHERE tenant_id = @P1 AND period_start = @P2";

/// Reads the GCRA state and keeps the key locked until the transaction ends (also when the row is absent).
pub const LOCK_RATE_STATE: &str = "SELECT tat_micros FROM dbo.rate_limit_state WITH (UPDLOCK, HOLDLOCK)
WHERE tenant_id = @P1 AND client_id = @P2";

pub const UPSERT_RATE_STATE: &str =
    "UPDATE dbo.rate_limit_state SET tat_micros = @P3 WHERE tenant_id = @P1 AND client_id = @P2;
IF @@ROWCOUNT = 0
    INSERT INTO dbo.rate_limit_state (tenant_id, client_id, tat_micros) VALUES (@P1, @P2, @P3)";

/// Inserts one usage event unless its id is stored already; the lock hints close the check-then-insert race.
pub const INSERT_USAGE_EVENT: &str =
    "INSERT INTO dbo.usage_events (event_id, request_id, tenant_id, client_id, principal_id,
    operation_id, method, route_template, status, units, billable, overage_units, latency_micros, request_bytes,
    response_bytes, occurred_at, recorded_at)
SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17
WHERE NOT EXISTS (SELECT 1 FROM dbo.usage_events WITH (UPDLOCK, HOLDLOCK) WHERE event_id = @P1)";

pub const COUNT_USAGE_EVENTS: &str = "SELECT COUNT_BIG(*) AS n FROM dbo.usage_events WHERE tenant_id = @P1";

/// The columns of an audit event, in the order `audit_from` reads them.
macro_rules! audit_columns {
    () => {
        "id, chain, chain_seq, tenant_id, occurred_at, actor_oid, actor_app_id, actor_tenant_id, action, resource_type,
    resource_id, outcome, request_id, summary, before_hash, after_hash, limiter_decision, prev_hash, hash"
    };
}

/// Whether an audit event is stored already (a retried batch skips it).
pub const AUDIT_EVENT_EXISTS: &str = "SELECT 1 AS found FROM dbo.audit_events WHERE id = @P1";

/// The head of a chain, read under a key-range update lock held to the end of the transaction (also when the
/// chain is empty): a concurrent appender of the same chain waits here, then reads the new head.
pub const AUDIT_CHAIN_HEAD: &str = "SELECT TOP (1) chain_seq, hash FROM dbo.audit_events WITH (UPDLOCK, HOLDLOCK)
WHERE chain = @P1 ORDER BY chain_seq DESC";

/// Appends one audit event. The table has no UPDATE or DELETE statement anywhere (a ledger table refuses them).
pub const INSERT_AUDIT_EVENT: &str = concat!(
    "INSERT INTO dbo.audit_events (",
    audit_columns!(),
    ")
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17, @P18, @P19)"
);

/// A page of one chain in `chain_seq` order, for verification (served by `ux_audit_events_chain_seq`).
pub const AUDIT_CHAIN: &str = concat!(
    "SELECT TOP (@P3) ",
    audit_columns!(),
    "
FROM dbo.audit_events WHERE chain = @P1 AND chain_seq > @P2 ORDER BY chain_seq"
);

/// A value bound to an assembled statement; `args[0]` is `@P1`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Arg {
    Int(i64),
    Id(Uuid),
    Text(String),
    Time(DateTime<Utc>),
    Date(NaiveDate),
}

/// A statement assembled from fixed fragments, and the values of its placeholders in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Assembled {
    pub sql: String,
    pub args: Vec<Arg>,
}

impl Assembled {
    /// Binds a value and returns its placeholder, `@P<n>`.
    pub(crate) fn bind(&mut self, arg: Arg) -> String {
        self.args.push(arg);
        format!("@P{}", self.args.len())
    }
}

/// `LIKE` pattern for "contains `text`", with T-SQL's wildcards `%`, `_`, `[` and the escape character `\`
/// escaped; used with `ESCAPE '\'`.
pub fn like_contains(text: &str) -> String {
    let mut pattern = String::with_capacity(text.len() + 2);
    pattern.push('%');
    for c in text.chars() {
        if matches!(c, '%' | '_' | '[' | '\\') {
            pattern.push('\\');
        }
        pattern.push(c);
    }
    pattern.push('%');
    pattern
}

/// One page of a tenant's audit events (`None`: the platform events, `tenant_id IS NULL`), newest first, strictly
/// after `after`: `TOP (fetch)` on `ix_audit_events_tenant_time`.
pub fn list_audit_events(
    tenant_id: Option<Uuid>,
    filter: &AuditFilter,
    after: Option<&AuditCursor>,
    fetch: i64,
) -> Assembled {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(fetch));
    a.sql = format!(concat!("SELECT TOP ({}) ", audit_columns!(), "\nFROM dbo.audit_events"), top);
    match tenant_id {
        Some(id) => {
            let p = a.bind(Arg::Id(id));
            a.sql.push_str(&format!("\nWHERE tenant_id = {p}"));
        }
        None => a.sql.push_str("\nWHERE tenant_id IS NULL"),
    }
    if let Some(actor) = &filter.actor {
        let p = a.bind(Arg::Text(actor.clone()));
        a.sql.push_str(&format!("\n    AND (actor_oid = {p} OR actor_app_id = {p})"));
    }
    for (column, value) in
        [("action", &filter.action), ("resource_type", &filter.resource_type), ("resource_id", &filter.resource_id)]
    {
        if let Some(value) = value {
            let p = a.bind(Arg::Text(value.clone()));
            a.sql.push_str(&format!("\n    AND {column} = {p}"));
        }
    }
    if let Some(outcome) = filter.outcome {
        let p = a.bind(Arg::Text(outcome.as_str().to_owned()));
        a.sql.push_str(&format!("\n    AND outcome = {p}"));
    }
    if let Some(from) = filter.from {
        let p = a.bind(Arg::Time(ceil_micros(from)));
        a.sql.push_str(&format!("\n    AND occurred_at >= {p}"));
    }
    if let Some(to) = filter.to {
        let p = a.bind(Arg::Time(ceil_micros(to)));
        a.sql.push_str(&format!("\n    AND occurred_at < {p}"));
    }
    if let Some(cursor) = after {
        let t = a.bind(Arg::Time(cursor.occurred_at));
        let id = a.bind(Arg::Id(cursor.id));
        a.sql.push_str(&format!("\n    AND occurred_at <= {t} AND (occurred_at < {t} OR id < {id})"));
    }
    a.sql.push_str("\nORDER BY occurred_at DESC, id DESC");
    a
}

/// Every shape the assembling functions produce, named, for the parse check (`store::tsql_check`).
#[cfg(test)]
pub fn assembled_examples() -> Vec<(String, Assembled)> {
    use chrono::TimeZone;

    use super::documents::{count_documents, list_documents, tags_of_documents, undated_documents};
    use crate::store::{
        DocumentCursor, DocumentFilter, DocumentSort, DocumentSortKey, DocumentStatus, NO_EFFECTIVE_DATE, SortValue,
    };

    let tenant = Uuid::from_u128(1);
    let id = Uuid::from_u128(2);
    let t = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
    let date = NaiveDate::from_ymd_opt(2026, 1, 31).unwrap();
    let full = DocumentFilter {
        status: Some(DocumentStatus::Published),
        doc_type: Some("contract".into()),
        jurisdiction: Some("FR".into()),
        tags_any: vec!["a".into(), "b".into(), "c".into()],
        updated_after: Some(t),
        updated_before: Some(t),
        effective_from: Some(date),
        effective_to: Some(date),
        q: Some("50% [draft]_\\".into()),
    };
    let alone: Vec<(&str, DocumentFilter)> = vec![
        ("status", DocumentFilter { status: full.status, ..Default::default() }),
        ("doc_type", DocumentFilter { doc_type: full.doc_type.clone(), ..Default::default() }),
        ("jurisdiction", DocumentFilter { jurisdiction: full.jurisdiction.clone(), ..Default::default() }),
        ("one tag", DocumentFilter { tags_any: vec!["a".into()], ..Default::default() }),
        ("updated_after", DocumentFilter { updated_after: full.updated_after, ..Default::default() }),
        ("updated_before", DocumentFilter { updated_before: full.updated_before, ..Default::default() }),
        ("effective_from", DocumentFilter { effective_from: full.effective_from, ..Default::default() }),
        ("effective_to", DocumentFilter { effective_to: full.effective_to, ..Default::default() }),
        ("q", DocumentFilter { q: full.q.clone(), ..Default::default() }),
        ("all filters", full.clone()),
        ("no filter", DocumentFilter::default()),
    ];
    let mut out = Vec::new();
    for key in [DocumentSortKey::UpdatedAt, DocumentSortKey::Title, DocumentSortKey::EffectiveDate] {
        let value = match key {
            DocumentSortKey::UpdatedAt => SortValue::Time(t),
            DocumentSortKey::Title => SortValue::Text("Lease".into()),
            DocumentSortKey::EffectiveDate => SortValue::Date(date),
        };
        let mut cursors = vec![("first page", None), ("next page", Some(DocumentCursor { value, id }))];
        if key == DocumentSortKey::EffectiveDate {
            let undated = DocumentCursor { value: SortValue::Date(NO_EFFECTIVE_DATE), id };
            cursors.push(("next page after an undated document", Some(undated)));
        }
        for descending in [false, true] {
            for (cursor_name, cursor) in &cursors {
                for filter in [&DocumentFilter::default(), &full] {
                    let sort = DocumentSort { key, descending };
                    let name = format!("list_documents {key:?} descending={descending} {cursor_name} {filter:?}");
                    out.push((name, list_documents(tenant, filter, sort, cursor.as_ref(), 21).expect("assembles")));
                }
            }
        }
    }
    out.push(("undated_documents all filters".to_owned(), undated_documents(tenant, &full, 21).expect("assembles")));
    for (name, filter) in &alone {
        let sort = DocumentSort { key: DocumentSortKey::UpdatedAt, descending: true };
        out.push((
            format!("list_documents {name}"),
            list_documents(tenant, filter, sort, None, 21).expect("assembles"),
        ));
        out.push((format!("count_documents {name}"), count_documents(tenant, filter).expect("assembles")));
    }
    let audit = AuditFilter {
        actor: Some("oid".into()),
        action: Some("createDocument".into()),
        resource_type: Some("documents".into()),
        resource_id: Some("x".into()),
        outcome: Some(crate::store::model::AuditOutcome::Denied),
        from: Some(t),
        to: Some(t),
    };
    let audit_cursor = AuditCursor { occurred_at: t, id };
    for (tenant_name, tenant_id) in [("tenant", Some(tenant)), ("platform", None)] {
        for (filter_name, filter) in [("no filter", AuditFilter::default()), ("all filters", audit.clone())] {
            for cursor in [None, Some(&audit_cursor)] {
                let name = format!("list_audit_events {tenant_name} {filter_name} cursor={}", cursor.is_some());
                out.push((name, list_audit_events(tenant_id, &filter, cursor, 26)));
            }
        }
    }
    out.push(("tags_of_documents 1".into(), tags_of_documents(tenant, &[id])));
    out.push(("tags_of_documents 3".into(), tags_of_documents(tenant, &[id, tenant, id])));
    out
}

// Usage aggregation and billing (docs/data-model.md, "Usage rollup"). Windows: an hour starts at
// DATEADD(HOUR, DATEDIFF(HOUR, @epoch, t), @epoch) with @epoch = 2000-01-01 as DATETIME2(0); a day at CAST(t AS DATE).

/// The twelve cumulative latency counts of a group of `usage_events e`, as JSON array text.
macro_rules! tsql_histogram_of_events {
    () => {
        "CONCAT('[', SUM(CASE WHEN e.latency_micros < 1000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 2000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 5000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 10000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 20000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 50000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 100000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 200000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 500000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 1000000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 2000000 THEN 1 ELSE 0 END), ',',
        SUM(CASE WHEN e.latency_micros < 5000000 THEN 1 ELSE 0 END), ']')"
    };
}

/// The element-wise sum of the histograms of a group of `usage_rollups r`.
macro_rules! tsql_histogram_of_rollups {
    () => {
        "CONCAT('[', SUM(CAST(JSON_VALUE(r.latency_histogram, '$[0]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[1]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[2]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[3]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[4]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[5]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[6]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[7]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[8]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[9]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[10]') AS BIGINT)), ',',
        SUM(CAST(JSON_VALUE(r.latency_histogram, '$[11]') AS BIGINT)), ']')"
    };
}

/// The sums of a group of `usage_events e`, named as the rollup columns (all BIGINT).
macro_rules! tsql_sums_of_events {
    () => {
        concat!(
            "COUNT_BIG(*) AS calls, SUM(CAST(e.units AS BIGINT)) AS units,
        SUM(CASE WHEN e.billable = 1 THEN CAST(e.units AS BIGINT) ELSE 0 END) AS billable_units,
        SUM(CAST(e.overage_units AS BIGINT)) AS overage_units,
        SUM(CASE WHEN e.status >= 400 THEN CAST(1 AS BIGINT) ELSE 0 END) AS errors,
        SUM(e.latency_micros) AS latency_sum_micros, MAX(e.latency_micros) AS latency_max_micros,
        ",
            tsql_histogram_of_events!(),
            " AS latency_histogram"
        )
    };
}

macro_rules! tsql_hour_of {
    ($t:literal) => {
        concat!(
            "DATEADD(HOUR, DATEDIFF(HOUR, CAST('2000-01-01' AS DATETIME2(0)), ",
            $t,
            "), CAST('2000-01-01' AS DATETIME2(0)))"
        )
    };
}

/// Overwrites the rollups of `granularity` with the rows of `source` (an aliased derived table `s` with
/// `tenant_id, ws, operation_id, client_id` and the sums); `@P2` is `updated_at`.
macro_rules! tsql_merge_rollups {
    ($granularity:literal, $source:expr) => {
        concat!(
            "MERGE INTO dbo.usage_rollups AS t
USING (",
            $source,
            ") AS s
ON t.tenant_id = s.tenant_id AND t.granularity = '",
            $granularity,
            "' AND t.window_start = s.ws
    AND t.operation_id = s.operation_id AND t.client_id = s.client_id
WHEN MATCHED THEN UPDATE SET calls = s.calls, units = s.units, billable_units = s.billable_units,
    overage_units = s.overage_units, errors = s.errors, latency_sum_micros = s.latency_sum_micros,
    latency_max_micros = s.latency_max_micros, latency_histogram = s.latency_histogram, updated_at = @P2
WHEN NOT MATCHED THEN INSERT (tenant_id, granularity, window_start, operation_id, client_id, calls, units,
    billable_units, overage_units, errors, latency_sum_micros, latency_max_micros, latency_histogram, updated_at)
VALUES (s.tenant_id, '",
            $granularity,
            "', s.ws, s.operation_id, s.client_id, s.calls, s.units, s.billable_units,
    s.overage_units, s.errors, s.latency_sum_micros, s.latency_max_micros, s.latency_histogram, @P2);"
        )
    };
}

/// Hour windows listed by `windows` (derived table `w` of `tenant_id, ws`), recomputed from raw events with
/// `seq <= @P1`.
macro_rules! tsql_hours_source {
    ($windows:literal) => {
        concat!(
            "SELECT e.tenant_id, w.ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
            tsql_sums_of_events!(),
            "
    FROM (", $windows, ") AS w
    JOIN dbo.usage_events e ON e.tenant_id = w.tenant_id AND e.occurred_at >= w.ws AND e.occurred_at < DATEADD(HOUR, 1, w.ws)
    WHERE e.seq <= @P1
    GROUP BY e.tenant_id, w.ws, e.operation_id, COALESCE(e.client_id, N'')"
        )
    };
}

/// Day windows listed by `days` (derived table `d` of `tenant_id, ws`), recomputed from the hour rollups.
macro_rules! tsql_days_source {
    ($days:literal) => {
        concat!(
            "SELECT r.tenant_id, d.ws, r.operation_id, r.client_id, SUM(r.calls) AS calls, SUM(r.units) AS units,
        SUM(r.billable_units) AS billable_units, SUM(r.overage_units) AS overage_units, SUM(r.errors) AS errors,
        SUM(r.latency_sum_micros) AS latency_sum_micros, MAX(r.latency_max_micros) AS latency_max_micros,
        ",
            tsql_histogram_of_rollups!(),
            " AS latency_histogram
    FROM (",
            $days,
            ") AS d
    JOIN dbo.usage_rollups r ON r.tenant_id = d.tenant_id AND r.granularity = 'hour'
        AND r.window_start >= d.ws AND r.window_start < DATEADD(DAY, 1, d.ws)
    GROUP BY r.tenant_id, d.ws, r.operation_id, r.client_id"
        )
    };
}

/// The `job_watermarks` row `@P1`, created at 0 if missing and locked until the transaction ends: rollup steps
/// of two processes serialize here.
pub const LOCK_POSITION: &str =
    "IF NOT EXISTS (SELECT 1 FROM dbo.job_watermarks WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)
    INSERT INTO dbo.job_watermarks (name, position, updated_at) VALUES (@P1, 0, @P2);
SELECT position FROM dbo.job_watermarks WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1";

/// A `job_watermarks` position, read under a shared lock held to the end of the transaction: the usage report
/// reads the watermark, the rollups and the tail while no rollup step can commit (its last write is this row).
pub const READ_POSITION_HOLDLOCK: &str = "SELECT position FROM dbo.job_watermarks WITH (HOLDLOCK) WHERE name = @P1";

pub const READ_POSITIONS: &str = "SELECT name, position FROM dbo.job_watermarks WHERE name LIKE 'usage-rollup%'";

pub const PUT_POSITION: &str = "UPDATE dbo.job_watermarks SET position = @P2, updated_at = @P3 WHERE name = @P1;
IF @@ROWCOUNT = 0
    INSERT INTO dbo.job_watermarks (name, position, updated_at) VALUES (@P1, @P2, @P3)";

/// How many events lie past the watermark `@P1` within the batch of `@P2`, and the highest settled `seq` among them.
pub const SCAN_ROLLUP_BATCH: &str =
    "SELECT COUNT_BIG(*) AS scanned, MAX(CASE WHEN b.recorded_at <= @P3 THEN b.seq END) AS settled
FROM (SELECT TOP (@P2) seq, recorded_at FROM dbo.usage_events WHERE seq > @P1 ORDER BY seq) AS b";

pub const COUNT_SEQ_RANGE: &str = "SELECT COUNT_BIG(*) AS n FROM dbo.usage_events WHERE seq > @P1 AND seq <= @P2";

/// The hour windows of the events with `seq` in `(@P3, @P1]`, recomputed. `@P2`: updated_at.
pub const ROLLUP_HOURS_OF_NEW_EVENTS: &str = tsql_merge_rollups!(
    "hour",
    tsql_hours_source!(
        "SELECT DISTINCT tenant_id, DATEADD(HOUR, DATEDIFF(HOUR, CAST('2000-01-01' AS DATETIME2(0)), occurred_at), CAST('2000-01-01' AS DATETIME2(0))) AS ws
        FROM dbo.usage_events WHERE seq > @P3 AND seq <= @P1 AND tenant_id IS NOT NULL"
    )
);

/// The day windows of the events with `seq` in `(@P3, @P1]`, recomputed from the hour rollups.
pub const ROLLUP_DAYS_OF_NEW_EVENTS: &str = tsql_merge_rollups!(
    "day",
    tsql_days_source!(
        "SELECT DISTINCT tenant_id, CAST(CAST(occurred_at AS DATE) AS DATETIME2(0)) AS ws
        FROM dbo.usage_events WHERE seq > @P3 AND seq <= @P1 AND tenant_id IS NOT NULL"
    )
);

/// The hour `@P3` of every tenant, recomputed from raw events with `seq <= @P1`.
pub const ROLLUP_HOUR_OF_EVERY_TENANT: &str = tsql_merge_rollups!(
    "hour",
    tsql_hours_source!("SELECT id AS tenant_id, CAST(@P3 AS DATETIME2(0)) AS ws FROM dbo.tenants")
);

/// The day containing `@P3` of every tenant, recomputed from the hour rollups.
pub const ROLLUP_DAY_OF_EVERY_TENANT: &str = tsql_merge_rollups!(
    "day",
    tsql_days_source!("SELECT id AS tenant_id, CAST(CAST(@P3 AS DATE) AS DATETIME2(0)) AS ws FROM dbo.tenants")
);

/// At most `@P3` rolled-up events (`seq <= @P1`) recorded before `@P2`, from the oldest `seq`.
pub const PURGE_USAGE_EVENTS: &str = "DELETE FROM dbo.usage_events
WHERE seq IN (SELECT TOP (@P3) seq FROM dbo.usage_events WHERE seq <= @P1 ORDER BY seq) AND recorded_at < @P2";

// Integration: inbox, effects of integration messages, quarantine, outbox.

/// Inserts an outbox event in the caller's transaction (a taken id is a unique-index violation).
pub const INSERT_OUTBOX: &str =
    "INSERT INTO dbo.outbox_messages (id, event_type, subject, payload, created_at, available_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";

/// Flags the 80 % threshold of a period once it is reached; one row changed means this transaction announces it.
pub const FLAG_QUOTA_80: &str = "UPDATE dbo.quota_usage SET notified_80 = 1
WHERE tenant_id = @P1 AND period_start = @P2 AND notified_80 = 0 AND units_used > 0 AND units_used * 100 >= quota_units * 80";

/// Flags the 100 % threshold of a period once it is reached.
pub const FLAG_QUOTA_100: &str = "UPDATE dbo.quota_usage SET notified_100 = 1
WHERE tenant_id = @P1 AND period_start = @P2 AND notified_100 = 0 AND units_used > 0 AND units_used >= quota_units";

/// Inserts the inbox row unless `(source, event_id)` is there; the key-range lock makes a concurrent delivery of
/// the same message wait and then insert nothing (0 rows: a duplicate).
pub const INSERT_INBOX: &str = "INSERT INTO dbo.inbox_messages (source, event_id, event_type, processed_at)
SELECT @P1, @P2, @P3, @P4
WHERE NOT EXISTS (SELECT 1 FROM dbo.inbox_messages WITH (UPDLOCK, HOLDLOCK) WHERE source = @P1 AND event_id = @P2)";

/// The tenant's status, with the row locked until the transaction ends.
pub const LOCK_TENANT_STATUS: &str = "SELECT status FROM dbo.tenants WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";

pub const INSERT_ACTIVE_TENANT: &str =
    "INSERT INTO dbo.tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, N'active', @P4, @P5, @P5, 1)";

pub const UPDATE_TENANT_FROM_EVENT: &str = "UPDATE dbo.tenants SET name = @P2, plan_code = @P3,
    entra_tenant_id = COALESCE(@P4, entra_tenant_id), updated_at = @P5, version = version + 1
WHERE id = @P1";

pub const SET_TENANT_STATUS_FROM_EVENT: &str =
    "UPDATE dbo.tenants SET status = @P2, updated_at = @P3, version = version + 1 WHERE id = @P1";

pub const CHANGE_TENANT_PLAN: &str = "UPDATE dbo.tenants SET plan_code = @P2, updated_at = @P3, version = version + 1 WHERE id = @P1 AND plan_code <> @P2";

/// The owner of a document id (deleted or not), locked so a concurrent insert of the same id waits.
pub const DOCUMENT_OWNER: &str = "SELECT tenant_id FROM dbo.documents WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";

/// Replaces every field of a document from an integration message (and undeletes it).
pub const REPLACE_DOCUMENT_FROM_EVENT: &str = "UPDATE dbo.documents SET title = @P3, summary = @P4, body = @P5,
    doc_type = @P6, jurisdiction = @P7, status = @P8, effective_date = @P9, updated_by = @P10, updated_at = @P11,
    deleted_at = NULL, version = version + 1
WHERE tenant_id = @P1 AND id = @P2";

/// The quota and overage policy of a tenant's plan.
pub const TENANT_PLAN_QUOTA: &str = "SELECT p.monthly_quota_units, p.overage_policy
FROM dbo.tenants t JOIN dbo.plans p ON p.code = t.plan_code WHERE t.id = @P1";

pub const USAGE_EVENT_EXISTS: &str = "SELECT 1 AS found FROM dbo.usage_events WHERE event_id = @P1";

/// A debit that is never refused (external usage has happened): outputs this debit's overage units.
pub const DEBIT_QUOTA_UNCONDITIONALLY: &str = "UPDATE dbo.quota_usage SET
    overage_units = overage_units
        + (CASE WHEN units_used + @P3 > quota_units THEN units_used + @P3 - quota_units ELSE 0 END)
        - (CASE WHEN units_used > quota_units THEN units_used - quota_units ELSE 0 END),
    units_used = units_used + @P3,
    updated_at = @P4
OUTPUT
    (CASE WHEN inserted.units_used > inserted.quota_units THEN inserted.units_used - inserted.quota_units ELSE 0 END)
    - (CASE WHEN inserted.units_used - @P3 > inserted.quota_units THEN inserted.units_used - @P3 - inserted.quota_units ELSE 0 END)
WHERE tenant_id = @P1 AND period_start = @P2";

pub const INSERT_QUARANTINE: &str = "INSERT INTO dbo.quarantine_messages (id, received_at, message_id, delivery_count,
    content_type, reason, raw_body, replayed_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub const LIST_QUARANTINE: &str = "SELECT TOP (@P1) id, received_at, message_id, delivery_count, content_type, reason,
    raw_body, replayed_at
FROM dbo.quarantine_messages ORDER BY received_at DESC, id DESC";

pub const GET_QUARANTINED: &str = "SELECT id, received_at, message_id, delivery_count, content_type, reason, raw_body,
    replayed_at
FROM dbo.quarantine_messages WHERE id = @P1";

pub const MARK_QUARANTINE_REPLAYED: &str = "UPDATE dbo.quarantine_messages SET replayed_at = @P2 WHERE id = @P1";

/// The publisher's page: unsent rows that are due, through the filtered index `ix_outbox_pending`.
pub const PENDING_OUTBOX: &str = "SELECT TOP (@P2) seq, id, event_type, subject, payload, created_at, available_at,
    attempts, last_error, sent_at
FROM dbo.outbox_messages WHERE sent_at IS NULL AND available_at <= @P1 ORDER BY available_at, seq";

pub const MARK_OUTBOX_SENT: &str =
    "UPDATE dbo.outbox_messages SET sent_at = @P2, attempts = attempts + 1, last_error = NULL
WHERE id = @P1 AND sent_at IS NULL";

pub const MARK_OUTBOX_FAILED: &str = "UPDATE dbo.outbox_messages SET attempts = attempts + 1, last_error = @P2,
    available_at = @P3
WHERE id = @P1 AND sent_at IS NULL";

pub const LIST_OUTBOX: &str = "SELECT TOP (@P2) seq, id, event_type, subject, payload, created_at, available_at,
    attempts, last_error, sent_at
FROM dbo.outbox_messages WHERE seq > @P1 ORDER BY seq";
pub const USAGE_ROLLUPS: &str = "SELECT window_start, operation_id, client_id, calls, units, billable_units,
    overage_units, errors, latency_sum_micros, latency_max_micros, latency_histogram
FROM dbo.usage_rollups WHERE tenant_id = @P1 AND granularity = @P2 AND window_start >= @P3 AND window_start < @P4
ORDER BY window_start, operation_id, client_id";

/// The tail of a tenant's usage: events past the watermark `@P1`, per hour, operation and client.
pub const USAGE_TAIL_HOURS: &str = concat!(
    "SELECT ",
    tsql_hour_of!("e.occurred_at"),
    " AS ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
    tsql_sums_of_events!(),
    "
FROM dbo.usage_events e WHERE e.seq > @P1 AND e.tenant_id = @P2 AND e.occurred_at >= @P3 AND e.occurred_at < @P4
GROUP BY ",
    tsql_hour_of!("e.occurred_at"),
    ", e.operation_id, COALESCE(e.client_id, N'')"
);

/// The same per day.
pub const USAGE_TAIL_DAYS: &str = concat!(
    "SELECT CAST(CAST(e.occurred_at AS DATE) AS DATETIME2(0)) AS ws, e.operation_id, COALESCE(e.client_id, N'') AS client_id,
        ",
    tsql_sums_of_events!(),
    "
FROM dbo.usage_events e WHERE e.seq > @P1 AND e.tenant_id = @P2 AND e.occurred_at >= @P3 AND e.occurred_at < @P4
GROUP BY CAST(CAST(e.occurred_at AS DATE) AS DATETIME2(0)), e.operation_id, COALESCE(e.client_id, N'')"
);

/// Tenants created before the period's end (`@P4`) without a statement for `@P1`, with the period's usage.
pub const STATEMENT_DRAFTS: &str = "SELECT TOP (@P5) t.id, t.plan_code, p.currency,
    COALESCE(q.quota_units, p.monthly_quota_units) AS quota_units,
    COALESCE((SELECT SUM(r.billable_units) FROM dbo.usage_rollups r WHERE r.tenant_id = t.id
        AND r.granularity = 'day' AND r.window_start >= @P3 AND r.window_start < @P4), 0) AS used_units,
    COALESCE((SELECT SUM(r.overage_units) FROM dbo.usage_rollups r WHERE r.tenant_id = t.id
        AND r.granularity = 'day' AND r.window_start >= @P3 AND r.window_start < @P4), 0) AS overage_units,
    p.base_price_micros, p.overage_unit_price_micros
FROM dbo.tenants t JOIN dbo.plans p ON p.code = t.plan_code
LEFT JOIN dbo.quota_usage q ON q.tenant_id = t.id AND q.period_start = @P1
WHERE t.created_at < @P4 AND @P2 IS NOT NULL
    AND NOT EXISTS (SELECT 1 FROM dbo.billing_statements b WHERE b.tenant_id = t.id AND b.period_start = @P1)
ORDER BY t.id";

/// A statement, unless the tenant has one for the period (the key-range lock closes the race).
pub const INSERT_STATEMENT: &str = "INSERT INTO dbo.billing_statements (id, tenant_id, period_start, period_end,
    plan_code, currency, quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros,
    total_amount_micros, created_at)
SELECT @P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13
WHERE NOT EXISTS (SELECT 1 FROM dbo.billing_statements WITH (UPDLOCK, HOLDLOCK)
    WHERE tenant_id = @P2 AND period_start = @P3)";

pub const LIST_STATEMENTS: &str = "SELECT TOP (1000) id, tenant_id, period_start, period_end, plan_code, currency,
    quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at
FROM dbo.billing_statements WHERE tenant_id = @P1 ORDER BY period_start DESC";

pub const GET_STATEMENT: &str = "SELECT id, tenant_id, period_start, period_end, plan_code, currency,
    quota_units, used_units, overage_units, base_amount_micros, overage_amount_micros, total_amount_micros, created_at
FROM dbo.billing_statements WHERE tenant_id = @P1 AND period_start = @P2";

/// Every constant statement above, named, for the parse check (the assembled ones: [`assembled_examples`]).
pub const ALL: &[(&str, &str)] = &[
    ("SESSION_OPTIONS", SESSION_OPTIONS),
    ("ENSURE_QUOTA_PERIOD", ENSURE_QUOTA_PERIOD),
    ("DEBIT_QUOTA", DEBIT_QUOTA),
    ("REFUND_QUOTA", REFUND_QUOTA),
    ("GET_QUOTA", GET_QUOTA),
    ("LOCK_RATE_STATE", LOCK_RATE_STATE),
    ("UPSERT_RATE_STATE", UPSERT_RATE_STATE),
    ("INSERT_USAGE_EVENT", INSERT_USAGE_EVENT),
    ("COUNT_USAGE_EVENTS", COUNT_USAGE_EVENTS),
    ("AUDIT_EVENT_EXISTS", AUDIT_EVENT_EXISTS),
    ("AUDIT_CHAIN_HEAD", AUDIT_CHAIN_HEAD),
    ("INSERT_AUDIT_EVENT", INSERT_AUDIT_EVENT),
    ("AUDIT_CHAIN", AUDIT_CHAIN),
    ("INSERT_OUTBOX", INSERT_OUTBOX),
    ("FLAG_QUOTA_80", FLAG_QUOTA_80),
    ("FLAG_QUOTA_100", FLAG_QUOTA_100),
    ("INSERT_INBOX", INSERT_INBOX),
    ("LOCK_TENANT_STATUS", LOCK_TENANT_STATUS),
    ("INSERT_ACTIVE_TENANT", INSERT_ACTIVE_TENANT),
    ("UPDATE_TENANT_FROM_EVENT", UPDATE_TENANT_FROM_EVENT),
    ("SET_TENANT_STATUS_FROM_EVENT", SET_TENANT_STATUS_FROM_EVENT),
    ("CHANGE_TENANT_PLAN", CHANGE_TENANT_PLAN),
    ("DOCUMENT_OWNER", DOCUMENT_OWNER),
    ("REPLACE_DOCUMENT_FROM_EVENT", REPLACE_DOCUMENT_FROM_EVENT),
    ("TENANT_PLAN_QUOTA", TENANT_PLAN_QUOTA),
    ("USAGE_EVENT_EXISTS", USAGE_EVENT_EXISTS),
    ("DEBIT_QUOTA_UNCONDITIONALLY", DEBIT_QUOTA_UNCONDITIONALLY),
    ("INSERT_QUARANTINE", INSERT_QUARANTINE),
    ("LIST_QUARANTINE", LIST_QUARANTINE),
    ("GET_QUARANTINED", GET_QUARANTINED),
    ("MARK_QUARANTINE_REPLAYED", MARK_QUARANTINE_REPLAYED),
    ("PENDING_OUTBOX", PENDING_OUTBOX),
    ("MARK_OUTBOX_SENT", MARK_OUTBOX_SENT),
    ("MARK_OUTBOX_FAILED", MARK_OUTBOX_FAILED),
    ("LIST_OUTBOX", LIST_OUTBOX),
    ("LOCK_POSITION", LOCK_POSITION),
    ("READ_POSITION_HOLDLOCK", READ_POSITION_HOLDLOCK),
    ("READ_POSITIONS", READ_POSITIONS),
    ("PUT_POSITION", PUT_POSITION),
    ("SCAN_ROLLUP_BATCH", SCAN_ROLLUP_BATCH),
    ("COUNT_SEQ_RANGE", COUNT_SEQ_RANGE),
    ("ROLLUP_HOURS_OF_NEW_EVENTS", ROLLUP_HOURS_OF_NEW_EVENTS),
    ("ROLLUP_DAYS_OF_NEW_EVENTS", ROLLUP_DAYS_OF_NEW_EVENTS),
    ("ROLLUP_HOUR_OF_EVERY_TENANT", ROLLUP_HOUR_OF_EVERY_TENANT),
    ("ROLLUP_DAY_OF_EVERY_TENANT", ROLLUP_DAY_OF_EVERY_TENANT),
    ("PURGE_USAGE_EVENTS", PURGE_USAGE_EVENTS),
    ("USAGE_ROLLUPS", USAGE_ROLLUPS),
    ("USAGE_TAIL_HOURS", USAGE_TAIL_HOURS),
    ("USAGE_TAIL_DAYS", USAGE_TAIL_DAYS),
    ("STATEMENT_DRAFTS", STATEMENT_DRAFTS),
    ("INSERT_STATEMENT", INSERT_STATEMENT),
    ("LIST_STATEMENTS", LIST_STATEMENTS),
    ("GET_STATEMENT", GET_STATEMENT),
];
