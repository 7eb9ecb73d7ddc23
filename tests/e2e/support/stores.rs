//! The stores the contract suite runs against: SQLite always, SQL Server when `MSSQL_TEST_CONNECTION_STRING` is set.
//!
//! Each test gets its own database: a fresh SQLite file, or a fresh SQL Server database created from the
//! configured connection and dropped afterwards (best effort). [`plan`] is the plan fixture the e2e tests share.

use std::future::Future;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use meterline::store::prelude::*;
use meterline::store::{OveragePolicy, Plan, SqliteStore};

type Reopen = Arc<dyn Fn() -> std::pin::Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>> + Send + Sync>;

/// One store under test, plus a way to open a second, independent handle on the same database
/// (what a second handler process would have). Cloning shares the database; it lives until the last clone goes.
#[derive(Clone)]
pub struct TestStore {
    pub name: &'static str,
    pub store: Arc<dyn Store>,
    reopen: Reopen,
    _dir: Option<Arc<tempfile::TempDir>>,
}

impl TestStore {
    pub async fn second_handle(&self) -> Arc<dyn Store> {
        (self.reopen)().await
    }
}

async fn sqlite() -> TestStore {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("contract.db");
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&path).await.unwrap());
    TestStore {
        name: "sqlite",
        store,
        reopen: Arc::new(move || {
            let path = path.clone();
            Box::pin(async move { Arc::new(SqliteStore::open(&path).await.unwrap()) as Arc<dyn Store> })
        }),
        _dir: Some(Arc::new(dir)),
    }
}

async fn mssql(test: &str) -> Option<TestStore> {
    let Ok(server) = std::env::var("MSSQL_TEST_CONNECTION_STRING") else {
        eprintln!("SKIPPED SQL Server run of {test}: MSSQL_TEST_CONNECTION_STRING is not set");
        return None;
    };
    let database = format!("meterline_test_{}", uuid::Uuid::new_v4().simple());
    let connection = create_test_database(&server, &database)
        .await
        .unwrap_or_else(|e| panic!("creating SQL Server database {database}: {e:?}"));
    let open = move || {
        let connection = connection.clone();
        Box::pin(async move {
            let config = meterline::config::StoreConfig::Mssql { connection_string: connection.into() };
            meterline::store::open(&config, std::sync::Arc::new(meterline::clock::SystemClock))
                .await
                .expect("the SQL Server store opens")
        }) as std::pin::Pin<Box<dyn Future<Output = Arc<dyn Store>> + Send>>
    };
    let store = open().await;
    Some(TestStore { name: "mssql", store, reopen: Arc::new(open), _dir: None })
}

/// Runs `test` once per configured store, each on a fresh, unmigrated database.
///
/// The harness keeps its own clone alive until the test's future ends: an `async move` block captures only
/// the fields it names, so a test that never mentions the temp dir would otherwise delete it before it runs.
pub async fn for_each_store<F, Fut>(name: &str, test: F)
where
    F: Fn(TestStore) -> Fut,
    Fut: Future<Output = ()>,
{
    let sqlite = sqlite().await;
    test(sqlite.clone()).await;
    drop(sqlite);
    if let Some(mssql) = mssql(name).await {
        test(mssql.clone()).await;
    }
}

/// A plan named after its code: `quota` units a month, blocked beyond it, 60 requests a minute (burst 10), no
/// prices, created at `at`. Tests that need other values override them: `Plan { burst: 50, ..plan(..) }`.
pub fn plan(code: &str, quota: i64, at: DateTime<Utc>) -> Plan {
    Plan {
        code: code.into(),
        name: code.into(),
        requests_per_minute: 60,
        burst: 10,
        monthly_quota_units: quota,
        overage_policy: OveragePolicy::Block,
        currency: "EUR".into(),
        base_price_micros: 0,
        overage_unit_price_micros: 0,
        created_at: at,
        updated_at: at,
        version: 1,
    }
}

/// Creates database `name` on the server of `server_connection_string` and returns a connection string for it
/// (the same one with its `Database`/`Initial Catalog` replaced). Connects through the store's own connector,
/// so every authentication the store accepts works here too.
pub(crate) async fn create_test_database(
    server_connection_string: &str,
    name: &str,
) -> Result<String, meterline::store::StoreError> {
    use meterline::store::StoreError;
    use meterline::store::mssql::connection::MssqlConnector;

    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(StoreError::Other(anyhow::anyhow!("test database names are [A-Za-z0-9_]+, got {name:?}")));
    }
    let connector = MssqlConnector::new(&secrecy::SecretString::from(server_connection_string.to_owned()))?;
    let mut conn = connector.connect().await?;
    let create = format!("CREATE DATABASE [{name}]");
    let done = conn.simple_query(create).await.map_err(|e| StoreError::Other(e.into()))?;
    done.into_results().await.map_err(|e| StoreError::Other(e.into()))?;
    let without_database: Vec<&str> = server_connection_string
        .split(';')
        .filter(|part| {
            let key = part.split('=').next().unwrap_or("").trim().to_ascii_lowercase();
            !part.trim().is_empty() && key != "database" && key != "initial catalog"
        })
        .collect();
    Ok(format!("{};Database={name}", without_database.join(";")))
}
