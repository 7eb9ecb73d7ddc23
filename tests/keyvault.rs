//! Key Vault end to end: the real `SecretClient` and managed-identity credential against local endpoints, with the
//! test certificate trusted through the client's transport options (not the process's trust store).
//!
//! Like `managed_identity.rs`, the test runs twice: as the parent it serves Key Vault (https) and the App Service
//! identity endpoint (http), then starts this binary again with `IDENTITY_ENDPOINT` / `IDENTITY_HEADER` set (the
//! credential reads them from the environment, and setting them in a running test process would need `unsafe`);
//! as the child (`METERLINE_KV_TEST_CHILD` set) it is the client.

#[path = "e2e/support/endpoints.rs"]
#[allow(dead_code)]
mod endpoints;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use azure_core::http::{ClientOptions, Transport};
use meterline::azure::keyvault::{KeyVault, VaultSecrets, client_options};
use secrecy::ExposeSecret;
use serde_json::json;

use endpoints::{Reply, Seen, TestCa, TestServer, managed_identity_endpoint};

const TEST_NAME: &str = "secret_client_with_managed_identity_end_to_end";
const CHILD_FLAG: &str = "METERLINE_KV_TEST_CHILD";

#[tokio::test]
async fn secret_client_with_managed_identity_end_to_end() {
    if std::env::var_os(CHILD_FLAG).is_some() {
        child().await;
    } else {
        parent().await;
    }
}

async fn child() {
    let url = std::env::var("METERLINE_KV_TEST_URL").unwrap();
    let pem = std::fs::read(std::env::var("METERLINE_KV_TEST_CA").unwrap()).unwrap();
    let credential = meterline::azure::managed_identity(None).unwrap();

    // Without the test CA in the transport, the vault's certificate is refused: trust comes from the options below.
    let mut no_retries = client_options(&url, std::time::Duration::from_secs(5));
    no_retries.client_options.retry = azure_core::http::RetryOptions::none();
    let untrusting = KeyVault::new(&url, credential.clone(), Some(no_retries)).unwrap();
    assert!(untrusting.get("database").await.is_err(), "an unknown CA must not be trusted");

    let http = reqwest_azure::Client::builder()
        .tls_certs_only([reqwest_azure::Certificate::from_pem(&pem).unwrap()])
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let mut options = client_options(&url, std::time::Duration::from_secs(5));
    options.client_options = ClientOptions { transport: Some(Transport::new(Arc::new(http))), ..Default::default() };
    let vault = KeyVault::new(&url, credential, Some(options)).unwrap();
    let secrets = VaultSecrets::load(vault, &["database", "cursor"]).await.unwrap();
    let database = secrets.cell("database").unwrap();
    assert_eq!(database.get().expose_secret(), "Server=tcp:db;Password=one");
    assert_eq!(secrets.cell("cursor").unwrap().get().expose_secret(), "k".repeat(40));
    assert!(!format!("{database:?}").contains("one"), "cells never print their value");

    // The vault rotated the secret: a refresh replaces the value in the cell every holder shares.
    assert_eq!(secrets.refresh().await, 2);
    assert_eq!(database.get().expose_secret(), "Server=tcp:db;Password=two");
}

async fn parent() {
    let ca = TestCa::new();
    let identity = managed_identity_endpoint().await;
    let reads = Arc::new(Mutex::new(0_usize));
    let counter = reads.clone();
    let vault = TestServer::https(&ca, move |request: &Seen| {
        let Some(auth) = request.header("authorization") else {
            return Reply::Respond {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    "Bearer authorization=\"https://login.microsoftonline.com/t\", resource=\"https://vault.azure.net\"".into(),
                )],
                body: String::new(),
            };
        };
        if auth != "Bearer token-for-https://vault.azure.net" {
            return Reply::status(403);
        }
        let name = request.path.trim_start_matches("/secrets/").trim_end_matches('/');
        let value = match name {
            "database" => {
                let mut n = counter.lock().unwrap();
                *n += 1;
                format!("Server=tcp:db;Password={}", if *n == 1 { "one" } else { "two" })
            }
            "cursor" => "k".repeat(40),
            _ => return Reply::json(404, json!({"error": {"code": "SecretNotFound"}})),
        };
        Reply::json(200, json!({"value": value, "id": format!("https://vault/secrets/{name}/v1")}))
    })
    .await;

    let mut command = tokio::process::Command::new(std::env::current_exe().unwrap());
    command
        .args([TEST_NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_FLAG, "1")
        .env("METERLINE_KV_TEST_URL", vault.url())
        .env("METERLINE_KV_TEST_CA", &ca.ca_file)
        .env("IDENTITY_ENDPOINT", format!("{}/msi/token", identity.url()))
        .env("IDENTITY_HEADER", "test-identity-header")
        .env("NO_PROXY", "127.0.0.1,localhost")
        .env("no_proxy", "127.0.0.1,localhost")
        .kill_on_drop(true);
    for name in
        ["SSL_CERT_FILE", "SSL_CERT_DIR", "IMDS_ENDPOINT", "MSI_ENDPOINT", "MSI_SECRET", "HTTPS_PROXY", "https_proxy"]
    {
        command.env_remove(name);
    }
    let output = tokio::time::timeout(Duration::from_secs(120), command.output()).await.unwrap().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "the child failed:\n{stdout}\n{}", String::from_utf8_lossy(&output.stderr));
    assert!(stdout.contains(&format!("{TEST_NAME} ... ok")), "the child did not run the test:\n{stdout}");

    let seen = vault.seen();
    let authorized: Vec<_> = seen.iter().filter(|r| r.header("authorization").is_some()).collect();
    assert!(seen.iter().any(|r| r.header("authorization").is_none()), "a challenge first");
    assert_eq!(authorized.len(), 4, "two secrets loaded, two refreshed: {seen:#?}");
    for request in authorized {
        assert_eq!(request.method, "GET");
        assert!(request.query("api-version").is_some(), "{request:?}");
    }
    let tokens = identity.seen();
    assert!(!tokens.is_empty());
    for token in tokens {
        assert_eq!(token.query("resource"), Some("https://vault.azure.net"));
        assert_eq!(token.header("x-identity-header"), Some("test-identity-header"));
    }
}
