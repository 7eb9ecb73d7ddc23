//! Fault injection against the real binary under the host emulator: under steady load a dependency stalls or
//! refuses for several seconds, then returns. Each test measures and prints the time the breaker took to open,
//! how long the slowest call took against its bound, the refusals' p99 latency while it was open, the time to
//! recover (no restart), and what was lost (nothing).
//!
//! The network dependencies sit behind a TCP proxy of ours ([`FaultProxy`]) and each is tested twice, with one
//! test body taking the fault's [`Mode`]: **refusing** (connections closed at once: a dependency that is down;
//! every call fails fast) and **stalling** (connections accepted and held, nothing answered: a dependency that
//! hangs; only the handler's own timeouts end its calls, so the stall tests are what prove every outbound call
//! is bounded). The stall tests give the clients their settings' 1 s minimum per try, so an outage that
//! outlasts the calls that open a breaker fits in half a minute.
//!
//! - The store: another process holds SQLite's write lock, so the handler's writer stalls on it (what a slow
//!   disk or a second writer looks like). Requests wait at most the writer's wait bound, the store breaker
//!   opens, refusals come back at once, and every request that was answered 2xx has its usage record.
//! - SQL Server, whenever `MSSQL_TEST_CONNECTION_STRING` is set (else it prints that it skipped): the handler on
//!   a fresh database behind the proxy, which refuses and then stalls under the same load. The breaker opens,
//!   no request outlasts two store calls' transaction timeout, and every 2xx has its usage record.
//! - Service Bus: the proxy between the handler and the local Service Bus endpoint. The outbox breaker opens,
//!   every failed send is bounded by its tries' timeouts, publisher runs stop at once instead of failing each
//!   row, and once the bus is back every event is delivered.
//! - The OpenID provider: the proxy in front of its discovery endpoint, while clients call with tokens whose key
//!   is loaded and with tokens naming an unknown key (each makes the handler fetch the keys again). Tokens with
//!   loaded keys keep being served, no call outlasts the fetch timeout twice over, the openid breaker opens and
//!   unknown keys are refused at once.
//! - Key Vault: the proxy between the handler and the local Key Vault while the handler refreshes its secrets
//!   every second. The vault's breaker opens, every failed read is bounded, refresh rounds come back at once
//!   while it is open (the handler keeps the values it has), and a secret rotated during the outage is read once
//!   the vault returns.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use meterline::clock::{SystemClock, TimeOrderedIds};
use meterline::store::mssql::connection::MssqlConnector;
use meterline::store::prelude::*;
use meterline::store::{SqliteStore, TenantStatus};
use serde_json::{Value, json};

use crate::identity::{AUDIENCE, DIR_A, clients, entra_settings, seed};
use crate::metering::{METERED, metered};
use crate::outbox::{self, key_vault};
use crate::support::dev_token;
use crate::support::endpoints::{Reply, Seen, TestCa, TestServer, identity_env, managed_identity_endpoint};
use crate::support::host::{HostEmulator, HostOptions, on_schedule};
use crate::support::oidc::{OidcProvider, Signer, forge};
use crate::support::proxy::{FaultProxy, Mode};
use crate::support::stores::create_test_database;

/// One answered request of the load.
#[derive(Debug, Clone)]
struct Sample {
    started: Instant,
    latency: Duration,
    status: u16,
    request_id: String,
    /// `Retry-After` and the problem's media type, when the answer is a refusal.
    retry_after: Option<String>,
    problem: bool,
}

impl Sample {
    fn of(started: Instant, response: &reqwest::Response) -> Self {
        let header = |name: &str| response.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_owned);
        Sample {
            started,
            latency: started.elapsed(),
            status: response.status().as_u16(),
            request_id: header("x-request-id").expect("every answer has a request id"),
            retry_after: header("retry-after"),
            problem: header("content-type").as_deref() == Some("application/problem+json"),
        }
    }
}

/// The 99th percentile of `latencies` (nearest rank).
fn p99(mut latencies: Vec<Duration>) -> Duration {
    assert!(!latencies.is_empty(), "no latencies to take a percentile of");
    latencies.sort();
    let rank = ((latencies.len() as f64) * 0.99).ceil() as usize;
    latencies[rank.clamp(1, latencies.len()) - 1]
}

