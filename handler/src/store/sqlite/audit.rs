//! The audit log on SQLite: the hash-chained append and the two read paths (filtered pages, one chain in order).

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params, params_from_iter};
use uuid::Uuid;

use super::*;
use crate::store::AuditStore;

const AUDIT_COLUMNS: &str = "id, chain, chain_seq, tenant_id, occurred_at, actor_oid, actor_app_id, actor_tenant_id, \
    action, resource_type, resource_id, outcome, request_id, summary, before_hash, after_hash, limiter_decision, \
    prev_hash, hash";

fn audit_from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<AuditEvent, StoreError>> {
    let (id, chain, chain_seq, tenant, occurred): (String, String, i64, Option<String>, String) =
        (r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?);
    let (actor_oid, actor_app_id, actor_tenant_id): (Option<String>, Option<String>, Option<String>) =
        (r.get(5)?, r.get(6)?, r.get(7)?);
    let (action, resource_type, resource_id, outcome): (String, String, Option<String>, String) =
        (r.get(8)?, r.get(9)?, r.get(10)?, r.get(11)?);
    let (request_id, summary, before_hash, after_hash): (Option<String>, String, Option<String>, Option<String>) =
        (r.get(12)?, r.get(13)?, r.get(14)?, r.get(15)?);
    let (limiter_decision, prev_hash, hash): (Option<String>, String, String) = (r.get(16)?, r.get(17)?, r.get(18)?);
    Ok((|| {
        Ok(AuditEvent {
            id: parse_uuid(&id)?,
            chain,
            chain_seq,
            tenant_id: tenant.as_deref().map(parse_uuid).transpose()?,
            occurred_at: parse_timestamp(&occurred)?,
            actor_oid,
            actor_app_id,
            actor_tenant_id,
            action,
            resource_type,
            resource_id,
            outcome: AuditOutcome::parse(&outcome).ok_or_else(|| corrupt("audit outcome", &outcome))?,
            request_id,
            summary,
            before_hash,
            after_hash,
            limiter_decision,
            prev_hash,
            hash,
        })
    })())
}

/// Appends audit events to their chains inside the caller's write transaction. The writer is the only
/// writer (`BEGIN IMMEDIATE` also holds off other processes), so the head read here is still the head at
/// commit. Events whose id is stored already are skipped (a retried batch).
pub(crate) fn append_audit(tx: &Connection, events: &[AuditEventInput]) -> Result<(), StoreError> {
    let mut heads = ChainHeads::default();
    for input in events {
        let exists: Option<i64> = tx
            .query_row("SELECT 1 FROM audit_events WHERE id = ?1", [input.id.to_string()], |r| r.get(0))
            .optional()
            .map_err(classify)?;
        if exists.is_some() {
            continue;
        }
        let chain = audit_chain_key(input.tenant_id);
        let head = match heads.get(&chain) {
            Some(head) => Some(head),
            None => tx
                .query_row(
                    "SELECT chain_seq, hash FROM audit_events WHERE chain = ?1 ORDER BY chain_seq DESC LIMIT 1",
                    [&chain],
                    |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
                )
                .optional()
                .map_err(classify)?,
        };
        let e = heads.seal(input, head);
        tx.prepare_cached(
            "INSERT INTO audit_events (id, chain, chain_seq, tenant_id, occurred_at, actor_oid, actor_app_id,
                 actor_tenant_id, action, resource_type, resource_id, outcome, request_id, summary, before_hash,
                 after_hash, limiter_decision, prev_hash, hash)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)",
        )
        .map_err(classify)?
        .execute(params![
            e.id.to_string(),
            e.chain,
            e.chain_seq,
            e.tenant_id.map(|t| t.to_string()),
            timestamp(e.occurred_at),
            e.actor_oid,
            e.actor_app_id,
            e.actor_tenant_id,
            e.action,
            e.resource_type,
            e.resource_id,
            e.outcome.as_str(),
            e.request_id,
            e.summary,
            e.before_hash,
            e.after_hash,
            e.limiter_decision,
            e.prev_hash,
            e.hash
        ])
        .map_err(classify)?;
    }
    Ok(())
}

#[async_trait]
impl AuditStore for SqliteStore {
    async fn list_audit_events(
        &self,
        tenant_id: Option<Uuid>,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Page<AuditEvent, AuditCursor>, StoreError> {
        let limit = limit.max(1);
        let mut a = Assembled { sql: format!("SELECT {AUDIT_COLUMNS} FROM audit_events"), values: Vec::new() };
        matching(&mut a, tenant_id, filter);
        if let Some(cursor) = after {
            let (t, id) = (a.bind(timestamp(cursor.occurred_at)), a.bind(cursor.id.to_string()));
            a.sql.push_str(&format!(" AND occurred_at <= {t} AND (occurred_at < {t} OR id < {id})"));
        }
        let fetch = a.bind(i64::from(limit) + 1);
        a.sql.push_str(&format!(" ORDER BY occurred_at DESC, id DESC LIMIT {fetch}"));
        self.read(move |conn| {
            let items = query_all(conn, &a.sql, params_from_iter(a.values), audit_from_row)?;
            Ok(audit_page(items, limit))
        })
        .await
    }

    async fn count_audit_events(&self, tenant_id: Option<Uuid>, filter: &AuditFilter) -> Result<u64, StoreError> {
        let mut a = Assembled { sql: "SELECT count(*) FROM audit_events".to_owned(), values: Vec::new() };
        matching(&mut a, tenant_id, filter);
        self.read(move |conn| {
            conn.query_row(&a.sql, params_from_iter(a.values), |r| r.get::<_, i64>(0))
                .map(|n| n as u64)
                .map_err(classify)
        })
        .await
    }

    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let chain = chain.to_owned();
        self.read(move |conn| {
            let sql = format!(
                "SELECT {AUDIT_COLUMNS} FROM audit_events WHERE chain = ?1 AND chain_seq > ?2 ORDER BY chain_seq LIMIT ?3"
            );
            query_all(conn, &sql, params![chain, after_seq, i64::from(limit.max(1))], audit_from_row)
        })
        .await
    }
}

/// The `WHERE` of a tenant's (or the platform's) events that match `filter`.
fn matching(a: &mut Assembled, tenant_id: Option<Uuid>, filter: &AuditFilter) {
    match tenant_id {
        Some(id) => {
            let p = a.bind(id.to_string());
            a.sql.push_str(&format!(" WHERE tenant_id = {p}"));
        }
        None => a.sql.push_str(" WHERE tenant_id IS NULL"),
    }
    if let Some(actor) = &filter.actor {
        let p = a.bind(actor.clone());
        a.sql.push_str(&format!(" AND (actor_oid = {p} OR actor_app_id = {p})"));
    }
    for (column, value) in
        [("action", &filter.action), ("resource_type", &filter.resource_type), ("resource_id", &filter.resource_id)]
    {
        if let Some(value) = value {
            let p = a.bind(value.clone());
            a.sql.push_str(&format!(" AND {column} = {p}"));
        }
    }
    if let Some(outcome) = filter.outcome {
        let p = a.bind(outcome.as_str().to_owned());
        a.sql.push_str(&format!(" AND outcome = {p}"));
    }
    if let Some(from) = filter.from {
        let p = a.bind(timestamp(ceil_micros(from)));
        a.sql.push_str(&format!(" AND occurred_at >= {p}"));
    }
    if let Some(to) = filter.to {
        let p = a.bind(timestamp(ceil_micros(to)));
        a.sql.push_str(&format!(" AND occurred_at < {p}"));
    }
}
