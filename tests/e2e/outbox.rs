//! The outbox publisher against local Service Bus, Key Vault and managed identity endpoints (https where Azure
//! requires it): sent as CloudEvents with the identity's bearer token or a SAS from Key Vault, marked sent only
//! after a 201, retried after 5xx, never lost when killed between the send and the mark. Handler processes (the
//! host emulator, `handler run-job`) wherever the managed identity, Key Vault or a killed process is under test;
//! the app in process, on a manual clock, wherever the test waits out a backoff or a lease.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use meterline::azure::SecretCell;
use meterline::azure::servicebus::{ServiceBusAuth, ServiceBusSender};
use meterline::clock::Clock;
use meterline::jobs::{self, Job, JobTrigger};
use meterline::store::prelude::*;
use meterline::store::{SqliteStore, Tenant, TenantStatus};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::support::app::TestApp;
use crate::support::endpoints::{
    IdentityStub, Reply, Seen, TestCa, TestServer, identity_env, managed_identity_endpoint, trusting_client,
};
use crate::support::host::{HostEmulator, HostOptions, ServiceBusDelivery, on_schedule};
use crate::support::stores;

/// A Service Bus endpoint answering each send with the next status of `script` (201 once it runs out).
async fn service_bus(ca: &TestCa, script: Vec<Reply>) -> (TestServer, Arc<Mutex<Vec<Reply>>>) {
    let script = Arc::new(Mutex::new(script));
    let next = script.clone();
    let server = TestServer::https(ca, move |request: &Seen| {
        if request.method != "POST" || !request.path.ends_with("/messages") {
            return Reply::status(404);
        }
        let mut script = next.lock().unwrap();
        if script.is_empty() { Reply::status(201) } else { script.remove(0) }
    })
    .await;
    (server, script)
}

pub(crate) async fn plan(store: &Arc<dyn Store>, quota: i64, now: chrono::DateTime<chrono::Utc>) {
    store.create_plan(&stores::plan("basic", quota, now), None).await.unwrap();
}

/// Creates an active tenant "Acme" on the plan "basic".
pub(crate) async fn active_tenant(store: &Arc<dyn Store>, now: chrono::DateTime<chrono::Utc>) -> Tenant {
    let tenant = Tenant {
        id: Uuid::new_v4(),
        entra_tenant_id: None,
        name: "Acme".into(),
        status: TenantStatus::Active,
        plan_code: "basic".into(),
        created_at: now,
        updated_at: now,
        version: 1,
        billing: Default::default(),
    };
    store.create_tenant(&tenant, None).await.unwrap();
    tenant
}

fn check_cloud_event(request: &Seen, event_type: &str) -> Value {
    assert!(request.header("content-type").unwrap().starts_with("application/cloudevents+json"), "{request:?}");
    let event = request.json();
    assert_eq!(event["specversion"], "1.0");
    assert_eq!(event["source"], "/meterline");
    assert_eq!(event["type"], event_type);
    assert_eq!(event["datacontenttype"], "application/json");
    let broker: Value = serde_json::from_str(request.header("brokerproperties").expect("BrokerProperties")).unwrap();
    assert_eq!(broker["MessageId"], event["id"], "Service Bus deduplicates on the CloudEvents id");
    assert_eq!(broker["Label"], event_type);
    event
}

/// `ServiceBusSender::new` as `AppState::new` builds it, over an HTTP client that trusts the test CA.
fn sender(auth: ServiceBusAuth, ca: &TestCa, send_timeout: Duration) -> Arc<ServiceBusSender> {
    Arc::new(ServiceBusSender::with_http_client(auth, "meterline-events", trusting_client(ca, send_timeout)).unwrap())
}

