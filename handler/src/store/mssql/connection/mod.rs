//! Connections to SQL Server / Azure SQL with tiberius over TCP and TLS, from an ADO.NET connection string, and the bb8 pool.
//!
//! Two ways in, chosen by the connection string's `Authentication` key:
//! - absent or `SqlPassword`: a SQL login (`User Id` + `Password`);
//! - `Active Directory Managed Identity` (alias `Active Directory MSI`), optionally with `User Id=<client id>` of a
//!   user-assigned identity, or `Active Directory Default` (managed identity in Azure, the developer's `az` /
//!   `azd` login elsewhere): an Entra ID access token from a [`SqlTokenSource`], fetched for every new connection
//!   (the pool opens connections over hours; the source caches and refreshes the token).
//!
//! tiberius does not know the `Authentication` key (it ignores unknown keys), and would read the client id as a SQL
//! user; Meterline parses the string itself first, removes the keys it handles (`Authentication`, `Encrypt`, and the
//! user/password keys for Entra ID) and hands the rest to `tiberius::Config::from_ado_string`.
//!
//! TLS: encryption is required (`EncryptionLevel::Required`) unless the string says `Encrypt=false` (or `no` /
//! `optional`), which still encrypts the login as SQL Server always does. `TrustServerCertificate=true` skips
//! certificate validation (the SQL Server container in CI has a self-signed certificate).
//!
//! Testing seam: [`MssqlConnector::build_config`] is the pure step from "connection string + token" to the
//! `tiberius::Config` used for a connection. tiberius keeps the auth method private (its `Debug` shows the variant
//! with the secret redacted), so the tests here also run the real TDS login against a scripted server on
//! 127.0.0.1 and find the token in the LOGIN7 packet.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use tiberius::{AuthMethod, Client, Config, EncryptionLevel};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};

use super::errors::classify;
use super::token::{EntraTokenSource, SqlTokenSource};
use crate::store::StoreError;
use ado::{invalid, parse_pairs, tokenize};

mod ado;

/// A connected tiberius client, the pool's connection type.
pub type MssqlClient = Client<Compat<TcpStream>>;

/// How long to wait for the TCP connection (the TDS handshake has its own timeout, tiberius' 15 s by default).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long `Pool::get` waits for a connection before answering `StoreError::Unavailable`.
pub const POOL_CONNECTION_TIMEOUT: Duration = Duration::from_secs(30);
/// Sent as the application name unless the connection string sets one; it shows in `sys.dm_exec_sessions`.
const DEFAULT_APPLICATION_NAME: &str = "meterline";

/// How connections authenticate, from the connection string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    /// `User Id` + `Password` of a SQL login.
    SqlLogin,
    /// `Authentication=Active Directory Managed Identity`: system-assigned, or user-assigned with this client id.
    ManagedIdentity { client_id: Option<String> },
    /// `Authentication=Active Directory Default`: managed identity in Azure, developer login elsewhere.
    ActiveDirectoryDefault { client_id: Option<String> },
}

impl Authentication {
    fn uses_entra_id(&self) -> bool {
        !matches!(self, Authentication::SqlLogin)
    }
}

/// Opens connections to one database; shared by the pool.
pub struct MssqlConnector {
    /// Everything but the auth method for Entra ID (which changes with every token).
    base: Config,
    address: String,
    database: Option<String>,
    authentication: Authentication,
    encryption: EncryptionLevel,
    trust_server_certificate: bool,
    tokens: Option<Arc<dyn SqlTokenSource>>,
    connect_timeout: Duration,
}

impl fmt::Debug for MssqlConnector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MssqlConnector")
            .field("address", &self.address)
            .field("database", &self.database)
            .field("authentication", &self.authentication)
            .field("encryption", &self.encryption)
            .field("trust_server_certificate", &self.trust_server_certificate)
            .field("connect_timeout", &self.connect_timeout)
            .finish_non_exhaustive()
    }
}

impl MssqlConnector {
    /// Parses the connection string and, for Entra ID, sets up the credential it names (managed identity or
    /// developer login). Fails with a message naming the problem, never echoing the password.
    pub fn new(connection_string: &SecretString) -> Result<Self, StoreError> {
        let mut connector = Self::parse(connection_string)?;
        connector.tokens = match &connector.authentication {
            Authentication::SqlLogin => None,
            Authentication::ManagedIdentity { client_id } => {
                Some(Arc::new(EntraTokenSource::managed_identity(client_id.clone())?))
            }
            Authentication::ActiveDirectoryDefault { client_id } => {
                Some(Arc::new(EntraTokenSource::active_directory_default(client_id.clone())?))
            }
        };
        Ok(connector)
    }

