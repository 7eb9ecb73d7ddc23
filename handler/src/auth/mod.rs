//! Authentication and authorization: bearer tokens from Microsoft Entra ID (or a local dev key) to a [`Principal`], then a [`Caller`].
//!
//! [`Authenticator::authenticate`] validates a JWT access token: the algorithm allow-list and the absence of
//! a `crit` header (Meterline understands no JWS extension) are checked before any key is touched, then
//! the signature (keys from [`keys`]), `exp`/`nbf` with a clock skew, the audience, the issuer (Entra v1
//! and v2, single- and multi-tenant), `tid` and the tenant allow-list.
//! Validated tokens are cached by a hash of the token until they expire, so a busy client pays for the
//! RSA verification once. [`guard`] turns a principal into a tenant-scoped [`Caller`] on every request
//! and checks each operation's [`Permission`].

pub mod guard;
pub mod keys;
pub mod local;
pub mod permission;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::clock::Clock;
use keys::{KeyCache, KeyError, VerificationKey};
pub use permission::{Permission, PermissionSet};

/// Algorithms Meterline accepts. Everything else (`none`, HMAC, EC) is refused before a key is looked up.
pub const ACCEPTED_ALGORITHMS: &[Algorithm] = &[Algorithm::RS256, Algorithm::PS256];

/// Why a token whose header has a `crit` member is refused.
pub const CRITICAL_EXTENSIONS_REFUSED: &str =
    "the token header lists critical extensions Meterline does not understand";

/// How the caller got its token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// App-only (client credentials): permissions come from `roles`.
    App,
    /// On behalf of a user: permissions come from `scp`.
    Delegated,
}

/// A validated token's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub subject: String,
    /// `oid`: the user's or service principal's object id.
    pub object_id: Option<String>,
    /// `tid`: the Entra directory the token was issued in.
    pub directory_id: String,
    /// `azp` (v2) or `appid` (v1): the calling application.
    pub app_id: Option<String>,
    pub name: Option<String>,
    pub kind: PrincipalKind,
    /// From `roles` (app-only) or `scp` (delegated), before any API-client registration narrows them.
    pub permissions: PermissionSet,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: i64,
}

/// Why a request is not authenticated or not authorized.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("no bearer token")]
    Missing,
    #[error("{0}")]
    Invalid(String),
    #[error("the identity provider is unavailable")]
    ProviderUnavailable(#[source] anyhow::Error),
}

fn invalid(reason: impl Into<String>) -> AuthError {
    AuthError::Invalid(reason.into())
}

/// The claims Meterline reads from an access token.
#[derive(Debug, Deserialize)]
struct Claims {
    iss: String,
    sub: String,
    exp: i64,
    nbf: Option<i64>,
    iat: Option<i64>,
    tid: Option<String>,
    oid: Option<String>,
    azp: Option<String>,
    appid: Option<String>,
    idtyp: Option<String>,
    name: Option<String>,
    #[serde(default)]
    roles: Vec<String>,
    scp: Option<String>,
}

/// Where verification keys and issuers come from.
pub enum KeySource {
    /// An OpenID provider (Entra ID, or any OIDC provider in tests), through discovery and JWKS.
    Oidc(Arc<KeyCache>),
    /// Local development: one RSA key under `./data`, one issuer.
    Local { kid: String, key: VerificationKey, issuer: String },
}

/// Validation settings.
#[derive(Debug, Clone)]
pub struct AuthSettings {
    /// Accepted `aud` values: the App ID URI and/or the client id.
    pub audiences: Vec<String>,
    /// When set, only these Entra directory ids (`tid`) are accepted.
    pub allowed_tenants: Option<HashSet<String>>,
    /// When set, only tokens from these directories keep `Platform.Admin` (lower-case ids); from any other
    /// directory the role is dropped. In a multi-tenant app, every customer directory's administrator can
    /// grant the API's app roles to that directory's own applications, so the role means nothing elsewhere.
    pub platform_directories: Option<HashSet<String>>,
    pub clock_skew: Duration,
    /// Bound of the validated-token cache (entries).
    pub cache_size: usize,
}

/// Validates bearer tokens.
pub struct Authenticator {
    keys: KeySource,
    settings: AuthSettings,
    clock: Arc<dyn Clock>,
    /// Validated tokens by digest, each with the `kid` of the key that signed it.
    cache: quick_cache::sync::Cache<[u8; 32], (Arc<Principal>, Arc<str>)>,
}

