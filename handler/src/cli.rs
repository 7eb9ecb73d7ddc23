//! The command line: `serve` (the default), `migrate`, `run-job`, `rollup-rerun`, `quarantine`, `openapi`, `settings`, `dev-token`, and their exit codes.
//!
//! Exit codes matter to the Functions host: it never restarts a handler that exits 0, so 0 is only
//! returned after a requested shutdown (SIGTERM/SIGINT) or a finished one-shot command.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::{Clock, IdGenerator, SystemClock, TimeOrderedIds};
use crate::config::{Config, Runtime};
use crate::jobs::{self, Job, JobTrigger};
use crate::store::StoreError;
use crate::telemetry::LogSink;

/// Exit code for an unusable configuration.
pub const EXIT_CONFIG: u8 = 2;
/// Exit code for any other failure.
pub const EXIT_FAILURE: u8 = 1;

#[derive(Debug, Parser)]
#[command(
    name = "handler",
    version,
    about = "Meterline: a metered, multi-tenant API backend (Azure Functions custom handler)"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve HTTP: the API, plus the Functions host protocol (the default).
    Serve,
    /// Apply pending schema migrations to the configured store, then exit.
    Migrate,
    /// Run one step of a scheduled job by hand, then exit.
    RunJob {
        #[arg(value_enum)]
        job: Job,
    },
    /// Re-aggregate the usage rollups of every hour window in a range from the raw events, then exit.
    RollupRerun {
        /// Start of the range (RFC 3339), rounded down to the hour.
        #[arg(long)]
        from: chrono::DateTime<chrono::Utc>,
        /// End of the range (RFC 3339, exclusive).
        #[arg(long)]
        to: chrono::DateTime<chrono::Utc>,
    },
    /// Print the OpenAPI document of the API as JSON.
    Openapi,
    /// Inspect and replay Service Bus messages the integration consumer quarantined.
    Quarantine {
        #[command(subcommand)]
        action: QuarantineCommand,
    },
    /// Print every setting Meterline reads (name, default, description) as JSON; needs no configuration.
    Settings,
    /// Local mode only: print a bearer token signed with the development key (`METERLINE_AUTH_LOCAL_KEY_PATH`).
    ///
    /// With the default embedded store, a plan `developer` and a tenant for `--tenant` are created if missing.
    DevToken {
        /// The Entra directory id (`tid`) the token carries; its Meterline tenant is created if missing.
        #[arg(long, default_value = "00000000-0000-0000-0000-00000000d0d0")]
        tenant: uuid::Uuid,
        /// Comma-separated app roles, e.g. Documents.Read,Documents.Write.
        #[arg(
            long,
            value_delimiter = ',',
            default_value = "Documents.Read,Documents.Write,Usage.Read,Audit.Read,Tenant.Admin"
        )]
        roles: Vec<String>,
        /// Comma-separated delegated scopes; when given, the token is a delegated (user) token.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// Lifetime, e.g. 90s, 30m, 1h, 1d; at most 365d.
        #[arg(long, default_value = "1h", value_parser = crate::auth::local::parse_ttl)]
        ttl: std::time::Duration,
        /// The calling application's id (`azp`).
        #[arg(long, default_value = "meterline-dev-client")]
        app_id: String,
    },
}

#[derive(Debug, Subcommand)]
enum QuarantineCommand {
    /// Print quarantined messages, newest first, one JSON object per line (without their bodies).
    List {
        /// How many to print, 1 to 1 000.
        #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..=1000))]
        limit: u32,
    },
    /// Run a quarantined message's stored body through the consumer again; marks it replayed when it applies
    /// (or was applied already), and fails with the reason when it still cannot.
    Replay { id: uuid::Uuid },
}

/// Prints a document to standard output. A reader that stops early (`handler settings | head`) closes the pipe:
/// that ends the output, not the process with a panic.
fn print_document(text: &str) -> ExitCode {
    use std::io::Write as _;
    match writeln!(std::io::stdout().lock(), "{text}") {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("handler: cannot write the output: {err}");
            ExitCode::FAILURE
        }
    }
}

