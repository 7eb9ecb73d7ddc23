//! Background work: the jobs timers and `handler run-job` start, and the Service Bus consumer.
//!
//! Each job is one bounded, idempotent step; the trigger (host timer, CLI, standalone scheduler) only
//! calls [`run`], which records every execution in the store's `job_runs` table.

pub mod integration;
pub mod outbox;
pub mod rollup;
pub mod schedule;

use crate::error::AppError;
use crate::state::AppState;
use crate::store::JobRun;

/// The jobs Meterline runs on a schedule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Job {
    /// Aggregates raw usage events into hourly and daily rollups.
    UsageRollup,
    /// Publishes pending outbox events to Service Bus.
    OutboxPublish,
}

impl Job {
    pub const ALL: &'static [Job] = &[Job::UsageRollup, Job::OutboxPublish];

    /// The kebab-case name used by `handler run-job` and stored in `job_runs`.
    pub fn name(self) -> &'static str {
        match self {
            Job::UsageRollup => "usage-rollup",
            Job::OutboxPublish => "outbox-publish",
        }
    }
}

/// The host's schedule monitor's view of a timer (`Data.<trigger>.ScheduleStatus` of a timer invocation).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScheduleStatus {
    /// `None` on the very first run (the host sends `0001-01-01T00:00:00`).
    pub last: Option<chrono::DateTime<chrono::Utc>>,
    pub next: Option<chrono::DateTime<chrono::Utc>>,
    pub last_updated: Option<chrono::DateTime<chrono::Utc>>,
}

/// What started a job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobTrigger {
    /// A host timer invocation; `schedule` is `None` when the schedule monitor is off.
    Timer { is_past_due: bool, schedule: Option<ScheduleStatus> },
    /// `handler run-job`.
    Cli,
    /// The in-process scheduler of standalone `serve` ([`schedule`]).
    Schedule,
}

/// The result of one job step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobOutcome {
    /// One line for the host's log and `job_runs.detail`.
    pub summary: String,
}

/// Runs one step of `job` and records the run, whether it succeeded or not.
pub async fn run(state: &AppState, job: Job, trigger: JobTrigger) -> Result<JobOutcome, AppError> {
    let started_at = state.clock.now();
    let (trigger_kind, is_past_due) = match &trigger {
        JobTrigger::Timer { is_past_due, .. } => ("timer", *is_past_due),
        JobTrigger::Cli => ("cli", false),
        JobTrigger::Schedule => ("schedule", false),
    };
    let result: Result<String, AppError> = match job {
        // A past-due (catch-up) run needs nothing special: the watermark says where to continue.
        Job::UsageRollup => rollup::run(state).await,
        Job::OutboxPublish => outbox::publish(state).await,
    };
    let summary = match &result {
        Ok(summary) => summary.clone(),
        Err(err) => format!("{err:?}"),
    };
    let summary = if is_past_due { format!("{summary} (catch-up run: the schedule was past due)") } else { summary };
    let run = JobRun {
        id: state.ids.new_id(),
        job: job.name().to_owned(),
        trigger: trigger_kind.to_owned(),
        is_past_due,
        started_at,
        finished_at: state.clock.now(),
        outcome: if result.is_ok() { "succeeded" } else { "failed" }.to_owned(),
        // `job_runs.detail` holds 2 000 (an NVARCHAR on SQL Server): a long error chain must not fail the record.
        detail: crate::store::clip_utf16(&summary, 2000),
    };
    state.store.record_job_run(&run).await?;
    tracing::info!(job = job.name(), trigger = trigger_kind, is_past_due, outcome = %run.outcome, "{summary}");
    result.map(|_| JobOutcome { summary })
}