/// The longest an identity provider's access token may live (from `iat`, else from now): Entra issues them for
/// 60 to 90 minutes, and for at most 28 hours with continuous access evaluation. A token meant to live longer was
/// not minted by it, and one signed with a leaked key must not outlive the key's removal by more than this.
const MAX_PROVIDER_TOKEN_LIFETIME_SECS: i64 = 2 * 24 * 3600;

impl Authenticator {
    /// Builds the authenticator the configuration asks for. Local mode creates the development key if missing.
    pub fn from_config(config: &crate::config::AuthConfig, clock: Arc<dyn Clock>) -> anyhow::Result<Self> {
        let (keys, audiences) = match &config.mode {
            crate::config::AuthMode::Entra { authority, audiences } => {
                let fetcher = Arc::new(keys::HttpFetcher::new(authority, config.jwks_timeout)?);
                let timing = keys::CacheTiming { refresh: config.jwks_refresh, min_refetch: config.jwks_min_refetch };
                (KeySource::Oidc(KeyCache::new(fetcher, clock.clone(), timing)), audiences.clone())
            }
            crate::config::AuthMode::Local { key_path } => {
                let key = local::load_or_create(key_path)?;
                let source = KeySource::Local {
                    kid: key.kid.clone(),
                    key: key.verification,
                    issuer: local::LOCAL_ISSUER.into(),
                };
                (source, vec![local::LOCAL_AUDIENCE.to_owned()])
            }
        };
        let settings = AuthSettings {
            audiences,
            allowed_tenants: config.allowed_tenants.as_ref().map(|t| t.iter().cloned().collect()),
            platform_directories: config.platform_directories.as_ref().map(|t| t.iter().cloned().collect()),
            clock_skew: config.clock_skew,
            cache_size: config.token_cache_size,
        };
        Ok(Self::new(keys, settings, clock))
    }

    /// Whether `directory` is one of the configured platform directories (none are when the setting is unset).
    /// A platform directory's applications are the platform's: no tenant registers them.
    pub fn is_platform_directory(&self, directory: uuid::Uuid) -> bool {
        // Asked on every request: the id spelled as the set holds it, on the stack.
        let mut spelled = uuid::Uuid::encode_buffer();
        let spelled: &str = directory.hyphenated().encode_lower(&mut spelled);
        self.settings.platform_directories.as_ref().is_some_and(|p| p.contains(spelled))
    }

    pub fn new(keys: KeySource, settings: AuthSettings, clock: Arc<dyn Clock>) -> Self {
        let cache = quick_cache::sync::Cache::new(settings.cache_size.max(1));
        Authenticator { keys, settings, clock, cache }
    }

    /// The OpenID provider's circuit breaker, when keys come from one (not in local mode).
    pub fn breaker(&self) -> Option<Arc<crate::resilience::Breaker>> {
        match &self.keys {
            KeySource::Oidc(cache) => Some(cache.breaker().clone()),
            KeySource::Local { .. } => None,
        }
    }

    /// Loads the provider's keys ahead of the first request (best effort; failures are logged).
    pub async fn warm_up(&self) {
        if let KeySource::Oidc(cache) = &self.keys
            && let Err(err) = cache.refresh().await
        {
            tracing::warn!(error = %err, "identity provider keys not loaded yet; will retry on demand");
        }
    }

    /// Validates `token`, from the cache when it was validated before, has not expired since, and the key that
    /// signed it is still published (a key the provider removed, leaked or not, signs nothing any more).
    pub async fn authenticate(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = self.clock.now().timestamp();
        if let Some((principal, kid)) = self.cache.get(&digest) {
            if principal.expires_at + self.skew() > now && self.publishes(&kid) {
                return Ok(principal);
            }
            self.cache.remove(&digest);
        }
        let (principal, kid) = self.validate_with_kid(token, now).await?;
        let principal = Arc::new(principal);
        self.cache.insert(digest, (principal.clone(), kid.into()));
        Ok(principal)
    }

    /// Whether the key `kid` is among the keys tokens are checked with now.
    fn publishes(&self, kid: &str) -> bool {
        match &self.keys {
            KeySource::Oidc(cache) => cache.has(kid),
            KeySource::Local { kid: local, .. } => local == kid,
        }
    }

    fn skew(&self) -> i64 {
        self.settings.clock_skew.as_secs() as i64
    }

