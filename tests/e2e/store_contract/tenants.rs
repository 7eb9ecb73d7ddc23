//! The storage contract for tenants and API clients.

use super::*;

#[tokio::test]
async fn plans_and_tenants_round_trip_with_constraints() {
    for_each_store("plans_and_tenants_round_trip_with_constraints", |t| async move {
        let store = migrated(&t).await;
        let pro = plan("pro", 1_000, OveragePolicy::Allow);
        store.create_plan(&pro, None).await.unwrap();
        assert_eq!(store.get_plan("pro").await.unwrap(), Some(pro.clone()));
        assert_eq!(store.get_plan("none").await.unwrap(), None);
        assert!(matches!(store.create_plan(&pro, None).await, Err(StoreError::Conflict(_))));

        let acme = tenant(1, "pro", t0());
        store.create_tenant(&acme, None).await.unwrap();
        assert_eq!(store.get_tenant(acme.id).await.unwrap(), Some(acme.clone()));
        assert_eq!(store.get_tenant_by_entra_id(acme.entra_tenant_id.unwrap()).await.unwrap(), Some(acme.clone()));
        assert_eq!(store.get_tenant(Uuid::from_u128(7)).await.unwrap(), None);

        let same_directory = Tenant { id: Uuid::from_u128(2), ..acme.clone() };
        assert!(
            matches!(store.create_tenant(&same_directory, None).await, Err(StoreError::Conflict(_))),
            "tid is unique"
        );
        let no_plan =
            Tenant { id: Uuid::from_u128(3), entra_tenant_id: None, plan_code: "ghost".into(), ..acme.clone() };
        assert!(matches!(store.create_tenant(&no_plan, None).await, Err(StoreError::ForeignKey(_))), "{}", t.name);
        let no_directory_a = Tenant { id: Uuid::from_u128(4), entra_tenant_id: None, ..acme.clone() };
        let no_directory_b = Tenant { id: Uuid::from_u128(5), entra_tenant_id: None, ..acme.clone() };
        store.create_tenant(&no_directory_a, None).await.unwrap();
        store.create_tenant(&no_directory_b, None).await.expect("many tenants may have no Entra directory");
    })
    .await;
}

#[tokio::test]
async fn tenant_updates_are_conditional_on_the_version() {
    for_each_store("tenant_updates_are_conditional_on_the_version", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
        let acme = tenant(1, "pro", t0());
        store.create_tenant(&acme, None).await.unwrap();
        let later = t0() + Duration::hours(1);
        let Update::Updated(suspended) =
            store.set_tenant_status(acme.id, TenantStatus::Suspended, 1, later).await.unwrap()
        else {
            panic!("{}: the update at the current version applies", t.name)
        };
        assert_eq!((suspended.status, suspended.version, suspended.updated_at), (TenantStatus::Suspended, 2, later));
        let stale = store.set_tenant_status(acme.id, TenantStatus::Active, 1, later).await.unwrap();
        assert_eq!(stale, Update::VersionMismatch { current_version: 2 });
        let missing = store.set_tenant_status(Uuid::from_u128(99), TenantStatus::Active, 1, later).await.unwrap();
        assert_eq!(missing, Update::NotFound);
    })
    .await;
}

#[tokio::test]
async fn keyset_pages_are_complete_and_stable_under_concurrent_inserts() {
    for_each_store("keyset_pages_are_complete_and_stable_under_concurrent_inserts", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
        // Ties on created_at on purpose: the id must break them.
        let before: Vec<Tenant> = (0..23).map(|n| tenant(n, "pro", t0() + Duration::seconds((n / 3) as i64))).collect();
        for tenant in &before {
            store.create_tenant(tenant, None).await.unwrap();
        }
        let mut seen = Vec::new();
        let mut cursor: Option<CreatedCursor> = None;
        let mut pages = 0;
        loop {
            let page = store.list_tenants(cursor.as_ref(), 5).await.unwrap();
            assert!(page.items.len() <= 5);
            seen.extend(page.items.iter().map(|t| t.id));
            pages += 1;
            if pages == 2 {
                // Rows written while a client pages: before the cursor (hidden) and after it (shown once).
                store.create_tenant(&tenant(100, "pro", t0() - Duration::days(1)), None).await.unwrap();
                store.create_tenant(&tenant(101, "pro", t0() + Duration::days(1)), None).await.unwrap();
            }
            match page.next {
                Some(next) => cursor = Some(next),
                None => break,
            }
        }
        let unique: HashSet<_> = seen.iter().collect();
        assert_eq!(unique.len(), seen.len(), "{}: no row appears twice", t.name);
        assert!(before.iter().all(|t| unique.contains(&t.id)), "every row that existed is seen");
        assert!(unique.contains(&Uuid::from_u128(0x1000 + 101)) && !unique.contains(&Uuid::from_u128(0x1000 + 100)));
        assert_eq!(store.count_tenants().await.unwrap(), 25, "{}: the count is all tenants, not a page", t.name);
        assert_eq!(seen.len(), 24);
    })
    .await;
}