#[actix_web::test]
async fn a_quota_threshold_event_is_sent_with_the_identity_token_after_5xx_and_marked_sent_only_after_201() {
    let ca = TestCa::new();
    // First run: Service Bus keeps failing (the pipeline's 3 retries included); second run: a 503, then 201.
    let failures = vec![Reply::status(500), Reply::status(500), Reply::status(502), Reply::status(500)];
    let (bus, script) = service_bus(&ca, failures).await;
    // The app in process, sending with an identity credential to the namespace, as METERLINE_SERVICEBUS_NAMESPACE
    // makes it (the managed identity endpoint itself is exercised by the handler processes below).
    let identity = Arc::new(IdentityStub::default());
    let auth = ServiceBusAuth::Entra { namespace: format!("127.0.0.1:{}", bus.port), credential: identity.clone() };
    let outbox = sender(auth, &ca, Duration::from_secs(10));
    let app = TestApp::builder()
        .setting("METERLINE_OUTBOX_TOPIC", "meterline-events")
        .configure(move |state| state.outbox_sender = Some(outbox))
        .start()
        .await;
    let store = app.store.clone();
    plan(&store, 10, app.clock.now()).await;
    let tenant = Uuid::new_v4();
    let upsert = json!({"specversion": "1.0", "id": "t-1", "source": "/crm", "type": "meterline.tenant.upserted.v1",
        "data": {"tenantId": tenant, "name": "Acme", "planCode": "basic"}});
    app.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&upsert.to_string())).await.accepted();
    // 9 units of a quota of 10 cross 80 % once; a redelivery changes nothing.
    let usage = json!({"specversion": "1.0", "id": "u-1", "source": "/meter", "type": "meterline.usage.reported.v1",
        "data": {"tenantId": tenant, "meter": "ocr.pages", "units": 9, "occurredAt": app.clock.now()}});
    for _ in 0..2 {
        app.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&usage.to_string())).await.accepted();
    }
    let rows = store.list_outbox(0, 10).await.unwrap();
    assert_eq!(rows.len(), 1, "exactly one outbox event: {rows:#?}");
    let event_id = rows[0].message.id;

    let timer = on_schedule();
    let first = app.invoke_timer("OutboxPublisher", timer.clone()).await;
    assert!(first.logs()[0].contains("published 0 of 1 due events, 1 failed"), "{:?}", first.logs());
    assert_eq!(bus.seen().len(), 4, "one try and three retries");
    let row = &store.list_outbox(0, 10).await.unwrap()[0];
    assert_eq!(row.sent_at, None, "not marked sent without a 201");
    assert_eq!(row.attempts, 1);
    assert!(row.last_error.as_deref().unwrap().contains("answered 500"), "{row:?}");
    assert_eq!(row.message.available_at, row.message.created_at + jobs::outbox::backoff(1), "backoff moved it");

    // The next run within the backoff sends nothing; after it, a 503 is retried and the 201 marks it sent.
    app.clock.advance(jobs::outbox::backoff(1) - chrono::Duration::milliseconds(1));
    let skipped = app.invoke_timer("OutboxPublisher", timer.clone()).await;
    assert!(skipped.logs()[0].contains("published 0 of 0 due events"), "{:?}", skipped.logs());
    assert_eq!(bus.seen().len(), 4, "nothing sent within the backoff");
    script.lock().unwrap().push(Reply::status(503));
    app.clock.advance(chrono::Duration::milliseconds(1));
    let second = app.invoke_timer("OutboxPublisher", timer).await;
    assert!(second.logs()[0].contains("published 1 of 1 due events, 0 failed"), "{:?}", second.logs());
    let seen = bus.seen();
    assert_eq!(seen.len(), 6);
    for request in &seen {
        assert_eq!(request.path, "/meterline-events/messages");
        assert_eq!(request.header("authorization"), Some("Bearer token-for-https://servicebus.azure.net"));
        let event = check_cloud_event(request, "meterline.quota.threshold-crossed.v1");
        assert_eq!(event["id"], event_id.to_string(), "every try carries the same id");
        assert_eq!(event["data"]["threshold"], 80);
        assert_eq!(event["data"]["unitsUsed"], 9);
        assert_eq!(event["data"]["quotaUnits"], 10);
        assert_eq!(event["data"]["tenantId"], tenant.to_string());
    }
    let sent = &store.list_outbox(0, 10).await.unwrap()[0];
    assert_eq!(sent.sent_at, Some(app.clock.now()), "marked sent at the run that got the 201");
    let scopes = identity.scopes();
    assert!(!scopes.is_empty() && scopes.iter().all(|s| s == "https://servicebus.azure.net/.default"), "{scopes:?}");
}