    /// The full validation, without the cache.
    pub async fn validate(&self, token: &str, now: i64) -> Result<Principal, AuthError> {
        self.validate_with_kid(token, now).await.map(|(principal, _)| principal)
    }

    /// [`Self::validate`], with the `kid` of the key that signed the token.
    async fn validate_with_kid(&self, token: &str, now: i64) -> Result<(Principal, String), AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| invalid("the token is not a well-formed JWT"))?;
        if !ACCEPTED_ALGORITHMS.contains(&header.alg) {
            return Err(invalid(format!("the signing algorithm {:?} is not accepted", header.alg)));
        }
        // RFC 7515 §4.1.11: a recipient must refuse a token whose `crit` names an extension it does not
        // understand, and an empty list is invalid too. Meterline understands none, so any `crit` is refused,
        // before a key is looked up.
        if header.crit.is_some() {
            return Err(invalid(CRITICAL_EXTENSIONS_REFUSED));
        }
        let kid = header.kid.clone().ok_or_else(|| invalid("the token header has no kid"))?;
        let (key, issuer_template) = match &self.keys {
            KeySource::Oidc(cache) => {
                let key = cache.key(&kid).await.map_err(|e| match e {
                    KeyError::UnknownKid(_) => invalid("the token is signed with an unknown key"),
                    KeyError::ProviderUnavailable(cause) => AuthError::ProviderUnavailable(cause),
                })?;
                let metadata = cache.metadata().await.map_err(|e| AuthError::ProviderUnavailable(e.into()))?;
                (key, metadata.issuer)
            }
            KeySource::Local { kid: local_kid, key, issuer } => {
                if kid != *local_kid {
                    return Err(invalid("the token is signed with an unknown key"));
                }
                (key.clone(), issuer.clone())
            }
        };
        if let Some(pinned) = key.alg
            && format!("{pinned:?}") != format!("{:?}", header.alg)
        {
            return Err(invalid("the token's algorithm does not match its key"));
        }
        let mut validation = Validation::new(header.alg);
        validation.algorithms = vec![header.alg];
        // exp and nbf are checked below against the injected clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.required_spec_claims = ["exp", "iss", "sub", "aud"].iter().map(|c| c.to_string()).collect();
        validation.set_audience(&self.settings.audiences);
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind as K;
                match e.kind() {
                    K::InvalidSignature => invalid("the token signature does not verify"),
                    K::InvalidAudience => invalid("the token's audience is not accepted"),
                    K::MissingRequiredClaim(claim) => invalid(format!("the token has no {claim} claim")),
                    K::InvalidAlgorithm => invalid("the token's algorithm does not match its key"),
                    _ => invalid("the token cannot be decoded"),
                }
            })?
            .claims;
        let skew = self.skew();
        if claims.exp + skew <= now {
            return Err(invalid("the token has expired"));
        }
        if claims.nbf.is_some_and(|nbf| nbf - skew > now) {
            return Err(invalid("the token is not valid yet"));
        }
        if claims.iat.is_some_and(|iat| iat - skew > now) {
            return Err(invalid("the token was issued in the future"));
        }
        if matches!(self.keys, KeySource::Oidc(_))
            && claims.exp - claims.iat.unwrap_or(now).min(now) > MAX_PROVIDER_TOKEN_LIFETIME_SECS
        {
            return Err(invalid("the token lives longer than an identity provider's access token does (2 days)"));
        }
        let tid = claims.tid.clone().filter(|t| !t.is_empty()).ok_or_else(|| invalid("the token has no tid claim"))?;
        // One spelling of a directory everywhere (the platform-directory and allowed-tenant checks, the tenant
        // lookup, what `getMe` shows): a GUID in any of its forms is the lower-case hyphenated one Entra writes.
        let tid = uuid::Uuid::parse_str(&tid).map(|id| id.hyphenated().to_string()).unwrap_or(tid);
        if !accepted_issuers(&issuer_template, &tid).contains(&claims.iss) {
            return Err(invalid("the token's issuer is not accepted"));
        }
        if let Some(allowed) = &self.settings.allowed_tenants
            && !allowed.contains(&tid.to_ascii_lowercase())
        {
            return Err(invalid("the token's tenant is not allowed"));
        }
        let mut principal = principal_from(claims, tid);
        if let Some(platform) = &self.settings.platform_directories
            && !platform.contains(&principal.directory_id.to_ascii_lowercase())
        {
            principal.permissions = principal.permissions.without(Permission::PlatformAdmin);
        }
        Ok((principal, kid))
    }
}

