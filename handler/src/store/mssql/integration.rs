//! The integration tables on SQL Server: the inbox with each message's effect, the quarantine and the outbox.
//!
//! [`insert_outbox`] and [`emit_quota_thresholds`] run on the caller's connection inside its transaction, so an
//! event is committed with the change that causes it or not at all.

use super::metering::ENSURE_QUOTA_PERIOD;
use super::{MssqlStore, Pooled, Retry};
use crate::store::IntegrationStore;
use async_trait::async_trait;
use chrono::{DateTime, NaiveDate, Utc};
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::connection::MssqlClient;
use super::{column, execute, insert_usage_event, read_quota, read_tenant, required, rows, text};
use crate::store::StoreError;
use crate::store::tenants::*;
use crate::store::{integration::*, metering::*};

/// Inserts an outbox event inside the caller's transaction; an id stored already is a `Conflict`.
pub(crate) async fn insert_outbox(conn: &mut MssqlClient, m: &OutboxMessage) -> Result<(), StoreError> {
    let params: [&dyn ToSql; 6] =
        [&m.id, &m.event_type.as_str(), &m.subject.as_deref(), &m.payload.as_str(), &m.created_at, &m.available_at];
    execute(conn, INSERT_OUTBOX, &params).await.map(drop)
}

/// Flags the 80 % and 100 % thresholds of a period once its billable usage has reached them (one conditional
/// UPDATE each, so exactly one transaction announces a threshold) and writes each newly crossed threshold's
/// `meterline.quota.threshold-crossed.v1` event, inside the caller's transaction. Billable usage is the counter
/// less what the period's open leases have not spent (as on SQLite: `store::sqlite::emit_quota_thresholds`).
pub(crate) async fn emit_quota_thresholds(
    conn: &mut MssqlClient,
    tenant_id: Uuid,
    period_start: NaiveDate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    // The counter bounds billable usage from above: below 80 % of the quota, or with both announced, nothing to do.
    if rows(conn, QUOTA_THRESHOLD_DUE, &[&tenant_id, &period_start]).await?.is_empty() {
        return Ok(());
    }
    let used: i64 = rows(conn, BILLABLE_UNITS_USED, &[&tenant_id, &period_start])
        .await?
        .first()
        .map(|r| required(r, 0))
        .transpose()?
        .ok_or_else(quota_row_vanished)?;
    for (threshold, statement) in [(80_i64, FLAG_QUOTA_80), (100, FLAG_QUOTA_100)] {
        if execute(conn, statement, &[&tenant_id, &period_start, &used]).await? == 1 {
            let usage = read_quota(conn, tenant_id, period_start).await?.ok_or_else(quota_row_vanished)?;
            let usage = usage.with_units_used(used);
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

/// Refuses an unknown plan with a reason an operator can act on (the foreign key would say less).
async fn require_plan(conn: &mut MssqlClient, code: &str) -> Result<(), StoreError> {
    let count: i32 = rows(conn, super::plans::PLAN_EXISTS, &[&code])
        .await?
        .first()
        .map(|r| required(r, 0))
        .transpose()?
        .unwrap_or(0);
    if count == 0 {
        return Err(unknown_plan(code));
    }
    Ok(())
}

async fn lock_tenant_status(conn: &mut MssqlClient, tenant_id: Uuid) -> Result<Option<TenantStatus>, StoreError> {
    let found = rows(conn, LOCK_TENANT_STATUS, &[&tenant_id]).await?;
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
    if execute(conn, INSERT_INBOX, &params).await? == 0 {
        return Ok(ApplyOutcome::Duplicate);
    }
    let now = inbox.processed_at;
    match effect {
        IntegrationEffect::UpsertTenant { tenant_id, name, plan_code, entra_tenant_id } => {
            require_plan(conn, plan_code).await?;
            if lock_tenant_status(conn, *tenant_id).await?.is_none() {
                let params: [&dyn ToSql; 5] = [tenant_id, entra_tenant_id, &name.as_str(), &plan_code.as_str(), &now];
                execute(conn, INSERT_ACTIVE_TENANT, &params).await?;
            } else {
                let params: [&dyn ToSql; 5] = [tenant_id, &name.as_str(), &plan_code.as_str(), entra_tenant_id, &now];
                execute(conn, UPDATE_TENANT_FROM_EVENT, &params).await?;
            }
        }
        IntegrationEffect::SetTenantStatus { tenant_id, status } => {
            let from = lock_tenant_status(conn, *tenant_id).await?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            if from != *status {
                execute(conn, SET_TENANT_STATUS_FROM_EVENT, &[tenant_id, &status.as_str(), &now]).await?;
                let tenant = read_tenant(conn, *tenant_id).await?.ok_or_else(|| unknown_tenant(*tenant_id))?;
                announce_status_change(conn, from, &tenant, now).await?;
            }
        }
        IntegrationEffect::ChangePlan { tenant_id, plan_code } => {
            lock_tenant_status(conn, *tenant_id).await?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            require_plan(conn, plan_code).await?;
            execute(conn, CHANGE_TENANT_PLAN, &[tenant_id, &plan_code.as_str(), &now]).await?;
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
    let document = d.to_document(tenant_id, actor, now);
    crate::store::check_effective_date(&document)?;
    let owner: Option<Uuid> =
        rows(conn, DOCUMENT_OWNER, &[&d.id]).await?.first().map(|r| required(r, 0)).transpose()?;
    match owner {
        Some(owner) if owner != tenant_id => Err(foreign_document(d.id)),
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
            execute(conn, REPLACE_DOCUMENT_FROM_EVENT, &params).await?;
            execute(conn, super::documents::DELETE_DOCUMENT_TAGS, &[&tenant_id, &d.id]).await?;
            super::documents::insert_tags(conn, &document).await?;
            super::documents::reindex_document(conn, &document).await
        }
        None => super::documents::insert_document(conn, &document).await,
    }
}

async fn record_usage(
    conn: &mut MssqlClient,
    e: &UsageEvent,
    period_start: NaiveDate,
    period_end: NaiveDate,
) -> Result<(), StoreError> {
    let tenant_id = e.external_tenant()?;
    let plan = rows(conn, TENANT_PLAN_QUOTA, &[&tenant_id]).await?;
    let row = plan.first().ok_or_else(|| unknown_tenant(tenant_id))?;
    let (quota, policy, plan_code): (i64, String, String) = (required(row, 0)?, text(row, 1)?, text(row, 2)?);
    if !rows(conn, USAGE_EVENT_EXISTS, &[&e.event_id]).await?.is_empty() {
        return Ok(());
    }
    let ensure: [&dyn ToSql; 7] =
        [&tenant_id, &period_start, &period_end, &quota, &policy.as_str(), &e.recorded_at, &plan_code.as_str()];
    execute(conn, ENSURE_QUOTA_PERIOD, &ensure).await?;
    let overage: i64 = rows(conn, DEBIT_QUOTA_UNCONDITIONALLY, &[&tenant_id, &period_start, &e.units, &e.recorded_at])
        .await?
        .first()
        .map(|r| required(r, 0))
        .transpose()?
        .ok_or_else(quota_row_vanished)?;
    insert_usage_event(conn, &e.with_debited_overage(overage)).await?;
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
        identity: column::<&str>(row, 8)?.map(str::to_owned),
        deliveries: i64::from(required::<i32>(row, 9)?),
        last_received_at: column(row, 10)?,
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

#[async_trait]
impl IntegrationStore for MssqlStore {
    async fn apply_integration_event(
        &self,
        inbox: &InboxEntry,
        effect: &IntegrationEffect,
    ) -> Result<ApplyOutcome, StoreError> {
        // Not retried: the inbox row makes a second run harmless, but a lost commit answer is for the host to
        // resolve by redelivering (then the inbox says Duplicate).
        let result = in_tx!(self, Retry::No, |conn| apply(conn, inbox, effect).await);
        // XACT_ABORT rolled the whole transaction back, inbox row included.
        match result {
            Err(StoreError::ForeignKey(reason) | StoreError::Conflict(reason)) => Ok(ApplyOutcome::Rejected(reason)),
            other => other,
        }
    }

    async fn quarantine_message(&self, message: &QuarantinedMessage) -> Result<Uuid, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            let m = message;
            if !rows(conn, GET_QUARANTINED, &[&m.id]).await?.is_empty() {
                return Ok(m.id); // a retried insert whose first commit went through
            }
            let params: [&dyn ToSql; 9] = [
                &m.id,
                &m.received_at,
                &m.message_id.as_deref(),
                &m.delivery_count,
                &m.content_type.as_deref(),
                &m.reason.as_str(),
                &m.raw_body.as_str(),
                &m.replayed_at,
                &m.identity.as_deref(),
            ];
            let row = rows(conn, QUARANTINE, &params).await?;
            row.first()
                .map(|r| required(r, 0))
                .transpose()?
                .ok_or_else(|| StoreError::Other(anyhow::anyhow!("quarantining a message returned no row id")))
        })
    }

    async fn list_quarantine(&self, limit: u32) -> Result<Vec<QuarantinedMessage>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, LIST_QUARANTINE, &[&top]).await?.iter().map(quarantined_from).collect()
        })
    }

    async fn get_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedMessage>, StoreError> {
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, GET_QUARANTINED, &[&id]).await?.first().map(quarantined_from).transpose()
        })
    }

    async fn mark_quarantine_replayed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        in_tx!(self, Retry::Yes, |conn| Ok(execute(conn, MARK_QUARANTINE_REPLAYED, &[&id, &now]).await? == 1))
    }

    async fn pending_outbox(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, PENDING_OUTBOX, &[&now, &top]).await?.iter().map(outbox_from).collect()
        })
    }

    async fn mark_outbox_sent(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        // Idempotent: only an unsent row changes.
        in_tx!(self, Retry::Yes, |conn| execute(conn, MARK_OUTBOX_SENT, &[&id, &now]).await.map(drop))
    }

    async fn mark_outbox_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let error: String = error.chars().take(1000).collect();
        let error = error.as_str();
        in_tx!(self, Retry::No, |conn| {
            execute(conn, MARK_OUTBOX_FAILED, &[&id, &error, &next_attempt_at]).await.map(drop)
        })
    }

    async fn list_outbox(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, LIST_OUTBOX, &[&after_seq, &top]).await?.iter().map(outbox_from).collect()
        })
    }
}

