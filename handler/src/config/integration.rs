//! Integration settings: where the outbox publisher sends (a Service Bus namespace with the managed identity, or
//! a SAS connection string), and which secrets are read from Key Vault at startup instead of the settings.

use std::time::Duration;

use secrecy::SecretString;

use super::{Config, ConfigError, StoreConfig, parse_number};

/// Where the outbox publisher sends, and which secrets come from Key Vault.
#[derive(Debug, Clone)]
pub struct IntegrationConfig {
    /// Fully qualified Service Bus namespace (`host[:port]`) for managed-identity sends.
    pub servicebus_namespace: Option<String>,
    /// SAS fallback; a cell because a Key Vault refresh may replace it.
    pub servicebus_connection_string: Option<crate::azure::SecretCell>,
    pub outbox_topic: String,
    pub outbox_source: String,
    pub outbox_batch_size: usize,
    pub outbox_send_timeout: Duration,
    pub managed_identity_client_id: Option<String>,
    pub keyvault: Option<KeyVaultConfig>,
}

/// Secrets to read from Key Vault at startup (each replaces the setting of the same name without `_SECRET_NAME`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyVaultConfig {
    pub url: String,
    pub refresh: Duration,
    /// Bounds one HTTP try to the vault (`azure::keyvault::client_options`).
    pub timeout: Duration,
    pub mssql_connection_string_secret: Option<String>,
    pub cursor_key_secret: Option<String>,
    pub servicebus_connection_string_secret: Option<String>,
}

impl KeyVaultConfig {
    /// Every secret name configured.
    pub fn secret_names(&self) -> Vec<&str> {
        [&self.mssql_connection_string_secret, &self.cursor_key_secret, &self.servicebus_connection_string_secret]
            .into_iter()
            .filter_map(|n| n.as_deref())
            .collect()
    }
}

/// The Key Vault the secrets come from and their names; `None` without `METERLINE_KEYVAULT_URL` (when no
/// secret is named either).
pub(super) fn keyvault_config(get: &dyn Fn(&str) -> Option<String>) -> Result<Option<KeyVaultConfig>, ConfigError> {
    let secrets = [
        "METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME",
        "METERLINE_CURSOR_KEY_SECRET_NAME",
        "METERLINE_SERVICEBUS_CONNECTION_STRING_SECRET_NAME",
    ];
    // Read first, vault or not: a bad value is refused the day it is set, not the day a vault is configured.
    let refresh =
        parse_number("METERLINE_KEYVAULT_REFRESH_SECS", get("METERLINE_KEYVAULT_REFRESH_SECS"), 3600, 1..=86_400)?;
    let timeout = parse_number("METERLINE_KEYVAULT_TIMEOUT_SECS", get("METERLINE_KEYVAULT_TIMEOUT_SECS"), 5, 1..=60)?;
    let Some(url) = get("METERLINE_KEYVAULT_URL") else {
        if let Some(name) = secrets.iter().find(|name| get(name).is_some()) {
            return Err(ConfigError::new(
                "METERLINE_KEYVAULT_URL",
                format!("required when {name} names a Key Vault secret"),
            ));
        }
        return Ok(None);
    };
    if !url.starts_with("https://") {
        return Err(ConfigError::new("METERLINE_KEYVAULT_URL", format!("must be an https URL, got {url:?}")));
    }
    Ok(Some(KeyVaultConfig {
        url,
        refresh: Duration::from_secs(refresh as u64),
        timeout: Duration::from_secs(timeout as u64),
        mssql_connection_string_secret: get("METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME"),
        cursor_key_secret: get("METERLINE_CURSOR_KEY_SECRET_NAME"),
        servicebus_connection_string_secret: get("METERLINE_SERVICEBUS_CONNECTION_STRING_SECRET_NAME"),
    }))
}

