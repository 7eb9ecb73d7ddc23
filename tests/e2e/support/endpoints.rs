//! Local stand-ins for Azure endpoints: a test certificate authority, and small HTTP(S) servers that record every
//! request and answer from a script (Service Bus send, Key Vault secrets, the App Service managed identity).
//!
//! `azure_core` refuses to send bearer tokens over plain http, so Service Bus and Key Vault are served over
//! https with a certificate from [`TestCa`]; a handler process trusts it through `SSL_CERT_FILE` (read by
//! rustls-native-certs, which the `azure_core` transport uses on Linux), the in-process app through an HTTP client
//! that trusts it ([`trusting_client`], given to `ServiceBusSender::with_http_client`), with [`IdentityStub`] in
//! place of the managed identity.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::rustls;

/// A certificate authority and a server certificate it signed for `127.0.0.1` and `localhost`.
pub struct TestCa {
    /// The CA certificate as a PEM file, for `SSL_CERT_FILE`.
    pub ca_file: PathBuf,
    acceptor: tokio_rustls::TlsAcceptor,
    _dir: tempfile::TempDir,
}

impl TestCa {
    pub fn new() -> Self {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "Meterline test CA");
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut leaf_params = CertificateParams::new(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
        leaf_params.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        let leaf_key = KeyPair::generate().unwrap();
        let leaf = leaf_params.signed_by(&leaf_key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into());
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![leaf.der().clone(), ca_cert.der().clone()], key)
            .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let ca_file = dir.path().join("test-ca.pem");
        std::fs::write(&ca_file, ca_cert.pem()).unwrap();
        TestCa { ca_file, acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)), _dir: dir }
    }
}

/// One request as a server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub query: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn query(&self, name: &str) -> Option<&str> {
        self.query.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("a JSON body")
    }
}

/// What a server answers.
#[derive(Debug, Clone)]
pub enum Reply {
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Never answers (the client times out or is killed while waiting).
    Hang,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Respond { status, headers: Vec::new(), body: String::new() }
    }

    pub fn json(status: u16, body: serde_json::Value) -> Self {
        Reply::Respond {
            status,
            headers: vec![("Content-Type".into(), "application/json".into())],
            body: body.to_string(),
        }
    }
}

type Handler = Arc<dyn Fn(&Seen) -> Reply + Send + Sync>;