    /// Like [`MssqlConnector::new`], with the given token source; the string must use an Entra ID `Authentication`.
    pub fn with_token_source(
        connection_string: &SecretString,
        tokens: Arc<dyn SqlTokenSource>,
    ) -> Result<Self, StoreError> {
        let mut connector = Self::parse(connection_string)?;
        if !connector.authentication.uses_entra_id() {
            return Err(invalid(
                "a token source was given but the string uses a SQL login; set Authentication=Active Directory \
                 Managed Identity or Active Directory Default",
            ));
        }
        connector.tokens = Some(tokens);
        Ok(connector)
    }

    /// Wait at most `timeout` for the TCP connection (default [`DEFAULT_CONNECT_TIMEOUT`]).
    pub fn with_connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Wait at most `timeout` for the TDS handshake (prelogin, TLS, login) after the TCP connection is up.
    pub fn with_handshake_timeout(mut self, timeout: Duration) -> Self {
        self.base.handshake_timeout(Some(timeout));
        self
    }

    pub fn authentication(&self) -> &Authentication {
        &self.authentication
    }

    pub fn encryption(&self) -> EncryptionLevel {
        self.encryption
    }

    pub fn trusts_server_certificate(&self) -> bool {
        self.trust_server_certificate
    }

    /// `host:port` of the server (before any gateway redirect).
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    /// The tiberius configuration for one new connection: the SQL login from the string, or `token` as an Entra ID
    /// access token. A token is required for Entra ID and refused for a SQL login.
    pub fn build_config(&self, token: Option<String>) -> Result<Config, StoreError> {
        let mut config = self.base.clone();
        match (self.authentication.uses_entra_id(), token) {
            (false, None) => {}
            (false, Some(_)) => {
                return Err(StoreError::Other(anyhow::anyhow!(
                    "the SQL Server connection string uses a SQL login; an access token cannot be used with it"
                )));
            }
            (true, Some(token)) => config.authentication(AuthMethod::aad_token(token)),
            (true, None) => {
                return Err(StoreError::Other(anyhow::anyhow!(
                    "the SQL Server connection string uses Entra ID ({:?}); a connection needs an access token",
                    self.authentication
                )));
            }
        }
        Ok(config)
    }

    /// Opens one connection: a fresh token for Entra ID, TCP with a timeout and `TCP_NODELAY`, the TDS handshake
    /// with TLS, and one reconnect to the address an Azure SQL gateway redirects to.
    pub async fn connect(&self) -> Result<MssqlClient, StoreError> {
        let token = match &self.tokens {
            Some(tokens) if self.authentication.uses_entra_id() => Some(tokens.token().await?),
            _ => None,
        };
        let config = self.build_config(token)?;
        connect_with(config, self.connect_timeout).await
    }

    /// Turns the connection string into a connector without a token source.
    fn parse(connection_string: &SecretString) -> Result<Self, StoreError> {
        let raw = connection_string.expose_secret();
        let pairs = tokenize(raw).map_err(invalid)?;
        let password = pairs.get("password").or_else(|| pairs.get("pwd")).filter(|p| !p.is_empty()).cloned();
        parse_pairs(pairs).map_err(|problem| match password {
            // Messages are written not to contain values, but never let a password through by accident.
            Some(password) => invalid(&problem.replace(password.as_str(), "***")),
            None => invalid(&problem),
        })
    }

    /// Sends cleartext for the scripted TDS server in the tests, which does not speak TLS.
    #[cfg(test)]
    fn without_tls_for_tests(mut self) -> Self {
        self.base.encryption(EncryptionLevel::NotSupported);
        self.encryption = EncryptionLevel::NotSupported;
        self
    }
}

