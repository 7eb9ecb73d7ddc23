//! Typed configuration, read once from the environment (Function App settings are environment variables) and validated at startup.
//!
//! Every setting Meterline reads is listed in [`SETTINGS`]; tests check that `local.settings.json.example`
//! and the README document each one. Secrets are wrapped in [`SecretString`] and never printed.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

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
        name: "METERLINE_LOG_FORMAT",
        default: "json",
        description: "`json` (one JSON object per line, for the host and Application Insights) or `text` (for a terminal).",
    },
    SettingDoc {
        name: "METERLINE_MAX_BODY_BYTES",
        default: "1048576",
        description: "Largest request body accepted by the API, in bytes; larger bodies get 413.",
    },
    SettingDoc { name: "METERLINE_WORKERS", default: "number of CPUs", description: "Number of HTTP worker threads." },
    SettingDoc {
        name: "METERLINE_LOOKUP_CACHE_SECS",
        default: "5",
        description: "How long tenant, plan and API-client lookups are cached per process; a change made through another instance applies within this time. 0 turns the cache off.",
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
        description: "Tolerance for exp and nbf, in seconds (at most 300).",
    },
    SettingDoc {
        name: "METERLINE_AUTH_JWKS_REFRESH_SECS",
        default: "3600",
        description: "Age after which the identity provider's signing keys are refreshed in the background.",
    },
    SettingDoc {
        name: "METERLINE_AUTH_JWKS_MIN_REFETCH_SECS",
        default: "300",
        description: "Least time between two key fetches caused by tokens with an unknown key id (kid).",
    },
    SettingDoc {
        name: "METERLINE_AUTH_TOKEN_CACHE_SIZE",
        default: "10000",
        description: "How many validated tokens are kept (until they expire) so a busy client pays for signature checks once.",
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
        description: "How often metrics are exported, in seconds (they are also flushed at shutdown).",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_BATCH_SIZE",
        default: "50000",
        description: "Usage rollup: most raw usage events one rollup step (one transaction) takes past the watermark.",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_MAX_RUN_SECS",
        default: "60",
        description: "Usage rollup: the work budget of one invocation (at most 240, far below the host's functionTimeout); the next invocation continues.",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_SETTLE_SECS",
        default: "120",
        description: "Usage rollup: events recorded less than this long ago stay in the tail; must exceed twice the longest time from recording an event to its commit.",
    },
    SettingDoc {
        name: "METERLINE_USAGE_LATENESS_SECS",
        default: "900",
        description: "How long after a window (hour, day, month) ends its events may still arrive; a month's billing statements are written only after it (at most 86400).",
    },
    SettingDoc {
        name: "METERLINE_USAGE_RETENTION_DAYS",
        default: "35",
        description: "Raw usage events older than this are purged, and only once rolled up (at least 2).",
    },
    SettingDoc {
        name: "METERLINE_ROLLUP_LAG_ALERT_SECS",
        default: "1800",
        description: "When the rollup's complete-through time falls this far behind, one meterline.usage.rollup-lagging.v1 event is emitted per lag episode.",
    },
    SettingDoc {
        name: "METERLINE_STANDALONE_TIMERS",
        default: "true",
        description: "Standalone `serve` only: run the timer functions' jobs in-process on their schedules (the Functions host runs them otherwise).",
    },
    SettingDoc {
        name: "METERLINE_SHUTDOWN_TIMEOUT_SECS",
        default: "10",
        description: "How long a graceful shutdown waits for in-flight requests.",
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
        description: "Outbox events one publisher read takes; a run reads again while batches come back full, for up to 20 s (the timer runs every 30 s).",
    },
    SettingDoc {
        name: "METERLINE_OUTBOX_SEND_TIMEOUT_SECS",
        default: "10",
        description: "Timeout of one HTTP try when sending to Service Bus (a send is retried up to 3 times with backoff).",
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
        description: "How often secrets read from Key Vault are read again, so a rotated secret takes effect without a restart where it can (the Service Bus key).",
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

/// A setting with an unusable value; the message names the setting.
#[derive(Debug, thiserror::Error)]
#[error("{setting}: {message}")]
pub struct ConfigError {
    pub setting: &'static str,
    pub message: String,
}

impl ConfigError {
    fn new(setting: &'static str, message: impl Into<String>) -> Self {
        Self { setting, message: message.into() }
    }
}

/// How the process was started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Runtime {
    /// Launched by the Azure Functions host as a custom handler.
    FunctionsHost { worker_id: Option<String> },
    /// Started on its own (local development, tests, containers).
    Standalone,
}

/// Where to store data.
#[derive(Debug, Clone)]
pub enum StoreConfig {
    Sqlite { path: PathBuf },
    Mssql { connection_string: SecretString },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Text,
}

/// How bearer tokens are validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Entra ID or another OpenID Connect provider, through discovery and JWKS.
    Entra { authority: String, audiences: Vec<String> },
    /// The local development key; never in Azure.
    Local { key_path: PathBuf },
}

/// Where OpenTelemetry traces and metrics go.
#[derive(Debug, Clone)]
pub enum TelemetryExport {
    /// Nothing is exported; no exporter, thread or instrument exists.
    Off,
    /// OTLP over HTTP (protobuf) to a collector; `endpoint` is the base URL.
    Otlp { endpoint: String },
    /// Straight to Application Insights' ingestion endpoint named by the connection string.
    AppInsights { connection_string: SecretString },
}

