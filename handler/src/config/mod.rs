//! Typed configuration, read once from the environment (Function App settings are environment variables) and validated at startup.
//!
//! Every setting Meterline reads is listed in [`SETTINGS`]; tests check that `local.settings.json.example`
//! and the README document each one. Secrets are wrapped in [`SecretString`] and never printed.
//!
//! `mod.rs` reads the settings of the process itself (runtime, address, store, logging, limits) and calls one
//! file per concern for the rest: `auth.rs` (token validation), `integration.rs` (Service Bus, outbox, Key
//! Vault), `telemetry.rs` (export), `usage.rs` (rollup and billing); `settings.rs` documents every setting.

use std::net::IpAddr;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use secrecy::SecretString;

mod auth;
mod integration;
mod settings;
mod telemetry;
mod usage;

pub use auth::{AuthConfig, AuthMode};
pub use integration::{IntegrationConfig, KeyVaultConfig};
pub use settings::{SETTINGS, SettingDoc};
pub use telemetry::{TelemetryConfig, TelemetryExport};
pub use usage::UsageConfig;

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
    /// The origins whose pages may call the API from a browser (CORS, `api::cors`).
    pub cors_origins: AllowedOrigins,
    pub auth: AuthConfig,
    /// Signs list cursors; `None` means a random key for this process (never in Azure).
    pub cursor_key: Option<SecretString>,
    /// The outbox publisher's Service Bus target and the Key Vault secrets.
    pub integration: IntegrationConfig,
    pub telemetry: TelemetryConfig,
    pub usage: UsageConfig,
}

impl Config {
    /// Reads the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads settings through `lookup`, so tests can pass a map instead of mutating the process environment.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let get = |name: &str| lookup(name).map(|v| v.trim().to_owned()).filter(|v| !v.is_empty());

        let named_port = |name: &'static str| get(name).map(|raw| (name, raw));
        let host_port =
            match named_port("FUNCTIONS_CUSTOMHANDLER_PORT").or_else(|| named_port("FUNCTIONS_HTTPWORKER_PORT")) {
                // The error names the variable the value came from.
                Some((name, raw)) => Some(parse_port(name, &raw, false)?),
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

        let keyvault = integration::keyvault_config(&get)?;
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

        let max_body_bytes = parse_bounded(
            "METERLINE_MAX_BODY_BYTES",
            get("METERLINE_MAX_BODY_BYTES"),
            1_048_576,
            1..=MAX_BODY_BYTES,
            "the Functions host's own limit on a request body",
        )?;
        let default_workers = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2).min(MAX_WORKERS);
        // actix-web's own limit, which it enforces with a panic.
        let workers = parse_number("METERLINE_WORKERS", get("METERLINE_WORKERS"), default_workers, 1..=MAX_WORKERS)?;
        let shutdown_secs = parse_bounded(
            "METERLINE_SHUTDOWN_TIMEOUT_SECS",
            get("METERLINE_SHUTDOWN_TIMEOUT_SECS"),
            10,
            0..=600,
            "the longest function timeout on a Consumption plan",
        )?;

        let lookup_cache_secs = parse_bounded(
            "METERLINE_LOOKUP_CACHE_SECS",
            get("METERLINE_LOOKUP_CACHE_SECS"),
            5,
            0..=300,
            "another instance serves a suspended tenant or a revoked client for up to this long",
        )?;
        let cors_origins = match get("METERLINE_CORS_ALLOWED_ORIGINS") {
            Some(raw) => {
                AllowedOrigins::parse(&raw).map_err(|m| ConfigError::new("METERLINE_CORS_ALLOWED_ORIGINS", m))?
            }
            None => AllowedOrigins::Listed(Vec::new()),
        };
        let in_azure = get("WEBSITE_INSTANCE_ID").is_some();
        let auth = auth::auth_config(&get, in_azure)?;
        let usage = usage::usage_config(&get)?;
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

        let integration = integration::integration_config(&get, keyvault)?;
        let telemetry = telemetry::telemetry_config(&get)?;

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
            cors_origins,
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

// The parsers every concern file shares; each error names the setting.

/// The origins whose pages may call the API from a browser, in the form browsers send in `Origin`
/// (`scheme://host[:port]`, lowercase, no default port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AllowedOrigins {
    /// `*`: any page may call (the API's credentials are bearer tokens a page must hold, never cookies).
    Any,
    /// These origins only; none by default.
    Listed(Vec<String>),
}