/// A registration of `app_id` for `tenant`'s own directory, active.
fn registration(n: u128, tenant: &Tenant, app_id: &str, created_at: DateTime<Utc>, roles: &[&str]) -> ApiClient {
    ApiClient {
        id: Uuid::from_u128(0xC0 + n),
        tenant_id: tenant.id,
        directory_id: tenant.entra_tenant_id,
        app_id: app_id.into(),
        display_name: format!("Client {n}"),
        roles: roles.iter().map(|r| (*r).to_owned()).collect(),
        status: ClientStatus::Active,
        created_at,
        revoked_at: None,
        decided_by: None,
        decided_at: None,
        version: 1,
        limits: ClientLimits::default(),
    }
}

#[tokio::test]
async fn api_clients_register_once_per_tenant_and_directory_with_their_roles() {
    for_each_store("api_clients_register_once_per_tenant_and_directory_with_their_roles", |t| async move {
        let store = migrated(&t).await;
        let (acme, other) = two_tenants(&store).await;
        let home = acme.entra_tenant_id.unwrap();
        let client = registration(1, &acme, "8d0a1c1e-app", t0(), &["Documents.Read", "Usage.Read"]);
        store.create_api_client(&client, None).await.unwrap();
        assert_eq!(store.api_clients_for_app(home, "8d0a1c1e-app").await.unwrap(), vec![client.clone()], "{}", t.name);
        assert_eq!(store.api_clients_for_app(home, "unknown").await.unwrap(), vec![]);
        let elsewhere = other.entra_tenant_id.unwrap();
        assert_eq!(store.api_clients_for_app(elsewhere, "8d0a1c1e-app").await.unwrap(), vec![], "keyed by directory");
        let again = ApiClient { id: Uuid::from_u128(0xC2), ..client.clone() };
        assert!(
            matches!(store.create_api_client(&again, None).await, Err(StoreError::Conflict(_))),
            "one live registration per tenant, directory and application"
        );
        // Another tenant may register the same pair (pending): registrations never reveal each other.
        let theirs = ApiClient {
            id: Uuid::from_u128(0xC4),
            tenant_id: other.id,
            status: ClientStatus::Pending,
            ..client.clone()
        };
        store.create_api_client(&theirs, None).await.unwrap();
        // The same tenant may register the application again once the first is revoked.
        store.revoke_api_client(acme.id, client.id, 1, t0(), None).await.unwrap();
        store.create_api_client(&again, None).await.unwrap();
        let all = store.api_clients_for_app(home, "8d0a1c1e-app").await.unwrap();
        assert_eq!(all.iter().map(|c| c.id).collect::<Vec<_>>(), vec![client.id, again.id, theirs.id], "{}", t.name);
        let bad_role = ApiClient {
            id: Uuid::from_u128(0xC3),
            app_id: "other".into(),
            roles: vec!["Root".into()],
            ..client.clone()
        };
        assert!(store.create_api_client(&bad_role, None).await.is_err(), "roles are a closed set");
        assert_eq!(
            store.api_clients_for_app(home, "other").await.unwrap(),
            vec![],
            "the failed registration left nothing"
        );
    })
    .await;
}

