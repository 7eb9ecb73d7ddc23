//! Versioned schema migrations: the embedded list per store, checksums, and the report of a run.

use sha2::{Digest, Sha256};

/// One migration file compiled into the binary.
#[derive(Debug, Clone, Copy)]
pub struct Migration {
    pub version: i64,
    pub name: &'static str,
    pub sql: &'static str,
}

impl Migration {
    /// Hex SHA-256 of the text; an applied migration whose checksum changes is refused.
    pub fn checksum(&self) -> String {
        let digest = Sha256::digest(self.sql.as_bytes());
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// A row of the migration history table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedMigration {
    pub version: i64,
    pub name: String,
    pub checksum: String,
    pub applied_at: chrono::DateTime<chrono::Utc>,
}

/// What one `migrate` call did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    /// Versions applied by this call, in order.
    pub applied: Vec<i64>,
    /// Versions that were already present.
    pub already_applied: Vec<i64>,
    /// Applied versions newer than every migration this build knows: a newer release migrated the database
    /// first (deployments migrate before they deploy the code). This release runs on it, since each migration
    /// keeps the release before it working (docs/data-model.md, "Migrations").
    pub newer: Vec<i64>,
}

macro_rules! migrations {
    ($dir:literal: $( $version:literal => $file:literal $name:literal ),+ $(,)?) => {
        &[$(Migration {
            version: $version,
            name: $name,
            sql: include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/", $dir, "/", $file)),
        }),+]
    };
}

/// The SQLite migrations, oldest first: version => file under `handler/migrations/sqlite/`, name.
pub const SQLITE: &[Migration] = migrations!("sqlite":
    1 => "0001_job_runs.sql" "job_runs",
    2 => "0002_data_model.sql" "data_model",
    3 => "0003_client_directory_binding.sql" "client_directory_binding",
    4 => "0004_quota_leases.sql" "quota_leases",
    5 => "0005_quarantine_identity.sql" "quarantine_identity",
    6 => "0006_quota_grants.sql" "quota_grants",
    7 => "0007_statement_adjustments.sql" "statement_adjustments",
    8 => "0008_client_limits.sql" "client_limits",
    9 => "0009_billing_calendar.sql" "billing_calendar",
    10 => "0010_document_search.sql" "document_search",
    11 => "0011_refusals.sql" "refusals",
    12 => "0012_search_keys_never_reused.sql" "search_keys_never_reused",
    13 => "0013_document_codes_lower_case.sql" "document_codes_lower_case",
    14 => "0014_quarter_hour_zone_windows.sql" "quarter_hour_zone_windows",
    15 => "0015_period_plan.sql" "period_plan",
    16 => "0016_tags_compared_exactly.sql" "tags_compared_exactly",
    17 => "0017_search_words_folded_once.sql" "search_words_folded_once",
    18 => "0018_period_overage_plan.sql" "period_overage_plan",
    19 => "0019_search_words_folded_again.sql" "search_words_folded_again",
);

/// The SQL Server migrations: the same versions and names as [`SQLITE`], in T-SQL.
pub const MSSQL: &[Migration] = migrations!("mssql":
    1 => "0001_job_runs.sql" "job_runs",
    2 => "0002_data_model.sql" "data_model",
    3 => "0003_client_directory_binding.sql" "client_directory_binding",
    4 => "0004_quota_leases.sql" "quota_leases",
    5 => "0005_quarantine_identity.sql" "quarantine_identity",
    6 => "0006_quota_grants.sql" "quota_grants",
    7 => "0007_statement_adjustments.sql" "statement_adjustments",
    8 => "0008_client_limits.sql" "client_limits",
    9 => "0009_billing_calendar.sql" "billing_calendar",
    10 => "0010_document_search.sql" "document_search",
    11 => "0011_refusals.sql" "refusals",
    12 => "0012_search_keys_never_reused.sql" "search_keys_never_reused",
    13 => "0013_document_codes_lower_case.sql" "document_codes_lower_case",
    14 => "0014_quarter_hour_zone_windows.sql" "quarter_hour_zone_windows",
    15 => "0015_period_plan.sql" "period_plan",
    16 => "0016_tags_compared_exactly.sql" "tags_compared_exactly",
    17 => "0017_search_words_folded_once.sql" "search_words_folded_once",
    18 => "0018_period_overage_plan.sql" "period_overage_plan",
    19 => "0019_search_words_folded_again.sql" "search_words_folded_again",
);

