//! A Functions host emulator: starts the real `handler` binary as the host does and speaks its wire protocol.
//!
//! What it reproduces (section numbers of `shared/docs/functions-host-protocol.md`):
//! - start-up (§2): the executable and `arguments` from `host.json`, the `FUNCTIONS_*` environment, the app
//!   root as working directory, stdout/stderr captured, `GET /` polled every 25 ms for up to 30 s (§2.4);
//! - HTTP functions (§5): client requests routed by each `function.json` route template under the `api/`
//!   prefix, then forwarded (§5.2: rebuilt query, chunked client bodies dropped, content headers dropped)
//!   or proxied (§5.3: raw query, body streamed);
//! - default-mode HTTP (§4), timer (§7) and Service Bus (§8) invocations: `POST /{FunctionName}` with a
//!   chunked JSON envelope, double-encoded scalars, stringified numbers, zoneless dates and body keys
//!   promoted into Metadata; the answer is checked as strictly as the host reads it (§4.3).
//!
//! At start it also reads the handler's OpenAPI document and fails if any API route cannot be reached
//! through some `function.json`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{SecondsFormat, Utc};
use futures_util::stream;
use serde_json::{Map, Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use super::routes::{RouteTemplate, sample_path};

pub const HOST_VERSION: &str = "4.1037.0.0";
const READY_POLL: Duration = Duration::from_millis(25);
const READY_BUDGET: Duration = Duration::from_secs(30);

/// One function folder as the host reads it.
#[derive(Debug, Clone)]
pub struct FunctionSpec {
    pub name: String,
    pub bindings: Vec<Value>,
}

impl FunctionSpec {
    pub fn trigger(&self) -> &Value {
        self.bindings
            .iter()
            .find(|b| b["direction"] == "in" && b["type"].as_str().is_some_and(|t| t.ends_with("Trigger")))
            .unwrap_or_else(|| panic!("{} has no trigger binding", self.name))
    }

    pub fn trigger_type(&self) -> &str {
        self.trigger()["type"].as_str().unwrap_or_default()
    }

    pub fn trigger_name(&self) -> &str {
        self.trigger()["name"].as_str().unwrap_or_default()
    }

    fn http_output_name(&self) -> Option<&str> {
        self.bindings.iter().find(|b| b["type"] == "http" && b["direction"] == "out").and_then(|b| b["name"].as_str())
    }
}

/// `host.json` plus every `function.json`: what the host reads from an app root.
#[derive(Debug, Clone)]
pub struct AppLayout {
    pub host_json: Value,
    pub functions: Vec<FunctionSpec>,
}

impl AppLayout {
    /// The repository layout: `host.json` and `functions/<Name>/function.json`.
    pub fn from_repo() -> Self {
        let root = repo_root();
        Self::read(&root.join("host.json"), &root.join("functions"))
    }

    /// A packaged app root: `host.json` and `<Name>/function.json` side by side.
    pub fn from_app_root(root: &Path) -> Self {
        Self::read(&root.join("host.json"), root)
    }

    fn read(host_json: &Path, functions_dir: &Path) -> Self {
        let host_json: Value =
            serde_json::from_slice(&std::fs::read(host_json).expect("host.json")).expect("host.json is JSON");
        let mut functions = Vec::new();
        for entry in std::fs::read_dir(functions_dir).expect("functions folder") {
            let dir = entry.expect("dir entry").path();
            let file = dir.join("function.json");
            if !file.is_file() {
                continue;
            }
            let doc: Value = serde_json::from_slice(&std::fs::read(&file).unwrap()).expect("function.json is JSON");
            let name = dir.file_name().unwrap().to_string_lossy().into_owned();
            functions.push(FunctionSpec { name, bindings: doc["bindings"].as_array().cloned().unwrap_or_default() });
        }
        functions.sort_by(|a, b| a.name.cmp(&b.name));
        AppLayout { host_json, functions }
    }

    pub fn route_prefix(&self) -> String {
        self.host_json["extensions"]["http"]["routePrefix"].as_str().unwrap_or("api").trim_matches('/').to_owned()
    }

    pub fn function(&self, name: &str) -> &FunctionSpec {
        self.functions.iter().find(|f| f.name == name).unwrap_or_else(|| panic!("no function {name} in the layout"))
    }

    /// The HTTP function whose route template matches `path` (which starts with `/{routePrefix}`).
    pub fn route_for(&self, path: &str) -> Option<(&FunctionSpec, BTreeMap<String, Option<String>>)> {
        let prefix = format!("/{}", self.route_prefix());
        let rest = path.strip_prefix(&prefix)?;
        if !(rest.is_empty() || rest.starts_with('/')) {
            return None;
        }
        self.functions.iter().filter(|f| f.trigger_type() == "httpTrigger").find_map(|f| {
            let template = f.trigger()["route"].as_str().unwrap_or(&f.name);
            RouteTemplate::parse(template).matches(rest).map(|values| (f, values))
        })
    }
}

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the crate sits in the workspace").to_path_buf()
}

