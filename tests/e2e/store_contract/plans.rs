//! The storage contract for plans and their cost overrides.

use super::*;

#[tokio::test]
async fn plans_are_listed_by_code_and_updated_conditionally() {
    for_each_store("plans_are_listed_by_code_and_updated_conditionally", |t| async move {
        let store = migrated(&t).await;
        assert!(store.list_plans().await.unwrap().is_empty());
        for code in ["pro", "basic", "enterprise"] {
            store.create_plan(&plan(code, 10, OveragePolicy::Block), None).await.unwrap();
        }
        let codes: Vec<String> = store.list_plans().await.unwrap().into_iter().map(|p| p.code).collect();
        assert_eq!(codes, ["basic", "enterprise", "pro"], "{}", t.name);

        let later = t0() + Duration::days(3) + Duration::microseconds(42);
        let changed = Plan {
            name: "Professional".into(),
            requests_per_minute: 600,
            burst: 50,
            monthly_quota_units: 1_000_000,
            overage_policy: OveragePolicy::Allow,
            currency: "USD".into(),
            base_price_micros: 99_000_000,
            overage_unit_price_micros: 500,
            created_at: later,
            updated_at: later,
            version: 7,
            ..plan("pro", 10, OveragePolicy::Block)
        };
        let Update::Updated(v2) = store.update_plan(&changed, 1, None, None).await.unwrap() else {
            panic!("{}", t.name)
        };
        assert_eq!(v2, Plan { created_at: t0(), version: 2, ..changed.clone() }, "created_at is kept");
        assert_eq!(store.get_plan("pro").await.unwrap(), Some(v2.clone()));
        assert_eq!(
            store.update_plan(&changed, 1, None, None).await.unwrap(),
            Update::VersionMismatch { current_version: 2 }
        );
        let ghost = Plan { code: "ghost".into(), ..changed };
        assert_eq!(store.update_plan(&ghost, 1, None, None).await.unwrap(), Update::NotFound);
        assert_eq!(store.list_plans().await.unwrap()[2], v2, "{}", t.name);
    })
    .await;
}

#[tokio::test]
async fn plan_cost_overrides_are_replaced_whole() {
    for_each_store("plan_cost_overrides_are_replaced_whole", |t| async move {
        let store = migrated(&t).await;
        store.create_plan(&plan("pro", 10, OveragePolicy::Block), None).await.unwrap();
        assert!(store.plan_operation_costs("pro").await.unwrap().is_empty());
        let first = vec![("listDocuments".to_owned(), 3), ("getDocument".to_owned(), 0)];
        store.set_plan_operation_costs("pro", &first).await.unwrap();
        assert_eq!(
            store.plan_operation_costs("pro").await.unwrap(),
            vec![("getDocument".to_owned(), 0), ("listDocuments".to_owned(), 3)],
            "{}: sorted by operation id",
            t.name
        );
        store.set_plan_operation_costs("pro", &[("getMe".to_owned(), 2)]).await.unwrap();
        assert_eq!(
            store.plan_operation_costs("pro").await.unwrap(),
            vec![("getMe".to_owned(), 2)],
            "replaced, not merged"
        );
        assert!(matches!(store.set_plan_operation_costs("ghost", &first).await, Err(StoreError::ForeignKey(_))));
        assert!(store.plan_operation_costs("ghost").await.unwrap().is_empty());
    })
    .await;
}
