//! The integration tables on SQLite: the inbox with each message's effect, the quarantine and the outbox.
//!
//! [`insert_outbox`] and [`emit_quota_thresholds`] run inside a caller's write transaction, so an event is
//! committed with the change that causes it or not at all.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use super::{
    SqliteStore, classify, insert_usage_event, parse_timestamp, parse_uuid, query_all, query_one, read_quota, timestamp,
};
use crate::store::tenants::*;
use crate::store::{IntegrationStore, StoreError};
use crate::store::{integration::*, metering::*};

/// Inserts an outbox event inside the caller's write transaction; an id stored already is a `Conflict`.
pub(crate) fn insert_outbox(tx: &Connection, m: &OutboxMessage) -> Result<(), StoreError> {
    tx.prepare_cached(
        "INSERT INTO outbox_messages (id, event_type, subject, payload, created_at, available_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
    )
    .map_err(classify)?
    .execute(params![
        m.id.to_string(),
        m.event_type,
        m.subject,
        m.payload,
        timestamp(m.created_at),
        timestamp(m.available_at)
    ])
    .map(drop)
    .map_err(classify)
}

/// Marks the 80 % and 100 % thresholds of a period as notified once its billable usage has reached them, each
/// with a conditional UPDATE (so exactly one transaction announces a threshold), and writes each newly crossed
/// threshold's `meterline.quota.threshold-crossed.v1` event, all inside the caller's write transaction.
///
/// Billable usage, not the counter: the counter holds an open quota lease's whole grant from the moment it is
/// granted, so it runs ahead of what requests used. The billable figure is the counter less what each open lease
/// has not spent yet (its grant less the billable units of the stored usage events that name it), which is what
/// the lease's settlement will leave. Called wherever either can have moved: a direct debit, a grant, a settlement.
pub(crate) fn emit_quota_thresholds(
    tx: &Connection,
    tenant_id: Uuid,
    period_start: chrono::NaiveDate,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let (tenant, start) = (tenant_id.to_string(), period_start.to_string());
    // The counter bounds billable usage from above: below 80 % of the quota, or with both announced, nothing to do.
    let due: Option<i64> = tx
        .prepare_cached(
            "SELECT 1 FROM quota_usage WHERE tenant_id = ?1 AND period_start = ?2
               AND (notified_80 = 0 OR notified_100 = 0) AND units_used * 100 >= quota_units * 80",
        )
        .map_err(classify)?
        .query_row(params![tenant, start], |r| r.get(0))
        .optional()
        .map_err(classify)?;
    if due.is_none() {
        return Ok(());
    }
    let used: i64 = tx
        .prepare_cached(
            "SELECT q.units_used - coalesce((
                 SELECT sum(max(0, l.granted_units - (SELECT coalesce(sum(e.units), 0) FROM usage_events e
                                                      WHERE e.lease_id = l.lease_id AND e.billable = 1)))
                 FROM quota_leases l
                 WHERE l.tenant_id = q.tenant_id AND l.period_start = q.period_start AND l.settled_at IS NULL), 0)
             FROM quota_usage q WHERE q.tenant_id = ?1 AND q.period_start = ?2",
        )
        .map_err(classify)?
        .query_row(params![tenant, start], |r| r.get(0))
        .map_err(classify)?;
    for (threshold, column) in [(80_i64, "notified_80"), (100, "notified_100")] {
        let flipped = tx
            .execute(
                &format!(
                    "UPDATE quota_usage SET {column} = 1
                     WHERE tenant_id = ?1 AND period_start = ?2 AND {column} = 0 AND ?3 > 0
                       AND ?3 * 100 >= quota_units * ?4"
                ),
                params![tenant, start, used, threshold],
            )
            .map_err(classify)?;
        if flipped == 1 {
            let usage = read_quota(tx, tenant_id, period_start)?.ok_or_else(quota_row_vanished)?;
            let usage = usage.with_units_used(used);
            insert_outbox(tx, &OutboxMessage::quota_threshold_crossed(&usage, threshold, now))?;
        }
    }
    Ok(())
}