/// How HTTP functions reach the handler (§5.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpMode {
    /// `enableForwardingHttpRequest` (§5.2).
    Forwarding,
    /// `enableProxyingHttpRequest` (§5.3, newer hosts).
    Proxying,
}

/// How to start the emulated host.
#[derive(Debug, Clone)]
pub struct HostOptions {
    pub layout: AppLayout,
    pub executable: PathBuf,
    pub env: Vec<(String, String)>,
    pub http_mode: HttpMode,
    /// Working directory (the app root); a fresh temporary folder when `None`.
    pub app_root: Option<PathBuf>,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            layout: AppLayout::from_repo(),
            executable: PathBuf::from(env!("CARGO_BIN_EXE_handler")),
            env: Vec::new(),
            http_mode: HttpMode::Forwarding,
            app_root: None,
        }
    }
}

/// The public host name clients of the emulated Function App call, and its origin.
pub const PUBLIC_HOST: &str = "app.azurewebsites.net";
pub const PUBLIC_ORIGIN: &str = "https://app.azurewebsites.net";

/// A request from a client of the Function App.
#[derive(Debug, Clone)]
pub struct ClientRequest {
    pub method: String,
    pub path_and_query: String,
    pub headers: Vec<(String, String)>,
    pub body: Option<Vec<u8>>,
    /// Sent with `Transfer-Encoding: chunked` instead of `Content-Length`.
    pub chunked: bool,
}

impl ClientRequest {
    pub fn new(method: &str, path_and_query: &str) -> Self {
        ClientRequest {
            method: method.to_owned(),
            path_and_query: path_and_query.to_owned(),
            headers: Vec::new(),
            body: None,
            chunked: false,
        }
    }

    pub fn get(path_and_query: &str) -> Self {
        Self::new("GET", path_and_query)
    }

    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// A raw body; set its Content-Type with [`header`](Self::header).
    pub fn body(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.body = Some(bytes.into());
        self
    }

    pub fn json(mut self, body: &Value) -> Self {
        self.body = Some(serde_json::to_vec(body).unwrap());
        self.header("Content-Type", "application/json")
    }
}

/// What the client of the Function App receives.
#[derive(Debug, Clone)]
pub struct ClientResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl ClientResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
}

/// The handler's answer to an invocation, checked the way the host reads it (§4.3).
#[derive(Debug, Clone)]
pub struct InvocationResponse {
    pub status: u16,
    pub content_type: String,
    pub raw: Vec<u8>,
    /// `Some` when the host would accept the answer: 2xx, JSON content type, a non-null JSON object body.
    pub result: Option<Value>,
}

impl InvocationResponse {
    /// The handler's answer as the host reads it: accepted only when 2xx, JSON, and a JSON object.
    pub fn from_answer(status: u16, content_type: String, raw: Vec<u8>) -> Self {
        let json_type = content_type.starts_with("application/json") || content_type.starts_with("text/json");
        let result = match serde_json::from_slice::<Value>(&raw) {
            Ok(value @ Value::Object(_)) if (200..300).contains(&status) && json_type => Some(value),
            _ => None,
        };
        InvocationResponse { status, content_type, raw, result }
    }

    /// The accepted result, or a panic that says why the host would fail the invocation.
    pub fn accepted(&self) -> &Value {
        self.result.as_ref().unwrap_or_else(|| {
            panic!(
                "the host would fail this invocation: status {}, content-type {:?}, body {}",
                self.status,
                self.content_type,
                String::from_utf8_lossy(&self.raw)
            )
        })
    }