/// TCP (with a timeout and `TCP_NODELAY`), then the TDS handshake; follows one gateway redirect.
async fn connect_with(mut config: Config, connect_timeout: Duration) -> Result<MssqlClient, StoreError> {
    let mut redirected = false;
    loop {
        let address = config.get_addr();
        let tcp = match tokio::time::timeout(connect_timeout, TcpStream::connect(&address)).await {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => {
                return Err(StoreError::Unavailable(anyhow::Error::new(e).context(format!("connecting to {address}"))));
            }
            Err(_) => {
                return Err(StoreError::Unavailable(anyhow::anyhow!(
                    "connecting to {address} timed out after {connect_timeout:?}"
                )));
            }
        };
        tcp.set_nodelay(true)
            .map_err(|e| StoreError::Unavailable(anyhow::Error::new(e).context("setting TCP_NODELAY")))?;
        match Client::connect(config.clone(), tcp.compat_write()).await {
            Ok(client) => return Ok(client),
            // Azure SQL's gateway (redirect connection policy) sends the client to the node hosting the database.
            Err(tiberius::error::Error::Routing { host, port }) if !redirected => {
                tracing::debug!(from = %address, to = %format!("{host}:{port}"), "SQL Server redirected the connection");
                config.host(host);
                config.port(port);
                redirected = true;
            }
            Err(e) => return Err(with_context(classify(e), format!("logging in to SQL Server at {address}"))),
        }
    }
}

/// Adds `context` to the errors that carry a cause.
fn with_context(err: StoreError, context: String) -> StoreError {
    match err {
        StoreError::Unavailable(cause) => StoreError::Unavailable(cause.context(context)),
        StoreError::Other(cause) => StoreError::Other(cause.context(context)),
        other => other,
    }
}

/// The bb8 connection manager: connects through the shared [`MssqlConnector`], checks with `SELECT 1`.
#[derive(Debug, Clone)]
pub struct MssqlManager {
    connector: Arc<MssqlConnector>,
}

impl MssqlManager {
    pub fn new(connector: Arc<MssqlConnector>) -> Self {
        Self { connector }
    }
}

/// A pooled connection: the client, and whether a transaction on it is unfinished. A transaction cut off by its
/// timeout (`MssqlStore::transaction`) drops its future mid-request, leaving `in_flight` set: the pool then
/// discards the connection instead of handing out one with a request and its answer still on the wire.
pub struct MssqlConn {
    client: MssqlClient,
    pub(crate) in_flight: bool,
}

impl fmt::Debug for MssqlConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MssqlConn").field("in_flight", &self.in_flight).finish_non_exhaustive()
    }
}

impl std::ops::Deref for MssqlConn {
    type Target = MssqlClient;

    fn deref(&self) -> &MssqlClient {
        &self.client
    }
}

impl std::ops::DerefMut for MssqlConn {
    fn deref_mut(&mut self) -> &mut MssqlClient {
        &mut self.client
    }
}

impl bb8::ManageConnection for MssqlManager {
    type Connection = MssqlConn;
    type Error = StoreError;

    /// Connects, then sets the session options every statement of the store relies on (see `queries::SESSION_OPTIONS`).
    async fn connect(&self) -> Result<MssqlConn, StoreError> {
        let mut conn = self.connector.connect().await?;
        conn.simple_query(super::queries::SESSION_OPTIONS)
            .await
            .map_err(classify)?
            .into_results()
            .await
            .map_err(classify)?;
        Ok(MssqlConn { client: conn, in_flight: false })
    }

    async fn is_valid(&self, conn: &mut MssqlConn) -> Result<(), StoreError> {
        conn.simple_query("SELECT 1").await.map_err(classify)?.into_row().await.map_err(classify)?;
        Ok(())
    }

    /// A connection whose transaction never finished (see [`MssqlConn`]) is broken. Otherwise tiberius does not
    /// expose whether a connection is closed or poisoned; such a connection fails the `SELECT 1` of
    /// [`is_valid`](Self::is_valid) when it is next checked out (`test_on_check_out`) and is dropped.
    fn has_broken(&self, conn: &mut MssqlConn) -> bool {
        conn.in_flight
    }
}

/// A pool of at most `max_size` connections; `get` waits up to [`POOL_CONNECTION_TIMEOUT`].
///
/// Connections open lazily (`build_unchecked`, no `min_idle`): building the pool never touches the network, so the
/// process starts even while the database is briefly unreachable (an Azure SQL failover, a serverless database
/// resuming), and the first `get`, readiness check or migration reports the problem, as 503 or a logged error.
pub async fn pool(connector: Arc<MssqlConnector>, max_size: u32) -> Result<bb8::Pool<MssqlManager>, StoreError> {
    pool_with_timeout(connector, max_size, POOL_CONNECTION_TIMEOUT).await
}