/// The outbox publisher's target; `keyvault` is what [`keyvault_config`] read.
pub(super) fn integration_config(
    get: &dyn Fn(&str) -> Option<String>,
    keyvault: Option<KeyVaultConfig>,
) -> Result<IntegrationConfig, ConfigError> {
    // Refused here (exit 2, naming the setting) rather than when the sender is built.
    if let Some(raw) = get("METERLINE_SERVICEBUS_CONNECTION_STRING") {
        crate::azure::servicebus::check_connection_string(&raw)
            .map_err(|why| ConfigError::new("METERLINE_SERVICEBUS_CONNECTION_STRING", why))?;
    }
    Ok(IntegrationConfig {
        servicebus_namespace: get("METERLINE_SERVICEBUS_NAMESPACE")
            .map(|ns| ns.trim_start_matches("https://").trim_start_matches("sb://").trim_end_matches('/').to_owned()),
        servicebus_connection_string: get("METERLINE_SERVICEBUS_CONNECTION_STRING")
            .map(|cs| crate::azure::SecretCell::new(SecretString::from(cs))),
        outbox_topic: get("METERLINE_OUTBOX_TOPIC").unwrap_or_else(|| "meterline-events".into()),
        outbox_source: get("METERLINE_OUTBOX_SOURCE").unwrap_or_else(|| "/meterline".into()),
        outbox_batch_size: parse_number(
            "METERLINE_OUTBOX_BATCH_SIZE",
            get("METERLINE_OUTBOX_BATCH_SIZE"),
            100,
            1..=1_000,
        )?,
        outbox_send_timeout: Duration::from_secs(parse_number(
            "METERLINE_OUTBOX_SEND_TIMEOUT_SECS",
            get("METERLINE_OUTBOX_SEND_TIMEOUT_SECS"),
            10,
            1..=60,
        )? as u64),
        managed_identity_client_id: get("METERLINE_MANAGED_IDENTITY_CLIENT_ID"),
        keyvault,
    })
}

impl Config {
    /// Puts the secrets read from Key Vault where the settings they replace would be.
    pub fn apply_vault_secrets(&mut self, secrets: &crate::azure::keyvault::VaultSecrets) -> Result<(), ConfigError> {
        let Some(vault) = self.integration.keyvault.clone() else { return Ok(()) };
        if let (Some(name), StoreConfig::Mssql { connection_string }) =
            (&vault.mssql_connection_string_secret, &mut self.store)
        {
            *connection_string = secrets.cell(name).map(|c| c.get()).unwrap_or_default();
        }
        if let Some(name) = &vault.cursor_key_secret {
            let key = secrets.cell(name).map(|c| c.get()).unwrap_or_default();
            if secrecy::ExposeSecret::expose_secret(&key).len() < 32 {
                return Err(ConfigError::new(
                    "METERLINE_CURSOR_KEY_SECRET_NAME",
                    format!("the Key Vault secret {name:?} must be at least 32 characters"),
                ));
            }
            self.cursor_key = Some(key);
        }
        if let Some(name) = &vault.servicebus_connection_string_secret {
            self.integration.servicebus_connection_string = secrets.cell(name);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    #[test]
    fn key_vault_secret_names_stand_in_for_the_settings_they_replace() {
        let c = config(&[
            ("WEBSITE_INSTANCE_ID", "abc"),
            ("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"),
            ("METERLINE_AUTH_AUDIENCES", "api://meterline"),
            ("METERLINE_STORE", "mssql"),
            ("METERLINE_KEYVAULT_URL", "https://meterline.vault.azure.net"),
            ("METERLINE_MSSQL_CONNECTION_STRING_SECRET_NAME", "sql"),
            ("METERLINE_CURSOR_KEY_SECRET_NAME", "cursor"),
            ("METERLINE_SERVICEBUS_NAMESPACE", "sb://meterline.servicebus.windows.net/"),
        ])
        .expect("the secrets come from Key Vault, so the settings they replace may be missing");
        let vault = c.integration.keyvault.as_ref().unwrap();
        assert_eq!(vault.secret_names(), vec!["sql", "cursor"]);
        assert_eq!(vault.refresh, Duration::from_secs(3600));
        assert_eq!(c.integration.servicebus_namespace.as_deref(), Some("meterline.servicebus.windows.net"));
        assert_eq!(c.integration.outbox_topic, "meterline-events");
        assert_eq!(c.integration.outbox_source, "/meterline");
    }
}