/// Polls `check` every 20 ms until it is true; panics with `what` after `within`. Returns when it became true.
async fn until(what: &str, within: Duration, mut check: impl AsyncFnMut() -> bool) -> Instant {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return Instant::now();
        }
        assert!(Instant::now() < deadline, "{what}: not within {within:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The state `GET /api/health/ready` reports for `dependency`'s breaker (`closed`, `open`, `half-open`).
async fn breaker_state(client: &reqwest::Client, url: &str, dependency: &str) -> String {
    let Ok(response) = client.get(url).send().await else { return "unreachable".into() };
    let body: Value = response.json().await.unwrap_or(Value::Null);
    body["breakers"]
        .as_array()
        .and_then(|b| b.iter().find(|b| b["dependency"] == dependency))
        .and_then(|b| b["state"].as_str())
        .unwrap_or("missing")
        .to_owned()
}

/// Steady load on the handler: each caller calls `url` with its `Authorization`, pausing between calls; every
/// answer is kept as a [`Sample`] with the caller's tag.
struct Load {
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<(bool, Sample)>>>,
    workers: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    /// Starts one task per `(authorization, pause, tag)`.
    fn start(url: &str, callers: Vec<(String, Duration, bool)>) -> Self {
        let client = reqwest::Client::new();
        let stop = Arc::new(AtomicBool::new(false));
        let samples = Arc::new(Mutex::new(Vec::new()));
        let workers = callers
            .into_iter()
            .map(|(auth, pause, tag)| {
                let (client, url, stop, samples) = (client.clone(), url.to_owned(), stop.clone(), samples.clone());
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        let started = Instant::now();
                        let response = client.get(&url).header("Authorization", &auth).send().await.unwrap();
                        let sample = Sample::of(started, &response);
                        samples.lock().unwrap().push((tag, sample));
                        // Steady, not flat out: the machine is shared.
                        tokio::time::sleep(pause).await;
                    }
                })
            })
            .collect();
        Load { stop, samples, workers }
    }

    /// `callers` callers of `url` with `auth`, 5 ms apart each.
    fn uniform(url: &str, auth: &str, callers: usize) -> Self {
        Load::start(url, (0..callers).map(|_| (auth.to_owned(), Duration::from_millis(5), true)).collect())
    }

    fn samples(&self) -> Vec<Sample> {
        self.samples.lock().unwrap().iter().map(|(_, s)| s.clone()).collect()
    }

    fn len(&self) -> usize {
        self.samples.lock().unwrap().len()
    }

    fn successes(&self) -> usize {
        self.samples.lock().unwrap().iter().filter(|(_, s)| s.status == 200).count()
    }

    /// Stops every caller and returns every answer with its caller's tag.
    async fn stop(self) -> Vec<(bool, Sample)> {
        self.stop.store(true, Ordering::Relaxed);
        for worker in self.workers {
            worker.await.unwrap();
        }
        self.samples.lock().unwrap().clone()
    }
}

/// One store outage under [`Load`], measured by [`store_outage`].
#[derive(Debug)]
struct StoreOutage {
    fault: Instant,
    opened: Instant,
    released: Instant,
    recovered: Instant,
    /// Requests that started once the breaker was open and were answered before the store came back.
    during_open: Vec<Sample>,
    /// The slowest request that started during the outage.
    slowest: Duration,
}

impl StoreOutage {
    /// Checks that every request answered while the breaker was open was a fast refusal, and returns its p99.
    fn refusals_p99(&self) -> Duration {
        let during_open = &self.during_open;
        assert!(!during_open.is_empty(), "requests were refused while the breaker was open");
        assert!(during_open.iter().all(|s| s.status == 503), "no 2xx while the store is away: {during_open:?}");
        assert!(
            during_open.iter().all(|s| s.problem && s.retry_after.as_deref().is_some_and(|r| r.parse::<u64>().is_ok())),
            "every refusal is problem+json with Retry-After: {during_open:?}"
        );
        p99(during_open.iter().map(|s| s.latency).collect())
    }
}

/// Under `load`, takes the store away (`take_away` returns once the fault is in place) for `outage`, gives it back
/// (`give_back`), and measures: when the store breaker opened (it must within the outage), the requests answered
/// while it was open, the slowest request of the outage, and when a request succeeded again (no restart).
async fn store_outage<Held>(
    load: &Load,
    ready: &str,
    outage: Duration,
    take_away: impl AsyncFnOnce() -> Held,
    give_back: impl AsyncFnOnce(Held),
) -> StoreOutage {
    let client = reqwest::Client::new();
    assert_eq!(breaker_state(&client, ready, "store").await, "closed");
    let held = take_away().await;
    let fault = Instant::now();
    let opened =
        until("the store breaker opens", outage, async || breaker_state(&client, ready, "store").await == "open").await;
    tokio::time::sleep_until((fault + outage).into()).await; // the outage lasts `outage`, whatever the breaker does
    let now = Instant::now();
    let during_open: Vec<Sample> =
        load.samples().into_iter().filter(|s| s.started >= opened && s.started + s.latency <= now).collect();
    give_back(held).await;
    let released = Instant::now();
    let recovered = until("a request succeeds again", Duration::from_secs(30), async || {
        load.samples().iter().any(|s| s.status == 200 && s.started >= released)
    })
    .await;
    let after = load.successes();
    until("the load runs on", Duration::from_secs(30), async || load.successes() >= after + 50).await;
    assert_eq!(breaker_state(&client, ready, "store").await, "closed", "closed again after its probe succeeded");
    let slowest = load
        .samples()
        .iter()
        .filter(|s| s.started >= fault && s.started < released)
        .map(|s| s.latency)
        .max()
        .unwrap_or_default();
    StoreOutage { fault, opened, released, recovered, during_open, slowest }
}

