//! The `handler` command line: subcommands and the exit codes the Functions host depends on.

use std::process::{Command, Output};
use std::time::Duration;

use crate::support::host::HostEmulator;

fn handler(dir: &std::path::Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
    command.args(args).current_dir(dir);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("METERLINE_") || k.starts_with("FUNCTIONS_")) {
        command.env_remove(key);
    }
    command.envs(env.iter().copied()).output().expect("handler runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_configuration_exits_non_zero_with_one_line_naming_the_setting() {
    let dir = tempfile::tempdir().unwrap();
    for (env, setting) in [
        (vec![("METERLINE_PORT", "eighty")], "METERLINE_PORT"),
        (vec![("FUNCTIONS_CUSTOMHANDLER_PORT", "0")], "FUNCTIONS_CUSTOMHANDLER_PORT"),
        (vec![("METERLINE_STORE", "oracle")], "METERLINE_STORE"),
        (vec![("METERLINE_SERVICEBUS_CONNECTION_STRING", "garbage")], "METERLINE_SERVICEBUS_CONNECTION_STRING"),
        // Host mode serves invocation routes that trust their caller: it listens on loopback or not at all.
        (
            vec![("FUNCTIONS_CUSTOMHANDLER_PORT", "7999"), ("METERLINE_BIND_ADDRESS", "0.0.0.0")],
            "METERLINE_BIND_ADDRESS",
        ),
    ] {
        let output = handler(dir.path(), &["serve"], &env);
        assert_eq!(output.status.code(), Some(2), "{env:?}");
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "exactly one line: {text}");
        assert!(text.starts_with("handler: configuration error: ") && text.contains(setting), "{text}");
    }
}

#[test]
fn values_past_their_bounds_exit_2_with_one_line_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    // Once a panic (DateTime - TimeDelta) that left the rollup's lease held, or a purge horizon wrapped to hours.
    for (setting, value) in [
        ("METERLINE_ROLLUP_SETTLE_SECS", "18446744073709551615"),
        ("METERLINE_USAGE_RETENTION_DAYS", "18446744073709551615"),
        ("METERLINE_USAGE_RETENTION_DAYS", "213503982334602"),
    ] {
        let output = handler(dir.path(), &["run-job", "usage-rollup"], &[(setting, value)]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{setting}={value}: {text}");
        assert_eq!(text.lines().count(), 1, "exactly one line: {text}");
        assert!(text.starts_with(&format!("handler: configuration error: {setting}: expected at most ")), "{text}");
    }
    assert!(!dir.path().join("data").exists(), "refused before the store was opened");
}

#[test]
fn an_unusable_sql_server_connection_string_exits_2_with_one_line_and_no_secret() {
    let dir = tempfile::tempdir().unwrap();
    for connection_string in ["hunter2", "Server=db;User Id=a;Password=hunter2;Encrypt=maybe"] {
        let env = [("METERLINE_STORE", "mssql"), ("METERLINE_MSSQL_CONNECTION_STRING", connection_string)];
        let output = handler(dir.path(), &["migrate"], &env);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert_eq!(text.lines().count(), 1, "exactly one line: {text}");
        let expected =
            "handler: configuration error: METERLINE_MSSQL_CONNECTION_STRING: invalid SQL Server connection string: ";
        assert!(text.starts_with(expected), "{text}");
        assert!(!text.contains("hunter2"), "{text}");
    }
}

