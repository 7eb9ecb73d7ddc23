//! The audit log on SQL Server: the hash-chained append (chains locked in key order) and the two read paths.

use std::collections::HashMap;

use async_trait::async_trait;
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::*;
use crate::store::AuditStore;

/// An audit event row, in the column order of `audit_columns!`.
fn audit_from(row: &Row) -> Result<AuditEvent, StoreError> {
    let outcome = text(row, 11)?;
    let opt = |i| column::<&str>(row, i).map(|v| v.map(str::to_owned));
    Ok(AuditEvent {
        id: required(row, 0)?,
        chain: text(row, 1)?,
        chain_seq: required(row, 2)?,
        tenant_id: column(row, 3)?,
        occurred_at: required(row, 4)?,
        actor_oid: opt(5)?,
        actor_app_id: opt(6)?,
        actor_tenant_id: opt(7)?,
        action: text(row, 8)?,
        resource_type: text(row, 9)?,
        resource_id: opt(10)?,
        outcome: AuditOutcome::parse(&outcome).ok_or_else(|| corrupt("audit outcome", &outcome))?,
        request_id: opt(12)?,
        summary: text(row, 13)?,
        before_hash: opt(14)?,
        after_hash: opt(15)?,
        limiter_decision: opt(16)?,
        prev_hash: text(row, 17)?,
        hash: text(row, 18)?,
    })
}

/// Appends audit events inside the caller's transaction. Chains are locked in key order (each head read
/// `WITH (UPDLOCK, HOLDLOCK)`), so two batches touching the same chains wait for each other instead of
/// deadlocking; within a chain, events keep their order. Events already stored (a retried batch) are skipped.
pub(crate) async fn append_audit(conn: &mut MssqlClient, events: &[AuditEventInput]) -> Result<(), StoreError> {
    let mut ordered: Vec<&AuditEventInput> = events.iter().collect();
    ordered.sort_by_key(|e| audit_chain_key(e.tenant_id)); // stable: a chain's events keep their order
    let mut heads: HashMap<String, (i64, String)> = HashMap::new();
    for input in ordered {
        if !rows(conn, q::AUDIT_EVENT_EXISTS, &[&input.id]).await?.is_empty() {
            continue;
        }
        let chain = audit_chain_key(input.tenant_id);
        let (seq, prev) = match heads.get(&chain) {
            Some(head) => head.clone(),
            None => match rows(conn, q::AUDIT_CHAIN_HEAD, &[&chain.as_str()]).await?.first() {
                Some(row) => (required::<i64>(row, 0)?, text(row, 1)?),
                None => (0, AUDIT_GENESIS_HASH.to_owned()),
            },
        };
        let e = input.seal(seq + 1, &prev);
        let params: [&dyn ToSql; 19] = [
            &e.id,
            &e.chain.as_str(),
            &e.chain_seq,
            &e.tenant_id,
            &e.occurred_at,
            &e.actor_oid.as_deref(),
            &e.actor_app_id.as_deref(),
            &e.actor_tenant_id.as_deref(),
            &e.action.as_str(),
            &e.resource_type.as_str(),
            &e.resource_id.as_deref(),
            &e.outcome.as_str(),
            &e.request_id.as_deref(),
            &e.summary.as_str(),
            &e.before_hash.as_deref(),
            &e.after_hash.as_deref(),
            &e.limiter_decision.as_deref(),
            &e.prev_hash.as_str(),
            &e.hash.as_str(),
        ];
        execute(conn, q::INSERT_AUDIT_EVENT, &params).await?;
        heads.insert(chain, (e.chain_seq, e.hash));
    }
    Ok(())
}

#[async_trait]
impl AuditStore for MssqlStore {
    async fn list_audit_events(
        &self,
        tenant_id: Option<Uuid>,
        filter: &AuditFilter,
        after: Option<&AuditCursor>,
        limit: u32,
    ) -> Result<Page<AuditEvent, AuditCursor>, StoreError> {
        let limit = limit.max(1);
        let statement = &q::list_audit_events(tenant_id, filter, after, i64::from(limit) + 1);
        in_tx!(self, Retry::Yes, |conn| {
            let mut items =
                assembled_rows(conn, statement).await?.iter().map(audit_from).collect::<Result<Vec<_>, _>>()?;
            let next = if items.len() > limit as usize {
                items.truncate(limit as usize);
                items.last().map(|e| AuditCursor { occurred_at: e.occurred_at, id: e.id })
            } else {
                None
            };
            Ok(Page { items, next })
        })
    }

    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, q::AUDIT_CHAIN, &[&chain, &after_seq, &top]).await?.iter().map(audit_from).collect()
        })
    }
}
