//! Signing keys: OpenID Connect discovery and a JWKS cache (refresh, unknown-`kid` refetch, last good set), or one static local key.
//!
//! The cache answers from memory. A key set older than the refresh interval is still served while one
//! background task fetches a new one. A token naming an unknown `kid` triggers at most one refetch per
//! `min_refetch` interval, so forged tokens cannot make Meterline hammer the identity provider. When the
//! provider is down, the last good key set stays in use.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use jsonwebtoken::DecodingKey;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use serde::Deserialize;

use crate::clock::Clock;

/// While no key set is loaded, fetches are retried at most this often.
const EMPTY_RETRY: Duration = Duration::from_secs(5);

/// The parts of an OpenID provider's discovery document Meterline uses.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OidcMetadata {
    /// For Entra's `common`/`organizations` authorities this holds a `{tenantid}` placeholder.
    pub issuer: String,
    pub jwks_uri: String,
}

/// Why no key could be produced for a token.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("no signing key with kid {0:?} is published by the identity provider")]
    UnknownKid(String),
    #[error("the identity provider's keys cannot be fetched: {0:#}")]
    ProviderUnavailable(anyhow::Error),
}

/// Fetches discovery and JWKS documents; a trait so tests can count and fail fetches.
#[async_trait]
pub trait KeyFetcher: Send + Sync + 'static {
    async fn metadata(&self) -> anyhow::Result<OidcMetadata>;
    async fn jwks(&self, uri: &str) -> anyhow::Result<JwkSet>;
}

/// The real fetcher: `{authority}/.well-known/openid-configuration`, then its `jwks_uri`, with a timeout.
pub struct HttpFetcher {
    client: reqwest::Client,
    discovery_url: String,
}

impl HttpFetcher {
    pub fn new(authority: &str, timeout: Duration) -> anyhow::Result<Self> {
        let client =
            reqwest::Client::builder().timeout(timeout).redirect(reqwest::redirect::Policy::limited(3)).build()?;
        let discovery_url = format!("{}/.well-known/openid-configuration", authority.trim_end_matches('/'));
        Ok(HttpFetcher { client, discovery_url })
    }
}

#[async_trait]
impl KeyFetcher for HttpFetcher {
    async fn metadata(&self) -> anyhow::Result<OidcMetadata> {
        let response = self.client.get(&self.discovery_url).send().await?.error_for_status()?;
        Ok(response.json().await?)
    }

    async fn jwks(&self, uri: &str) -> anyhow::Result<JwkSet> {
        Ok(self.client.get(uri).send().await?.error_for_status()?.json().await?)
    }
}

/// A verification key with the algorithms it may be used with.
#[derive(Clone)]
pub struct VerificationKey {
    pub key: Arc<DecodingKey>,
    /// `Some` when the JWK pins one algorithm (`alg`); a token with another algorithm is refused.
    pub alg: Option<KeyAlgorithm>,
}

#[derive(Default)]
struct Loaded {
    metadata: Option<OidcMetadata>,
    keys: HashMap<String, VerificationKey>,
    fetched_at: Option<DateTime<Utc>>,
    last_attempt: Option<DateTime<Utc>>,
}

/// Timing of the JWKS cache.
#[derive(Debug, Clone, Copy)]
pub struct CacheTiming {
    /// Age after which the key set is refreshed in the background.
    pub refresh: Duration,
    /// Least time between two fetches caused by unknown `kid`s or failures.
    pub min_refetch: Duration,
}

/// The OIDC key cache.
pub struct KeyCache {
    fetcher: Arc<dyn KeyFetcher>,
    clock: Arc<dyn Clock>,
    timing: CacheTiming,
    loaded: RwLock<Loaded>,
    /// Single flight: one fetch at a time; others wait and then read what it loaded.
    fetching: tokio::sync::Mutex<()>,
    /// Every fetch passes it: while open, a refresh fails at once (the last good keys keep serving).
    breaker: Arc<crate::resilience::Breaker>,
}