#[test]
fn dev_tokens_live_at_most_a_year_and_never_wrap_into_the_past() {
    use base64::Engine as _;
    let dir = tempfile::tempdir().unwrap();
    for ttl in ["106751991167301d", "213503982334602d", "366d"] {
        let output = handler(dir.path(), &["dev-token", "--ttl", ttl], &[]);
        assert_eq!(output.status.code(), Some(2), "{ttl}: {}", stderr(&output));
        assert!(output.stdout.is_empty(), "no token for {ttl}");
        assert!(stderr(&output).contains("at most 365d"), "{}", stderr(&output));
    }
    let year = handler(dir.path(), &["dev-token", "--ttl", "365d"], &[]);
    assert!(year.status.success(), "{}", stderr(&year));
    let token = String::from_utf8(year.stdout).unwrap();
    let payload = token.trim().split('.').nth(1).unwrap();
    let claims: serde_json::Value =
        serde_json::from_slice(&base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
    assert_eq!(claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap(), 365 * 86_400);
}

#[test]
fn a_port_already_taken_is_a_failure_exit_not_zero() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let output = handler(dir.path(), &["serve"], &[("FUNCTIONS_CUSTOMHANDLER_PORT", &port)]);
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains(&format!("cannot listen on 127.0.0.1:{port}")), "{}", stderr(&output));
}

#[test]
fn migrate_builds_the_schema_and_is_safe_to_run_twice() {
    let dir = tempfile::tempdir().unwrap();
    let first = handler(dir.path(), &["migrate"], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    assert_eq!(
        String::from_utf8_lossy(&first.stdout).trim(),
        "sqlite store: applied [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19], already applied []"
    );
    let second = handler(dir.path(), &["migrate"], &[]);
    assert!(second.status.success(), "{}", stderr(&second));
    assert_eq!(
        String::from_utf8_lossy(&second.stdout).trim(),
        "sqlite store: applied [], already applied [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19]"
    );
    assert!(dir.path().join("data/meterline.db").is_file());
}

#[test]
fn run_job_runs_one_step_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let output = handler(dir.path(), &["run-job", "usage-rollup"], &[("METERLINE_LOG", "warn")]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(String::from_utf8_lossy(&output.stdout).starts_with("usage-rollup: "));
    let unknown = handler(dir.path(), &["run-job", "nope"], &[]);
    assert_eq!(unknown.status.code(), Some(2), "clap rejects unknown jobs");
}

#[test]
fn openapi_prints_the_document_without_any_configuration() {
    let dir = tempfile::tempdir().unwrap();
    let output = handler(dir.path(), &["openapi"], &[("METERLINE_PORT", "not-even-a-port")]);
    assert!(output.status.success(), "{}", stderr(&output));
    let doc: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(doc["openapi"], "3.1.0");
    assert!(doc["paths"]["/api/health/ready"]["get"].is_object());
    assert!(!dir.path().join("data").exists(), "printing the document touches no store");
}

#[tokio::test]
async fn a_requested_shutdown_exits_zero_and_says_so() {
    let mut host = HostEmulator::start().await;
    let status = Command::new("kill").args(["-TERM", &host.pid().to_string()]).status().unwrap();
    assert!(status.success());
    assert_eq!(host.wait_exit(Duration::from_secs(15)).await, Some(0));
    host.wait_output_complete(Duration::from_secs(15)).await;
    assert!(host.output_text().contains("shut down on request"), "{}", host.output_text());
}

#[test]
fn without_auto_migration_an_unmigrated_store_stops_the_process_before_the_port_opens() {
    let dir = tempfile::tempdir().unwrap();
    // `timeout` only bounds a regression (a server that started would run until killed, exit 124).
    let mut command = Command::new("timeout");
    command.args(["60", env!("CARGO_BIN_EXE_handler"), "serve"]).current_dir(dir.path());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("METERLINE_") || k.starts_with("FUNCTIONS_")) {
        command.env_remove(key);
    }
    let output = command.envs([("METERLINE_AUTO_MIGRATE", "false"), ("METERLINE_PORT", "0")]).output().unwrap();
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stderr(&output).contains("run `handler migrate` first"), "{}", stderr(&output));
}

