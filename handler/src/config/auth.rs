//! Token validation settings: the mode (Entra ID or the local development key), the authority and audiences,
//! which directories are accepted and which may hold `Platform.Admin`, clock skew and the key and token caches.

use std::path::PathBuf;
use std::time::Duration;

use super::{ConfigError, parse_number};

/// How bearer tokens are validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthMode {
    /// Entra ID or another OpenID Connect provider, through discovery and JWKS.
    Entra { authority: String, audiences: Vec<String> },
    /// The local development key; never in Azure.
    Local { key_path: PathBuf },
}

/// Token validation settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthConfig {
    pub mode: AuthMode,
    /// Lower-cased directory ids; `None` accepts any directory (tenants still have to be registered).
    pub allowed_tenants: Option<Vec<String>>,
    /// Lower-cased directory ids whose tokens may hold `Platform.Admin`; `None`: any accepted directory.
    pub platform_directories: Option<Vec<String>>,
    pub clock_skew: Duration,
    pub jwks_refresh: Duration,
    pub jwks_min_refetch: Duration,
    /// Bounds one fetch of the discovery document or the key set.
    pub jwks_timeout: Duration,
    pub token_cache_size: usize,
}

/// Reads the `METERLINE_AUTH_*` settings; in Azure (`in_azure`) the default mode and what is required differ.
pub(super) fn auth_config(get: &dyn Fn(&str) -> Option<String>, in_azure: bool) -> Result<AuthConfig, ConfigError> {
    let list = |name: &str| -> Option<Vec<String>> {
        get(name).map(|raw| raw.split(',').map(|v| v.trim().to_owned()).filter(|v| !v.is_empty()).collect())
    };
    let mode = match get("METERLINE_AUTH_MODE").as_deref().unwrap_or(if in_azure { "entra" } else { "local" }) {
        "local" if in_azure => {
            return Err(ConfigError::new(
                "METERLINE_AUTH_MODE",
                "local mode trusts a key kept on disk and is refused in Azure (WEBSITE_INSTANCE_ID is set); use entra",
            ));
        }
        "local" => AuthMode::Local {
            key_path: get("METERLINE_AUTH_LOCAL_KEY_PATH")
                .map(PathBuf::from)
                .unwrap_or_else(|| "data/dev-signing-key.pem".into()),
        },
        "entra" => {
            let authority = get("METERLINE_AUTH_AUTHORITY").ok_or_else(|| {
                ConfigError::new("METERLINE_AUTH_AUTHORITY", "required when METERLINE_AUTH_MODE=entra")
            })?;
            let loopback =
                ["http://127.0.0.1:", "http://localhost:", "http://[::1]:"].iter().any(|p| authority.starts_with(p));
            if !(authority.starts_with("https://") || loopback) {
                return Err(ConfigError::new(
                    "METERLINE_AUTH_AUTHORITY",
                    format!("must be an https URL (plain http only on loopback), got {authority:?}"),
                ));
            }
            let audiences = list("METERLINE_AUTH_AUDIENCES").filter(|a| !a.is_empty()).ok_or_else(|| {
                ConfigError::new(
                    "METERLINE_AUTH_AUDIENCES",
                    "at least one audience is required when METERLINE_AUTH_MODE=entra",
                )
            })?;
            AuthMode::Entra { authority: authority.trim_end_matches('/').to_owned(), audiences }
        }
        other => {
            return Err(ConfigError::new("METERLINE_AUTH_MODE", format!("expected `entra` or `local`, got {other:?}")));
        }
    };
    let allowed_tenants =
        list("METERLINE_AUTH_ALLOWED_TENANTS").map(|l| l.into_iter().map(|t| t.to_ascii_lowercase()).collect());
    let platform_directories = match list("METERLINE_AUTH_PLATFORM_DIRECTORIES").filter(|l| !l.is_empty()) {
        Some(listed) => Some(listed.into_iter().map(|t| t.to_ascii_lowercase()).collect()),
        None => match &mode {
            AuthMode::Entra { authority, .. } => single_tenant_directory(authority).map(|d| vec![d]),
            AuthMode::Local { .. } => None,
        },
    };
    if in_azure && platform_directories.is_none() {
        return Err(ConfigError::new(
            "METERLINE_AUTH_PLATFORM_DIRECTORIES",
            "required in Azure with a multi-tenant authority: every customer directory's administrator can grant \
             the API's app roles, Platform.Admin included, to their own applications",
        ));
    }
    let skew = parse_number("METERLINE_AUTH_CLOCK_SKEW_SECS", get("METERLINE_AUTH_CLOCK_SKEW_SECS"), 60, 0..=300)?;
    let refresh =
        parse_number("METERLINE_AUTH_JWKS_REFRESH_SECS", get("METERLINE_AUTH_JWKS_REFRESH_SECS"), 3600, 60..=86_400)?;
    let refetch = parse_number(
        "METERLINE_AUTH_JWKS_MIN_REFETCH_SECS",
        get("METERLINE_AUTH_JWKS_MIN_REFETCH_SECS"),
        300,
        0..=3_600,
    )?;
    let fetch_timeout =
        parse_number("METERLINE_AUTH_JWKS_TIMEOUT_SECS", get("METERLINE_AUTH_JWKS_TIMEOUT_SECS"), 5, 1..=60)?;
    let cache =
        parse_number("METERLINE_AUTH_TOKEN_CACHE_SIZE", get("METERLINE_AUTH_TOKEN_CACHE_SIZE"), 10_000, 1..=1_000_000)?;
    Ok(AuthConfig {
        mode,
        allowed_tenants,
        platform_directories,
        clock_skew: Duration::from_secs(skew as u64),
        jwks_refresh: Duration::from_secs(refresh as u64),
        jwks_min_refetch: Duration::from_secs(refetch as u64),
        jwks_timeout: Duration::from_secs(fetch_timeout as u64),
        token_cache_size: cache,
    })
}