/// A server on 127.0.0.1 that records requests and answers with `handler`.
pub struct TestServer {
    pub port: u16,
    pub https: bool,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl TestServer {
    /// An https server with `ca`'s certificate.
    pub async fn https(ca: &TestCa, handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start(Some(ca.acceptor.clone()), Arc::new(handler)).await
    }

    /// A plain http server (the managed identity endpoint is http on App Service too).
    pub async fn http(handler: impl Fn(&Seen) -> Reply + Send + Sync + 'static) -> Self {
        Self::start(None, Arc::new(handler)).await
    }

    async fn start(tls: Option<tokio_rustls::TlsAcceptor>, handler: Handler) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let https = tls.is_some();
        let recorded = seen.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((socket, _)) = listener.accept().await else { return };
                let (tls, handler, recorded) = (tls.clone(), handler.clone(), recorded.clone());
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(stream) = acceptor.accept(socket).await {
                                serve(stream, handler, recorded).await;
                            }
                        }
                        None => serve(socket, handler, recorded).await,
                    }
                });
            }
        });
        TestServer { port, https, seen, task }
    }

    pub fn url(&self) -> String {
        format!("{}://127.0.0.1:{}", if self.https { "https" } else { "http" }, self.port)
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }

    /// Waits until at least `n` requests arrived (or panics after `within`).
    pub async fn wait_for(&self, n: usize, within: Duration) -> Vec<Seen> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let seen = self.seen();
            if seen.len() >= n {
                return seen;
            }
            assert!(tokio::time::Instant::now() < deadline, "only {} of {n} requests arrived: {seen:#?}", seen.len());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(mut stream: S, handler: Handler, seen: Arc<Mutex<Vec<Seen>>>) {
    let mut raw = Vec::new();
    let mut buf = [0u8; 8192];
    let head_end = loop {
        if let Some(pos) = raw.windows(4).position(|w| w == b"\r\n\r\n") {
            break pos + 4;
        }
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => raw.extend_from_slice(&buf[..n]),
        }
    };
    let head = String::from_utf8_lossy(&raw[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let mut request_line = lines.next().unwrap_or_default().split(' ');
    let method = request_line.next().unwrap_or_default().to_owned();
    let target = request_line.next().unwrap_or_default().to_owned();
    let headers: Vec<(String, String)> = lines
        .take_while(|l| !l.is_empty())
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect();
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = raw[head_end..].to_vec();
    while body.len() < length {
        match stream.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => body.extend_from_slice(&buf[..n]),
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    let request = Seen { method, path: path.to_owned(), query, headers, body };
    seen.lock().unwrap().push(request.clone());
    match handler(&request) {
        Reply::Hang => tokio::time::sleep(Duration::from_secs(600)).await,
        Reply::Respond { status, headers, body } => {
            let mut response =
                format!("HTTP/1.1 {status} Test\r\nContent-Length: {}\r\nConnection: close\r\n", body.len());
            for (name, value) in headers {
                response.push_str(&format!("{name}: {value}\r\n"));
            }
            response.push_str("\r\n");
            response.push_str(&body);
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        }
    }
}

/// The App Service managed identity endpoint: answers every token request with `token-for-<resource>`.
pub async fn managed_identity_endpoint() -> TestServer {
    TestServer::http(|request| {
        let resource = request.query("resource").unwrap_or("none").to_owned();
        let expires = chrono::Utc::now().timestamp() + 3600;
        Reply::json(
            200,
            serde_json::json!({
                "access_token": format!("token-for-{resource}"),
                "expires_on": expires.to_string(),
                "resource": resource,
                "token_type": "Bearer",
            }),
        )
    })
    .await
}

/// The settings that send the handler's managed identity and TLS trust to these test endpoints.
pub fn identity_env(identity: &TestServer, ca: &TestCa) -> Vec<(String, String)> {
    vec![
        ("IDENTITY_ENDPOINT".into(), format!("{}/msi/token", identity.url())),
        ("IDENTITY_HEADER".into(), "test-identity-header".into()),
        ("SSL_CERT_FILE".into(), ca.ca_file.display().to_string()),
        ("NO_PROXY".into(), "127.0.0.1,localhost".into()),
        ("no_proxy".into(), "127.0.0.1,localhost".into()),
    ]
}

/// An HTTP client for the `azure_core` pipeline that trusts `ca` (and nothing else), each try bounded by `timeout`.
pub fn trusting_client(ca: &TestCa, timeout: Duration) -> reqwest_azure::Client {
    let pem = std::fs::read(&ca.ca_file).unwrap();
    reqwest_azure::Client::builder()
        .timeout(timeout)
        .tls_certs_only([reqwest_azure::Certificate::from_pem(&pem).unwrap()])
        .build()
        .unwrap()
}

/// A token credential for the in-process app: answers every request with `token-for-<resource>` (the scope
/// without `/.default`), as [`managed_identity_endpoint`] does, and records the scopes asked for.
#[derive(Debug, Default)]
pub struct IdentityStub {
    scopes: Mutex<Vec<String>>,
}

impl IdentityStub {
    pub fn scopes(&self) -> Vec<String> {
        self.scopes.lock().unwrap().clone()
    }
}

#[async_trait::async_trait]
impl azure_core::credentials::TokenCredential for IdentityStub {
    async fn get_token(
        &self,
        scopes: &[&str],
        _options: Option<azure_core::credentials::TokenRequestOptions<'_>>,
    ) -> azure_core::Result<azure_core::credentials::AccessToken> {
        self.scopes.lock().unwrap().extend(scopes.iter().map(|s| (*s).to_owned()));
        let resource = scopes.first().copied().unwrap_or_default().trim_end_matches("/.default");
        let expires_on = azure_core::time::OffsetDateTime::now_utc() + azure_core::time::Duration::hours(1);
        Ok(azure_core::credentials::AccessToken::new(format!("token-for-{resource}"), expires_on))
    }
}
