//! The configuration reference: every setting Meterline reads, with its default and meaning (`handler
//! settings` prints it; `tools/deploy_checks` and the e2e layout test check the deployment and docs against it).

/// Documentation of one setting, the source of the configuration reference.
#[derive(Debug, Clone, Copy)]
pub struct SettingDoc {
    pub name: &'static str,
    pub default: &'static str,
    pub description: &'static str,
}

/// Every environment variable Meterline reads, with its default and meaning.
pub const SETTINGS: &[SettingDoc] = &[
    SettingDoc {
        name: "FUNCTIONS_CUSTOMHANDLER_PORT",
        default: "(unset)",
        description: "Set by the Azure Functions host: the port to listen on, on 127.0.0.1. When set, Meterline runs in host mode.",
    },
    SettingDoc {
        name: "FUNCTIONS_CUSTOMHANDLER_WORKER_ID",
        default: "(unset)",
        description: "Set by the Azure Functions host: a GUID for this handler process, added to every log line.",
    },
    SettingDoc {
        name: "FUNCTIONS_HTTPWORKER_PORT",
        default: "(unset)",
        description: "Set by the Azure Functions host: the legacy name of FUNCTIONS_CUSTOMHANDLER_PORT, read when that is unset.",
    },
    SettingDoc {
        name: "FUNCTIONS_HTTPWORKER_ID",
        default: "(unset)",
        description: "Set by the Azure Functions host: the legacy name of FUNCTIONS_CUSTOMHANDLER_WORKER_ID, read when that is unset.",
    },
    SettingDoc {
        name: "WEBSITE_INSTANCE_ID",
        default: "(unset)",
        description: "Set by Azure App Service / Functions on a real instance; Meterline uses it to know it runs in Azure.",
    },
    SettingDoc {
        name: "METERLINE_BIND_ADDRESS",
        default: "127.0.0.1",
        description: "Standalone mode only: the address to listen on. Under the host it must be unset or loopback (the host calls 127.0.0.1, and host mode refuses any other address).",
    },
    SettingDoc {
        name: "METERLINE_PORT",
        default: "7071",
        description: "Standalone mode only: the port to listen on (0 picks a free port and logs it).",
    },
    SettingDoc {
        name: "METERLINE_STORE",
        default: "sqlite",
        description: "Which store to use: `sqlite` (embedded, local default) or `mssql` (SQL Server / Azure SQL / Fabric SQL).",
    },
    SettingDoc {
        name: "METERLINE_SQLITE_PATH",
        default: "data/meterline.db",
        description: "Path of the embedded SQLite database file (created with its folder if missing).",
    },
    SettingDoc {
        name: "METERLINE_MSSQL_CONNECTION_STRING",
        default: "(unset)",
        description: "Secret. ADO.NET-style SQL Server connection string; required when METERLINE_STORE=mssql.",
    },
    SettingDoc {
        name: "METERLINE_AUTO_MIGRATE",
        default: "true for sqlite, false for mssql",
        description: "Apply pending migrations at startup. Production SQL Server schemas change only through `handler migrate`.",
    },
    SettingDoc {
        name: "METERLINE_LOG",
        default: "info",
        description: "Log filter in tracing's env-filter syntax, e.g. `info,meterline=debug` (RUST_LOG is read if unset).",
    },
    SettingDoc {
        name: "RUST_LOG",
        default: "(unset)",
        description: "The log filter when METERLINE_LOG is unset (the usual name of tracing's env-filter).",
    },
    SettingDoc {
        name: "METERLINE_LOG_FORMAT",
        default: "json",
        description: "`json` (one JSON object per line, for the host and Application Insights) or `text` (for a terminal).",
    },
    SettingDoc {
        name: "METERLINE_MAX_BODY_BYTES",
        default: "1048576",
        description: "Largest request body accepted by the API, in bytes; larger bodies get 413. Range: 1 to 104857600 (100 MiB, what the Functions host passes on).",
    },
    SettingDoc {
        name: "METERLINE_WORKERS",
        default: "number of CPUs",
        description: "Number of HTTP worker threads. Range: 1 to 512.",
    },
    SettingDoc {
        name: "METERLINE_CORS_ALLOWED_ORIGINS",
        default: "(none)",
        description: "Origins whose pages may call the API from a browser (CORS), comma-separated, e.g. https://app.example.com,https://admin.example.com; `*` allows any page. The handler answers the preflight and names the origin in its answers; leave the Function App's own CORS setting empty. Unset: no cross-origin browser calls.",
    },
    SettingDoc {
        name: "METERLINE_LOOKUP_CACHE_SECS",
        default: "5",
        description: "How long tenant, plan and API-client lookups are cached per process; a change made through another instance applies within this time. 0 turns the cache off. Range: 0 to 300.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_MODE",
        default: "local outside Azure, entra in Azure",
        description: "`entra`: validate Microsoft Entra ID (or any OpenID Connect) tokens; `local`: trust the development key under ./data (refused in Azure).",
    },
    SettingDoc {
        name: "METERLINE_AUTH_AUTHORITY",
        default: "(unset)",
        description: "entra mode: the authority whose discovery document and keys sign tokens, e.g. https://login.microsoftonline.com/<tenant-id>/v2.0 or .../organizations/v2.0. https only, except on loopback.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_AUDIENCES",
        default: "(unset)",
        description: "entra mode: comma-separated accepted `aud` values, e.g. the App ID URI api://meterline and the API's client id.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_ALLOWED_TENANTS",
        default: "(any)",
        description: "Comma-separated Entra directory ids (tid) whose tokens are accepted; set it for multi-tenant authorities.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_PLATFORM_DIRECTORIES",
        default: "the authority's directory if single-tenant, else any",
        description: "Comma-separated Entra directory ids (tid) whose tokens may hold Platform.Admin; from any other directory the role is ignored. Required in Azure with a multi-tenant authority, where every customer directory's administrator can grant the API's app roles to their own applications.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_CLOCK_SKEW_SECS",
        default: "60",
        description: "Tolerance for exp and nbf, in seconds. Range: 0 to 300.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_JWKS_REFRESH_SECS",
        default: "3600",
        description: "Age after which the identity provider's signing keys are refreshed in the background. Range: 60 to 86400.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_JWKS_MIN_REFETCH_SECS",
        default: "300",
        description: "Least time between two key fetches caused by tokens with an unknown key id (kid). Range: 0 to 3600.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_JWKS_TIMEOUT_SECS",
        default: "5",
        description: "Timeout of one fetch of the identity provider's discovery document or signing keys. Range: 1 to 60.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_TOKEN_CACHE_SIZE",
        default: "10000",
        description: "How many validated tokens are kept (until they expire) so a busy client pays for signature checks once. Range: 1 to 1000000.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_LOCAL_KEY_PATH",
        default: "data/dev-signing-key.pem",
        description: "local mode: the RSA key `handler dev-token` signs with and the server trusts; created if missing.",
    },
    SettingDoc {
        name: "METERLINE_CURSOR_KEY",
        default: "(random per process outside Azure)",
        description: "Secret. At least 32 characters; signs list cursors so they cannot be forged or replayed with other filters. Required in Azure: every instance must share it (a Key Vault reference).",
    },
    SettingDoc {
        name: "METERLINE_TELEMETRY",
        default: "auto",
        description: "OpenTelemetry traces and metrics: `auto` (OTLP when OTEL_EXPORTER_OTLP_ENDPOINT is set, else Application Insights when APPLICATIONINSIGHTS_CONNECTION_STRING is set, else off), `otlp`, `appinsights` or `off`.",
    },
    SettingDoc {
        name: "OTEL_EXPORTER_OTLP_ENDPOINT",
        default: "(unset)",
        description: "Base URL of an OTLP/HTTP (protobuf) collector, e.g. http://127.0.0.1:4318; traces go to /v1/traces and metrics to /v1/metrics.",
    },
    SettingDoc {
        name: "APPLICATIONINSIGHTS_CONNECTION_STRING",
        default: "(unset)",
        description: "Application Insights connection string (set by the deployment); the handler exports traces and metrics to it directly.",
    },
    SettingDoc {
        name: "OTEL_SERVICE_NAME",
        default: "meterline",
        description: "service.name of exported telemetry (the cloud role name in Application Insights).",
    },
    SettingDoc {
        name: "METERLINE_TELEMETRY_METRIC_INTERVAL_SECS",
        default: "60",
        description: "How often metrics are exported, in seconds (they are also flushed at shutdown). Range: 1 to 3600.",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_BATCH_SIZE",
        default: "50000",
        description: "Usage rollup: most raw usage events one rollup step (one transaction) takes past the watermark. Range: 1 to 1000000.",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_MAX_RUN_SECS",
        default: "60",
        description: "Usage rollup: the work budget of one invocation, in seconds, far below the host's functionTimeout; the next invocation continues. Range: 1 to 240.",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_SETTLE_SECS",
        default: "120",
        description: "Usage rollup: events recorded less than this long ago stay in the tail; must exceed twice the longest time from recording an event to its commit. Range: 0 to 3600.",
    },
    SettingDoc {
        name: "METERLINE_USAGE_LATENESS_SECS",
        default: "900",
        description: "How long after a window (hour, day, month) ends its events may still arrive; a month's billing statements are written only after it. Range: 0 to 86400.",
    },
    SettingDoc {
        name: "METERLINE_USAGE_RETENTION_DAYS",
        default: "35",
        description: "Raw usage events older than this are purged, and only once rolled up. Range: 2 to 3660 (ten years).",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_LAG_ALERT_SECS",
        default: "1800",
        description: "When the rollup's complete-through time falls this far behind, one meterline.usage.rollup-lagging.v1 event is emitted per lag episode. Range: 1 to 86400.",
    },
    SettingDoc {
        name: "METERLINE_QUOTA_LEASE_SECS",
        default: "5",
        description: "How long a process may spend a quota lease (a grant of a tenant's units, spent in memory; docs/usage.md) before it asks the store again, in seconds; 0: every metered request debits the store's counter itself. Range: 0 to 60.",
    },
    SettingDoc {
        name: "METERLINE_QUOTA_LEASE_TARGET_MS",
        default: "500",
        description: "A quota grant covers about this long of the process's recent spending (at least one request, at most half of what the quota has left). Range: 1 to 60000.",
    },
    SettingDoc {
        name: "METERLINE_REFUSAL_AUDIT_WINDOW_SECS",
        default: "60",
        description: "The audit trail records a caller's first 401, 403 or 429 of an operation and answer in this many seconds as it happens, counts the repeats, and appends one event with their count when the window ends (docs/security.md, \"Repeated refusals\"). 0: every refusal is audited on its own. Range: 0 to 3600.",
    },
    SettingDoc {
        name: "METERLINE_RATE_LEASE_MS",
        default: "500",
        description: "How long a process may spend a batch of a client's rate-limit steps taken from the store at once (docs/usage.md, \"Rate leases\"). A window of the rate limit may admit up to this much more of the rate. 0: one store step per request. Range: 0 to 5000.",
    },
    SettingDoc {
        name: "METERLINE_STANDALONE_TIMERS",
        default: "true",
        description: "Standalone `serve` only: run the timer functions' jobs in-process on their schedules (the Functions host runs them otherwise).",
    },
    SettingDoc {
        name: "METERLINE_SHUTDOWN_TIMEOUT_SECS",
        default: "10",
        description: "How long a graceful shutdown waits for in-flight requests. Range: 0 to 600.",
    },
    SettingDoc {
        name: "METERLINE_SERVICEBUS_NAMESPACE",
        default: "(unset)",
        description: "Outbox publisher: the fully qualified Service Bus namespace to send to with the managed identity, e.g. meterline.servicebus.windows.net (the identity needs Azure Service Bus Data Sender). Unset with no connection string: events stay in the outbox.",
    },
    SettingDoc {
        name: "METERLINE_SERVICEBUS_CONNECTION_STRING",
        default: "(unset)",
        description: "Secret. Fallback to the managed identity: a SAS connection string (Endpoint=sb://...;SharedAccessKeyName=...;SharedAccessKey=...) the outbox publisher signs with. Takes precedence over METERLINE_SERVICEBUS_NAMESPACE.",
    },
    SettingDoc {
        name: "METERLINE_SERVICEBUS_CONNECTION_STRING_SECRET_NAME",
        default: "(unset)",
        description: "With METERLINE_KEYVAULT_URL: the Key Vault secret holding the SAS connection string (read at startup, refreshed on schedule).",
    },
    SettingDoc {
        name: "METERLINE_OUTBOX_TOPIC",
        default: "meterline-events",
        description: "The Service Bus topic (or queue) the outbox publisher sends Meterline's events to.",
    },
    SettingDoc {
        name: "METERLINE_OUTBOX_SOURCE",
        default: "/meterline",
        description: "The CloudEvents `source` of every event Meterline publishes.",
    },
    SettingDoc {
        name: "METERLINE_OUTBOX_BATCH_SIZE",
        default: "100",
        description: "Outbox events one publisher read takes; a run reads again while batches come back full, for up to 20 s (the timer runs every 30 s). Range: 1 to 1000.",
    },
    SettingDoc {
        name: "METERLINE_OUTBOX_SEND_TIMEOUT_SECS",
        default: "10",
        description: "Timeout of one HTTP try when sending to Service Bus (a send is retried up to 3 times with backoff). Range: 1 to 60.",
    },
    SettingDoc {
        name: "METERLINE_MANAGED_IDENTITY_CLIENT_ID",
        default: "(system-assigned)",
        description: "Client id of the user-assigned managed identity used for Service Bus and Key Vault; unset: the system-assigned identity.",
    },
    SettingDoc {
        name: "METERLINE_KEYVAULT_URL",
        default: "(unset)",
        description: "A Key Vault (https://<name>.vault.azure.net) to read the secrets named by the *_SECRET_NAME settings from at startup, with the managed identity (Key Vault Secrets User).",
    },
    SettingDoc {
        name: "METERLINE_KEYVAULT_REFRESH_SECS",
        default: "3600",
        description: "How often secrets read from Key Vault are read again, so a rotated secret takes effect without a restart where it can (the Service Bus key). Range: 1 to 86400.",
    },
    SettingDoc {
        name: "METERLINE_KEYVAULT_TIMEOUT_SECS",
        default: "5",
        description: "Timeout of one HTTP try when reading a secret from Key Vault (a read is retried up to 3 times with backoff). Range: 1 to 60.",
    },
    SettingDoc {
        name: "METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME",
        default: "(unset)",
        description: "With METERLINE_KEYVAULT_URL: the Key Vault secret holding the SQL Server connection string, instead of METERLINE_MSSQL_CONNECTION_STRING (read at startup).",
    },
    SettingDoc {
        name: "METERLINE_CURSOR_KEY_SECRET_NAME",
        default: "(unset)",
        description: "With METERLINE_KEYVAULT_URL: the Key Vault secret holding the cursor signing key, instead of METERLINE_CURSOR_KEY (read at startup).",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_read_is_documented() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
        let source: String = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .collect();
        let documented: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        for read in source.split("get(\"").skip(1).filter_map(|rest| rest.split('"').next()) {
            assert!(documented.contains(&read), "{read} is read but not in SETTINGS");
        }
    }
}
