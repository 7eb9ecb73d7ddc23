//! Identity end to end: the handler under the host emulator, validating real tokens from a real OpenID provider.

use std::time::Duration;

use chrono::Utc;
use meterline::store::{Plan, SqliteStore, Store, Tenant, TenantStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::host::{ClientRequest, ClientResponse, HostEmulator, HostOptions};
use crate::support::oidc::{OidcProvider, Signer, TestClient, decode_unverified, forge, tamper, tamper_with};
use crate::support::routes::sample_path;
use crate::support::stores;

const AUDIENCE: &str = "api://meterline-test";
const DIR_A: &str = "aaaaaaaa-0000-0000-0000-000000000001";
const DIR_B: &str = "bbbbbbbb-0000-0000-0000-000000000002";
const DIR_PLATFORM: &str = "cccccccc-0000-0000-0000-000000000003";
const DIR_SUSPENDED: &str = "dddddddd-0000-0000-0000-000000000004";
/// Allowed by configuration, but no Meterline tenant maps to it.
const DIR_UNREGISTERED: &str = "eeeeeeee-0000-0000-0000-000000000005";
/// Not in the allow-list at all.
const DIR_FOREIGN: &str = "ffffffff-0000-0000-0000-000000000006";

const ALL_TENANT_ROLES: &[&str] = &["Tenant.Admin", "Documents.Read", "Documents.Write", "Usage.Read", "Audit.Read"];

fn clients() -> Vec<TestClient> {
    vec![
        TestClient::new("app-a-reader", DIR_A, &["Documents.Read"]),
        TestClient::new("app-a-nothing", DIR_A, &[]),
        TestClient::new("app-a-legacy", DIR_A, &["Documents.Read"]).v1(),
        TestClient::new("app-b-everything", DIR_B, ALL_TENANT_ROLES),
        TestClient::new("app-platform", DIR_PLATFORM, &["Platform.Admin"]),
        TestClient::new("app-suspended", DIR_SUSPENDED, &["Documents.Read"]),
        TestClient::new("app-unregistered", DIR_UNREGISTERED, &["Documents.Read"]),
        TestClient::new("app-foreign", DIR_FOREIGN, &["Documents.Read"]),
    ]
}

/// The provider, the handler configured to trust it, and the store's tenants.
struct World {
    provider: OidcProvider,
    host: HostEmulator,
    _root: tempfile::TempDir,
}

async fn seed(path: &std::path::Path) {
    let store = SqliteStore::open(path).await.unwrap();
    store.migrate().await.unwrap();
    let now = Utc::now();
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
        };
        store.create_tenant(&tenant, None).await.unwrap();
    }
}

async fn world(min_refetch_secs: u64) -> World {
    let provider = OidcProvider::start(AUDIENCE, clients()).await;
    let root = tempfile::tempdir().unwrap();
    seed(&root.path().join("data/meterline.db")).await;
    let allowed = [DIR_A, DIR_B, DIR_PLATFORM, DIR_SUSPENDED, DIR_UNREGISTERED].join(",");
    let host = HostEmulator::start_with(HostOptions {
        app_root: Some(root.path().to_path_buf()),
        env: vec![
            ("METERLINE_AUTH_MODE".into(), "entra".into()),
            ("METERLINE_AUTH_AUTHORITY".into(), provider.issuer()),
            ("METERLINE_AUTH_AUDIENCES".into(), format!("{AUDIENCE},meterline-api-client-id")),
            ("METERLINE_AUTH_ALLOWED_TENANTS".into(), allowed),
            ("METERLINE_AUTH_JWKS_MIN_REFETCH_SECS".into(), min_refetch_secs.to_string()),
        ],
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
    let w = world(300).await;
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
    assert_eq!(w.call(next, &admin).await.json()["value"].as_array().unwrap().len(), 1, "three tenants in all");
}

#[tokio::test]
async fn the_negative_matrix() {
    let w = world(300).await;
    let now = Utc::now().timestamp();

    let mut expired = w.claims(DIR_A);
    expired["iat"] = json!(now - 7200);
    expired["nbf"] = json!(now - 7200);
    expired["exp"] = json!(now - 120);
    assert_401(&w.me(&w.forge_signed(&expired)).await, "expired");

    let mut early = w.claims(DIR_A);
    early["nbf"] = json!(now + 600);
    assert_401(&w.me(&w.forge_signed(&early)).await, "not valid yet");

    let mut wrong_issuer = w.claims(DIR_A);
    wrong_issuer["iss"] = json!("https://login.microsoftonline.com/aaaaaaaa-0000-0000-0000-000000000001/v2.0");
    assert_401(&w.me(&w.forge_signed(&wrong_issuer)).await, "issuer");

    let mut wrong_audience = w.claims(DIR_A);
    wrong_audience["aud"] = json!("api://someone-else");
    assert_401(&w.me(&w.forge_signed(&wrong_audience)).await, "audience");

    let foreign = w.provider.token("app-foreign").await;
    assert_401(&w.me(&foreign).await, "tenant is not allowed");

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

#[tokio::test]
async fn unknown_kids_refetch_once_and_rotated_keys_are_picked_up() {
    let mut w = world(1).await;
    let before = w.provider.token("app-a-reader").await;
    assert_eq!(w.me(&before).await.status, 200);
    let loads = |host: &HostEmulator| {
        host.output().iter().filter(|l| l.contains("loaded identity provider signing keys")).count()
    };
    let initial_loads = loads(&w.host);

    w.provider.rotate_keys(false).await;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let after = w.provider.token("app-a-reader").await;
    let (header, _) = decode_unverified(&after);
    assert_ne!(header["kid"], decode_unverified(&before).0["kid"], "the provider signs with a new key");
    // Five requests with the new kid at once: one refetch serves them all.
    let calls = (0..5).map(|_| w.me(&after));
    let statuses: Vec<u16> = futures_util::future::join_all(calls).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200; 5]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(loads(&w.host), initial_loads + 1, "exactly one refetch:\n{}", w.host.output_text());

    // Forged kids right after: no refetch within the interval, straight 401.
    let forged = forge(
        &json!({"alg": "RS256", "typ": "JWT", "kid": "forged-kid"}),
        &w.claims(DIR_A),
        Signer::Rs256(&w.provider.signing_key()),
    );
    for _ in 0..5 {
        assert_eq!(w.me(&forged).await.status, 401);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(loads(&w.host), initial_loads + 1, "forged kids inside the interval fetch nothing");
}

#[tokio::test]
async fn every_v1_operation_declares_a_permission_and_enforces_it() {
    let w = world(300).await;
    let doc = w.host.http(ClientRequest::get("/api/openapi.json")).await.json();
    let nothing = w.provider.token("app-a-nothing").await;
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
            assert_401(&w.host.http(request(None)).await, "no token");
            let response = w.host.http(request(Some(&nothing))).await;
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
