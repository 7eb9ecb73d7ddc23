//! The application in process: `startup::app` served with `actix_web::test::init_service`, no port, no child process.
//!
//! [`TestApp`] builds the real `AppState` (`AppState::new`) over a fresh SQLite store in a temporary app root
//! (`<root>/data/meterline.db`, where a handler process keeps it, so tests read the database the same way), with a
//! [`ManualClock`] that moves only when a test moves it and deterministic ids ([`TestIds`]). It serves the
//! `Surface::Host` app (the API and `POST /{FunctionName}`), takes the host emulator's [`ClientRequest`] and answers
//! its [`ClientResponse`], so a test reads the same in process or under the emulator. Tokens are signed in process
//! with the local auth mode's development key: [`TestApp::token`] does what `handler dev-token` does.
//!
//! Run these tests with `#[actix_web::test]`: the app, its usage recorder and the requests share the test's thread,
//! and every answer arrives after its usage event committed (the record stage awaits the group commit).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use actix_web::body::BoxBody;
use actix_web::dev::Service;
use actix_web::test::TestRequest;
use actix_web::{HttpResponse, web};
use chrono::{DateTime, TimeZone, Utc};
use futures_util::future::LocalBoxFuture;
use meterline::auth::local::{DevKey, DevTokenRequest};
use meterline::clock::{Clock, IdGenerator, ManualClock};
use meterline::config::Config;
use meterline::startup::Surface;
use meterline::state::AppState;
use meterline::store::Store;
use serde_json::Value;
use uuid::Uuid;

use super::host::{
    AppLayout, ClientRequest, ClientResponse, InvocationResponse, ServiceBusDelivery, service_bus_envelope,
    timer_envelope,
};

/// Where a [`TestApp`]'s clock starts unless told otherwise: a fixed instant, so every run sees the same times.
/// Inside an hour, as real time almost always is: a report's default range ends at the end of the window
/// holding now, which is now itself when now falls exactly on a window boundary.
pub fn default_start() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, 2, 9, 17, 23).unwrap()
}

/// The app id `handler dev-token` puts in `azp` unless given `--app-id`.
pub const DEV_APP_ID: &str = "meterline-dev-client";

/// Ids `00000000-0000-0001-0000-000000000001`, `…0002`, …: deterministic, and apart from the small fixture ids
/// tests give rows they create themselves (`Uuid::from_u128(1)`).
#[derive(Debug, Default)]
pub struct TestIds(AtomicU64);

impl IdGenerator for TestIds {
    fn new_id(&self) -> Uuid {
        Uuid::from_u128((1 << 64) | u128::from(self.0.fetch_add(1, Ordering::Relaxed) + 1))
    }
}

/// One development key for the whole test binary (RSA key generation is the slow part), copied into each app root.
fn dev_key_pem() -> &'static [u8] {
    static PEM: OnceLock<Vec<u8>> = OnceLock::new();
    PEM.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("dev-signing-key.pem");
        meterline::auth::local::load_or_create(&path).expect("a development key");
        std::fs::read(&path).unwrap()
    })
}

/// The served app, its response type erased.
type Call = Rc<dyn Fn(actix_http::Request) -> LocalBoxFuture<'static, HttpResponse<BoxBody>>>;

/// A change to the state before the app serves it.
type Configure = Box<dyn FnOnce(&mut AppState)>;

/// How to build a [`TestApp`].
pub struct TestAppBuilder {
    root: Option<PathBuf>,
    settings: BTreeMap<String, String>,
    start: DateTime<Utc>,
    configure: Vec<Configure>,
}

impl TestAppBuilder {
    /// A handler setting, as the environment would give it (`METERLINE_MAX_BODY_BYTES`, `METERLINE_AUTH_MODE`, …).
    pub fn setting(mut self, name: &str, value: impl Into<String>) -> Self {
        self.settings.insert(name.to_owned(), value.into());
        self
    }

    /// Starts the clock at `start` instead of [`default_start`] (tokens from a real provider carry the real time).
    pub fn at(mut self, start: DateTime<Utc>) -> Self {
        self.start = start;
        self
    }

    /// Uses an existing app root (and the store in its `data/meterline.db`) instead of a fresh temporary one.
    pub fn root(mut self, root: &std::path::Path) -> Self {
        self.root = Some(root.to_path_buf());
        self
    }

    /// Changes the state after `AppState::new` built it and before the app serves (e.g. the outbox sender).
    pub fn configure(mut self, change: impl FnOnce(&mut AppState) + 'static) -> Self {
        self.configure.push(Box::new(change));
        self
    }