/// [`pool`] with another wait for `get`.
pub async fn pool_with_timeout(
    connector: Arc<MssqlConnector>,
    max_size: u32,
    connection_timeout: Duration,
) -> Result<bb8::Pool<MssqlManager>, StoreError> {
    if max_size == 0 || connection_timeout.is_zero() {
        return Err(StoreError::Other(anyhow::anyhow!(
            "the SQL Server pool needs at least one connection and a non-zero timeout"
        )));
    }
    Ok(bb8::Pool::builder()
        .max_size(max_size)
        .connection_timeout(connection_timeout)
        .test_on_check_out(true)
        .error_sink(Box::new(LogConnectErrors))
        .build_unchecked(MssqlManager::new(connector)))
}

/// What a failed `Pool::get` means for the caller: the connector's error, or Unavailable when no connection came.
pub fn pool_error(err: bb8::RunError<StoreError>) -> StoreError {
    match err {
        bb8::RunError::User(err) => err,
        bb8::RunError::TimedOut => {
            StoreError::Unavailable(anyhow::anyhow!("no SQL Server connection became available in time"))
        }
    }
}

/// Logs the connection failures bb8 meets in the background (they never reach a caller, who just times out).
#[derive(Debug, Clone, Copy)]
struct LogConnectErrors;

impl bb8::ErrorSink<StoreError> for LogConnectErrors {
    fn sink(&self, error: StoreError) {
        match &error {
            StoreError::Unavailable(cause) | StoreError::Other(cause) => {
                tracing::warn!(error = %format!("{cause:#}"), "opening a SQL Server connection failed")
            }
            other => tracing::warn!(error = %other, "opening a SQL Server connection failed"),
        }
    }

    fn boxed_clone(&self) -> Box<dyn bb8::ErrorSink<StoreError>> {
        Box::new(*self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    use ado::tests::{error_text, parse, secret};

    // ---- connecting ----

    async fn closed_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
        // dropped here: nothing listens on the port any more
    }

    #[tokio::test]
    async fn a_closed_port_is_unavailable_at_once() {
        let port = closed_port().await;
        let c = parse(&format!("Server=tcp:127.0.0.1,{port};User Id=app;Password=pw")).unwrap();
        let started = std::time::Instant::now();
        let err = c.connect().await.expect_err("nothing listens");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(super::super::errors::is_retryable(&err));
        let text = error_text(err);
        assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    }

    #[tokio::test]
    async fn a_server_that_never_answers_the_handshake_is_unavailable_after_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let held = tokio::spawn(async move {
            let (socket, _) = listener.accept().await.unwrap();
            tokio::time::sleep(Duration::from_secs(5)).await; // hold it open, say nothing
            drop(socket);
        });
        let c = parse(&format!("Server=tcp:127.0.0.1,{port};User Id=app;Password=pw"))
            .unwrap()
            .with_handshake_timeout(Duration::from_millis(20));
        let started = std::time::Instant::now();
        let err = c.connect().await.expect_err("the handshake times out");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        held.abort();
    }

    /// Answers a fixed token, counting requests.
    #[derive(Default)]
    struct FixedToken {
        token: String,
        calls: AtomicU32,
    }

