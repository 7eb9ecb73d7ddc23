//! `/api/v1/usage/tenants` and `/api/v1/usage/pipeline` (Platform.Admin): every tenant's current period at once,
//! and how current the usage data and its events are (rollup lag, outbox backlog, quarantined messages).
//!
//! They serve the platform view of the dashboard (`routes::dashboard`) and any operator script. Both read only
//! what the tenant summaries and the jobs already keep: the tenant listing is the usage summary of each tenant
//! (`usage::period_summary`), the pipeline is the rollup's watermarks and the outbox and quarantine tables. Counts
//! that could grow without bound are read up to a cap and say when they reached it.

use actix_web::{HttpResponse, get, web};
use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use super::usage::{UsageSummary, period_summary};
use crate::auth::guard::{Authorized, PlatformAdmin};
use crate::error::AppError;
use crate::state::AppState;

/// The most tenants one listing reads; beyond it the answer says `truncated`.
pub const MAX_TENANTS: usize = 1000;
/// The most outbox events and quarantined messages the pipeline status counts.
pub const MAX_COUNTED: u32 = 1000;

/// One tenant's current period, with what identifies it in a ranking.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantUsage {
    pub name: String,
    /// `active`, `suspended` or `closed`.
    pub status: &'static str,
    /// `unitsUsed` as a whole percentage of `quotaUnits` (rounded down); absent for a quota of 0.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_percent: Option<i64>,
    #[serde(flatten)]
    pub summary: UsageSummary,
}

/// Every tenant's current period, most units used first.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TenantUsageList {
    pub as_of: DateTime<Utc>,
    pub value: Vec<TenantUsage>,
    /// True when there are more than 1000 tenants and only the first 1000 (by creation) were read.
    pub truncated: bool,
}

/// Every tenant's quota and use in its current billing period (what `getUsageSummary` answers for each), most
/// units used first (then by name): the platform's ranking by usage and the input of its rankings by overage and
/// by share of quota.
#[utoipa::path(
    tag = "usage",
    operation_id = "listTenantUsage",
    security(("entra" = ["Platform.Admin"])),
    responses((status = 200, description = "Each tenant's current period", body = TenantUsageList))
)]
#[get("/usage/tenants")]
pub async fn list_tenant_usage(
    _auth: Authorized<PlatformAdmin>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let mut value = Vec::new();
    let mut after = None;
    let mut truncated = false;
    loop {
        let page = state.store.list_tenants(after.as_ref(), 100).await?;
        for tenant in &page.items {
            if value.len() == MAX_TENANTS {
                truncated = true;
                break;
            }
            // A tenant whose plan is gone has no period to show (the foreign key makes this a race at most).
            let Some(plan) = state.lookups.plan(&tenant.plan_code).await? else { continue };
            let summary = period_summary(&state, tenant, &plan).await?;
            let used_percent =
                (summary.quota_units > 0).then(|| summary.units_used.saturating_mul(100) / summary.quota_units);
            value.push(TenantUsage {
                name: tenant.name.clone(),
                status: tenant.status.as_str(),
                used_percent,
                summary,
            });
        }
        match page.next {
            Some(next) if !truncated => after = Some(next),
            _ => break,
        }
    }
    value.sort_by(|a, b| b.summary.units_used.cmp(&a.summary.units_used).then_with(|| a.name.cmp(&b.name)));
    Ok(HttpResponse::Ok().json(TenantUsageList { as_of: state.clock.now(), value, truncated }))
}

/// The usage rollup's progress.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RollupStatus {
    /// The highest usage event sequence number rolled up.
    pub watermark: i64,
    /// Every event recorded up to this instant is rolled up; absent until a run first caught up.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub complete_through: Option<DateTime<Utc>>,
    /// `asOf` minus `completeThrough`, in whole seconds (at least the rollup's settle margin).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<i64>,
    /// The start of the open lag episode (`meterline.usage.rollup-lagging.v1`); absent when not lagging.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lagging_since: Option<DateTime<Utc>>,
    /// The first day of the last month whose statements are all written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub closed_through: Option<NaiveDate>,
}

/// Integration events waiting to be published.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct OutboxStatus {
    /// Unsent events due for publishing, counted up to 1000.
    pub due: i64,
    /// True when `due` reached the cap of 1000.
    pub capped: bool,
    /// When the oldest of them was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub oldest_created_at: Option<DateTime<Utc>>,
}

/// Integration messages that could never apply (`handler quarantine list`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct QuarantineStatus {
    /// Quarantined messages not replayed, among the newest 1000.
    pub open: i64,
    /// True when 1000 messages were read, so older open ones may be uncounted.
    pub capped: bool,
    /// When the newest open one was quarantined.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub newest_received_at: Option<DateTime<Utc>>,
}

/// How current the usage data and its events are.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct UsagePipeline {
    pub as_of: DateTime<Utc>,
    pub rollup: RollupStatus,
    pub outbox: OutboxStatus,
    pub quarantine: QuarantineStatus,
}

/// The usage rollup's lag, the outbox backlog and the quarantined integration messages.
#[utoipa::path(
    tag = "usage",
    operation_id = "getUsagePipeline",
    security(("entra" = ["Platform.Admin"])),
    responses((status = 200, description = "The pipeline's state", body = UsagePipeline))
)]
#[get("/usage/pipeline")]
pub async fn get_usage_pipeline(
    _auth: Authorized<PlatformAdmin>,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    let now = state.clock.now();
    let rollup = state.store.rollup_state().await?;
    let due = state.store.pending_outbox(now, MAX_COUNTED).await?;
    let quarantined = state.store.list_quarantine(MAX_COUNTED).await?;
    let open: Vec<_> = quarantined.iter().filter(|m| m.replayed_at.is_none()).collect();
    Ok(HttpResponse::Ok().json(UsagePipeline {
        as_of: now,
        rollup: RollupStatus {
            watermark: rollup.watermark,
            complete_through: rollup.complete_through,
            lag_seconds: rollup.complete_through.map(|t| (now - t).num_seconds().max(0)),
            lagging_since: rollup.lagging_since,
            closed_through: rollup.closed_through,
        },
        outbox: OutboxStatus {
            due: due.len() as i64,
            capped: due.len() as u32 >= MAX_COUNTED,
            oldest_created_at: due.iter().map(|r| r.message.created_at).min(),
        },
        quarantine: QuarantineStatus {
            open: open.len() as i64,
            capped: quarantined.len() as u32 >= MAX_COUNTED,
            newest_received_at: open.iter().map(|m| m.received_at).max(),
        },
    }))
}
