//! Identity end to end. Real tokens from a real OpenID provider (`tests/oidc`): validated by the handler under the
//! host emulator, and, where the test moves time (the unknown-`kid` refetch interval), by the app in process with a
//! manual clock. The identity policies (permissions per operation, the platform directories, cross-directory
//! registrations) in process, with tokens signed by the local development key carrying the same claims.

use chrono::Utc;
use meterline::clock::Clock;
use meterline::store::prelude::*;
use meterline::store::{ApiClient, ClientStatus, Plan, SqliteStore, Tenant, TenantStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::{TestApp, capture_logs};
use crate::support::host::{ClientRequest, ClientResponse, HostEmulator, HostOptions};
use crate::support::oidc::{OidcProvider, Signer, TestClient, decode_unverified, forge, tamper, tamper_with};
use crate::support::routes::sample_path;
use crate::support::stores;

pub(crate) const AUDIENCE: &str = "api://meterline-test";
pub(crate) const DIR_A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const DIR_B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
const DIR_PLATFORM: &str = "cccccccc-0000-0000-0000-000000000003";
const DIR_SUSPENDED: &str = "dddddddd-0000-0000-0000-000000000004";
/// Allowed by configuration, but no Meterline tenant maps to it.
const DIR_UNREGISTERED: &str = "eeeeeeee-0000-0000-0000-000000000005";
/// Not in the allow-list at all.
const DIR_FOREIGN: &str = "ffffffff-0000-0000-0000-000000000006";
/// A partner's home directory: allowed, no Meterline tenant of its own; its multi-tenant app serves tenant A.
const DIR_PARTNER: &str = "99999999-0000-0000-0000-000000000007";

const ALL_TENANT_ROLES: &[&str] = &["Tenant.Admin", "Documents.Read", "Documents.Write", "Usage.Read", "Audit.Read"];

pub(crate) fn clients() -> Vec<TestClient> {
    vec![
        TestClient::new("app-a-reader", DIR_A, &["Documents.Read"]),
        TestClient::new("app-a-nothing", DIR_A, &[]),
        TestClient::new("app-a-legacy", DIR_A, &["Documents.Read"]).v1(),
        TestClient::new("app-b-everything", DIR_B, ALL_TENANT_ROLES),
        TestClient::new("app-platform", DIR_PLATFORM, &["Platform.Admin"]),
        TestClient::new("app-suspended", DIR_SUSPENDED, &["Documents.Read"]),
        TestClient::new("app-unregistered", DIR_UNREGISTERED, &["Documents.Read"]),
        TestClient::new("app-foreign", DIR_FOREIGN, &["Documents.Read"]),
        TestClient::new("app-a-admin", DIR_A, ALL_TENANT_ROLES),
        // B's directory administrator granted the API's Platform.Admin app role to B's own application.
        TestClient::new("app-b-rogue-admin", DIR_B, &["Platform.Admin", "Documents.Read"]),
        // One multi-tenant application, "partner-app", seen from its home directory and from directory B.
        TestClient::new("partner-home", DIR_PARTNER, &["Documents.Read", "Documents.Write"]).app("partner-app"),
        TestClient::new("partner-in-b", DIR_B, &["Documents.Read", "Documents.Write"]).app("partner-app"),
    ]
}

/// The provider, the handler configured to trust it, and the store's tenants.
struct World {
    provider: OidcProvider,
    host: HostEmulator,
    _root: tempfile::TempDir,
}

/// The plan "pro" and the tenants of directories A (id 1), B (id 2) and the suspended one (id 4), created at `now`.
pub(crate) async fn seed(store: &dyn Store, now: chrono::DateTime<Utc>) {
    store
        .create_plan(&Plan { requests_per_minute: 600, burst: 50, ..stores::plan("pro", 100_000, now) }, None)
        .await
        .unwrap();
    for (n, directory, status) in [
        (1, DIR_A, TenantStatus::Active),
        (2, DIR_B, TenantStatus::Active),
        (4, DIR_SUSPENDED, TenantStatus::Suspended),
    ] {
        let tenant = Tenant {
            id: Uuid::from_u128(n),
            entra_tenant_id: Some(directory.parse().unwrap()),
            name: format!("Tenant {n}"),
            status,
            plan_code: "pro".into(),
            created_at: now,
            updated_at: now,
            version: 1,
            billing: Default::default(),
        };
        store.create_tenant(&tenant, None).await.unwrap();
    }
}

/// The directories whose tokens the handler accepts (all but `DIR_FOREIGN`).
fn allowed_tenants() -> String {
    [DIR_A, DIR_B, DIR_PLATFORM, DIR_SUSPENDED, DIR_UNREGISTERED, DIR_PARTNER].join(",")
}

/// The settings that make the handler trust `provider`, with the given unknown-`kid` refetch interval.
pub(crate) fn entra_settings(provider: &OidcProvider, min_refetch_secs: u64) -> Vec<(String, String)> {
    vec![
        ("METERLINE_AUTH_MODE".into(), "entra".into()),
        ("METERLINE_AUTH_AUTHORITY".into(), provider.issuer()),
        ("METERLINE_AUTH_AUDIENCES".into(), format!("{AUDIENCE},meterline-api-client-id")),
        ("METERLINE_AUTH_ALLOWED_TENANTS".into(), allowed_tenants()),
        ("METERLINE_AUTH_PLATFORM_DIRECTORIES".into(), DIR_PLATFORM.into()),
        ("METERLINE_AUTH_JWKS_MIN_REFETCH_SECS".into(), min_refetch_secs.to_string()),
    ]
}

async fn world() -> World {
    let provider = OidcProvider::start(AUDIENCE, clients()).await;
    let root = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&root.path().join("data/meterline.db")).await.unwrap();
    store.migrate().await.unwrap();
    seed(&store, Utc::now()).await;
    let env = entra_settings(&provider, 300);
    let host = HostEmulator::start_with(HostOptions {
        app_root: Some(root.path().to_path_buf()),
        env,
        ..HostOptions::default()
    })
    .await;
    World { provider, host, _root: root }
}