    pub fn logs(&self) -> Vec<String> {
        field(self.accepted(), "Logs")
            .and_then(Value::as_array)
            .map(|l| l.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    }

    pub fn outputs(&self) -> Map<String, Value> {
        field(self.accepted(), "Outputs").and_then(Value::as_object).cloned().unwrap_or_default()
    }

    pub fn problem(&self) -> Value {
        assert!(self.content_type.starts_with("application/problem+json"), "not a problem: {}", self.content_type);
        serde_json::from_slice(&self.raw).expect("problem body is JSON")
    }
}

/// A Service Bus message to deliver (§8).
#[derive(Debug, Clone)]
pub struct ServiceBusDelivery {
    pub body: String,
    pub message_id: String,
    pub delivery_count: u32,
    pub sequence_number: i64,
    pub content_type: Option<String>,
    pub correlation_id: Option<String>,
    pub application_properties: Map<String, Value>,
}

impl ServiceBusDelivery {
    pub fn new(body: &str) -> Self {
        ServiceBusDelivery {
            body: body.to_owned(),
            message_id: uuid::Uuid::new_v4().simple().to_string(),
            delivery_count: 1,
            sequence_number: 1,
            content_type: None,
            correlation_id: None,
            application_properties: Map::new(),
        }
    }
}

/// The running emulated host with its one handler process.
pub struct HostEmulator {
    pub layout: AppLayout,
    pub port: u16,
    pub worker_id: String,
    /// Time from spawning the process to the first answer on `GET /`.
    pub ready_after: Duration,
    pub app_root: PathBuf,
    http_mode: HttpMode,
    child: Child,
    output: Arc<Mutex<Vec<String>>>,
    /// The tasks reading stdout and stderr into `output`; both end once the process closed its streams.
    captures: Vec<tokio::task::JoinHandle<()>>,
    client: reqwest::Client,
    _temp: Option<tempfile::TempDir>,
}

impl HostEmulator {
    /// Starts the repository's app with default options.
    pub async fn start() -> Self {
        Self::start_with(HostOptions::default()).await
    }

    pub async fn start_with(options: HostOptions) -> Self {
        let (temp, app_root) = match options.app_root {
            Some(root) => (None, root),
            None => {
                let temp = tempfile::tempdir().expect("temp dir");
                let root = temp.path().to_path_buf();
                (Some(temp), root)
            }
        };
        let port = free_port();
        let worker_id = uuid::Uuid::new_v4().to_string();
        let description = &options.layout.host_json["customHandler"]["description"];
        let args: Vec<String> = description["arguments"]
            .as_array()
            .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
            .unwrap_or_default();
        let mut command = Command::new(&options.executable);
        command
            .args(&args)
            .current_dir(&app_root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // The host passes its own environment through; keep the test's Meterline settings out of it.
        for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("METERLINE_") || k.starts_with("FUNCTIONS_")) {
            command.env_remove(key);
        }
        command
            .env("FUNCTIONS_CUSTOMHANDLER_PORT", port.to_string())
            .env("FUNCTIONS_HTTPWORKER_PORT", port.to_string())
            .env("FUNCTIONS_CUSTOMHANDLER_WORKER_ID", &worker_id)
            .env("FUNCTIONS_HTTPWORKER_ID", &worker_id)
            .env("FUNCTIONS_APP_ROOT_PATH", &app_root)
            .env("FUNCTIONS_WORKER_RUNTIME", "custom")
            .env("METERLINE_WORKERS", "2");
        for (key, value) in &options.env {
            command.env(key, value);
        }
        let started = Instant::now();
        let mut child =
            command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", options.executable.display()));
        let output = Arc::new(Mutex::new(Vec::new()));
        let captures = vec![
            capture(child.stdout.take().unwrap(), output.clone(), "stdout"),
            capture(child.stderr.take().unwrap(), output.clone(), "stderr"),
        ];
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_secs(60))
            .build()
            .unwrap();
        let mut host = HostEmulator {
            layout: options.layout,
            port,
            worker_id,
            ready_after: Duration::ZERO,
            app_root,
            http_mode: options.http_mode,
            child,
            output,
            captures,
            client,
            _temp: temp,
        };
        host.ready_after = host.wait_ready(started).await;
        host.check_routes_reachable().await;
        host
    }