/// Inserts an outbox event in the caller's transaction (a taken id is a unique-index violation).
pub(crate) const INSERT_OUTBOX: &str =
    "INSERT INTO dbo.outbox_messages (id, event_type, subject, payload, created_at, available_at)
VALUES (@P1, @P2, @P3, @P4, @P5, @P6)";

/// A row when a threshold of the period may be due: one not announced yet, and the counter (an upper bound of
/// billable usage) at 80 % of the quota or more.
pub(crate) const QUOTA_THRESHOLD_DUE: &str = "SELECT 1 AS due FROM dbo.quota_usage
WHERE tenant_id = @P1 AND period_start = @P2 AND (notified_80 = 0 OR notified_100 = 0)
  AND units_used * 100 >= quota_units * 80";

/// The period's billable usage: the counter less what each open lease has not spent (its grant less the billable
/// units of the usage events that name it).
pub(crate) const BILLABLE_UNITS_USED: &str = "SELECT q.units_used - COALESCE((
    SELECT SUM(CASE WHEN l.granted_units > s.spent THEN l.granted_units - s.spent ELSE 0 END)
    FROM dbo.quota_leases AS l
    CROSS APPLY (SELECT COALESCE(SUM(CAST(e.units AS BIGINT)), 0) AS spent FROM dbo.usage_events AS e
                 WHERE e.lease_id = l.lease_id AND e.billable = 1) AS s
    WHERE l.tenant_id = q.tenant_id AND l.period_start = q.period_start AND l.settled_at IS NULL), 0) AS used
