//! The API reference page (`/api/docs`): served by the handler, reachable through the Functions routes, public,
//! and actually rendered by a real browser (Debian's headless Chromium) with nothing fetched from elsewhere.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::browser::chromium;
use crate::support::host::{ClientRequest, HostEmulator};

/// Where `scripts/install-test-deps` puts Chromium (Debian's `chromium` package), then Google Chrome (preinstalled
/// on GitHub's Ubuntu runners). `METERLINE_TEST_CHROMIUM` overrides both.
/// The whole browser run, start to exit; rendering takes a second or two.
const BROWSER_BUDGET: Duration = Duration::from_secs(60);

#[tokio::test]
async fn the_docs_page_is_public_and_every_file_is_reachable_through_the_function_routes() {
    let host = HostEmulator::start().await;

    let res = host.http(ClientRequest::get("/api/docs")).await;
    assert_ne!(res.header("x-emulator"), Some("no-function-route"), "no function.json route reaches /api/docs");
    assert_eq!(res.status, 308, "/api/docs redirects to the page");
    assert_eq!(res.header("location"), Some("/api/docs/"));

    // No Authorization header: the page is as public as the document it renders.
    let page = host.http(ClientRequest::get("/api/docs/")).await;
    assert_eq!(page.status, 200, "{}", String::from_utf8_lossy(&page.body));
    assert!(page.header("content-type").is_some_and(|ct| ct.starts_with("text/html")));
    let csp = page.header("content-security-policy").expect("the page carries a Content-Security-Policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"), "{csp}");
    let html = String::from_utf8(page.body.clone()).unwrap();
    let mut files = linked_files(&html);
    files.push("swagger-initializer.js".into());
    assert!(files.iter().any(|f| f == "swagger-ui-bundle.js"), "{html}");
    for file in &files {
        let res = host.http(ClientRequest::get(&format!("/api/docs/{file}"))).await;
        assert_eq!(res.status, 200, "/api/docs/{file}: {:?}", res.header("x-emulator"));
    }

    let doc = openapi(&host).await;
    let paths: Vec<&String> = doc["paths"].as_object().unwrap().keys().collect();
    assert!(paths.iter().all(|p| !p.starts_with("/api/docs")), "the page is not an API operation: {paths:?}");
}

#[tokio::test]
async fn headless_chromium_renders_every_operation_of_the_served_document() {
    let host = HostEmulator::start().await;
    let doc = openapi(&host).await;

    let started = Instant::now();
    let dom = dump_dom(&host.handler_url("/api/docs")).await;
    let took = started.elapsed();

    assert!(!dom.contains("Failed to load API definition"), "Swagger UI could not load the document:\n{dom}");
    let title = doc["info"]["title"].as_str().unwrap();
    assert!(dom.contains(title), "the page shows the API title {title:?}:\n{dom}");
    let mut operations = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        assert!(dom.contains(&format!("data-path=\"{path}\"")), "the rendered page lists {path}:\n{dom}");
        for operation in item.as_object().unwrap().values().filter(|op| op.get("responses").is_some()) {
            let id = operation["operationId"].as_str().expect("every operation has an operationId");
            assert!(dom.contains(id), "the rendered page shows the operation {id} ({path}):\n{dom}");
            operations += 1;
        }
    }
    for path in ["/api/v1/me", "/api/health/ready"] {
        assert!(dom.contains(&format!("data-path=\"{path}\"")), "{path} is rendered");
    }
    eprintln!("chromium rendered {operations} operations at /api/docs in {took:.1?}");
}

/// The files `index.html` links with relative `./name` URLs.
fn linked_files(html: &str) -> Vec<String> {
    let mut files = Vec::new();
    for attr in ["href=\"./", "src=\"./"] {
        let mut rest = html;
        while let Some(at) = rest.find(attr) {
            rest = &rest[at + attr.len()..];
            let end = rest.find('"').unwrap();
            files.push(rest[..end].to_owned());
        }
    }
    files
}

