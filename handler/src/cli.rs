//! The command line: `serve` (the default), `migrate`, `run-job`, `openapi`, and their exit codes.
//!
//! Exit codes matter to the Functions host: it never restarts a handler that exits 0, so 0 is only
//! returned after a requested shutdown (SIGTERM/SIGINT) or a finished one-shot command.

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::clock::{RandomIds, SystemClock};
use crate::config::{Config, Runtime};
use crate::jobs::{self, Job, JobTrigger};
use crate::state::AppState;

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
    /// Print the OpenAPI document of the API as JSON.
    Openapi,
}

/// Parses the command line and runs the command; the result is the process exit code.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Openapi) = cli.command {
        let doc = crate::routes::openapi();
        println!("{}", serde_json::to_string_pretty(&doc).expect("the OpenAPI document serializes"));
        return ExitCode::SUCCESS;
    }
    let config = match Config::from_env() {
        Ok(config) => config,
        Err(err) => {
            eprintln!("handler: configuration error: {err}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    crate::telemetry::init(&config);
    let result = actix_web::rt::System::new().block_on(run(cli.command.unwrap_or(Command::Serve), config));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!(error = %format!("{err:#}"), "handler failed");
            eprintln!("handler: {err:#}");
            ExitCode::from(EXIT_FAILURE)
        }
    }
}

async fn run(command: Command, config: Config) -> anyhow::Result<()> {
    match command {
        Command::Serve => serve(config).await,
        Command::Migrate => {
            let store = crate::store::open(&config.store).await?;
            let report = store.migrate().await?;
            println!(
                "{} store: applied {:?}, already applied {:?}",
                store.kind(),
                report.applied,
                report.already_applied
            );
            Ok(())
        }
        Command::RunJob { job } => {
            let store = crate::store::open(&config.store).await?;
            if config.auto_migrate {
                store.migrate().await?;
            }
            let state = AppState::new(config, store, Arc::new(SystemClock), Arc::new(RandomIds));
            let outcome = jobs::run(&state, job, JobTrigger::Cli).await.map_err(|e| anyhow::anyhow!("{e:?}"))?;
            println!("{}: {}", job.name(), outcome.summary);
            Ok(())
        }
        Command::Openapi => unreachable!("handled before configuration is read"),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let runtime = config.runtime.clone();
    let store_kind = match &config.store {
        crate::config::StoreConfig::Sqlite { path } => format!("sqlite ({})", path.display()),
        crate::config::StoreConfig::Mssql { .. } => "mssql".to_owned(),
    };
    let running = crate::startup::start(config).await?;
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
    tracing::info!("shut down on request");
    Ok(())
}