    /// Polls `GET /` like the host: refused connections mean "not yet"; any HTTP answer means ready.
    async fn wait_ready(&mut self, started: Instant) -> Duration {
        let probe = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let mut waited = Duration::ZERO;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!("the handler exited with {status} before it was ready; output:\n{}", self.output_text());
            }
            match probe.get(format!("http://127.0.0.1:{}/", self.port)).send().await {
                Ok(_) => return started.elapsed(),
                Err(e) if e.is_connect() => {}
                Err(_) => return started.elapsed(),
            }
            assert!(waited < READY_BUDGET, "Initializing HttpWorker timed out; output:\n{}", self.output_text());
            tokio::time::sleep(READY_POLL).await;
            waited += READY_POLL;
        }
    }

    async fn check_routes_reachable(&self) {
        let doc: Value = self
            .client
            .get(self.handler_url("/api/openapi.json"))
            .send()
            .await
            .expect("openapi document")
            .json()
            .await
            .expect("openapi JSON");
        let unreachable: Vec<String> = doc["paths"]
            .as_object()
            .expect("paths")
            .keys()
            .filter(|template| self.layout.route_for(&sample_path(template)).is_none())
            .cloned()
            .collect();
        assert!(
            unreachable.is_empty(),
            "routes served by the handler but reachable through no function.json: {unreachable:?}"
        );
    }

    pub fn handler_url(&self, path_and_query: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path_and_query)
    }

    /// Everything the handler wrote to stdout and stderr so far, one line per entry.
    pub fn output(&self) -> Vec<String> {
        self.output.lock().unwrap().clone()
    }

    pub fn output_text(&self) -> String {
        self.output().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("running")
    }

    /// Waits until a line of the handler's output contains `needle` and returns it (stdout and stderr are read
    /// as the handler writes them, so a line logged before an answer may arrive after it); panics after `within`.
    pub async fn wait_for_output(&self, needle: &str, within: Duration) -> String {
        self.wait_for_line(needle, |line| line.contains(needle), within).await
    }

    /// [`wait_for_output`](Self::wait_for_output) for the first line that `matches` (described by `what`).
    pub async fn wait_for_line(&self, what: &str, matches: impl Fn(&str) -> bool, within: Duration) -> String {
        self.wait_for_lines(what, matches, 1, within).await.remove(0)
    }

    /// Waits until at least `n` lines of the output match and returns them; panics after `within`.
    pub async fn wait_for_lines(
        &self,
        what: &str,
        matches: impl Fn(&str) -> bool,
        n: usize,
        within: Duration,
    ) -> Vec<String> {
        let deadline = Instant::now() + within;
        loop {
            let found: Vec<String> = self.output().into_iter().filter(|l| matches(l)).collect();
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{} of {n} output lines {what} after {within:?}:\n{}",
                found.len(),
                self.output_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits until the process closed stdout and stderr and both were read to the end (after it exited): from
    /// then on [`output`](Self::output) is everything it wrote.
    pub async fn wait_output_complete(&mut self, within: Duration) {
        for capture in self.captures.drain(..) {
            tokio::time::timeout(within, capture).await.expect("the output streams closed in time").unwrap();
        }
    }

    /// Waits for the process to exit (after a signal sent by the test) and returns its exit code.
    pub async fn wait_exit(&mut self, within: Duration) -> Option<i32> {
        let status =
            tokio::time::timeout(within, self.child.wait()).await.expect("handler did not exit in time").unwrap();
        status.code()
    }

    /// A client request to the Function App, routed and delivered the way the host does for HTTP functions.
    pub async fn http(&self, request: ClientRequest) -> ClientResponse {
        // A link the API gave out (nextLink) is absolute, at the public origin the client called.
        let path_and_query = match request.path_and_query.strip_prefix(PUBLIC_ORIGIN) {
            Some(rest) => rest.to_owned(),
            None => {
                assert!(request.path_and_query.starts_with('/'), "not a link to this app: {}", request.path_and_query);
                request.path_and_query.clone()
            }
        };
        let (path, raw_query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (path_and_query.clone(), None),
        };
        let Some((function, _)) = self.layout.route_for(&path) else {
            // No function route matches: the host answers 404 itself and never calls the handler.
            return ClientResponse {
                status: 404,
                headers: vec![("x-emulator".into(), "no-function-route".into())],
                body: Vec::new(),
            };
        };
        assert!(function.http_output_name().is_some(), "{} has no http output", function.name);
        let invocation_id = uuid::Uuid::new_v4().to_string();
        let query = match (self.http_mode, raw_query) {
            (HttpMode::Proxying, Some(q)) => format!("?{q}"),
            (HttpMode::Forwarding, Some(q)) => rebuild_query(&q),
            (_, None) => String::new(),
        };
        let method = reqwest::Method::from_bytes(request.method.as_bytes()).unwrap();
        let mut builder = self.client.request(method, self.handler_url(&format!("{path}{query}")));
        let content_headers = [
            "content-encoding",
            "content-language",
            "content-disposition",
            "content-md5",
            "content-range",
            "content-location",
            "expires",
            "last-modified",
            "allow",
        ];
        let forwards_body = match self.http_mode {
            // §5.2: only a body with Content-Length > 0 is forwarded; a chunked client body is dropped.
            HttpMode::Forwarding => !request.chunked && request.body.as_ref().is_some_and(|b| !b.is_empty()),
            HttpMode::Proxying => request.body.is_some(),
        };
        let mut user_agent = None;
        for (name, value) in &request.headers {
            let lower = name.to_ascii_lowercase();
            if lower == "content-length" || lower == "transfer-encoding" {
                continue;
            }
            if self.http_mode == HttpMode::Forwarding && content_headers.contains(&lower.as_str()) {
                continue;
            }
            if lower == "content-type" && !forwards_body {
                continue;
            }
            if lower == "user-agent" {
                user_agent = Some(value.clone());
                continue;
            }
            builder = builder.header(name.as_str(), value.as_str());
        }
        builder = builder
            .header("X-Azure-Functions-HostVersion", HOST_VERSION)
            .header("X-Azure-Functions-InvocationId", &invocation_id)
            // The platform's front end terminates TLS and says so (App Service adds X-Forwarded-Proto).
            .header("X-Forwarded-Proto", "https");
        if self.http_mode == HttpMode::Forwarding
            && !request.headers.iter().any(|(n, _)| n.eq_ignore_ascii_case("host"))
        {
            // §5.2: the host copies every incoming header, Host included: the handler sees the public host name.
            builder = builder.header("Host", PUBLIC_HOST);
        }
        match self.http_mode {
            HttpMode::Forwarding => {
                let ua = match user_agent {
                    Some(ua) => format!("{ua} Azure-Functions-Host/{HOST_VERSION}"),
                    None => format!("Azure-Functions-Host/{HOST_VERSION}"),
                };
                builder = builder.header("User-Agent", ua);
            }
            HttpMode::Proxying => {
                builder = builder.header("x-ms-invocation-id", &invocation_id).header("X-Forwarded-Host", PUBLIC_HOST);
                if let Some(ua) = user_agent {
                    builder = builder.header("User-Agent", ua);
                }
            }
        }
        if forwards_body {
            let body = request.body.clone().unwrap_or_default();
            builder = if request.chunked { builder.body(chunked_body(body, 5)) } else { builder.body(body) };
        }
        let response = builder.send().await.expect("the handler answered the forwarded request");
        let status = response.status().as_u16();
        let headers = response
            .headers()
            .iter()
            .map(|(n, v)| (n.as_str().to_owned(), v.to_str().unwrap_or_default().to_owned()))
            .collect();
        let body = response.bytes().await.unwrap().to_vec();
        ClientResponse { status, headers, body }
    }

    /// Sends a raw invocation envelope to `POST /{function}` as the host does: compact JSON, chunked.
    pub async fn invoke_raw(&self, function: &str, body: Vec<u8>, chunk_size: usize) -> InvocationResponse {
        let response = self
            .client
            .post(self.handler_url(&format!("/{function}")))
            .header("Content-Type", "application/json; charset=utf-8")
            .header("X-Azure-Functions-HostVersion", HOST_VERSION)
            .header("X-Azure-Functions-InvocationId", uuid::Uuid::new_v4().to_string())
            .header("User-Agent", format!("Azure-Functions-Host/{HOST_VERSION}"))
            .body(chunked_body(body, chunk_size))
            .send()
            .await
            .expect("the handler answered the invocation");
        let status = response.status().as_u16();
        let content_type =
            response.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
        let raw = response.bytes().await.unwrap().to_vec();
        InvocationResponse::from_answer(status, content_type, raw)
    }

    pub async fn invoke(&self, function: &str, envelope: &Value) -> InvocationResponse {
        self.invoke_raw(function, serde_json::to_vec(envelope).unwrap(), 4096).await
    }

    /// A default-mode HTTP invocation (§4): the request as `Data.<trigger>`, the answer read from `Outputs.<res>`.
    pub async fn invoke_http_default(
        &self,
        function: &str,
        request: ClientRequest,
    ) -> (InvocationResponse, ClientResponse) {
        let spec = self.layout.function(function).clone();
        let (path, raw_query) = request.path_and_query.split_once('?').unwrap_or((&request.path_and_query, ""));
        let params = self.layout.route_for(path).map(|(_, values)| values).unwrap_or_default();
        let mut query_joined: Map<String, Value> = Map::new();
        let mut query_last: Map<String, Value> = Map::new();
        for (key, value) in form_pairs(raw_query) {
            let joined = match query_joined.get(&key).and_then(Value::as_str) {
                Some(prev) => format!("{prev},{value}"),
                None => value.clone(),
            };
            query_joined.insert(key.clone(), Value::String(joined));
            query_last.insert(key, Value::String(value));
        }
        let body_sent = !request.chunked && request.body.as_ref().is_some_and(|b| !b.is_empty());
        let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for (name, value) in &request.headers {
            headers.entry(name.clone()).or_default().push(value.clone());
        }
        headers.insert("Host".into(), vec!["app.azurewebsites.net".into()]);
        if body_sent {
            headers.insert("Content-Length".into(), vec![request.body.as_ref().unwrap().len().to_string()]);
        }
        let content_type = request
            .headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.to_ascii_lowercase());
        let mut req = json!({
            "Url": format!("https://app.azurewebsites.net{}", request.path_and_query),
            "Method": request.method,
            "Query": query_joined,
            "Headers": headers,
            "Params": params,
            "Identities": [{
                "AuthenticationType": "WebJobsAuthLevel", "IsAuthenticated": true, "Actor": null, "BootstrapContext": null,
                "Claims": [{"Issuer": "LOCAL AUTHORITY", "OriginalIssuer": "LOCAL AUTHORITY", "Properties": {},
                            "Type": "http://schemas.microsoft.com/2017/07/functions/claims/authlevel", "Value": "Anonymous",
                            "ValueType": "http://www.w3.org/2001/XMLSchema#string"}],
                "Label": null, "Name": null,
                "NameClaimType": "http://schemas.xmlsoap.org/ws/2005/05/identity/claims/name",
                "RoleClaimType": "http://schemas.microsoft.com/ws/2008/06/identity/claims/role"
            }]
        });
        let mut metadata = Map::new();
        if body_sent {
            let body = request.body.clone().unwrap();
            let binary = content_type
                .as_deref()
                .is_some_and(|ct| ct.starts_with("application/octet-stream") || ct.starts_with("multipart/"));
            req["Body"] = if binary {
                use base64::Engine as _;
                Value::String(base64::engine::general_purpose::STANDARD.encode(&body))
            } else {
                Value::String(String::from_utf8_lossy(&body).into_owned())
            };
            if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(&body) {
                promote(&mut metadata, &fields);
            }
        }
        for (key, value) in &query_last {
            if key != "code" {
                insert_ignore_case(&mut metadata, key, json_text(value));
            }
        }
        for (key, value) in &params {
            insert_ignore_case(
                &mut metadata,
                key,
                value.as_ref().map_or(Value::Null, |v| json_text(&Value::String(v.clone()))),
            );
        }
        if !metadata.keys().any(|k| k.eq_ignore_ascii_case("Query")) {
            metadata.insert("Query".into(), Value::Object(query_last.clone()));
        }
        if !metadata.keys().any(|k| k.eq_ignore_ascii_case("Headers")) {
            let joined: Map<String, Value> =
                headers.iter().map(|(k, v)| (k.clone(), Value::String(v.join(",")))).collect();
            metadata.insert("Headers".into(), Value::Object(joined));
        }
        metadata.retain(|_, v| !v.is_null());
        metadata.insert("sys".into(), sys(function));
        let mut data = Map::new();
        data.insert(spec.trigger_name().to_owned(), req);
        let invocation = self.invoke(function, &json!({ "Data": data, "Metadata": metadata })).await;
        let output_name = spec.http_output_name().expect("an HTTP function has an http output");
        let client = match &invocation.result {
            Some(result) => http_output_to_client(field(result, "Outputs").and_then(|o| field(o, output_name))),
            // A failed invocation reaches the client as a host error.
            None => ClientResponse { status: 500, headers: Vec::new(), body: Vec::new() },
        };
        (invocation, client)
    }

    /// A timer invocation (§7) with the given `TimerInfo` object.
    pub async fn invoke_timer(&self, function: &str, timer_info: Value) -> InvocationResponse {
        self.invoke(function, &timer_envelope(&self.layout, function, timer_info)).await
    }

    /// A Service Bus invocation (§8) of a string-typed trigger, with v5 extension Metadata.
    pub async fn invoke_service_bus(&self, function: &str, message: &ServiceBusDelivery) -> InvocationResponse {
        self.invoke(function, &service_bus_envelope(&self.layout, function, message)).await
    }
}

