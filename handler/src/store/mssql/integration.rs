//! The integration tables on SQL Server: the inbox with each message's effect, the quarantine and the outbox.
//!
//! [`insert_outbox`] and [`emit_quota_thresholds`] run on the caller's connection inside its transaction, so an
//! event is committed with the change that causes it or not at all.

use chrono::{DateTime, NaiveDate, Utc};
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::connection::MssqlClient;
use super::queries as q;
use super::{column, execute, insert_usage_event, read_quota, read_tenant, required, rows, text};
use crate::store::StoreError;
use crate::store::model::*;
use crate::store::tenants::*;

/// Inserts an outbox event inside the caller's transaction; an id stored already is a `Conflict`.
pub(crate) async fn insert_outbox(conn: &mut MssqlClient, m: &OutboxMessage) -> Result<(), StoreError> {
    let params: [&dyn ToSql; 6] =
        [&m.id, &m.event_type.as_str(), &m.subject.as_deref(), &m.payload.as_str(), &m.created_at, &m.available_at];
    execute(conn, q::INSERT_OUTBOX, &params).await.map(drop)
}

/// Flags the 80 % and 100 % thresholds of a period once its counter has reached them (one conditional UPDATE
/// each, so exactly one transaction announces a threshold) and writes each newly crossed threshold's
/// `meterline.quota.threshold-crossed.v1` event, inside the caller's transaction.
pub(crate) async fn emit_quota_thresholds(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    period_start: NaiveDate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    for (threshold, statement) in [(80_i64, q::FLAG_QUOTA_80), (100, q::FLAG_QUOTA_100)] {
        if execute(conn, statement, &[&tenant_id, &period_start]).await? == 1 {
            let usage = read_quota(conn, tenant_id, period_start)
                .await?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("quota row vanished inside its transaction")))?;
            insert_outbox(conn, &OutboxMessage::quota_threshold_crossed(&usage, threshold, now)).await?;
        }
    }
    Ok(())
}

/// Writes the outbox event of a status change made in this transaction (`from` is the status before it).
pub(crate) async fn announce_status_change(
    conn: &mut MssqlClient,
    from: TenantStatus,
    tenant: &Tenant,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    match OutboxMessage::tenant_status_change(from, tenant, now) {
        Some(event) => insert_outbox(conn, &event).await,
        None => Ok(()),
    }
}

fn unknown_tenant(tenant_id: Uuid) -> StoreError {
    StoreError::ForeignKey(format!("unknown tenant {tenant_id}"))
}

/// Refuses an unknown plan with a reason an operator can act on (the foreign key would say less).
async fn require_plan(conn: &mut MssqlClient, code: &str) -> Result<(), StoreError> {
    let count: i32 = rows(conn, super::plans::PLAN_EXISTS, &[&code])
        .await?
        .first()
        .map(|r| required(r, 0))
        .transpose()?
        .unwrap_or(0);
    if count == 0 {
        return Err(StoreError::ForeignKey(format!("unknown plan {code:?}")));
    }
    Ok(())
}

async fn lock_tenant_status(conn: &mut MssqlClient, tenant_id: Uuid) -> Result<Option<TenantStatus>, StoreError> {
    let found = rows(conn, q::LOCK_TENANT_STATUS, &[&tenant_id]).await?;
    let Some(row) = found.first() else { return Ok(None) };
    let raw = text(row, 0)?;
    TenantStatus::parse(&raw)
        .map(Some)
        .ok_or_else(|| StoreError::Other(anyhow::anyhow!("bad tenant status {raw:?} in the database")))
}

/// Inserts the inbox row and performs the effect; the caller's transaction commits both or neither.
pub(super) async fn apply(
    conn: &mut MssqlClient,
    inbox: &InboxEntry,
    effect: &IntegrationEffect,
) -> Result<ApplyOutcome, StoreError> {
    let params: [&dyn ToSql; 4] =
        [&inbox.source.as_str(), &inbox.event_id.as_str(), &inbox.event_type.as_str(), &inbox.processed_at];
    if execute(conn, q::INSERT_INBOX, &params).await? == 0 {
        return Ok(ApplyOutcome::Duplicate);
    }
    let now = inbox.processed_at;
    match effect {
        IntegrationEffect::UpsertTenant { tenant_id, name, plan_code, entra_tenant_id } => {
            require_plan(conn, plan_code).await?;
            if lock_tenant_status(conn, *tenant_id).await?.is_none() {
                let params: [&dyn ToSql; 5] = [tenant_id, entra_tenant_id, &name.as_str(), &plan_code.as_str(), &now];
                execute(conn, q::INSERT_ACTIVE_TENANT, &params).await?;
            } else {
                let params: [&dyn ToSql; 5] = [tenant_id, &name.as_str(), &plan_code.as_str(), entra_tenant_id, &now];
                execute(conn, q::UPDATE_TENANT_FROM_EVENT, &params).await?;
            }
        }
        IntegrationEffect::SetTenantStatus { tenant_id, status } => {
            let from = lock_tenant_status(conn, *tenant_id).await?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            if from != *status {
                execute(conn, q::SET_TENANT_STATUS_FROM_EVENT, &[tenant_id, &status.as_str(), &now]).await?;
                let tenant = read_tenant(conn, *tenant_id).await?.ok_or_else(|| unknown_tenant(*tenant_id))?;
                announce_status_change(conn, from, &tenant, now).await?;
            }
        }
        IntegrationEffect::ChangePlan { tenant_id, plan_code } => {
            lock_tenant_status(conn, *tenant_id).await?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            require_plan(conn, plan_code).await?;
            execute(conn, q::CHANGE_TENANT_PLAN, &[tenant_id, &plan_code.as_str(), &now]).await?;
        }
        IntegrationEffect::UpsertDocuments { tenant_id, actor, documents } => {
            lock_tenant_status(conn, *tenant_id).await?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            for d in documents {
                upsert_document(conn, *tenant_id, actor, d, now).await?;
            }
        }
        IntegrationEffect::RecordUsage { event, period_start, period_end } => {
            record_usage(conn, event, *period_start, *period_end).await?;
        }
    }
    Ok(ApplyOutcome::Applied)
}

