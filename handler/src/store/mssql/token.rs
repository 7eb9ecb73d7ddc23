//! Entra ID access tokens for SQL Server / Azure SQL: a cached source that refreshes before expiry.
//!
//! [`EntraTokenSource`] asks an `azure_identity` credential for the scope [`SQL_SCOPE`] (managed identity in
//! Azure, the developer's `az` / `azd` login locally), keeps the token, and fetches a new one when less than the
//! refresh margin (5 minutes by default) remains. Concurrent callers wait for one refresh instead of each asking.
//!
//! `azure_identity`'s credentials keep a cache of their own that refreshes 5 minutes before expiry; a margin
//! larger than that makes this source ask early but can get the same token back until then.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use azure_core::credentials::{AccessToken, TokenCredential};
use azure_identity::{
    DeveloperToolsCredential, ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId,
};
use chrono::{DateTime, Utc};

use crate::clock::{Clock, SystemClock};
use crate::store::StoreError;

/// The scope (resource + `/.default`) of Azure SQL Database, Managed Instance, Synapse and Fabric SQL.
pub const SQL_SCOPE: &str = "https://database.windows.net/.default";

/// Refresh when less than this remains before the token expires.
pub const DEFAULT_REFRESH_MARGIN: Duration = Duration::from_secs(5 * 60);

/// Give up on one token request after this long (an IMDS endpoint that does not answer, a stuck `az`), so callers
/// queued behind the refresh are not held indefinitely.
pub const DEFAULT_FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the SQL connector gets a bearer token for each new connection.
#[async_trait]
pub trait SqlTokenSource: Send + Sync {
    /// A token valid for at least a few more minutes. Failures are [`StoreError::Unavailable`]: without a token the
    /// store cannot be reached, and the identity endpoint may be back in a moment.
    async fn token(&self) -> Result<String, StoreError>;
}

/// A cached Entra ID token for [`SQL_SCOPE`] from any `azure_core` token credential.
pub struct EntraTokenSource {
    credential: Arc<dyn TokenCredential>,
    scope: String,
    refresh_margin: Duration,
    fetch_timeout: Duration,
    clock: Arc<dyn Clock>,
    cached: tokio::sync::Mutex<Option<AccessToken>>,
}

impl fmt::Debug for EntraTokenSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EntraTokenSource")
            .field("credential", &self.credential)
            .field("scope", &self.scope)
            .field("refresh_margin", &self.refresh_margin)
            .field("fetch_timeout", &self.fetch_timeout)
            .finish_non_exhaustive()
    }
}

impl EntraTokenSource {
    /// A source over `credential`, with the default margin and the system clock.
    pub fn new(credential: Arc<dyn TokenCredential>) -> Self {
        Self {
            credential,
            scope: SQL_SCOPE.to_string(),
            refresh_margin: DEFAULT_REFRESH_MARGIN,
            fetch_timeout: DEFAULT_FETCH_TIMEOUT,
            clock: Arc::new(SystemClock),
            cached: tokio::sync::Mutex::new(None),
        }
    }

    /// The managed identity of the Function App: system-assigned, or the user-assigned one with `client_id`.
    ///
    /// `azure_identity` speaks the App Service protocol when `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set
    /// (App Service, Functions) and IMDS otherwise (VMs).
    pub fn managed_identity(client_id: Option<String>) -> Result<Self, StoreError> {
        let options = ManagedIdentityCredentialOptions {
            user_assigned_id: client_id.map(UserAssignedId::ClientId),
            ..Default::default()
        };
        let credential = ManagedIdentityCredential::new(Some(options))
            .map_err(|e| StoreError::Other(anyhow::Error::new(e).context("setting up the managed identity")))?;
        Ok(Self::new(credential))
    }

