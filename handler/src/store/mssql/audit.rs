//! The audit log on SQL Server: the hash-chained append (chains locked in key order) and the two read paths.

use async_trait::async_trait;
use tiberius::{Row, ToSql};
use uuid::Uuid;

use super::queries::{Arg, Assembled};
use super::*;
use crate::store::AuditStore;
use crate::store::model::ceil_micros;

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
    let mut heads = ChainHeads::default();
    for input in ordered {
        if !rows(conn, AUDIT_EVENT_EXISTS, &[&input.id]).await?.is_empty() {
            continue;
        }
        let chain = audit_chain_key(input.tenant_id);
        let head = match heads.get(&chain) {
            Some(head) => Some(head),
            None => match rows(conn, AUDIT_CHAIN_HEAD, &[&chain.as_str()]).await?.first() {
                Some(row) => Some((required::<i64>(row, 0)?, text(row, 1)?)),
                None => None,
            },
        };
        let e = heads.seal(input, head);
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
        execute(conn, INSERT_AUDIT_EVENT, &params).await?;
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
        let statement = &list_audit_events(tenant_id, filter, after, i64::from(limit) + 1);
        in_tx!(self, Retry::Yes, |conn| {
            let items = assembled_rows(conn, statement).await?.iter().map(audit_from).collect::<Result<Vec<_>, _>>()?;
            Ok(audit_page(items, limit))
        })
    }

    async fn count_audit_events(&self, tenant_id: Option<Uuid>, filter: &AuditFilter) -> Result<u64, StoreError> {
        let statement = &count_audit_events(tenant_id, filter);
        in_tx!(self, Retry::Yes, |conn| {
            let found = assembled_rows(conn, statement).await?;
            let n: i64 = found.first().map(|r| required(r, 0)).transpose()?.unwrap_or(0);
            Ok(n as u64)
        })
    }

    async fn audit_chain(&self, chain: &str, after_seq: i64, limit: u32) -> Result<Vec<AuditEvent>, StoreError> {
        let top = i64::from(limit.max(1));
        in_tx!(self, Retry::Yes, |conn| {
            rows(conn, AUDIT_CHAIN, &[&chain, &after_seq, &top]).await?.iter().map(audit_from).collect()
        })
    }
}

/// The columns of an audit event, in the order `audit_from` reads them.
macro_rules! audit_columns {
    () => {
        "id, chain, chain_seq, tenant_id, occurred_at, actor_oid, actor_app_id, actor_tenant_id, action, resource_type,
    resource_id, outcome, request_id, summary, before_hash, after_hash, limiter_decision, prev_hash, hash"
    };
}

/// Whether an audit event is stored already (a retried batch skips it).
pub(crate) const AUDIT_EVENT_EXISTS: &str = "SELECT 1 AS found FROM dbo.audit_events WHERE id = @P1";

/// The head of a chain, read under a key-range update lock held to the end of the transaction (also when the
/// chain is empty): a concurrent appender of the same chain waits here, then reads the new head.
pub(crate) const AUDIT_CHAIN_HEAD: &str =
    "SELECT TOP (1) chain_seq, hash FROM dbo.audit_events WITH (UPDLOCK, HOLDLOCK)
WHERE chain = @P1 ORDER BY chain_seq DESC";

/// Appends one audit event. The table has no UPDATE or DELETE statement anywhere (a ledger table refuses them).
pub(crate) const INSERT_AUDIT_EVENT: &str = concat!(
    "INSERT INTO dbo.audit_events (",
    audit_columns!(),
    ")
VALUES (@P1, @P2, @P3, @P4, @P5, @P6, @P7, @P8, @P9, @P10, @P11, @P12, @P13, @P14, @P15, @P16, @P17, @P18, @P19)"
);

/// A page of one chain in `chain_seq` order, for verification (served by `ux_audit_events_chain_seq`).
pub(crate) const AUDIT_CHAIN: &str = concat!(
    "SELECT TOP (@P3) ",
    audit_columns!(),
    "
FROM dbo.audit_events WHERE chain = @P1 AND chain_seq > @P2 ORDER BY chain_seq"
);

/// One page of a tenant's audit events (`None`: the platform events, `tenant_id IS NULL`), newest first, strictly
/// after `after`: `TOP (fetch)` on `ix_audit_events_tenant_time`.
pub(crate) fn list_audit_events(
    tenant_id: Option<Uuid>,
    filter: &AuditFilter,
    after: Option<&AuditCursor>,
    fetch: i64,
) -> Assembled {
    let mut a = Assembled::default();
    let top = a.bind(Arg::Int(fetch));
    a.sql = format!(concat!("SELECT TOP ({}) ", audit_columns!(), "\nFROM dbo.audit_events"), top);
    matching(&mut a, tenant_id, filter);
    if let Some(cursor) = after {
        let t = a.bind(Arg::Time(cursor.occurred_at));
        let id = a.bind(Arg::Id(cursor.id));
        a.sql.push_str(&format!("\n    AND occurred_at <= {t} AND (occurred_at < {t} OR id < {id})"));
    }
    a.sql.push_str("\nORDER BY occurred_at DESC, id DESC");
    a
}

/// How many events of `tenant_id` match `filter`.
pub(crate) fn count_audit_events(tenant_id: Option<Uuid>, filter: &AuditFilter) -> Assembled {
    let mut a = Assembled { sql: "SELECT COUNT_BIG(*) AS n FROM dbo.audit_events".to_owned(), ..Assembled::default() };
    matching(&mut a, tenant_id, filter);
    a
}

/// The `WHERE` of a tenant's (or the platform's) events that match `filter`.
fn matching(a: &mut Assembled, tenant_id: Option<Uuid>, filter: &AuditFilter) {
    match tenant_id {
        Some(id) => {
            let p = a.bind(Arg::Id(id));
            a.sql.push_str(&format!("\nWHERE tenant_id = {p}"));
        }
        None => a.sql.push_str("\nWHERE tenant_id IS NULL"),
    }
    if let Some(actor) = &filter.actor {
        let p = a.bind(Arg::Text(actor.clone()));
        a.sql.push_str(&format!("\n    AND (actor_oid = {p} OR actor_app_id = {p})"));
    }
    for (column, value) in
        [("action", &filter.action), ("resource_type", &filter.resource_type), ("resource_id", &filter.resource_id)]
    {
        if let Some(value) = value {
            let p = a.bind(Arg::Text(value.clone()));
            a.sql.push_str(&format!("\n    AND {column} = {p}"));
        }
    }
    if let Some(outcome) = filter.outcome {
        let p = a.bind(Arg::Text(outcome.as_str().to_owned()));
        a.sql.push_str(&format!("\n    AND outcome = {p}"));
    }
    if let Some(from) = filter.from {
        let p = a.bind(Arg::Time(ceil_micros(from)));
        a.sql.push_str(&format!("\n    AND occurred_at >= {p}"));
    }
    if let Some(to) = filter.to {
        let p = a.bind(Arg::Time(ceil_micros(to)));
        a.sql.push_str(&format!("\n    AND occurred_at < {p}"));
    }
}

/// Every statement above, by name, for the parse check (`store::tsql_check`).
pub(crate) const STATEMENTS: &[(&str, &str)] = &[
    ("AUDIT_EVENT_EXISTS", AUDIT_EVENT_EXISTS),
    ("AUDIT_CHAIN_HEAD", AUDIT_CHAIN_HEAD),
    ("INSERT_AUDIT_EVENT", INSERT_AUDIT_EVENT),
    ("AUDIT_CHAIN", AUDIT_CHAIN),
];