    pub async fn start(self) -> TestApp {
        let (temp, root) = match self.root {
            Some(root) => (None, root),
            None => {
                let temp = tempfile::tempdir().unwrap();
                let root = temp.path().to_path_buf();
                (Some(temp), root)
            }
        };
        let key_path = root.join("data/dev-signing-key.pem");
        if !key_path.exists() {
            std::fs::create_dir_all(key_path.parent().unwrap()).unwrap();
            std::fs::write(&key_path, dev_key_pem()).unwrap();
        }
        let mut settings = BTreeMap::from([
            // Host mode, as under the Functions host (nothing listens: the port is only configuration).
            ("FUNCTIONS_CUSTOMHANDLER_PORT".to_owned(), "7071".to_owned()),
            ("FUNCTIONS_CUSTOMHANDLER_WORKER_ID".to_owned(), "in-process-test".to_owned()),
            ("METERLINE_SQLITE_PATH".to_owned(), root.join("data/meterline.db").display().to_string()),
            ("METERLINE_AUTH_LOCAL_KEY_PATH".to_owned(), key_path.display().to_string()),
        ]);
        settings.extend(self.settings);
        let config = Config::from_lookup(|name| settings.get(name).cloned()).expect("a valid test configuration");
        // One clock for the app and its store: the store's breaker and upkeep move only when a test moves it.
        let clock = Arc::new(ManualClock::new(self.start));
        let store = meterline::store::open(&config.store, clock.clone()).await.expect("the store opens");
        if config.auto_migrate {
            store.migrate().await.expect("the store migrates");
        }
        let mut state = meterline::startup::state(config, store.clone(), clock.clone(), Arc::new(TestIds::default()))
            .expect("the app state");
        for change in self.configure {
            change(&mut state);
        }
        let state = web::Data::new(state);
        // What `startup::start` starts in the background, done before the first request so tests are deterministic.
        state.auth.warm_up().await;
        let service =
            Rc::new(actix_web::test::init_service(meterline::startup::app(state.clone(), Surface::Host)).await);
        let call: Call = Rc::new(move |request| {
            let service = service.clone();
            Box::pin(async move {
                match service.call(request).await {
                    Ok(response) => response.map_into_boxed_body().into_parts().1,
                    // What the HTTP server does with an error that reaches it: answer its error response.
                    Err(err) => err.error_response(),
                }
            })
        });
        let key = match &state.config.auth.mode {
            meterline::config::AuthMode::Local { key_path } => Some(meterline::auth::local::load(key_path).unwrap()),
            meterline::config::AuthMode::Entra { .. } => None,
        };
        TestApp { clock, state, store, root, key, call, layout: AppLayout::from_repo(), _temp: temp }
    }
}

/// The application served in process. See the module documentation.
pub struct TestApp {
    /// The clock every part of the app reads; tests move it.
    pub clock: Arc<ManualClock>,
    pub state: web::Data<AppState>,
    pub store: Arc<dyn Store>,
    /// The app root: the store is `data/meterline.db` under it.
    pub root: PathBuf,
    key: Option<DevKey>,
    call: Call,
    layout: AppLayout,
    _temp: Option<tempfile::TempDir>,
}

impl TestApp {
    pub fn builder() -> TestAppBuilder {
        TestAppBuilder { root: None, settings: BTreeMap::new(), start: default_start(), configure: Vec::new() }
    }

    /// A fresh app in local auth mode with default settings.
    pub async fn start() -> TestApp {
        Self::builder().start().await
    }

    /// The request as actix's HTTP server hands it to the app.
    fn request(request: ClientRequest) -> actix_http::Request {
        let method = actix_web::http::Method::from_bytes(request.method.as_bytes()).expect("an HTTP method");
        let mut test = TestRequest::default()
            .method(method)
            .uri(&request.path_and_query)
            .peer_addr(std::net::SocketAddr::from(([127, 0, 0, 1], 50_000)));
        for (name, value) in &request.headers {
            test = test.append_header((name.as_str(), value.as_str()));
        }
        if let Some(body) = request.body {
            test = test.set_payload(body);
        }
        test.to_request()
    }

    /// A request to the app, as a client of the Function App sends it.
    pub async fn http(&self, request: ClientRequest) -> ClientResponse {
        let response = (self.call)(Self::request(request)).await;
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = match actix_web::body::to_bytes(response.into_body()).await {
            Ok(bytes) => bytes.to_vec(),
            Err(err) => panic!("the response body failed mid-stream: {err}"),
        };
        ClientResponse { status, headers, body }
    }

    /// Sends `request` with a body that never arrives, and drops the app's work on it once the app starts reading
    /// the body: what actix's HTTP server does when the client's connection fails mid-request (a reset). The
    /// request's `Content-Length` is whatever `request` says.
    pub async fn abandon(&self, request: ClientRequest) {
        let asked = Arc::new(tokio::sync::Notify::new());
        let stalled = {
            let asked = Arc::clone(&asked);
            futures_util::stream::poll_fn(move |_| -> std::task::Poll<Option<Result<bytes::Bytes, _>>> {
                asked.notify_one();
                std::task::Poll::Pending
            })
        };
        let (request, _) = Self::request(request)
            .replace_payload(actix_http::Payload::from(Box::pin(stalled) as actix_http::BoxedPayloadStream));
        tokio::select! {
            answer = (self.call)(request) => panic!("answered {} before reading its body", answer.status()),
            () = asked.notified() => {}
        }
    }

