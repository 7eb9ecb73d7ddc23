//! The storage contract for audit events and their hash chains.

use super::*;

#[tokio::test]
async fn audit_events_chain_per_tenant_and_list_newest_first_with_filters() {
    for_each_store("audit_events_chain_per_tenant_and_list_newest_first_with_filters", |t| async move {
        let store = migrated(&t).await;
        let (acme, other) = two_tenants(&store).await;
        let first: Vec<AuditEventInput> = vec![
            audit_input(1, Some(acme.id), 1),
            audit_input(2, Some(other.id), 2),
            audit_input(3, Some(acme.id), 3),
            audit_input(4, None, 4),
            audit_input(5, Some(acme.id), 5),
        ];
        assert_eq!(store.record_usage(&[], &first).await.unwrap(), 0);
        // A retried batch skips what it stored already; the new event goes to the end of the chain.
        let again = vec![audit_input(5, Some(acme.id), 5), audit_input(6, Some(acme.id), 6)];
        store.record_usage(&[], &again).await.unwrap();

        let chain = audit_chain_key(Some(acme.id));
        let events = store.audit_chain(&chain, 0, 100).await.unwrap();
        assert_eq!(events.iter().map(|e| e.chain_seq).collect::<Vec<_>>(), vec![1, 2, 3, 4], "{}", t.name);
        assert_eq!(events.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 3, 5, 6].map(|n| Uuid::from_u128(0xA000 + n)));
        assert_eq!(events[0].prev_hash, AUDIT_GENESIS_HASH);
        assert_eq!(assert_intact(&events), 4);
        assert_eq!(events[1], audit_input(3, Some(acme.id), 3).seal(2, &events[0].hash), "every column round-trips");
        assert_eq!(events[0].occurred_at.timestamp_subsec_nanos(), 123_456_000);
        let page = store.audit_chain(&chain, 2, 1).await.unwrap();
        assert_eq!(page.iter().map(|e| e.chain_seq).collect::<Vec<_>>(), vec![3]);
        let others = store.audit_chain(&audit_chain_key(Some(other.id)), 0, 100).await.unwrap();
        assert_eq!((others.len(), others[0].chain_seq), (1, 1), "each tenant has its own chain");
        let platform = store.audit_chain("platform", 0, 100).await.unwrap();
        assert_eq!((platform.len(), platform[0].tenant_id), (1, None));

        let all = AuditFilter::default();
        let listed = |filter: AuditFilter| {
            let store = store.clone();
            async move {
                let mut ids = Vec::new();
                let mut after = None;
                let ids = loop {
                    let page = store.list_audit_events(Some(acme.id), &filter, after.as_ref(), 2).await.unwrap();
                    assert!(page.items.len() <= 2);
                    ids.extend(page.items.iter().map(|e| e.id.as_u128() - 0xA000));
                    match page.next {
                        Some(next) => after = Some(next),
                        None => break ids,
                    }
                };
                // The count of a listing is what its pages hold, with the same filter.
                assert_eq!(store.count_audit_events(Some(acme.id), &filter).await.unwrap(), ids.len() as u64);
                ids
            }
        };
        assert_eq!(listed(all.clone()).await, vec![6, 5, 3, 1], "{}: newest first, in pages", t.name);
        let by = |f: AuditFilter| listed(f);
        assert_eq!(by(AuditFilter { actor: Some("oid-0".into()), ..all.clone() }).await, vec![6]);
        assert_eq!(by(AuditFilter { actor: Some("app-0".into()), ..all.clone() }).await, vec![6, 3], "app id too");
        assert_eq!(by(AuditFilter { action: Some("createDocument".into()), ..all.clone() }).await, vec![5, 3, 1]);
        assert_eq!(by(AuditFilter { outcome: Some(AuditOutcome::Denied), ..all.clone() }).await, vec![3]);
        assert_eq!(by(AuditFilter { resource_id: Some("doc-5".into()), ..all.clone() }).await, vec![5]);
        assert_eq!(by(AuditFilter { resource_type: Some("plans".into()), ..all.clone() }).await, Vec::<u128>::new());
        let window = AuditFilter {
            from: Some(t0() + Duration::minutes(3) + Duration::nanoseconds(123_456_000)),
            to: Some(t0() + Duration::minutes(6)),
            ..all.clone()
        };
        assert_eq!(by(window).await, vec![5, 3], "from inclusive, to exclusive");
        let platform_page = store.list_audit_events(None, &all, None, 10).await.unwrap();
        assert_eq!(platform_page.items.iter().map(|e| e.id).collect::<Vec<_>>(), vec![Uuid::from_u128(0xA004)]);
        assert_eq!(store.count_audit_events(None, &all).await.unwrap(), 1, "{}: the platform's own", t.name);
    })
    .await;
}

#[tokio::test]
async fn audit_events_commit_with_their_usage_batch_or_not_at_all() {
    for_each_store("audit_events_commit_with_their_usage_batch_or_not_at_all", |t| async move {
        let store = migrated(&t).await;
        let acme = tenant_on_plan(&store, 100, OveragePolicy::Block).await;
        let usage = |n: u128, tenant_id: Uuid| UsageEvent {
            event_id: Uuid::from_u128(n),
            request_id: format!("req-{n}"),
            tenant_id: Some(tenant_id),
            client_id: None,
            principal_id: None,
            operation_id: "createDocument".into(),
            method: "POST".into(),
            route_template: "/api/v1/documents".into(),
            status: 201,
            units: 5,
            billable: true,
            overage_units: 0,
            latency_micros: 1,
            request_bytes: 0,
            response_bytes: 0,
            occurred_at: t0(),
            recorded_at: t0(),
            lease_id: None,
            refusal: None,
        };
        let ghost = usage(2, Uuid::from_u128(404));
        assert!(
            store.record_usage(&[usage(1, acme.id), ghost], &[audit_input(1, Some(acme.id), 1)]).await.is_err(),
            "{}",
            t.name
        );
        assert!(store.audit_chain(&audit_chain_key(Some(acme.id)), 0, 10).await.unwrap().is_empty(), "rolled back");
        assert_eq!(store.record_usage(&[usage(1, acme.id)], &[audit_input(1, Some(acme.id), 1)]).await.unwrap(), 1);
        assert_eq!(store.audit_chain(&audit_chain_key(Some(acme.id)), 0, 10).await.unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn two_handles_appending_to_one_chain_concurrently_keep_one_unbroken_chain() {
    for_each_store("two_handles_appending_to_one_chain_concurrently_keep_one_unbroken_chain", |t| async move {
        let store = migrated(&t).await;
        let other = t.second_handle().await;
        let tenant_id = Some(Uuid::from_u128(0x77));
        let appends = (0..40u128).map(|n| {
            let handle = if n % 2 == 0 { store.clone() } else { other.clone() };
            async move {
                // Two events per batch: one for the shared chain, one for the platform chain.
                handle.record_usage(&[], &[audit_input(n, tenant_id, 1), audit_input(100 + n, None, 1)]).await
            }
        });
        for result in futures_util::future::join_all(appends).await {
            result.unwrap_or_else(|e| panic!("{}: append failed: {e:?}", t.name));
        }
        let events = store.audit_chain(&audit_chain_key(tenant_id), 0, 100).await.unwrap();
        assert_eq!(assert_intact(&events), 40, "{}", t.name);
        assert_eq!(events.last().unwrap().chain_seq, 40);
        assert_eq!(assert_intact(&store.audit_chain("platform", 0, 100).await.unwrap()), 40);
    })
    .await;
}