async fn upsert_document(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    actor: &str,
    d: &DocumentUpsert,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    if let Some(date) =
        d.effective_date.filter(|date| !(crate::store::FIRST_DATE..=crate::store::LAST_DATE).contains(date))
    {
        return Err(StoreError::Other(anyhow::anyhow!("effective date {date} is outside 0001-01-01..9999-12-31")));
    }
    let owner: Option<Uuid> =
        rows(conn, q::DOCUMENT_OWNER, &[&d.id]).await?.first().map(|r| required(r, 0)).transpose()?;
    match owner {
        Some(owner) if owner != tenant_id => {
            return Err(StoreError::Conflict(format!("document {} belongs to another tenant", d.id)));
        }
        Some(_) => {
            let params: [&dyn ToSql; 11] = [
                &tenant_id,
                &d.id,
                &d.title.as_str(),
                &d.summary.as_deref(),
                &d.body.as_deref(),
                &d.doc_type.as_str(),
                &d.jurisdiction.as_deref(),
                &d.status.as_str(),
                &d.effective_date,
                &actor,
                &now,
            ];
            execute(conn, q::REPLACE_DOCUMENT_FROM_EVENT, &params).await?;
            execute(conn, super::documents::DELETE_DOCUMENT_TAGS, &[&tenant_id, &d.id]).await?;
        }
        None => {
            let version = 1_i64;
            let params: [&dyn ToSql; 14] = [
                &d.id,
                &tenant_id,
                &d.title.as_str(),
                &d.summary.as_deref(),
                &d.body.as_deref(),
                &d.doc_type.as_str(),
                &d.jurisdiction.as_deref(),
                &d.status.as_str(),
                &d.effective_date,
                &actor,
                &actor,
                &now,
                &now,
                &version,
            ];
            execute(conn, super::documents::INSERT_DOCUMENT, &params).await?;
        }
    }
    let mut tags: Vec<&str> = d.tags.iter().map(String::as_str).collect();
    tags.sort_unstable();
    tags.dedup();
    for tag in tags {
        execute(conn, super::documents::INSERT_DOCUMENT_TAG, &[&d.id, &tenant_id, &tag]).await?;
    }
    Ok(())
}

async fn record_usage(
    conn: &mut MssqlClient,
    e: &UsageEvent,
    period_start: NaiveDate,
    period_end: NaiveDate,
) -> Result<(), StoreError> {
    let tenant_id = e.tenant_id.ok_or_else(|| StoreError::Other(anyhow::anyhow!("external usage needs a tenant")))?;
    let plan = rows(conn, q::TENANT_PLAN_QUOTA, &[&tenant_id]).await?;
    let row = plan.first().ok_or_else(|| unknown_tenant(tenant_id))?;
    let (quota, policy): (i64, String) = (required(row, 0)?, text(row, 1)?);
    if !rows(conn, q::USAGE_EVENT_EXISTS, &[&e.event_id]).await?.is_empty() {
        return Ok(());
    }
    let ensure: [&dyn ToSql; 6] = [&tenant_id, &period_start, &period_end, &quota, &policy.as_str(), &e.recorded_at];
    execute(conn, q::ENSURE_QUOTA_PERIOD, &ensure).await?;
    let overage: i64 =
        rows(conn, q::DEBIT_QUOTA_UNCONDITIONALLY, &[&tenant_id, &period_start, &e.units, &e.recorded_at])
            .await?
            .first()
            .map(|r| required(r, 0))
            .transpose()?
            .ok_or_else(|| StoreError::Other(anyhow::anyhow!("quota row vanished inside its transaction")))?;
    insert_usage_event(conn, &UsageEvent { overage_units: overage.min(e.units), ..e.clone() }).await?;
    emit_quota_thresholds(conn, tenant_id, period_start, e.recorded_at).await
}

pub(super) fn quarantined_from(row: &Row) -> Result<QuarantinedMessage, StoreError> {
    Ok(QuarantinedMessage {
        id: required(row, 0)?,
        received_at: required(row, 1)?,
        message_id: column::<&str>(row, 2)?.map(str::to_owned),
        delivery_count: column(row, 3)?,
        content_type: column::<&str>(row, 4)?.map(str::to_owned),
        reason: text(row, 5)?,
        raw_body: text(row, 6)?,
        replayed_at: column(row, 7)?,
    })
}

pub(super) fn outbox_from(row: &Row) -> Result<OutboxRow, StoreError> {
    Ok(OutboxRow {
        seq: required(row, 0)?,
        message: OutboxMessage {
            id: required(row, 1)?,
            event_type: text(row, 2)?,
            subject: column::<&str>(row, 3)?.map(str::to_owned),
            payload: text(row, 4)?,
            created_at: required(row, 5)?,
            available_at: required(row, 6)?,
        },
        attempts: required(row, 7)?,
        last_error: column::<&str>(row, 8)?.map(str::to_owned),
        sent_at: column(row, 9)?,
    })
}