#[tokio::test]
async fn pending_registrations_are_decided_once_and_never_take_a_tenants_directory() {
    for_each_store("pending_registrations_are_decided_once_and_never_take_a_tenants_directory", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let partner = Uuid::from_u128(0x7777);
        let pending = |n: u128, tenant: &Tenant, directory: Uuid| ApiClient {
            directory_id: Some(directory),
            status: ClientStatus::Pending,
            ..registration(n, tenant, "partner-app", t0(), &["Documents.Read"])
        };
        let (ours, theirs, squat) =
            (pending(1, &a, partner), pending(2, &b, partner), pending(3, &b, a.entra_tenant_id.unwrap()));
        for c in [&ours, &theirs, &squat] {
            store.create_api_client(c, None).await.unwrap();
        }
        let at = t0() + Duration::hours(1);
        let approve = ClientDecision { approve: true, by: "platform-admin".into(), at };
        assert_eq!(
            store.decide_api_client(b.id, ours.id, 1, &approve, None).await.unwrap(),
            Update::NotFound,
            "{}",
            t.name
        );
        let approved = ApiClient {
            status: ClientStatus::Active,
            decided_by: Some("platform-admin".into()),
            decided_at: Some(at),
            version: 2,
            ..ours.clone()
        };
        assert_eq!(
            store.decide_api_client(a.id, ours.id, 1, &approve, None).await.unwrap(),
            Update::Updated(approved.clone())
        );
        assert_eq!(
            store.decide_api_client(a.id, ours.id, 1, &approve, None).await.unwrap(),
            Update::VersionMismatch { current_version: 2 },
            "{}: a decision made on a stale read is refused",
            t.name
        );
        let reject = ClientDecision { approve: false, ..approve.clone() };
        assert!(
            matches!(store.decide_api_client(a.id, ours.id, 2, &reject, None).await, Err(StoreError::Conflict(_))),
            "{}: a decided registration stays decided",
            t.name
        );
        assert!(
            matches!(store.decide_api_client(b.id, theirs.id, 1, &approve, None).await, Err(StoreError::Conflict(_))),
            "{}: another tenant holds the pair already",
            t.name
        );
        assert!(
            matches!(store.decide_api_client(b.id, squat.id, 1, &approve, None).await, Err(StoreError::Conflict(_))),
            "{}: tenant A's own directory cannot be given to B",
            t.name
        );
        let rejected = store.decide_api_client(b.id, squat.id, 1, &reject, None).await.unwrap();
        assert!(matches!(rejected, Update::Updated(ref c) if c.status == ClientStatus::Rejected), "{rejected:?}");
        assert_eq!(store.api_clients_for_app(partner, "partner-app").await.unwrap(), vec![approved, theirs.clone()]);
        // Revoking a rejected registration leaves it as it is; a pending one can be withdrawn.
        let withdrawn = store.revoke_api_client(b.id, theirs.id, 1, at, None).await.unwrap();
        assert!(matches!(withdrawn, Update::Updated(ref c) if c.status == ClientStatus::Revoked), "{withdrawn:?}");
        let still = store.revoke_api_client(b.id, squat.id, 2, at, None).await.unwrap();
        assert!(
            matches!(still, Update::Updated(ref c) if c.status == ClientStatus::Rejected && c.revoked_at.is_none())
        );
    })
    .await;
}

#[tokio::test]
async fn tenant_changes_apply_only_given_fields_and_check_the_plan() {
    for_each_store("tenant_changes_apply_only_given_fields_and_check_the_plan", |t| async move {
        let store = migrated(&t).await;
        let (a, _) = two_tenants(&store).await;
        store.create_plan(&plan("business", 1000, OveragePolicy::Allow), None).await.unwrap();
        let at = |h| t0() + Duration::hours(h);

        let renamed = TenantChanges { name: Some("Acme SAS".into()), ..Default::default() };
        let Update::Updated(v2) = store.update_tenant(a.id, &renamed, 1, at(1), None).await.unwrap() else {
            panic!("{}", t.name)
        };
        assert_eq!(v2, Tenant { name: "Acme SAS".into(), updated_at: at(1), version: 2, ..a.clone() });

        let upgrade =
            TenantChanges { plan_code: Some("business".into()), status: Some(TenantStatus::Suspended), name: None };
        let Update::Updated(v3) = store.update_tenant(a.id, &upgrade, 2, at(2), None).await.unwrap() else { panic!() };
        assert_eq!(
            v3,
            Tenant {
                plan_code: "business".into(),
                status: TenantStatus::Suspended,
                updated_at: at(2),
                version: 3,
                ..v2
            },
            "{}",
            t.name
        );

        let ghost = TenantChanges { plan_code: Some("ghost".into()), ..Default::default() };
        assert!(
            matches!(store.update_tenant(a.id, &ghost, 3, at(3), None).await, Err(StoreError::ForeignKey(_))),
            "{}",
            t.name
        );
        assert_eq!(store.get_tenant(a.id).await.unwrap(), Some(v3.clone()), "the refused change wrote nothing");
        assert_eq!(
            store.update_tenant(a.id, &renamed, 2, at(3), None).await.unwrap(),
            Update::VersionMismatch { current_version: 3 }
        );
        assert_eq!(
            store.update_tenant(Uuid::from_u128(404), &renamed, 1, at(3), None).await.unwrap(),
            Update::NotFound
        );
    })
    .await;
}