#[tokio::test]
async fn one_run_drains_a_backlog_larger_than_a_batch_in_order() {
    let ca = TestCa::new();
    let identity = managed_identity_endpoint().await;
    let (bus, _script) = service_bus(&ca, Vec::new()).await;
    let mut env = identity_env(&identity, &ca);
    env.push(("METERLINE_SERVICEBUS_NAMESPACE".into(), format!("127.0.0.1:{}", bus.port)));
    env.push(("METERLINE_OUTBOX_BATCH_SIZE".into(), "2".into()));
    let host = HostEmulator::start_with(HostOptions { env, ..HostOptions::default() }).await;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&host.app_root.join("data/meterline.db")).await.unwrap());
    let now = chrono::Utc::now();
    plan(&store, 10, now).await;
    let tenant = active_tenant(&store, now).await;
    // Five status changes: five outbox events, alternately suspended and reactivated.
    for version in 1..=5 {
        let status = if version % 2 == 1 { TenantStatus::Suspended } else { TenantStatus::Active };
        store.set_tenant_status(tenant.id, status, version, now).await.unwrap();
    }
    let rows = store.list_outbox(0, 10).await.unwrap();
    assert_eq!(rows.len(), 5);

    let timer = on_schedule();
    let run = host.invoke_timer("OutboxPublisher", timer).await;
    assert!(run.logs()[0].contains("published 5 of 5 due events, 0 failed"), "batches of 2, one run: {:?}", run.logs());
    let sent: Vec<String> = bus.seen().iter().map(|r| r.json()["id"].as_str().unwrap().to_owned()).collect();
    let expected: Vec<String> = rows.iter().map(|r| r.message.id.to_string()).collect();
    assert_eq!(sent, expected, "each event once, in outbox order");
    assert!(store.list_outbox(0, 10).await.unwrap().iter().all(|r| r.sent_at.is_some()));
    // With the managed identity: its token from the App Service identity endpoint, for Service Bus.
    for request in bus.seen() {
        assert_eq!(request.header("authorization"), Some("Bearer token-for-https://servicebus.azure.net"));
    }
    let tokens = identity.seen();
    assert!(!tokens.is_empty() && tokens.iter().all(|t| t.query("resource") == Some("https://servicebus.azure.net")));
    assert!(tokens.iter().all(|t| t.header("x-identity-header") == Some("test-identity-header")));
}

/// A Key Vault answering `GET /secrets/{name}/` with the current value of `secrets`, after the authentication
/// authentication challenge `SecretClient` expects first.
pub(crate) async fn key_vault(ca: &TestCa, secrets: Arc<Mutex<Vec<(String, String)>>>) -> TestServer {
    TestServer::https(ca, move |request: &Seen| {
        let Some(auth) = request.header("authorization") else {
            return Reply::Respond {
                status: 401,
                headers: vec![(
                    "WWW-Authenticate".into(),
                    "Bearer authorization=\"https://login.microsoftonline.com/tenant\", resource=\"https://vault.azure.net\"".into(),
                )],
                body: String::new(),
            };
        };
        if auth != "Bearer token-for-https://vault.azure.net" {
            return Reply::status(403);
        }
        let name = request.path.trim_start_matches("/secrets/").trim_end_matches('/');
        match secrets.lock().unwrap().iter().find(|(n, _)| n == name) {
            Some((_, value)) => Reply::json(200, json!({"value": value, "id": format!("https://vault/secrets/{name}/v1")})),
            None => Reply::json(404, json!({"error": {"code": "SecretNotFound"}})),
        }
    })
    .await
}

/// Checks a SAS `Authorization` header: signed with `key` for the topic URL, valid for about an hour.
fn check_sas(request: &Seen, bus_port: u16, key: &str) {
    let header = request.header("authorization").expect("a SAS token");
    let expiry: i64 = header.split("&se=").nth(1).unwrap().split('&').next().unwrap().parse().unwrap();
    let expected = meterline::azure::servicebus::sas_token(
        &format!("https://127.0.0.1:{bus_port}/meterline-events"),
        "send",
        key,
        expiry,
    );
    assert_eq!(header, expected, "signed with key {key}");
    assert!(expiry > chrono::Utc::now().timestamp() + 3000);
}

fn run_job_command(root: &std::path::Path, env: &[(String, String)]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_handler"));
    command.args(["run-job", "outbox-publish"]).current_dir(root).kill_on_drop(true);
    for (key, _) in std::env::vars().filter(|(k, _)| k.starts_with("METERLINE_")) {
        command.env_remove(key);
    }
    command.env("METERLINE_LOG_FORMAT", "text").envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    command
}