/// The `TimerInfo` of an on-time run, as the host sends it for a schedule that adjusts for DST.
pub fn on_schedule() -> Value {
    json!({"Schedule": {"AdjustForDST": true}, "ScheduleStatus": null, "IsPastDue": false})
}

/// The envelope of a timer invocation (§7) with the given `TimerInfo` object.
pub fn timer_envelope(layout: &AppLayout, function: &str, timer_info: Value) -> Value {
    let spec = layout.function(function);
    assert_eq!(spec.trigger_type(), "timerTrigger");
    let mut data = Map::new();
    data.insert(spec.trigger_name().to_owned(), timer_info);
    json!({ "Data": data, "Metadata": { "sys": sys(function) } })
}

/// The envelope of a Service Bus invocation (§8) of a string-typed trigger, with v5 extension Metadata.
pub fn service_bus_envelope(layout: &AppLayout, function: &str, message: &ServiceBusDelivery) -> Value {
    let spec = layout.function(function);
    assert_eq!(spec.trigger_type(), "serviceBusTrigger");
    let enqueued = Utc::now();
    let mut metadata = Map::new();
    for key in ["MessageReceiver", "MessageSession", "MessageActions", "SessionActions", "ReceiveActions"] {
        metadata.insert(key.into(), json!({}));
    }
    metadata.insert(
        "Client".into(),
        json!({"FullyQualifiedNamespace": "meterline.servicebus.windows.net", "IsClosed": false, "TransportType": 0}),
    );
    metadata.insert("DeliveryCount".into(), json_text(&json!(message.delivery_count)));
    metadata.insert("LockToken".into(), json_text(&json!(uuid::Uuid::new_v4().to_string())));
    metadata.insert("ExpiresAtUtc".into(), json!("9999-12-31T23:59:59"));
    metadata.insert("ExpiresAt".into(), json!("9999-12-31T23:59:59+00:00"));
    metadata.insert("EnqueuedTimeUtc".into(), json!(enqueued.format("%Y-%m-%dT%H:%M:%S").to_string()));
    metadata.insert("EnqueuedTime".into(), json!(enqueued.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()));
    metadata.insert("MessageId".into(), json_text(&json!(message.message_id)));
    metadata.insert("SequenceNumber".into(), json_text(&json!(message.sequence_number)));
    if let Some(ct) = &message.content_type {
        metadata.insert("ContentType".into(), json_text(&json!(ct)));
    }
    if let Some(id) = &message.correlation_id {
        metadata.insert("CorrelationId".into(), json_text(&json!(id)));
    }
    metadata.insert("ApplicationProperties".into(), Value::Object(message.application_properties.clone()));
    metadata.insert("UserProperties".into(), Value::Object(message.application_properties.clone()));
    // §3.1: a JSON object body has its top-level properties copied into the binding data, overwriting.
    if let Ok(Value::Object(fields)) = serde_json::from_str::<Value>(message.body.trim()) {
        promote(&mut metadata, &fields);
    }
    metadata.insert("sys".into(), sys(function));
    let mut data = Map::new();
    // §8.1: the string body is JSON-encoded once more inside the envelope.
    data.insert(spec.trigger_name().to_owned(), json_text(&Value::String(message.body.clone())));
    json!({ "Data": data, "Metadata": metadata })
}