/// The status of a tenant, read inside the transaction.
fn tenant_status(tx: &Connection, tenant_id: Uuid) -> Result<Option<TenantStatus>, StoreError> {
    let raw: Option<String> = tx
        .query_row("SELECT status FROM tenants WHERE id = ?1", [tenant_id.to_string()], |r| r.get(0))
        .optional()
        .map_err(classify)?;
    raw.map(|s| TenantStatus::parse(&s).ok_or_else(|| super::corrupt("tenant status", &s))).transpose()
}

/// Refuses an unknown plan with a reason an operator can act on (the foreign key would say less).
fn require_plan(tx: &Connection, code: &str) -> Result<(), StoreError> {
    let found: Option<i64> =
        tx.query_row("SELECT 1 FROM plans WHERE code = ?1", [code], |r| r.get(0)).optional().map_err(classify)?;
    found.map(drop).ok_or_else(|| unknown_plan(code))
}

/// Writes the outbox event of a status change made in this transaction (`from` is the status before it).
pub(crate) fn announce_status_change(
    tx: &Connection,
    from: TenantStatus,
    tenant: &Tenant,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    match OutboxMessage::tenant_status_change(from, tenant, now) {
        Some(event) => insert_outbox(tx, &event),
        None => Ok(()),
    }
}

fn apply_effect(tx: &Connection, effect: &IntegrationEffect, now: DateTime<Utc>) -> Result<(), StoreError> {
    match effect {
        IntegrationEffect::UpsertTenant { tenant_id, name, plan_code, entra_tenant_id } => {
            let (id, entra) = (tenant_id.to_string(), entra_tenant_id.map(|e| e.to_string()));
            require_plan(tx, plan_code)?;
            if tenant_status(tx, *tenant_id)?.is_none() {
                tx.execute(
                    "INSERT INTO tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at, version)
                     VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?5, 1)",
                    params![id, entra, name, plan_code, timestamp(now)],
                )
                .map_err(classify)?;
            } else {
                tx.execute(
                    "UPDATE tenants SET name = ?2, plan_code = ?3, entra_tenant_id = coalesce(?4, entra_tenant_id),
                         updated_at = ?5, version = version + 1
                     WHERE id = ?1",
                    params![id, name, plan_code, entra, timestamp(now)],
                )
                .map_err(classify)?;
            }
            Ok(())
        }
        IntegrationEffect::SetTenantStatus { tenant_id, status } => {
            let from = tenant_status(tx, *tenant_id)?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            if from == *status {
                return Ok(());
            }
            tx.execute(
                "UPDATE tenants SET status = ?2, updated_at = ?3, version = version + 1 WHERE id = ?1",
                params![tenant_id.to_string(), status.as_str(), timestamp(now)],
            )
            .map_err(classify)?;
            let tenant = super::tenants::read_tenant_row(tx, *tenant_id)?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            announce_status_change(tx, from, &tenant, now)
        }
        IntegrationEffect::ChangePlan { tenant_id, plan_code } => {
            tenant_status(tx, *tenant_id)?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            require_plan(tx, plan_code)?;
            tx.execute(
                "UPDATE tenants SET plan_code = ?2, updated_at = ?3, version = version + 1
                 WHERE id = ?1 AND plan_code <> ?2",
                params![tenant_id.to_string(), plan_code, timestamp(now)],
            )
            .map(drop)
            .map_err(classify)
        }
        IntegrationEffect::UpsertDocuments { tenant_id, actor, documents } => {
            tenant_status(tx, *tenant_id)?.ok_or_else(|| unknown_tenant(*tenant_id))?;
            for d in documents {
                upsert_document(tx, *tenant_id, actor, d, now)?;
            }
            Ok(())
        }
        IntegrationEffect::RecordUsage { event, period_start, period_end } => {
            record_usage(tx, event, *period_start, *period_end)
        }
    }
}