impl AllowedOrigins {
    /// Parses the comma-separated setting: `*` alone, or origins such as `https://app.example.com`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let items: Vec<&str> = raw.split(',').map(str::trim).filter(|i| !i.is_empty()).collect();
        if items == ["*"] {
            return Ok(AllowedOrigins::Any);
        }
        items.iter().map(|item| origin(item)).collect::<Result<_, _>>().map(AllowedOrigins::Listed)
    }

    /// Whether no page of another origin may call (the default).
    pub fn is_none(&self) -> bool {
        matches!(self, AllowedOrigins::Listed(origins) if origins.is_empty())
    }

    /// Whether a page of `origin` (a request's `Origin` field, as the browser sent it) may call.
    pub fn allows(&self, origin: &str) -> bool {
        match self {
            AllowedOrigins::Any => true,
            AllowedOrigins::Listed(origins) => origins.iter().any(|o| o == origin),
        }
    }
}

/// `item` as a browser serializes an origin (`scheme://host[:port]`, lowercase, the default port left out), or
/// why it is none: a value a browser could never send (a bad port, a wildcard host, a non-ASCII name) is refused
/// at startup rather than kept as an origin no page has.
fn origin(item: &str) -> Result<String, String> {
    let refuse = |why: &str| Err(format!("{item:?} is not an origin ({why}); expected e.g. https://app.example.com"));
    // A pasted address often ends in one slash; an origin has none.
    let bare = item.strip_suffix('/').unwrap_or(item);
    if bare == "*" {
        return refuse("`*` must stand alone");
    }
    let Some((scheme, rest)) = bare.split_once("://") else { return refuse("a scheme and a host are required") };
    let scheme = scheme.to_ascii_lowercase();
    let default_port = match scheme.as_str() {
        "https" => 443,
        "http" => 80,
        _ => return refuse("the scheme must be http or https"),
    };
    if rest.contains(['/', '?', '#']) {
        return refuse("an origin has no path, query or fragment");
    }
    if rest.contains('@') {
        return refuse("an origin has no user information");
    }
    let (host, port) = match rest.strip_prefix('[') {
        Some(v6) => {
            let Some((address, after)) = v6.split_once(']') else { return refuse("an unclosed IPv6 address") };
            let Ok(address) = address.parse::<std::net::Ipv6Addr>() else { return refuse("not an IPv6 address") };
            let port = match after {
                "" => None,
                _ => match after.strip_prefix(':') {
                    Some(port) => Some(port),
                    None => return refuse("text after the IPv6 address"),
                },
            };
            (format!("[{address}]"), port)
        }
        None => match rest.rsplit_once(':') {
            Some((host, port)) => (host.to_ascii_lowercase(), Some(port)),
            None => (rest.to_ascii_lowercase(), None),
        },
    };
    if !host.starts_with('[')
        && let Err(why) = host_name(&host)
    {
        return refuse(why);
    }
    let port = match port {
        None => None,
        Some(digits) => match digits.parse::<u16>() {
            Ok(port) if port > 0 && digits.bytes().all(|b| b.is_ascii_digit()) => Some(port),
            _ => return refuse("the port must be a number from 1 to 65535"),
        },
    };
    Ok(match port {
        Some(port) if port != default_port => format!("{scheme}://{host}:{port}"),
        _ => format!("{scheme}://{host}"),
    })
}

/// Whether `host` (lowercase, not an IPv6 address) is a host name or an IPv4 address as browsers write them.
fn host_name(host: &str) -> Result<(), &'static str> {
    if host.contains('*') {
        return Err("wildcards are not supported: list each origin, or `*` alone for any");
    }
    if !host.is_ascii() {
        return Err("write an internationalized name in its xn-- form, as browsers send it");
    }
    // A fully qualified name may end in a dot, and a page served under it sends it so (`https://a.test.`).
    let qualified = host.strip_suffix('.');
    let labels: Vec<&str> = qualified.unwrap_or(host).split('.').collect();
    let label_ok = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    };
    if !labels.iter().all(label_ok) {
        return Err("not a host name");
    }
    // A name whose last label is a number is an IPv4 address to a browser: four decimal parts, no leading zeros.
    if labels.last().is_some_and(|l| l.bytes().all(|b| b.is_ascii_digit())) {
        let canonical = |l: &&str| l.parse::<u8>().is_ok_and(|n| n.to_string() == **l);
        if labels.len() != 4 || !labels.iter().all(canonical) || qualified.is_some() {
            return Err("not an IPv4 address");
        }
    }
    Ok(())
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

/// The largest request body the Functions host passes on (`FUNCTIONS_REQUEST_BODY_SIZE_LIMIT`'s default, 100 MiB).
const MAX_BODY_BYTES: usize = 104_857_600;

/// The most HTTP worker threads actix-web starts.
const MAX_WORKERS: usize = 512;