/// `JsonConvert.SerializeObject(value)`: the JSON text of a scalar, as a JSON string.
pub fn json_text(value: &Value) -> Value {
    Value::String(value.to_string())
}

fn sys(function: &str) -> Value {
    json!({
        "MethodName": function,
        "UtcNow": Utc::now().to_rfc3339_opts(SecondsFormat::AutoSi, true),
        "RandGuid": uuid::Uuid::new_v4().to_string()
    })
}

fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    value.as_object()?.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v)
}

fn insert_ignore_case(map: &mut Map<String, Value>, key: &str, value: Value) {
    let existing: Vec<String> = map.keys().filter(|k| k.eq_ignore_ascii_case(key)).cloned().collect();
    for k in existing {
        map.remove(&k);
    }
    map.insert(key.to_owned(), value);
}

/// Body promotion (§3.1): non-array properties become Metadata entries; objects stay objects, the rest becomes
/// the .NET string form encoded as JSON text (`42` gives `"\"42\""`, `true` gives `"\"True\""`).
fn promote(metadata: &mut Map<String, Value>, fields: &Map<String, Value>) {
    for (key, value) in fields {
        let promoted = match value {
            Value::Array(_) => continue,
            Value::Null => continue,
            Value::Object(_) => value.clone(),
            Value::Bool(b) => json_text(&Value::String(if *b { "True" } else { "False" }.into())),
            Value::Number(n) => json_text(&Value::String(n.to_string())),
            Value::String(s) => json_text(&Value::String(s.clone())),
        };
        insert_ignore_case(metadata, key, promoted);
    }
}

