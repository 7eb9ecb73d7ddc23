//! The SQLite operations store: `impl OperationsStore for SqliteStore` (ping, migrations, job runs, leases).

use super::*;

pub(super) const CREATE_HISTORY: &str = "CREATE TABLE IF NOT EXISTS schema_migrations (
    version    INTEGER NOT NULL PRIMARY KEY,
    name       TEXT    NOT NULL,
    checksum   TEXT    NOT NULL,
    applied_at TEXT    NOT NULL
) STRICT";

/// [`OperationsStore::probe_write`] on SQLite, first: a row with 128 KiB in it, committed (new pages through the
/// WAL), in a scope no tenant has. A one-page rewrite was not enough: on a full disk it still committed in WAL
/// frames already there while every real write failed. Then [`PROBE_CLEAR`] removes it.
const PROBE_WRITE: &str = "INSERT OR REPLACE INTO idempotency_keys (tenant_id, idempotency_key, operation_id,
    request_hash, status_code, response_headers, response_body, created_at, expires_at)
VALUES ('00000000-0000-0000-0000-000000000000', 'meterline:readiness-probe', 'readiness',
    '0000000000000000000000000000000000000000000000000000000000000000', 0, '{}', zeroblob(131072), ?1, ?1)";

const PROBE_CLEAR: &str = "DELETE FROM idempotency_keys
WHERE tenant_id = '00000000-0000-0000-0000-000000000000' AND idempotency_key = 'meterline:readiness-probe'";

/// The schema the SQLite migrations build, as one script: a database with no schema yet is created from it in
/// one step, and its migrations up to [`baseline_version`] are recorded as applied. Replaying each migration
/// instead re-parses the whole schema after every `ALTER TABLE` (21 of them): 10 ms against 3 ms on a fresh
/// file, which every first start and every test's store pays (BENCHMARKS.md, "Cold start"). Generated from the
/// migrations by `the_baseline_is_the_schema_the_migrations_build`, which fails until it is regenerated after a
/// migration is added (`UPDATE_SNAPSHOTS=1`); migrations after its version apply on top as usual.
const BASELINE: &str = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite-baseline.sql"));

/// The first line of [`BASELINE`] names the migration it ends at.
const BASELINE_HEADER: &str = "-- The schema after SQLite migration ";

/// The migration [`BASELINE`] ends at.
fn baseline_version() -> i64 {
    BASELINE
        .strip_prefix(BASELINE_HEADER)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .expect("the SQLite baseline starts with its version")
}

/// How long a migration waits for another connection's write lock (another process migrating the same file
/// at startup, or serving on it), where a request's write waits half a second.
const MIGRATION_LOCK_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Whether the database holds nothing but the (just created) migration history.
fn has_no_schema(conn: &Connection) -> Result<bool, StoreError> {
    conn.query_row("SELECT count(*) = 0 FROM sqlite_schema WHERE name <> 'schema_migrations'", [], |r| r.get(0))
        .map_err(classify)
}

/// Another application's tables (a few, by name), if the database has tables and no migration history:
/// Meterline never creates a table without recording its migration in the same transaction.
pub(super) fn foreign_tables(conn: &Connection) -> Result<Vec<String>, StoreError> {
    // Another tool's history table (golang-migrate's, Rails') has the name but not our columns.
    let columns: Vec<String> = conn
        .prepare("SELECT name FROM pragma_table_info('schema_migrations')")
        .and_then(|mut stmt| stmt.query_map([], |r| r.get(0))?.collect())
        .map_err(classify)?;
    let ours = ["version", "name", "checksum", "applied_at"].iter().all(|c| columns.iter().any(|n| n == c));
    if (columns.is_empty() || ours) && !read_history(conn)?.is_empty() {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare(
            "SELECT name FROM sqlite_schema WHERE type = 'table'
             AND (name <> 'schema_migrations' OR ?1) AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name LIMIT 5",
        )
        .map_err(classify)?;
    let names = stmt
        .query_map([!columns.is_empty() && !ours], |r| r.get(0))
        .map_err(classify)?
        .collect::<Result<_, _>>()
        .map_err(classify)?;
    Ok(names)
}

pub(super) fn read_history(conn: &Connection) -> Result<Vec<AppliedMigration>, StoreError> {
    let exists: Option<i64> = conn
        .query_row("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'schema_migrations'", [], |r| r.get(0))
        .optional()
        .map_err(classify)?;
    if exists.is_none() {
        return Ok(Vec::new());
    }
    let mut stmt = conn
        .prepare("SELECT version, name, checksum, applied_at FROM schema_migrations ORDER BY version")
        .map_err(classify)?;
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get(1)?, r.get(2)?, r.get::<_, String>(3)?)))
        .map_err(classify)?;
    rows.map(|row| {
        let (version, name, checksum, applied_at) = row.map_err(classify)?;
        Ok(AppliedMigration { version, name, checksum, applied_at: parse_timestamp(&applied_at)? })
    })
    .collect()
}

