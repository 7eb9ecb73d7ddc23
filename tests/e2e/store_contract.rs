//! The storage contract, run against every store: SQLite always, SQL Server when `MSSQL_TEST_CONNECTION_STRING` is set.

use std::sync::Arc;

use chrono::{Duration, TimeZone, Utc};
use meterline::store::{JobRun, SqliteStore, Store};

async fn contract(store: Arc<dyn Store>) {
    let first = store.migrate().await.expect("first migrate");
    assert_eq!(first.applied, vec![1, 2]);
    let second = store.migrate().await.expect("second migrate");
    assert!(second.applied.is_empty());
    assert_eq!(second.already_applied, vec![1, 2]);
    let history = store.applied_migrations().await.unwrap();
    assert_eq!(history.iter().map(|m| m.version).collect::<Vec<_>>(), vec![1, 2]);
    assert_eq!(history[0].checksum.len(), 64);
    store.ping().await.expect("ping");

    let start = Utc.with_ymd_and_hms(2026, 1, 31, 23, 59, 0).unwrap();
    for (i, past_due) in [false, true, false].into_iter().enumerate() {
        let run = JobRun {
            id: uuid::Uuid::from_u128(i as u128 + 1),
            job: "usage-rollup".into(),
            trigger: "timer".into(),
            is_past_due: past_due,
            started_at: start + Duration::minutes(5 * i as i64),
            finished_at: start + Duration::minutes(5 * i as i64) + Duration::milliseconds(1500),
            outcome: "succeeded".into(),
            detail: format!("run {i}"),
        };
        store.record_job_run(&run).await.unwrap();
    }
    let runs = store.recent_job_runs("usage-rollup", 2).await.unwrap();
    assert_eq!(runs.iter().map(|r| r.detail.as_str()).collect::<Vec<_>>(), ["run 2", "run 1"], "newest first, limited");
    assert!(runs[1].is_past_due);
    assert_eq!(runs[0].finished_at - runs[0].started_at, Duration::milliseconds(1500), "times round-trip exactly");
    assert!(store.recent_job_runs("outbox-publish", 5).await.unwrap().is_empty());
    let duplicate = JobRun { detail: "again".into(), ..runs[0].clone() };
    assert!(matches!(store.record_job_run(&duplicate).await, Err(meterline::store::StoreError::Conflict(_))));
}

#[tokio::test]
async fn sqlite_store_meets_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("nested/folder/meterline.db")).await.unwrap();
    contract(Arc::new(store)).await;
}

#[tokio::test]
async fn mssql_store_meets_the_contract() {
    let Ok(connection_string) = std::env::var("MSSQL_TEST_CONNECTION_STRING") else {
        eprintln!(
            "SKIPPED mssql_store_meets_the_contract: MSSQL_TEST_CONNECTION_STRING is not set (no SQL Server here)"
        );
        return;
    };
    let config = meterline::config::StoreConfig::Mssql { connection_string: connection_string.into() };
    let store = meterline::store::open(&config).await.expect("the SQL Server store opens");
    contract(store).await;
}

#[tokio::test]
async fn two_processes_migrating_one_sqlite_file_at_once_apply_each_migration_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let a = SqliteStore::open(&path).await.unwrap();
    let b = SqliteStore::open(&path).await.unwrap();
    let (ra, rb) = tokio::join!(a.migrate(), b.migrate());
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    let mut applied = [ra.applied, rb.applied].concat();
    applied.sort();
    assert_eq!(applied, vec![1, 2], "each migration was applied by exactly one of them");
    assert_eq!(a.applied_migrations().await.unwrap().len(), 2);
}

#[tokio::test]
async fn a_changed_migration_is_refused() {
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
    conn.execute(
        "UPDATE schema_migrations SET checksum = ?1 WHERE version = 1",
        [meterline::store::SQLITE_MIGRATIONS[0].checksum()],
    )
    .unwrap();
    drop(conn);
    assert!(store.migrate().await.unwrap_err().to_string().contains("migration 99"));
}