/// The host's reading of `Outputs.res` (§4.3): an object or a string holding one; string status code.
fn http_output_to_client(output: Option<&Value>) -> ClientResponse {
    let Some(output) = output else {
        return ClientResponse { status: 200, headers: Vec::new(), body: b"{}".to_vec() };
    };
    let object = match output {
        Value::String(text) => serde_json::from_str::<Value>(text).expect("Outputs.res string must hold a JSON object"),
        other => other.clone(),
    };
    assert!(object.is_object(), "Failed while trying to Deserialize to httpOutputBindingResponse: {object}");
    let status = match field(&object, "statusCode") {
        Some(Value::String(s)) => s.parse().unwrap_or(200),
        Some(Value::Number(n)) => n.as_u64().unwrap_or(200) as u16,
        _ => 200,
    };
    let headers = field(&object, "headers")
        .and_then(Value::as_object)
        .map(|h| {
            h.iter()
                .map(|(k, v)| {
                    let text = v.as_str().unwrap_or_else(|| panic!("header {k} must be a string, got {v}"));
                    (k.clone(), text.to_owned())
                })
                .collect()
        })
        .unwrap_or_default();
    let body = match field(&object, "body") {
        Some(Value::String(s)) => s.clone().into_bytes(),
        Some(Value::Null) | None => Vec::new(),
        Some(other) => serde_json::to_vec_pretty(other).unwrap(),
    };
    ClientResponse { status, headers, body }
}

