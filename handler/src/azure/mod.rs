//! Clients of Azure services on the `azure_core` 1.x pipeline: Service Bus send over REST, and Key Vault secrets.
//!
//! Both authenticate with the Function App's managed identity through `azure_identity` (the App Service
//! protocol where `IDENTITY_ENDPOINT` and `IDENTITY_HEADER` are set, IMDS elsewhere); Service Bus also takes a SAS
//! connection string as a fallback. ARCHITECTURE.md says why Service Bus is reached over REST.

pub mod keyvault;
pub mod servicebus;

use std::sync::{Arc, RwLock};
use std::time::Duration;

use azure_core::credentials::TokenCredential;
use azure_identity::{ManagedIdentityCredential, ManagedIdentityCredentialOptions, UserAssignedId};
use secrecy::SecretString;

/// How long one try to the managed identity endpoint may take. A Service Bus send or Key Vault read waits for its
/// token before its own timed try starts, and the SDK's default transport waits up to 60 s per read, retried for
/// a minute: a stalled identity endpoint would hold a send for two minutes.
pub const IDENTITY_TRY_TIMEOUT: Duration = Duration::from_secs(10);

/// The Function App's managed identity: system-assigned, or the user-assigned one with `client_id`. Each token
/// request is bounded: [`IDENTITY_TRY_TIMEOUT`] per try, three tries within about 20 s.
pub fn managed_identity(client_id: Option<&str>) -> anyhow::Result<Arc<dyn TokenCredential>> {
    let mut options = ManagedIdentityCredentialOptions {
        user_assigned_id: client_id.map(|id| UserAssignedId::ClientId(id.to_owned())),
        ..Default::default()
    };
    bound_tries(&mut options.client_options, IDENTITY_TRY_TIMEOUT, 2)?;
    let credential: Arc<dyn TokenCredential> = ManagedIdentityCredential::new(Some(options))?;
    Ok(credential)
}

/// Bounds an Azure SDK client's calls: each HTTP try by `try_timeout` (the SDK's default transport waits up to a
/// minute per read), then at most `max_retries` more tries, 200 ms to 2 s apart, none started after 10 s.
pub(crate) fn bound_tries(
    options: &mut azure_core::http::ClientOptions,
    try_timeout: Duration,
    max_retries: u32,
) -> anyhow::Result<()> {
    let http = reqwest_azure::Client::builder().timeout(try_timeout).build()?;
    options.transport = Some(azure_core::http::Transport::new(Arc::new(http)));
    options.retry = azure_core::http::RetryOptions::exponential(azure_core::http::ExponentialRetryOptions {
        max_retries,
        initial_delay: azure_core::time::Duration::milliseconds(200),
        max_delay: azure_core::time::Duration::seconds(2),
        max_total_elapsed: azure_core::time::Duration::seconds(10),
    });
    Ok(())
}

/// A secret that a background refresh may replace while readers hold the cell (Key Vault rotation).
/// Reading clones the wrapped value; `Debug` never shows it.
#[derive(Clone)]
pub struct SecretCell(Arc<RwLock<SecretString>>);

impl SecretCell {
    pub fn new(value: SecretString) -> Self {
        Self(Arc::new(RwLock::new(value)))
    }

    /// The current value.
    pub fn get(&self) -> SecretString {
        self.0.read().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Replaces the value for every holder of this cell.
    pub fn set(&self, value: SecretString) {
        *self.0.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }
}

impl std::fmt::Debug for SecretCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretCell([REDACTED])")
    }
}