FROM dbo.quota_usage AS q WHERE q.tenant_id = @P1 AND q.period_start = @P2";

/// Flags the 80 % threshold of a period once billable usage (`@P3`) reached it; one row changed means this
/// transaction announces it.
pub(crate) const FLAG_QUOTA_80: &str = "UPDATE dbo.quota_usage SET notified_80 = 1
WHERE tenant_id = @P1 AND period_start = @P2 AND notified_80 = 0 AND @P3 > 0 AND @P3 * 100 >= quota_units * 80";

/// Flags the 100 % threshold of a period once billable usage (`@P3`) reached it.
pub(crate) const FLAG_QUOTA_100: &str = "UPDATE dbo.quota_usage SET notified_100 = 1
WHERE tenant_id = @P1 AND period_start = @P2 AND notified_100 = 0 AND @P3 > 0 AND @P3 >= quota_units";

/// Inserts the inbox row unless `(source, event_id)` is there; the key-range lock makes a concurrent delivery of
/// the same message wait and then insert nothing (0 rows: a duplicate).
pub(crate) const INSERT_INBOX: &str = "INSERT INTO dbo.inbox_messages (source, event_id, event_type, processed_at)
SELECT @P1, @P2, @P3, @P4
WHERE NOT EXISTS (SELECT 1 FROM dbo.inbox_messages WITH (UPDLOCK, HOLDLOCK) WHERE source = @P1 AND event_id = @P2)";

