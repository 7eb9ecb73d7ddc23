//! The SQL Server store: [`MssqlStore`], the storage contract over a bb8 pool of tiberius connections, and its
//! building blocks (connections and the pool, Entra ID tokens, error classification, retry). Each aggregate's file
//! holds its T-SQL statements (those not moved yet are in `queries`); [`STATEMENTS`] lists them all.
//!
//! Every operation runs in one explicit transaction (`XACT_ABORT ON` rolls back on any error). Only
//! idempotent operations are retried on transient faults ([`Retry::Yes`]): reads, migrations, usage inserts
//! keyed by event id, leases. A debit or a conditional update is not, because a commit whose answer was
//! lost may have happened; the caller sees 503 and decides.

pub mod connection;
pub mod errors;
pub mod queries;
pub mod retry;
pub mod token;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use secrecy::SecretString;
use tiberius::{ColumnData, Row, ToSql};
use uuid::Uuid;

use crate::store::migrations::{self, AppliedMigration, MigrationReport};
use crate::store::model::*;
use crate::store::{DocumentStore, JobRun, OperationsStore, PlanStore, StoreError, TenantStore, Update};
use crate::store::{audit::*, documents::*, metering::*, operations::*, plans::*, tenants::*};
use connection::{MssqlClient, MssqlConnector, MssqlManager, pool_error, pool_with_timeout};
use errors::classify;
use queries as q;
use retry::{RetryPolicy, jitter_from_seed, retry, retry_rolled_back};

/// Connections per handler process. Azure SQL counts sessions per database; scale-out multiplies this.
const POOL_SIZE: u32 = 16;

/// How long an operation waits for a pooled connection before it fails as unavailable (then 503).
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(5);
/// Transactions that may wait for or hold a pooled connection at once: four per connection. Past it a
/// transaction is refused with 503 `overloaded` at once rather than queueing behind a pool that is not keeping
/// up (each waiter would otherwise wait POOL_WAIT per attempt).
const MAX_WAITING: usize = 4 * POOL_SIZE as usize;
/// The longest one store call may take, all its attempts together, from the first wait for a connection to the
/// last `COMMIT`: past it the call fails as unavailable (503) and the connection in use is discarded. tiberius has
/// no statement timeout of its own; 15 s is half of ADO.NET's default command timeout, a store call's whole
/// budget within an HTTP request (three attempts at most: `RetryPolicy`), and far above what this store's
/// statements take. It bounds the attempts together, not each: against a stalled server every attempt would
/// run into it, and three in a row would hold a request for 45 s.
const TRANSACTION_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// A pooled connection owned by the operation that uses it.
type Pooled = bb8::PooledConnection<'static, MssqlManager>;

/// Runs `$body` (which sees `$conn: &mut MssqlClient`) in [`MssqlStore::transaction`].
macro_rules! in_tx {
    ($store:expr, $retry:expr, |$conn:ident| $body:expr) => {
        $store
            .transaction($retry, |mut pooled: Pooled| async move {
                let result = async {
                    let $conn: &mut MssqlClient = &mut pooled;
                    $body
                }
                .await;
                (pooled, result)
            })
            .await
    };
}

mod audit;
pub(crate) mod integration;
mod metering;
mod usage;
/// Write helpers other aggregates call inside their own transactions.
#[allow(unused_imports)]
pub(crate) use audit::append_audit;
#[allow(unused_imports)]
pub(crate) use integration::{emit_quota_thresholds, insert_outbox};
#[allow(unused_imports)]
pub(crate) use metering::{debit_period, insert_usage_event, read_quota, take_rate, write_ledger};

/// Whether an operation may run again after a transient fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Retry {
    Yes,
    No,
}

/// The SQL Server implementation of [`Store`].
#[derive(Clone)]
pub struct MssqlStore {
    pool: bb8::Pool<MssqlManager>,
    retry: Arc<RetryPolicy>,
    /// Stamps the migration history (`applied_at`) and seeds the retry jitter.
    clock: Arc<dyn crate::clock::Clock>,
    /// Jitter sources handed out so far (see [`MssqlStore::jitter`]).
    draws: Arc<std::sync::atomic::AtomicU64>,
    /// Every transaction passes it (with its retries, as one call): opened by transactions that end
    /// unavailable, it refuses at once while open instead of queueing on a pool that cannot connect.
    breaker: Arc<crate::resilience::Breaker>,
    /// Bounds the transactions waiting for a pooled connection; past it a transaction is refused at once.
    waiting: Arc<tokio::sync::Semaphore>,
    /// [`TRANSACTION_TIMEOUT`] (tests shorten it).
    transaction_timeout: std::time::Duration,
}