/// A whole-number setting within `range` (every number Meterline reads has an upper bound, so no value can
/// overflow a duration or an instant later), or `default` when unset.
fn parse_number(
    setting: &'static str,
    raw: Option<String>,
    default: usize,
    range: RangeInclusive<usize>,
) -> Result<usize, ConfigError> {
    parse_bounded(setting, raw, default, range, "")
}

/// [`parse_number`], saying `why` the upper bound is what it is when a value passes it.
fn parse_bounded(
    setting: &'static str,
    raw: Option<String>,
    default: usize,
    range: RangeInclusive<usize>,
    why: &str,
) -> Result<usize, ConfigError> {
    let Some(raw) = raw else { return Ok(default) };
    let (min, max) = (*range.start(), *range.end());
    match raw.parse::<u128>() {
        Ok(n) if n > max as u128 => {
            let why = if why.is_empty() { String::new() } else { format!(" ({why})") };
            Err(ConfigError::new(setting, format!("expected at most {max}{why}, got {n}")))
        }
        Ok(n) if n >= min as u128 => Ok(n as usize),
        _ => Err(ConfigError::new(setting, format!("expected a whole number from {min} to {max}, got {raw:?}"))),
    }
}

/// `count` times `unit`, refused (naming the setting) where the product does not fit a duration: checked, never
/// wrapped, even though the bounds of [`parse_number`] already keep every setting far from that.
fn duration(setting: &'static str, count: usize, unit: Duration) -> Result<Duration, ConfigError> {
    u32::try_from(count)
        .ok()
        .and_then(|count| unit.checked_mul(count))
        .ok_or_else(|| ConfigError::new(setting, format!("{count} is too long a time")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// The configuration these settings give (a map instead of the process environment).
    pub(super) fn config(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        Config::from_lookup(|name| map.get(name).cloned())
    }

    #[test]
    fn allowed_origins_are_read_as_browsers_send_them() {
        use super::AllowedOrigins;
        let listed = AllowedOrigins::parse(
            " HTTPS://App.Example.com:443/ , http://localhost:5173,http://[::1]:80,http://[0:0::1]:8080,http://10.0.0.1:3000,https://xn--bcher-kva.example,https://a.test.",
        )
        .unwrap();
        assert_eq!(
            listed,
            AllowedOrigins::Listed(vec![
                "https://app.example.com".into(),
                "http://localhost:5173".into(),
                "http://[::1]".into(),
                "http://[::1]:8080".into(),
                "http://10.0.0.1:3000".into(),
                "https://xn--bcher-kva.example".into(),
                "https://a.test.".into(),
            ])
        );
        assert!(listed.allows("http://localhost:5173") && !listed.allows("http://localhost:5174"));
        assert!(!listed.allows("null") && !listed.allows("https://app.example.com.evil.test"));
        assert_eq!(AllowedOrigins::parse("*").unwrap(), AllowedOrigins::Any);
        assert!(AllowedOrigins::parse("*").unwrap().allows("https://anything.test"));
        assert_eq!(AllowedOrigins::parse(" , ").unwrap(), AllowedOrigins::Listed(vec![]));
        for bad in [
            "*,https://a.test",
            "https://a.test/app",
            "https://a.test?x=1",
            "ftp://a.test",
            "a.test",
            "https://user@a.test",
            "null",
            "https://a.test:abc",
            "https://a.test:99999",
            "https://a.test:65536",
            "https://a.test:0",
            "https://a.test:+8",
            "https://app.example.test:8443x",
            "https://a.test:",
            "https://*.example.com",
            "https://a..test",
            "https://a.test..",
            "http://10.0.0.1.",
            "https://-a.test",
            "https://1.2.3.4.5",
            "http://01.2.3.4",
            "https://bücher.example",
            "http://[::1",
            "http://[::1]x",
            "http://[nope]",
        ] {
            let err = AllowedOrigins::parse(bad).unwrap_err();
            assert!(err.contains("is not an origin"), "{bad}: {err}");
        }
    }

    /// The `Range: A to B` a setting's documentation states, if it states one.
    fn documented_range(description: &str) -> Option<(u64, u64)> {
        let mut words = description.split("Range: ").nth(1)?.split(' ');
        let low = words.next()?.parse().ok()?;
        let high = words.next().filter(|w| *w == "to").and(words.next())?;
        Some((low, high.trim_end_matches(['.', ',']).parse().ok()?))
    }

    /// The ranges `handler settings` prints are the ones the parsers enforce: both ends are accepted, one past
    /// either is refused naming the setting (the ranges are written twice, in the parsers and in the text).
    #[test]
    fn every_documented_range_is_the_one_enforced() {
        let mut checked = 0;
        for setting in crate::config::SETTINGS {
            let Some((low, high)) = documented_range(setting.description) else { continue };
            for ok in [low, high] {
                let read = config(&[(setting.name, &ok.to_string())]);
                assert!(read.is_ok(), "{} = {ok} is in its documented range: {:?}", setting.name, read.err());
            }
            for past in [low.checked_sub(1), high.checked_add(1)].into_iter().flatten() {
                let err = config(&[(setting.name, &past.to_string())])
                    .expect_err(&format!("{} = {past} is outside its documented range", setting.name));
                assert_eq!(err.setting, setting.name, "{err}");
            }
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} settings document a range");
    }

    #[test]
    fn workers_are_bounded_by_what_the_server_starts() {
        assert_eq!(config(&[("METERLINE_WORKERS", "512")]).unwrap().workers, 512);
        let err = config(&[("METERLINE_WORKERS", "100000")]).unwrap_err();
        assert!(err.to_string().contains("METERLINE_WORKERS") && err.to_string().contains("at most 512"), "{err}");
    }

    #[test]
    fn every_number_has_an_upper_bound_so_no_value_overflows_later() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/config");
        let source: String = std::fs::read_dir(&dir)
            .unwrap()
            .map(|entry| std::fs::read_to_string(entry.unwrap().path()).unwrap())
            .collect();
        let numbers: Vec<&str> = source
            .split("parse_number(")
            .chain(source.split("parse_bounded("))
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"')?.split('"').next())
            .filter(|name| name.chars().all(|c| c.is_ascii_uppercase() || c == '_'))
            .collect();
        assert!(numbers.len() >= 20, "{numbers:?}");
        for setting in numbers {
            for huge in ["18446744073709551615", "213503982334602", "340282366920938463463374607431768211456"] {
                let err = config(&[(setting, huge)]).unwrap_err();
                assert_eq!(err.setting, setting, "{setting}={huge}");
                assert_eq!(err.to_string().lines().count(), 1);
            }
        }
        let err = config(&[("METERLINE_USAGE_RETENTION_DAYS", "213503982334602")]).unwrap_err();
        assert!(err.to_string().contains("at most 3660"), "{err}");
        let err = config(&[("METERLINE_ROLLUP_SETTLE_SECS", "18446744073709551615")]).unwrap_err();
        assert!(err.to_string().contains("at most 3600"), "{err}");
        let longest = config(&[("METERLINE_USAGE_RETENTION_DAYS", "3660"), ("METERLINE_ROLLUP_SETTLE_SECS", "3600")]);
        let usage = longest.unwrap().usage;
        assert_eq!(usage.retention, Duration::from_secs(3660 * 86_400));
        assert_eq!(usage.rollup_settle, Duration::from_secs(3600));
        assert!(duration("X", usize::MAX, Duration::from_secs(86_400)).is_err(), "checked, not wrapped");
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
            (vec![("FUNCTIONS_HTTPWORKER_PORT", "99999")], "FUNCTIONS_HTTPWORKER_PORT"),
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
            (vec![("METERLINE_KEYVAULT_TIMEOUT_SECS", "abc")], "METERLINE_KEYVAULT_TIMEOUT_SECS"),
            (vec![("METERLINE_KEYVAULT_REFRESH_SECS", "86401")], "METERLINE_KEYVAULT_REFRESH_SECS"),
            (vec![("METERLINE_OUTBOX_BATCH_SIZE", "0")], "METERLINE_OUTBOX_BATCH_SIZE"),
            (vec![("METERLINE_OUTBOX_SEND_TIMEOUT_SECS", "soon")], "METERLINE_OUTBOX_SEND_TIMEOUT_SECS"),
        ] {
            let err = config(&pairs).unwrap_err();
            assert_eq!(err.setting, setting, "{pairs:?}");
            assert!(err.to_string().starts_with(setting));
        }
    }

    #[test]
    fn secrets_do_not_print() {
        let c =
            config(&[("METERLINE_STORE", "mssql"), ("METERLINE_MSSQL_CONNECTION_STRING", "Server=x;Password=hunter2")])
                .unwrap();
        assert!(!c.auto_migrate);
        assert!(!format!("{c:?}").contains("hunter2"));
        let sas = config(&[(
            "METERLINE_SERVICEBUS_CONNECTION_STRING",
            "Endpoint=sb://x/;SharedAccessKeyName=k;SharedAccessKey=hunter3",
        )])
        .unwrap();
        assert!(!format!("{sas:?}").contains("hunter3"));
    }
}