/// The tenant's status, with the row locked until the transaction ends.
pub(crate) const LOCK_TENANT_STATUS: &str = "SELECT status FROM dbo.tenants WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";

pub(crate) const INSERT_ACTIVE_TENANT: &str =
    "INSERT INTO dbo.tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version)
VALUES (@P1, @P2, @P3, N'active', @P4, @P5, @P5, 1)";

pub(crate) const UPDATE_TENANT_FROM_EVENT: &str = "UPDATE dbo.tenants SET name = @P2, plan_code = @P3,
    entra_tenant_id = COALESCE(@P4, entra_tenant_id), updated_at = @P5, version = version + 1
WHERE id = @P1";

pub(crate) const SET_TENANT_STATUS_FROM_EVENT: &str =
    "UPDATE dbo.tenants SET status = @P2, updated_at = @P3, version = version + 1 WHERE id = @P1";

pub(crate) const CHANGE_TENANT_PLAN: &str = "UPDATE dbo.tenants SET plan_code = @P2, updated_at = @P3, version = version + 1 WHERE id = @P1 AND plan_code <> @P2";

/// The owner of a document id (deleted or not), locked so a concurrent insert of the same id waits.
pub(crate) const DOCUMENT_OWNER: &str = "SELECT tenant_id FROM dbo.documents WITH (UPDLOCK, HOLDLOCK) WHERE id = @P1";

/// Replaces every field of a document from an integration message (and undeletes it).
pub(crate) const REPLACE_DOCUMENT_FROM_EVENT: &str = "UPDATE dbo.documents SET title = @P3, summary = @P4, body = @P5,
    doc_type = @P6, jurisdiction = @P7, status = @P8, effective_date = @P9, updated_by = @P10, updated_at = @P11,
    deleted_at = NULL, version = version + 1
WHERE tenant_id = @P1 AND id = @P2";

/// The quota and overage policy of a tenant's plan.
pub(crate) const TENANT_PLAN_QUOTA: &str = "SELECT p.monthly_quota_units, p.overage_policy, p.code
FROM dbo.tenants t JOIN dbo.plans p ON p.code = t.plan_code WHERE t.id = @P1";

pub(crate) const USAGE_EVENT_EXISTS: &str = "SELECT 1 AS found FROM dbo.usage_events WHERE event_id = @P1";

/// A debit that is never refused (external usage has happened): outputs this debit's overage units.
pub(crate) const DEBIT_QUOTA_UNCONDITIONALLY: &str = "UPDATE dbo.quota_usage SET
    overage_units = overage_units
        + (CASE WHEN units_used + @P3 > quota_units THEN units_used + @P3 - quota_units ELSE 0 END)
        - (CASE WHEN units_used > quota_units THEN units_used - quota_units ELSE 0 END),
    units_used = units_used + @P3,
    updated_at = @P4
OUTPUT
    (CASE WHEN inserted.units_used > inserted.quota_units THEN inserted.units_used - inserted.quota_units ELSE 0 END)
    - (CASE WHEN inserted.units_used - @P3 > inserted.quota_units THEN inserted.units_used - @P3 - inserted.quota_units ELSE 0 END)