fn principal_from(claims: Claims, tid: String) -> Principal {
    let delegated = claims.scp.is_some() && claims.idtyp.as_deref() != Some("app");
    let permissions = if delegated {
        PermissionSet::from_names(claims.scp.as_deref().unwrap_or("").split_whitespace())
    } else {
        PermissionSet::from_names(claims.roles.iter().map(String::as_str))
    };
    Principal {
        subject: claims.sub,
        object_id: claims.oid,
        directory_id: tid,
        app_id: claims.azp.or(claims.appid),
        name: claims.name,
        kind: if delegated { PrincipalKind::Delegated } else { PrincipalKind::App },
        permissions,
        expires_at: claims.exp,
    }
}

/// The issuers a token from directory `tid` may carry, given the provider's issuer (perhaps a `{tenantid}` template).
///
/// For Entra ID authorities, a directory's v1 (`https://sts.windows.net/{tid}/`) and v2
/// (`https://login.microsoftonline.com/{tid}/v2.0`) issuers are both accepted: which one a token carries
/// depends on the API's `accessTokenAcceptedVersion`, not on the endpoint the client used.
pub fn accepted_issuers(template: &str, tid: &str) -> Vec<String> {
    let own = template.replace("{tenantid}", tid);
    let mut issuers = vec![own.clone()];
    let entra =
        template.starts_with("https://login.microsoftonline.com/") || template.starts_with("https://sts.windows.net/");
    if entra {
        // Only the directory the template names (or any, for a template) may use the other version.
        let template_tid =
            own.trim_start_matches("https://login.microsoftonline.com/").trim_start_matches("https://sts.windows.net/");
        if template_tid.split('/').next() == Some(tid) {
            issuers.push(format!("https://sts.windows.net/{tid}/"));
            issuers.push(format!("https://login.microsoftonline.com/{tid}/v2.0"));
        }
    }
    issuers
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use jsonwebtoken::jwk::JwkSet;

    use crate::clock::SystemClock;

    fn settings() -> AuthSettings {
        AuthSettings {
            audiences: vec![local::LOCAL_AUDIENCE.into()],
            allowed_tenants: None,
            clock_skew: Duration::from_secs(60),
            cache_size: 16,
            platform_directories: None,
        }
    }

    /// A token signed with the dev key at `pem`, with `crit` in its header when given.
    fn signed(pem: &std::path::Path, kid: &str, crit: Option<Vec<&str>>, now: i64) -> String {
        let mut header = jsonwebtoken::Header::new(Algorithm::RS256);
        header.kid = Some(kid.to_owned());
        header.crit = crit.map(|c| c.into_iter().map(str::to_owned).collect());
        let claims = serde_json::json!({
            "iss": local::LOCAL_ISSUER, "aud": local::LOCAL_AUDIENCE, "sub": "s", "tid": "t",
            "azp": "app", "roles": ["Documents.Read"], "idtyp": "app", "iat": now, "nbf": now, "exp": now + 600
        });
        let key = jsonwebtoken::EncodingKey::from_rsa_pem(&std::fs::read(pem).unwrap()).unwrap();
        jsonwebtoken::encode(&header, &claims, &key).unwrap()
    }

    #[tokio::test]
    async fn any_crit_header_is_refused_even_on_a_correctly_signed_token() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("dev.pem");
        let key = local::load_or_create(&pem).unwrap();
        let kid = key.kid.clone();
        let source = KeySource::Local { kid: kid.clone(), key: key.verification, issuer: local::LOCAL_ISSUER.into() };
        let auth = Authenticator::new(source, settings(), Arc::new(SystemClock));
        let now = SystemClock.now().timestamp();

        let plain = auth.validate(&signed(&pem, &kid, None, now), now).await;
        assert!(plain.is_ok(), "the same token without crit is valid: {plain:?}");
        for crit in [vec!["exp"], vec!["urn:example:unknown"], vec![], vec!["b64"]] {
            let refused = auth.validate(&signed(&pem, &kid, Some(crit.clone()), now), now).await;
            match refused {
                Err(AuthError::Invalid(reason)) => assert_eq!(reason, CRITICAL_EXTENSIONS_REFUSED, "{crit:?}"),
                other => panic!("crit {crit:?} must be refused as invalid, got {other:?}"),
            }
        }
    }

    /// A provider that counts every fetch: a refused header must not make Meterline fetch anything.
    struct Counting(AtomicUsize);

    #[async_trait::async_trait]
    impl keys::KeyFetcher for Counting {
        async fn metadata(&self) -> anyhow::Result<keys::OidcMetadata> {
            self.0.fetch_add(1, Ordering::SeqCst);
            anyhow::bail!("not reachable in this test")
        }

        async fn jwks(&self, _uri: &str) -> anyhow::Result<JwkSet> {
            self.0.fetch_add(1, Ordering::SeqCst);
            anyhow::bail!("not reachable in this test")
        }
    }

    #[tokio::test]
    async fn crit_is_refused_before_any_key_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("dev.pem");
        let kid = local::load_or_create(&pem).unwrap().kid;
        let fetcher = Arc::new(Counting(AtomicUsize::new(0)));
        let timing = keys::CacheTiming { refresh: Duration::from_secs(3600), min_refetch: Duration::from_secs(300) };
        let cache = KeyCache::new(fetcher.clone(), Arc::new(SystemClock), timing);
        let auth = Authenticator::new(KeySource::Oidc(cache), settings(), Arc::new(SystemClock));
        let now = SystemClock.now().timestamp();

        let refused = auth.validate(&signed(&pem, &kid, Some(vec!["exp"]), now), now).await;
        assert!(
            matches!(&refused, Err(AuthError::Invalid(reason)) if reason == CRITICAL_EXTENSIONS_REFUSED),
            "{refused:?}"
        );
        assert_eq!(fetcher.0.load(Ordering::SeqCst), 0, "no discovery or JWKS fetch for a refused header");
        // The control: without crit the same token goes on to the key lookup (and finds the provider down).
        let looked_up = auth.validate(&signed(&pem, &kid, None, now), now).await;
        assert!(matches!(looked_up, Err(AuthError::ProviderUnavailable(_))), "{looked_up:?}");
        assert!(fetcher.0.load(Ordering::SeqCst) > 0);
    }

    #[test]
    fn entra_issuers_cover_v1_and_v2_for_the_same_directory_only() {
        let tid = "72f988bf-86f1-41af-91ab-2d7cd011db47";
        let single = format!("https://login.microsoftonline.com/{tid}/v2.0");
        let accepted = accepted_issuers(&single, tid);
        assert!(accepted.contains(&format!("https://sts.windows.net/{tid}/")));
        assert!(accepted.contains(&single));
        assert_eq!(accepted_issuers(&single, "other"), vec![single.clone()], "another directory gets nothing extra");

        let multi = accepted_issuers("https://login.microsoftonline.com/{tenantid}/v2.0", tid);
        assert!(multi.contains(&format!("https://login.microsoftonline.com/{tid}/v2.0")));
        assert!(multi.contains(&format!("https://sts.windows.net/{tid}/")));

        assert_eq!(accepted_issuers("http://127.0.0.1:4000", tid), vec!["http://127.0.0.1:4000".to_owned()]);
    }

    #[test]
    fn app_and_delegated_tokens_take_permissions_from_roles_and_scp() {
        let claims = |roles: Vec<&str>, scp: Option<&str>, idtyp: Option<&str>| Claims {
            iss: "i".into(),
            sub: "s".into(),
            exp: 10,
            nbf: None,
            iat: None,
            tid: Some("t".into()),
            oid: Some("o".into()),
            azp: None,
            appid: Some("legacy-app".into()),
            idtyp: idtyp.map(Into::into),
            name: None,
            roles: roles.into_iter().map(Into::into).collect(),
            scp: scp.map(Into::into),
        };
        let app = principal_from(claims(vec!["Documents.Read"], None, Some("app")), "t".into());
        assert_eq!(app.kind, PrincipalKind::App);
        assert!(app.permissions.contains(Permission::DocumentsRead));
        assert_eq!(app.app_id.as_deref(), Some("legacy-app"), "v1 appid is the app id");
        let user = principal_from(claims(vec!["Documents.Write"], Some("Documents.Read Usage.Read"), None), "t".into());
        assert_eq!(user.kind, PrincipalKind::Delegated);
        assert!(user.permissions.contains(Permission::UsageRead));
        assert!(!user.permissions.contains(Permission::DocumentsWrite), "a user's roles do not widen the app's scopes");
    }
}