/// The directory a single-tenant Entra authority names (`https://login.microsoftonline.com/<guid>/...` or
/// `https://sts.windows.net/<guid>/`): only it issues tokens there, so only it can hold `Platform.Admin`.
fn single_tenant_directory(authority: &str) -> Option<String> {
    let rest = authority
        .strip_prefix("https://login.microsoftonline.com/")
        .or_else(|| authority.strip_prefix("https://sts.windows.net/"))?;
    let segment = rest.split('/').next()?;
    segment.parse::<uuid::Uuid>().ok().map(|d| d.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::config;

    #[test]
    fn auth_defaults_to_local_outside_azure_and_to_entra_inside() {
        let local = config(&[]).unwrap();
        assert_eq!(local.auth.mode, AuthMode::Local { key_path: "data/dev-signing-key.pem".into() });
        let err = config(&[("WEBSITE_INSTANCE_ID", "abc"), ("METERLINE_CURSOR_KEY", &"k".repeat(32))]).unwrap_err();
        assert_eq!(err.setting, "METERLINE_AUTH_AUTHORITY", "in Azure, entra is the default and needs an authority");
        let entra = config(&[
            ("WEBSITE_INSTANCE_ID", "abc"),
            ("METERLINE_CURSOR_KEY", &"k".repeat(32)),
            ("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/organizations/v2.0/"),
            ("METERLINE_AUTH_AUDIENCES", "api://meterline, 6f1c2a3b-0000-0000-0000-000000000000"),
            ("METERLINE_AUTH_ALLOWED_TENANTS", "72F988BF-86F1-41AF-91AB-2D7CD011DB47"),
            ("METERLINE_AUTH_PLATFORM_DIRECTORIES", "0000AAAA-0000-0000-0000-000000000001"),
        ])
        .unwrap();
        assert_eq!(entra.auth.platform_directories, Some(vec!["0000aaaa-0000-0000-0000-000000000001".to_owned()]));
        let AuthMode::Entra { authority, audiences } = &entra.auth.mode else { panic!("entra") };
        assert_eq!(authority, "https://login.microsoftonline.com/organizations/v2.0");
        assert_eq!(audiences.len(), 2);
        assert_eq!(entra.auth.allowed_tenants, Some(vec!["72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned()]));
        let loopback = config(&[
            ("METERLINE_AUTH_MODE", "entra"),
            ("METERLINE_AUTH_AUTHORITY", "http://127.0.0.1:4000"),
            ("METERLINE_AUTH_AUDIENCES", "api://test"),
        ]);
        assert!(loopback.is_ok(), "plain http is fine on loopback, for tests");
        let no_cursor_key = config(&[
            ("WEBSITE_INSTANCE_ID", "abc"),
            ("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0"),
            ("METERLINE_AUTH_AUDIENCES", "api://meterline"),
        ]);
        assert_eq!(
            no_cursor_key.unwrap_err().setting,
            "METERLINE_CURSOR_KEY",
            "Azure needs one key for every instance"
        );
    }

    #[test]
    fn platform_admin_comes_from_the_platform_directories_only() {
        let azure = |authority: &str, platform: Option<&str>| {
            let mut pairs = vec![
                ("WEBSITE_INSTANCE_ID", "abc".to_owned()),
                ("METERLINE_CURSOR_KEY", "k".repeat(32)),
                ("METERLINE_AUTH_AUTHORITY", authority.to_owned()),
                ("METERLINE_AUTH_AUDIENCES", "api://meterline".to_owned()),
            ];
            if let Some(platform) = platform {
                pairs.push(("METERLINE_AUTH_PLATFORM_DIRECTORIES", platform.to_owned()));
            }
            let pairs: Vec<(&str, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
            config(&pairs)
        };
        let single =
            azure("https://login.microsoftonline.com/72F988BF-86F1-41AF-91AB-2D7CD011DB47/v2.0", None).unwrap();
        assert_eq!(
            single.auth.platform_directories,
            Some(vec!["72f988bf-86f1-41af-91ab-2d7cd011db47".to_owned()]),
            "a single-tenant authority's own directory is the default"
        );
        let multi = azure("https://login.microsoftonline.com/organizations/v2.0", None).unwrap_err();
        assert_eq!(
            multi.setting, "METERLINE_AUTH_PLATFORM_DIRECTORIES",
            "required in Azure for a multi-tenant authority"
        );
        assert!(
            azure("https://login.microsoftonline.com/organizations/v2.0", Some("72f988bf-86f1-41af-91ab-2d7cd011db47"))
                .is_ok()
        );
        let outside = config(&[
            ("METERLINE_AUTH_MODE", "entra"),
            ("METERLINE_AUTH_AUTHORITY", "http://127.0.0.1:4000"),
            ("METERLINE_AUTH_AUDIENCES", "api://test"),
        ])
        .unwrap();
        assert_eq!(outside.auth.platform_directories, None, "outside Azure an unnamed set means any directory");
    }
}