#[tokio::test]
async fn an_event_is_never_lost_when_the_publisher_dies_between_the_send_and_the_mark() {
    let ca = TestCa::new();
    let identity = managed_identity_endpoint().await;
    // Service Bus stores the first message but the publisher is killed before it reads the 201.
    let (bus, _) = service_bus(&ca, vec![Reply::Hang]).await;
    let secrets = Arc::new(Mutex::new(vec![(
        "sb-connection".to_owned(),
        format!("Endpoint=sb://127.0.0.1:{}/;SharedAccessKeyName=send;SharedAccessKey=key-one", bus.port),
    )]));
    let vault = key_vault(&ca, secrets.clone()).await;
    let root = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&root.path().join("data/meterline.db")).await.unwrap());
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    plan(&store, 100, now).await;
    let tenant = active_tenant(&store, now).await;
    store.set_tenant_status(tenant.id, TenantStatus::Suspended, 1, now).await.unwrap();

    let mut env = identity_env(&identity, &ca);
    env.push(("METERLINE_KEYVAULT_URL".into(), vault.url()));
    env.push(("METERLINE_SERVICEBUS_CONNECTION_STRING_SECRET_NAME".into(), "sb-connection".into()));
    env.push(("METERLINE_OUTBOX_SEND_TIMEOUT_SECS".into(), "2".into()));
    let mut child = run_job_command(root.path(), &env).spawn().unwrap();
    bus.wait_for(1, Duration::from_secs(60)).await;
    child.kill().await.unwrap();
    let row = &store.list_outbox(0, 10).await.unwrap()[0];
    assert_eq!(row.sent_at, None, "killed before the mark: still pending");

    // The dead publisher's lease keeps a second one out until it expires (4 x 2 s + 5 s + 5 s between renewals),
    // then the event goes again: `run-job outbox-publish` in process, on a clock past the expiry (the same SAS
    // key, which the processes read from Key Vault).
    let blocked = run_job_command(root.path(), &env).output().await.unwrap();
    assert!(String::from_utf8_lossy(&blocked.stdout).contains("skipped: another publisher holds the lease"));
    let lease = jobs::outbox::lease_duration(Duration::from_secs(2));
    assert_eq!(lease, chrono::Duration::seconds(18));
    let connection = SecretCell::new(secrets.lock().unwrap()[0].1.clone().into());
    let outbox = sender(ServiceBusAuth::Sas { connection_string: connection }, &ca, Duration::from_secs(2));
    let app = TestApp::builder()
        .root(root.path())
        .at(meterline::clock::SystemClock.now() + lease + chrono::Duration::seconds(1))
        .configure(move |state| state.outbox_sender = Some(outbox))
        .start()
        .await;
    let run = jobs::run(&app.state, Job::OutboxPublish, JobTrigger::Cli).await.unwrap();
    assert!(run.summary.contains("published 1 of 1 due events"), "{}", run.summary);
    let seen = bus.seen();
    assert_eq!(seen.len(), 2, "sent again: a duplicate, not a loss");
    let (a, b) = (
        check_cloud_event(&seen[0], "meterline.tenant.suspended.v1"),
        check_cloud_event(&seen[1], "meterline.tenant.suspended.v1"),
    );
    assert_eq!(a["id"], b["id"], "the duplicate carries the same id, so consumers drop it");
    assert_eq!(a["data"]["tenantId"], tenant.id.to_string());
    assert_eq!(a["subject"], format!("tenants/{}", tenant.id));
    for request in &seen {
        check_sas(request, bus.port, "key-one");
    }
    assert!(store.list_outbox(0, 10).await.unwrap()[0].sent_at.is_some());
    // Key Vault: the challenge first, then the secret with the identity's token for the challenged resource.
    let reads = vault.seen();
    assert!(reads.iter().any(|r| r.header("authorization").is_none()), "the client learns the scope from a challenge");
    assert!(reads.iter().filter(|r| r.header("authorization").is_some()).all(|r| r.path == "/secrets/sb-connection/"));
    assert!(identity.seen().iter().any(|t| t.query("resource") == Some("https://vault.azure.net")));
}