    /// Sends `request` and drops the app's work on it the first time it waits (for the store, usually), as actix's
    /// server does when the client's connection fails then.
    pub fn abandon_at_first_wait(&self, request: ClientRequest) {
        let mut answer = (self.call)(Self::request(request));
        let mut context = std::task::Context::from_waker(std::task::Waker::noop());
        if let std::task::Poll::Ready(answer) = answer.as_mut().poll(&mut context) {
            panic!("answered {} without waiting", answer.status());
        }
    }

    /// [`http`](Self::http) with `Authorization: Bearer <token>`.
    pub async fn send(&self, token: &str, request: ClientRequest) -> ClientResponse {
        self.http(request.header("Authorization", &format!("Bearer {token}"))).await
    }

    /// `GET path` with a bearer token.
    pub async fn get(&self, token: &str, path: &str) -> ClientResponse {
        self.send(token, ClientRequest::get(path)).await
    }

    /// A connection to the app's SQLite database, for checking what it stored.
    /// Settles every quota lease the app holds (as a shutdown does), so the store's counter is the units spent.
    pub async fn settle_leases(&self) {
        if let Some(leases) = &self.state.leases {
            leases.settle_all().await;
        }
    }

    pub fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open(self.root.join("data/meterline.db")).unwrap()
    }

    /// What `handler dev-token --tenant <directory> --roles <roles> --app-id <app_id>` prints: an app-only token
    /// valid for an hour from the app's now. Like the command, it creates the `developer` plan and a tenant for the
    /// directory when they are missing.
    pub async fn token(&self, directory: &str, roles: &str, app_id: &str) -> String {
        self.ensure_dev_tenant(directory.parse().expect("a directory id is a GUID")).await;
        let roles: Vec<&str> = roles.split(',').filter(|r| !r.is_empty()).collect();
        self.mint(directory, &roles, app_id)
    }

    /// An app-only token for `directory` with these roles, signed with the development key; creates nothing.
    pub fn mint(&self, directory: &str, roles: &[&str], app_id: &str) -> String {
        let key = self.key.as_ref().expect("tokens are minted in local auth mode only");
        let request = DevTokenRequest {
            directory_id: directory.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            scopes: Vec::new(),
            app_id: app_id.to_owned(),
            object_id: "00000000-0000-0000-0000-0000000d0e00".into(),
            name: Some("Local Developer".into()),
            ttl: std::time::Duration::from_secs(3600),
        };
        meterline::auth::local::mint(key, &request, self.clock.now().timestamp()).unwrap()
    }

    /// `handler dev-token`'s store side (`cli::seed_dev_tenant`): the `developer` plan and a tenant for `directory`.
    async fn ensure_dev_tenant(&self, directory: Uuid) {
        meterline::cli::seed_dev_tenant(self.store.as_ref(), directory, self.clock.as_ref(), self.state.ids.as_ref())
            .await
            .expect("the developer plan and tenant");
        // Written beside the app, as the command does from its own process: nothing cached may hide it.
        self.state.lookups.invalidate();
    }

    /// `POST /{function}` with an invocation envelope, as the host sends it; the answer read as the host reads it.
    pub async fn invoke(&self, function: &str, envelope: &Value) -> InvocationResponse {
        let request = ClientRequest::new("POST", &format!("/{function}"))
            .body(serde_json::to_vec(envelope).unwrap())
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Azure-Functions-InvocationId", &Uuid::new_v4().to_string());
        let response = self.http(request).await;
        let content_type = response.header("content-type").unwrap_or_default().to_owned();
        InvocationResponse::from_answer(response.status, content_type, response.body)
    }

    /// A timer invocation (§7 of the host protocol) with the given `TimerInfo` object.
    pub async fn invoke_timer(&self, function: &str, timer_info: Value) -> InvocationResponse {
        self.invoke(function, &timer_envelope(&self.layout, function, timer_info)).await
    }

    /// A Service Bus invocation (§8 of the host protocol).
    pub async fn invoke_service_bus(&self, function: &str, message: &ServiceBusDelivery) -> InvocationResponse {
        self.invoke(function, &service_bus_envelope(&self.layout, function, message)).await
    }
}

/// Everything the current thread logs through `tracing` while the guard lives: an in-process app's log lines, for
/// tests that count what the app did (e.g. key fetches). The app runs on the test's thread (`#[actix_web::test]`).
pub struct CapturedLogs {
    buffer: Arc<Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

#[derive(Clone)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Starts capturing this thread's log lines (info and above), as plain text.
pub fn capture_logs() -> CapturedLogs {
    let buffer = Arc::new(Mutex::new(Vec::new()));
    let sink = LogBuffer(buffer.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || sink.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .finish();
    CapturedLogs { buffer, _guard: tracing::subscriber::set_default(subscriber) }
}

impl CapturedLogs {
    /// The lines that contain `needle`.
    pub fn count(&self, needle: &str) -> usize {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).lines().filter(|l| l.contains(needle)).count()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buffer.lock().unwrap()).into_owned()
    }
}