impl KeyCache {
    pub fn new(fetcher: Arc<dyn KeyFetcher>, clock: Arc<dyn Clock>, timing: CacheTiming) -> Arc<Self> {
        let breaker =
            crate::resilience::Breaker::new("openid", crate::resilience::BreakerPolicy::DEFAULT, clock.clone());
        Arc::new(KeyCache {
            fetcher,
            clock,
            timing,
            loaded: RwLock::default(),
            fetching: tokio::sync::Mutex::new(()),
            breaker,
        })
    }

    /// The OpenID provider's circuit breaker.
    pub fn breaker(&self) -> &Arc<crate::resilience::Breaker> {
        &self.breaker
    }

    fn age_exceeds(&self, at: Option<DateTime<Utc>>, limit: Duration) -> bool {
        match at {
            None => true,
            Some(at) => (self.clock.now() - at).to_std().unwrap_or_default() >= limit,
        }
    }

    /// The provider's metadata, fetching it if nothing was loaded yet.
    pub async fn metadata(self: &Arc<Self>) -> Result<OidcMetadata, KeyError> {
        if let Some(metadata) = self.loaded.read().expect("key cache lock").metadata.clone() {
            return Ok(metadata);
        }
        self.refresh().await?;
        self.loaded
            .read()
            .expect("key cache lock")
            .metadata
            .clone()
            .ok_or_else(|| KeyError::ProviderUnavailable(anyhow::anyhow!("the discovery document was not loaded")))
    }

    /// Whether the keys loaded now hold `kid` (no fetch): a token validated with a key the provider has since
    /// removed is not taken from the token cache any more.
    pub fn has(&self, kid: &str) -> bool {
        self.loaded.read().expect("key cache lock").keys.contains_key(kid)
    }

    /// The key for `kid`, refreshing as the rules in the module documentation say.
    pub async fn key(self: &Arc<Self>, kid: &str) -> Result<VerificationKey, KeyError> {
        let (found, stale) = {
            let loaded = self.loaded.read().expect("key cache lock");
            (loaded.keys.get(kid).cloned(), self.age_exceeds(loaded.fetched_at, self.timing.refresh))
        };
        if let Some(key) = found {
            if stale {
                let cache = self.clone();
                tokio::spawn(async move {
                    if let Err(err) = cache.refresh().await {
                        tracing::warn!(error = %err, "background JWKS refresh failed; keeping the last good keys");
                    }
                });
            }
            return Ok(key);
        }
        // Unknown kid: refetch at most once per min_refetch, whoever asks.
        self.refresh().await?;
        self.loaded
            .read()
            .expect("key cache lock")
            .keys
            .get(kid)
            .cloned()
            .ok_or_else(|| KeyError::UnknownKid(kid.into()))
    }

    /// Fetches discovery and JWKS unless another fetch was attempted within `min_refetch` (within a few
    /// seconds while nothing is loaded yet, so a provider that was down at startup is found again quickly).
    pub async fn refresh(self: &Arc<Self>) -> Result<(), KeyError> {
        let _flight = self.fetching.lock().await;
        let (has_keys, last_attempt) = {
            let loaded = self.loaded.read().expect("key cache lock");
            (!loaded.keys.is_empty(), loaded.last_attempt)
        };
        let min_gap = if has_keys { self.timing.min_refetch } else { self.timing.min_refetch.min(EMPTY_RETRY) };
        if !self.age_exceeds(last_attempt, min_gap) {
            return Ok(()); // Someone fetched recently: use what is loaded.
        }
        let attempt = self.breaker.admit().map_err(|r| KeyError::ProviderUnavailable(anyhow::Error::new(r)))?;
        self.loaded.write().expect("key cache lock").last_attempt = Some(self.clock.now());
        let fetched = async {
            let metadata = self.fetcher.metadata().await?;
            let set = self.fetcher.jwks(&metadata.jwks_uri).await?;
            anyhow::Ok((metadata, set))
        }
        .await;
        attempt.finish(fetched.is_ok());
        let (metadata, set) = fetched.map_err(KeyError::ProviderUnavailable)?;
        let keys = usable_keys(&set);
        if keys.is_empty() {
            return Err(KeyError::ProviderUnavailable(anyhow::anyhow!("the JWKS has no usable RSA signing key")));
        }
        tracing::info!(keys = keys.len(), issuer = %metadata.issuer, "loaded identity provider signing keys");
        let mut loaded = self.loaded.write().expect("key cache lock");
        loaded.metadata = Some(metadata);
        loaded.keys = keys;
        loaded.fetched_at = Some(self.clock.now());
        Ok(())
    }
}