async fn openapi(host: &HostEmulator) -> Value {
    let res = host.http(ClientRequest::get("/api/openapi.json")).await;
    assert_eq!(res.status, 200);
    res.json()
}

/// Loads `url` in headless Chromium, lets its scripts run, and returns the resulting DOM (`--dump-dom`).
/// Every host name except 127.0.0.1 fails to resolve, so the page can only work with what the handler serves.
async fn dump_dom(url: &str) -> String {
    let executable = chromium();
    let temp = tempfile::Builder::new().prefix("meterline-chromium-").tempdir().unwrap();
    let dir = temp.path();
    let mut command = tokio::process::Command::new(&executable);
    command
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-quic",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", dir.join("profile").display()))
        .arg(url)
        // Keep Chromium's files (crash database, caches) inside the temporary folder.
        .env("HOME", dir.join("home"))
        .env("XDG_CONFIG_HOME", dir.join("config"))
        .env("XDG_CACHE_HOME", dir.join("cache"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Its own process group, so that the renderer, GPU and utility processes can be stopped together.
        .process_group(0)
        .kill_on_drop(true);
    let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {}: {e}", executable.display()));
    let browser = BrowserProcesses { group: child.id().expect("just started"), marker: dir.to_path_buf() };
    let output = tokio::time::timeout(BROWSER_BUDGET, child.wait_with_output()).await;
    let leftovers = browser.stop().await;
    assert!(leftovers.is_empty(), "chromium processes outlived the browser: {leftovers:?}");
    let output = output
        .unwrap_or_else(|_| panic!("chromium did not finish within {BROWSER_BUDGET:?}; it was stopped"))
        .expect("chromium ran");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "chromium failed ({}):\n{stderr}", output.status);
    let dom = String::from_utf8(output.stdout).expect("the DOM is UTF-8");
    assert!(dom.contains("<html"), "chromium printed no DOM; its stderr:\n{stderr}");
    dom
}

/// Every process one browser run started: its process group, plus helpers that leave it (Chromium's crash
/// handler starts its own session) but name the run's temporary folder on their command line.
struct BrowserProcesses {
    group: u32,
    marker: PathBuf,
}

impl BrowserProcesses {
    /// Stops them all and returns those that were still running a moment after the browser was done.
    async fn stop(&self) -> Vec<String> {
        self.kill_group();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let running = self.running();
            if running.is_empty() {
                return Vec::new();
            }
            if Instant::now() >= deadline {
                for (pid, _) in &running {
                    let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
                }
                return running.into_iter().map(|(_, d)| d).collect();
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn kill_group(&self) {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &format!("-{}", self.group)])
            .stderr(Stdio::null())
            .status();
    }

    /// Live (not zombie) processes of this run: `(pid, description)`.
    fn running(&self) -> Vec<(u32, String)> {
        let marker = self.marker.to_string_lossy().into_owned();
        let mut found = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Some((state, group)) = stat(&entry.path()) else { continue };
            if state == 'Z' {
                continue;
            }
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if group == self.group || cmdline.contains(&marker) {
                found.push((pid, format!("{pid} {}", cmdline.trim())));
            }
        }
        found
    }
}

impl Drop for BrowserProcesses {
    /// A panicking test still takes its browser down with it.
    fn drop(&mut self) {
        self.kill_group();
    }
}

/// A process's state and process group, from `/proc/<pid>/stat`.
fn stat(proc_dir: &Path) -> Option<(char, u32)> {
    let text = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    // The command name is in parentheses and may itself contain spaces or parentheses.
    let mut fields = text[text.rfind(')')? + 1..].split_whitespace();
    let state = fields.next()?.chars().next()?;
    let _ppid = fields.next()?;
    let group = fields.next()?.parse().ok()?;
    Some((state, group))
}

#[test]
fn linked_files_are_read_from_index_html() {
    let html = r#"<link rel="stylesheet" href="./a.css" /><script src="./b.js"></script><a href="https://x">"#;
    assert_eq!(linked_files(html), vec!["a.css", "b.js"]);
}