impl World {
    async fn call(&self, path: &str, token: &str) -> ClientResponse {
        self.host.http(ClientRequest::get(path).header("Authorization", &format!("Bearer {token}"))).await
    }

    async fn me(&self, token: &str) -> ClientResponse {
        self.call("/api/v1/me", token).await
    }

    /// Claims like the provider's, for forging variants signed with its real key.
    fn claims(&self, directory: &str) -> Value {
        let now = Utc::now().timestamp();
        json!({
            "iss": self.provider.issuer(), "aud": AUDIENCE, "sub": "app-a-reader", "azp": "app-a-reader",
            "tid": directory, "roles": ["Documents.Read"], "idtyp": "app", "iat": now, "nbf": now, "exp": now + 600
        })
    }

    fn forge_signed(&self, claims: &Value) -> String {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": self.provider.signing_kid()});
        forge(&header, claims, Signer::Rs256(&self.provider.signing_key()))
    }
}

/// The identity policies' world: the app in process in local mode, with the directories, tenants, allow-list and
/// platform directory of [`world`]. The policies act on a validated token's claims, wherever its signature came from.
struct Local {
    app: TestApp,
}

async fn local() -> Local {
    let app = TestApp::builder()
        .setting("METERLINE_AUTH_ALLOWED_TENANTS", allowed_tenants())
        .setting("METERLINE_AUTH_PLATFORM_DIRECTORIES", DIR_PLATFORM)
        .start()
        .await;
    seed(app.store.as_ref(), app.clock.now()).await;
    Local { app }
}

impl Local {
    /// A token with the claims the provider gives `client_id` (its directory, roles and application id), signed
    /// with the development key.
    async fn token(&self, client_id: &str) -> String {
        let client = clients()
            .into_iter()
            .find(|c| c.client_id == client_id)
            .unwrap_or_else(|| panic!("no client {client_id} in clients()"));
        let roles: Vec<&str> = client.roles.iter().map(String::as_str).collect();
        self.app.mint(&client.tid, &roles, client.app_id.as_deref().unwrap_or(&client.client_id))
    }

    async fn http(&self, request: ClientRequest) -> ClientResponse {
        self.app.http(request).await
    }

    async fn call(&self, path: &str, token: &str) -> ClientResponse {
        self.app.get(token, path).await
    }

    async fn send(&self, token: &str, request: ClientRequest) -> ClientResponse {
        self.app.send(token, request).await
    }

    async fn post(&self, token: &str, path: &str, body: &Value) -> ClientResponse {
        self.send(token, ClientRequest::new("POST", path).json(body)).await
    }

    async fn me(&self, token: &str) -> ClientResponse {
        self.call("/api/v1/me", token).await
    }
}

fn assert_401(response: &ClientResponse, reason: &str) {
    assert_eq!(response.status, 401, "{reason}: {}", String::from_utf8_lossy(&response.body));
    let challenge = response.header("www-authenticate").unwrap_or_default();
    assert!(challenge.starts_with("Bearer realm=\"meterline\""), "{reason}: {challenge}");
    let problem = response.json();
    assert_eq!(response.header("content-type"), Some("application/problem+json"));
    assert!(problem["code"] == "InvalidToken" || problem["code"] == "Unauthenticated", "{reason}: {problem}");
    if problem["code"] == "InvalidToken" {
        assert!(challenge.contains("error=\"invalid_token\""), "{reason}: {challenge}");
        assert!(problem["detail"].as_str().unwrap().contains(reason), "{reason}: {problem}");
    }
}

fn assert_403(response: &ClientResponse, code: &str) {
    assert_eq!(response.status, 403, "{}", String::from_utf8_lossy(&response.body));
    assert_eq!(response.json()["code"], code);
}