#[tokio::test]
async fn api_clients_are_listed_in_pages_and_revoked_once_at_the_version_read() {
    for_each_store("api_clients_are_listed_in_pages_and_revoked_once_at_the_version_read", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let client = |n: u128, tenant: &Tenant, created_at, roles: &[&str]| {
            registration(n, tenant, &format!("app-{n}"), created_at, roles)
        };
        // Created out of order; 3 and 2 tie on created_at (the id decides).
        let c1 = client(1, &a, t0() + Duration::seconds(2), &["Documents.Read", "Documents.Write"]);
        let c3 = client(3, &a, t0(), &[]);
        let c2 = client(2, &a, t0(), &["Usage.Read"]);
        let theirs = client(4, &b, t0() - Duration::days(1), &["Tenant.Admin"]);
        for c in [&c1, &c3, &c2, &theirs] {
            store.create_api_client(c, None).await.unwrap();
        }
        let list = |tenant: Uuid, status: Option<ClientStatus>| {
            let store = store.clone();
            async move {
                let mut pages = Vec::new();
                let mut after = None;
                loop {
                    let page = store.list_api_clients(tenant, status, after.as_ref(), 2).await.unwrap();
                    pages.push(page.items);
                    match page.next {
                        Some(next) => after = Some(next),
                        None => return pages,
                    }
                }
            }
        };
        assert_eq!(list(a.id, None).await, vec![vec![c2.clone(), c3.clone()], vec![c1.clone()]], "{}", t.name);
        assert_eq!(list(b.id, None).await, vec![vec![theirs.clone()]]);
        assert_eq!(list(Uuid::from_u128(404), None).await, vec![Vec::<ApiClient>::new()]);
        assert_eq!(store.count_api_clients(a.id, None).await.unwrap(), 3);
        assert_eq!(store.count_api_clients(a.id, Some(ClientStatus::Revoked)).await.unwrap(), 0);
        assert_eq!(store.get_api_client(a.id, c1.id).await.unwrap(), Some(c1.clone()), "{}", t.name);
        assert_eq!(store.get_api_client(b.id, c1.id).await.unwrap(), None, "another tenant's client is not found");

        let now = t0() + Duration::hours(1);
        assert_eq!(store.revoke_api_client(b.id, c1.id, 1, now, None).await.unwrap(), Update::NotFound, "{}", t.name);
        let home = a.entra_tenant_id.unwrap();
        let lookup = |app: &'static str| {
            let store = store.clone();
            async move { store.api_clients_for_app(home, app).await.unwrap() }
        };
        assert_eq!(lookup("app-1").await[0].status, ClientStatus::Active, "another tenant cannot revoke");
        assert_eq!(
            store.revoke_api_client(a.id, c1.id, 7, now, None).await.unwrap(),
            Update::VersionMismatch { current_version: 1 },
            "{}: a stale version revokes nothing",
            t.name
        );
        assert_eq!(lookup("app-1").await[0].status, ClientStatus::Active);
        let revoked = ApiClient { status: ClientStatus::Revoked, revoked_at: Some(now), version: 2, ..c1.clone() };
        assert_eq!(store.revoke_api_client(a.id, c1.id, 1, now, None).await.unwrap(), Update::Updated(revoked.clone()));
        let again = store.revoke_api_client(a.id, c1.id, 1, now + Duration::hours(1), None).await.unwrap();
        assert_eq!(
            again,
            Update::Updated(revoked.clone()),
            "{}: revoking twice changes nothing, whatever version",
            t.name
        );
        assert_eq!(lookup("app-1").await, vec![revoked.clone()]);
        assert_eq!(list(a.id, None).await, vec![vec![c2.clone(), c3.clone()], vec![revoked.clone()]]);
        assert_eq!(list(a.id, Some(ClientStatus::Revoked)).await, vec![vec![revoked]], "{}", t.name);
        assert_eq!(list(a.id, Some(ClientStatus::Active)).await, vec![vec![c2, c3]]);
        assert_eq!(store.count_api_clients(a.id, Some(ClientStatus::Active)).await.unwrap(), 2);
        assert_eq!(store.revoke_api_client(a.id, Uuid::from_u128(404), 1, now, None).await.unwrap(), Update::NotFound);
    })
    .await;
}