/// Telemetry export settings.
#[derive(Debug, Clone)]
pub struct TelemetryConfig {
    pub export: TelemetryExport,
    pub service_name: String,
    pub metric_interval: Duration,
}

/// Token validation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Lower-cased directory ids; `None` accepts any directory (tenants still have to be registered).
    pub allowed_tenants: Option<Vec<String>>,
    /// Lower-cased directory ids whose tokens may hold `Platform.Admin`; `None`: any accepted directory.
    pub platform_directories: Option<Vec<String>>,
    pub clock_skew: Duration,
    pub jwks_refresh: Duration,
    pub jwks_min_refetch: Duration,
    pub token_cache_size: usize,
}

/// The whole validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub runtime: Runtime,
    /// True when an Azure instance id is present (App Service / Functions in Azure).
    pub in_azure: bool,
    pub bind_address: IpAddr,
    pub port: u16,
    pub store: StoreConfig,
    pub auto_migrate: bool,
    pub log_filter: String,
    pub log_format: LogFormat,
    pub max_body_bytes: usize,
    pub workers: usize,
    pub shutdown_timeout: Duration,
    /// How long tenant, plan and API-client lookups are cached ([`crate::lookups`]).
    pub lookup_cache_ttl: Duration,
    pub auth: AuthConfig,
    /// Signs list cursors; `None` means a random key for this process (never in Azure).
    pub cursor_key: Option<SecretString>,
    /// The outbox publisher's Service Bus target and the Key Vault secrets.
    pub integration: IntegrationConfig,
    pub telemetry: TelemetryConfig,
    pub usage: UsageConfig,
}

/// Where the outbox publisher sends, and which secrets come from Key Vault.
#[derive(Debug, Clone)]
pub struct IntegrationConfig {
    /// Fully qualified Service Bus namespace (`host[:port]`) for managed-identity sends.
    pub servicebus_namespace: Option<String>,
    /// SAS fallback; a cell because a Key Vault refresh may replace it.
    pub servicebus_connection_string: Option<crate::azure::SecretCell>,
    pub outbox_topic: String,
    pub outbox_source: String,
    pub outbox_batch_size: usize,
    pub outbox_send_timeout: Duration,
    pub managed_identity_client_id: Option<String>,
    pub keyvault: Option<KeyVaultConfig>,
}

/// Secrets to read from Key Vault at startup (each replaces the setting of the same name without `_SECRET_NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultConfig {
    pub url: String,
    pub refresh: Duration,
    pub mssql_connection_string_secret: Option<String>,
    pub cursor_key_secret: Option<String>,
    pub servicebus_connection_string_secret: Option<String>,
}

impl KeyVaultConfig {
    /// Every secret name configured.
    pub fn secret_names(&self) -> Vec<&str> {
        [&self.mssql_connection_string_secret, &self.cursor_key_secret, &self.servicebus_connection_string_secret]
            .into_iter()
            .filter_map(|n| n.as_deref())
            .collect()
    }
}

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
}

