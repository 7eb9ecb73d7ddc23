//! Every T-SQL statement the SQL Server store runs, in one place, so `store::tsql_check` can parse-check them all.
//!
//! Parameters are tiberius' positional `@P1`, `@P2`, …; ids bind as UNIQUEIDENTIFIER, times as DATETIME2.

/// The migration history table, created if missing.
pub const CREATE_HISTORY: &str = "IF OBJECT_ID(N'dbo.schema_migrations', N'U') IS NULL
CREATE TABLE dbo.schema_migrations (
    version    BIGINT       NOT NULL CONSTRAINT pk_schema_migrations PRIMARY KEY,
    name       NVARCHAR(200) NOT NULL,
    checksum   CHAR(64)     NOT NULL,
    applied_at DATETIME2(6) NOT NULL
)";

/// Serializes `migrate` across processes: an exclusive application lock owned by the session.
/// Returns the `sp_getapplock` status (0 or 1 granted; negative means timeout, deadlock or error).
pub const LOCK_MIGRATIONS: &str = "DECLARE @status INT;
EXEC @status = sp_getapplock @Resource = N'meterline:migrations', @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = 120000;
SELECT @status AS status";

pub const UNLOCK_MIGRATIONS: &str =
    "EXEC sp_releaseapplock @Resource = N'meterline:migrations', @LockOwner = N'Session'";

pub const READ_HISTORY: &str = "IF OBJECT_ID(N'dbo.schema_migrations', N'U') IS NOT NULL
SELECT version, name, checksum, applied_at FROM dbo.schema_migrations ORDER BY version";

pub const INSERT_HISTORY: &str =
    "INSERT INTO dbo.schema_migrations (version, name, checksum, applied_at) VALUES (@P1, @P2, @P3, @P4)";

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

pub const PING: &str = "SELECT 1 AS ok";

pub const INSERT_JOB_RUN: &str =
    "INSERT INTO dbo.job_runs (id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub const RECENT_JOB_RUNS: &str =
    "SELECT TOP (@P2) id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail
FROM dbo.job_runs WHERE job = @P1 ORDER BY started_at DESC, id DESC";

pub const INSERT_PLAN: &str = "INSERT INTO dbo.plans (code, name, requests_per_minute, burst, monthly_quota_units,
    overage_policy, currency, base_price_micros, overage_unit_price_micros, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12)";

pub const GET_PLAN: &str =
    "SELECT code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency,
    base_price_micros, overage_unit_price_micros, created_at, updated_at, version
FROM dbo.plans WHERE code = @P1";

pub const INSERT_TENANT: &str =
    "INSERT INTO dbo.tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub const GET_TENANT: &str = "SELECT id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants WHERE id = @P1";

pub const GET_TENANT_BY_ENTRA_ID: &str =
    "SELECT id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants WHERE entra_tenant_id = @P1";

/// First page of tenants: `@P1` is the page size plus one (to know whether another page follows).
pub const LIST_TENANTS_FIRST: &str =
    "SELECT TOP (@P1) id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants ORDER BY created_at, id";

/// Next page after the cursor (`@P1` created_at, `@P2` id); index ix_tenants_created.
pub const LIST_TENANTS_AFTER: &str =
    "SELECT TOP (@P3) id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version
FROM dbo.tenants WHERE created_at > @P1 OR (created_at = @P1 AND id > @P2) ORDER BY created_at, id";

pub const SET_TENANT_STATUS: &str = "UPDATE dbo.tenants SET status = @P1, updated_at = @P2, version = version + 1
WHERE id = @P3 AND version = @P4";

pub const INSERT_API_CLIENT: &str =
    "INSERT INTO dbo.api_clients (id, tenant_id, app_id, display_name, status, created_at, revoked_at, version)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8)";

pub const INSERT_API_CLIENT_ROLE: &str = "INSERT INTO dbo.api_client_roles (client_id, role) VALUES (@P1, @P2)";

