//! The App Service managed identity protocol end to end: `EntraTokenSource` and `MssqlConnector` against a local endpoint.
//!
//! `azure_identity` reads `IDENTITY_ENDPOINT` / `IDENTITY_HEADER` from the process environment when the credential
//! is created and offers no way to inject them (its `Env` seam is test-only inside the crate). Setting variables in
//! a running test process needs `unsafe` (forbidden in this workspace) and would leak into concurrent tests. So the
//! one test here runs twice: as the parent it serves the identity endpoint on 127.0.0.1, starts this same test binary
//! again with the variables set (`Command::env`, no unsafe code) and filtered to this test, and checks every request
//! the child made; as the child (`METERLINE_MI_TEST_CHILD` set) it is the client and checks the tokens it gets.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use meterline::store::StoreError;
use meterline::store::mssql::connection::{Authentication, MssqlConnector};
use meterline::store::mssql::token::{EntraTokenSource, SqlTokenSource};
use secrecy::SecretString;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const TEST_NAME: &str = "app_service_managed_identity_end_to_end";
const CHILD_FLAG: &str = "METERLINE_MI_TEST_CHILD";
const CLIENT_ID_VAR: &str = "METERLINE_MI_TEST_CLIENT_ID";
const IDENTITY_HEADER: &str = "5c0ffee0-identity-header";
const CLIENT_ID: &str = "0f4d9a7e-1b2c-4d3e-8f90-a1b2c3d4e5f6";
const PATH: &str = "/msi/token";

/// What the endpoint answers, in order: (token, seconds until it expires).
const ANSWERS: [(&str, u64); 4] = [("tok-1", 60), ("tok-2", 3600), ("tok-3", 3600), ("tok-4", 3600)];

#[tokio::test]
async fn app_service_managed_identity_end_to_end() {
    if std::env::var_os(CHILD_FLAG).is_some() {
        child().await;
    } else {
        parent().await;
    }
}

/// The client side, in the child process whose environment points at the parent's endpoint.
async fn child() {
    // System-assigned. The first token expires within the 5-minute refresh margin, so the second call fetches again;
    // the second token is good for an hour, so the third call is served from the cache.
    let system = EntraTokenSource::managed_identity(None).expect("a managed identity credential");
    assert_eq!(system.token().await.unwrap(), "tok-1");
    assert_eq!(system.token().await.unwrap(), "tok-2", "a token inside the refresh margin is replaced");
    assert_eq!(system.token().await.unwrap(), "tok-2", "a valid token is served from the cache");

    // User-assigned, selected by client id.
    let client_id = std::env::var(CLIENT_ID_VAR).expect("the client id");
    let user = EntraTokenSource::managed_identity(Some(client_id.clone())).expect("a managed identity credential");
    assert_eq!(user.token().await.unwrap(), "tok-3");
    assert_eq!(user.token().await.unwrap(), "tok-3");

    // The connector built from a connection string asks the same endpoint (with the client id from `User Id`) for
    // each connection, before TCP; nothing listens on port 1, so the connection itself is Unavailable.
    let connection_string = SecretString::from(format!(
        "Server=tcp:127.0.0.1,1;Database=meterline;Authentication=Active Directory Managed Identity;User Id={client_id}"
    ));
    let connector = MssqlConnector::new(&connection_string).expect("a connector");
    assert_eq!(connector.authentication(), &Authentication::ManagedIdentity { client_id: Some(client_id) });
    let err = connector.connect().await.expect_err("nothing listens on port 1");
    assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    let config = connector.build_config(Some("tok-4".into())).unwrap();
    assert!(format!("{config:?}").contains("auth: AADToken("));
}

/// One request as the endpoint saw it.
#[derive(Debug, Clone)]
struct SeenRequest {
    method: String,
    path: String,
    query: Vec<(String, String)>,
    headers: Vec<(String, String)>,
}

impl SeenRequest {
    fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// The identity endpoint, and the checks on what the child sent.
async fn parent() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://127.0.0.1:{}{PATH}", listener.local_addr().unwrap().port());
    let seen = Arc::new(Mutex::new(Vec::<SeenRequest>::new()));
    let server = tokio::spawn(serve(listener, seen.clone()));

    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_FLAG, "1")
        .env(CLIENT_ID_VAR, CLIENT_ID)
        .env("IDENTITY_ENDPOINT", &endpoint)
        .env("IDENTITY_HEADER", IDENTITY_HEADER)
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost");
    // Anything that would send the child elsewhere: other managed identity flavours, proxies.
    for name in [
        "IDENTITY_SERVER_THUMBPRINT",
        "IMDS_ENDPOINT",
        "MSI_ENDPOINT",
        "MSI_SECRET",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        command.env_remove(name);
    }
    command.kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(120), command.output())
        .await
        .expect("the child finishes within two minutes")
        .expect("the test binary runs");
    server.abort();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the child failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("{TEST_NAME} ... ok")), "the child did not run the test:\n{stdout}");

    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 4, "one request per fetched token, none for cached ones: {seen:#?}");
    for (index, request) in seen.iter().enumerate() {
        assert_eq!(request.method, "GET", "{request:?}");
        assert_eq!(request.path, PATH, "{request:?}");
        assert_eq!(request.query("api-version"), Some("2019-08-01"), "{request:?}");
        assert_eq!(request.query("resource"), Some("https://database.windows.net"), "{request:?}");
        assert_eq!(request.header("x-identity-header"), Some(IDENTITY_HEADER), "{request:?}");
        let expected_client_id = if index < 2 { None } else { Some(CLIENT_ID) };
        assert_eq!(request.query("client_id"), expected_client_id, "request {index}: {request:?}");
        assert_eq!(request.query("object_id"), None);
        assert_eq!(request.query("msi_res_id"), None);
    }
}

/// Answers each request with the next of [`ANSWERS`], as App Service does (`expires_on` in unix seconds, as text).
async fn serve(listener: TcpListener, seen: Arc<Mutex<Vec<SeenRequest>>>) {
    loop {
        let Ok((mut socket, _)) = listener.accept().await else { return };
        let mut raw = Vec::new();
        let mut buf = [0u8; 4096];
        while !raw.windows(4).any(|w| w == b"\r\n\r\n") {
            match socket.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
        let Some(request) = parse_request(&String::from_utf8_lossy(&raw)) else { continue };
        let index = {
            let mut seen = seen.lock().unwrap();
            seen.push(request);
            seen.len() - 1
        };
        let response = match ANSWERS.get(index) {
            Some((token, lifetime)) => {
                let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs();
                let body = serde_json::json!({
                    "access_token": token,
                    "expires_on": (now + lifetime).to_string(),
                    "resource": "https://database.windows.net",
                    "token_type": "Bearer",
                    "client_id": CLIENT_ID,
                })
                .to_string();
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                )
            }
            None => "HTTP/1.1 500 Internal Server Error\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string(),
        };
        let _ = socket.write_all(response.as_bytes()).await;
        let _ = socket.shutdown().await;
    }
}

fn parse_request(raw: &str) -> Option<SeenRequest> {
    let mut lines = raw.split("\r\n");
    let mut request_line = lines.next()?.split(' ');
    let method = request_line.next()?.to_string();
    let target = request_line.next()?;
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    let query = query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect();
    let headers = lines
        .take_while(|line| !line.is_empty())
        .filter_map(|line| line.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    Some(SeenRequest { method, path: path.to_string(), query, headers })
}

/// Decodes `application/x-www-form-urlencoded` text (`+` is a space, `%XX` a byte).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok().and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