fn usage_config(get: &dyn Fn(&str) -> Option<String>) -> Result<UsageConfig, ConfigError> {
    let batch = parse_number("METERLINE_ROLLUP_BATCH_SIZE", get("METERLINE_ROLLUP_BATCH_SIZE"), 50_000, 1)?;
    let max_run = parse_number("METERLINE_ROLLUP_MAX_RUN_SECS", get("METERLINE_ROLLUP_MAX_RUN_SECS"), 60, 1)?;
    if max_run > 240 {
        return Err(ConfigError::new(
            "METERLINE_ROLLUP_MAX_RUN_SECS",
            format!("at most 240 seconds (the host kills invocations at functionTimeout), got {max_run}"),
        ));
    }
    let settle = parse_number("METERLINE_ROLLUP_SETTLE_SECS", get("METERLINE_ROLLUP_SETTLE_SECS"), 120, 0)?;
    let lateness = parse_number("METERLINE_USAGE_LATENESS_SECS", get("METERLINE_USAGE_LATENESS_SECS"), 900, 0)?;
    if lateness > 86_400 {
        return Err(ConfigError::new("METERLINE_USAGE_LATENESS_SECS", format!("at most 86400, got {lateness}")));
    }
    let retention_days = parse_number("METERLINE_USAGE_RETENTION_DAYS", get("METERLINE_USAGE_RETENTION_DAYS"), 35, 2)?;
    let lag_alert = parse_number("METERLINE_ROLLUP_LAG_ALERT_SECS", get("METERLINE_ROLLUP_LAG_ALERT_SECS"), 1800, 1)?;
    let standalone_timers = match get("METERLINE_STANDALONE_TIMERS") {
        Some(raw) => parse_bool("METERLINE_STANDALONE_TIMERS", &raw)?,
        None => true,
    };
    Ok(UsageConfig {
        rollup_batch_size: u32::try_from(batch).unwrap_or(u32::MAX),
        rollup_max_run: Duration::from_secs(max_run as u64),
        rollup_settle: Duration::from_secs(settle as u64),
        lateness: Duration::from_secs(lateness as u64),
        retention: Duration::from_secs(retention_days as u64 * 86_400),
        lag_alert: Duration::from_secs(lag_alert as u64),
        standalone_timers,
    })
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can pass a map instead of mutating the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

        let host_port = match get("FUNCTIONS_CUSTOMHANDLER_PORT").or_else(|| get("FUNCTIONS_HTTPWORKER_PORT")) {
            Some(raw) => Some(parse_port("FUNCTIONS_CUSTOMHANDLER_PORT", &raw, false)?),
            None => None,
        };
        let (runtime, bind_address, port) = match host_port {
            Some(port) => {
                let worker_id = get("FUNCTIONS_CUSTOMHANDLER_WORKER_ID").or_else(|| get("FUNCTIONS_HTTPWORKER_ID"));
                // The host always calls 127.0.0.1, and the invocation routes served in host mode carry no
                // credentials: a bind address beyond loopback is refused rather than ignored.
                if let Some(raw) = get("METERLINE_BIND_ADDRESS") {
                    let loopback = raw.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback());
                    if !loopback {
                        return Err(ConfigError::new(
                            "METERLINE_BIND_ADDRESS",
                            format!(
                                "under the Functions host the handler listens on 127.0.0.1 only (its invocation routes \
                                 trust their caller); {raw:?} is not a loopback address: unset it"
                            ),
                        ));
                    }
                }
                (Runtime::FunctionsHost { worker_id }, IpAddr::from([127, 0, 0, 1]), port)
            }
            None => {
                let bind = match get("METERLINE_BIND_ADDRESS") {
                    Some(raw) => raw.parse().map_err(|_| {
                        ConfigError::new("METERLINE_BIND_ADDRESS", format!("expected an IP address, got {raw:?}"))
                    })?,
                    None => IpAddr::from([127, 0, 0, 1]),
                };
                let port = match get("METERLINE_PORT") {
                    Some(raw) => parse_port("METERLINE_PORT", &raw, true)?,
                    None => 7071,
                };
                (Runtime::Standalone, bind, port)
            }
        };

        let keyvault = keyvault_config(&get)?;
        let store = match get("METERLINE_STORE").as_deref().unwrap_or("sqlite") {
            "sqlite" => StoreConfig::Sqlite {
                path: get("METERLINE_SQLITE_PATH").map(PathBuf::from).unwrap_or_else(|| "data/meterline.db".into()),
            },
            "mssql" => StoreConfig::Mssql {
                connection_string: match get("METERLINE_MSSQL_CONNECTION_STRING") {
                    Some(value) => SecretString::from(value),
                    // Filled in from Key Vault at startup (`Config::apply_vault_secrets`).
                    None if keyvault.as_ref().is_some_and(|k| k.mssql_connection_string_secret.is_some()) => {
                        SecretString::from(String::new())
                    }
                    None => {
                        return Err(ConfigError::new(
                            "METERLINE_MSSQL_CONNECTION_STRING",
                            "required when METERLINE_STORE=mssql (or name its Key Vault secret with METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME)",
                        ));
                    }
                },
            },
            other => {
                return Err(ConfigError::new(
                    "METERLINE_STORE",
                    format!("expected `sqlite` or `mssql`, got {other:?}"),
                ));
            }
        };
        let auto_migrate = match get("METERLINE_AUTO_MIGRATE") {
            Some(raw) => parse_bool("METERLINE_AUTO_MIGRATE", &raw)?,
            None => matches!(store, StoreConfig::Sqlite { .. }),
        };

        let log_format = match get("METERLINE_LOG_FORMAT").as_deref().unwrap_or("json") {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                return Err(ConfigError::new(
                    "METERLINE_LOG_FORMAT",
                    format!("expected `json` or `text`, got {other:?}"),
                ));
            }
        };
        let log_filter = get("METERLINE_LOG").or_else(|| get("RUST_LOG")).unwrap_or_else(|| "info".into());
        tracing_subscriber::EnvFilter::try_new(&log_filter)
            .map_err(|e| ConfigError::new("METERLINE_LOG", format!("invalid filter {log_filter:?}: {e}")))?;

        let max_body_bytes = parse_number("METERLINE_MAX_BODY_BYTES", get("METERLINE_MAX_BODY_BYTES"), 1_048_576, 1)?;
        let default_workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2);
        let workers = parse_number("METERLINE_WORKERS", get("METERLINE_WORKERS"), default_workers, 1)?;
        let shutdown_secs =
            parse_number("METERLINE_SHUTDOWN_TIMEOUT_SECS", get("METERLINE_SHUTDOWN_TIMEOUT_SECS"), 10, 0)?;

        let lookup_cache_secs = parse_number("METERLINE_LOOKUP_CACHE_SECS", get("METERLINE_LOOKUP_CACHE_SECS"), 5, 0)?;
        let in_azure = get("WEBSITE_INSTANCE_ID").is_some();
        let auth = auth_config(&get, in_azure)?;
        let usage = usage_config(&get)?;
        let cursor_key = match get("METERLINE_CURSOR_KEY") {
            Some(key) if key.len() >= 32 => Some(SecretString::from(key)),
            Some(_) => return Err(ConfigError::new("METERLINE_CURSOR_KEY", "must be at least 32 characters")),
            None if keyvault.as_ref().is_some_and(|k| k.cursor_key_secret.is_some()) => None,
            None if in_azure => {
                return Err(ConfigError::new(
                    "METERLINE_CURSOR_KEY",
                    "required in Azure, where instances must verify each other's cursors",
                ));
            }
            None => None,
        };

        let integration = IntegrationConfig {
            servicebus_namespace: get("METERLINE_SERVICEBUS_NAMESPACE").map(|ns| {
                ns.trim_start_matches("https://").trim_start_matches("sb://").trim_end_matches('/').to_owned()
            }),
            servicebus_connection_string: get("METERLINE_SERVICEBUS_CONNECTION_STRING")
                .map(|cs| crate::azure::SecretCell::new(SecretString::from(cs))),
            outbox_topic: get("METERLINE_OUTBOX_TOPIC").unwrap_or_else(|| "meterline-events".into()),
            outbox_source: get("METERLINE_OUTBOX_SOURCE").unwrap_or_else(|| "/meterline".into()),
            outbox_batch_size: parse_number("METERLINE_OUTBOX_BATCH_SIZE", get("METERLINE_OUTBOX_BATCH_SIZE"), 100, 1)?,
            outbox_send_timeout: Duration::from_secs(parse_number(
                "METERLINE_OUTBOX_SEND_TIMEOUT_SECS",
                get("METERLINE_OUTBOX_SEND_TIMEOUT_SECS"),
                10,
                1,
            )? as u64),
            managed_identity_client_id: get("METERLINE_MANAGED_IDENTITY_CLIENT_ID"),
            keyvault,
        };

        let telemetry = telemetry_config(&get)?;

        Ok(Config {
            integration,
            telemetry,
            runtime,
            in_azure,
            auth,
            cursor_key,
            usage,
            bind_address,
            port,
            store,
            auto_migrate,
            log_filter,
            log_format,
            max_body_bytes,
            workers,
            shutdown_timeout: Duration::from_secs(shutdown_secs as u64),
            lookup_cache_ttl: Duration::from_secs(lookup_cache_secs as u64),
        })
    }

    /// A configuration for tests and tools: standalone, SQLite at `path`, everything else default.
    pub fn for_sqlite(path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        Self::from_lookup(|name| match name {
            "METERLINE_SQLITE_PATH" => Some(path.display().to_string()),
            "METERLINE_PORT" => Some("0".into()),
            _ => None,
        })
        .expect("the default configuration is valid")
    }

    pub fn under_functions_host(&self) -> bool {
        matches!(self.runtime, Runtime::FunctionsHost { .. })
    }
}