impl std::fmt::Debug for MssqlStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MssqlStore").field("pool", &self.pool.state()).finish()
    }
}

impl MssqlStore {
    /// Builds the pool; connections are made on first use, so a database that is briefly away does not stop startup.
    pub async fn open(connection_string: &SecretString) -> Result<Self, StoreError> {
        Self::open_with_clock(connection_string, Arc::new(crate::clock::SystemClock)).await
    }

    /// [`Self::open`] with the clock that stamps the migration history (tests inject a fixed one).
    pub async fn open_with_clock(
        connection_string: &SecretString,
        clock: Arc<dyn crate::clock::Clock>,
    ) -> Result<Self, StoreError> {
        Self::open_with_pool_wait(connection_string, clock, POOL_WAIT).await
    }

    /// [`Self::open_with_clock`] whose pool gives up on a connection after `pool_wait` (tests shorten it).
    async fn open_with_pool_wait(
        connection_string: &SecretString,
        clock: Arc<dyn crate::clock::Clock>,
        pool_wait: std::time::Duration,
    ) -> Result<Self, StoreError> {
        let connector = Arc::new(MssqlConnector::new(connection_string)?);
        // Three attempts, each waiting at most POOL_WAIT for a connection, all within TRANSACTION_TIMEOUT: a store
        // call fails within 15 s when the database is away or stalled, well inside the Functions HTTP limit.
        let retry = RetryPolicy { max_attempts: 3, ..RetryPolicy::default() };
        Ok(MssqlStore {
            pool: pool_with_timeout(connector, POOL_SIZE, pool_wait).await?,
            retry: Arc::new(retry),
            breaker: crate::resilience::Breaker::new("store", crate::resilience::BreakerPolicy::DEFAULT, clock.clone()),
            waiting: Arc::new(tokio::sync::Semaphore::new(MAX_WAITING)),
            transaction_timeout: TRANSACTION_TIMEOUT,
            clock,
            draws: Arc::default(),
        })
    }

    /// A jitter source for one retried operation, seeded from the injected clock's instant and how many sources
    /// this store has handed out: the same sequence under a test clock, a different one for every operation and
    /// every process in production (processes that retry together start at different nanoseconds).
    fn jitter(&self) -> impl FnMut() -> f64 + Send + 'static {
        let draw = self.draws.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let nanos = self.clock.now().timestamp_nanos_opt().unwrap_or_default() as u64;
        jitter_from_seed(nanos ^ draw.wrapping_mul(0x9E37_79B9_7F4A_7C15))
    }

    /// Runs `op` inside one transaction on a pooled connection; commits on Ok, rolls back on Err.
    /// `op` takes the connection and hands it back with its result (see [`in_tx!`]), which keeps the
    /// future free of higher-ranked borrows, so it stays `Send`.
    async fn transaction<T, F, Fut>(&self, retryable: Retry, op: F) -> Result<T, StoreError>
    where
        F: Fn(Pooled) -> Fut,
        Fut: Future<Output = (Pooled, Result<T, StoreError>)>,
    {
        // At most MAX_WAITING transactions wait for or hold a connection; the next is shed at once.
        let Ok(_slot) = self.waiting.clone().try_acquire_owned() else {
            return Err(StoreError::Unavailable(anyhow::Error::new(crate::resilience::Refusal::overloaded("store"))));
        };
        let attempt = self.breaker.admit().map_err(|r| StoreError::Unavailable(anyhow::Error::new(r)))?;
        let result = self.transaction_attempts(retryable, op).await;
        attempt.finish(!matches!(result, Err(StoreError::Unavailable(_))));
        result
    }

    /// [`Self::transaction`] past the load shedding and the breaker: the attempts, retried if `retryable`, all
    /// within [`TRANSACTION_TIMEOUT`].
    async fn transaction_attempts<T, F, Fut>(&self, retryable: Retry, op: F) -> Result<T, StoreError>
    where
        F: Fn(Pooled) -> Fut,
        Fut: Future<Output = (Pooled, Result<T, StoreError>)>,
    {
        let (this, op) = (self, &op);
        let attempt = move || async move {
            let mut conn = this.pool.get_owned().await.map_err(pool_error)?;
            // Cleared only once the transaction has ended; cut off before, the pool discards the connection.
            conn.in_flight = true;
            batch(&mut conn, "BEGIN TRANSACTION").await?;
            let (mut conn, result) = op(conn).await;
            match result {
                Ok(value) => {
                    batch(&mut conn, "COMMIT TRANSACTION").await?;
                    conn.in_flight = false;
                    Ok(value)
                }
                Err(err) => {
                    // XACT_ABORT has already rolled back on a server error; this covers errors raised in Rust.
                    let rolled_back = batch(&mut conn, "IF @@TRANCOUNT > 0 ROLLBACK TRANSACTION").await;
                    conn.in_flight = rolled_back.is_err();
                    Err(err)
                }
            }
        };
        let attempts = async {
            let mut jitter = self.jitter();
            match retryable {
                // A deadlock victim's transaction was rolled back whole: even a debit may run again.
                Retry::No => retry_rolled_back(&self.retry, &mut jitter, |_| attempt()).await,
                Retry::Yes => retry(&self.retry, &mut jitter, |_| attempt()).await,
            }
        };
        // The bound of every SQL Server call: the waits for a connection and every statement of every attempt. A
        // transaction cut off may still have committed (a lost COMMIT answer), so only idempotent work is retried
        // (`Retry::Yes`) and a debit answers 503, as for any other lost answer.
        match tokio::time::timeout(self.transaction_timeout, attempts).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Unavailable(anyhow::anyhow!(
                "the SQL Server transaction did not finish within {:?}; its connection is discarded",
                self.transaction_timeout
            ))),
        }
    }
}

