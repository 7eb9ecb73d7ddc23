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
);

/// The SQL Server migrations: the same versions and names as [`SQLITE`], in T-SQL.
pub const MSSQL: &[Migration] = migrations!("mssql":
    1 => "0001_job_runs.sql" "job_runs",
    2 => "0002_data_model.sql" "data_model",
);

/// Checks that `known` is strictly increasing: a gap or reorder is a build mistake, caught by a unit test.
pub fn check_order(known: &[Migration]) -> Result<(), String> {
    for pair in known.windows(2) {
        if pair[1].version != pair[0].version + 1 {
            return Err(format!("migration {} follows {}", pair[1].version, pair[0].version));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn checksums_are_stable_hex() {
        let m = Migration { version: 1, name: "x", sql: "CREATE TABLE t (a INT);" };
        assert_eq!(m.checksum().len(), 64);
        assert_eq!(m.checksum(), m.checksum());
    }
}