WHERE tenant_id = @P1 AND period_start = @P2";

/// Quarantines a message once: a row with the same identity (held under a key-range lock, so two deliveries
/// cannot both insert) gets one more delivery, else the message is inserted. Answers the row's id.
pub(crate) const QUARANTINE: &str = "DECLARE @held UNIQUEIDENTIFIER;
UPDATE dbo.quarantine_messages WITH (UPDLOCK, HOLDLOCK)
SET @held = id,
    deliveries = deliveries + 1,
    last_received_at = @P2,
    delivery_count = CASE WHEN @P4 > ISNULL(delivery_count, 0) THEN @P4 ELSE delivery_count END
-- The parameter arrives as NVARCHAR: cast it to the column's type, so the lookup seeks the unique index.
WHERE @P9 IS NOT NULL AND message_identity = CAST(@P9 AS CHAR(64));
IF @held IS NULL
    INSERT INTO dbo.quarantine_messages (id, received_at, message_id, delivery_count, content_type, reason, raw_body,
        replayed_at, message_identity, deliveries)
    VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, 1);
SELECT ISNULL(@held, @P1) AS id;";

pub(crate) const LIST_QUARANTINE: &str =
    "SELECT TOP (@P1) id, received_at, message_id, delivery_count, content_type, reason,
    raw_body, replayed_at, message_identity, deliveries, last_received_at
FROM dbo.quarantine_messages ORDER BY received_at DESC, id DESC";

pub(crate) const GET_QUARANTINED: &str =
    "SELECT id, received_at, message_id, delivery_count, content_type, reason, raw_body,
    replayed_at, message_identity, deliveries, last_received_at
FROM dbo.quarantine_messages WHERE id = @P1";

pub(crate) const MARK_QUARANTINE_REPLAYED: &str = "UPDATE dbo.quarantine_messages SET replayed_at = @P2 WHERE id = @P1";

/// The publisher's page: unsent rows that are due, through the filtered index `ix_outbox_pending`.
pub(crate) const PENDING_OUTBOX: &str =
    "SELECT TOP (@P2) seq, id, event_type, subject, payload, created_at, available_at,
    attempts, last_error, sent_at
FROM dbo.outbox_messages WHERE sent_at IS NULL AND available_at <= @P1 ORDER BY available_at, seq";

pub(crate) const MARK_OUTBOX_SENT: &str =
    "UPDATE dbo.outbox_messages SET sent_at = @P2, attempts = attempts + 1, last_error = NULL
WHERE id = @P1 AND sent_at IS NULL";

pub(crate) const MARK_OUTBOX_FAILED: &str = "UPDATE dbo.outbox_messages SET attempts = attempts + 1, last_error = @P2,
    available_at = @P3
WHERE id = @P1 AND sent_at IS NULL";

pub(crate) const LIST_OUTBOX: &str = "SELECT TOP (@P2) seq, id, event_type, subject, payload, created_at, available_at,
    attempts, last_error, sent_at
FROM dbo.outbox_messages WHERE seq > @P1 ORDER BY seq";

/// Every statement above, by name, for the parse check (`store::tsql_check`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("INSERT_OUTBOX", INSERT_OUTBOX),
    ("QUOTA_THRESHOLD_DUE", QUOTA_THRESHOLD_DUE),
    ("BILLABLE_UNITS_USED", BILLABLE_UNITS_USED),
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
    ("QUARANTINE", QUARANTINE),
    ("LIST_QUARANTINE", LIST_QUARANTINE),
    ("GET_QUARANTINED", GET_QUARANTINED),
    ("MARK_QUARANTINE_REPLAYED", MARK_QUARANTINE_REPLAYED),
    ("PENDING_OUTBOX", PENDING_OUTBOX),
    ("MARK_OUTBOX_SENT", MARK_OUTBOX_SENT),
    ("MARK_OUTBOX_FAILED", MARK_OUTBOX_FAILED),
    ("LIST_OUTBOX", LIST_OUTBOX),
];