fn upsert_document(
    tx: &Connection,
    tenant_id: Uuid,
    actor: &str,
    d: &DocumentUpsert,
    now: DateTime<Utc>,
) -> Result<(), StoreError> {
    let document = d.to_document(tenant_id, actor, now);
    crate::store::check_effective_date(&document)?;
    let (id, tenant) = (d.id.to_string(), tenant_id.to_string());
    let owner: Option<String> = tx
        .query_row("SELECT tenant_id FROM documents WHERE id = ?1", [&id], |r| r.get(0))
        .optional()
        .map_err(classify)?;
    match owner {
        Some(owner) if owner != tenant => Err(foreign_document(d.id)),
        Some(_) => {
            tx.execute(
                "UPDATE documents SET title = ?3, summary = ?4, body = ?5, doc_type = ?6, jurisdiction = ?7, status = ?8,
                     effective_date = ?9, updated_by = ?10, updated_at = ?11, deleted_at = NULL, version = version + 1
                 WHERE tenant_id = ?1 AND id = ?2",
                params![
                    tenant,
                    id,
                    d.title,
                    d.summary,
                    d.body,
                    d.doc_type,
                    d.jurisdiction,
                    d.status.as_str(),
                    d.effective_date.map(|date| date.to_string()),
                    actor,
                    timestamp(now)
                ],
            )
            .map_err(classify)?;
            tx.execute("DELETE FROM document_tags WHERE tenant_id = ?1 AND document_id = ?2", params![tenant, id])
                .map_err(classify)?;
            super::documents::insert_tags(tx, &document)?;
            super::documents::reindex_document(tx, &document)
        }
        None => super::documents::insert_document(tx, &document),
    }
}

/// External usage: the quota of the event's own period is debited without a limit (overage counted), the usage
/// event is stored with that overage, and crossed thresholds are announced.
fn record_usage(
    tx: &Connection,
    e: &UsageEvent,
    period_start: chrono::NaiveDate,
    period_end: chrono::NaiveDate,
) -> Result<(), StoreError> {
    let tenant_id = e.external_tenant()?;
    let tenant = tenant_id.to_string();
    let plan: Option<(i64, String, String)> = tx
        .query_row(
            "SELECT p.monthly_quota_units, p.overage_policy, p.code FROM tenants t JOIN plans p ON p.code = t.plan_code
             WHERE t.id = ?1",
            [&tenant],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )
        .optional()
        .map_err(classify)?;
    let (quota, policy, plan_code) = plan.ok_or_else(|| unknown_tenant(tenant_id))?;
    let stored: Option<i64> = tx
        .query_row("SELECT 1 FROM usage_events WHERE event_id = ?1", [e.event_id.to_string()], |r| r.get(0))
        .optional()
        .map_err(classify)?;
    if stored.is_some() {
        return Ok(());
    }
    let start = period_start.to_string();
    tx.execute(
        "INSERT INTO quota_usage (tenant_id, period_start, period_end, quota_units, overage_policy, updated_at,
             plan_code)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) ON CONFLICT (tenant_id, period_start) DO NOTHING",
        params![tenant, start, period_end.to_string(), quota, policy, timestamp(e.recorded_at), plan_code],
    )
    .map_err(classify)?;
    let overage: i64 = tx
        .query_row(
            "UPDATE quota_usage SET
                 overage_units = overage_units + max(0, units_used + ?3 - quota_units) - max(0, units_used - quota_units),
                 units_used = units_used + ?3,
                 updated_at = ?4
             WHERE tenant_id = ?1 AND period_start = ?2
             RETURNING max(0, units_used - quota_units) - max(0, units_used - ?3 - quota_units)",
            params![tenant, start, e.units, timestamp(e.recorded_at)],
            |r| r.get(0),
        )
        .map_err(classify)?;
    insert_usage_event(tx, &e.with_debited_overage(overage))?;
    emit_quota_thresholds(tx, tenant_id, period_start, e.recorded_at)
}

pub(super) async fn apply(
    store: &SqliteStore,
    inbox: &InboxEntry,
    effect: &IntegrationEffect,
) -> Result<ApplyOutcome, StoreError> {
    let (inbox, effect) = (inbox.clone(), effect.clone());
    let result = store
        .write(move |tx| {
            let inserted = tx
                .execute(
                    "INSERT INTO inbox_messages (source, event_id, event_type, processed_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (source, event_id) DO NOTHING",
                    params![inbox.source, inbox.event_id, inbox.event_type, timestamp(inbox.processed_at)],
                )
                .map_err(classify)?;
            if inserted == 0 {
                return Ok(ApplyOutcome::Duplicate);
            }
            apply_effect(tx, &effect, inbox.processed_at)?;
            Ok(ApplyOutcome::Applied)
        })
        .await;
    // A refused reference or a taken key rolled the whole transaction back, inbox row included.
    match result {
        Err(StoreError::ForeignKey(reason) | StoreError::Conflict(reason)) => Ok(ApplyOutcome::Rejected(reason)),
        other => other,
    }
}