/// Runs a parameterless batch to completion.
async fn batch(conn: &mut MssqlClient, sql: &str) -> Result<(), StoreError> {
    conn.simple_query(sql).await.map_err(classify)?.into_results().await.map_err(classify)?;
    Ok(())
}

/// Runs a parameterized statement; returns the rows of its first result set.
pub(super) async fn rows(conn: &mut MssqlClient, sql: &str, params: &[&dyn ToSql]) -> Result<Vec<Row>, StoreError> {
    conn.query(sql, params).await.map_err(classify)?.into_first_result().await.map_err(classify)
}

/// Runs a parameterized statement that returns no rows; returns the total rows affected.
pub(super) async fn execute(conn: &mut MssqlClient, sql: &str, params: &[&dyn ToSql]) -> Result<u64, StoreError> {
    Ok(conn.execute(sql, params).await.map_err(classify)?.total())
}

pub(super) fn column<'a, T: tiberius::FromSql<'a>>(row: &'a Row, index: usize) -> Result<Option<T>, StoreError> {
    row.try_get(index).map_err(|e| StoreError::Other(anyhow::anyhow!("column {index}: {e}")))
}

pub(super) fn required<'a, T: tiberius::FromSql<'a>>(row: &'a Row, index: usize) -> Result<T, StoreError> {
    column(row, index)?.ok_or_else(|| StoreError::Other(anyhow::anyhow!("column {index} is NULL")))
}

pub(super) fn text(row: &Row, index: usize) -> Result<String, StoreError> {
    required::<&str>(row, index).map(str::to_owned)
}

fn corrupt(what: &str, raw: &str) -> StoreError {
    StoreError::Other(anyhow::anyhow!("bad {what} {raw:?} in the database"))
}

// After `in_tx!`, which they use.
mod client_quota;
mod documents;
mod grants;
mod leases;
mod operations;
mod plans;
mod tenants;
use documents::assembled_rows;
use tenants::read_tenant;

/// Every T-SQL statement constant the SQL Server store runs, one list per file, for `store::tsql_check`
/// (parse check) and the completeness test below; `queries::ALL` holds what has not moved to its aggregate yet.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) const STATEMENTS: &[&[(&str, &str)]] = &[
    queries::ALL,
    operations::STATEMENTS,
    tenants::STATEMENTS,
    plans::STATEMENTS,
    documents::STATEMENTS,
    metering::STATEMENTS,
    leases::STATEMENTS,
    grants::STATEMENTS,
    client_quota::STATEMENTS,
    audit::STATEMENTS,
    integration::STATEMENTS,
    usage::STATEMENTS,
];