fn keyvault_config(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<KeyVaultConfig>, ConfigError> {
    let secrets = [
        "METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME",
        "METERLINE_CURSOR_KEY_SECRET_NAME",
        "METERLINE_SERVICEBUS_CONNECTION_STRING_SECRET_NAME",
    ];
    let Some(url) = get("METERLINE_KEYVAULT_URL") else {
        if let Some(name) = secrets.iter().find(|name| get(name).is_some()) {
            return Err(ConfigError::new(
                "METERLINE_KEYVAULT_URL",
                format!("required when {name} names a Key Vault secret"),
            ));
        }
        return Ok(None);
    };
    if !url.starts_with("https://") {
        return Err(ConfigError::new("METERLINE_KEYVAULT_URL", format!("must be an https URL, got {url:?}")));
    }
    let refresh = parse_number("METERLINE_KEYVAULT_REFRESH_SECS", get("METERLINE_KEYVAULT_REFRESH_SECS"), 3600, 1)?;
    Ok(Some(KeyVaultConfig {
        url,
        refresh: Duration::from_secs(refresh as u64),
        mssql_connection_string_secret: get("METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME"),
        cursor_key_secret: get("METERLINE_CURSOR_KEY_SECRET_NAME"),
        servicebus_connection_string_secret: get("METERLINE_SERVICEBUS_CONNECTION_STRING_SECRET_NAME"),
    }))
}

impl Config {
    /// Puts the secrets read from Key Vault where the settings they replace would be.
    pub fn apply_vault_secrets(&mut self, secrets: &crate::azure::keyvault::VaultSecrets) -> Result<(), ConfigError> {
        let Some(vault) = self.integration.keyvault.clone() else { return Ok(()) };
        if let (Some(name), StoreConfig::Mssql { connection_string }) =
            (&vault.mssql_connection_string_secret, &mut self.store)
        {
            *connection_string = secrets.cell(name).map(|c| c.get()).unwrap_or_default();
        }
        if let Some(name) = &vault.cursor_key_secret {
            let key = secrets.cell(name).map(|c| c.get()).unwrap_or_default();
            if secrecy::ExposeSecret::expose_secret(&key).len() < 32 {
                return Err(ConfigError::new(
                    "METERLINE_CURSOR_KEY_SECRET_NAME",
                    format!("the Key Vault secret {name:?} must be at least 32 characters"),
                ));
            }
            self.cursor_key = Some(key);
        }
        if let Some(name) = &vault.servicebus_connection_string_secret {
            self.integration.servicebus_connection_string = secrets.cell(name);
        }
        Ok(())
    }
}

fn auth_config(get: &dyn Fn(&str) -> Option<String>, in_azure: bool) -> Result<AuthConfig, ConfigError> {
    let list = |name: &str| -> Option<Vec<String>> {
        get(name).map(|raw| raw.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
    };
    let mode = match get("METERLINE_AUTH_MODE").as_deref().unwrap_or(if in_azure { "entra" } else { "local" }) {
        "local" if in_azure => {
            return Err(ConfigError::new(
                "METERLINE_AUTH_MODE",
                "local mode trusts a key kept on disk and is refused in Azure (WEBSITE_INSTANCE_ID is set); use entra",
            ));
        }
        "local" => AuthMode::Local {
            key_path: get("METERLINE_AUTH_LOCAL_KEY_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| "data/dev-signing-key.pem".into()),
        },
        "entra" => {
            let authority = get("METERLINE_AUTH_AUTHORITY").ok_or_else(|| {
                ConfigError::new("METERLINE_AUTH_AUTHORITY", "required when METERLINE_AUTH_MODE=entra")
            })?;
            let loopback =
                ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"].iter().any(|p| authority.starts_with(p));
            if !(authority.starts_with("https://") || loopback) {
                return Err(ConfigError::new(
                    "METERLINE_AUTH_AUTHORITY",
                    format!("must be an https URL (plain http only on loopback), got {authority:?}"),
                ));
            }
            let audiences = list("METERLINE_AUTH_AUDIENCES").filter(|a| !a.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    "METERLINE_AUTH_AUDIENCES",
                    "at least one audience is required when METERLINE_AUTH_MODE=entra",
                )
            })?;
            AuthMode::Entra { authority: authority.trim_end_matches('/').to_owned(), audiences }
        }
        other => {
            return Err(ConfigError::new("METERLINE_AUTH_MODE", format!("expected `entra` or `local`, got {other:?}")));
        }
    };
    let allowed_tenants =
        list("METERLINE_AUTH_ALLOWED_TENANTS").map(|l| l.into_iter().map(|t| t.to_ascii_lowercase()).collect());
    let platform_directories = match list("METERLINE_AUTH_PLATFORM_DIRECTORIES").filter(|l| !l.is_empty()) {
        Some(listed) => Some(listed.into_iter().map(|t| t.to_ascii_lowercase()).collect()),
        None => match &mode {
            AuthMode::Entra { authority, .. } => single_tenant_directory(authority).map(|d| vec![d]),
            AuthMode::Local { .. } => None,
        },
    };
    if in_azure && platform_directories.is_none() {
        return Err(ConfigError::new(
            "METERLINE_AUTH_PLATFORM_DIRECTORIES",
            "required in Azure with a multi-tenant authority: every customer directory's administrator can grant \
             the API's app roles, Platform.Admin included, to their own applications",
        ));
    }
    let skew = parse_number("METERLINE_AUTH_CLOCK_SKEW_SECS", get("METERLINE_AUTH_CLOCK_SKEW_SECS"), 60, 0)?;
    if skew > 300 {
        return Err(ConfigError::new("METERLINE_AUTH_CLOCK_SKEW_SECS", format!("at most 300 seconds, got {skew}")));
    }
    let refresh = parse_number("METERLINE_AUTH_JWKS_REFRESH_SECS", get("METERLINE_AUTH_JWKS_REFRESH_SECS"), 3600, 60)?;
    let refetch =
        parse_number("METERLINE_AUTH_JWKS_MIN_REFETCH_SECS", get("METERLINE_AUTH_JWKS_MIN_REFETCH_SECS"), 300, 0)?;
    let cache = parse_number("METERLINE_AUTH_TOKEN_CACHE_SIZE", get("METERLINE_AUTH_TOKEN_CACHE_SIZE"), 10_000, 1)?;
    Ok(AuthConfig {
        mode,
        allowed_tenants,
        platform_directories,
        clock_skew: Duration::from_secs(skew as u64),
        jwks_refresh: Duration::from_secs(refresh as u64),
        jwks_min_refetch: Duration::from_secs(refetch as u64),
        token_cache_size: cache,
    })
}

/// The directory a single-tenant Entra authority names (`https://login.microsoftonline.com/<guid>/...` or
/// `https://sts.windows.net/<guid>/`): only it issues tokens there, so only it can hold `Platform.Admin`.
fn single_tenant_directory(authority: &str) -> Option<String> {
    let rest = authority
        .strip_prefix("https://login.microsoftonline.com/")
        .or_else(|| authority.strip_prefix("https://sts.windows.net/"))?;
    let segment = rest.split('/').next()?;
    segment.parse::<uuid::Uuid>().ok().map(|d| d.to_string())
}

fn telemetry_config(get: &dyn Fn(&str) -> Option<String>) -> Result<TelemetryConfig, ConfigError> {
    let otlp = get("OTEL_EXPORTER_OTLP_ENDPOINT");
    let app_insights = get("APPLICATIONINSIGHTS_CONNECTION_STRING");
    let otlp_export = |endpoint: Option<String>| -> Result<TelemetryExport, ConfigError> {
        let endpoint = endpoint
            .ok_or_else(|| ConfigError::new("OTEL_EXPORTER_OTLP_ENDPOINT", "required when METERLINE_TELEMETRY=otlp"))?;
        if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
            return Err(ConfigError::new(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("expected an http(s) URL, got {endpoint:?}"),
            ));
        }
        Ok(TelemetryExport::Otlp { endpoint: endpoint.trim_end_matches('/').to_owned() })
    };
    let app_insights_export = |connection: Option<String>| -> Result<TelemetryExport, ConfigError> {
        let connection = connection.ok_or_else(|| {
            ConfigError::new("APPLICATIONINSIGHTS_CONNECTION_STRING", "required when METERLINE_TELEMETRY=appinsights")
        })?;
        if !connection.split(';').any(|part| part.trim().to_ascii_lowercase().starts_with("instrumentationkey=")) {
            return Err(ConfigError::new("APPLICATIONINSIGHTS_CONNECTION_STRING", "has no InstrumentationKey"));
        }
        Ok(TelemetryExport::AppInsights { connection_string: SecretString::from(connection) })
    };
    let export = match get("METERLINE_TELEMETRY").as_deref().unwrap_or("auto") {
        "off" => TelemetryExport::Off,
        "otlp" => otlp_export(otlp)?,
        "appinsights" => app_insights_export(app_insights)?,
        "auto" if otlp.is_some() => otlp_export(otlp)?,
        "auto" if app_insights.is_some() => app_insights_export(app_insights)?,
        "auto" => TelemetryExport::Off,
        other => {
            return Err(ConfigError::new(
                "METERLINE_TELEMETRY",
                format!("expected `auto`, `otlp`, `appinsights` or `off`, got {other:?}"),
            ));
        }
    };
    let interval = parse_number(
        "METERLINE_TELEMETRY_METRIC_INTERVAL_SECS",
        get("METERLINE_TELEMETRY_METRIC_INTERVAL_SECS"),
        60,
        1,
    )?;
    Ok(TelemetryConfig {
        export,
        service_name: get("OTEL_SERVICE_NAME").unwrap_or_else(|| "meterline".into()),
        metric_interval: Duration::from_secs(interval as u64),
    })
}

