//! Secrets from Azure Key Vault: read at startup with `azure_security_keyvault_secrets`, kept wrapped in
//! [`SecretCell`]s, and refreshed on a schedule so a rotated secret reaches the running process.
//!
//! Settings name the secrets (`METERLINE_KEYVAULT_URL` plus `*_SECRET_NAME`; see `config::KeyVaultConfig`).
//! The zero-code alternative, Functions' own `@Microsoft.KeyVault(SecretUri=…)` app-setting references, needs
//! nothing from this module: the platform resolves them into plain environment variables (README, "Secrets").
//!
//! Each HTTP try is bounded by `METERLINE_KEYVAULT_TIMEOUT_SECS` (default 5 s, [`client_options`]), and every read passes the Key Vault circuit breaker: while it is
//! open (three failed reads in a row, each already retried) a refresh skips the vault at once and the cells keep their last values.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_security_keyvault_secrets::{SecretClient, SecretClientOptions};
use secrecy::SecretString;

use super::SecretCell;
use crate::resilience::{Breaker, BreakerPolicy};

/// A Key Vault, read through `SecretClient`.
pub struct KeyVault {
    client: SecretClient,
    url: String,
    breaker: Arc<Breaker>,
}

impl std::fmt::Debug for KeyVault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyVault").field("url", &self.url).finish_non_exhaustive()
    }
}

impl KeyVault {
    /// A client for the vault at `url` (https), authenticated by `credential`; `options` can replace the transport.
    pub fn new(
        url: &str,
        credential: Arc<dyn TokenCredential>,
        options: Option<SecretClientOptions>,
    ) -> anyhow::Result<Self> {
        let client = SecretClient::new(url, credential, options)
            .map_err(|e| anyhow::anyhow!("Key Vault client for {url}: {e}"))?;
        let clock: Arc<dyn crate::clock::Clock> = Arc::new(crate::clock::SystemClock);
        // Each read is already four tries (client_options' retry policy): three failed reads open the breaker.
        let breaker = Breaker::new("keyvault", BreakerPolicy::RETRIED_CALLS, clock);
        Ok(Self { client, url: url.to_owned(), breaker })
    }

    /// The same client with `breaker` (tests pass one on a manual clock).
    pub fn with_breaker(mut self, breaker: Arc<Breaker>) -> Self {
        self.breaker = breaker;
        self
    }

    /// The vault's circuit breaker.
    pub fn breaker(&self) -> &Arc<Breaker> {
        &self.breaker
    }

    /// The current version of secret `name`; refused at once while the vault's breaker is open.
    pub async fn get(&self, name: &str) -> anyhow::Result<SecretString> {
        let attempt = self.breaker.admit()?;
        let read = self.read(name).await;
        attempt.finish(read.is_ok());
        read
    }

    async fn read(&self, name: &str) -> anyhow::Result<SecretString> {
        let secret = self
            .client
            .get_secret(name, None)
            .await
            .and_then(|response| response.into_model())
            .map_err(|e| anyhow::anyhow!("reading secret {name:?} from {}: {}", self.url, error_chain(&e)))?;
        let value = secret.value.ok_or_else(|| anyhow::anyhow!("secret {name:?} in {} has no value", self.url))?;
        Ok(SecretString::from(value))
    }
}

/// An `azure_core` error with its sources (its own message is often only "non-transport error occurred").
fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