#[tokio::test]
async fn real_provider_tokens_are_accepted_v1_and_v2() {
    let w = world().await;
    let token = w.provider.token("app-a-reader").await;
    let me = w.me(&token).await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
    let body = me.json();
    assert_eq!(body["kind"], "app");
    assert_eq!(body["directoryId"], DIR_A);
    assert_eq!(body["appId"], "app-a-reader");
    assert_eq!(body["permissions"], json!(["Documents.Read"]));
    assert_eq!(body["tenant"]["id"], Uuid::from_u128(1).to_string());
    assert_eq!(body["tenant"]["plan"], "pro");

    let legacy = w.me(&w.provider.token("app-a-legacy").await).await.json();
    assert_eq!(legacy["appId"], "app-a-legacy", "v1 tokens name the app in appid");

    // The same token again is served from the validated-token cache, with the same identity (the quota moved on).
    let mut again = w.me(&token).await.json();
    let mut first = body.clone();
    again.as_object_mut().unwrap().remove("quota");
    first.as_object_mut().unwrap().remove("quota");
    assert_eq!(again, first);

    // A platform administrator belongs to no tenant and still works across tenants.
    let admin = w.provider.token("app-platform").await;
    let me = w.me(&admin).await.json();
    assert!(me["tenant"].is_null(), "{me}");
    let tenants = w.call("/api/v1/tenants?maxpagesize=2", &admin).await;
    assert_eq!(tenants.status, 200);
    let page = tenants.json();
    assert_eq!(page["value"].as_array().unwrap().len(), 2);
    let next = page["nextLink"].as_str().unwrap();
    assert!(next.starts_with("https://app.azurewebsites.net/api/v1/tenants?"), "absolute, at the public host: {next}");
    assert_eq!(w.call(next, &admin).await.json()["value"].as_array().unwrap().len(), 1, "three tenants in all");
}

#[tokio::test]
async fn the_negative_matrix() {
    let w = world().await;
    let now = Utc::now().timestamp();

    let mut expired = w.claims(DIR_A);
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 120);
    assert_401(&w.me(&w.forge_signed(&expired)).await, "expired");

    let mut early = w.claims(DIR_A);
    early["nbf"] = json!(now + 600);
    assert_401(&w.me(&w.forge_signed(&early)).await, "not valid yet");

    let mut issued_ahead = w.claims(DIR_A);
    issued_ahead["iat"] = json!(now + 86_400);
    issued_ahead.as_object_mut().unwrap().remove("nbf");
    assert_401(&w.me(&w.forge_signed(&issued_ahead)).await, "issued in the future");

    // A year-long token is none the provider issued (one signed with a leaked key would outlive the key's removal).
    let mut long_lived = w.claims(DIR_A);
    long_lived["exp"] = json!(now + 365 * 86_400);
    assert_401(&w.me(&w.forge_signed(&long_lived)).await, "lives longer");

    // A directory id spelled without hyphens or in upper case is the same directory, shown as Entra writes it.
    let mut spelled = w.claims(DIR_A);
    spelled["tid"] = json!(DIR_A.replace('-', "").to_uppercase());
    let me = w.me(&w.forge_signed(&spelled)).await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.json()["directoryId"], DIR_A);

    let mut wrong_issuer = w.claims(DIR_A);
    wrong_issuer["iss"] = json!("https://login.microsoftonline.com/aaaaaaaa-0000-0000-0000-000000000001/v2.0");
    assert_401(&w.me(&w.forge_signed(&wrong_issuer)).await, "issuer");

    let mut wrong_audience = w.claims(DIR_A);
    wrong_audience["aud"] = json!("api://someone-else");
    assert_401(&w.me(&w.forge_signed(&wrong_audience)).await, "audience");

    let foreign = w.provider.token("app-foreign").await;
    assert_401(&w.me(&foreign).await, "tenant is not allowed");

    // Two credentials, even a good one first: which one counts would be a guess.
    let good = w.provider.token("app-a-reader").await;
    let doubled = ClientRequest::get("/api/v1/me")
        .header("Authorization", &format!("Bearer {good}"))
        .header("Authorization", &format!("Bearer {foreign}"));
    assert_401(&w.host.http(doubled).await, "more than one Authorization header");

    let claims = w.claims(DIR_A);
    let none = forge(&json!({"alg": "none", "typ": "JWT"}), &claims, Signer::None);
    assert_401(&w.me(&none).await, "not a well-formed JWT");

    // The classic confusion attack: HS256 keyed with the provider's public RSA key.
    let jwks = w.provider.jwks().await;
    let public_key = serde_json::to_vec(&jwks["keys"][0]).unwrap();
    let confused = forge(
        &json!({"alg": "HS256", "typ": "JWT", "kid": w.provider.signing_kid()}),
        &claims,
        Signer::Hs256(&public_key),
    );
    assert_401(&w.me(&confused).await, "signing algorithm HS256 is not accepted");

    let tampered = tamper(&w.provider.token("app-a-reader").await);
    assert_401(&w.me(&tampered).await, "signature");
    let escalated = tamper_with(&w.provider.token("app-a-reader").await, |c| c["roles"] = json!(["Platform.Admin"]));
    assert_401(&w.me(&escalated).await, "signature");

    let mut no_tid = w.claims(DIR_A);
    no_tid.as_object_mut().unwrap().remove("tid");
    assert_401(&w.me(&w.forge_signed(&no_tid)).await, "tid");

    let other_key = forge(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "not-published"}),
        &claims,
        Signer::Rs256(&w.provider.signing_key()),
    );
    assert_401(&w.me(&other_key).await, "unknown key");

    // RFC 7515 §4.1.11: critical header extensions Meterline does not understand (it understands none) make a
    // correctly signed token invalid, whether the list names a registered claim or an unknown extension.
    for crit in [json!(["exp"]), json!(["urn:example:unknown"])] {
        let header = json!({"alg": "RS256", "typ": "JWT", "kid": w.provider.signing_kid(), "crit": crit});
        let critical = forge(&header, &claims, Signer::Rs256(&w.provider.signing_key()));
        assert_401(&w.me(&critical).await, "critical extensions");
    }

    assert_401(&w.host.http(ClientRequest::get("/api/v1/me")).await, "no token");
    assert_401(
        &w.host.http(ClientRequest::get("/api/v1/me").header("Authorization", "Basic dXNlcjpwdw==")).await,
        "basic",
    );

    assert_403(&w.me(&w.provider.token("app-suspended").await).await, "TenantSuspended");
    assert_403(&w.me(&w.provider.token("app-unregistered").await).await, "UnknownTenant");

    let lacking = w.call("/api/v1/tenants", &w.provider.token("app-b-everything").await).await;
    assert_403(&lacking, "InsufficientScope");
    assert!(lacking.json()["detail"].as_str().unwrap().contains("Platform.Admin"));
    let challenge = lacking.header("www-authenticate").unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\"") && challenge.contains("scope=\"Platform.Admin\""),
        "{challenge}"
    );
}