/// Acknowledged (200) requests without exactly one billable usage record, and refused (503) requests recorded as
/// successes, given every usage record as `(request id, billable, status)`.
fn usage_losses(samples: &[Sample], records: &[(String, bool, i64)]) -> (usize, usize) {
    let mut billable: HashMap<&str, usize> = HashMap::new();
    let mut succeeded: HashSet<&str> = HashSet::new();
    for (request_id, is_billable, status) in records {
        if *is_billable {
            *billable.entry(request_id).or_default() += 1;
        }
        if *status < 300 {
            succeeded.insert(request_id);
        }
    }
    let lost = samples.iter().filter(|s| s.status == 200 && billable.get(s.request_id.as_str()) != Some(&1)).count();
    let refused_as_success =
        samples.iter().filter(|s| s.status == 503 && succeeded.contains(s.request_id.as_str())).count();
    (lost, refused_as_success)
}

#[tokio::test]
async fn a_stalled_store_opens_its_breaker_refuses_fast_loses_no_usage_and_recovers_without_a_restart() {
    let m = metered(1_000_000, 100_000, 1_000_000, "block").await;
    let (url, ready) = (m.host.handler_url(METERED), m.host.handler_url("/api/health/ready"));
    let load = Load::uniform(&url, &format!("Bearer {}", m.user), 6);
    until("the load runs", Duration::from_secs(60), async || load.successes() >= 100).await;

    // The fault: another connection takes SQLite's write lock and holds it for OUTAGE.
    const OUTAGE: Duration = Duration::from_secs(6);
    let db = m.root.path().join("data/meterline.db");
    let take_lock = async || {
        tokio::task::spawn_blocking(move || {
            let conn = rusqlite::Connection::open(db).unwrap();
            conn.execute_batch("BEGIN IMMEDIATE").unwrap();
            conn
        })
        .await
        .unwrap()
    };
    let release = async |holder: rusqlite::Connection| {
        tokio::task::spawn_blocking(move || holder.execute_batch("ROLLBACK").unwrap()).await.unwrap()
    };
    let outage = store_outage(&load, &ready, OUTAGE, take_lock, release).await;
    let samples: Vec<Sample> = load.stop().await.into_iter().map(|(_, s)| s).collect();

    let refusal_p99 = outage.refusals_p99();
    let conn = rusqlite::Connection::open(m.root.path().join("data/meterline.db")).unwrap();
    let records: Vec<(String, bool, i64)> = conn
        .prepare("SELECT request_id, billable, status FROM usage_events")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get::<_, i64>(1)? == 1, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let (lost, refused_recorded_as_success) = usage_losses(&samples, &records);
    let acknowledged = samples.iter().filter(|s| s.status == 200).count();
    let output = m.host.output_text();
    let openings = output.matches("circuit breaker opened").count();
    println!(
        "store stalled for {OUTAGE:?} under load: time to open {:?}, refusals while open {} with p99 {refusal_p99:?}, \
         slowest request of the outage {:?}, time to recover {:?} after the stall ended, {acknowledged} requests \
         acknowledged, usage records lost: {lost}, refused requests recorded as successes: \
         {refused_recorded_as_success}, breaker openings logged: {openings}",
        outage.opened - outage.fault,
        outage.during_open.len(),
        outage.slowest,
        outage.recovered - outage.released,
    );
    assert!(
        outage.opened - outage.fault < Duration::from_secs(5),
        "five failed writes (each bounded by the 0.5 s wait) open it"
    );
    assert!(refusal_p99 < Duration::from_millis(500), "refusals come back fast: p99 {refusal_p99:?}");
    assert!(
        outage.recovered - outage.released < Duration::from_secs(10),
        "recovers within the open period plus a probe"
    );
    assert_eq!(lost, 0, "no acknowledged request loses its usage record");
    assert_eq!(refused_recorded_as_success, 0, "a refused request is never recorded as a success");
    assert!(openings >= 1, "the opening is logged: {output}");
}

/// `(host, port)` of a connection string's `Server` (or `Data Source`): `[tcp:]host[,port]`, port 1433 if absent.
fn sql_server_address(connection: &str) -> (String, u16) {
    let server = connection
        .split(';')
        .filter_map(|part| part.split_once('='))
        .find(|(key, _)| matches!(key.trim().to_ascii_lowercase().as_str(), "server" | "data source"))
        .map(|(_, value)| value.trim())
        .expect("MSSQL_TEST_CONNECTION_STRING names a Server");
    let server = server.strip_prefix("tcp:").unwrap_or(server);
    match server.split_once(',') {
        Some((host, port)) => (host.trim().to_owned(), port.trim().parse().expect("a numeric port in Server")),
        None => (server.to_owned(), 1433),
    }
}

/// `connection` with its `Server` (or `Data Source`) replaced by `server`.
fn with_sql_server(connection: &str, server: &str) -> String {
    connection
        .split(';')
        .map(|part| match part.split_once('=') {
            Some((key, _)) if matches!(key.trim().to_ascii_lowercase().as_str(), "server" | "data source") => {
                format!("Server={server}")
            }
            _ => part.to_owned(),
        })
        .collect::<Vec<_>>()
        .join(";")
}