fn record_applied(conn: &Connection, migration: &migrations::Migration, at: DateTime<Utc>) -> Result<(), StoreError> {
    conn.execute(
        "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?1, ?2, ?3, ?4)",
        params![migration.version, migration.name, migration.checksum(), timestamp(at)],
    )
    .map(drop)
    .map_err(classify)
}

#[async_trait]
impl OperationsStore for SqliteStore {
    fn kind(&self) -> &'static str {
        "sqlite"
    }

    fn search_index(&self) -> &'static str {
        "fts5"
    }

    fn breaker(&self) -> &std::sync::Arc<crate::resilience::Breaker> {
        &self.inner.breaker
    }

    async fn ping(&self) -> Result<(), StoreError> {
        // A file removed or replaced under the process still answers reads (and took writes, before each batch
        // checked): not ready.
        self.inner.file.check().map_err(|why| StoreError::Unavailable(anyhow::anyhow!(why)))?;
        self.read(|conn| conn.query_row("SELECT 1", [], |r| r.get::<_, i64>(0)).map(drop).map_err(classify)).await
    }

    async fn probe_write(&self) -> Result<(), StoreError> {
        let at = timestamp(self.inner.clock.now());
        self.write(move |tx| tx.execute(PROBE_WRITE, [at]).map(drop).map_err(classify)).await?;
        self.write(|tx| tx.execute(PROBE_CLEAR, []).map(drop).map_err(classify)).await
    }

    async fn migrate(&self) -> Result<MigrationReport, StoreError> {
        let known = migrations::SQLITE;
        migrations::check_order(known).map_err(|e| StoreError::Other(anyhow::anyhow!(e)))?;
        // One IMMEDIATE transaction: a second process migrating at the same time waits, then sees it done.
        let clock = self.inner.clock.clone();
        self.write_alone(MIGRATION_LOCK_WAIT, move |tx| {
            tx.execute_batch(CREATE_HISTORY).map_err(classify)?;
            let history = read_history(tx)?;
            let (mut report, mut pending) = migrations::verify(known, &history)?;
            if history.is_empty() && has_no_schema(tx)? {
                let version = baseline_version();
                tx.execute_batch(BASELINE).map_err(|e| {
                    StoreError::Other(anyhow::Error::new(e).context("creating the schema from the SQLite baseline"))
                })?;
                for migration in pending.iter().filter(|m| m.version <= version) {
                    record_applied(tx, migration, clock.now())?;
                    report.applied.push(migration.version);
                }
                pending.retain(|m| m.version > version);
            }
            for migration in pending {
                tx.execute_batch(migration.sql).map_err(|e| {
                    StoreError::Other(
                        anyhow::Error::new(e).context(format!("applying migration {}", migration.version)),
                    )
                })?;
                // Migration 10 indexed the stored documents in SQL; 17 and 19 need the Rust fold.
                if crate::store::migrations::indexes_stored_documents(migration) && migration.version > 10 {
                    super::documents::index_stored_documents(tx)?;
                }
                record_applied(tx, migration, clock.now())?;
                report.applied.push(migration.version);
            }
            Ok(report)
        })
        .await
    }

    async fn applied_migrations(&self) -> Result<Vec<AppliedMigration>, StoreError> {
        self.read(read_history).await
    }

    async fn record_job_run(&self, run: &JobRun) -> Result<(), StoreError> {
        let run = run.clone();
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO job_runs (id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    run.id.to_string(),
                    run.job,
                    run.trigger,
                    run.is_past_due,
                    timestamp(run.started_at),
                    timestamp(run.finished_at),
                    run.outcome,
                    run.detail
                ],
            )
            .map(drop)
            .map_err(classify)
        })
        .await
    }

    async fn recent_job_runs(&self, job: &str, limit: u32) -> Result<Vec<JobRun>, StoreError> {
        let job = job.to_owned();
        self.read(move |conn| {
            let mut stmt = conn
                .prepare(
                    "SELECT id, job, trigger_kind, is_past_due, started_at, finished_at, outcome, detail
                     FROM job_runs WHERE job = ?1 ORDER BY started_at DESC, id DESC LIMIT ?2",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map(params![job, limit], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, bool>(3)?,
                        r.get::<_, String>(4)?,
                        r.get::<_, String>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                    ))
                })
                .map_err(classify)?;
            rows.map(|row| {
                let (id, job, trigger, is_past_due, started, finished, outcome, detail) = row.map_err(classify)?;
                Ok(JobRun {
                    id: id.parse().map_err(|e| StoreError::Other(anyhow::anyhow!("bad id {id:?}: {e}")))?,
                    job,
                    trigger,
                    is_past_due,
                    started_at: parse_timestamp(&started)?,
                    finished_at: parse_timestamp(&finished)?,
                    outcome,
                    detail,
                })
            })
            .collect()
        })
        .await
    }

    async fn acquire_lease(&self, request: &LeaseRequest) -> Result<bool, StoreError> {
        let r = request.clone();
        self.write(move |tx| {
            let changed = tx
                .execute(
                    "INSERT INTO job_leases (name, holder, acquired_at, expires_at) VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (name) DO UPDATE SET holder = excluded.holder, acquired_at = excluded.acquired_at,
                         expires_at = excluded.expires_at
                     WHERE job_leases.expires_at <= excluded.acquired_at OR job_leases.holder = excluded.holder",
                    params![r.name, r.holder, timestamp(r.now), timestamp(r.expires_at)],
                )
                .map_err(classify)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<bool, StoreError> {
        let (name, holder) = (name.to_owned(), holder.to_owned());
        self.write(move |tx| {
            let changed = tx
                .execute("DELETE FROM job_leases WHERE name = ?1 AND holder = ?2", params![name, holder])
                .map_err(classify)?;
            Ok(changed == 1)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[tokio::test]
    async fn the_injected_clock_stamps_the_migration_history() {
        let dir = tempfile::tempdir().unwrap();
        let at = Utc.with_ymd_and_hms(2026, 1, 31, 12, 0, 0).unwrap();
        let clock = Arc::new(crate::clock::ManualClock::new(at));
        let store = SqliteStore::open_with_clock(&dir.path().join("m.db"), clock).await.unwrap();
        store.migrate().await.unwrap();
        let history = store.applied_migrations().await.unwrap();
        assert!(!history.is_empty());
        assert!(history.iter().all(|m| m.applied_at == at));
    }

    /// The schema of `conn` as the baseline script writes it: every object's `CREATE` in creation order, without
    /// what SQLite makes by itself (`sqlite_sequence`, FTS5's shadow tables, automatic indexes) or the history.
    fn schema_script(conn: &Connection, version: i64) -> String {
        let mut stmt = conn
            .prepare(
                "SELECT sql FROM sqlite_schema WHERE sql IS NOT NULL AND name <> 'schema_migrations'
                   AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\'
                   AND name NOT IN (SELECT name FROM pragma_table_list WHERE type = 'shadow')
                 ORDER BY rowid",
            )
            .unwrap();
        let statements: Vec<String> = stmt.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect();
        format!(
            "{BASELINE_HEADER}{version}, generated from the migrations by\n-- `UPDATE_SNAPSHOTS=1 cargo test -p handler --lib baseline`: do not edit.\n\n{};\n",
            statements.join(";\n\n")
        )
    }

    /// Every object SQLite holds, as `(type, name, table, sql)` sorted by name: what two schemas must agree on.
    fn objects(conn: &Connection) -> Vec<(String, String, String, Option<String>)> {
        let mut stmt = conn
            .prepare("SELECT type, name, tbl_name, sql FROM sqlite_schema WHERE name <> 'schema_migrations' ORDER BY type, name")
            .unwrap();
        stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))).unwrap().map(Result::unwrap).collect()
    }

    /// Applies migrations `1..=upto` one by one, as every database was migrated before the baseline, with history.
    fn migrate_one_by_one(conn: &Connection, upto: i64) {
        conn.execute_batch(CREATE_HISTORY).unwrap();
        for migration in migrations::SQLITE.iter().filter(|m| m.version <= upto) {
            let tx = conn.unchecked_transaction().unwrap();
            tx.execute_batch(migration.sql).unwrap();
            record_applied(&tx, migration, DateTime::from_timestamp(1_800_000_000, 0).unwrap()).unwrap();
            tx.commit().unwrap();
        }
    }

    #[tokio::test]
    async fn the_baseline_is_the_schema_the_migrations_build() {
        let dir = tempfile::tempdir().unwrap();
        let latest = migrations::SQLITE.last().unwrap().version;
        let by_hand = connect(&dir.path().join("one-by-one.db")).unwrap();
        migrate_one_by_one(&by_hand, latest);
        let script = schema_script(&by_hand, latest);
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite-baseline.sql");
        if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
            std::fs::write(path, &script).unwrap();
        }
        assert_eq!(
            BASELINE, script,
            "the SQLite baseline is not the schema the migrations build; if a migration was added or changed on \
             purpose, run `UPDATE_SNAPSHOTS=1 cargo test -p handler --lib baseline` and commit {path}"
        );
        assert_eq!(baseline_version(), latest);

        // A fresh database, created from the baseline, ends with the same objects and the same history.
        let store = SqliteStore::open(&dir.path().join("fresh.db")).await.unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!(report.applied, (1..=latest).collect::<Vec<_>>());
        let fresh = connect(&dir.path().join("fresh.db")).unwrap();
        assert_eq!(objects(&fresh), objects(&by_hand));
        let versions = |conn: &Connection| -> Vec<(i64, String)> {
            let mut stmt = conn.prepare("SELECT version, checksum FROM schema_migrations ORDER BY version").unwrap();
            stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?))).unwrap().map(Result::unwrap).collect()
        };
        assert_eq!(versions(&fresh), versions(&by_hand));
        assert!(store.migrate().await.unwrap().applied.is_empty(), "a second run has nothing to do");
    }

    #[tokio::test]
    async fn migration_13_lower_cases_document_codes_and_versions_what_it_changed() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("codes.db")).unwrap();
        migrate_one_by_one(&conn, 12);
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO documents (id, tenant_id, title, doc_type, jurisdiction, status, created_by, updated_by,
                 created_at, updated_at, version)
             VALUES ('d1', 't', 'a', 'Guidance', 'EU', 'draft', 'a', 'a', '2027-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 4),
                    ('d2', 't', 'b', 'memo', 'US-ca', 'draft', 'a', 'a', '2027-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 2),
                    ('d3', 't', 'c', 'memo', NULL, 'draft', 'a', 'a', '2027-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 1);",
        )
        .unwrap();
        let store = SqliteStore::open(&dir.path().join("codes.db")).await.unwrap();
        assert_eq!(store.migrate().await.unwrap().applied, vec![13, 14, 15, 16, 17, 18, 19]);
        let rows: Vec<(String, String, Option<String>, i64)> = conn
            .prepare("SELECT id, doc_type, jurisdiction, version FROM documents ORDER BY id")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let expected = [
            ("d1".to_owned(), "guidance".to_owned(), Some("eu".to_owned()), 5),
            ("d2".to_owned(), "memo".to_owned(), Some("us-ca".to_owned()), 3),
            ("d3".to_owned(), "memo".to_owned(), None, 1),
        ];
        assert_eq!(rows, expected, "lower case, and a new version (ETag) only where it changed");
    }

    #[tokio::test]
    async fn migration_12_keeps_every_search_key_and_never_gives_a_deleted_one_again() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("keys.db")).unwrap();
        migrate_one_by_one(&conn, 11);
        // Two documents (their tenant is not needed here) and their keys, as migration 10 and the writes left them.
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO documents (id, tenant_id, title, doc_type, status, created_by, updated_by, created_at,
                 updated_at, version)
             VALUES ('00000000-0000-0000-0000-0000000000d3', '00000000-0000-0000-0000-000000000001', 'customs', 'memo', 'draft', 'a', 'a', '2027-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 1),
                    ('00000000-0000-0000-0000-0000000000d7', '00000000-0000-0000-0000-000000000001', 'tax', 'memo', 'draft', 'a', 'a', '2027-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 1),
                    ('00000000-0000-0000-0000-0000000000d8', '00000000-0000-0000-0000-000000000001', 'rent', 'memo', 'draft', 'a', 'a', '2027-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 1);
             INSERT INTO document_search_keys (search_rowid, document_id, tenant_id) VALUES (3, '00000000-0000-0000-0000-0000000000d3', '00000000-0000-0000-0000-000000000001'), (7, '00000000-0000-0000-0000-0000000000d7', '00000000-0000-0000-0000-000000000001');
             INSERT INTO document_search (rowid, title, summary, body, tags) VALUES (3, 'customs', '', '', ''), (7, 'tax', '', '', '');",
        )
        .unwrap();
        let store = SqliteStore::open(&dir.path().join("keys.db")).await.unwrap();
        assert_eq!(store.migrate().await.unwrap().applied, vec![12, 13, 14, 15, 16, 17, 18, 19]);
        let keys = |conn: &Connection| -> Vec<(i64, String)> {
            conn.prepare("SELECT search_rowid, document_id FROM document_search_keys ORDER BY search_rowid")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(
            keys(&conn),
            vec![
                (3, "00000000-0000-0000-0000-0000000000d3".to_owned()),
                (7, "00000000-0000-0000-0000-0000000000d7".to_owned())
            ]
        );
        let found: i64 = conn
            .query_row(
                "SELECT k.search_rowid FROM document_search s JOIN document_search_keys k ON k.search_rowid = s.rowid \
                 WHERE document_search MATCH 'tax'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(found, 7, "the index still finds its documents through the keys");
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             DELETE FROM document_search_keys WHERE search_rowid = 7;
             INSERT INTO document_search_keys (document_id, tenant_id) VALUES ('00000000-0000-0000-0000-0000000000d8', '00000000-0000-0000-0000-000000000001');",
        )
        .unwrap();
        assert_eq!(
            keys(&conn),
            vec![
                (3, "00000000-0000-0000-0000-0000000000d3".to_owned()),
                (8, "00000000-0000-0000-0000-0000000000d8".to_owned())
            ],
            "7 is not given again"
        );
    }

    #[tokio::test]
    async fn migration_17_indexes_the_stored_documents_again_with_the_words_folded_as_queries_are() {
        let dir = tempfile::tempdir().unwrap();
        let conn = connect(&dir.path().join("words.db")).unwrap();
        migrate_one_by_one(&conn, 16);
        // A document as the store wrote it before: its text in the unicode61 index, where a Hangul or Greek word
        // folded otherwise than a query is folded.
        conn.execute_batch(
            "PRAGMA foreign_keys = OFF;
             INSERT INTO documents (id, tenant_id, title, summary, body, doc_type, status, created_by, updated_by,
                 created_at, updated_at, version)
             VALUES ('00000000-0000-0000-0000-0000000000d1', '00000000-0000-0000-0000-000000000001', '서울 guide',
                 'Νόμος Maßnahmen', 'ガイド', 'memo', 'draft', 'a', 'a', '2027-01-01T00:00:00Z', '2027-01-01T00:00:00Z', 1);
             INSERT INTO document_tags (document_id, tenant_id, tag)
             VALUES ('00000000-0000-0000-0000-0000000000d1', '00000000-0000-0000-0000-000000000001', 'ёлка');
             INSERT INTO document_search_keys (search_rowid, document_id, tenant_id)
             VALUES (4, '00000000-0000-0000-0000-0000000000d1', '00000000-0000-0000-0000-000000000001');
             INSERT INTO document_search (rowid, title, summary, body, tags) VALUES (4, '서울 guide', 'Νόμος Maßnahmen', 'ガイド', 'ёлка');",
        )
        .unwrap();
        let store = SqliteStore::open(&dir.path().join("words.db")).await.unwrap();
        assert_eq!(store.migrate().await.unwrap().applied, vec![17, 18, 19]);
        // `massnahmen`: migration 19 wrote the index again with `ß` spelled `ss`, as queries are folded now.
        for word in ["서울", "guide", "νόμοσ", "νομος", "ガイド", "елка", "massnahmen", "Maßnahmen"]
        {
            let query = crate::store::search::fold(word);
            let found: Vec<i64> = conn
                .prepare("SELECT rowid FROM document_search WHERE document_search MATCH ?1")
                .unwrap()
                .query_map([format!("\"{query}\"")], |r| r.get(0))
                .unwrap()
                .map(Result::unwrap)
                .collect();
            assert_eq!(found, vec![4], "{word} finds the stored document");
        }
    }

    #[tokio::test]
    async fn a_database_migrated_part_of_the_way_takes_the_remaining_migrations_not_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let latest = migrations::SQLITE.last().unwrap().version;
        let older = connect(&dir.path().join("older.db")).unwrap();
        migrate_one_by_one(&older, 5);
        drop(older);
        let store = SqliteStore::open(&dir.path().join("older.db")).await.unwrap();
        let report = store.migrate().await.unwrap();
        assert_eq!(report.already_applied, (1..=5).collect::<Vec<_>>());
        assert_eq!(report.applied, (6..=latest).collect::<Vec<_>>());
        let by_hand = connect(&dir.path().join("one-by-one.db")).unwrap();
        migrate_one_by_one(&by_hand, latest);
        let upgraded = connect(&dir.path().join("older.db")).unwrap();
        assert_eq!(objects(&upgraded), objects(&by_hand));
    }
}