fn quarantined_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<QuarantinedMessage, StoreError>> {
    let (id, received, message_id, delivery_count): (String, String, Option<String>, Option<i32>) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?);
    let (content_type, reason, raw_body, replayed): (Option<String>, String, String, Option<String>) =
        (r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?);
    let (identity, deliveries, last_received): (Option<String>, i64, Option<String>) =
        (r.get(8)?, r.get(9)?, r.get(10)?);
    Ok((|| {
        Ok(QuarantinedMessage {
            id: parse_uuid(&id)?,
            received_at: parse_timestamp(&received)?,
            message_id,
            delivery_count,
            content_type,
            reason,
            raw_body,
            replayed_at: replayed.as_deref().map(parse_timestamp).transpose()?,
            identity,
            deliveries,
            last_received_at: last_received.as_deref().map(parse_timestamp).transpose()?,
        })
    })())
}

const QUARANTINE_COLUMNS: &str = "id, received_at, message_id, delivery_count, content_type, reason, raw_body, replayed_at, \
     message_identity, deliveries, last_received_at";

pub(super) async fn quarantine(store: &SqliteStore, m: &QuarantinedMessage) -> Result<Uuid, StoreError> {
    let m = m.clone();
    store
        .write(move |tx| {
            let id: String = tx
                .query_row(
                    &format!(
                        "INSERT INTO quarantine_messages ({QUARANTINE_COLUMNS})
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, 1, NULL)
                         ON CONFLICT (message_identity) WHERE message_identity IS NOT NULL DO UPDATE SET
                             deliveries = deliveries + 1,
                             last_received_at = excluded.received_at,
                             delivery_count = max(coalesce(delivery_count, 0), coalesce(excluded.delivery_count, 0))
                         RETURNING id"
                    ),
                    params![
                        m.id.to_string(),
                        timestamp(m.received_at),
                        m.message_id,
                        m.delivery_count,
                        m.content_type,
                        m.reason,
                        m.raw_body,
                        m.replayed_at.map(timestamp),
                        m.identity
                    ],
                    |r| r.get(0),
                )
                .map_err(classify)?;
            parse_uuid(&id)
        })
        .await
}

pub(super) async fn list_quarantine(store: &SqliteStore, limit: u32) -> Result<Vec<QuarantinedMessage>, StoreError> {
    store
        .read(move |conn| {
            let sql = format!(
                "SELECT {QUARANTINE_COLUMNS} FROM quarantine_messages ORDER BY received_at DESC, id DESC LIMIT ?1"
            );
            query_all(conn, &sql, [i64::from(limit.max(1))], quarantined_from_row)
        })
        .await
}

pub(super) async fn get_quarantined(store: &SqliteStore, id: Uuid) -> Result<Option<QuarantinedMessage>, StoreError> {
    store
        .read(move |conn| {
            let sql = format!("SELECT {QUARANTINE_COLUMNS} FROM quarantine_messages WHERE id = ?1");
            query_one(conn, &sql, [id.to_string()], quarantined_from_row)
        })
        .await
}

pub(super) async fn mark_replayed(store: &SqliteStore, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
    store
        .write(move |tx| {
            let changed = tx
                .execute(
                    "UPDATE quarantine_messages SET replayed_at = ?2 WHERE id = ?1",
                    params![id.to_string(), timestamp(now)],
                )
                .map_err(classify)?;
            Ok(changed == 1)
        })
        .await
}

const OUTBOX_COLUMNS: &str =
    "seq, id, event_type, subject, payload, created_at, available_at, attempts, last_error, sent_at";