#[test]
fn a_database_a_newer_release_migrated_first_is_served_and_migrated_as_it_is() {
    let dir = tempfile::tempdir().unwrap();
    assert!(handler(dir.path(), &["migrate"], &[]).status.success());
    // Release N+1's deployment ran its migration before its code reached every instance.
    rusqlite::Connection::open(dir.path().join("data/meterline.db"))
        .unwrap()
        .execute(
            "INSERT INTO schema_migrations VALUES (99, 'from_the_next_release', ?1, '2026-01-01T00:00:00Z')",
            ["f".repeat(64)],
        )
        .unwrap();
    let migrate = handler(dir.path(), &["migrate"], &[]);
    assert!(migrate.status.success(), "{}", stderr(&migrate));
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("applied [], already applied [1, 2"), "{migrate:?}");
    assert!(String::from_utf8_lossy(&migrate.stdout).contains("newer than this release [99]"), "{migrate:?}");
    let job = handler(dir.path(), &["run-job", "usage-rollup"], &[("METERLINE_AUTO_MIGRATE", "false")]);
    assert!(job.status.success(), "the release before runs on it: {}", stderr(&job));
}

#[test]
fn a_store_path_naming_something_else_is_a_configuration_error_that_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let text = dir.path().join("notes.db");
    std::fs::write(&text, "these are notes, not a database\n").unwrap();
    let foreign = dir.path().join("crm.db");
    rusqlite::Connection::open(&foreign)
        .unwrap()
        .execute_batch("CREATE TABLE customers (id INTEGER PRIMARY KEY)")
        .unwrap();
    let folder = dir.path().join("a-folder");
    std::fs::create_dir(&folder).unwrap();
    // golang-migrate's history table has our table's name, not its columns.
    let migrated = dir.path().join("go.db");
    rusqlite::Connection::open(&migrated)
        .unwrap()
        .execute_batch(
            "CREATE TABLE schema_migrations (version uint64, dirty bool); INSERT INTO schema_migrations VALUES (3, 0);",
        )
        .unwrap();
    for (file, says) in [
        (&text, "is not a SQLite database"),
        (&foreign, "is not a Meterline database: it has tables (customers)"),
        (&folder, "is a folder, not a database file"),
        (&migrated, "is not a Meterline database: it has tables (schema_migrations)"),
    ] {
        let before = std::fs::read(file).unwrap_or_default();
        let output = handler(dir.path(), &["migrate"], &[("METERLINE_SQLITE_PATH", file.to_str().unwrap())]);
        let text = stderr(&output);
        assert_eq!(output.status.code(), Some(2), "{text}");
        assert!(text.starts_with("handler: configuration error: METERLINE_SQLITE_PATH: "), "{text}");
        assert_eq!(text.lines().count(), 1, "one line: {text}");
        assert!(text.contains(&format!("{} {says}", file.display())), "{text}");
        assert!(std::fs::read(file).unwrap_or_default() == before, "the file is left as it was");
    }
}

#[test]
fn a_migration_waits_for_another_process_holding_the_write_lock() {
    use std::io::{BufRead as _, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let first = handler(dir.path(), &["migrate"], &[]);
    assert!(first.status.success(), "{}", stderr(&first));
    let holder = rusqlite::Connection::open(dir.path().join("data/meterline.db")).unwrap();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();

    let mut command = Command::new(env!("CARGO_BIN_EXE_handler"));
    command.arg("migrate").current_dir(dir.path()).stdout(std::process::Stdio::piped());
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("METERLINE_") || k.starts_with("FUNCTIONS_")) {
        command.env_remove(key);
    }
    let mut child = command.stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let waiting = lines.by_ref().map(Result::unwrap).find(|line| line.contains("locked by another connection"));
    assert!(waiting.is_some(), "the migration says it waits for the lock");
    holder.execute_batch("ROLLBACK").unwrap();
    let rest: Vec<String> = lines.map(Result::unwrap).collect();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "it migrates once the lock is free: {rest:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains("already applied [1, 2"), "{output:?}");
}

#[test]
fn a_reader_that_stops_early_ends_the_output_without_a_panic() {
    use std::io::Read as _;
    // The OpenAPI document is larger than a pipe holds, so the handler is still writing when the reader leaves.
    let mut child = Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("openapi")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = [0u8; 16];
    child.stdout.take().unwrap().read_exact(&mut first).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(!stderr(&output).contains("panicked"), "{}", stderr(&output));
}
