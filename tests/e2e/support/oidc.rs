//! A real OpenID provider for tests: `tests/oidc/server.mjs` (the `oidc-provider` package on Node) on loopback.
//!
//! [`OidcProvider::start`] generates an RSA key, starts the provider on a free port and waits until it listens;
//! [`OidcProvider::rotate_keys`] makes the provider reload a config with a new key, on the same port. Keys are
//! generated and tokens forged in Rust (aws-lc-rs); the harness's own tests check them with Node's crypto.
//! Its access tokens come from the real `POST /token` (client credentials) and are shaped like Microsoft Entra
//! ID app-only tokens: RS256, `kid` in the header, `iss`, `aud`, `iat`, `nbf`, `exp`, `sub`, `tid`, `roles`,
//! `azp` (or `appid`, as in v1 tokens), `oid`, `idtyp: "app"`, `ver`. Discovery and `/jwks` are real too.
//!
//! For negative tests, [`forge`] builds tokens by hand (alg `none`, HS256, or RS256 with the provider's own
//! private key) and [`tamper`] edits a signed token's payload while keeping its signature.
//! Needs `node` on the PATH and `npm ci --prefix tests/oidc` (which `./scripts/test` runs).

use std::fs::File;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

const READY_TIMEOUT: Duration = Duration::from_secs(20);
const READY_POLL: Duration = Duration::from_millis(20);
const DEFAULT_TTL_SECONDS: u64 = 600;

/// Which claim carries the client's application id: `azp` (Entra v2 tokens) or `appid` (v1 tokens).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppIdClaim {
    Azp,
    Appid,
}

/// A confidential client registered with the provider (client credentials, `client_secret_post`).
#[derive(Debug, Clone)]
pub struct TestClient {
    pub client_id: String,
    pub client_secret: String,
    /// The tenant id, issued as the `tid` claim.
    pub tid: String,
    /// App roles, issued as the `roles` claim (left out when empty, as Entra does).
    pub roles: Vec<String>,
    pub appid_claim: AppIdClaim,
    /// The application id its tokens carry in `azp`/`appid`; the client id unless set with [`TestClient::app`].
    pub app_id: Option<String>,
}

impl TestClient {
    /// A v2-style client (`azp` claim) with a random secret.
    pub fn new(client_id: &str, tid: &str, roles: &[&str]) -> Self {
        TestClient {
            client_id: client_id.to_owned(),
            client_secret: format!("secret-{}", uuid::Uuid::new_v4().simple()),
            tid: tid.to_owned(),
            roles: roles.iter().map(|r| (*r).to_owned()).collect(),
            appid_claim: AppIdClaim::Azp,
            app_id: None,
        }
    }

    /// The same application in another directory: a multi-tenant app's service principal there issues tokens
    /// with that directory's `tid` and the application's id, `app_id`, in `azp`.
    pub fn app(mut self, app_id: &str) -> Self {
        self.app_id = Some(app_id.to_owned());
        self
    }

    /// The same client issuing v1-style tokens: `appid` instead of `azp`, `ver: "1.0"`.
    pub fn v1(mut self) -> Self {
        self.appid_claim = AppIdClaim::Appid;
        self
    }

    /// The `oid` claim its tokens carry: a GUID derived from the client id (as `server.mjs` derives it).
    pub fn oid(&self) -> String {
        let hex: String = Sha256::digest(format!("meterline-test-oid:{}", self.client_id))
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32])
    }

    fn config(&self) -> Value {
        json!({
            "client_id": self.client_id,
            "client_secret": self.client_secret,
            "tid": self.tid,
            "roles": self.roles,
            "app_id": self.app_id,
            "appid_claim": match self.appid_claim {
                AppIdClaim::Azp => "azp",
                AppIdClaim::Appid => "appid",
            },
        })
    }
}