#[actix_web::test]
async fn unknown_kids_refetch_once_and_rotated_keys_are_picked_up() {
    let mut provider = OidcProvider::start(AUDIENCE, clients()).await;
    let logs = capture_logs();
    let mut app = TestApp::builder().at(meterline::clock::SystemClock.now());
    for (name, value) in entra_settings(&provider, 1) {
        app = app.setting(&name, value);
    }
    let app = app.start().await;
    seed(app.store.as_ref(), app.clock.now()).await;
    let loads = || logs.count("loaded identity provider signing keys");
    assert_eq!(loads(), 1, "the keys are loaded once at start:\n{}", logs.text());
    let before = provider.token("app-a-reader").await;
    assert_eq!(app.get(&before, "/api/v1/me").await.status, 200);
    assert_eq!(loads(), 1, "a known kid fetches nothing");

    provider.rotate_keys(false).await;
    // The refetch interval (1 s) since the load at start passes on the app's clock.
    app.clock.advance(chrono::Duration::milliseconds(1100));
    let after = provider.token("app-a-reader").await;
    let (header, _) = decode_unverified(&after);
    assert_ne!(header["kid"], decode_unverified(&before).0["kid"], "the provider signs with a new key");
    // Five requests with the new kid at once: one refetch serves them all.
    let calls = (0..5).map(|_| app.get(&after, "/api/v1/me"));
    let statuses: Vec<u16> = futures_util::future::join_all(calls).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200; 5]);
    assert_eq!(loads(), 2, "exactly one refetch:\n{}", logs.text());
    // The token from before, validated and cached with the key the provider has now removed: refused, as a new
    // token signed with that key would be.
    assert_eq!(app.get(&before, "/api/v1/me").await.status, 401, "a cached token outlives no key");

    // Forged kids right after: no refetch within the interval, straight 401.
    let claims = json!({
        "iss": provider.issuer(), "aud": AUDIENCE, "sub": "app-a-reader", "azp": "app-a-reader", "tid": DIR_A,
        "roles": ["Documents.Read"], "idtyp": "app", "iat": app.clock.now().timestamp(),
        "nbf": app.clock.now().timestamp(), "exp": app.clock.now().timestamp() + 600
    });
    let forged = forge(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "forged-kid"}),
        &claims,
        Signer::Rs256(&provider.signing_key()),
    );
    for _ in 0..5 {
        assert_eq!(app.get(&forged, "/api/v1/me").await.status, 401);
    }
    assert_eq!(loads(), 2, "forged kids inside the interval fetch nothing");
}