/// The client options for a vault URL. `SecretClient` checks that the resource named in the vault's
/// authentication challenge is a parent domain of the vault's host (`vault.azure.net` for
/// `<name>.vault.azure.net`), so a look-alike URL cannot collect a token for real vaults. An IP address has no
/// parent domain, so for a vault on a loopback address (a local emulator; tokens never leave the machine) the
/// check is off; everywhere else it stays on. `try_timeout` bounds each HTTP try (the retry policy bounds the tries).
pub fn client_options(url: &str, try_timeout: Duration) -> SecretClientOptions {
    let loopback = azure_core::http::Url::parse(url).ok().is_some_and(|u| {
        let host = u.host_str().unwrap_or_default().trim_matches(['[', ']']);
        host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
    });
    let mut options = SecretClientOptions { verify_challenge_resource: Some(!loopback), ..Default::default() };
    // Each try is bounded (a vault that stalls would stall startup), and startup waits for the secrets while the
    // Functions host allows about 30 s until the port opens: a few quick retries, then fail (the host restarts the
    // handler) rather than the SDK's default minute. Should the bounded transport fail to build, the SDK's own
    // remains, as before this bound existed.
    if let Err(err) = super::bound_tries(&mut options.client_options, try_timeout, 3) {
        tracing::warn!(error = %err, "Key Vault calls use the SDK's default transport and retries");
    }
    options
}

/// Secrets read from one vault, by secret name, each in a cell the refresh updates.
#[derive(Debug)]
pub struct VaultSecrets {
    vault: Arc<KeyVault>,
    cells: BTreeMap<String, SecretCell>,
}

impl VaultSecrets {
    /// Reads every named secret once; any failure stops startup (a missing secret is a configuration error).
    pub async fn load(vault: KeyVault, names: &[&str]) -> anyhow::Result<Self> {
        let mut cells = BTreeMap::new();
        for name in names {
            if !cells.contains_key(*name) {
                cells.insert((*name).to_owned(), SecretCell::new(vault.get(name).await?));
            }
        }
        Ok(Self { vault: Arc::new(vault), cells })
    }

    /// The cell of a secret read by [`load`](Self::load).
    pub fn cell(&self, name: &str) -> Option<SecretCell> {
        self.cells.get(name).cloned()
    }

    /// The vault's circuit breaker.
    pub fn breaker(&self) -> &Arc<Breaker> {
        self.vault.breaker()
    }

    /// Reads every secret again now; a secret that cannot be read keeps its previous value.
    pub async fn refresh(&self) -> usize {
        refresh_cells(&self.vault, &self.cells).await
    }

    /// Refreshes every `every` in the background, for the life of the process.
    pub fn spawn_refresh(&self, every: Duration) {
        let (vault, cells) = (self.vault.clone(), self.cells.clone());
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.tick().await; // the first tick is immediate: the values were just loaded
            loop {
                ticks.tick().await;
                // The breaker's state as the round starts (`open`: every read is refused) and how long it took.
                let breaker = vault.breaker().state().as_str();
                let started = std::time::Instant::now();
                let refreshed = refresh_cells(&vault, &cells).await;
                let took_us = started.elapsed().as_micros() as u64;
                tracing::info!(refreshed, total = cells.len(), took_us, breaker, "Key Vault secrets refreshed");
            }
        });
    }
}

async fn refresh_cells(vault: &KeyVault, cells: &BTreeMap<String, SecretCell>) -> usize {
    let mut refreshed = 0;
    for (name, cell) in cells {
        match vault.get(name).await {
            Ok(value) => {
                cell.set(value);
                refreshed += 1;
            }
            // The breaker logged its opening once; the rounds it refuses are counted, not logged per secret.
            Err(err) if crate::resilience::Refusal::find(&err).is_some() => {
                tracing::debug!(secret = %name, error = %format!("{err:#}"), "Key Vault refresh refused; keeping the previous value")
            }
            Err(err) => {
                tracing::warn!(secret = %name, error = %format!("{err:#}"), "Key Vault refresh failed; keeping the previous value")
            }
        }
    }
    refreshed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_challenge_check_is_off_only_for_loopback_vaults() {
        let checked = |url: &str| client_options(url, Duration::from_secs(5)).verify_challenge_resource;
        assert_eq!(checked("https://meterline.vault.azure.net"), Some(true));
        assert_eq!(checked("https://127.0.0.1:8443"), Some(false));
        assert_eq!(checked("https://[::1]:8443"), Some(false));
        assert_eq!(checked("https://localhost:8443"), Some(false));
        assert_eq!(checked("https://127.0.0.1.evil.example"), Some(true));
    }
}