    /// The developer's own login for local runs: Azure CLI (`az login`), then Azure Developer CLI (`azd auth login`).
    pub fn developer() -> Result<Self, StoreError> {
        let credential = DeveloperToolsCredential::new(None).map_err(|e| {
            StoreError::Other(anyhow::Error::new(e).context("setting up the developer tools credential"))
        })?;
        Ok(Self::new(credential))
    }

    /// What `Authentication=Active Directory Default` means here: the managed identity where the platform offers
    /// one (App Service / Functions set `IDENTITY_ENDPOINT`; older hosts `MSI_ENDPOINT`), the developer's login
    /// everywhere else. `client_id` selects a user-assigned identity and is ignored for the developer login.
    pub fn active_directory_default(client_id: Option<String>) -> Result<Self, StoreError> {
        if platform_offers_managed_identity(|name| std::env::var_os(name).is_some()) {
            Self::managed_identity(client_id)
        } else {
            Self::developer()
        }
    }

    /// Refresh when less than `margin` remains (default [`DEFAULT_REFRESH_MARGIN`]).
    pub fn with_refresh_margin(mut self, margin: Duration) -> Self {
        self.refresh_margin = margin;
        self
    }

    /// Give up on one token request after `timeout` (default [`DEFAULT_FETCH_TIMEOUT`]).
    pub fn with_fetch_timeout(mut self, timeout: Duration) -> Self {
        self.fetch_timeout = timeout;
        self
    }

    /// Judge expiry against `clock` instead of the system clock.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// How long `token` stays valid after `now` (negative once expired).
    fn remaining(token: &AccessToken, now: DateTime<Utc>) -> chrono::Duration {
        let expires = token.expires_on;
        match DateTime::<Utc>::from_timestamp(expires.unix_timestamp(), expires.nanosecond()) {
            Some(expires) => expires - now,
            None => chrono::Duration::zero(),
        }
    }
}

/// True when the environment (looked up through `is_set`) says a managed identity endpoint is available.
fn platform_offers_managed_identity(is_set: impl Fn(&str) -> bool) -> bool {
    is_set("IDENTITY_ENDPOINT") || is_set("MSI_ENDPOINT")
}