#[actix_web::test]
async fn every_v1_operation_declares_a_permission_and_enforces_it() {
    let w = local().await;
    let doc = w.http(ClientRequest::get("/api/openapi.json")).await.json();
    let nothing = w.token("app-a-nothing").await;
    let mut checked = 0;
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, operation) in item.as_object().unwrap() {
            let id = operation["operationId"].as_str().unwrap_or("?");
            let security = operation.get("security").and_then(Value::as_array);
            if !path.starts_with("/api/v1/") {
                assert!(security.is_none_or(|s| s.is_empty()), "{id}: anonymous routes declare no security");
                continue;
            }
            let requirement = security.and_then(|s| s.first()).unwrap_or_else(|| panic!("{id} declares no security"));
            let scopes: Vec<&str> = requirement["entra"]
                .as_array()
                .unwrap_or_else(|| panic!("{id}: not entra"))
                .iter()
                .map(|s| s.as_str().unwrap())
                .collect();
            assert!(scopes.len() <= 1, "{id}: one permission per operation, got {scopes:?}");
            let uri = sample_path(path).replace("sample1", &Uuid::from_u128(1).to_string());
            let request = |token: Option<&str>| {
                let mut r = ClientRequest::new(&method.to_ascii_uppercase(), &uri).json(&json!({}));
                if let Some(token) = token {
                    r = r.header("Authorization", &format!("Bearer {token}"));
                }
                r
            };
            assert_401(&w.http(request(None)).await, "no token");
            let response = w.http(request(Some(&nothing))).await;
            match scopes.first() {
                Some(permission) => {
                    assert_403(&response, "InsufficientScope");
                    assert!(
                        response.json()["detail"].as_str().unwrap().contains(permission),
                        "{id} enforces {permission}"
                    );
                }
                None => {
                    assert!(response.status < 400, "{id}: any authenticated caller passes, got {}", response.status)
                }
            }
            checked += 1;
        }
    }
    assert!(checked >= 3, "checked {checked} operations");
}

#[tokio::test]
async fn local_dev_tokens_work_only_in_local_mode() {
    let root = tempfile::tempdir().unwrap();
    let dev_token = |args: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
            .arg("dev-token")
            .args(args)
            .current_dir(root.path())
            .env_remove("METERLINE_AUTH_MODE")
            .output()
            .unwrap();
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap().trim().to_owned()
    };
    let token = dev_token(&["--tenant", DIR_A, "--roles", "Documents.Read,Usage.Read"]);
    assert_eq!(token.split('.').count(), 3, "stdout is the token alone: {token}");
    let delegated = dev_token(&["--tenant", DIR_A, "--scopes", "Audit.Read", "--ttl", "5m"]);
    let host =
        HostEmulator::start_with(HostOptions { app_root: Some(root.path().to_path_buf()), ..HostOptions::default() })
            .await;
    let me = host.http(ClientRequest::get("/api/v1/me").header("Authorization", &format!("Bearer {token}"))).await;
    assert_eq!(me.status, 200, "{}", String::from_utf8_lossy(&me.body));
    assert_eq!(me.json()["permissions"], json!(["Documents.Read", "Usage.Read"]));
    let me = host
        .http(ClientRequest::get("/api/v1/me").header("Authorization", &format!("Bearer {delegated}")))
        .await
        .json();
    assert_eq!((me["kind"].as_str(), me["permissions"].clone()), (Some("delegated"), json!(["Audit.Read"])));

    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .args(["dev-token"])
        .current_dir(root.path())
        .env("METERLINE_AUTH_MODE", "entra")
        .env("METERLINE_AUTH_AUTHORITY", "https://login.microsoftonline.com/organizations/v2.0")
        .env("METERLINE_AUTH_AUDIENCES", "api://meterline")
        .output()
        .unwrap();
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("METERLINE_AUTH_MODE=local"));

    let in_azure = std::process::Command::new(env!("CARGO_BIN_EXE_handler"))
        .arg("serve")
        .current_dir(root.path())
        .env("WEBSITE_INSTANCE_ID", "a1b2c3")
        .env("METERLINE_AUTH_MODE", "local")
        .output()
        .unwrap();
    assert_eq!(in_azure.status.code(), Some(2), "local auth is refused in Azure");
    assert!(String::from_utf8_lossy(&in_azure.stderr).contains("METERLINE_AUTH_MODE"));
}

// Cross-directory registrations (docs/security.md, "Registrations are bound to their directory").

fn registration(app_id: &str, directory: Option<&str>, roles: &[&str]) -> Value {
    let mut body = json!({"appId": app_id, "displayName": format!("{app_id} registration"), "roles": roles});
    if let Some(directory) = directory {
        body["directoryId"] = json!(directory);
    }
    body
}

/// A platform administrator's `verb` (approve or reject) on the registration `response` returned, conditional on
/// the version it showed (its ETag).
fn decision(response: &ClientResponse, verb: &str) -> ClientRequest {
    let view = response.json();
    let path = format!(
        "/api/v1/tenants/{}/clients/{}/{verb}",
        view["tenantId"].as_str().unwrap(),
        view["id"].as_str().unwrap()
    );
    ClientRequest::new("POST", &path).header("If-Match", response.header("etag").expect("a registration's ETag"))
}

fn body_text(response: &ClientResponse) -> String {
    String::from_utf8_lossy(&response.body).into_owned()
}

fn tenant_of(me: &ClientResponse) -> Value {
    assert_eq!(me.status, 200, "{}", body_text(me));
    me.json()["tenant"]["id"].clone()
}

