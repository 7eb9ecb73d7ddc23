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
        "exp": now + request.ttl.as_secs() as i64,
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

/// Parses `90s`, `30m`, `1h`, `2d` or plain seconds.
pub fn parse_ttl(raw: &str) -> Option<std::time::Duration> {
    let raw = raw.trim();
    let (number, unit) = raw.split_at(raw.find(|c: char| !c.is_ascii_digit()).unwrap_or(raw.len()));
    let n: u64 = number.parse().ok()?;
    let seconds = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return None,
    };
    (seconds > 0).then(|| std::time::Duration::from_secs(seconds))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttls_parse() {
        assert_eq!(parse_ttl("1h"), Some(std::time::Duration::from_secs(3600)));
        assert_eq!(parse_ttl("90"), Some(std::time::Duration::from_secs(90)));
        assert_eq!(parse_ttl("2d"), Some(std::time::Duration::from_secs(172_800)));
        assert_eq!(parse_ttl("0s"), None);
        assert_eq!(parse_ttl("1w"), None);
        assert_eq!(parse_ttl("h"), None);
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