/// A running `tests/oidc/server.mjs`; the process is killed on drop.
pub struct OidcProvider {
    port: u16,
    audience: String,
    clients: Vec<TestClient>,
    ttl_seconds: u64,
    /// Private JWKs; the first signs, all are published at `/jwks`.
    keys: Vec<Value>,
    generation: u32,
    /// The key the next rotation signs with, generated in the background while the test runs.
    next_key: Option<std::thread::JoinHandle<Value>>,
    child: Child,
    http: reqwest::Client,
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for OidcProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OidcProvider")
            .field("issuer", &self.issuer())
            .field("audience", &self.audience)
            .field("signing_kid", &self.signing_kid())
            .finish_non_exhaustive()
    }
}

impl OidcProvider {
    /// Starts a provider for `audience` with these clients; access tokens live 600 s.
    pub async fn start(audience: &str, clients: Vec<TestClient>) -> Self {
        Self::start_with_ttl(audience, clients, DEFAULT_TTL_SECONDS).await
    }

    /// Starts a provider whose access tokens live `ttl_seconds`.
    pub async fn start_with_ttl(audience: &str, clients: Vec<TestClient>, ttl_seconds: u64) -> Self {
        assert!(!clients.is_empty(), "the OIDC provider needs at least one client");
        let script_dir = oidc_dir();
        if !script_dir.join("node_modules/oidc-provider/package.json").is_file() {
            panic!(
                "{} has no node_modules/oidc-provider: run `npm ci --prefix tests/oidc` (./scripts/test does)",
                script_dir.display()
            );
        }
        let dir = tempfile::tempdir().expect("temp dir for the OIDC provider");
        let port = free_port();
        let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("reqwest client");
        let keys = vec![generate_key(&new_kid(1))];
        let next_key = Some(prefetch_key(2));
        let child = spawn_and_wait(dir.path(), port, &config(audience, &clients, &keys, ttl_seconds)).await;
        OidcProvider {
            port,
            audience: audience.to_owned(),
            clients,
            ttl_seconds,
            keys,
            generation: 1,
            next_key,
            child,
            http,
            dir,
        }
    }