#[async_trait]
impl SqlTokenSource for EntraTokenSource {
    async fn token(&self) -> Result<String, StoreError> {
        // Held across the fetch, so concurrent callers wait for this refresh and then find the new token.
        let mut cached = self.cached.lock().await;
        let now = self.clock.now();
        let margin = chrono::Duration::from_std(self.refresh_margin).unwrap_or(chrono::Duration::MAX);
        if let Some(token) = cached.as_ref()
            && Self::remaining(token, now) > margin
        {
            return Ok(token.token.secret().to_string());
        }

        let fetched =
            match tokio::time::timeout(self.fetch_timeout, self.credential.get_token(&[&self.scope], None)).await {
                Ok(result) => result.map_err(anyhow::Error::new),
                Err(_) => Err(anyhow::anyhow!("the token request took longer than {:?}", self.fetch_timeout)),
            };
        match fetched {
            Ok(fresh) => {
                let remaining = Self::remaining(&fresh, now);
                if remaining <= margin {
                    tracing::warn!(
                        remaining_secs = remaining.num_seconds(),
                        "the identity endpoint returned a token that expires within the refresh margin"
                    );
                } else {
                    tracing::debug!(remaining_secs = remaining.num_seconds(), "fetched an Entra ID token for SQL");
                }
                let secret = fresh.token.secret().to_string();
                *cached = Some(fresh);
                Ok(secret)
            }
            Err(err) => match cached.as_ref() {
                // Still valid, only inside the margin: keep serving it and try again on the next call.
                Some(token) if Self::remaining(token, now) > chrono::Duration::zero() => {
                    tracing::warn!(
                        error = %format!("{err:#}"),
                        "refreshing the Entra ID token for SQL failed; using the cached token"
                    );
                    Ok(token.token.secret().to_string())
                }
                _ => Err(StoreError::Unavailable(err.context(format!("getting an Entra ID token for {}", self.scope)))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use azure_core::credentials::TokenRequestOptions;
    use azure_core::time::OffsetDateTime;
    use std::collections::VecDeque;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// Serves scripted answers, counts calls, records scopes; each call takes `delay` (of paused tokio time).
    #[derive(Debug, Default)]
    struct FakeCredential {
        answers: Mutex<VecDeque<Result<(String, i64), String>>>,
        calls: AtomicU32,
        scopes: Mutex<Vec<String>>,
        delay: Duration,
    }

    impl FakeCredential {
        /// `answers`: Ok((token, expires_on unix seconds)) or Err(message).
        fn new(answers: Vec<Result<(&str, i64), &str>>) -> Self {
            Self {
                answers: Mutex::new(
                    answers.into_iter().map(|a| a.map(|(t, e)| (t.to_string(), e)).map_err(str::to_string)).collect(),
                ),
                ..Default::default()
            }
        }

        fn calls(&self) -> u32 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    #[async_trait]
    impl TokenCredential for FakeCredential {
        async fn get_token(
            &self,
            scopes: &[&str],
            _options: Option<TokenRequestOptions<'_>>,
        ) -> azure_core::Result<AccessToken> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            self.scopes.lock().unwrap().extend(scopes.iter().map(|s| s.to_string()));
            if !self.delay.is_zero() {
                tokio::time::sleep(self.delay).await;
            }
            match self.answers.lock().unwrap().pop_front().expect("an unexpected token request") {
                Ok((token, expires)) => {
                    Ok(AccessToken::new(token, OffsetDateTime::from_unix_timestamp(expires).expect("valid time")))
                }
                Err(message) => Err(azure_core::Error::with_message(azure_core::error::ErrorKind::Credential, message)),
            }
        }
    }

    const T0: i64 = 1_800_000_000;

    fn clock_at(unix: i64) -> Arc<ManualClock> {
        Arc::new(ManualClock::new(DateTime::from_timestamp(unix, 0).unwrap()))
    }

    fn source(credential: Arc<FakeCredential>, clock: Arc<ManualClock>) -> EntraTokenSource {
        EntraTokenSource::new(credential).with_clock(clock)
    }

    #[tokio::test]
    async fn caches_until_the_refresh_margin_then_fetches_again() {
        let credential = Arc::new(FakeCredential::new(vec![Ok(("first", T0 + 3600)), Ok(("second", T0 + 7200))]));
        let clock = clock_at(T0);
        let tokens = source(credential.clone(), clock.clone());

        assert_eq!(tokens.token().await.unwrap(), "first");
        assert_eq!(*credential.scopes.lock().unwrap(), [SQL_SCOPE]);
        clock.set(DateTime::from_timestamp(T0 + 3600 - 301, 0).unwrap()); // 5 min 1 s left: still cached
        assert_eq!(tokens.token().await.unwrap(), "first");
        assert_eq!(credential.calls(), 1);

        clock.set(DateTime::from_timestamp(T0 + 3600 - 299, 0).unwrap()); // inside the 5 min margin
        assert_eq!(tokens.token().await.unwrap(), "second");
        assert_eq!(tokens.token().await.unwrap(), "second");
        assert_eq!(credential.calls(), 2);
    }

    #[tokio::test]
    async fn the_margin_is_configurable() {
        let credential = Arc::new(FakeCredential::new(vec![Ok(("first", T0 + 3600)), Ok(("second", T0 + 7200))]));
        let clock = clock_at(T0);
        let tokens = source(credential.clone(), clock.clone()).with_refresh_margin(Duration::from_secs(30 * 60));
        assert_eq!(tokens.token().await.unwrap(), "first");
        clock.set(DateTime::from_timestamp(T0 + 1700, 0).unwrap()); // 31 min 40 s left
        assert_eq!(tokens.token().await.unwrap(), "first");
        clock.set(DateTime::from_timestamp(T0 + 1900, 0).unwrap()); // 28 min 20 s left
        assert_eq!(tokens.token().await.unwrap(), "second");
        assert_eq!(credential.calls(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_refresh() {
        let credential = Arc::new(FakeCredential {
            delay: Duration::from_millis(5),
            ..FakeCredential::new(vec![Ok(("shared", T0 + 3600))])
        });
        let tokens = source(credential.clone(), clock_at(T0));
        let (a, b, c, d) = tokio::join!(tokens.token(), tokens.token(), tokens.token(), tokens.token());
        for token in [a, b, c, d] {
            assert_eq!(token.unwrap(), "shared");
        }
        assert_eq!(credential.calls(), 1);
    }

    #[tokio::test]
    async fn a_failed_refresh_keeps_serving_a_token_that_has_not_expired() {
        let credential = Arc::new(FakeCredential::new(vec![
            Ok(("first", T0 + 600)),
            Err("endpoint down"),
            Ok(("second", T0 + 4000)),
        ]));
        let clock = clock_at(T0);
        let tokens = source(credential.clone(), clock.clone());
        assert_eq!(tokens.token().await.unwrap(), "first");
        clock.set(DateTime::from_timestamp(T0 + 400, 0).unwrap()); // 200 s left: refresh, which fails
        assert_eq!(tokens.token().await.unwrap(), "first");
        assert_eq!(tokens.token().await.unwrap(), "second", "the next call tries again");
        assert_eq!(credential.calls(), 3);
    }

    #[tokio::test]
    async fn failures_without_a_usable_token_are_unavailable() {
        let credential =
            Arc::new(FakeCredential::new(vec![Err("no identity assigned"), Ok(("short", T0 + 60)), Err("down")]));
        let clock = clock_at(T0);
        let tokens = source(credential.clone(), clock.clone());

        let err = tokens.token().await.unwrap_err();
        let StoreError::Unavailable(cause) = &err else { panic!("{err:?}") };
        let text = format!("{cause:#}");
        assert!(text.contains("database.windows.net") && text.contains("no identity assigned"), "{text}");

        assert_eq!(tokens.token().await.unwrap(), "short");
        clock.set(DateTime::from_timestamp(T0 + 61, 0).unwrap()); // expired, and the refresh fails
        assert!(matches!(tokens.token().await, Err(StoreError::Unavailable(_))));
        assert_eq!(credential.calls(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_token_request_that_hangs_times_out() {
        let hanging =
            |answers| Arc::new(FakeCredential { delay: Duration::from_secs(3600), ..FakeCredential::new(answers) });
        let tokens =
            source(hanging(vec![Ok(("late", T0 + 3600))]), clock_at(T0)).with_fetch_timeout(Duration::from_secs(2));
        let started = tokio::time::Instant::now();
        let err = tokens.token().await.unwrap_err();
        assert_eq!(started.elapsed(), Duration::from_secs(2));
        let StoreError::Unavailable(cause) = &err else { panic!("{err:?}") };
        assert!(format!("{cause:#}").contains("longer than 2s"), "{cause:#}");
    }

    #[test]
    fn active_directory_default_picks_the_managed_identity_only_where_the_platform_offers_one() {
        assert!(platform_offers_managed_identity(|n| n == "IDENTITY_ENDPOINT"));
        assert!(platform_offers_managed_identity(|n| n == "MSI_ENDPOINT"));
        assert!(!platform_offers_managed_identity(|n| n == "IDENTITY_HEADER"));
        assert!(!platform_offers_managed_identity(|_| false));
    }

    #[test]
    fn debug_output_names_the_scope_and_no_token() {
        let credential = Arc::new(FakeCredential::new(vec![]));
        let shown = format!("{:?}", EntraTokenSource::new(credential));
        assert!(shown.contains(SQL_SCOPE) && shown.contains("300s") && shown.contains("30s"), "{shown}");
    }
}