#[tokio::test]
async fn a_secret_rotated_in_key_vault_reaches_the_running_handler() {
    let ca = TestCa::new();
    let identity = managed_identity_endpoint().await;
    let (bus, _) = service_bus(&ca, Vec::new()).await;
    let connection =
        |key: &str| format!("Endpoint=sb://127.0.0.1:{}/;SharedAccessKeyName=send;SharedAccessKey={key}", bus.port);
    let secrets = Arc::new(Mutex::new(vec![
        ("sb-connection".to_owned(), connection("key-one")),
        ("cursor-key".to_owned(), "c".repeat(40)),
    ]));
    let vault = key_vault(&ca, secrets.clone()).await;
    let mut env = identity_env(&identity, &ca);
    env.push(("METERLINE_KEYVAULT_URL".into(), vault.url()));
    env.push(("METERLINE_SERVICEBUS_CONNECTION_STRING_SECRET_NAME".into(), "sb-connection".into()));
    env.push(("METERLINE_CURSOR_KEY_SECRET_NAME".into(), "cursor-key".into()));
    env.push(("METERLINE_KEYVAULT_REFRESH_SECS".into(), "1".into()));
    let host = HostEmulator::start_with(HostOptions { env, ..HostOptions::default() }).await;
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&host.app_root.join("data/meterline.db")).await.unwrap());
    plan(&store, 100, chrono::Utc::now()).await;
    let upsert = |id: &str, tenant: Uuid| {
        json!({"specversion": "1.0", "id": id, "source": "/crm", "type": "meterline.tenant.upserted.v1",
            "data": {"tenantId": tenant, "name": "Acme", "planCode": "basic"}})
        .to_string()
    };
    let suspend = |id: &str, tenant: Uuid| {
        json!({"specversion": "1.0", "id": id, "source": "/crm", "type": "meterline.tenant.suspended.v1",
            "data": {"tenantId": tenant}})
        .to_string()
    };
    let timer = on_schedule();
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    for body in [upsert("a-1", first), suspend("a-2", first)] {
        host.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&body)).await.accepted();
    }
    host.invoke_timer("OutboxPublisher", timer.clone()).await.accepted();
    check_sas(&bus.wait_for(1, Duration::from_secs(30)).await[0], bus.port, "key-one");

    // Rotated in the vault. A refresh round under way may have read the old value; the next whole round reads
    // the new one, and logs once it has set every secret.
    let refreshed = |l: &str| l.contains("Key Vault secrets refreshed");
    let rounds = host.output().iter().filter(|l| refreshed(l)).count();
    secrets.lock().unwrap()[0].1 = connection("key-two");
    host.wait_for_lines("logging a Key Vault refresh", refreshed, rounds + 2, Duration::from_secs(30)).await;
    for body in [upsert("b-1", second), suspend("b-2", second)] {
        host.invoke_service_bus("IntegrationEvents", &ServiceBusDelivery::new(&body)).await.accepted();
    }
    host.invoke_timer("OutboxPublisher", timer).await.accepted();
    let seen = bus.wait_for(2, Duration::from_secs(30)).await;
    check_sas(&seen[1], bus.port, "key-two");
    assert_eq!(seen[1].json()["data"]["tenantId"], second.to_string());
}

#[tokio::test]
async fn a_send_that_times_out_is_retried_within_the_run() {
    let ca = TestCa::new();
    let identity = managed_identity_endpoint().await;
    let (bus, _) = service_bus(&ca, vec![Reply::Hang]).await;
    let root = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&root.path().join("data/meterline.db")).await.unwrap());
    store.migrate().await.unwrap();
    let now = chrono::Utc::now();
    plan(&store, 100, now).await;
    let tenant = active_tenant(&store, now).await;
    store.set_tenant_status(tenant.id, TenantStatus::Suspended, 1, now).await.unwrap();
    let mut env = identity_env(&identity, &ca);
    env.push(("METERLINE_SERVICEBUS_NAMESPACE".into(), format!("127.0.0.1:{}", bus.port)));
    env.push(("METERLINE_OUTBOX_SEND_TIMEOUT_SECS".into(), "1".into()));
    let output = run_job_command(root.path(), &env).output().await.unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        stdout.contains("published 1 of 1 due events, 0 failed"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let seen = bus.seen();
    assert_eq!(seen.len(), 2, "the timed-out try, then the retry that got its 201");
    assert_eq!(seen[0].json()["id"], seen[1].json()["id"]);
    assert!(store.list_outbox(0, 10).await.unwrap()[0].sent_at.is_some());
}