/// Statements generated from a size at run time (the multi-row usage insert), at sizes that show every shape:
/// the parse check (`store::tsql_check`) reads them with [`STATEMENTS`].
#[cfg(test)]
pub(crate) fn generated_examples() -> Vec<(String, String)> {
    [1, 2, 3]
        .into_iter()
        .map(|n| (format!("insert_usage_events_sql({n})"), metering::insert_usage_events_sql(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::clock::ManualClock;
    use crate::resilience::{BreakerState, Refusal, RefusalKind};

    /// A store over a port nothing listens on, whose pool gives up after `wait`, on a manual clock.
    async fn unreachable(wait: std::time::Duration) -> (Arc<ManualClock>, MssqlStore) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
        let connection = SecretString::from(format!("Server=tcp:127.0.0.1,{port};User Id=app;Password=pw"));
        let store = MssqlStore::open_with_pool_wait(&connection, clock.clone(), wait).await.unwrap();
        (clock, store)
    }

    async fn nothing(store: &MssqlStore) -> Result<(), StoreError> {
        store.transaction(Retry::No, |pooled: Pooled| async move { (pooled, Ok(())) }).await
    }

    fn refusal(result: &Result<(), StoreError>) -> Option<RefusalKind> {
        match result {
            Err(StoreError::Unavailable(cause)) => Refusal::find(cause).map(|r| r.kind),
            _ => None,
        }
    }

    /// A transaction against a server that accepts the connection and never answers ends at the transaction
    /// timeout, not at the pool's (longer) wait, and a retried one or a readiness ping at the same timeout, not one
    /// per attempt or the pool's wait; on paused time, so nothing waits for the wall clock.
    #[tokio::test(start_paused = true)]
    async fn a_server_that_never_answers_fails_the_transaction_and_all_its_attempts_at_its_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        // Accepts and holds every connection, reading nothing and answering nothing.
        let held = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((stream, _)) = listener.accept().await {
                held.push(stream);
            }
        });
        let clock = Arc::new(ManualClock::new("2026-01-01T00:00:00Z".parse().unwrap()));
        let connection = SecretString::from(format!("Server=tcp:127.0.0.1,{port};User Id=app;Password=pw"));
        let pool_wait = std::time::Duration::from_secs(600);
        let mut store = MssqlStore::open_with_pool_wait(&connection, clock, pool_wait).await.unwrap();
        store.transaction_timeout = std::time::Duration::from_secs(2);
        let started = tokio::time::Instant::now();
        let failed = nothing(&store).await;
        let message = match &failed {
            Err(StoreError::Unavailable(cause)) => cause.to_string(),
            other => panic!("{other:?}"),
        };
        assert!(message.contains("did not finish within 2s"), "{message}");
        assert!(started.elapsed() < pool_wait, "the timeout, not the pool's wait: {:?}", started.elapsed());
        // A retried call is bounded as a whole: against a silent server each of its attempts would time out.
        let started = tokio::time::Instant::now();
        let retried = store.transaction(Retry::Yes, |pooled: Pooled| async move { (pooled, Ok(())) }).await;
        assert!(matches!(retried, Err(StoreError::Unavailable(_))), "{retried:?}");
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(3), "one timeout for all its attempts, not one each: {took:?}");
        // The readiness probe's ping is bounded the same way.
        let started = tokio::time::Instant::now();
        let ping = store.ping().await;
        assert!(matches!(ping, Err(StoreError::Unavailable(_))), "{ping:?}");
        let took = started.elapsed();
        assert!(took < std::time::Duration::from_secs(3), "the ping ends at the timeout: {took:?}");
        held.abort();
    }

    #[tokio::test]
    async fn an_unreachable_server_opens_the_breaker_which_refuses_without_waiting_for_the_pool() {
        let (clock, store) = unreachable(std::time::Duration::from_millis(50)).await;
        for _ in 0..crate::resilience::BreakerPolicy::DEFAULT.failures_to_open {
            let failed = nothing(&store).await;
            assert!(matches!(failed, Err(StoreError::Unavailable(_))) && refusal(&failed).is_none(), "{failed:?}");
        }
        assert_eq!(store.breaker.state(), BreakerState::Open);
        let started = std::time::Instant::now();
        assert_eq!(refusal(&nothing(&store).await), Some(RefusalKind::CircuitOpen));
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "no pool wait: {:?}", started.elapsed());
        // Half-open after 5 s on the store's clock: the probe reaches the (still unreachable) pool and reopens it.
        clock.advance(chrono::Duration::seconds(5));
        let probe = nothing(&store).await;
        assert!(refusal(&probe).is_none(), "the probe is let through: {probe:?}");
        assert_eq!(store.breaker.state(), BreakerState::Open);
    }

    #[tokio::test]
    async fn transactions_past_the_waiting_bound_are_shed_at_once() {
        let (_clock, store) = unreachable(std::time::Duration::from_secs(2)).await;
        let store = Arc::new(store);
        let waiting: Vec<_> = (0..MAX_WAITING)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move { nothing(&store).await })
            })
            .collect();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
        while store.waiting.available_permits() > 0 {
            assert!(std::time::Instant::now() < deadline, "the waiters take every slot");
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        assert_eq!(refusal(&nothing(&store).await), Some(RefusalKind::Overloaded));
        assert!(started.elapsed() < std::time::Duration::from_millis(50), "shed at once: {:?}", started.elapsed());
        for task in waiting {
            assert!(matches!(task.await.unwrap(), Err(StoreError::Unavailable(_))));
        }
    }

    /// The `const NAME: &str` items of `source` whose value is T-SQL (a statement keyword, a `dbo.` table or
    /// a statement built by `concat!`/a `tsql_` macro), read from the source text.
    fn tsql_constants(source: &str) -> Vec<String> {
        let keywords =
            ["SELECT", "INSERT", "UPDATE", "DELETE", "IF ", "DECLARE", "SET ", "EXEC", "MERGE", "WITH", "CREATE"];
        let mut names = Vec::new();
        for (at, _) in source.match_indices("const ") {
            let rest = &source[at + "const ".len()..];
            let Some((name, tail)) = rest.split_once(": &str") else { continue };
            if !name.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_') || name == "STATEMENTS" {
                continue;
            }
            let value = tail.trim_start().trim_start_matches('=').trim_start();
            let value = &value[..value.find(";\n").unwrap_or(value.len())];
            let text = value.trim_start_matches('"');
            if value.contains("dbo.")
                || value.starts_with("concat!")
                || value.starts_with("tsql_")
                || keywords.iter().any(|k| text.starts_with(k))
            {
                names.push(name.to_owned());
            }
        }
        names
    }

    /// Every T-SQL constant of `store/mssql/*.rs` is in its file's list, and every file's list is in
    /// [`super::STATEMENTS`], so `store::tsql_check` parses every statement the store can run.
    #[test]
    fn every_tsql_constant_is_registered_for_the_parse_check() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/store/mssql");
        let registry = std::fs::read_to_string(dir.join("mod.rs")).unwrap();
        let registry = &registry[registry.find("pub(crate) const STATEMENTS").unwrap()..];
        let registry = &registry[..registry.find("];").unwrap()];
        let mut failures = Vec::new();
        // `connection/` opens sessions and runs no statement of the store.
        let mut files: Vec<_> =
            std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).filter(|p| p.is_file()).collect();
        files.sort();
        for path in files {
            let source = std::fs::read_to_string(&path).unwrap();
            let source = source.split("#[cfg(test)]\nmod tests").next().unwrap();
            let stem = path.file_stem().unwrap().to_string_lossy().into_owned();
            let constants = tsql_constants(source);
            if constants.is_empty() {
                continue;
            }
            let list_name = if stem == "queries" { "ALL" } else { "STATEMENTS" };
            let Some(start) = source.find(&format!("const {list_name}: &[(&str, &str)]")) else {
                failures.push(format!("{stem}.rs has T-SQL constants but no {list_name} list"));
                continue;
            };
            let list = &source[start..];
            let list = &list[..list.find("];").unwrap()];
            for name in constants {
                if !list.contains(&format!("(\"{name}\", {name})")) {
                    failures.push(format!("{stem}.rs: {name} is missing from its {list_name}"));
                }
            }
            if !registry.contains(&format!("{stem}::{list_name}")) {
                failures.push(format!("mssql::STATEMENTS does not list {stem}::{list_name}"));
            }
        }
        assert!(failures.is_empty(), "unregistered T-SQL:\n{}", failures.join("\n"));
    }

    #[test]
    fn the_scanner_finds_tsql_constants_only() {
        let source = "pub(crate) const GET: &str = \"SELECT 1\";\nconst NAME: &str = \"meterline\";\n\
                      pub const CAT: &str = concat!(\"SELECT \", \"1\");\npub(crate) const STATEMENTS: &[(&str, &str)] = &[];\n";
        assert_eq!(tsql_constants(source), ["GET", "CAT"]);
    }
}
