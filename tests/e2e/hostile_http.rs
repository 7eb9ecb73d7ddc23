//! Hostile HTTP/1.1 on a raw socket: which request heads actix-http refuses before Meterline runs, and proof
//! that what gets past the parser is answered as a problem.
//!
//! actix-http 3.20's h1 dispatcher (`h1/dispatcher.rs`, `poll_request`, the `Err(ParseError::TooLarge)` and
//! `Err(err)` arms) answers a request head it cannot parse on its own, with a status line and no body, then
//! closes the connection. No App, middleware or `ResponseError` of ours runs, and actix-web offers no hook
//! to give these answers a body, so they cannot be problem+json. These are actix's empty-bodied refusals:
//! - **400, empty**: any `ParseError` other than `TooLarge`. Here: a request line whose target is longer than
//!   the `http` crate's URI limit (65,534 bytes: a 100 KB query string, and a path one byte over the
//!   limit), although the whole head is under 128 KiB, and a header value with a bare CR
//!   (httparse's `HeaderValue` error). A missing `Host` on HTTP/1.1, a bad method or version, and
//!   conflicting `Content-Length`/`Transfer-Encoding` take the same arm.
//! - **431, empty**: `ParseError::TooLarge`, i.e. more than 96 header fields (httparse's `TooManyHeaders`;
//!   here 1,000 headers), or 128 KiB (`MAX_BUFFER_SIZE`) of head not yet complete (here a 200 KB header).
//!
//! Neither reaches telemetry or metering, so such a request has no request log line and no usage event.
//! Everything the parser accepts reaches the App, and there every error is a problem: an enormous path
//! below the URI limit is a 404 or 401 problem like any other.

use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use crate::support::host::{ClientRequest, HostEmulator};

/// The longest request target the `http` crate (0.2, under actix-http) parses: `u16::MAX - 1` bytes.
const URI_LIMIT: usize = 65_534;

/// How long a refusal or an answer may take; far more than any takes, so a hang fails instead of waiting.
const DEADLINE: Duration = Duration::from_secs(10);

/// A response as read off the socket.
#[derive(Debug)]
struct RawResponse {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl RawResponse {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn parse(raw: &[u8]) -> Option<Self> {
        let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&raw[..end]).into_owned();
        let mut lines = head.split("\r\n");
        let status_line = lines.next()?;
        assert!(status_line.starts_with("HTTP/1.1 "), "not an HTTP/1.1 status line: {status_line:?}");
        let status = status_line.split(' ').nth(1)?.parse().ok()?;
        let headers =
            lines.filter_map(|l| l.split_once(':')).map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned())).collect();
        Some(RawResponse { status, headers, body: raw[end + 4..].to_vec() })
    }
}

/// Sends `request` on a new connection and reads until the server closes it (every request here says
/// `Connection: close`, and actix closes after a refusal), all within [`DEADLINE`].
async fn exchange(port: u16, request: Vec<u8>) -> RawResponse {
    let read = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await.expect("connect to the handler");
        // The server may refuse the head and close before all of it is written; its answer is still read.
        let _ = stream.write_all(&request).await;
        let mut received = Vec::new();
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => received.extend_from_slice(&chunk[..n]),
            }
        }
        received
    };
    let received = tokio::time::timeout(DEADLINE, read).await.expect("the handler answered within the deadline");
    RawResponse::parse(&received)
        .unwrap_or_else(|| panic!("no HTTP response head in {:?}", String::from_utf8_lossy(&received)))
}

fn request(target: &str, extra_headers: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\n{extra_headers}Connection: close\r\n\r\n").into_bytes()
}

/// One of actix's own refusals: the status, no body, and not a problem (it never reached Meterline).
fn assert_empty_refusal(response: &RawResponse, status: u16, what: &str) {
    assert_eq!(response.status, status, "{what}: {response:?}");
    assert!(response.body.is_empty(), "{what}: actix's refusals have no body: {response:?}");
    assert_ne!(response.header("content-type"), Some("application/problem+json"), "{what}");
}

#[tokio::test]
async fn unparseable_heads_get_actix_empty_4xx_and_the_handler_keeps_serving() {
    let host = HostEmulator::start().await;

    let long_query = format!("/api/health?q={}", "a".repeat(100 * 1024));
    let refused = exchange(host.port, request(&long_query, "")).await;
    assert_empty_refusal(&refused, 400, "a 100 KB query string (over the URI limit)");

    let bare_cr = exchange(host.port, request("/api/health", "X-Evil: one\rtwo\r\n")).await;
    assert_empty_refusal(&bare_cr, 400, "a header value with a bare CR");

    let many: String = (0..1000).map(|i| format!("X-Header-{i}: v\r\n")).collect();
    let crowded = exchange(host.port, request("/api/health", &many)).await;
    assert_empty_refusal(&crowded, 431, "1,000 header fields");

    let huge_header = format!("X-Huge: {}\r\n", "h".repeat(200 * 1024));
    let oversized = exchange(host.port, request("/api/health", &huge_header)).await;
    assert_empty_refusal(&oversized, 431, "a 200 KB header (a head over 128 KiB)");

    // The process survived them all and still serves, on a raw connection and through the host.
    let health = exchange(host.port, request("/api/health", "")).await;
    assert_eq!(health.status, 200, "{health:?}");
    assert_eq!(host.http(ClientRequest::get("/api/health")).await.status, 200);
}

#[tokio::test]
async fn an_enormous_path_the_parser_accepts_is_answered_with_a_problem() {
    let host = HostEmulator::start().await;
    // 60,000 bytes: enormous, but under the URI limit, so actix hands it to the App.
    let segment = "a".repeat(60_000);
    for (path, status, code) in
        [(format!("/api/{segment}"), 404, "NotFound"), (format!("/api/v1/{segment}"), 401, "Unauthenticated")]
    {
        let response = exchange(host.port, request(&path, "")).await;
        assert_eq!(response.status, status, "{}", String::from_utf8_lossy(&response.body));
        assert_eq!(response.header("content-type"), Some("application/problem+json"));
        let problem: serde_json::Value = serde_json::from_slice(&response.body).expect("a JSON problem");
        assert_eq!(problem["code"], code, "{problem}");
        assert_eq!(problem["status"], status);
        assert!(response.body.len() < 2_000, "the answer does not echo the whole path: {} bytes", response.body.len());
    }
    // The boundary is the URI limit, not Meterline: one byte more and actix refuses the request line itself.
    let at_limit = format!("/api/{}", "a".repeat(URI_LIMIT - "/api/".len()));
    assert_eq!(
        exchange(host.port, request(&at_limit, "")).await.header("content-type"),
        Some("application/problem+json")
    );
    let over_limit = format!("{at_limit}a");
    assert_empty_refusal(
        &exchange(host.port, request(&over_limit, "")).await,
        400,
        "a target one byte over the URI limit",
    );
    assert_eq!(host.http(ClientRequest::get("/api/health")).await.status, 200);
}