/// Every usage record of a SQL Server database as `(request id, billable, status)`.
async fn sql_server_usage(connection: &str) -> Vec<(String, bool, i64)> {
    let connector = MssqlConnector::new(&secrecy::SecretString::from(connection.to_owned())).unwrap();
    let mut conn = connector.connect().await.unwrap();
    let stream =
        conn.simple_query("SELECT request_id, billable, CAST(status AS INT) FROM dbo.usage_events").await.unwrap();
    let rows = stream.into_first_result().await.unwrap();
    rows.iter()
        .map(|row| {
            let request_id: &str = row.get(0).expect("request_id is NOT NULL");
            let billable: bool = row.get(1).expect("billable is NOT NULL");
            let status: i32 = row.get(2).expect("status is NOT NULL");
            (request_id.to_owned(), billable, i64::from(status))
        })
        .collect()
}

/// SQL Server behind the fault proxy, whenever `MSSQL_TEST_CONNECTION_STRING` is set (the `mssql` CI job): under
/// steady metered load it refuses connections, comes back, then stalls (connections held, nothing answered), and
/// comes back again. Each time the store breaker opens within the outage, refusals while open come back fast,
/// every request is answered within the store's bound (a store call's attempts together within the 15 s
/// transaction timeout; a request makes at most two store calls that can wait on it, its work and its usage
/// record), the handler recovers without a restart, and every acknowledged request has its usage record.
///
/// The proxy changes the server's address, so the server's certificate must be trusted as `localhost`
/// (`TrustServerCertificate=true`, as in CI), and a server that redirects clients elsewhere (Azure SQL's Redirect
/// connection policy) would route around the proxy after the login.
#[tokio::test]
async fn sql_server_refusing_then_stalling_opens_the_store_breaker_bounds_latency_and_loses_no_usage() {
    let Ok(server) = std::env::var("MSSQL_TEST_CONNECTION_STRING") else {
        println!("skipped: MSSQL_TEST_CONNECTION_STRING is not set");
        return;
    };
    let database = format!("meterline_faults_{}", uuid::Uuid::new_v4().simple());
    let direct = create_test_database(&server, &database).await.unwrap();
    let store = meterline::store::open(
        &meterline::config::StoreConfig::Mssql { connection_string: direct.clone().into() },
        Arc::new(SystemClock),
    )
    .await
    .unwrap();
    store.migrate().await.unwrap();
    let directory: uuid::Uuid = DIR_A.parse().unwrap();
    meterline::cli::seed_dev_tenant(store.as_ref(), directory, &SystemClock, &TimeOrderedIds).await.unwrap();
    let proxy = FaultProxy::start_to(sql_server_address(&direct)).await;
    let through_proxy = with_sql_server(&direct, &format!("tcp:localhost,{}", proxy.port));

    let root = tempfile::tempdir().unwrap();
    // Signed with the development key under `root`, which the handler started there trusts.
    let user = dev_token(root.path(), &["--tenant", DIR_A, "--roles", "Documents.Read"]);
    let env = vec![
        ("METERLINE_STORE".to_owned(), "mssql".to_owned()),
        ("METERLINE_MSSQL_CONNECTION_STRING".to_owned(), through_proxy),
    ];
    let host = HostEmulator::start_with(HostOptions {
        app_root: Some(root.path().to_path_buf()),
        env,
        ..HostOptions::default()
    })
    .await;
    let (url, ready) = (host.handler_url(METERED), host.handler_url("/api/health/ready"));
    let load = Load::uniform(&url, &format!("Bearer {user}"), 6);
    until("the load runs", Duration::from_secs(60), async || load.successes() >= 100).await;

    // A bound a request cannot pass: two store calls of TRANSACTION_TIMEOUT (15 s) each, plus a margin.
    let bound = Duration::from_secs(2 * 15 + 5);
    let mut phases = Vec::new();
    // Refusing: the pool's connections are cut and new ones refused; a call fails within its pool waits (5 s each,
    // three attempts for a read: the 15 s timeout). Stalling: every call runs into the 15 s timeout. Either way
    // the breaker opens about 15 s in, once the first calls of the six callers have failed.
    for (mode, outage) in [(Mode::Refuse, Duration::from_secs(25)), (Mode::Stall, Duration::from_secs(30))] {
        let take_away = async || proxy.set(mode);
        let give_back = async |()| proxy.set(Mode::Forward);
        let measured = store_outage(&load, &ready, outage, take_away, give_back).await;
        let refusal_p99 = measured.refusals_p99();
        println!(
            "SQL Server {} for {outage:?} under load: time to open {:?}, refusals while open {} with p99 \
             {refusal_p99:?}, slowest request of the outage {:?} (bound {bound:?}), time to recover {:?} after it \
             returned",
            doing(mode),
            measured.opened - measured.fault,
            measured.during_open.len(),
            measured.slowest,
            measured.recovered - measured.released,
        );
        phases.push((mode, refusal_p99, measured));
    }
    let samples: Vec<Sample> = load.stop().await.into_iter().map(|(_, s)| s).collect();
    let (lost, refused_recorded_as_success) = usage_losses(&samples, &sql_server_usage(&direct).await);
    let acknowledged = samples.iter().filter(|s| s.status == 200).count();
    let openings = host.output_text().matches("circuit breaker opened").count();
    println!(
        "SQL Server under load: {acknowledged} requests acknowledged, usage records lost: {lost}, refused requests \
         recorded as successes: {refused_recorded_as_success}, breaker openings logged: {openings}"
    );
    for (mode, refusal_p99, measured) in &phases {
        assert!(*refusal_p99 < Duration::from_millis(500), "{mode:?}: refusals come back fast: p99 {refusal_p99:?}");
        assert!(
            measured.slowest <= bound,
            "{mode:?}: every request is bounded: the slowest took {:?}",
            measured.slowest
        );
        assert!(
            measured.recovered - measured.released < Duration::from_secs(20),
            "{mode:?}: recovers within the open period plus a probe, without a restart"
        );
    }
    assert_eq!(lost, 0, "no acknowledged request loses its usage record");
    assert_eq!(refused_recorded_as_success, 0, "a refused request is never recorded as a success");
    assert!(openings >= 2, "each opening is logged");
}