#[tokio::test]
async fn a_clients_limits_are_versioned_and_its_quota_counter_never_passes_its_cap() {
    for_each_store("a_clients_limits_are_versioned_and_its_quota_counter_never_passes_its_cap", |t| async move {
        let store = migrated(&t).await;
        let (a, b) = two_tenants(&store).await;
        let client = registration(1, &a, "capped", t0(), &["Documents.Read"]);
        store.create_api_client(&client, None).await.unwrap();
        let limits = ClientLimits { quota_units: Some(5), requests_per_minute: Some(30) };
        assert_eq!(store.set_client_limits(b.id, client.id, 1, &limits, None).await.unwrap(), Update::NotFound);
        assert_eq!(
            store.set_client_limits(a.id, client.id, 9, &limits, None).await.unwrap(),
            Update::VersionMismatch { current_version: 1 }
        );
        let limited = ApiClient { limits, version: 2, ..client.clone() };
        assert_eq!(
            store.set_client_limits(a.id, client.id, 1, &limits, None).await.unwrap(),
            Update::Updated(limited.clone()),
            "{}",
            t.name
        );
        let home = a.entra_tenant_id.unwrap();
        assert_eq!(store.api_clients_for_app(home, "capped").await.unwrap(), vec![limited], "the lookup sees them");

        let february = NaiveDate::from_ymd_opt(2026, 2, 1).unwrap();
        let debit = |units: i64| ClientQuotaDebit {
            tenant_id: a.id,
            client_id: client.id,
            period_start: february,
            cap: 5,
            units,
            now: t0(),
        };
        assert_eq!(store.client_quota_used(client.id, february).await.unwrap(), 0);
        assert_eq!(store.debit_client_quota(&debit(3)).await.unwrap(), ClientQuotaOutcome::Accepted { units_used: 3 });
        assert_eq!(
            store.debit_client_quota(&debit(3)).await.unwrap(),
            ClientQuotaOutcome::Rejected { units_used: 3 },
            "{}: never past the cap",
            t.name
        );
        assert_eq!(store.debit_client_quota(&debit(2)).await.unwrap(), ClientQuotaOutcome::Accepted { units_used: 5 });
        store.refund_client_quota(client.id, february, 4, t0()).await.unwrap();
        assert_eq!(store.client_quota_used(client.id, february).await.unwrap(), 1);
        store.refund_client_quota(client.id, february, 9, t0()).await.unwrap();
        assert_eq!(store.client_quota_used(client.id, february).await.unwrap(), 0, "never below zero");
        // Concurrent debits from two handles: exactly the cap is admitted.
        let other = t.second_handle().await;
        let racing = (0..8).map(|n| {
            let store = if n % 2 == 0 { store.clone() } else { other.clone() };
            let d = debit(1);
            async move { store.debit_client_quota(&d).await.unwrap() }
        });
        let outcomes = futures_util::future::join_all(racing).await;
        let accepted = outcomes.iter().filter(|o| matches!(o, ClientQuotaOutcome::Accepted { .. })).count();
        assert_eq!(accepted, 5, "{}: {outcomes:?}", t.name);
    })
    .await;
}