    #[async_trait::async_trait]
    impl SqlTokenSource for FixedToken {
        async fn token(&self) -> Result<String, StoreError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok(self.token.clone())
        }
    }

    /// Fails like an unreachable identity endpoint.
    struct NoToken;

    #[async_trait::async_trait]
    impl SqlTokenSource for NoToken {
        async fn token(&self) -> Result<String, StoreError> {
            Err(StoreError::Unavailable(anyhow::anyhow!("identity endpoint down")))
        }
    }

    #[tokio::test]
    async fn the_entra_token_reaches_the_tds_login_packet() {
        let server = FakeServer::start(Reply::LoginOk).await;
        let tokens = Arc::new(FixedToken { token: "eyJ-meterline-test-token".into(), ..Default::default() });
        let c = MssqlConnector::with_token_source(
            &secret(&format!(
                "Server=tcp:127.0.0.1,{};Database=m;Authentication=Active Directory Default",
                server.port
            )),
            tokens.clone(),
        )
        .unwrap()
        .without_tls_for_tests();

        let first = c.connect().await.unwrap();
        let second = c.connect().await.unwrap();
        drop((first, second));
        assert_eq!(tokens.calls.load(Ordering::SeqCst), 2, "every new connection asks for a (cached) token");
        let logins = server.logins();
        assert_eq!(logins.len(), 2);
        for login in logins {
            assert!(contains(&login, &utf16("eyJ-meterline-test-token")), "token missing from LOGIN7");
            assert!(contains(&login, &utf16("meterline")), "application name missing from LOGIN7");
        }
    }

    #[tokio::test]
    async fn no_token_means_no_connection_and_unavailable() {
        let server = FakeServer::start(Reply::LoginOk).await;
        let c = MssqlConnector::with_token_source(
            &secret(&format!("Server=127.0.0.1,{};Authentication=Active Directory Managed Identity", server.port)),
            Arc::new(NoToken),
        )
        .unwrap()
        .without_tls_for_tests();
        assert!(matches!(c.connect().await, Err(StoreError::Unavailable(_))));
        assert!(server.logins().is_empty());
        let sql_login = secret("Server=db;User Id=a;Password=b");
        assert!(MssqlConnector::with_token_source(&sql_login, Arc::new(NoToken)).is_err());
    }

    #[tokio::test]
    async fn a_sql_login_sends_the_user_and_no_token() {
        let server = FakeServer::start(Reply::LoginOk).await;
        let c = parse(&format!("Server=tcp:127.0.0.1,{};User Id=meter_app;Password=pw", server.port))
            .unwrap()
            .without_tls_for_tests();
        c.connect().await.unwrap();
        let logins = server.logins();
        assert!(contains(&logins[0], &utf16("meter_app")));
        assert!(!contains(&logins[0], &utf16("eyJ")));
    }

    #[tokio::test]
    async fn a_gateway_redirect_is_followed_once() {
        let target = FakeServer::start(Reply::LoginOk).await;
        let gateway = FakeServer::start(Reply::Route { host: "127.0.0.1".into(), port: target.port }).await;
        let c = parse(&format!("Server=tcp:127.0.0.1,{};User Id=app;Password=pw", gateway.port))
            .unwrap()
            .without_tls_for_tests();
        c.connect().await.unwrap();
        assert_eq!((gateway.logins().len(), target.logins().len()), (1, 1));
    }

    #[tokio::test]
    async fn a_second_redirect_is_an_error() {
        let end = FakeServer::start(Reply::LoginOk).await;
        let second = FakeServer::start(Reply::Route { host: "127.0.0.1".into(), port: end.port }).await;
        let first = FakeServer::start(Reply::Route { host: "127.0.0.1".into(), port: second.port }).await;
        let c = parse(&format!("Server=tcp:127.0.0.1,{};User Id=app;Password=pw", first.port))
            .unwrap()
            .without_tls_for_tests();
        let err = c.connect().await.expect_err("two redirects");
        assert!(matches!(err, StoreError::Other(_)), "{err:?}");
        assert_eq!((first.logins().len(), second.logins().len(), end.logins().len()), (1, 1, 0));
    }

    #[tokio::test]
    async fn a_server_error_at_login_is_classified_by_number() {
        for (number, message, transient) in [
            (40613, "Database 'meterline' on server 'srv' is not currently available.", true),
            (4060, "Cannot open database \"meterline\" requested by the login.", true),
            (18456, "Login failed for user 'app'.", false),
        ] {
            let server = FakeServer::start(Reply::LoginError { number, message }).await;
            let c = parse(&format!("Server=tcp:127.0.0.1,{};User Id=app;Password=pw", server.port))
                .unwrap()
                .without_tls_for_tests();
            let err = c.connect().await.expect_err("login refused");
            assert_eq!(super::super::errors::is_retryable(&err), transient, "{number}: {err:?}");
            let text = error_text(err);
            assert!(text.contains(&number.to_string()) && text.contains(message), "{text}");
        }
    }

    #[tokio::test]
    async fn the_pool_connects_lazily_and_checks_connections_with_select_1() {
        let server = FakeServer::start(Reply::LoginOk).await;
        let c = parse(&format!("Server=tcp:127.0.0.1,{};User Id=app;Password=pw", server.port))
            .unwrap()
            .without_tls_for_tests();
        let pool = pool(Arc::new(c), 2).await.unwrap();
        assert_eq!(server.logins().len(), 0, "building the pool does not connect");
        {
            let mut conn = pool.get().await.map_err(pool_error).unwrap();
            let row = conn.simple_query("SELECT 1").await.unwrap().into_row().await.unwrap().unwrap();
            assert_eq!(row.get::<i32, _>(0), Some(1));
        }
        let _again = pool.get().await.map_err(pool_error).unwrap();
        assert_eq!(server.logins().len(), 1, "the connection is reused");
        assert_eq!(server.batches(), 4, "the session options once, SELECT 1 at both checkouts, plus the query above");
        assert!(super::pool(Arc::new(parse("Server=db;User Id=a;Password=b").unwrap()), 0).await.is_err());
    }

    #[tokio::test]
    async fn a_connection_the_server_dropped_fails_as_unavailable() {
        let server = FakeServer::start(Reply::LoginOkThenHangUp).await;
        let c = parse(&format!("Server=tcp:127.0.0.1,{};User Id=app;Password=pw", server.port))
            .unwrap()
            .without_tls_for_tests();
        // The connector alone logs in; the pool's manager then sets session options, which meets the hang-up.
        let mut conn = MssqlConn { client: c.connect().await.unwrap(), in_flight: false };
        let manager = MssqlManager::new(Arc::new(c));
        let err = bb8::ManageConnection::is_valid(&manager, &mut conn).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(!bb8::ManageConnection::has_broken(&manager, &mut conn));
        // A transaction cut off by its timeout leaves the flag set: the pool discards the connection.
        conn.in_flight = true;
        assert!(bb8::ManageConnection::has_broken(&manager, &mut conn));
        let err = bb8::ManageConnection::connect(&manager).await.unwrap_err();
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
    }

    #[tokio::test]
    async fn a_pool_over_an_unreachable_server_builds_and_get_answers_unavailable() {
        let port = closed_port().await;
        let c = parse(&format!("Server=tcp:127.0.0.1,{port};User Id=app;Password=pw")).unwrap();
        let pool = pool_with_timeout(Arc::new(c), 1, Duration::from_millis(50)).await.unwrap();
        let err = pool_error(pool.get().await.expect_err("nothing listens"));
        assert!(matches!(err, StoreError::Unavailable(_)), "{err:?}");
        assert!(matches!(pool_error(bb8::RunError::User(StoreError::Conflict("x".into()))), StoreError::Conflict(_)));
    }

    // ---- a scripted TDS server ----

    fn utf16(s: &str) -> Vec<u8> {
        s.encode_utf16().flat_map(u16::to_le_bytes).collect()
    }

    fn contains(haystack: &[u8], needle: &[u8]) -> bool {
        haystack.windows(needle.len()).any(|w| w == needle)
    }

    #[derive(Clone)]
    enum Reply {
        LoginOk,
        LoginOkThenHangUp,
        LoginError { number: u32, message: &'static str },
        Route { host: String, port: u16 },
    }

    /// Just enough of SQL Server for tiberius without TLS: PRELOGIN (encryption not supported), LOGIN7 (recorded),
    /// then the scripted answer, then `1` for every SQL batch.
    struct FakeServer {
        port: u16,
        logins: Arc<Mutex<Vec<Vec<u8>>>>,
        batches: Arc<AtomicU32>,
        task: tokio::task::JoinHandle<()>,
    }

    impl Drop for FakeServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl FakeServer {
        async fn start(reply: Reply) -> Self {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let port = listener.local_addr().unwrap().port();
            let logins = Arc::new(Mutex::new(Vec::new()));
            let batches = Arc::new(AtomicU32::new(0));
            let (l, b) = (logins.clone(), batches.clone());
            let task = tokio::spawn(async move {
                loop {
                    let Ok((socket, _)) = listener.accept().await else { return };
                    let (reply, l, b) = (reply.clone(), l.clone(), b.clone());
                    tokio::spawn(async move {
                        let _ = serve(socket, reply, l, b).await;
                    });
                }
            });
            Self { port, logins, batches, task }
        }

        fn logins(&self) -> Vec<Vec<u8>> {
            self.logins.lock().unwrap().clone()
        }

        fn batches(&self) -> u32 {
            self.batches.load(Ordering::SeqCst)
        }
    }

    async fn serve(
        mut socket: TcpStream,
        reply: Reply,
        logins: Arc<Mutex<Vec<Vec<u8>>>>,
        batches: Arc<AtomicU32>,
    ) -> std::io::Result<()> {
        let (kind, _) = read_message(&mut socket).await?;
        assert_eq!(kind, 0x12, "PRELOGIN first");
        // options: VERSION at 11 (6 bytes), ENCRYPTION at 17 (1 byte: 2 = not supported), terminator
        let prelogin = [0x00, 0x00, 11, 0x00, 6, 0x01, 0x00, 17, 0x00, 1, 0xFF, 16, 0, 0, 0, 0, 0, 0x02];
        write_message(&mut socket, &prelogin).await?;

        let (kind, login) = read_message(&mut socket).await?;
        assert_eq!(kind, 0x10, "LOGIN7 second");
        logins.lock().unwrap().push(login);
        match reply {
            Reply::LoginOk => write_message(&mut socket, &done(0, 0, 0)).await?,
            Reply::LoginOkThenHangUp => {
                write_message(&mut socket, &done(0, 0, 0)).await?;
                return socket.shutdown().await;
            }
            Reply::LoginError { number, message } => {
                let mut tokens = error_token(number, message);
                tokens.extend(done(0x0002, 0, 0));
                return write_message(&mut socket, &tokens).await;
            }
            Reply::Route { host, port } => {
                let mut tokens = routing_token(&host, port);
                tokens.extend(done(0, 0, 0));
                return write_message(&mut socket, &tokens).await;
            }
        }
        loop {
            let (kind, _) = match read_message(&mut socket).await {
                Ok(message) => message,
                Err(_) => return Ok(()), // the client went away
            };
            if kind == 0x01 {
                batches.fetch_add(1, Ordering::SeqCst);
                // COLMETADATA: one unnamed INT column; ROW: 1; DONE with a count of one row
                let mut tokens = vec![0x81, 1, 0, 0, 0, 0, 0, 0, 0, 0x38, 0];
                tokens.extend([0xD1, 1, 0, 0, 0]);
                tokens.extend(done(0x0010, 0xC1, 1));
                write_message(&mut socket, &tokens).await?;
            }
        }
    }

    /// Reads one TDS message (packets up to end-of-message); returns its type and payload.
    async fn read_message(socket: &mut TcpStream) -> std::io::Result<(u8, Vec<u8>)> {
        let mut payload = Vec::new();
        loop {
            let mut header = [0u8; 8];
            socket.read_exact(&mut header).await?;
            let length = u16::from_be_bytes([header[2], header[3]]) as usize;
            let mut body = vec![0u8; length.saturating_sub(8)];
            socket.read_exact(&mut body).await?;
            payload.extend(body);
            if header[1] & 0x01 != 0 {
                return Ok((header[0], payload));
            }
        }
    }

    /// Writes one TABULAR RESULT packet.
    async fn write_message(socket: &mut TcpStream, payload: &[u8]) -> std::io::Result<()> {
        let length = u16::try_from(payload.len() + 8).unwrap().to_be_bytes();
        let mut packet = vec![0x04, 0x01, length[0], length[1], 0, 0, 1, 0];
        packet.extend_from_slice(payload);
        socket.write_all(&packet).await
    }

    fn done(status: u16, command: u16, rows: u64) -> Vec<u8> {
        let mut token = vec![0xFD];
        token.extend(status.to_le_bytes());
        token.extend(command.to_le_bytes());
        token.extend(rows.to_le_bytes());
        token
    }

    fn error_token(number: u32, message: &str) -> Vec<u8> {
        let mut body = number.to_le_bytes().to_vec();
        body.extend([1, 16]); // state, class
        body.extend(u16::try_from(message.encode_utf16().count()).unwrap().to_le_bytes());
        body.extend(utf16(message));
        for name in ["srv", ""] {
            body.push(u8::try_from(name.len()).unwrap());
            body.extend(utf16(name));
        }
        body.extend(1u32.to_le_bytes()); // line
        let mut token = vec![0xAA];
        token.extend(u16::try_from(body.len()).unwrap().to_le_bytes());
        token.extend(body);
        token
    }

    fn routing_token(host: &str, port: u16) -> Vec<u8> {
        let mut body = vec![20]; // ENVCHANGE type: routing
        body.extend(0u16.to_le_bytes()); // routing data length (not read)
        body.push(0); // protocol: TCP
        body.extend(port.to_le_bytes());
        body.extend(u16::try_from(host.len()).unwrap().to_le_bytes());
        body.extend(utf16(host));
        let mut token = vec![0xE3];
        token.extend(u16::try_from(body.len()).unwrap().to_le_bytes());
        token.extend(body);
        token
    }
}