#[actix_web::test]
async fn a_tenant_admin_cannot_squat_another_directorys_application() {
    let w = local().await;
    let (a, b) = (json!(Uuid::from_u128(1).to_string()), json!(Uuid::from_u128(2).to_string()));
    let b_admin = w.token("app-b-everything").await;
    let reader = w.token("app-a-reader").await;
    let created = w
        .post(&w.token("app-a-admin").await, "/api/v1/documents", &json!({"title": "A only", "docType": "memo"}))
        .await;
    assert_eq!(created.status, 201, "{}", body_text(&created));

    // The reproduction: B registers A's application. It binds to B's own directory, so A's tokens ignore it.
    let squat = w.post(&b_admin, "/api/v1/clients", &registration("app-a-reader", None, ALL_TENANT_ROLES)).await;
    assert_eq!(squat.status, 201, "{}", body_text(&squat));
    assert_eq!(squat.json()["directoryId"], DIR_B);
    let me = w.me(&reader).await;
    assert_eq!(tenant_of(&me), a, "the application still belongs to its own directory's tenant");
    assert_eq!(me.json()["permissions"], json!(["Documents.Read"]), "and B's grant neither widened nor narrowed it");
    let listed = w.call("/api/v1/documents", &reader).await.json();
    assert_eq!(listed["value"][0]["title"], "A only", "A's reader still reads A: {listed}");

    // Naming A's directory outright only files a request; the platform cannot approve it either.
    let request =
        w.post(&b_admin, "/api/v1/clients", &registration("app-a-reader", Some(DIR_A), &["Documents.Read"])).await;
    assert_eq!((request.status, request.json()["status"].clone()), (202, json!("pending")), "{}", body_text(&request));
    assert_eq!(tenant_of(&w.me(&reader).await), a, "a pending registration applies to nothing");
    let admin = w.token("app-platform").await;
    let approve = w.send(&admin, decision(&request, "approve")).await;
    assert_eq!(approve.status, 409, "{}", body_text(&approve));
    assert!(approve.json()["detail"].as_str().unwrap().contains("another tenant's own directory"));
    assert_eq!(tenant_of(&w.me(&reader).await), a);

    // The tenant administrator cannot approve its own request.
    let self_approve = w.send(&b_admin, decision(&request, "approve")).await;
    assert_403(&self_approve, "InsufficientScope");
    assert_eq!(tenant_of(&w.me(&b_admin).await), b);
}

#[actix_web::test]
async fn a_tenant_admin_cannot_demote_the_platform_administrator() {
    let w = local().await;
    let b_admin = w.token("app-b-everything").await;
    let admin = w.token("app-platform").await;
    // The reproduction: B registers the platform administrator's application with Documents.Read.
    let demote = w.post(&b_admin, "/api/v1/clients", &registration("app-platform", None, &["Documents.Read"])).await;
    assert_eq!(demote.status, 201, "{}", body_text(&demote));
    let tenants = w.call("/api/v1/tenants", &admin).await;
    assert_eq!(tenants.status, 200, "the platform administrator keeps its permissions: {}", body_text(&tenants));
    assert!(w.me(&admin).await.json()["tenant"].is_null(), "and belongs to no tenant");

    // No tenant registers the platform directory's applications: approved, one would map the platform
    // administrator into a tenant, and revoked, it would lock the platform out.
    let request = w
        .post(&b_admin, "/api/v1/clients", &registration("app-platform", Some(DIR_PLATFORM), &["Documents.Read"]))
        .await;
    assert_eq!(request.status, 422, "{}", body_text(&request));
    assert_eq!(request.json()["errors"][0]["field"], "directoryId");
    assert_eq!(w.call("/api/v1/tenants", &admin).await.status, 200);
}