/// §5.2: the forwarded query is rebuilt from the parsed one: repeated keys comma-joined, re-encoded.
fn rebuild_query(raw: &str) -> String {
    let mut joined: Vec<(String, String)> = Vec::new();
    for (key, value) in form_pairs(raw) {
        match joined.iter_mut().find(|(k, _)| *k == key) {
            Some((_, prev)) => {
                prev.push(',');
                prev.push_str(&value);
            }
            None => joined.push((key, value)),
        }
    }
    if joined.is_empty() {
        return String::new();
    }
    let encoded: Vec<String> = joined.iter().map(|(k, v)| format!("{}={}", encode(k), encode(v))).collect();
    format!("?{}", encoded.join("&"))
}

fn form_pairs(raw: &str) -> Vec<(String, String)> {
    raw.split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (decode(k), decode(v))
        })
        .collect()
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 2;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// A body sent with `Transfer-Encoding: chunked` in pieces of `size` bytes.
fn chunked_body(body: Vec<u8>, size: usize) -> reqwest::Body {
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> = body.chunks(size.max(1)).map(|c| Ok(c.to_vec())).collect();
    reqwest::Body::wrap_stream(stream::iter(chunks))
}

/// A port nothing listens on, never handed out twice by this test process. Like the host, the emulator
/// releases it before the handler binds it; remembering what it gave out keeps parallel tests apart.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut given = GIVEN.lock().unwrap();
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
}

/// Reads `stream` line by line into `sink` until it closes; the task ends at end of file.
fn capture(
    stream: impl tokio::io::AsyncRead + Unpin + Send + 'static,
    sink: Arc<Mutex<Vec<String>>>,
    name: &'static str,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink.lock().unwrap().push(format!("[{name}] {line}"));
        }
    })
}

#[test]
fn forwarded_queries_are_rebuilt_like_the_host() {
    assert_eq!(rebuild_query("tag=a&tag=b&q=x%20y"), "?tag=a%2Cb&q=x%20y");
    assert_eq!(rebuild_query(""), "");
    assert_eq!(decode("a%2Cb+c%zz"), "a,b c%zz");
}
