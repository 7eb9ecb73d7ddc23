//! The storage contract, run against every store: SQLite always, SQL Server when `MSSQL_TEST_CONNECTION_STRING` is set.

mod audit;
mod documents;
mod grants;
mod integration;
mod leases;
mod metering;
mod operations;
mod plans;
mod tenants;
pub(crate) mod usage;

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Utc};
use meterline::store::search::{self, SearchQuery, TermKind};
use meterline::store::*;
use uuid::Uuid;

use crate::support::stores::{self, TestStore, for_each_store};

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 31, 23, 59, 0).unwrap()
}

fn plan(code: &str, quota: i64, policy: OveragePolicy) -> Plan {
    Plan {
        overage_policy: policy,
        base_price_micros: 49_000_000,
        overage_unit_price_micros: 1_000,
        ..stores::plan(code, quota, t0())
    }
}

fn tenant(n: u128, plan_code: &str, created_at: DateTime<Utc>) -> Tenant {
    Tenant {
        id: Uuid::from_u128(0x1000 + n),
        entra_tenant_id: Some(Uuid::from_u128(0x9000 + n)),
        name: format!("Tenant {n}"),
        status: TenantStatus::Active,
        plan_code: plan_code.into(),
        created_at,
        updated_at: created_at,
        version: 1,
        billing: Default::default(),
    }
}

async fn migrated(store: &TestStore) -> Arc<dyn Store> {
    store.store.migrate().await.expect("migrate");
    store.store.clone()
}

async fn tenant_on_plan(store: &Arc<dyn Store>, quota: i64, policy: OveragePolicy) -> Tenant {
    store.create_plan(&plan("metered", quota, policy), None).await.unwrap();
    let tenant = tenant(1, "metered", t0());
    store.create_tenant(&tenant, None).await.unwrap();
    tenant
}

async fn two_tenants(store: &Arc<dyn Store>) -> (Tenant, Tenant) {
    store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
    let (a, b) = (tenant(1, "pro", t0()), tenant(2, "pro", t0()));
    store.create_tenant(&a, None).await.unwrap();
    store.create_tenant(&b, None).await.unwrap();
    (a, b)
}

/// Document ids in an order unrelated to `n` (multiplying by an odd constant is a bijection on u128).
fn doc_id(n: u128) -> Uuid {
    Uuid::from_u128((n + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835))
}

fn document(tenant: &Tenant, n: u128) -> Document {
    let at = t0() + Duration::microseconds(n as i64 * 1_000_001);
    Document {
        id: doc_id(n),
        tenant_id: tenant.id,
        title: format!("document {n}"),
        summary: None,
        body: None,
        doc_type: "memo".into(),
        jurisdiction: None,
        status: DocumentStatus::Draft,
        effective_date: None,
        tags: Vec::new(),
        created_by: "oid-author".into(),
        updated_by: "oid-author".into(),
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

fn tags(list: &[&str]) -> Vec<String> {
    list.iter().map(|t| t.to_string()).collect()
}

fn ids(documents: &[Document]) -> Vec<Uuid> {
    documents.iter().map(|d| d.id).collect()
}

/// What `list_documents` must select, written independently of the stores.
fn matches(d: &Document, f: &DocumentFilter) -> bool {
    f.status.is_none_or(|s| d.status == s)
        && f.doc_type.as_ref().is_none_or(|x| &d.doc_type == x)
        && f.jurisdiction.as_ref().is_none_or(|x| d.jurisdiction.as_ref() == Some(x))
        && (f.tags_any.is_empty() || d.tags.iter().any(|tag| f.tags_any.contains(tag)))
        && f.updated_after.is_none_or(|x| d.updated_at >= x)
        && f.updated_before.is_none_or(|x| d.updated_at < x)
        && f.effective_from.is_none_or(|x| d.effective_date.is_some_and(|e| e >= x))
        && f.effective_to.is_none_or(|x| d.effective_date.is_some_and(|e| e <= x))
        && f.search.as_ref().is_none_or(|q| search_matches(d, q))
}

/// The search's meaning, written out plainly: every required term in some field, no excluded one; a phrase is
/// consecutive words of one field.
fn search_matches(d: &Document, q: &SearchQuery) -> bool {
    let tags = d.tags.join(" ");
    let fields: Vec<Vec<String>> =
        [Some(d.title.as_str()), d.summary.as_deref(), d.body.as_deref(), Some(tags.as_str())]
            .into_iter()
            .flatten()
            .map(|text| search::words(text).map(|(w, _)| w).collect())
            .collect();
    let has = |kind: &TermKind| {
        fields.iter().any(|words| match kind {
            TermKind::Word(w) => words.contains(w),
            TermKind::Prefix(p) => words.iter().any(|w| w.starts_with(p.as_str())),
            TermKind::Phrase(phrase) => words.windows(phrase.len()).any(|window| window == phrase.as_slice()),
        })
    };
    q.required().all(has) && !q.excluded().any(has)
}

fn audit_input(n: u128, tenant_id: Option<Uuid>, minute: i64) -> AuditEventInput {
    AuditEventInput {
        id: Uuid::from_u128(0xA000 + n),
        tenant_id,
        occurred_at: t0() + Duration::minutes(minute) + Duration::nanoseconds(123_456_789),
        actor_oid: Some(format!("oid-{}", n % 2)),
        actor_app_id: Some(format!("app-{}", n % 3)),
        actor_tenant_id: Some("9000".into()),
        action: if n.is_multiple_of(2) { "patchDocument".into() } else { "createDocument".into() },
        resource_type: "documents".into(),
        resource_id: Some(format!("doc-{n}")),
        outcome: if n % 4 == 3 { AuditOutcome::Denied } else { AuditOutcome::Succeeded },
        request_id: Some(format!("req-{n}")),
        summary: format!("event {n} — ünïcode"),
        before_hash: n.is_multiple_of(2).then(|| "ab".repeat(32)),
        after_hash: Some("cd".repeat(32)),
        limiter_decision: Some("allowed minute r=4 month r=95 cost=5".into()),
    }
}

/// Checks a whole chain link by link with the shared verifier; returns its length.
fn assert_intact(events: &[AuditEvent]) -> usize {
    let mut verifier = meterline::metering::audit::ChainVerifier::default();
    for e in events {
        assert_eq!(verifier.check(e), None, "chain breaks at {}", e.chain_seq);
    }
    events.len()
}