#[actix_web::test]
async fn no_tenant_registration_locks_an_application_out_of_a_directory_it_does_not_own() {
    let w = local().await;
    let b_admin = w.token("app-b-everything").await;
    let admin = w.token("app-platform").await;
    let partner_home = w.token("partner-home").await;
    assert_403(&w.me(&partner_home).await, "UnknownTenant");

    // The reproduction: B files a request for the partner's application in the partner's own directory (which no
    // tenant owns), then withdraws it while pending. It never applied, so it refuses nothing.
    let request =
        w.post(&b_admin, "/api/v1/clients", &registration("partner-app", Some(DIR_PARTNER), &["Documents.Read"])).await;
    assert_eq!(request.status, 202, "{}", body_text(&request));
    let path = format!("/api/v1/clients/{}", request.json()["id"].as_str().unwrap());
    let withdrawn = w.send(&b_admin, ClientRequest::new("DELETE", &path).header("If-Match", "*")).await;
    assert_eq!(withdrawn.json()["status"], "revoked", "{}", body_text(&withdrawn));
    assert_403(&w.me(&partner_home).await, "UnknownTenant");

    // A registration of the platform's application for its directory from before that was refused, approved and
    // then revoked by its tenant, leaves the platform administrator's token as if it had never been made.
    let now = w.app.clock.now();
    let old = ApiClient {
        id: Uuid::from_u128(77),
        tenant_id: Uuid::from_u128(2),
        directory_id: Some(DIR_PLATFORM.parse().unwrap()),
        app_id: "app-platform".into(),
        display_name: "from before".into(),
        roles: vec!["Documents.Read".into()],
        status: ClientStatus::Revoked,
        created_at: now,
        revoked_at: Some(now),
        decided_by: Some("an administrator".into()),
        decided_at: Some(now),
        version: 3,
        limits: Default::default(),
    };
    w.app.store.create_api_client(&old, None).await.unwrap();
    assert_eq!(w.call("/api/v1/tenants", &admin).await.status, 200, "the platform is not locked out");
    let me = w.me(&admin).await.json();
    assert!(me["tenant"].is_null(), "nor mapped into B: {me}");
    // Nor does one from before that is still active map the platform's application into B or cap it.
    let active = ApiClient {
        id: Uuid::from_u128(78),
        status: ClientStatus::Active,
        revoked_at: None,
        roles: vec!["Documents.Read".into()],
        ..old
    };
    w.app.store.create_api_client(&active, None).await.unwrap();
    w.app.state.lookups.invalidate(); // as the API's own writes do
    let me = w.me(&admin).await.json();
    assert!(me["tenant"].is_null(), "a platform directory's application answers to no tenant: {me}");
    assert_eq!(me["permissions"], json!(["Platform.Admin"]), "{me}");
}

#[actix_web::test]
async fn a_partner_application_serves_two_tenants_from_two_directories_without_crossing() {
    let w = local().await;
    let (a, b) = (json!(Uuid::from_u128(1).to_string()), json!(Uuid::from_u128(2).to_string()));
    let (a_admin, b_admin) = (w.token("app-a-admin").await, w.token("app-b-everything").await);
    let admin = w.token("app-platform").await;
    let partner_home = w.token("partner-home").await;
    let partner_in_b = w.token("partner-in-b").await;
    assert_eq!(decode_unverified(&partner_home).1["azp"], "partner-app");
    assert_eq!(decode_unverified(&partner_in_b).1["azp"], "partner-app");

    // Before any registration the partner's home directory maps to no tenant.
    assert_403(&w.me(&partner_home).await, "UnknownTenant");

    // A asks for the partner's application from the partner's directory: pending, applies to nothing yet.
    let request = w
        .post(
            &a_admin,
            "/api/v1/clients",
            &registration("partner-app", Some(DIR_PARTNER), &["Documents.Read", "Documents.Write"]),
        )
        .await;
    assert_eq!(request.status, 202, "{}", body_text(&request));
    assert_eq!(request.json()["status"], "pending");
    assert_403(&w.me(&partner_home).await, "UnknownTenant");
    let pending = w.call(&format!("/api/v1/tenants/{}/clients", a.as_str().unwrap()), &admin).await.json();
    assert_eq!(pending["value"][0]["status"], "pending", "{pending}");

    // The platform approves: the partner now serves tenant A with the granted roles.
    let approved = w.send(&admin, decision(&request, "approve")).await;
    assert_eq!(approved.status, 200, "{}", body_text(&approved));
    assert!(approved.json()["decidedAt"].is_string());
    let stale = w.send(&admin, decision(&request, "reject")).await;
    assert_eq!(stale.status, 412, "a decision on a stale read is refused: {}", body_text(&stale));
    let again = w.send(&admin, decision(&approved, "reject")).await;
    assert_eq!(again.status, 409, "a decided registration stays decided: {}", body_text(&again));
    let me = w.me(&partner_home).await;
    assert_eq!(tenant_of(&me), a);
    assert_eq!(me.json()["permissions"], json!(["Documents.Read", "Documents.Write"]));
    let written =
        w.post(&partner_home, "/api/v1/documents", &json!({"title": "from the partner", "docType": "memo"})).await;
    assert_eq!(written.status, 201, "{}", body_text(&written));
    let doc_path = format!("/api/v1/documents/{}", written.json()["id"].as_str().unwrap());
    assert_eq!(w.call("/api/v1/documents", &a_admin).await.json()["value"][0]["title"], "from the partner");

    // The same application, registered by B for B's own directory, serves B and never sees A.
    let b_registration =
        w.post(&b_admin, "/api/v1/clients", &registration("partner-app", None, &["Documents.Read"])).await;
    assert_eq!(b_registration.status, 201, "{}", body_text(&b_registration));
    let me = w.me(&partner_in_b).await;
    assert_eq!(tenant_of(&me), b);
    assert_eq!(me.json()["permissions"], json!(["Documents.Read"]), "B's grant caps B's side only");
    assert_eq!(w.call("/api/v1/documents", &partner_in_b).await.json()["value"], json!([]));
    assert_eq!(w.call(&doc_path, &partner_in_b).await.status, 404, "A's document does not exist for B");
    assert_eq!(tenant_of(&w.me(&partner_home).await), a, "and A's side is unchanged");
    assert_eq!(w.me(&partner_home).await.json()["permissions"], json!(["Documents.Read", "Documents.Write"]));

    // B asking for the partner's home directory learns nothing: the same 202 any request gets. The platform
    // cannot hand the directory's tokens to two tenants.
    let b_request =
        w.post(&b_admin, "/api/v1/clients", &registration("partner-app", Some(DIR_PARTNER), &["Documents.Read"])).await;
    assert_eq!((b_request.status, b_request.json()["status"].clone()), (202, json!("pending")));
    let refused = w.send(&admin, decision(&b_request, "approve")).await;
    assert_eq!(refused.status, 409, "{}", body_text(&refused));
    let rejected = w.send(&admin, decision(&b_request, "reject")).await;
    assert_eq!(rejected.json()["status"], "rejected");
    assert_eq!(tenant_of(&w.me(&partner_home).await), a);

    // A duplicate within one tenant conflicts; the answer speaks only of the caller's own tenant.
    let duplicate = w.post(&b_admin, "/api/v1/clients", &registration("partner-app", None, &["Documents.Read"])).await;
    assert_eq!(duplicate.status, 409);
    assert!(duplicate.json()["detail"].as_str().unwrap().contains("your tenant"), "{}", body_text(&duplicate));

    // A revokes: the partner's home-directory tokens are refused at once; B's side keeps working.
    let a_id = request.json()["id"].as_str().unwrap().to_owned();
    let a_etag = w.call(&format!("/api/v1/clients/{a_id}"), &a_admin).await.header("etag").unwrap().to_owned();
    let revoke = ClientRequest::new("DELETE", &format!("/api/v1/clients/{a_id}")).header("If-Match", &a_etag);
    let revoked = w.send(&a_admin, revoke).await;
    assert_eq!(revoked.json()["status"], "revoked");
    assert_403(&w.me(&partner_home).await, "ClientRevoked");
    assert_eq!(tenant_of(&w.me(&partner_in_b).await), b);

    // Every decision is in the audit chain of the tenant it concerns, which verifies.
    let a_audit = body_text(&w.call("/api/v1/audit-events?resourceType=clients", &a_admin).await);
    assert!(a_audit.contains("approved application partner-app of directory"), "{a_audit}");
    let b_audit = body_text(&w.call("/api/v1/audit-events?resourceType=clients", &b_admin).await);
    assert!(b_audit.contains("rejected application partner-app") && !b_audit.contains("approved"), "{b_audit}");
    for token in [&a_admin, &b_admin] {
        let verified = w.call("/api/v1/audit-events/verify", token).await.json();
        assert_eq!(verified["valid"], true, "{verified}");
    }
}