/// One `OutboxPublisher` timer invocation: when it started, how long it took, its summary.
#[derive(Debug)]
struct Run {
    started: Instant,
    took: Duration,
    logs: String,
}

async fn publish(host: &HostEmulator, runs: &mut Vec<Run>) {
    let timer = on_schedule();
    let started = Instant::now();
    let run = host.invoke_timer("OutboxPublisher", timer).await;
    runs.push(Run { started, took: started.elapsed(), logs: run.logs().join(" ") });
    // A timer every 100 ms: steady, and far more often than the real 30 s, so the test sees every phase.
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// A Service Bus endpoint that takes every send (201) and remembers the CloudEvents ids it got.
async fn service_bus(ca: &TestCa) -> TestServer {
    TestServer::https(ca, |request: &Seen| {
        if request.method == "POST" && request.path.ends_with("/messages") {
            Reply::status(201)
        } else {
            Reply::status(404)
        }
    })
    .await
}

/// The per-try timeout the fault tests give the Service Bus, Key Vault and OpenID clients (their settings'
/// minimum), so a stalled dependency's calls end within seconds.
const TRY_TIMEOUT: Duration = Duration::from_secs(1);

/// The longest a Service Bus send or Key Vault read may take: four tries of [`TRY_TIMEOUT`] each, plus the
/// retry policy's three backoffs (0.4, 0.8 and 1.6 s, each with up to 255 ms of jitter: under 3.6 s), plus 3 s
/// for timers firing late on a shared machine where the tests run niced (1.6 s late has been seen). A call
/// that waited for the stall to end would take the whole outage, three times as long.
const RETRIED_CALL_BOUND: Duration = Duration::from_millis(4 * TRY_TIMEOUT.as_millis() as u64 + 3_600 + 3_000);

/// How a fault reads in the printed figures.
fn doing(mode: Mode) -> &'static str {
    match mode {
        Mode::Refuse => "refused connections",
        Mode::Stall => "stalled (connections accepted, nothing answered)",
        Mode::Forward => unreachable!("forwarding is no fault"),
    }
}