/// RSA signature keys with a `kid`; encryption keys and other key types are skipped.
fn usable_keys(set: &JwkSet) -> HashMap<String, VerificationKey> {
    set.keys
        .iter()
        .filter(|jwk| !matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)))
        .filter(|jwk| matches!(jwk.algorithm, jsonwebtoken::jwk::AlgorithmParameters::RSA(_)))
        .filter_map(|jwk: &Jwk| {
            let kid = jwk.common.key_id.clone()?;
            let key = DecodingKey::from_jwk(jwk).ok()?;
            Some((kid, VerificationKey { key: Arc::new(key), alg: jwk.common.key_algorithm }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{ManualClock, SystemClock};
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    const N: &str = "u1SU1LfVLPHCozMxH2Mo4lgOEePzNm0tRgeLezV6ffAt0gunVTLw7onLRnrq0_IzW7yWR7QkrmBL7jTKEn5u-qKhbwKfBstIs-bMY2Zkp18gnTxKLxoS2tFczGkPLPgizskuemMghRniWaoLcyehkd3qqGElvW_VDL5AaWTg0nLVkjRo9z-40RQzuVaE8AkAFmxZzow3x-VJYKdjykkJ0iT9wCS0DRTXu269V264Vf_3jvredZiKRkgwlL9xNAwxXFg0x_XFw005UWVRIkdgcKWTjpBP2dPwVZ4WWC-9aGVd-Gyn1o0CLelf4rEjGoXbAAEgAqeGUxrcIlbjXfbcmw";

    fn jwk(kid: &str) -> serde_json::Value {
        serde_json::json!({"kty": "RSA", "kid": kid, "use": "sig", "alg": "RS256", "n": N, "e": "AQAB"})
    }

    struct Fake {
        metadata_calls: AtomicUsize,
        jwks_calls: AtomicUsize,
        kids: Mutex<Vec<&'static str>>,
        down: Mutex<bool>,
    }

    #[async_trait]
    impl KeyFetcher for Fake {
        async fn metadata(&self) -> anyhow::Result<OidcMetadata> {
            self.metadata_calls.fetch_add(1, Ordering::SeqCst);
            anyhow::ensure!(!*self.down.lock().unwrap(), "connection refused");
            Ok(OidcMetadata { issuer: "https://idp.example/".into(), jwks_uri: "https://idp.example/jwks".into() })
        }

        async fn jwks(&self, _uri: &str) -> anyhow::Result<JwkSet> {
            self.jwks_calls.fetch_add(1, Ordering::SeqCst);
            let keys: Vec<_> = self.kids.lock().unwrap().iter().map(|k| jwk(k)).collect();
            Ok(serde_json::from_value(serde_json::json!({ "keys": keys }))?)
        }
    }

    fn setup(kids: Vec<&'static str>) -> (Arc<Fake>, Arc<ManualClock>, Arc<KeyCache>) {
        let fake = Arc::new(Fake {
            metadata_calls: AtomicUsize::new(0),
            jwks_calls: AtomicUsize::new(0),
            kids: Mutex::new(kids),
            down: Mutex::new(false),
        });
        let clock = Arc::new(ManualClock::new(SystemClock.now()));
        let timing = CacheTiming { refresh: Duration::from_secs(3600), min_refetch: Duration::from_secs(300) };
        (fake.clone(), clock.clone(), KeyCache::new(fake, clock, timing))
    }

    #[tokio::test]
    async fn keys_are_fetched_once_and_served_from_memory() {
        let (fake, _, cache) = setup(vec!["k1"]);
        for _ in 0..5 {
            assert!(cache.key("k1").await.is_ok());
        }
        assert_eq!(fake.jwks_calls.load(Ordering::SeqCst), 1);
        assert_eq!(cache.metadata().await.unwrap().issuer, "https://idp.example/");
    }

    #[tokio::test]
    async fn unknown_kids_refetch_at_most_once_per_interval() {
        let (fake, clock, cache) = setup(vec!["k1"]);
        cache.key("k1").await.unwrap();
        clock.advance(chrono::Duration::seconds(301));
        for _ in 0..10 {
            assert!(matches!(cache.key("forged").await, Err(KeyError::UnknownKid(_))));
        }
        assert_eq!(fake.jwks_calls.load(Ordering::SeqCst), 2, "one refetch for ten forged kids");
        fake.kids.lock().unwrap().push("k2");
        assert!(matches!(cache.key("k2").await, Err(KeyError::UnknownKid(_))), "too soon to refetch again");
        clock.advance(chrono::Duration::seconds(301));
        assert!(cache.key("k2").await.is_ok(), "a rotated-in key is found on the next allowed refetch");
    }

    #[tokio::test]
    async fn the_last_good_keys_survive_a_provider_outage() {
        let (fake, clock, cache) = setup(vec!["k1"]);
        cache.key("k1").await.unwrap();
        *fake.down.lock().unwrap() = true;
        clock.advance(chrono::Duration::hours(2));
        assert!(cache.key("k1").await.is_ok(), "stale keys are served while the refresh fails");
        tokio::task::yield_now().await;
        assert!(matches!(cache.key("k9").await, Err(KeyError::ProviderUnavailable(_)) | Err(KeyError::UnknownKid(_))));
        assert!(cache.key("k1").await.is_ok());
    }

    #[tokio::test]
    async fn an_unreachable_provider_with_nothing_loaded_is_unavailable() {
        let (fake, _, cache) = setup(vec!["k1"]);
        *fake.down.lock().unwrap() = true;
        assert!(matches!(cache.key("k1").await, Err(KeyError::ProviderUnavailable(_))));
        assert!(matches!(cache.metadata().await, Err(KeyError::ProviderUnavailable(_))));
    }

    #[tokio::test]
    async fn a_provider_that_keeps_failing_opens_the_breaker_which_refuses_without_fetching_then_probes() {
        use crate::resilience::{BreakerState, Refusal, RefusalKind};
        let (fake, clock, _) = setup(vec!["k1"]);
        // Refetches allowed every second, so the breaker (open for 5 s) is what holds them back.
        let timing = CacheTiming { refresh: Duration::from_secs(3600), min_refetch: Duration::from_secs(1) };
        let cache = KeyCache::new(fake.clone(), clock.clone(), timing);
        *fake.down.lock().unwrap() = true;
        for _ in 0..crate::resilience::BreakerPolicy::DEFAULT.failures_to_open {
            clock.advance(chrono::Duration::seconds(2));
            assert!(matches!(cache.key("k1").await, Err(KeyError::ProviderUnavailable(_))));
        }
        assert_eq!(cache.breaker().state(), BreakerState::Open);
        clock.advance(chrono::Duration::seconds(2));
        let calls = fake.metadata_calls.load(Ordering::SeqCst);
        let Err(KeyError::ProviderUnavailable(cause)) = cache.refresh().await else { panic!("refused") };
        assert_eq!(Refusal::find(&cause).map(|r| r.kind), Some(RefusalKind::CircuitOpen));
        assert_eq!(fake.metadata_calls.load(Ordering::SeqCst), calls, "an open breaker does not call the provider");
        *fake.down.lock().unwrap() = false;
        clock.advance(chrono::Duration::seconds(3));
        assert!(cache.key("k1").await.is_ok(), "the half-open probe finds the provider back");
        assert_eq!(cache.breaker().state(), BreakerState::Closed);
    }
}