pub const GET_API_CLIENT_BY_APP_ID: &str =
    "SELECT id, tenant_id, app_id, display_name, status, created_at, revoked_at, version
FROM dbo.api_clients WHERE app_id = @P1";

pub const API_CLIENT_ROLES: &str = "SELECT role FROM dbo.api_client_roles WHERE client_id = @P1 ORDER BY role";

/// Takes the lease if free, expired, or held by the same holder; returns 1 when `@P2` holds it afterwards.
/// The range locks (UPDLOCK, HOLDLOCK) make the check-then-insert atomic against a concurrent acquirer.
pub const ACQUIRE_LEASE: &str = "UPDATE dbo.job_leases WITH (UPDLOCK, HOLDLOCK)
    SET holder = @P2, acquired_at = @P3, expires_at = @P4
    WHERE name = @P1 AND (expires_at <= @P3 OR holder = @P2);
IF @@ROWCOUNT = 0 AND NOT EXISTS (SELECT 1 FROM dbo.job_leases WITH (UPDLOCK, HOLDLOCK) WHERE name = @P1)
    INSERT INTO dbo.job_leases (name, holder, acquired_at, expires_at) VALUES (@P1, @P2, @P3, @P4);
SELECT COUNT(*) AS held FROM dbo.job_leases WHERE name = @P1 AND holder = @P2 AND expires_at = @P4";

pub const RELEASE_LEASE: &str = "DELETE FROM dbo.job_leases WHERE name = @P1 AND holder = @P2";

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

/// Every statement above, named, for the parse check.
pub const ALL: &[(&str, &str)] = &[
    ("CREATE_HISTORY", CREATE_HISTORY),
    ("LOCK_MIGRATIONS", LOCK_MIGRATIONS),
    ("UNLOCK_MIGRATIONS", UNLOCK_MIGRATIONS),
    ("READ_HISTORY", READ_HISTORY),
    ("INSERT_HISTORY", INSERT_HISTORY),
    ("SESSION_OPTIONS", SESSION_OPTIONS),
    ("PING", PING),
    ("INSERT_JOB_RUN", INSERT_JOB_RUN),
    ("RECENT_JOB_RUNS", RECENT_JOB_RUNS),
    ("INSERT_PLAN", INSERT_PLAN),
    ("GET_PLAN", GET_PLAN),
    ("INSERT_TENANT", INSERT_TENANT),
    ("GET_TENANT", GET_TENANT),
    ("GET_TENANT_BY_ENTRA_ID", GET_TENANT_BY_ENTRA_ID),
    ("LIST_TENANTS_FIRST", LIST_TENANTS_FIRST),
    ("LIST_TENANTS_AFTER", LIST_TENANTS_AFTER),
    ("SET_TENANT_STATUS", SET_TENANT_STATUS),
    ("INSERT_API_CLIENT", INSERT_API_CLIENT),
    ("INSERT_API_CLIENT_ROLE", INSERT_API_CLIENT_ROLE),
    ("GET_API_CLIENT_BY_APP_ID", GET_API_CLIENT_BY_APP_ID),
    ("API_CLIENT_ROLES", API_CLIENT_ROLES),
    ("ACQUIRE_LEASE", ACQUIRE_LEASE),
    ("RELEASE_LEASE", RELEASE_LEASE),
    ("ENSURE_QUOTA_PERIOD", ENSURE_QUOTA_PERIOD),
    ("DEBIT_QUOTA", DEBIT_QUOTA),
    ("REFUND_QUOTA", REFUND_QUOTA),
    ("GET_QUOTA", GET_QUOTA),
    ("LOCK_RATE_STATE", LOCK_RATE_STATE),
    ("UPSERT_RATE_STATE", UPSERT_RATE_STATE),
    ("INSERT_USAGE_EVENT", INSERT_USAGE_EVENT),
    ("COUNT_USAGE_EVENTS", COUNT_USAGE_EVENTS),
];