#[tokio::test]
async fn a_refusing_service_bus_opens_the_outbox_breaker_and_every_event_is_delivered_once_it_returns() {
    service_bus_outage(Mode::Refuse, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn a_stalling_service_bus_bounds_each_send_opens_the_breaker_and_every_event_is_delivered_once_it_returns() {
    // Three sends of four timed-out tries and their backoffs (about 7 s each) open the breaker after about 22 s,
    // later on a busy machine.
    service_bus_outage(Mode::Stall, Duration::from_secs(34)).await;
}

/// Service Bus refuses or stalls for `outage` while events are produced: the outbox breaker opens within the
/// outage, each failed send is bounded, runs while it is open stop at once, and every event is delivered once
/// the bus is back.
async fn service_bus_outage(mode: Mode, outage: Duration) {
    let ca = TestCa::new();
    let identity = managed_identity_endpoint().await;
    let bus = service_bus(&ca).await;
    let proxy = FaultProxy::start(bus.port).await;
    let mut env = identity_env(&identity, &ca);
    env.push(("METERLINE_SERVICEBUS_NAMESPACE".into(), format!("127.0.0.1:{}", proxy.port)));
    env.push(("METERLINE_OUTBOX_SEND_TIMEOUT_SECS".into(), TRY_TIMEOUT.as_secs().to_string()));
    let host = HostEmulator::start_with(HostOptions { env, ..HostOptions::default() }).await;
    let ready = host.handler_url("/api/health/ready");
    let client = reqwest::Client::new();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&host.app_root.join("data/meterline.db")).await.unwrap());
    let now = chrono::Utc::now();
    outbox::plan(&store, 10, now).await;
    let tenant = outbox::active_tenant(&store, now).await;

    // Steady load: a status change (one outbox event) every 100 ms, for the whole outage and a while after.
    let stop = Arc::new(AtomicBool::new(false));
    let producer = {
        let (store, stop) = (store.clone(), stop.clone());
        tokio::spawn(async move {
            let mut version = 1;
            while !stop.load(Ordering::Relaxed) {
                let status = if version % 2 == 1 { TenantStatus::Suspended } else { TenantStatus::Active };
                store.set_tenant_status(tenant.id, status, version, chrono::Utc::now()).await.unwrap();
                version += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            version - 1
        })
    };
    let mut runs: Vec<Run> = Vec::new();
    for _ in 0..3 {
        publish(&host, &mut runs).await;
    }
    assert!(!bus.seen().is_empty(), "events flow before the outage: {runs:?}");

    // The fault, for `outage`.
    proxy.set(mode);
    let fault = Instant::now();
    let watcher = {
        let (client, ready) = (client.clone(), ready.clone());
        tokio::spawn(async move {
            let deadline = Instant::now() + outage;
            while breaker_state(&client, &ready, "servicebus").await != "open" {
                if Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Some(Instant::now())
        })
    };
    while fault.elapsed() < outage {
        publish(&host, &mut runs).await;
    }
    let Some(opened) = watcher.await.unwrap() else {
        panic!("the Service Bus breaker did not open within the outage; the runs: {runs:#?}")
    };
    proxy.set(Mode::Forward);
    let restored = Instant::now();
    // Runs refused outright: started once the breaker was open, ended before the bus returned, sent nothing and
    // failed nothing (a run that carried the half-open probe is not a refusal).
    let paused: Vec<Duration> = runs
        .iter()
        .filter(|r| r.started >= opened && r.started + r.took <= restored)
        .filter(|r| r.logs.contains("paused") && r.logs.contains("published 0 of") && r.logs.contains(", 0 failed"))
        .map(|r| r.took)
        .collect();
    stop.store(true, Ordering::Relaxed);
    let changes = producer.await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(60);
    let delivered = loop {
        publish(&host, &mut runs).await;
        let pending = store.pending_outbox(chrono::Utc::now() + chrono::Duration::hours(1), 1000).await.unwrap();
        if pending.is_empty() {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "{} events still pending: {:?}", pending.len(), runs.last());
    };
    let rows = store.list_outbox(0, 1000).await.unwrap();
    let seen: BTreeSet<String> = bus.seen().iter().map(|r| r.json()["id"].as_str().unwrap().to_owned()).collect();
    let lost = rows.iter().filter(|r| r.sent_at.is_none() || !seen.contains(&r.message.id.to_string())).count();
    let refusal_p99 = if paused.is_empty() { Duration::ZERO } else { p99(paused.clone()) };
    let failed_sends: Vec<Duration> = log_lines(&host, "outbox event not published")
        .iter()
        .filter_map(|l| field(l, "took_ms").and_then(|t| t.as_u64()).map(Duration::from_millis))
        .collect();
    let longest_send = failed_sends.iter().max().copied().unwrap_or_default();
    println!(
        "Service Bus {} for {outage:?} while {changes} events were produced: time to open {:?}, {} failed sends \
         (the longest {longest_send:?}, bound {RETRIED_CALL_BOUND:?}), publisher runs refused while open {} with \
         p99 {refusal_p99:?}, time to deliver everything {:?} after it returned, outbox messages lost: {lost} of {}",
        doing(mode),
        opened - fault,
        failed_sends.len(),
        paused.len(),
        delivered - restored,
        rows.len(),
    );
    assert!(rows.len() as i64 >= changes, "every change has its event");
    assert_eq!(lost, 0, "every outbox event reaches Service Bus once it is back");
    assert!(opened - fault < outage, "three failed sends (four tries each) open it within the outage");
    assert!(failed_sends.len() >= 3, "the sends that opened the breaker failed and were logged");
    assert!(longest_send <= RETRIED_CALL_BOUND, "every send is bounded by its tries' timeouts: {failed_sends:?}");
    assert!(!paused.is_empty(), "publisher runs while the breaker is open stop at once");
    assert!(refusal_p99 < Duration::from_millis(1000), "paused runs come back fast: p99 {refusal_p99:?}");
    assert_eq!(breaker_state(&client, &ready, "servicebus").await, "closed");
}

/// The JSON log lines of `host` with `message`, as values.
fn log_lines(host: &HostEmulator, message: &str) -> Vec<Value> {
    host.output()
        .iter()
        .filter(|l| l.contains(message))
        .filter_map(|l| serde_json::from_str::<Value>(&l[l.find('{').unwrap_or(0)..]).ok())
        .collect()
}

/// A field of a JSON log line, wherever the formatter put it.
fn field(line: &Value, name: &str) -> Option<Value> {
    line.get(name).or_else(|| line.get("fields").and_then(|f| f.get(name))).cloned()
}

#[tokio::test]
async fn a_refusing_key_vault_opens_its_breaker_keeps_the_secrets_and_reads_the_rotated_one_once_back() {
    key_vault_outage(Mode::Refuse, Duration::from_secs(25)).await;
}

#[tokio::test]
async fn a_stalling_key_vault_bounds_each_read_opens_its_breaker_and_reads_the_rotated_secret_once_back() {
    // Three reads of four timed-out tries and their backoffs (about 7 s each) open the breaker after about 22 s,
    // later on a busy machine.
    key_vault_outage(Mode::Stall, Duration::from_secs(34)).await;
}

/// Key Vault refuses or stalls for `outage` while the handler refreshes its secrets every second and the secret is
/// rotated: the breaker opens within the outage, each round that reads is bounded, rounds while it is open come
/// back at once (keeping the values), and the rotated secret is read once the vault is back.
async fn key_vault_outage(mode: Mode, outage: Duration) {
    let ca = TestCa::new();
    let identity = managed_identity_endpoint().await;
    let secrets = Arc::new(Mutex::new(vec![("cursor-key".to_owned(), "a".repeat(40))]));
    let vault = key_vault(&ca, secrets.clone()).await;
    let proxy = FaultProxy::start(vault.port).await;
    let mut env = identity_env(&identity, &ca);
    env.push(("METERLINE_KEYVAULT_URL".into(), format!("https://127.0.0.1:{}", proxy.port)));
    env.push(("METERLINE_CURSOR_KEY_SECRET_NAME".into(), "cursor-key".into()));
    env.push(("METERLINE_KEYVAULT_REFRESH_SECS".into(), "1".into()));
    env.push(("METERLINE_KEYVAULT_TIMEOUT_SECS".into(), TRY_TIMEOUT.as_secs().to_string()));
    let host = HostEmulator::start_with(HostOptions { env, ..HostOptions::default() }).await;
    let ready = host.handler_url("/api/health/ready");
    let client = reqwest::Client::new();
    const MESSAGE: &str = "Key Vault secrets refreshed";
    let rounds = || log_lines(&host, MESSAGE);
    until("a first refresh round", Duration::from_secs(30), async || !rounds().is_empty()).await;
    assert_eq!(breaker_state(&client, &ready, "keyvault").await, "closed");

    // The fault, for `outage`; the secret is rotated meanwhile.
    proxy.set(mode);
    secrets.lock().unwrap()[0].1 = "b".repeat(40);
    let fault = Instant::now();
    let before = rounds().len();
    let opened = until("the Key Vault breaker opens", outage, async || {
        breaker_state(&client, &ready, "keyvault").await == "open"
    })
    .await;
    let opened_at = rounds().len();
    tokio::time::sleep_until((fault + outage).into()).await; // the outage lasts `outage`
    let breaker_at_start = |l: &Value| field(l, "breaker").and_then(|b| b.as_str().map(str::to_owned));
    let took = |l: &Value| field(l, "took_us").and_then(|t| t.as_u64()).map(Duration::from_micros);
    // Rounds that started with the breaker open (a round that carried the half-open probe is not a refusal).
    let while_open: Vec<Value> =
        rounds()[opened_at..].iter().filter(|l| breaker_at_start(l).as_deref() == Some("open")).cloned().collect();
    let failed_rounds = rounds()[before..].iter().filter(|l| field(l, "refreshed") == Some(json!(0))).count();
    // Rounds during the outage that called the vault (one secret: one read each) and failed.
    let failed_reads: Vec<Duration> = rounds()[before..]
        .iter()
        .filter(|l| field(l, "refreshed") == Some(json!(0)) && breaker_at_start(l).as_deref() != Some("open"))
        .filter_map(took)
        .collect();
    proxy.set(Mode::Forward);
    let restored = Instant::now();
    let recovered = until("a refresh round reads the vault again", Duration::from_secs(30), async || {
        rounds().iter().skip(opened_at).any(|l| field(l, "refreshed") == Some(json!(1)))
    })
    .await;
    let refused: Vec<Duration> = while_open.iter().filter_map(took).collect();
    let refusal_p99 = p99(refused.clone());
    let longest_read = failed_reads.iter().max().copied().unwrap_or_default();
    assert_eq!(breaker_state(&client, &ready, "keyvault").await, "closed");
    let vault_reads = vault.seen().iter().filter(|r| r.path.starts_with("/secrets/")).count();
    println!(
        "Key Vault {} for {outage:?} with a refresh every second: time to open {:?}, {} failed reads (the longest \
         {longest_read:?}, bound {RETRIED_CALL_BOUND:?}), refresh rounds refused while open {} with p99 \
         {refusal_p99:?} ({failed_rounds} rounds without a read in all), time to read the rotated secret {:?} after \
         it returned, vault reads in all {vault_reads}",
        doing(mode),
        opened - fault,
        failed_reads.len(),
        refused.len(),
        recovered - restored,
    );
    assert!(opened - fault < outage, "three failed reads (four tries each) open it within the outage");
    assert!(failed_reads.len() >= 3, "the reads that opened the breaker failed: {:?}", rounds());
    assert!(longest_read <= RETRIED_CALL_BOUND, "every read is bounded by its tries' timeouts: {failed_reads:?}");
    assert!(!refused.is_empty(), "refresh rounds ran while the breaker was open");
    assert!(refusal_p99 < Duration::from_millis(200), "refused rounds come back at once: p99 {refusal_p99:?}");
    assert!(recovered - restored < Duration::from_secs(15), "the rotated secret is read without a restart");
}

#[tokio::test]
async fn a_refusing_openid_provider_opens_its_breaker_while_loaded_keys_keep_serving() {
    openid_outage(Mode::Refuse, Duration::from_secs(8)).await;
}

#[tokio::test]
async fn a_stalling_openid_provider_bounds_each_fetch_opens_its_breaker_while_loaded_keys_keep_serving() {
    // Five fetches that time out after a second each open the breaker after about 5 s.
    openid_outage(Mode::Stall, Duration::from_secs(10)).await;
}

/// The OpenID provider's discovery endpoint refuses or stalls for `outage` while clients call with loaded and
/// unknown keys: calls with loaded keys are served throughout, every call is bounded by the fetch timeout, the
/// breaker opens within the outage, unknown keys are refused at once while it is open, and it closes once the
/// provider is back.
async fn openid_outage(mode: Mode, outage: Duration) {
    let provider = OidcProvider::start(AUDIENCE, clients()).await;
    let discovery_port: u16 = provider.issuer().rsplit(':').next().unwrap().parse().unwrap();
    let proxy = FaultProxy::start(discovery_port).await;
    let root = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&root.path().join("data/meterline.db")).await.unwrap();
    store.migrate().await.unwrap();
    seed(&store, chrono::Utc::now()).await;
    // Discovery through the proxy (the JWKS address it returns is the provider's own); every unknown key refetches.
    let mut env: Vec<(String, String)> = entra_settings(&provider, 0)
        .into_iter()
        .map(|(k, v)| match k.as_str() {
            "METERLINE_AUTH_AUTHORITY" => (k, format!("http://127.0.0.1:{}", proxy.port)),
            _ => (k, v),
        })
        .collect();
    env.push(("METERLINE_AUTH_JWKS_TIMEOUT_SECS".into(), TRY_TIMEOUT.as_secs().to_string()));
    let host = HostEmulator::start_with(HostOptions {
        app_root: Some(root.path().to_path_buf()),
        env,
        ..HostOptions::default()
    })
    .await;
    let (me, ready) = (host.handler_url("/api/v1/me"), host.handler_url("/api/health/ready"));
    let client = reqwest::Client::new();
    let known = format!("Bearer {}", provider.token("app-a-reader").await);
    let now = chrono::Utc::now().timestamp();
    let claims = json!({
        "iss": provider.issuer(), "aud": AUDIENCE, "sub": "app-a-reader", "azp": "app-a-reader", "tid": DIR_A,
        "roles": ["Documents.Read"], "idtyp": "app", "iat": now, "nbf": now, "exp": now + 600
    });
    let header = json!({"alg": "RS256", "typ": "JWT", "kid": "a-key-not-in-the-jwks"});
    let unknown = format!("Bearer {}", forge(&header, &claims, Signer::Rs256(&provider.signing_key())));
    until("the keys are loaded", Duration::from_secs(30), async || {
        client.get(&me).header("Authorization", &known).send().await.is_ok_and(|r| r.status() == 200)
    })
    .await;

    // Steady load: a call with a loaded key every 200 ms (the plan allows 10 a second), one with an unknown key
    // every 20 ms; each sample is tagged with whether its key is loaded.
    let load = Load::start(
        &me,
        vec![(known.clone(), Duration::from_millis(200), true), (unknown, Duration::from_millis(20), false)],
    );
    until("the load runs", Duration::from_secs(30), async || load.len() >= 20).await;

    proxy.set(mode);
    let fault = Instant::now();
    let opened =
        until("the OpenID breaker opens", outage, async || breaker_state(&client, &ready, "openid").await == "open")
            .await;
    tokio::time::sleep_until((fault + outage).into()).await;
    let restored_at = Instant::now();
    proxy.set(Mode::Forward);
    let recovered = until("the OpenID breaker closes", Duration::from_secs(30), async || {
        breaker_state(&client, &ready, "openid").await == "closed"
    })
    .await;
    let samples = load.stop().await;
    let during: Vec<&Sample> =
        samples.iter().filter(|(_, s)| s.started >= fault && s.started < restored_at).map(|(_, s)| s).collect();
    let loaded_during: Vec<&Sample> = samples
        .iter()
        .filter(|(loaded, s)| *loaded && s.started >= fault && s.started < restored_at)
        .map(|(_, s)| s)
        .collect();
    let refused: Vec<Duration> =
        during.iter().filter(|s| s.started >= opened && s.status == 503).map(|s| s.latency).collect();
    let refusal_p99 = p99(refused.clone());
    let loaded_failed = loaded_during.iter().filter(|s| s.status != 200).count();
    // A call waits for at most the fetch in flight and its own (single flight), each bounded by the timeout.
    let bound = 2 * TRY_TIMEOUT + Duration::from_millis(500);
    let slowest = during.iter().map(|s| s.latency).max().unwrap_or_default();
    println!(
        "the OpenID provider {} for {outage:?}: time to open {:?}, slowest call during the outage {slowest:?} \
         (bound {bound:?}), unknown-key calls refused while open {} with p99 {refusal_p99:?}, calls with a loaded \
         key during the outage {} of which failed {loaded_failed}, time to close {:?} after it returned",
        doing(mode),
        opened - fault,
        refused.len(),
        loaded_during.len(),
        recovered - restored_at,
    );
    assert!(opened - fault < outage, "five failed fetches open it within the outage");
    assert!(slowest <= bound, "every call is bounded by the fetch timeout: the slowest took {slowest:?}");
    assert!(refusal_p99 < Duration::from_millis(500), "refusals come back fast: p99 {refusal_p99:?}");
    assert!(
        during.iter().filter(|s| s.status == 503).all(|s| s.problem && s.retry_after.is_some()),
        "every refusal is problem+json with Retry-After"
    );
    assert!(!loaded_during.is_empty());
    assert_eq!(loaded_failed, 0, "tokens signed by loaded keys are served throughout the outage");
    assert!(recovered - restored_at < Duration::from_secs(10), "closes after its probe, without a restart");
}