fn outbox_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<OutboxRow, StoreError>> {
    let (seq, id, event_type, subject, payload): (i64, String, String, Option<String>, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (created, available, attempts, last_error, sent): (String, String, i32, Option<String>, Option<String>) =
        (r.get(5)?, r.get(6)?, r.get(7)?, r.get(8)?, r.get(9)?);
    Ok((|| {
        Ok(OutboxRow {
            seq,
            message: OutboxMessage {
                id: parse_uuid(&id)?,
                event_type,
                subject,
                payload,
                created_at: parse_timestamp(&created)?,
                available_at: parse_timestamp(&available)?,
            },
            attempts,
            last_error,
            sent_at: sent.as_deref().map(parse_timestamp).transpose()?,
        })
    })())
}

pub(super) async fn pending_outbox(
    store: &SqliteStore,
    now: DateTime<Utc>,
    limit: u32,
) -> Result<Vec<OutboxRow>, StoreError> {
    store
        .read(move |conn| {
            let sql = format!(
                "SELECT {OUTBOX_COLUMNS} FROM outbox_messages WHERE sent_at IS NULL AND available_at <= ?1
                 ORDER BY available_at, seq LIMIT ?2"
            );
            query_all(conn, &sql, params![timestamp(now), i64::from(limit.max(1))], outbox_from_row)
        })
        .await
}

pub(super) async fn mark_sent(store: &SqliteStore, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
    store
        .write(move |tx| {
            tx.execute(
                "UPDATE outbox_messages SET sent_at = ?2, attempts = attempts + 1, last_error = NULL
                 WHERE id = ?1 AND sent_at IS NULL",
                params![id.to_string(), timestamp(now)],
            )
            .map(drop)
            .map_err(classify)
        })
        .await
}

pub(super) async fn mark_failed(
    store: &SqliteStore,
    id: Uuid,
    error: &str,
    next_attempt_at: DateTime<Utc>,
) -> Result<(), StoreError> {
    let error: String = error.chars().take(2000).collect();
    store
        .write(move |tx| {
            tx.execute(
                "UPDATE outbox_messages SET attempts = attempts + 1, last_error = ?2, available_at = ?3
                 WHERE id = ?1 AND sent_at IS NULL",
                params![id.to_string(), error, timestamp(next_attempt_at)],
            )
            .map(drop)
            .map_err(classify)
        })
        .await
}

pub(super) async fn list_outbox(store: &SqliteStore, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
    store
        .read(move |conn| {
            let sql = format!("SELECT {OUTBOX_COLUMNS} FROM outbox_messages WHERE seq > ?1 ORDER BY seq LIMIT ?2");
            query_all(conn, &sql, params![after_seq, i64::from(limit.max(1))], outbox_from_row)
        })
        .await
}

#[async_trait]
impl IntegrationStore for SqliteStore {
    async fn apply_integration_event(
        &self,
        inbox: &InboxEntry,
        effect: &IntegrationEffect,
    ) -> Result<ApplyOutcome, StoreError> {
        apply(self, inbox, effect).await
    }

    async fn quarantine_message(&self, message: &QuarantinedMessage) -> Result<Uuid, StoreError> {
        quarantine(self, message).await
    }

    async fn list_quarantine(&self, limit: u32) -> Result<Vec<QuarantinedMessage>, StoreError> {
        list_quarantine(self, limit).await
    }

    async fn get_quarantined(&self, id: Uuid) -> Result<Option<QuarantinedMessage>, StoreError> {
        get_quarantined(self, id).await
    }

    async fn mark_quarantine_replayed(&self, id: Uuid, now: DateTime<Utc>) -> Result<bool, StoreError> {
        mark_replayed(self, id, now).await
    }

    async fn pending_outbox(&self, now: DateTime<Utc>, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        pending_outbox(self, now, limit).await
    }

    async fn mark_outbox_sent(&self, id: Uuid, now: DateTime<Utc>) -> Result<(), StoreError> {
        mark_sent(self, id, now).await
    }

    async fn mark_outbox_failed(
        &self,
        id: Uuid,
        error: &str,
        next_attempt_at: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        mark_failed(self, id, error, next_attempt_at).await
    }

    async fn list_outbox(&self, after_seq: i64, limit: u32) -> Result<Vec<OutboxRow>, StoreError> {
        list_outbox(self, after_seq, limit).await
    }
}