/// Whether the store writes the search index of every live document again right after `migration`'s script, in
/// its transaction: the migrations that build the index or change how its words are made (both stores).
pub fn indexes_stored_documents(migration: &Migration) -> bool {
    matches!(migration.name, "document_search" | "search_words_folded_once" | "search_words_folded_again")
}

/// Checks that `known` is strictly increasing: a gap or reorder is a build mistake, caught by a unit test.
pub fn check_order(known: &[Migration]) -> Result<(), String> {
    for pair in known.windows(2) {
        if pair[1].version != pair[0].version + 1 {
            return Err(format!("migration {} follows {}", pair[1].version, pair[0].version));
        }
    }
    Ok(())
}

/// Verifies the applied `history` against the `known` migrations, the same way in every store: an applied
/// version the build does not know is `UnknownMigration` (unless it is newer than all it knows, and nothing it
/// knows is missing: a newer release's, in `newer`), one whose checksum changed is `MigrationChanged`.
/// Returns the report with `already_applied` filled in and the migrations still to apply, in order.
pub(crate) fn verify<'a>(
    known: &'a [Migration],
    history: &[AppliedMigration],
) -> Result<(MigrationReport, Vec<&'a Migration>), super::StoreError> {
    let mut report = MigrationReport::default();
    let newest = known.iter().map(|m| m.version).max().unwrap_or(0);
    for applied in history {
        let Some(migration) = known.iter().find(|m| m.version == applied.version) else {
            if applied.version > newest {
                report.newer.push(applied.version);
                continue;
            }
            return Err(super::StoreError::UnknownMigration { version: applied.version });
        };
        if migration.checksum() != applied.checksum {
            return Err(super::StoreError::MigrationChanged {
                version: applied.version,
                name: applied.name.clone(),
                applied: applied.checksum.clone(),
                expected: migration.checksum(),
            });
        }
        report.already_applied.push(applied.version);
    }
    let pending: Vec<&Migration> = known.iter().filter(|m| !report.already_applied.contains(&m.version)).collect();
    if let (Some(newer), false) = (report.newer.first(), pending.is_empty()) {
        // A newer release's migration on a database that lacks one of ours: not a sequence any deployment makes.
        return Err(super::StoreError::UnknownMigration { version: *newer });
    }
    Ok((report, pending))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn applied(m: &Migration, checksum: String) -> AppliedMigration {
        AppliedMigration { version: m.version, name: m.name.into(), checksum, applied_at: chrono::DateTime::UNIX_EPOCH }
    }

    #[test]
    fn verify_reports_what_is_applied_and_returns_the_rest_in_order() {
        let history = vec![applied(&SQLITE[0], SQLITE[0].checksum())];
        let (report, pending) = verify(SQLITE, &history).unwrap();
        assert_eq!(report.already_applied, [1]);
        assert!(report.applied.is_empty());
        assert_eq!(
            pending.iter().map(|m| m.version).collect::<Vec<_>>(),
            (2..=SQLITE.len() as i64).collect::<Vec<_>>()
        );
        let (_, pending) = verify(SQLITE, &[]).unwrap();
        assert_eq!(pending.len(), SQLITE.len());
    }

    #[test]
    fn verify_refuses_a_changed_or_unknown_migration() {
        let changed = vec![applied(&SQLITE[0], "0".repeat(64))];
        assert!(matches!(verify(SQLITE, &changed), Err(super::super::StoreError::MigrationChanged { version: 1, .. })));
        let mut unknown = applied(&SQLITE[0], SQLITE[0].checksum());
        unknown.version = 999;
        assert!(matches!(verify(SQLITE, &[unknown]), Err(super::super::StoreError::UnknownMigration { version: 999 })));
    }

    #[test]
    fn a_newer_releases_migrations_on_top_of_all_of_ours_are_tolerated() {
        let mut history: Vec<AppliedMigration> = SQLITE.iter().map(|m| applied(m, m.checksum())).collect();
        let mut next = applied(&SQLITE[0], "f".repeat(64));
        next.version = SQLITE.last().unwrap().version + 1;
        history.push(next.clone());
        let (report, pending) = verify(SQLITE, &history).unwrap();
        assert_eq!((report.newer, pending.len()), (vec![next.version], 0));
        // With one of ours missing beneath it, it is no sequence a deployment makes.
        history.remove(SQLITE.len() - 1);
        assert!(matches!(verify(SQLITE, &history), Err(super::super::StoreError::UnknownMigration { .. })));
        // A version inside our range that we do not have is still refused.
        let mut stray = applied(&SQLITE[0], "0".repeat(64));
        stray.version = 0;
        assert!(matches!(verify(SQLITE, &[stray]), Err(super::super::StoreError::UnknownMigration { version: 0 })));
    }

    #[test]
    fn migrations_are_numbered_from_one_without_gaps_and_mirror_each_other() {
        assert_eq!(SQLITE[0].version, 1);
        check_order(SQLITE).unwrap();
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/migrations/sqlite");
        let mut files: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        files.sort();
        let listed: Vec<_> = SQLITE.iter().map(|m| format!("{:04}_{}.sql", m.version, m.name)).collect();
        assert_eq!(files, listed, "every file is listed once, with its version and name in the file name");
    }

    #[test]
    fn migration_3_binds_existing_registrations_to_their_tenants_directory() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.pragma_update(None, "foreign_keys", "ON").unwrap();
        for m in &SQLITE[..2] {
            conn.execute_batch(m.sql).unwrap();
        }
        let t = "2026-01-01T00:00:00.000000Z";
        conn.execute_batch(&format!(
            "INSERT INTO plans (code, name, requests_per_minute, burst, monthly_quota_units, overage_policy, currency,
                 created_at, updated_at) VALUES ('p', 'P', 1, 1, 1, 'block', 'EUR', '{t}', '{t}');
             INSERT INTO tenants (id, entra_tenant_id, name, status, plan_code, created_at, updated_at) VALUES
                 ('00000000-0000-0000-0000-00000000000a', 'aaaaaaaa-0000-0000-0000-000000000001', 'A', 'active', 'p', '{t}', '{t}'),
                 ('00000000-0000-0000-0000-00000000000b', NULL, 'B', 'active', 'p', '{t}', '{t}');
             INSERT INTO api_clients (id, tenant_id, app_id, display_name, status, created_at, revoked_at, version) VALUES
                 ('00000000-0000-0000-0000-0000000000c1', '00000000-0000-0000-0000-00000000000a', 'bound', 'x', 'active', '{t}', NULL, 1),
                 ('00000000-0000-0000-0000-0000000000c2', '00000000-0000-0000-0000-00000000000b', 'unbindable', 'y', 'active', '{t}', NULL, 3);
             INSERT INTO api_client_roles (client_id, role) VALUES
                 ('00000000-0000-0000-0000-0000000000c1', 'Documents.Read'),
                 ('00000000-0000-0000-0000-0000000000c2', 'Usage.Read');"
        ))
        .unwrap();
        conn.execute_batch(SQLITE[2].sql).unwrap();
        type Row = (String, Option<String>, String, Option<String>, i64);
        let rows: Vec<Row> = conn
            .prepare(
                "SELECT app_id, directory_id, status, revoked_at, version FROM api_client_registrations ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert_eq!(
            rows[0],
            ("bound".into(), Some("aaaaaaaa-0000-0000-0000-000000000001".into()), "active".into(), None, 1)
        );
        let (app, directory, status, revoked_at, version) = rows[1].clone();
        assert_eq!((app.as_str(), directory, status.as_str(), version), ("unbindable", None, "revoked", 4));
        assert!(revoked_at.is_some_and(|r| r.ends_with(".000000Z")), "revoked now, in the store's time format");
        let roles: i64 = conn.query_row("SELECT count(*) FROM api_client_roles", [], |r| r.get(0)).unwrap();
        assert_eq!(roles, 2, "the roles moved with their registrations");
        // The roles follow their registration's deletion, so the foreign key points at the new table.
        conn.execute("DELETE FROM api_client_registrations WHERE app_id = 'bound'", []).unwrap();
        let roles: i64 = conn.query_row("SELECT count(*) FROM api_client_roles", [], |r| r.get(0)).unwrap();
        assert_eq!(roles, 1);
        let old: i64 =
            conn.query_row("SELECT count(*) FROM sqlite_master WHERE name = 'api_clients'", [], |r| r.get(0)).unwrap();
        assert_eq!(old, 0, "the old table is gone");
    }

    #[test]
    fn checksums_are_stable_hex() {
        let m = Migration { version: 1, name: "x", sql: "CREATE TABLE t (a INT);" };
        assert_eq!(m.checksum().len(), 64);
        assert_eq!(m.checksum(), m.checksum());
    }
}