/// Parses the command line and runs the command; the result is the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        let doc = crate::routes::openapi();
        return print_document(&serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes"));
    }
    if let Some(Command::Settings) = cli.command {
        let settings: Vec<_> = crate::config::SETTINGS
            .iter()
            .map(|s| serde_json::json!({"name": s.name, "default": s.default, "description": s.description}))
            .collect();
        return print_document(&serde_json::to_string_pretty(&settings).expect("settings serialize"));
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handler: configuration error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    let command = cli.command.unwrap_or(Command::Serve);
    let sink = if matches!(command, Command::Serve) { LogSink::Split } else { LogSink::Stderr };
    let telemetry = crate::telemetry::init(&config, sink);
    let result = actix_web::rt::System::new().block_on(run(command, config));
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The store's setting names something that is not a usable store: as unusable as a malformed setting.
        Err(err) if err.chain().any(|cause| matches!(cause.downcast_ref(), Some(StoreError::Unusable { .. }))) => {
            // One line, as for a setting refused before anything started.
            eprintln!("handler: configuration error: {err:#}");
            ExitCode::from(EXIT_CONFIG)
        }
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "handler failed");
            eprintln!("handler: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

/// Reads the secrets named by `*_SECRET_NAME` settings from Key Vault into `config`; `serve` keeps them fresh.
async fn load_vault_secrets(config: &mut Config) -> anyhow::Result<Option<crate::azure::keyvault::VaultSecrets>> {
    let Some(vault) = config.integration.keyvault.clone() else { return Ok(None) };
    let credential = crate::azure::managed_identity(config.integration.managed_identity_client_id.as_deref())?;
    let options = crate::azure::keyvault::client_options(&vault.url, vault.timeout);
    let client = crate::azure::keyvault::KeyVault::new(&vault.url, credential, Some(options))?;
    let secrets = crate::azure::keyvault::VaultSecrets::load(client, &vault.secret_names()).await?;
    config.apply_vault_secrets(&secrets)?;
    tracing::info!(vault = %vault.url, secrets = vault.secret_names().len(), "secrets read from Key Vault");
    Ok(Some(secrets))
}

async fn run(command: Command, mut config: Config) -> anyhow::Result<()> {
    let vault = match command {
        Command::Openapi | Command::DevToken { .. } => None,
        _ => load_vault_secrets(&mut config).await?,
    };
    if let (Some(vault), Command::Serve, Some(settings)) = (&vault, &command, &config.integration.keyvault) {
        vault.spawn_refresh(settings.refresh);
    }
    match command {
        Command::Serve => serve(config, vault.iter().map(|v| v.breaker().clone()).collect()).await,
        Command::Migrate => {
            let store = crate::store::open(&config.store, Arc::new(crate::clock::SystemClock)).await?;
            let report = store.migrate().await?;
            let newer = match report.newer.is_empty() {
                true => String::new(),
                false => format!(", newer than this release {:?}", report.newer),
            };
            println!(
                "{} store: applied {:?}, already applied {:?}{newer}",
                store.kind(),
                report.applied,
                report.already_applied
            );
            Ok(())
        }
        Command::RunJob { job } => {
            let store = crate::store::open(&config.store, Arc::new(crate::clock::SystemClock)).await?;
            if config.auto_migrate {
                store.migrate().await?;
            }
            let state = crate::startup::state(config, store, Arc::new(SystemClock), Arc::new(TimeOrderedIds))?;
            let outcome = jobs::run(&state, job, JobTrigger::Cli).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            println!("{}: {}", job.name(), outcome.summary);
            Ok(())
        }
        Command::RollupRerun { from, to } => {
            let store = crate::store::open(&config.store, Arc::new(crate::clock::SystemClock)).await?;
            if config.auto_migrate {
                store.migrate().await?;
            }
            let state = crate::startup::state(config, store, Arc::new(SystemClock), Arc::new(TimeOrderedIds))?;
            let summary = jobs::rollup::rerun(&state, from, to).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            println!("rollup-rerun: {summary}");
            Ok(())
        }
        Command::DevToken { tenant, roles, scopes, ttl, app_id } => {
            let crate::config::AuthMode::Local { key_path } = &config.auth.mode else {
                anyhow::bail!("dev-token needs METERLINE_AUTH_MODE=local: the server must trust the key it signs with");
            };
            let key = crate::auth::local::load_or_create(key_path)?;
            if let crate::config::StoreConfig::Sqlite { .. } = config.store {
                ensure_dev_tenant(&config, tenant, &SystemClock, &TimeOrderedIds).await?;
            }
            let request = crate::auth::local::DevTokenRequest {
                directory_id: tenant.to_string(),
                roles,
                scopes,
                app_id,
                object_id: "00000000-0000-0000-0000-0000000d0e00".into(),
                name: Some("Local Developer".into()),
                ttl,
            };
            println!("{}", crate::auth::local::mint(&key, &request, SystemClock.now().timestamp())?);
            Ok(())
        }
        Command::Quarantine { action } => quarantine(config, action).await,
        Command::Openapi | Command::Settings => unreachable!("handled before configuration is read"),
    }
}

async fn quarantine(config: Config, action: QuarantineCommand) -> anyhow::Result<()> {
    use crate::jobs::integration::{Verdict, process};
    let store = crate::store::open(&config.store, Arc::new(crate::clock::SystemClock)).await?;
    if config.auto_migrate {
        store.migrate().await?;
    }
    match action {
        QuarantineCommand::List { limit } => {
            for m in store.list_quarantine(limit).await? {
                let line = serde_json::json!({
                    "id": m.id,
                    "receivedAt": m.received_at,
                    "messageId": m.message_id,
                    "deliveryCount": m.delivery_count,
                    "deliveries": m.deliveries,
                    "lastReceivedAt": m.last_received_at,
                    "contentType": m.content_type,
                    "reason": m.reason,
                    "bodyBytes": m.raw_body.len(),
                    "replayedAt": m.replayed_at,
                });
                println!("{line}");
            }
            Ok(())
        }
        QuarantineCommand::Replay { id } => {
            let state = crate::startup::state(config, store, Arc::new(SystemClock), Arc::new(TimeOrderedIds))?;
            let message =
                state.store.get_quarantined(id).await?.ok_or_else(|| anyhow::anyhow!("no quarantined message {id}"))?;
            let verdict = process(&state, &message.raw_body).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            let done = match verdict {
                Verdict::Applied { event_type, id, source } => format!("applied {event_type} id={id} source={source}"),
                Verdict::Duplicate { event_type, id, source } => {
                    format!("already applied: {event_type} id={id} source={source}")
                }
                Verdict::Poison(reason) => anyhow::bail!("quarantined message {id} still cannot be applied: {reason}"),
            };
            state.store.mark_quarantine_replayed(id, state.clock.now()).await?;
            println!("replayed {id}: {done}");
            Ok(())
        }
    }
}

/// Creates the `developer` plan and a tenant for `directory` in the embedded store, if missing.
async fn ensure_dev_tenant(
    config: &Config,
    directory: uuid::Uuid,
    clock: &dyn Clock,
    ids: &dyn IdGenerator,
) -> anyhow::Result<()> {
    let store = crate::store::open(&config.store, Arc::new(crate::clock::SystemClock)).await?;
    store.migrate().await?;
    if let Some(tenant) = seed_dev_tenant(store.as_ref(), directory, clock, ids).await? {
        eprintln!("handler: created local tenant {tenant} for directory {directory} on plan developer");
    }
    Ok(())
}

/// `dev-token`'s store side, shared with the in-process test app: the `developer` plan and a tenant for
/// `directory`, each created only if missing. Returns the id of the tenant it created, if it created one.
pub async fn seed_dev_tenant(
    store: &dyn crate::store::Store,
    directory: uuid::Uuid,
    clock: &dyn Clock,
    ids: &dyn IdGenerator,
) -> anyhow::Result<Option<uuid::Uuid>> {
    use crate::store::{OveragePolicy, Plan, StoreError, Tenant, TenantStatus};
    let now = clock.now();
    if store.get_plan("developer").await?.is_none() {
        let plan = Plan {
            code: "developer".into(),
            name: "Developer".into(),
            // Generous, so local work and the schemathesis run are not throttled; real plans come from the API.
            requests_per_minute: 100_000,
            burst: 10_000,
            monthly_quota_units: 100_000_000,
            overage_policy: OveragePolicy::Block,
            currency: "EUR".into(),
            base_price_micros: 0,
            overage_unit_price_micros: 0,
            created_at: now,
            updated_at: now,
            version: 1,
        };
        match store.create_plan(&plan, None).await {
            Ok(()) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if store.get_tenant_by_entra_id(directory).await?.is_some() {
        return Ok(None);
    }
    let tenant = Tenant {
        id: ids.new_id(),
        entra_tenant_id: Some(directory),
        name: format!("Local tenant {}", &directory.to_string()[..8]),
        status: TenantStatus::Active,
        plan_code: "developer".into(),
        created_at: now,
        updated_at: now,
        version: 1,
        billing: Default::default(),
    };
    store.create_tenant(&tenant, None).await?;
    Ok(Some(tenant.id))
}

async fn serve(config: Config, breakers: Vec<Arc<crate::resilience::Breaker>>) -> anyhow::Result<()> {
    let runtime = config.runtime.clone();
    let store_kind = match &config.store {
        crate::config::StoreConfig::Sqlite { path } => format!("sqlite ({})", path.display()),
        crate::config::StoreConfig::Mssql { .. } => "mssql".to_owned(),
    };
    let running = crate::startup::start(config, breakers).await?;
    if let Some(leases) = &running.state.leases {
        // Leases that expire while their tenant is idle go back within a second, not at its next request.
        leases.sweep_every(std::time::Duration::from_secs(1));
    }
    // Repeated refusals counted in a window are audited with their count once it ends.
    let state = &running.state;
    state.refusal_audits.flush_every(
        state.store.clone(),
        state.clock.clone(),
        state.ids.clone(),
        std::time::Duration::from_secs(1),
    );
    if matches!(runtime, Runtime::Standalone) && running.state.config.usage.standalone_timers {
        crate::jobs::schedule::start(running.state.clone().into_inner(), crate::functions::timers());
    }
    let mode = match &runtime {
        Runtime::FunctionsHost { worker_id } => {
            format!("functions-host worker {}", worker_id.as_deref().unwrap_or("?"))
        }
        Runtime::Standalone => "standalone".to_owned(),
    };
    tracing::info!(
        port = running.port,
        mode = %mode,
        store = %store_kind,
        version = env!("CARGO_PKG_VERSION"),
        "meterline listening on {}:{}",
        running.state.config.bind_address,
        running.port
    );
    running.server.await?;
    // The server has drained its requests: give this process's unspent quota back rather than leave it to the
    // reclaim after the lease expires.
    if let Some(leases) = &running.state.leases {
        leases.settle_all().await;
        let (quota, rate) = (leases.stats(), running.state.rate_leases.as_ref().map(|r| r.stats()).unwrap_or_default());
        tracing::info!(
            quota_requests = quota.requests,
            quota_store_transactions = quota.store_transactions,
            rate_requests = rate.requests,
            rate_store_transactions = rate.store_transactions,
            "admission store transactions: {} for {} quota spends, {} for {} rate decisions",
            quota.store_transactions,
            quota.requests,
            rate.store_transactions,
            rate.requests
        );
    }
    let state = &running.state;
    if let Err(err) = state.refusal_audits.flush(&*state.store, state.clock.now(), &*state.ids, true).await {
        tracing::error!(error = ?err, "appending the counts of repeated refusals at shutdown failed");
    }
    let usage = running.state.recorder.stats();
    tracing::info!(
        usage_events = usage.events,
        usage_store_transactions = usage.batches,
        "usage record store transactions: {} for {} usage events",
        usage.batches,
        usage.events
    );
    tracing::info!("shut down on request");
    Ok(())
}