    /// `http://127.0.0.1:<port>`, the `iss` of every token; discovery is at `<issuer>/.well-known/openid-configuration`.
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `<issuer>/jwks`.
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer())
    }

    /// The `aud` of every token.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    pub fn clients(&self) -> &[TestClient] {
        &self.clients
    }

    /// The registered client with this id.
    pub fn client(&self, client_id: &str) -> &TestClient {
        self.clients
            .iter()
            .find(|c| c.client_id == client_id)
            .unwrap_or_else(|| panic!("no client {client_id} is registered with the OIDC provider"))
    }

    /// An access token for `client_id` from the real token endpoint (client credentials, `resource` = audience).
    pub async fn token(&self, client_id: &str) -> String {
        let client = self.client(client_id);
        let url = format!("{}/token", self.issuer());
        let form = [
            ("grant_type", "client_credentials"),
            ("client_id", client.client_id.as_str()),
            ("client_secret", client.client_secret.as_str()),
            ("resource", self.audience.as_str()),
        ];
        let response = self.http.post(&url).form(&form).send().await.unwrap_or_else(|e| panic!("POST {url}: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_else(|e| panic!("POST {url}: reading the body: {e}"));
        if !status.is_success() {
            panic!("POST {url} for {client_id} answered {status}: {body}");
        }
        let body: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("POST {url}: {e}: {body}"));
        body["access_token"].as_str().unwrap_or_else(|| panic!("POST {url}: no access_token in {body}")).to_owned()
    }

    /// The private JWK that signs tokens now (`kty`, `n`, `e`, `d`, ..., `kid`, `alg: RS256`, `use: sig`).
    pub fn signing_key(&self) -> Value {
        self.keys[0].clone()
    }

    /// The `kid` of the signing key.
    pub fn signing_kid(&self) -> String {
        self.keys[0]["kid"].as_str().expect("every key has a kid").to_owned()
    }

    /// `GET /jwks`: the published public keys.
    pub async fn jwks(&self) -> Value {
        self.get_json(&self.jwks_uri()).await
    }

    /// `GET /.well-known/openid-configuration`.
    pub async fn discovery(&self) -> Value {
        self.get_json(&format!("{}/.well-known/openid-configuration", self.issuer())).await
    }

    /// Generates a new key with a new kid and makes it the signing key: the provider reloads its config on the
    /// same port (SIGHUP) and this returns once it serves the new key. With `keep_old_in_jwks`, the keys published
    /// so far stay in `/jwks` after the new one; otherwise `/jwks` holds only the new key.
    pub async fn rotate_keys(&mut self, keep_old_in_jwks: bool) {
        self.generation += 1;
        let key = match self.next_key.take() {
            Some(prefetched) => prefetched.join().expect("generating the next key"),
            None => generate_key(&new_kid(self.generation)),
        };
        self.next_key = Some(prefetch_key(self.generation + 1));
        if keep_old_in_jwks {
            self.keys.insert(0, key);
        } else {
            self.keys = vec![key];
        }
        write_config(self.dir.path(), &config(&self.audience, &self.clients, &self.keys, self.ttl_seconds));
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args(["-HUP", &pid]).status().expect("kill runs").success());
        let reloaded = format!("RELOADED {}", self.signing_kid());
        wait_for_line(&mut self.child, self.dir.path(), |line| line == reloaded, "reloaded").await;
    }

    async fn get_json(&self, url: &str) -> Value {
        let response = self.http.get(url).send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        let status = response.status();
        let body = response.text().await.unwrap_or_else(|e| panic!("GET {url}: reading the body: {e}"));
        assert!(status.is_success(), "GET {url} answered {status}: {body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("GET {url}: {e}: {body}"))
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// How [`forge`] signs.
#[derive(Debug, Clone, Copy)]
pub enum Signer<'a> {
    /// An empty signature (for `alg: none`).
    None,
    /// HMAC-SHA256 with this secret (for example the RSA public key's bytes, in an algorithm-confusion test).
    Hs256(&'a [u8]),
    /// RS256 with this private JWK (for example [`OidcProvider::signing_key`]).
    Rs256(&'a Value),
}

/// A compact JWS with exactly this header and these claims (nothing is added), signed as `signer` says.
pub fn forge(header: &Value, claims: &Value, signer: Signer<'_>) -> String {
    let signing_input = format!("{}.{}", b64_json(header), b64_json(claims));
    let signature = match signer {
        Signer::None => String::new(),
        Signer::Hs256(secret) => URL_SAFE_NO_PAD.encode(hmac_sha256(secret, signing_input.as_bytes())),
        Signer::Rs256(jwk) => rs256_sign(jwk, &signing_input),
    };
    format!("{signing_input}.{signature}")
}

/// `token` with its `tid` claim changed to another tenant and its signature kept (so it no longer verifies).
pub fn tamper(token: &str) -> String {
    tamper_with(token, |claims| {
        let other = format!("{}-tampered", claims["tid"].as_str().unwrap_or("tenant"));
        claims["tid"] = Value::String(other);
    })
}

/// `token` with its payload changed by `edit` and its header and signature kept.
pub fn tamper_with(token: &str, edit: impl FnOnce(&mut Value)) -> String {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    let mut claims = decode_segment(parts[1]);
    edit(&mut claims);
    format!("{}.{}.{}", parts[0], b64_json(&claims), parts[2])
}

/// The header and claims of a compact JWS, unverified.
pub fn decode_unverified(token: &str) -> (Value, Value) {
    let parts: Vec<&str> = token.split('.').collect();
    assert_eq!(parts.len(), 3, "not a compact JWS: {token}");
    (decode_segment(parts[0]), decode_segment(parts[1]))
}

fn decode_segment(segment: &str) -> Value {
    let bytes = URL_SAFE_NO_PAD.decode(segment).unwrap_or_else(|e| panic!("not base64url ({e}): {segment}"));
    serde_json::from_slice(&bytes).unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
}

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(value).expect("JSON"))
}

/// HMAC-SHA256 (RFC 2104) over `sha2`.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut block = [0u8; BLOCK];
    if key.len() > BLOCK {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new().chain_update(pad(0x36)).chain_update(message).finalize();
    Sha256::new().chain_update(pad(0x5c)).chain_update(inner).finalize().into()
}

/// `tests/oidc` in the repository.
fn oidc_dir() -> PathBuf {
    super::host::repo_root().join("tests/oidc")
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free loopback port").port()
}

fn new_kid(generation: u32) -> String {
    format!("meterline-test-{generation}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8])
}

fn config(audience: &str, clients: &[TestClient], keys: &[Value], ttl_seconds: u64) -> Value {
    json!({
        "keys": keys,
        "audience": audience,
        "clients": clients.iter().map(TestClient::config).collect::<Vec<_>>(),
        "accessTokenTtlSeconds": ttl_seconds,
    })
}

/// Writes the provider's config file (read at start and on every reload).
fn write_config(dir: &std::path::Path, config: &Value) -> std::path::PathBuf {
    let config_path = dir.join("provider.json");
    std::fs::write(&config_path, serde_json::to_vec_pretty(config).expect("JSON")).expect("write the provider config");
    config_path
}

/// Writes the config, starts `node server.mjs` and waits for its `READY` line.
async fn spawn_and_wait(dir: &std::path::Path, port: u16, config: &Value) -> Child {
    let config_path = write_config(dir, config);
    let script_dir = oidc_dir();
    let mut child = Command::new("node")
        .arg(script_dir.join("server.mjs"))
        .arg("--port")
        .arg(port.to_string())
        .arg("--config")
        .arg(&config_path)
        .current_dir(&script_dir)
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("stdout.log")).expect("stdout log"))
        .stderr(File::create(dir.join("stderr.log")).expect("stderr log"))
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `node` (is Node.js installed?): {e}"));
    wait_for_line(&mut child, dir, |line| line.starts_with("READY "), "ready").await;
    child
}

