//! The storage contract for migrations, job runs and leases.

use super::*;

#[tokio::test]
async fn migrations_apply_once_and_are_recorded() {
    for_each_store("migrations_apply_once_and_are_recorded", |t| async move {
        let first = t.store.migrate().await.expect("first migrate");
        assert_eq!(
            first.applied,
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
            "{}",
            t.name
        );
        let second = t.store.migrate().await.expect("second migrate");
        assert!(second.applied.is_empty());
        assert_eq!(second.already_applied, vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]);
        let history = t.store.applied_migrations().await.unwrap();
        assert_eq!(
            history.iter().map(|m| m.version).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]
        );
        assert!(history.iter().all(|m| m.checksum.len() == 64));
        t.store.ping().await.expect("ping");
    })
    .await;
}

#[tokio::test]
async fn two_handles_migrating_at_once_apply_each_migration_once() {
    for_each_store("two_handles_migrating_at_once_apply_each_migration_once", |t| async move {
        let other = t.second_handle().await;
        let (a, b) = tokio::join!(t.store.migrate(), other.migrate());
        let mut applied = [a.unwrap().applied, b.unwrap().applied].concat();
        applied.sort();
        assert_eq!(
            applied,
            vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19],
            "{}: each migration applied by exactly one handle",
            t.name
        );
        assert_eq!(other.applied_migrations().await.unwrap().len(), SQLITE_MIGRATIONS.len());
    })
    .await;
}

#[tokio::test]
async fn job_runs_are_listed_newest_first() {
    for_each_store("job_runs_are_listed_newest_first", |t| async move {
        let store = migrated(&t).await;
        for (i, past_due) in [false, true, false].into_iter().enumerate() {
            let run = JobRun {
                id: Uuid::from_u128(i as u128 + 1),
                job: "usage-rollup".into(),
                trigger: "timer".into(),
                is_past_due: past_due,
                started_at: t0() + Duration::minutes(5 * i as i64),
                finished_at: t0() + Duration::minutes(5 * i as i64) + Duration::microseconds(1_500_123),
                outcome: "succeeded".into(),
                detail: format!("run {i}"),
            };
            store.record_job_run(&run).await.unwrap();
        }
        let runs = store.recent_job_runs("usage-rollup", 2).await.unwrap();
        assert_eq!(runs.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>(), ["run 2", "run 1"]);
        assert!(runs[1].is_past_due);
        assert_eq!(
            runs[0].finished_at - runs[0].started_at,
            Duration::microseconds(1_500_123),
            "microseconds round-trip"
        );
        assert!(store.recent_job_runs("outbox-publish", 5).await.unwrap().is_empty());
        let duplicate = JobRun { detail: "again".into(), ..runs[0].clone() };
        assert!(matches!(store.record_job_run(&duplicate).await, Err(StoreError::Conflict(_))), "{}", t.name);
    })
    .await;
}

#[tokio::test]
async fn leases_admit_one_holder_until_they_expire() {
    for_each_store("leases_admit_one_holder_until_they_expire", |t| async move {
        let store = migrated(&t).await;
        let lease = |holder: &str, now: DateTime<Utc>| LeaseRequest {
            name: "usage-rollup".into(),
            holder: holder.into(),
            now,
            expires_at: now + Duration::seconds(60),
        };
        assert!(store.acquire_lease(&lease("a", t0())).await.unwrap());
        assert!(!store.acquire_lease(&lease("b", t0() + Duration::seconds(30))).await.unwrap(), "held by a");
        assert!(store.acquire_lease(&lease("a", t0() + Duration::seconds(30))).await.unwrap(), "a renews");
        assert!(!store.acquire_lease(&lease("b", t0() + Duration::seconds(80))).await.unwrap(), "the renewal counts");
        assert!(store.acquire_lease(&lease("b", t0() + Duration::seconds(91))).await.unwrap(), "expired: b takes over");
        assert!(!store.release_lease("usage-rollup", "a").await.unwrap(), "a no longer holds it");
        assert!(store.release_lease("usage-rollup", "b").await.unwrap());
        assert!(store.acquire_lease(&lease("c", t0() + Duration::seconds(92))).await.unwrap(), "released: free");

        // Many contenders at the same instant, through two handles: exactly one wins.
        let other = t.second_handle().await;
        let contenders = (0..20).map(|i| {
            let store = if i % 2 == 0 { store.clone() } else { other.clone() };
            let request = LeaseRequest {
                name: "race".into(),
                holder: format!("h{i}"),
                now: t0(),
                expires_at: t0() + Duration::seconds(60),
            };
            async move { store.acquire_lease(&request).await.unwrap() }
        });
        let won = futures_util::future::join_all(contenders).await.into_iter().filter(|w| *w).count();
        assert_eq!(won, 1, "{}", t.name);
    })
    .await;
}

#[tokio::test]
async fn a_changed_or_unknown_migration_is_refused_and_a_newer_releases_is_listed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db");
    let store = SqliteStore::open(&path).await.unwrap();
    store.migrate().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1", []).unwrap();
    drop(conn);
    let err = store.migrate().await.unwrap_err();
    assert!(err.to_string().contains("migration 1 (job_runs) differs"), "{err}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute("INSERT INTO schema_migrations VALUES (99, 'future', 'x', '2030-01-01T00:00:00Z')", []).unwrap();
    conn.execute("UPDATE schema_migrations SET checksum = ?1 WHERE version = 1", [SQLITE_MIGRATIONS[0].checksum()])
        .unwrap();
    // On top of all of ours: a newer release's, listed and left alone.
    let report = store.migrate().await.unwrap();
    assert_eq!((report.applied.len(), report.newer), (0, vec![99]));
    // Under one of ours (version 0 is none of ours): refused.
    conn.execute("INSERT INTO schema_migrations VALUES (0, 'stray', 'x', '2030-01-01T00:00:00Z')", []).unwrap();
    drop(conn);
    assert!(store.migrate().await.unwrap_err().to_string().contains("migration 0"));
}