fn parse_port(setting: &'static str, raw: &str, allow_zero: bool) -> Result<u16, ConfigError> {
    match raw.parse::<u16>() {
        Ok(0) if !allow_zero => Err(ConfigError::new(setting, "expected a port number 1-65535, got 0")),
        Ok(port) => Ok(port),
        Err(_) => Err(ConfigError::new(setting, format!("expected a port number 1-65535, got {raw:?}"))),
    }
}

fn parse_bool(setting: &'static str, raw: &str) -> Result<bool, ConfigError> {
    match raw.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" => Ok(true),
        "false" | "0" | "no" => Ok(false),
        _ => Err(ConfigError::new(setting, format!("expected true or false, got {raw:?}"))),
    }
}

fn parse_number(setting: &'static str, raw: Option<String>, default: usize, min: usize) -> Result<usize, ConfigError> {
    match raw {
        None => Ok(default),
        Some(raw) => match raw.parse::<usize>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(ConfigError::new(setting, format!("expected a whole number >= {min}, got {raw:?}"))),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn defaults_are_standalone_sqlite_on_7071() {
        let c = config(&[]).unwrap();
        assert_eq!(c.runtime, Runtime::Standalone);
        assert_eq!(c.port, 7071);
        assert!(c.auto_migrate);
        assert!(matches!(c.store, StoreConfig::Sqlite { ref path } if path == &PathBuf::from("data/meterline.db")));
    }

    #[test]
    fn the_host_port_wins_and_forces_loopback() {
        let c = config(&[
            ("FUNCTIONS_CUSTOMHANDLER_PORT", "41235"),
            ("FUNCTIONS_CUSTOMHANDLER_WORKER_ID", "w-1"),
            ("METERLINE_BIND_ADDRESS", "127.0.0.1"),
            ("METERLINE_PORT", "9000"),
        ])
        .unwrap();
        assert_eq!(c.port, 41235);
        assert_eq!(c.bind_address, IpAddr::from([127, 0, 0, 1]));
        assert_eq!(c.runtime, Runtime::FunctionsHost { worker_id: Some("w-1".into()) });
        let legacy = config(&[("FUNCTIONS_HTTPWORKER_PORT", "5000")]).unwrap();
        assert_eq!(legacy.port, 5000);
        for exposed in ["0.0.0.0", "::", "10.1.2.3", "not-an-address"] {
            let refused = config(&[("FUNCTIONS_CUSTOMHANDLER_PORT", "41235"), ("METERLINE_BIND_ADDRESS", exposed)]);
            assert_eq!(refused.unwrap_err().setting, "METERLINE_BIND_ADDRESS", "{exposed} is refused in host mode");
        }
    }

    #[test]
    fn bad_values_name_their_setting() {
        for (pairs, setting) in [
            (vec![("METERLINE_PORT", "http")], "METERLINE_PORT"),
            (vec![("FUNCTIONS_CUSTOMHANDLER_PORT", "0")], "FUNCTIONS_CUSTOMHANDLER_PORT"),
            (vec![("METERLINE_STORE", "postgres")], "METERLINE_STORE"),
            (vec![("METERLINE_STORE", "mssql")], "METERLINE_MSSQL_CONNECTION_STRING"),
            (vec![("METERLINE_LOG_FORMAT", "xml")], "METERLINE_LOG_FORMAT"),
            (vec![("METERLINE_LOG", "info,[")], "METERLINE_LOG"),
            (vec![("METERLINE_MAX_BODY_BYTES", "0")], "METERLINE_MAX_BODY_BYTES"),
            (vec![("METERLINE_AUTO_MIGRATE", "maybe")], "METERLINE_AUTO_MIGRATE"),
            (vec![("METERLINE_BIND_ADDRESS", "localhost")], "METERLINE_BIND_ADDRESS"),
            (vec![("METERLINE_AUTH_MODE", "oauth")], "METERLINE_AUTH_MODE"),
            (vec![("METERLINE_AUTH_MODE", "entra")], "METERLINE_AUTH_AUTHORITY"),
            (
                vec![("METERLINE_AUTH_MODE", "entra"), ("METERLINE_AUTH_AUTHORITY", "http://idp.example.com")],
                "METERLINE_AUTH_AUTHORITY",
            ),
            (
                vec![
                    ("METERLINE_AUTH_MODE", "entra"),
                    ("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/x/v2.0"),
                ],
                "METERLINE_AUTH_AUDIENCES",
            ),
            (vec![("METERLINE_AUTH_CLOCK_SKEW_SECS", "900")], "METERLINE_AUTH_CLOCK_SKEW_SECS"),
            (vec![("METERLINE_CURSOR_KEY", "short")], "METERLINE_CURSOR_KEY"),
            (vec![("METERLINE_TELEMETRY", "jaeger")], "METERLINE_TELEMETRY"),
            (vec![("METERLINE_TELEMETRY", "otlp")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "127.0.0.1:4318")], "OTEL_EXPORTER_OTLP_ENDPOINT"),
            (vec![("METERLINE_TELEMETRY", "appinsights")], "APPLICATIONINSIGHTS_CONNECTION_STRING"),
            (
                vec![("APPLICATIONINSIGHTS_CONNECTION_STRING", "IngestionEndpoint=x")],
                "APPLICATIONINSIGHTS_CONNECTION_STRING",
            ),
            (vec![("METERLINE_TELEMETRY_METRIC_INTERVAL_SECS", "0")], "METERLINE_TELEMETRY_METRIC_INTERVAL_SECS"),
            (vec![("METERLINE_ROLLUP_MAX_RUN_SECS", "600")], "METERLINE_ROLLUP_MAX_RUN_SECS"),
            (vec![("METERLINE_USAGE_RETENTION_DAYS", "1")], "METERLINE_USAGE_RETENTION_DAYS"),
            (vec![("METERLINE_USAGE_LATENESS_SECS", "90000")], "METERLINE_USAGE_LATENESS_SECS"),
            (vec![("METERLINE_STANDALONE_TIMERS", "sometimes")], "METERLINE_STANDALONE_TIMERS"),
            (vec![("WEBSITE_INSTANCE_ID", "abc"), ("METERLINE_AUTH_MODE", "local")], "METERLINE_AUTH_MODE"),
            (vec![("METERLINE_CURSOR_KEY_SECRET_NAME", "cursor")], "METERLINE_KEYVAULT_URL"),
            (vec![("METERLINE_KEYVAULT_URL", "http://vault.example")], "METERLINE_KEYVAULT_URL"),
            (vec![("METERLINE_OUTBOX_BATCH_SIZE", "0")], "METERLINE_OUTBOX_BATCH_SIZE"),
            (vec![("METERLINE_OUTBOX_SEND_TIMEOUT_SECS", "soon")], "METERLINE_OUTBOX_SEND_TIMEOUT_SECS"),
        ] {
            let err = config(&pairs).unwrap_err();
            assert_eq!(err.setting, setting, "{pairs:?}");
            assert!(err.to_string().starts_with(setting));
        }
    }

    #[test]
    fn auth_defaults_to_local_outside_azure_and_to_entra_inside() {
        let local = config(&[]).unwrap();
        assert_eq!(local.auth.mode, AuthMode::Local { key_path: "data/dev-signing-key.pem".into() });
        let err = config(&[("WEBSITE_INSTANCE_ID", "abc"), ("METERLINE_CURSOR_KEY", &"k".repeat(32))]).unwrap_err();
        assert_eq!(err.setting, "METERLINE_AUTH_AUTHORITY", "in Azure, entra is the default and needs an authority");
        let entra = config(&[
            ("WEBSITE_INSTANCE_ID", "abc"),
            ("METERLINE_CURSOR_KEY", &"k".repeat(32)),
            ("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/organizations/v2.0/"),
            ("METERLINE_AUTH_AUDIENCES", "api://meterline, 6f1c2a3b-0000-0000-0000-000000000000"),
            ("METERLINE_AUTH_ALLOWED_TENANTS", "72F988BF-86F1-41AF-91AB-2D7CD011DB47"),
            ("METERLINE_AUTH_PLATFORM_DIRECTORIES", "0000AAAA-0000-0000-0000-000000000001"),
        ])
        .unwrap();
        assert_eq!(entra.auth.platform_directories, Some(vec!["0000aaaa-0000-0000-0000-000000000001".to_owned()]));
        let AuthMode::Entra { authority, audiences } = &entra.auth.mode else { panic!("entra") };
        assert_eq!(authority, "https://login.microsoftonline.com/organizations/v2.0");
        assert_eq!(audiences.len(), 2);
        assert_eq!(entra.auth.allowed_tenants, Some(vec!["72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned()]));
        let loopback = config(&[
            ("METERLINE_AUTH_MODE", "entra"),
            ("METERLINE_AUTH_AUTHORITY", "http://127.0.0.1:4000"),
            ("METERLINE_AUTH_AUDIENCES", "api://test"),
        ]);
        assert!(loopback.is_ok(), "plain http is fine on loopback, for tests");
        let no_cursor_key = config(&[
            ("WEBSITE_INSTANCE_ID", "abc"),
            ("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"),
            ("METERLINE_AUTH_AUDIENCES", "api://meterline"),
        ]);
        assert_eq!(
            no_cursor_key.unwrap_err().setting,
            "METERLINE_CURSOR_KEY",
            "Azure needs one key for every instance"
        );
    }

    #[test]
    fn platform_admin_comes_from_the_platform_directories_only() {
        let azure = |authority: &str, platform: Option<&str>| {
            let mut pairs = vec![
                ("WEBSITE_INSTANCE_ID", "abc".to_owned()),
                ("METERLINE_CURSOR_KEY", "k".repeat(32)),
                ("METERLINE_AUTH_AUTHORITY", authority.to_owned()),
                ("METERLINE_AUTH_AUDIENCES", "api://meterline".to_owned()),
            ];
            if let Some(platform) = platform {
                pairs.push(("METERLINE_AUTH_PLATFORM_DIRECTORIES", platform.to_owned()));
            }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            config(&pairs)
        };
        let single =
            azure("https://login.microsoftonline.com/72F988BF-86F1-41AF-91AB-2D7CD011DB47/v2.0", None).unwrap();
        assert_eq!(
            single.auth.platform_directories,
            Some(vec!["72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned()]),
            "a single-tenant authority's own directory is the default"
        );
        let multi = azure("https://login.microsoftonline.com/organizations/v2.0", None).unwrap_err();
        assert_eq!(
            multi.setting, "METERLINE_AUTH_PLATFORM_DIRECTORIES",
            "required in Azure for a multi-tenant authority"
        );
        assert!(
            azure("https://login.microsoftonline.com/organizations/v2.0", Some("72f988bf-86f1-41af-91ab-2d7cd011db47"))
                .is_ok()
        );
        let outside = config(&[
            ("METERLINE_AUTH_MODE", "entra"),
            ("METERLINE_AUTH_AUTHORITY", "http://127.0.0.1:4000"),
            ("METERLINE_AUTH_AUDIENCES", "api://test"),
        ])
        .unwrap();
        assert_eq!(outside.auth.platform_directories, None, "outside Azure an unnamed set means any directory");
    }

    #[test]
    fn key_vault_secret_names_stand_in_for_the_settings_they_replace() {
        let c = config(&[
            ("WEBSITE_INSTANCE_ID", "abc"),
            ("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"),
            ("METERLINE_AUTH_AUDIENCES", "api://meterline"),
            ("METERLINE_STORE", "mssql"),
            ("METERLINE_KEYVAULT_URL", "https://meterline.vault.azure.net"),
            ("METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME", "sql"),
            ("METERLINE_CURSOR_KEY_SECRET_NAME", "cursor"),
            ("METERLINE_SERVICEBUS_NAMESPACE", "sb://meterline.servicebus.windows.net/"),
        ])
        .expect("the secrets come from Key Vault, so the settings they replace may be missing");
        let vault = c.integration.keyvault.as_ref().unwrap();
        assert_eq!(vault.secret_names(), vec!["sql", "cursor"]);
        assert_eq!(vault.refresh, Duration::from_secs(3600));
        assert_eq!(c.integration.servicebus_namespace.as_deref(), Some("meterline.servicebus.windows.net"));
        assert_eq!(c.integration.outbox_topic, "meterline-events");
        assert_eq!(c.integration.outbox_source, "/meterline");
    }

    #[test]
    fn telemetry_is_off_unless_an_endpoint_is_configured() {
        assert!(matches!(config(&[]).unwrap().telemetry.export, TelemetryExport::Off));
        let key = "InstrumentationKey=00000000-0000-0000-0000-000000000001;IngestionEndpoint=https://x/";
        let both = config(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
            ("APPLICATIONINSIGHTS_CONNECTION_STRING", key),
        ])
        .unwrap();
        assert!(
            matches!(both.telemetry.export, TelemetryExport::Otlp { ref endpoint } if endpoint == "http://127.0.0.1:4318"),
            "auto prefers an explicit collector"
        );
        let azure = config(&[("APPLICATIONINSIGHTS_CONNECTION_STRING", key)]).unwrap();
        assert!(matches!(azure.telemetry.export, TelemetryExport::AppInsights { .. }));
        assert!(!format!("{azure:?}").contains("00000000-0000-0000-0000-000000000001"), "the key is redacted");
        let off = config(&[("METERLINE_TELEMETRY", "off"), ("APPLICATIONINSIGHTS_CONNECTION_STRING", key)]).unwrap();
        assert!(matches!(off.telemetry.export, TelemetryExport::Off));
        assert_eq!(off.telemetry.service_name, "meterline");
    }

    #[test]
    fn secrets_do_not_print() {
        let c =
            config(&[("METERLINE_STORE", "mssql"), ("METERLINE_MSSQL_CONNECTION_STRING", "Server=x;Password=hunter2")])
                .unwrap();
        assert!(!c.auto_migrate);
        assert!(!format!("{c:?}").contains("hunter2"));
        let sas =
            config(&[("METERLINE_SERVICEBUS_CONNECTION_STRING", "Endpoint=sb://x/;SharedAccessKey=hunter3")]).unwrap();
        assert!(!format!("{sas:?}").contains("hunter3"));
    }

    #[test]
    fn every_setting_read_is_documented() {
        let source = include_str!("config.rs");
        let documented: Vec<_> = SETTINGS.iter().map(|s| s.name).collect();
        for read in source.split("get(\"").skip(1).filter_map(|rest| rest.split('"').next()) {
            if read == "RUST_LOG" || read.starts_with("FUNCTIONS_HTTPWORKER") {
                continue; // aliases of documented settings
            }
            assert!(documented.contains(&read), "{read} is read but not in SETTINGS");
        }
    }
}