/// Waits until the provider printed a line that `matches` on stdout (`what` names it in a failure).
async fn wait_for_line(child: &mut Child, dir: &std::path::Path, matches: impl Fn(&str) -> bool, what: &str) {
    let started = Instant::now();
    let stderr = || std::fs::read_to_string(dir.join("stderr.log")).unwrap_or_default();
    loop {
        let stdout = std::fs::read_to_string(dir.join("stdout.log")).unwrap_or_default();
        if stdout.lines().any(&matches) {
            return;
        }
        if let Some(status) = child.try_wait().expect("poll the OIDC provider") {
            panic!(
                "the OIDC provider exited ({status}) before it was {what}\nstdout:\n{stdout}\nstderr:\n{}",
                stderr()
            );
        }
        if started.elapsed() > READY_TIMEOUT {
            stop(child);
            panic!(
                "the OIDC provider was not {what} within {READY_TIMEOUT:?}\nstdout:\n{stdout}\nstderr:\n{}",
                stderr()
            );
        }
        tokio::time::sleep(READY_POLL).await;
    }
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Runs `node -e script` with `input` as JSON on stdin; returns stdout. The tests check signatures with Node's
/// crypto, independently of the Rust code that makes keys and signs.
fn node_eval(script: &str, input: &Value) -> String {
    let mut child = Command::new("node")
        .arg("-e")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start `node` (is Node.js installed?): {e}"));
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(&serde_json::to_vec(input).expect("JSON"))
        .expect("write to node's stdin");
    let output = child.wait_with_output().expect("node output");
    assert!(output.status.success(), "node -e failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    String::from_utf8(output.stdout).expect("UTF-8 from node")
}

/// Generates the key of `generation` on another thread (RSA key generation takes a few hundred milliseconds).
fn prefetch_key(generation: u32) -> std::thread::JoinHandle<Value> {
    std::thread::spawn(move || generate_key(&new_kid(generation)))
}

/// The contents of the DER element at the start of `input` (which must have `tag`), and what follows it.
fn der_take(input: &[u8], tag: u8) -> (&[u8], &[u8]) {
    assert_eq!(input.first(), Some(&tag), "DER: expected tag {tag:#04x}");
    let (length, header) = match input[1] {
        short if short < 0x80 => (usize::from(short), 2),
        long => {
            let bytes = usize::from(long & 0x7f);
            (input[2..2 + bytes].iter().fold(0, |n, b| (n << 8) | usize::from(*b)), 2 + bytes)
        }
    };
    input[header..].split_at(length)
}

/// A DER element: `tag`, the length, `content`.
fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let length = content.len().to_be_bytes();
    let significant: Vec<u8> = length.iter().copied().skip_while(|b| *b == 0).collect();
    match content.len() {
        n if n < 0x80 => out.push(n as u8),
        _ => {
            out.push(0x80 | significant.len() as u8);
            out.extend(&significant);
        }
    }
    out.extend_from_slice(content);
    out
}

/// A fresh RSA 2048 private JWK with this kid, `alg: RS256`, `use: sig`: generated by aws-lc-rs, its components
/// read from the PKCS#8 document (`PrivateKeyInfo` holding an `RSAPrivateKey`, RFC 8017 A.1.2).
fn generate_key(kid: &str) -> Value {
    use aws_lc_rs::encoding::AsDer as _;
    let pair = aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key generation");
    let pkcs8 = pair.as_der().expect("the key's PKCS#8 form");
    let (info, _) = der_take(pkcs8.as_ref(), 0x30);
    let (_version, info) = der_take(info, 0x02);
    let (_algorithm, info) = der_take(info, 0x30);
    let (rsa_key, _) = der_take(info, 0x04);
    let (mut fields, _) = der_take(rsa_key, 0x30);
    let mut integers = Vec::new();
    while !fields.is_empty() {
        let (integer, rest) = der_take(fields, 0x02);
        let unsigned: Vec<u8> = integer.iter().copied().skip_while(|b| *b == 0).collect();
        integers.push(URL_SAFE_NO_PAD.encode(unsigned));
        fields = rest;
    }
    let [_, n, e, d, p, q, dp, dq, qi] = <[String; 9]>::try_from(integers).expect("an RSAPrivateKey has 9 integers");
    json!({"kty": "RSA", "n": n, "e": e, "d": d, "p": p, "q": q, "dp": dp, "dq": dq, "qi": qi,
           "kid": kid, "alg": "RS256", "use": "sig"})
}

/// The base64url RS256 (RSASSA-PKCS1-v1_5 with SHA-256) signature of `signing_input` with a private JWK.
fn rs256_sign(jwk: &Value, signing_input: &str) -> String {
    let mut fields = der(0x02, &[0]);
    for member in ["n", "e", "d", "p", "q", "dp", "dq", "qi"] {
        let mut integer = URL_SAFE_NO_PAD.decode(jwk[member].as_str().expect("a private RSA JWK")).unwrap();
        if integer.first().is_none_or(|b| *b >= 0x80) {
            integer.insert(0, 0);
        }
        fields.extend(der(0x02, &integer));
    }
    let pair = aws_lc_rs::rsa::KeyPair::from_der(&der(0x30, &fields)).expect("the JWK is an RSA private key");
    let mut signature = vec![0; pair.public_modulus_len()];
    let rng = aws_lc_rs::rand::SystemRandom::new();
    pair.sign(&aws_lc_rs::signature::RSA_PKCS1_SHA256, &rng, signing_input.as_bytes(), &mut signature)
        .expect("RS256 signing");
    URL_SAFE_NO_PAD.encode(signature)
}

#[cfg(test)]
mod tests {
    use super::*;

    const AUDIENCE: &str = "api://meterline-test";
    const TENANT_A: &str = "11111111-1111-1111-1111-111111111111";
    const TENANT_B: &str = "22222222-2222-2222-2222-222222222222";

    const NODE_RS256_VERIFY: &str = r#"
const { createPublicKey, verify } = require('node:crypto');
const { jwk, token } = JSON.parse(require('node:fs').readFileSync(0, 'utf8'));
const [header, payload, signature] = token.split('.');
const key = createPublicKey({ key: jwk, format: 'jwk' });
process.stdout.write(String(verify('sha256', Buffer.from(`${header}.${payload}`), key, Buffer.from(signature, 'base64url'))));
"#;

    /// Whether `token`'s RS256 signature verifies with the key in `jwks` named by its header's `kid`.
    fn verifies(jwks: &Value, token: &str) -> bool {
        let (header, _) = decode_unverified(token);
        let jwk = jwks["keys"]
            .as_array()
            .expect("keys")
            .iter()
            .find(|k| k["kid"] == header["kid"])
            .unwrap_or_else(|| panic!("kid {} is not in {jwks}", header["kid"]));
        assert!(jwk.get("d").is_none(), "/jwks must not publish private keys: {jwk}");
        match node_eval(NODE_RS256_VERIFY, &json!({ "jwk": jwk, "token": token })).as_str() {
            "true" => true,
            "false" => false,
            other => panic!("unexpected verify output {other}"),
        }
    }

    fn kids(jwks: &Value) -> Vec<String> {
        jwks["keys"].as_array().expect("keys").iter().map(|k| k["kid"].as_str().expect("kid").to_owned()).collect()
    }

    fn clients() -> Vec<TestClient> {
        vec![
            TestClient::new("app-reader", TENANT_A, &["Meterline.Read"]),
            TestClient::new("app-legacy", TENANT_B, &["Meterline.Read", "Meterline.Write"]).v1(),
        ]
    }

    #[tokio::test]
    async fn the_provider_issues_entra_shaped_rs256_access_tokens() {
        let started = Instant::now();
        let provider = OidcProvider::start(AUDIENCE, clients()).await;
        eprintln!("OIDC provider started in {:?}: {provider:?}", started.elapsed());
        assert_eq!(provider.audience(), AUDIENCE);
        assert_eq!(provider.clients().len(), 2);

        let token = provider.token("app-reader").await;
        let (header, claims) = decode_unverified(&token);
        eprintln!("header {header}\nclaims {claims}");
        assert_eq!(header["alg"], "RS256");
        assert_eq!(header["typ"], "JWT");
        assert_eq!(header["kid"], provider.signing_kid());
        assert_eq!(header["kid"], provider.signing_key()["kid"]);
        assert_eq!(claims["iss"], provider.issuer());
        assert_eq!(claims["aud"], AUDIENCE);
        assert_eq!(claims["sub"], "app-reader");
        assert_eq!(claims["tid"], TENANT_A);
        assert_eq!(claims["roles"], json!(["Meterline.Read"]));
        assert_eq!(claims["azp"], "app-reader");
        assert!(claims.get("appid").is_none(), "{claims}");
        assert!(claims.get("client_id").is_none(), "{claims}");
        assert_eq!(claims["oid"], provider.client("app-reader").oid());
        assert_eq!(claims["idtyp"], "app");
        assert_eq!(claims["ver"], "2.0");
        let (iat, nbf, exp) =
            (claims["iat"].as_i64().unwrap(), claims["nbf"].as_i64().unwrap(), claims["exp"].as_i64().unwrap());
        assert_eq!(nbf, iat);
        assert_eq!(exp - iat, 600);
        let now = chrono::Utc::now().timestamp();
        assert!((iat - now).abs() < 60, "iat {iat} is not now ({now})");

        let legacy = provider.token("app-legacy").await;
        let (_, claims) = decode_unverified(&legacy);
        assert_eq!(claims["appid"], "app-legacy");
        assert!(claims.get("azp").is_none(), "{claims}");
        assert_eq!(claims["ver"], "1.0");
        assert_eq!(claims["tid"], TENANT_B);
        assert_eq!(claims["roles"], json!(["Meterline.Read", "Meterline.Write"]));

        let discovery = provider.discovery().await;
        assert_eq!(discovery["issuer"], provider.issuer());
        assert_eq!(discovery["jwks_uri"], provider.jwks_uri());
        assert_eq!(discovery["token_endpoint"], format!("{}/token", provider.issuer()));
        let jwks = provider.jwks().await;
        assert_eq!(kids(&jwks), vec![provider.signing_kid()]);
        assert!(verifies(&jwks, &token));
        assert!(verifies(&jwks, &legacy));

        // The token endpoint authenticates clients for real.
        let client = provider.client("app-reader");
        let response = reqwest::Client::new()
            .post(format!("{}/token", provider.issuer()))
            .form(&[
                ("grant_type", "client_credentials"),
                ("client_id", client.client_id.as_str()),
                ("client_secret", "not-the-secret"),
                ("resource", AUDIENCE),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 401);
    }

    #[tokio::test]
    async fn rotation_signs_with_a_new_key_and_keeps_or_drops_the_old_one() {
        let mut provider = OidcProvider::start(AUDIENCE, clients()).await;
        let issuer = provider.issuer();
        let first = provider.signing_kid();

        let started = Instant::now();
        provider.rotate_keys(true).await;
        eprintln!("rotated (keeping the old key) in {:?}", started.elapsed());
        let second = provider.signing_kid();
        assert_ne!(first, second);
        assert_eq!(provider.issuer(), issuer, "rotation keeps the port");
        let token = provider.token("app-reader").await;
        assert_eq!(decode_unverified(&token).0["kid"], second);
        let jwks = provider.jwks().await;
        assert_eq!(kids(&jwks), vec![second.clone(), first.clone()]);
        assert!(verifies(&jwks, &token));

        let started = Instant::now();
        provider.rotate_keys(false).await;
        eprintln!("rotated (dropping the old keys) in {:?}", started.elapsed());
        let third = provider.signing_kid();
        let token = provider.token("app-legacy").await;
        assert_eq!(decode_unverified(&token).0["kid"], third);
        let jwks = provider.jwks().await;
        assert_eq!(kids(&jwks), vec![third]);
        assert!(verifies(&jwks, &token));
    }

    #[tokio::test]
    async fn forged_tokens_are_signed_by_the_providers_real_key() {
        let provider = OidcProvider::start(AUDIENCE, clients()).await;
        let jwks = provider.jwks().await;
        let now = chrono::Utc::now().timestamp();
        let claims = json!({
            "iss": provider.issuer(), "aud": AUDIENCE, "sub": "app-reader", "tid": TENANT_A,
            "roles": ["Meterline.Admin"], "azp": "app-reader", "iat": now, "nbf": now, "exp": now + 600,
        });
        let header = json!({ "alg": "RS256", "typ": "JWT", "kid": provider.signing_kid() });
        let forged = forge(&header, &claims, Signer::Rs256(&provider.signing_key()));
        assert_eq!(decode_unverified(&forged), (header, claims.clone()));
        assert!(verifies(&jwks, &forged), "a token forged with the signing key verifies");

        let tampered = tamper(&provider.token("app-reader").await);
        assert_eq!(decode_unverified(&tampered).1["tid"], format!("{TENANT_A}-tampered"));
        assert!(!verifies(&jwks, &tampered), "a tampered token does not verify");
        let tampered = tamper_with(&forged, |c| c["exp"] = json!(now + 86_400));
        assert!(!verifies(&jwks, &tampered));

        let unsigned = forge(&json!({ "alg": "none" }), &claims, Signer::None);
        assert!(unsigned.ends_with('.') && unsigned.split('.').count() == 3, "{unsigned}");
        let hs = forge(&json!({ "alg": "HS256", "kid": provider.signing_kid() }), &claims, Signer::Hs256(b"secret"));
        let signature = hs.rsplit('.').next().unwrap();
        assert_eq!(URL_SAFE_NO_PAD.decode(signature).unwrap().len(), 32);
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231() {
        let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
        // Test case 1 (short key) and test case 6 (a key longer than the block).
        assert_eq!(
            hex(&hmac_sha256(&[0x0b; 20], b"Hi There")),
            "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"
        );
        assert_eq!(
            hex(&hmac_sha256(&[0xaa; 131], b"Test Using Larger Than Block-Size Key - Hash Key First")),
            "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54"
        );
    }
}
