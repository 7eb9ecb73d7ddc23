//! Local development identity: an RSA signing key kept under `./data`, and the tokens `handler dev-token` signs with it.
//!
//! The server trusts this key only when `METERLINE_AUTH_MODE=local`, which configuration refuses when
//! Meterline runs in Azure. Tokens look like Entra app-only (or delegated) tokens, so the whole pipeline
//! runs unchanged.

use std::io::Write as _;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use aws_lc_rs::encoding::AsDer as _;
use aws_lc_rs::rsa::{KeyPair, KeySize, PublicKeyComponents};
use aws_lc_rs::signature::KeyPair as _;
use base64::Engine as _;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header};
use serde_json::json;
use sha2::{Digest, Sha256};

use super::keys::VerificationKey;

/// The `iss` of local tokens.
pub const LOCAL_ISSUER: &str = "https://meterline.local/dev";
/// The `aud` of local tokens and the audience the server expects in local mode.
pub const LOCAL_AUDIENCE: &str = "api://meterline-local";

/// The local signing key.
pub struct DevKey {
    encoding: EncodingKey,
    pub verification: VerificationKey,
    pub kid: String,
}

impl std::fmt::Debug for DevKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DevKey").field("kid", &self.kid).finish_non_exhaustive()
    }
}

/// Loads the key at `path`, creating it (RSA 2048, PKCS#8 PEM, mode 0600) if it does not exist.
pub fn load_or_create(path: &Path) -> anyhow::Result<DevKey> {
    if !path.exists() {
        let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| anyhow::anyhow!("RSA key generation failed"))?;
        let der = pair.as_der().map_err(|_| anyhow::anyhow!("encoding the RSA key failed"))?;
        let body = base64::engine::general_purpose::STANDARD.encode(der.as_ref());
        let lines: Vec<&str> =
            body.as_bytes().chunks(64).map(|c| std::str::from_utf8(c).expect("base64 is ASCII")).collect();
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", lines.join("\n"));
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path).with_context(|| format!("creating {}", path.display()))?;
        file.write_all(pem.as_bytes())?;
        tracing::info!(path = %path.display(), "created the local development signing key");
    }
    load(path)
}

/// Loads an existing key.
pub fn load(path: &Path) -> anyhow::Result<DevKey> {
    let pem = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(body.trim()).context("the key file is not PEM")?;
    let pair = KeyPair::from_pkcs8(&der).map_err(|e| anyhow::anyhow!("the key file is not an RSA PKCS#8 key: {e}"))?;
    let public: PublicKeyComponents<Vec<u8>> = pair.public_key().into();
    let kid = Sha256::digest(&public.n).iter().take(8).map(|b| format!("{b:02x}")).collect::<String>();
    let encoding = EncodingKey::from_rsa_pem(pem.as_bytes()).context("the key file cannot sign")?;
    let decoding = DecodingKey::from_rsa_raw_components(&public.n, &public.e);
    let verification = VerificationKey { key: Arc::new(decoding), alg: Some(jsonwebtoken::jwk::KeyAlgorithm::RS256) };
    Ok(DevKey { encoding, verification, kid })
}

/// What a development token says.
#[derive(Debug, Clone)]
pub struct DevTokenRequest {
    /// The `tid` claim: the Entra directory id the Meterline tenant maps to.
    pub directory_id: String,
    pub roles: Vec<String>,
    /// Non-empty makes a delegated token (`scp`) instead of an app-only one (`roles`, `idtyp=app`).
    pub scopes: Vec<String>,
    pub app_id: String,
    pub object_id: String,
    pub name: Option<String>,
    pub ttl: std::time::Duration,
}

/// Signs a token for `request`, valid from `now`.
pub fn mint(key: &DevKey, request: &DevTokenRequest, now: i64) -> anyhow::Result<String> {
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(key.kid.clone());
    let mut claims = json!({
        "iss": LOCAL_ISSUER,
        "aud": LOCAL_AUDIENCE,
        "sub": request.object_id,
        "oid": request.object_id,
        "tid": request.directory_id,
        "azp": request.app_id,
        "iat": now,
        "nbf": now,
        "exp": expiry(now, request.ttl)?,
    });
    if request.scopes.is_empty() {
        claims["roles"] = json!(request.roles);
        claims["idtyp"] = json!("app");
    } else {
        claims["scp"] = json!(request.scopes.join(" "));
        claims["roles"] = json!(request.roles);
    }
    if let Some(name) = &request.name {
        claims["name"] = json!(name);
    }
    Ok(jsonwebtoken::encode(&header, &claims, &key.encoding)?)
}

/// The longest lifetime a development token may have: a year, far inside what a timestamp holds.
pub const MAX_TTL: std::time::Duration = std::time::Duration::from_secs(365 * 86_400);

/// `exp` of a token issued at `now` that lives `ttl`: checked, so no lifetime wraps into a token already expired.
fn expiry(now: i64, ttl: std::time::Duration) -> anyhow::Result<i64> {
    i64::try_from(ttl.as_secs())
        .ok()
        .and_then(|ttl| now.checked_add(ttl))
        .ok_or_else(|| anyhow::anyhow!("a token issued at {now} cannot live {ttl:?}"))
}

/// Parses `90s`, `30m`, `1h`, `2d` or plain seconds: more than nothing and at most [`MAX_TTL`].
pub fn parse_ttl(raw: &str) -> Result<std::time::Duration, String> {
    let unusable = || format!("expected a duration like 90s, 30m, 1h or 1d, got {raw:?}");
    let trimmed = raw.trim();
    let (number, unit) = trimmed.split_at(trimmed.find(|c: char| !c.is_ascii_digit()).unwrap_or(trimmed.len()));
    let n: u64 = number.parse().map_err(|_| unusable())?;
    let unit_secs = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(unusable()),
    };
    let too_long = || format!("{raw:?} is too long: a development token lives at most 365d");
    let seconds = n.checked_mul(unit_secs).ok_or_else(too_long)?;
    match std::time::Duration::from_secs(seconds) {
        ttl if ttl.is_zero() => Err(unusable()),
        ttl if ttl > MAX_TTL => Err(too_long()),
        ttl => Ok(ttl),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("1h"), Ok(std::time::Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Ok(std::time::Duration::from_secs(90)));
        assert_eq!(parse_ttl("2d"), Ok(std::time::Duration::from_secs(172_800)));
        assert_eq!(parse_ttl("365d"), Ok(MAX_TTL));
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("1w").is_err());
        assert!(parse_ttl("h").is_err());
        // Past a year, past an i64 of seconds once added to now, past a u64 of seconds: refused, never wrapped.
        for long in ["366d", "31536001", "106751991167301d", "213503982334602d", "18446744073709551615d"] {
            assert!(parse_ttl(long).unwrap_err().contains("at most 365d"), "{long}");
        }
        assert!(expiry(1_700_000_000, std::time::Duration::from_secs(u64::MAX)).is_err());
    }

    #[test]
    fn a_created_key_is_reused_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keys/dev.pem");
        let first = load_or_create(&path).unwrap();
        let again = load_or_create(&path).unwrap();
        assert_eq!(first.kid, again.kid);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
    }
}