#[actix_web::test]
async fn platform_admin_counts_only_from_the_platform_directory() {
    let w = local().await;
    let rogue = w.token("app-b-rogue-admin").await;
    assert_eq!(decode_unverified(&rogue).1["roles"], json!(["Platform.Admin", "Documents.Read"]));
    let me = w.me(&rogue).await;
    assert_eq!(tenant_of(&me), json!(Uuid::from_u128(2).to_string()));
    assert_eq!(
        me.json()["permissions"],
        json!(["Documents.Read"]),
        "the role is dropped outside the platform directory"
    );
    assert_403(&w.call("/api/v1/tenants", &rogue).await, "InsufficientScope");
    let a_tenant = format!("/api/v1/tenants/{}/clients", Uuid::from_u128(1));
    assert_403(&w.call(&a_tenant, &rogue).await, "InsufficientScope");
    assert_eq!(w.call("/api/v1/tenants", &w.token("app-platform").await).await.status, 200);
}

#[actix_web::test]
async fn a_registration_caps_its_application_however_its_id_is_spelled() {
    let w = local().await;
    let a_admin = w.token("app-a-admin").await;
    let app_id = "3f2504e0-4f89-11d3-9a0c-0305e82c3301";
    // Pasted in upper case with spaces around it; tokens carry the GUID in lower case.
    let spelled = format!(" {} ", app_id.to_uppercase());
    let registered = w.post(&a_admin, "/api/v1/clients", &registration(&spelled, None, &["Documents.Read"])).await;
    assert_eq!(registered.status, 201, "{}", body_text(&registered));
    assert_eq!(registered.json()["appId"], app_id, "stored as tokens carry it");
    let token = w.app.mint(DIR_A, &["Documents.Read", "Documents.Write", "Usage.Read"], app_id);
    assert_eq!(w.me(&token).await.json()["permissions"], json!(["Documents.Read"]), "the cap applies");
    let again =
        w.post(&a_admin, "/api/v1/clients", &registration(app_id, None, &["Documents.Read", "Usage.Read"])).await;
    assert_eq!(again.status, 409, "one application, one registration: {}", body_text(&again));
    let blank = w.post(&a_admin, "/api/v1/clients", &registration("   ", None, &["Documents.Read"])).await;
    assert_eq!(blank.status, 422, "{}", body_text(&blank));
}
