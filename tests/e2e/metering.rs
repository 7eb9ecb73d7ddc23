//! Metering: rate limits and their headers, one durable usage event per request with refunds, and plan cost
//! overrides, in process (`startup::app`, manual clock); exact quotas under concurrency in one and two handler
//! processes, and nothing acknowledged lost to SIGKILL, against the real binary under the host emulator; quota
//! leases: spent in memory, settled exactly, reclaimed after a crash.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use meterline::clock::Clock;
use meterline::store::QuotaLeaseStore;
use serde_json::{Value, json};

use crate::support::app::{DEV_APP_ID, TestApp};
use crate::support::dev_token;
use crate::support::host::{ClientRequest, ClientResponse, HostEmulator, HostOptions, on_schedule};

/// The call these tests meter: a read the quota applies to, one unit on the "metered" plan (`/api/v1/me` is a
/// self-service read the quota does not apply to).
pub(crate) const METERED: &str = "/api/v1/documents";
pub(crate) const DIR_A: &str = "aaaaaaaa-0000-0000-0000-0000000000aa";
const DIR_OPS: &str = "0b500000-0000-0000-0000-0000000000ff";
/// Tenant A's units used this period (the platform administrator's calls are metered on its own tenant).
pub(crate) const A_UNITS: &str = "SELECT coalesce(sum(q.units_used), 0) FROM quota_usage q JOIN tenants t ON t.id = q.tenant_id \
    WHERE t.entra_tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000aa'";

pub(crate) struct Metered {
    pub(crate) host: HostEmulator,
    pub(crate) root: tempfile::TempDir,
    pub(crate) user: String,
}

async fn start(root: &std::path::Path) -> HostEmulator {
    HostEmulator::start_with(HostOptions { app_root: Some(root.to_path_buf()), ..HostOptions::default() }).await
}

/// Through `send`, as the platform administrator `admin`: creates the plan "metered" with these limits and moves
/// tenant A onto it.
async fn move_a_to_plan<F, Fut>(send: F, admin: &str, requests_per_minute: i64, burst: i64, quota: i64, policy: &str)
where
    F: Fn(ClientRequest) -> Fut,
    Fut: Future<Output = ClientResponse>,
{
    let auth = |r: ClientRequest| r.header("Authorization", &format!("Bearer {admin}"));
    let plan = json!({"code": "metered", "name": "Metered", "requestsPerMinute": requests_per_minute, "burst": burst,
        "monthlyQuotaUnits": quota, "overagePolicy": policy, "currency": "EUR", "basePriceMicros": 0, "overageUnitPriceMicros": 0});
    assert_eq!(send(auth(ClientRequest::new("POST", "/api/v1/plans").json(&plan))).await.status, 201);
    // The metered call of these tests, `GET /api/v1/documents` (METERED), costs one unit on this plan.
    let one_unit = json!({"overrides": {"listDocuments": 1}});
    let costs = ClientRequest::new("PUT", "/api/v1/plans/metered/costs").json(&one_unit).header("If-Match", "*");
    assert_eq!(send(auth(costs)).await.status, 200);
    let tenants = send(auth(ClientRequest::get("/api/v1/tenants"))).await.json();
    let a = tenants["value"].as_array().unwrap().iter().find(|t| t["entraTenantId"] == DIR_A).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let moved = send(auth(
        ClientRequest::new("PATCH", &format!("/api/v1/tenants/{a}"))
            .body("{\"plan\":\"metered\"}")
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", "*"),
    ))
    .await;
    assert_eq!(moved.status, 200, "{}", String::from_utf8_lossy(&moved.body));
}

/// A handler process with tenant A moved to a plan with the given limits; `user` is a Documents.Read token of A.
pub(crate) async fn metered(requests_per_minute: i64, burst: i64, quota: i64, policy: &str) -> Metered {
    let root = tempfile::tempdir().unwrap();
    let user = dev_token(root.path(), &["--tenant", DIR_A, "--roles", "Documents.Read"]);
    let admin = dev_token(root.path(), &["--tenant", DIR_OPS, "--roles", "Platform.Admin", "--app-id", "ops"]);
    let host = start(root.path()).await;
    move_a_to_plan(|r| host.http(r), &admin, requests_per_minute, burst, quota, policy).await;
    Metered { host, root, user }
}

/// [`metered`] in process: the app, a Documents.Read token of tenant A, and a platform administrator's token.
pub(crate) async fn metered_app(
    requests_per_minute: i64,
    burst: i64,
    quota: i64,
    policy: &str,
) -> (TestApp, String, String) {
    metered_in(TestApp::start().await, requests_per_minute, burst, quota, policy).await
}

/// [`metered_app`] on an app the caller started.
pub(crate) async fn metered_in(
    app: TestApp,
    requests_per_minute: i64,
    burst: i64,
    quota: i64,
    policy: &str,
) -> (TestApp, String, String) {
    let user = app.token(DIR_A, "Documents.Read", DEV_APP_ID).await;
    let admin = app.token(DIR_OPS, "Platform.Admin", "ops").await;
    move_a_to_plan(|r| app.http(r), &admin, requests_per_minute, burst, quota, policy).await;
    (app, user, admin)
}

/// One metered call ([`METERED`]).
async fn call(host: &HostEmulator, token: &str) -> ClientResponse {
    host.http(ClientRequest::get(METERED).header("Authorization", &format!("Bearer {token}"))).await
}

/// `GET /api/v1/me`, a self-service read: rate-limited and recorded, never refused for quota.
async fn me(host: &HostEmulator, token: &str) -> ClientResponse {
    host.http(ClientRequest::get("/api/v1/me").header("Authorization", &format!("Bearer {token}"))).await
}

fn db(root: &std::path::Path) -> rusqlite::Connection {
    rusqlite::Connection::open(root.join("data/meterline.db")).unwrap()
}

pub(crate) fn count(conn: &rusqlite::Connection, sql: &str) -> i64 {
    conn.query_row(sql, [], |r| r.get(0)).unwrap()
}

#[tokio::test]
async fn two_hundred_concurrent_calls_against_a_quota_of_one_hundred_accept_exactly_one_hundred() {
    let m = metered(1_000_000, 100_000, 100, "block").await;
    let calls = (0..200).map(|_| call(&m.host, &m.user));
    let responses = futures_util::future::join_all(calls).await;
    let ok = responses.iter().filter(|r| r.status == 200).count();
    assert_eq!(ok, 100);
    let refused: Vec<&ClientResponse> = responses.iter().filter(|r| r.status == 429).collect();
    assert_eq!(refused.len(), 100);
    let body = refused[0].json();
    assert_eq!(body["type"], "https://iana.org/assignments/http-problem-types#quota-exceeded");
    assert_eq!(body["violated-policies"], json!(["month"]));
    assert!(refused[0].header("retry-after").is_some_and(|s| s.parse::<i64>().unwrap() > 0));
    assert!(refused[0].header("ratelimit").unwrap().contains("\"month\";r=0"));
    let conn = db(m.root.path());
    assert_eq!(count(&conn, A_UNITS), 100);
    assert_eq!(
        count(&conn, "SELECT count(*) FROM usage_events WHERE operation_id = 'listDocuments' AND billable = 1"),
        100
    );
    // The summary a tenant reads is the counter the limiter enforces; reading it spends no quota.
    let m2 = metered(1_000_000, 100_000, 1_000, "allow").await;
    call(&m2.host, &m2.user).await;
    me(&m2.host, &m2.user).await;
    let quota = me(&m2.host, &m2.user).await.json()["quota"].clone();
    assert_eq!(
        (quota["quotaUnits"].clone(), quota["unitsUsed"].clone(), quota["remainingUnits"].clone()),
        (json!(1000), json!(1), json!(999))
    );
    assert_eq!(quota["overagePolicy"], "allow");
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM usage_events WHERE operation_id = 'listDocuments' AND billable = 0 AND status = 429"
        ),
        100
    );
}

#[tokio::test]
async fn two_handler_processes_on_one_store_share_the_quota_exactly() {
    let m = metered(1_000_000, 100_000, 100, "block").await;
    let second = start(m.root.path()).await;
    let calls = (0..200).map(|i| call(if i % 2 == 0 { &m.host } else { &second }, &m.user));
    let responses = futures_util::future::join_all(calls).await;
    let by_status = |status| responses.iter().filter(|r| r.status == status).count();
    assert_eq!(
        (by_status(200), by_status(429)),
        (100, 100),
        "other statuses: {:?}",
        responses.iter().map(|r| r.status).collect::<BTreeSet<_>>()
    );
    assert_eq!(count(&db(m.root.path()), A_UNITS), 100);
}

/// `n` concurrent metered calls, spread over `hosts` in turn.
async fn wave(hosts: [&HostEmulator; 3], user: &str, n: usize) -> Vec<ClientResponse> {
    futures_util::future::join_all((0..n).map(|i| call(hosts[i % 3], user))).await
}

#[tokio::test]
async fn three_handler_processes_never_admit_past_the_quota_and_return_every_unspent_unit() {
    let mut m = metered(1_000_000, 100_000, 1_000, "block").await;
    let mut second = start(m.root.path()).await;
    let mut third = start(m.root.path()).await;
    let ok = |responses: &[ClientResponse]| responses.iter().filter(|r| r.status == 200).count();
    // 1 500 concurrent calls over three processes against a quota of 1 000: never more than the quota. A process
    // can be refused while another still holds unspent units of its lease (docs/usage.md, the bound).
    let mut admitted = 0;
    for n in [600, 900] {
        let responses = wave([&m.host, &second, &third], &m.user, n).await;
        assert!(responses.iter().all(|r| r.status == 200 || r.status == 429));
        admitted += ok(&responses);
    }
    assert!((500..=1_000).contains(&admitted), "{admitted} admitted");
    // Stopped with SIGTERM, each process settles its leases: none stays open, and the counter is the billable events.
    for host in [&mut m.host, &mut second, &mut third] {
        let pid = host.pid().to_string();
        assert!(std::process::Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
        assert_eq!(host.wait_exit(Duration::from_secs(20)).await, Some(0), "a graceful stop");
    }
    let conn = db(m.root.path());
    assert_eq!(count(&conn, "SELECT count(*) FROM quota_leases WHERE settled_at IS NULL"), 0, "all settled");
    let billable = "SELECT coalesce(sum(e.units), 0) FROM usage_events e JOIN tenants t ON t.id = e.tenant_id \
                    WHERE t.entra_tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000aa' AND e.billable = 1";
    assert_eq!(count(&conn, A_UNITS), admitted as i64);
    assert_eq!(count(&conn, billable), admitted as i64);
    // Every unit refused while another process held it is back: a new process admits exactly the rest.
    let fresh = start(m.root.path()).await;
    let rest = futures_util::future::join_all((0..1_100 - admitted).map(|_| call(&fresh, &m.user))).await;
    assert_eq!(ok(&rest), 1_000 - admitted, "the rest of the quota, and not one more");
    drop(fresh);
}

#[tokio::test]
async fn an_upgrade_serves_a_blocked_tenant_again_in_every_process_within_the_same_period() {
    let m = metered(1_000_000, 100_000, 5, "block").await;
    // A second process whose lookups are never cached (METERLINE_LOOKUP_CACHE_SECS=0), so it sees the change made
    // through the first without waiting out the cache (docs/usage.md, "Plan changes": at most about 5 s).
    let env = vec![("METERLINE_LOOKUP_CACHE_SECS".to_owned(), "0".to_owned())];
    let second = HostEmulator::start_with(HostOptions {
        app_root: Some(m.root.path().to_path_buf()),
        env,
        ..HostOptions::default()
    })
    .await;
    for _ in 0..5 {
        assert_eq!(call(&m.host, &m.user).await.status, 200);
    }
    assert_eq!(call(&m.host, &m.user).await.status, 429, "the quota of 5 is spent");
    assert_eq!(call(&second, &m.user).await.status, 429, "in every process");

    // The platform administrator moves tenant A to a plan with 9 units (listDocuments still 1 unit), through the
    // first process.
    let admin = dev_token(m.root.path(), &["--tenant", DIR_OPS, "--roles", "Platform.Admin", "--app-id", "ops"]);
    let auth = |r: ClientRequest| r.header("Authorization", &format!("Bearer {admin}"));
    let plan = json!({"code": "pro", "name": "Pro", "requestsPerMinute": 1_000_000, "burst": 100_000,
        "monthlyQuotaUnits": 9, "overagePolicy": "block", "currency": "EUR", "basePriceMicros": 0, "overageUnitPriceMicros": 0});
    assert_eq!(m.host.http(auth(ClientRequest::new("POST", "/api/v1/plans").json(&plan))).await.status, 201);
    let one_unit = ClientRequest::new("PUT", "/api/v1/plans/pro/costs")
        .json(&json!({"overrides": {"listDocuments": 1}}))
        .header("If-Match", "*");
    assert_eq!(m.host.http(auth(one_unit)).await.status, 200);
    let tenant: String = db(m.root.path())
        .query_row("SELECT id FROM tenants WHERE entra_tenant_id = ?1", [DIR_A], |r| r.get(0))
        .unwrap();
    let moved = m
        .host
        .http(auth(
            ClientRequest::new("PATCH", &format!("/api/v1/tenants/{tenant}"))
                .body("{\"plan\":\"pro\"}")
                .header("Content-Type", "application/merge-patch+json")
                .header("If-Match", "*"),
        ))
        .await;
    assert_eq!(moved.status, 200, "{}", String::from_utf8_lossy(&moved.body));

    // The second process serves A again at once; both together admit exactly the four new units.
    assert_eq!(call(&second, &m.user).await.status, 200, "the upgrade applies to this period");
    let rest =
        futures_util::future::join_all((0..6).map(|i| call(if i % 2 == 0 { &m.host } else { &second }, &m.user))).await;
    assert_eq!(rest.iter().filter(|r| r.status == 200).count(), 3, "the rest of the 9 units, and not one more");
    let period = db(m.root.path())
        .query_row("SELECT quota_units, units_used FROM quota_usage WHERE tenant_id = ?1", [&tenant], |r| {
            Ok((r.get::<_, i64>(0)?, r.get::<_, i64>(1)?))
        })
        .unwrap();
    assert_eq!(period, (9, 9), "the period's snapshot took the new quota");
    // The change is in the tenant's audit trail.
    let audited = count(
        &db(m.root.path()),
        &format!("SELECT count(*) FROM audit_events WHERE tenant_id = '{tenant}' AND action = 'patchTenant'"),
    );
    assert!(audited >= 1, "the plan change is audited");
}

#[tokio::test]
async fn three_handler_processes_keep_a_rate_limit_within_its_stated_bound() {
    // 600 a minute (10 a second), a burst of 5, three processes on one store, as fast as they answer for 3 s.
    let m = metered(600, 5, 1_000_000, "block").await;
    let (second, third) = (start(m.root.path()).await, start(m.root.path()).await);
    let started = tokio::time::Instant::now();
    let window = Duration::from_secs(3);
    let hosts = [&m.host, &second, &third];
    let workers = (0..12).map(|i| {
        let host = hosts[i % 3];
        let user = m.user.clone();
        async move {
            let mut allowed = 0;
            while started.elapsed() < window {
                allowed += usize::from(call(host, &user).await.status == 200);
            }
            allowed
        }
    });
    let allowed: usize = futures_util::future::join_all(workers).await.into_iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    // docs/usage.md: at most burst + (W + V) / interval over any window, V = METERLINE_RATE_LEASE_MS (0.5 s).
    let bound = 5.0 + (elapsed + 0.5) * 10.0;
    assert!((allowed as f64) <= bound, "{allowed} allowed in {elapsed:.2} s; the bound is {bound:.0}");
    assert!(allowed >= 5, "at least the burst: {allowed}");
}

#[actix_web::test]
async fn the_rate_limit_admits_the_burst_then_the_rate_with_headers() {
    let (app, user, _) = metered_app(60, 5, 1_000_000, "block").await;
    let me = || app.get(&user, "/api/v1/me");
    let mut statuses = Vec::new();
    let mut last_ok = None;
    let mut last_refused = None;
    for _ in 0..12 {
        let response = me().await;
        statuses.push(response.status);
        if response.status == 200 {
            last_ok = Some(response);
        } else {
            last_refused = Some(response);
        }
    }
    // Documented accuracy: the burst, plus one request per emission interval (1 s here) that passed: none did.
    let allowed = statuses.iter().filter(|s| **s == 200).count();
    assert_eq!(allowed, 5, "the burst and no more while the clock stands still: {statuses:?}");
    let ok = last_ok.unwrap();
    assert!(ok.header("ratelimit-policy").unwrap().starts_with("\"minute\";q=60;w=60"));
    assert!(ok.header("ratelimit").unwrap().starts_with("\"minute\";r="));
    let refused = last_refused.unwrap();
    let body = refused.json();
    assert!(body["type"].as_str().unwrap().ends_with("rate-limited"), "{body}");
    assert_eq!(body["status"], 429);
    assert!(refused.header("retry-after").is_some_and(|s| s.parse::<i64>().unwrap() >= 1));
    assert!(refused.header("ratelimit").unwrap().starts_with("\"minute\";r=0"));
    app.clock.advance(chrono::Duration::milliseconds(1100));
    assert_eq!(me().await.status, 200, "one more after an emission interval");
    assert_eq!(me().await.status, 429, "and only one");
}

#[actix_web::test]
async fn every_request_leaves_exactly_one_usage_event_and_failures_are_refunded() {
    let (app, user, _) = metered_app(1_000_000, 100_000, 1_000, "block").await;
    let auth = format!("Bearer {user}");
    let before = count(&app.db(), "SELECT count(*) FROM usage_events");
    let mut request_ids = Vec::new();
    for request in [
        ClientRequest::get("/api/v1/me").header("Authorization", &auth),
        ClientRequest::get("/api/v1/documents").header("Authorization", &auth),
        ClientRequest::get("/api/v1/documents/00000000-0000-0000-0000-000000000000").header("Authorization", &auth),
        ClientRequest::get("/api/v1/documents?maxpagesize=0").header("Authorization", &auth),
        ClientRequest::get("/api/v1/me"),
        ClientRequest::get("/api/v1/me").header("Authorization", "Bearer not.a.token"),
        ClientRequest::new("POST", "/api/v1/documents")
            .json(&json!({"title": "t", "docType": "x"}))
            .header("Authorization", &auth),
    ] {
        let response = app.http(request).await;
        request_ids.push((response.status, response.header("x-request-id").unwrap().to_owned()));
    }
    let conn = app.db();
    assert_eq!(count(&conn, "SELECT count(*) FROM usage_events") - before, 7, "one event per request");
    for (status, id) in &request_ids {
        let (stored_status, billable, units, tenant): (i64, bool, i64, Option<String>) = conn
            .query_row("SELECT status, billable, units, tenant_id FROM usage_events WHERE request_id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
            })
            .unwrap_or_else(|e| panic!("no usage event for {id} ({status}): {e}"));
        assert_eq!(stored_status, i64::from(*status));
        let exempt = id == &request_ids[0].1;
        assert_eq!(billable, (200..300).contains(status) && !exempt, "{status} billable? (getMe never is)");
        if *status == 401 {
            assert!(tenant.is_none(), "an unidentified caller has no tenant");
        } else {
            assert!(tenant.is_some());
            assert!(units > 0);
        }
    }
    let statuses: Vec<u16> = request_ids.iter().map(|(s, _)| *s).collect();
    assert_eq!(statuses, vec![200, 200, 404, 422, 401, 401, 403], "the POST lacks Documents.Write");
    // Only listDocuments is charged (1 unit on this plan): getMe is a self-service read the quota does not apply
    // to; the 404, 422 and 403 were refunded or never debited (settling the quota lease gives back what no
    // billable event spent).
    app.settle_leases().await;
    assert_eq!(count(&conn, A_UNITS), 1);
    let route: String = conn
        .query_row("SELECT route_template FROM usage_events WHERE request_id = ?1", [&request_ids[2].1], |r| r.get(0))
        .unwrap();
    assert_eq!(route, "/api/v1/documents/{id}", "the route template, never the raw path");
}

#[tokio::test]
async fn a_killed_handler_loses_no_acknowledged_usage() {
    let mut m = metered(1_000_000, 100_000, 1_000_000, "block").await;
    let url = m.host.handler_url(METERED);
    let client = reqwest::Client::new();
    let auth = format!("Bearer {}", m.user);
    let pid = m.host.pid();
    let stop = Arc::new(AtomicBool::new(false));
    let successes = Arc::new(AtomicUsize::new(0));
    let workers = (0..16).map(|_| {
        let (client, url, auth, stop, successes) =
            (client.clone(), url.clone(), auth.clone(), stop.clone(), successes.clone());
        tokio::spawn(async move {
            let mut acknowledged = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).header("Authorization", &auth).send().await {
                    Ok(r) if r.status() == 200 => {
                        acknowledged.push(r.headers()["x-request-id"].to_str().unwrap().to_owned());
                        successes.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(_) => break, // the process is gone
                }
            }
            acknowledged
        })
    });
    let workers: Vec<_> = workers.collect();
    // Kill it under load: once the load has had well over the 50 successes the check below asks for.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while successes.load(Ordering::Relaxed) < 200 {
        assert!(tokio::time::Instant::now() < deadline, "the load did not run: {successes:?} successes");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    assert_eq!(m.host.wait_exit(Duration::from_secs(10)).await, None, "killed by a signal, no exit code");
    stop.store(true, Ordering::Relaxed);
    let mut acknowledged = Vec::new();
    for worker in workers {
        acknowledged.extend(worker.await.unwrap());
    }
    assert!(acknowledged.len() > 50, "the load ran: {} successes", acknowledged.len());
    let conn = db(m.root.path());
    let mut missing = 0;
    for id in &acknowledged {
        let found =
            count(&conn, &format!("SELECT count(*) FROM usage_events WHERE request_id = '{id}' AND billable = 1"));
        missing += usize::from(found != 1);
    }
    assert_eq!(missing, 0, "every acknowledged request has its usage event ({} acknowledged)", acknowledged.len());
    let used = count(&conn, A_UNITS);
    assert!(
        used >= acknowledged.len() as i64,
        "every acknowledged request is debited: {used} units for {}",
        acknowledged.len()
    );
    // The dead process's quota lease is reclaimed exactly once it is past the reclaim margin (here: as if an hour
    // had passed): the counter is then the billable units of the stored usage events, not one more or less.
    let store = meterline::store::SqliteStore::open(&m.root.path().join("data/meterline.db")).await.unwrap();
    let now = chrono::Utc::now();
    let reclaimed = store.settle_expired_quota_leases(now + chrono::Duration::hours(1), now, 1000).await.unwrap();
    assert!(reclaimed >= 1, "the killed process held a lease");
    let billable = count(
        &conn,
        "SELECT coalesce(sum(e.units), 0) FROM usage_events e JOIN tenants t ON t.id = e.tenant_id \
         WHERE t.entra_tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000aa' AND e.billable = 1",
    );
    assert_eq!(count(&conn, A_UNITS), billable, "the counter equals the billable units after the reclaim");
}

#[actix_web::test]
async fn metered_calls_spend_a_quota_lease_in_memory_and_its_settlement_bills_exactly_what_succeeded() {
    let (app, user, _admin) = metered_app(1_000_000, 100_000, 1_000, "block").await;
    let grants = |app: &TestApp| {
        count(
            &app.db(),
            "SELECT count(*) FROM quota_leases l JOIN tenants t ON t.id = l.tenant_id \
             WHERE t.entra_tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000aa'",
        )
    };
    let auth = format!("Bearer {user}");
    for _ in 0..50 {
        assert_eq!(app.http(ClientRequest::get(METERED).header("Authorization", &auth)).await.status, 200);
    }
    let missing = ClientRequest::get("/api/v1/documents/00000000-0000-0000-0000-000000000000");
    assert_eq!(app.http(missing.header("Authorization", &auth)).await.status, 404, "spends from the lease, not billed");
    // The RateLimit header is what this process knows: the counter at its grant, less what its lease still holds.
    let metered = app.http(ClientRequest::get(METERED).header("Authorization", &auth)).await;
    assert!(metered.header("ratelimit").unwrap().contains("\"month\";r=948"), "{:?}", metered.header("ratelimit"));
    // The first grant is one request's worth; the next ones are sized from the rate the last was spent at.
    let taken = grants(&app);
    assert!((2..=3).contains(&taken), "52 metered calls took {taken} grants from the store");
    // A lease lives 5 s: past that the next call takes a fresh grant, and the expired one is settled.
    app.clock.advance(chrono::Duration::seconds(6));
    assert_eq!(app.http(ClientRequest::get(METERED).header("Authorization", &auth)).await.status, 200);
    assert_eq!(grants(&app), taken + 1);
    app.settle_leases().await;
    let conn = app.db();
    assert_eq!(count(&conn, "SELECT count(*) FROM quota_leases WHERE settled_at IS NULL"), 0);
    assert_eq!(count(&conn, A_UNITS), 52, "52 successful listDocuments, one unit each; the 404 gave its units back");
    assert_eq!(
        count(
            &conn,
            "SELECT count(*) FROM usage_events e JOIN tenants t ON t.id = e.tenant_id \
             WHERE t.entra_tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000aa' AND e.lease_id IS NOT NULL AND e.billable = 1"
        ),
        52,
        "every billable event names the lease it spent from"
    );
}

#[actix_web::test]
async fn batched_rate_steps_keep_the_rate_limit_within_its_stated_bound() {
    // 60 a minute (one a second), a burst of 5; a request every 100 ms for 20 s.
    let (app, user, _admin) = metered_app(60, 5, 1_000_000, "block").await;
    let auth = format!("Bearer {user}");
    let mut allowed = 0;
    for _ in 0..200 {
        let status = app.http(ClientRequest::get("/api/v1/me").header("Authorization", &auth)).await.status;
        assert!(status == 200 || status == 429, "{status}");
        allowed += usize::from(status == 200);
        app.clock.advance(chrono::Duration::milliseconds(100));
    }
    // Single steps would allow the burst plus one a second: 5 + 19 or 20. A batch's steps are spent within
    // METERLINE_RATE_LEASE_MS (0.5 s), so a window admits at most half a second more of the rate, and steps a
    // batch leaves unspent are forfeited: never more than 5 + 20 + 1, never fewer than the steady rate.
    assert!((20..=26).contains(&allowed), "{allowed} requests allowed in 20 s");
}

#[actix_web::test]
async fn a_block_quota_spent_through_leases_admits_exactly_the_quota() {
    let (app, user, _admin) = metered_app(1_000_000, 100_000, 40, "block").await;
    let auth = format!("Bearer {user}");
    let mut statuses = Vec::new();
    for _ in 0..45 {
        statuses.push(app.http(ClientRequest::get(METERED).header("Authorization", &auth)).await.status);
    }
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 40, "{statuses:?}");
    assert!(statuses[40..].iter().all(|s| *s == 429), "the refusals come last: {statuses:?}");
    app.settle_leases().await;
    assert_eq!(count(&app.db(), A_UNITS), 40);
}

#[actix_web::test]
async fn a_tenant_blocked_on_its_quota_is_served_again_once_its_plan_is_raised() {
    let (app, user, admin) = metered_app(1_000_000, 100_000, 5, "block").await;
    let auth = format!("Bearer {user}");
    let call = || app.http(ClientRequest::get(METERED).header("Authorization", &auth));
    for _ in 0..5 {
        assert_eq!(call().await.status, 200);
    }
    assert_eq!(call().await.status, 429, "the quota of 5 is spent");
    // Blocked, the tenant still sees why: self-service reads spend no quota (rate-limited and recorded, unbilled).
    let ops = app.token(DIR_A, "Usage.Read,Audit.Read", "a-ops").await;
    let period = app.clock.now().format("%Y-%m").to_string();
    for path in [
        "/api/v1/me".to_owned(),
        "/api/v1/usage/summary".to_owned(),
        "/api/v1/usage".to_owned(),
        format!("/api/v1/usage/export?period={period}"),
        "/api/v1/billing/statements".to_owned(),
        "/api/v1/audit-events".to_owned(),
        "/api/v1/audit-events/verify".to_owned(),
    ] {
        let read = app.get(&ops, &path).await;
        assert_eq!(read.status, 200, "{path}: {}", String::from_utf8_lossy(&read.body));
        assert!(read.header("ratelimit").unwrap().contains("\"month\";r=0"), "{path} shows the exhausted quota");
    }
    let summary = app.get(&ops, "/api/v1/usage/summary").await.json();
    assert_eq!((summary["unitsUsed"].clone(), summary["remainingUnits"].clone()), (json!(5), json!(0)), "{summary}");
    let unbilled = "SELECT count(*) FROM usage_events WHERE operation_id IN ('getMe', 'getUsageSummary', 'getUsage', \
        'exportUsage', 'listBillingStatements', 'listAuditEvents', 'verifyAuditChain') AND status = 200 AND billable = 0";
    assert_eq!(count(&app.db(), unbilled), 8, "recorded, not billed");
    // A platform administrator raises the plan's quota; the change clears this process's lookup caches.
    let plan = app.get(&admin, "/api/v1/plans/metered").await;
    let etag = plan.header("etag").unwrap().to_owned();
    let body = json!({"name": "Metered", "requestsPerMinute": 1_000_000, "burst": 100_000,
        "monthlyQuotaUnits": 8, "overagePolicy": "block", "currency": "EUR", "basePriceMicros": 0, "overageUnitPriceMicros": 0});
    let raised = app
        .http(
            ClientRequest::new("PUT", "/api/v1/plans/metered")
                .json(&body)
                .header("If-Match", &etag)
                .header("Authorization", &format!("Bearer {admin}")),
        )
        .await;
    assert_eq!(raised.status, 200, "{}", String::from_utf8_lossy(&raised.body));
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..5).map(|_| call())).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "the three new units, and no more: {statuses:?}");
    app.settle_leases().await;
    assert_eq!(count(&app.db(), A_UNITS), 8);
}

#[actix_web::test]
async fn the_rollup_reclaims_a_lease_whose_holder_never_settled_it() {
    let (app, user, _admin) = metered_app(1_000_000, 100_000, 1_000, "block").await;
    let auth = format!("Bearer {user}");
    for _ in 0..20 {
        assert_eq!(app.http(ClientRequest::get(METERED).header("Authorization", &auth)).await.status, 200);
    }
    // A second process on the same store takes a lease and dies before spending it.
    let tenant: String =
        app.db().query_row("SELECT id FROM tenants WHERE entra_tenant_id = ?1", [DIR_A], |r| r.get(0)).unwrap();
    let now = app.clock.now();
    let month = meterline::metering::period::BillingCalendar::default().period_containing(now);
    let (period_start, period_end) = (month.start, month.end);
    let crashed = meterline::store::QuotaLeaseRequest {
        lease_id: uuid::Uuid::from_u128(0xDEAD),
        holder: "crashed".into(),
        debit: meterline::store::QuotaDebit {
            tenant_id: tenant.parse().unwrap(),
            period_start,
            period_end,
            quota_units: 1_000,
            overage_policy: meterline::store::OveragePolicy::Block,
            plan_code: "metered".into(),
            units: 100,
            now,
        },
        min_units: 1,
        expires_at: now + chrono::Duration::seconds(5),
        reclaim_before: now - chrono::Duration::seconds(60),
    };
    app.store.grant_quota_lease(&crashed).await.unwrap();
    app.settle_leases().await;
    assert_eq!(count(&app.db(), A_UNITS), 120, "the crashed process's 100 units are still out");
    // Past its expiry and the reclaim margin, the rollup job settles it from its (no) usage events.
    app.clock.advance(chrono::Duration::seconds(70));
    let run = app.invoke_timer("UsageRollup", json!({"ScheduleStatus": null, "IsPastDue": false})).await;
    assert_eq!(run.status, 200);
    assert!(run.logs().iter().any(|l| l.contains("1 expired quota leases reclaimed")), "{:?}", run.logs());
    assert_eq!(count(&app.db(), A_UNITS), 20);
}

#[actix_web::test]
async fn a_plan_can_override_what_an_operation_costs() {
    let (app, user, admin) = metered_app(1_000_000, 100_000, 1_000, "block").await;
    let auth = |r: ClientRequest| r.header("Authorization", &format!("Bearer {admin}"));
    let defaults = app.http(auth(ClientRequest::get("/api/v1/plans/metered/costs"))).await;
    assert_eq!(defaults.status, 200);
    assert_eq!(defaults.json()["costs"]["listDocuments"], 1, "the plan's override");
    assert_eq!(defaults.json()["costs"]["getDocument"], 1, "the default");
    assert!(defaults.json()["costs"].get("getMe").is_none(), "a self-service read has no billed cost");
    let etag = defaults.header("etag").unwrap().to_owned();
    let unchanged =
        app.http(auth(ClientRequest::get("/api/v1/plans/metered/costs").header("If-None-Match", &etag))).await;
    assert_eq!((unchanged.status, unchanged.header("etag")), (304, Some(etag.as_str())), "a cache revalidates it");
    let bad = app
        .http(auth(
            ClientRequest::new("PUT", "/api/v1/plans/metered/costs")
                .json(&json!({"overrides": {"getHealth": 1, "getMe": 3, "listDocuments": 5000}}))
                .header("If-Match", &etag),
        ))
        .await;
    assert_eq!(bad.status, 422);
    let fields: BTreeSet<String> =
        bad.json()["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap().to_owned()).collect();
    let expected = ["overrides.getHealth", "overrides.getMe", "overrides.listDocuments"];
    assert_eq!(fields, expected.into_iter().map(str::to_owned).collect::<BTreeSet<_>>());
    let put = |body: serde_json::Value, etag: &str| {
        auth(ClientRequest::new("PUT", "/api/v1/plans/metered/costs").json(&body).header("If-Match", etag))
    };
    let changed = app.http(put(json!({"overrides": {"listDocuments": 3}}), &etag)).await;
    assert_eq!(changed.status, 200, "{}", String::from_utf8_lossy(&changed.body));
    assert_eq!(changed.json()["costs"]["listDocuments"], 3);
    assert_eq!(app.http(put(json!({"overrides": {}}), &etag)).await.status, 412, "the plan's ETag moved on");

    let before = count(&app.db(), A_UNITS);
    assert_eq!(app.get(&user, METERED).await.status, 200);
    assert_eq!(count(&app.db(), A_UNITS) - before, 3, "the override is what the call debits");
    let etag = changed.header("etag").unwrap().to_owned();
    assert_eq!(app.http(put(json!({"overrides": {"listDocuments": 0}}), &etag)).await.status, 200);
    let before = count(&app.db(), A_UNITS);
    assert_eq!(app.get(&user, METERED).await.status, 200);
    assert_eq!(count(&app.db(), A_UNITS), before, "a zero cost makes the call free");
}

#[actix_web::test]
async fn with_one_process_the_summary_and_headers_count_billable_units_and_an_idle_lease_goes_back() {
    let (app, user, _) = metered_app(1_000_000, 100_000, 1_000, "block").await;
    let ops = app.token(DIR_A, "Usage.Read", "a-ops").await;
    let billable = "SELECT coalesce(sum(e.units), 0) FROM usage_events e JOIN tenants t ON t.id = e.tenant_id \
        WHERE t.entra_tenant_id = 'aaaaaaaa-0000-0000-0000-0000000000aa' AND e.billable = 1";
    let get = |path: String| app.http(ClientRequest::get(&path).header("Authorization", &format!("Bearer {user}")));
    // Two reads and two that fail (a document that is not there): each takes its units from the lease, and the
    // failed ones give them back when it settles.
    for path in [METERED.to_owned(), format!("{METERED}/{}", uuid::Uuid::nil()), METERED.to_owned()] {
        get(path).await;
    }
    let missing = get(format!("{METERED}/{}", uuid::Uuid::from_u128(7))).await;
    assert_eq!(missing.status, 404);
    let used = count(&app.db(), billable);
    assert!(used > 0);
    let summary = app.get(&ops, "/api/v1/usage/summary").await.json();
    assert_eq!(summary["unitsUsed"], used, "{summary}: what the billable calls used, not what the lease handed out");
    let next = get(METERED.to_owned()).await;
    let used = count(&app.db(), billable);
    let header = next.header("ratelimit").unwrap().to_owned();
    assert!(header.contains(&format!("\"month\";r={}", 1_000 - used)), "{header}: {used} used");
    // No request comes after the lease expires: the sweep retires it and its settlement gives the rest back.
    assert!(count(&app.db(), A_UNITS) > used, "the store's counter holds the lease's whole grant");
    app.clock.advance(chrono::Duration::seconds(6));
    let leases = app.state.leases.as_ref().unwrap();
    leases.sweep().await;
    leases.settled().await;
    assert_eq!(count(&app.db(), A_UNITS), used, "the counter equals the billable units");
}

#[actix_web::test]
async fn a_grant_serves_a_blocked_tenant_and_shows_in_its_summary_headers_audit_and_statement() {
    let (app, user, admin) = metered_app(1_000_000, 100_000, 5, "block").await;
    let as_admin = |r: ClientRequest| r.header("Authorization", &format!("Bearer {admin}"));
    let call = || app.http(ClientRequest::get(METERED).header("Authorization", &format!("Bearer {user}")));
    for _ in 0..5 {
        assert_eq!(call().await.status, 200);
    }
    assert_eq!(call().await.status, 429, "the quota of 5 is spent");
    // A percent-encoded path is the same operation (RFC 3986 §6.2.2.2): refused as it, and recorded as it.
    for encoded in ["/api/v1/%64ocuments", "/api/v1/docum%65nts", "/%61pi/%761/documents"] {
        let res = app.http(ClientRequest::get(encoded).header("Authorization", &format!("Bearer {user}"))).await;
        assert_eq!(res.status, 429, "{encoded}: {}", String::from_utf8_lossy(&res.body));
        assert!(res.header("ratelimit-policy").is_some(), "{encoded}");
    }
    let unknown: i64 = app
        .db()
        .query_row("SELECT count(*) FROM usage_events WHERE operation_id = 'unknown' AND status < 400", [], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(unknown, 0, "no served call is recorded as no operation");
    let unmatched: i64 = app
        .db()
        .query_row("SELECT count(*) FROM usage_events WHERE route_template = 'unmatched'", [], |r| r.get(0))
        .unwrap();
    assert_eq!(unmatched, 0, "a refused encoded path is recorded under its route, as the raw one is");
    let tenant: String =
        app.db().query_row("SELECT id FROM tenants WHERE entra_tenant_id = ?1", [DIR_A], |r| r.get(0)).unwrap();
    let grants = format!("/api/v1/tenants/{tenant}/grants");

    // Refused: not an administrator; an expiry in the past or past the period's end.
    let body = json!({"units": 3, "reason": "credit for the outage of the 3rd"});
    // (A tenant administrator of another, unblocked tenant: a blocked tenant's calls that spend quota are
    // refused for quota before their permission is looked at.)
    let other_admin = app.token("bbbbbbbb-0000-0000-0000-0000000000bb", "Tenant.Admin", "b-admin").await;
    let by_tenant = app
        .http(ClientRequest::new("POST", &grants).json(&body).header("Authorization", &format!("Bearer {other_admin}")))
        .await;
    assert_eq!(by_tenant.status, 403);
    let past =
        json!({"units": 3, "reason": "x", "expiresAt": (app.clock.now() - chrono::Duration::hours(1)).to_rfc3339()});
    let refused = app.http(as_admin(ClientRequest::new("POST", &grants).json(&past))).await;
    assert_eq!(refused.status, 422);
    assert_eq!(refused.json()["errors"][0]["pointer"], "/expiresAt");
    for (bad, pointer) in [
        (json!({"units": 0, "reason": "x"}), "/units"),
        (json!({"units": -5, "reason": "x"}), "/units"),
        (json!({"units": 3, "reason": "   "}), "/reason"),
        (json!({"units": 3, "reason": "r".repeat(501)}), "/reason"),
    ] {
        let refused = app.http(as_admin(ClientRequest::new("POST", &grants).json(&bad))).await;
        assert_eq!(refused.status, 422, "{bad}: {}", String::from_utf8_lossy(&refused.body));
        assert_eq!(refused.json()["errors"][0]["pointer"], pointer, "{bad}");
    }

    // The tenant's own callers used the key first (for a document): a grant's keys are kept apart from theirs.
    app.db()
        .execute(
            "INSERT INTO idempotency_keys VALUES (?1, 'grant-1', 'createDocument', ?2, 201, '{}', x'', ?3, ?3)",
            rusqlite::params![tenant, "0".repeat(64), (app.clock.now() + chrono::Duration::hours(1)).to_rfc3339()],
        )
        .unwrap();
    let keyed = |body: &Value| ClientRequest::new("POST", &grants).json(body).header("Idempotency-Key", "grant-1");
    let granted = app.http(as_admin(keyed(&body))).await;
    assert_eq!(granted.status, 201, "{}", String::from_utf8_lossy(&granted.body));
    // A retry with its key replays the answer and grants nothing more, however the tenant id is spelled; the key
    // with another body is refused.
    let retried = app.http(as_admin(keyed(&body))).await;
    assert_eq!((retried.status, retried.header("idempotency-replayed")), (201, Some("true")));
    assert_eq!(retried.json(), granted.json());
    let upper = ClientRequest::new(
        "POST",
        &grants.to_uppercase().replace("/API/V1/TENANTS/", "/api/v1/tenants/").replace("/GRANTS", "/grants"),
    )
    .json(&body)
    .header("Idempotency-Key", "grant-1");
    let retried = app.http(as_admin(upper)).await;
    assert_eq!(
        (retried.status, retried.header("idempotency-replayed")),
        (201, Some("true")),
        "{}",
        String::from_utf8_lossy(&retried.body)
    );
    let reused = app.http(as_admin(keyed(&json!({"units": 30, "reason": "another"})))).await;
    assert_eq!((reused.status, reused.header("x-ms-error-code")), (422, Some("IdempotencyKeyReused")));
    let grant = granted.json();
    assert_eq!((grant["units"].clone(), grant["status"].clone()), (json!(3), json!("active")));
    let grant_path = granted.header("location").unwrap().to_owned();
    assert_eq!(grant_path, format!("{grants}/{}", grant["id"].as_str().unwrap()));

    // The blocked tenant is served the three granted units, and not one more.
    let statuses: Vec<u16> =
        futures_util::future::join_all((0..4).map(|_| call())).await.iter().map(|r| r.status).collect();
    assert_eq!(statuses.iter().filter(|s| **s == 200).count(), 3, "{statuses:?}");
    let limited = call().await;
    assert!(
        limited.header("ratelimit-policy").unwrap().contains("\"month\";q=8"),
        "{:?}",
        limited.header("ratelimit-policy")
    );
    let ops = app.token(DIR_A, "Usage.Read,Audit.Read", "a-ops").await;
    let summary = app.get(&ops, "/api/v1/usage/summary").await.json();
    assert_eq!(
        (summary["quotaUnits"].clone(), summary["grantedUnits"].clone(), summary["unitsUsed"].clone()),
        (json!(8), json!(3), json!(8)),
        "{summary}"
    );
    assert_eq!(app.get(&ops, "/api/v1/me").await.json()["quota"]["grantedUnits"], 3);
    let audit = app.get(&ops, "/api/v1/audit-events?action=createGrant").await.json();
    assert!(audit["value"][0]["summary"].as_str().unwrap().contains("credit for the outage"), "{audit}");

    // Revoked once used up, it gives nothing back; it still counts in the period's quota.
    let listed = app.http(as_admin(ClientRequest::get(&grants))).await.json();
    assert_eq!(listed["value"].as_array().unwrap().len(), 1);
    let read = app.http(as_admin(ClientRequest::get(&grant_path))).await;
    let etag = read.header("etag").unwrap().to_owned();
    let revoke = || as_admin(ClientRequest::new("POST", &format!("{grant_path}/revoke")));
    assert_eq!(app.http(revoke()).await.status, 428);
    let revoked = app.http(revoke().header("If-Match", &etag)).await;
    assert_eq!(revoked.status, 200, "{}", String::from_utf8_lossy(&revoked.body));
    assert_eq!(
        (revoked.json()["status"].clone(), revoked.json()["returnedUnits"].clone()),
        (json!("revoked"), json!(0))
    );
    let audit = app.get(&ops, "/api/v1/audit-events?action=revokeGrant").await.json();
    assert_eq!(audit["value"].as_array().unwrap().len(), 1, "{audit}");

    // The month's statement shows the grant.
    app.settle_leases().await;
    app.clock.advance(chrono::Duration::days(40));
    let run = app.invoke_timer("UsageRollup", json!({"ScheduleStatus": null, "IsPastDue": false})).await;
    assert!(run.logs()[0].contains("statements written"), "{:?}", run.logs());
    let ops = app.token(DIR_A, "Usage.Read", "a-ops").await;
    let statements = app.get(&ops, "/api/v1/billing/statements").await.json();
    let statement = &statements["value"][0];
    assert_eq!(
        (statement["quotaUnits"].clone(), statement["grantedUnits"].clone(), statement["usedUnits"].clone()),
        (json!(8), json!(3), json!(8)),
        "{statements}"
    );
}

#[actix_web::test]
async fn a_client_over_its_share_is_refused_while_the_tenants_other_clients_are_served() {
    let (app, user, _admin) = metered_app(1_000_000, 100_000, 1_000, "block").await;
    let tenant_admin = app.token(DIR_A, "Tenant.Admin", "a-admin").await;
    let register = json!({"appId": "batch-job", "displayName": "Batch job", "roles": ["Documents.Read"]});
    let registered = app.send(&tenant_admin, ClientRequest::new("POST", "/api/v1/clients").json(&register)).await;
    assert_eq!(registered.status, 201, "{}", String::from_utf8_lossy(&registered.body));
    let limits_path = format!("{}/limits", registered.header("location").unwrap());
    let set = |limits: serde_json::Value, etag: &str| {
        ClientRequest::new("PUT", &limits_path).json(&limits).header("If-Match", etag)
    };
    let etag = registered.header("etag").unwrap().to_owned();
    assert_eq!(
        app.send(&tenant_admin, set(json!({"quotaUnits": 3, "requestsPerMinute": null}), "\"9\"")).await.status,
        412
    );
    let capped = app.send(&tenant_admin, set(json!({"quotaUnits": 3, "requestsPerMinute": null}), &etag)).await;
    assert_eq!(capped.status, 200, "{}", String::from_utf8_lossy(&capped.body));
    assert_eq!(capped.json()["limits"], json!({"quotaUnits": 3, "requestsPerMinute": null}));
    let bad = app.send(&tenant_admin, set(json!({"quotaUnits": 0}), capped.header("etag").unwrap())).await;
    assert_eq!(bad.status, 422, "{}", String::from_utf8_lossy(&bad.body));
    // The same limits again make no version; a rate at or above the plan's is no cap.
    let capped_etag = capped.header("etag").unwrap().to_owned();
    let same = app.send(&tenant_admin, set(json!({"quotaUnits": 3, "requestsPerMinute": null}), &capped_etag)).await;
    assert_eq!((same.status, same.header("etag")), (200, Some(capped_etag.as_str())));
    let above =
        app.send(&tenant_admin, set(json!({"quotaUnits": 3, "requestsPerMinute": 1_000_000}), &capped_etag)).await;
    assert_eq!((above.status, above.json()["errors"][0]["pointer"].clone()), (422, json!("/requestsPerMinute")));

    // The batch job's calls: a failed one gives its units back; three succeed; the fourth is over its share.
    app.settle_leases().await;
    let before = count(&app.db(), A_UNITS);
    let job = app.token(DIR_A, "Documents.Read", "batch-job").await;
    let missing = app.get(&job, "/api/v1/documents/00000000-0000-0000-0000-000000000000").await;
    assert_eq!(missing.status, 404);
    for n in 0..3 {
        let ok = app.get(&job, METERED).await;
        assert_eq!(ok.status, 200, "call {n}: {}", String::from_utf8_lossy(&ok.body));
        assert!(
            ok.header("ratelimit-policy").unwrap().contains("\"client-month\";q=3"),
            "{:?}",
            ok.header("ratelimit-policy")
        );
    }
    let over = app.get(&job, METERED).await;
    assert_eq!(over.status, 429);
    let problem = over.json();
    assert_eq!(problem["violated-policies"], json!(["client-month"]), "{problem}");
    assert!(over.header("ratelimit").unwrap().contains("\"client-month\";r=0"), "{:?}", over.header("ratelimit"));
    let me = app.get(&job, "/api/v1/me").await.json();
    assert_eq!(me["quota"]["client"], json!({"quotaUnits": 3, "unitsUsed": 3}), "the client sees its own share: {me}");
    // The tenant's other clients are served, and the refused call cost the tenant nothing.
    assert_eq!(app.get(&user, METERED).await.status, 200);
    app.settle_leases().await;
    assert_eq!(count(&app.db(), A_UNITS) - before, 4, "three batch calls and one other");

    // A rate cap below the plan's: the client's own policy governs, and names itself.
    let etag = app.send(&tenant_admin, ClientRequest::get(registered.header("location").unwrap())).await;
    let etag = etag.header("etag").unwrap().to_owned();
    let slowed = app.send(&tenant_admin, set(json!({"quotaUnits": null, "requestsPerMinute": 1}), &etag)).await;
    assert_eq!(slowed.status, 200);
    app.clock.advance(chrono::Duration::seconds(1)); // past the steps already taken at the plan's rate
    let first = app.get(&job, METERED).await;
    assert_eq!(first.status, 200, "{}", String::from_utf8_lossy(&first.body));
    assert!(first.header("ratelimit-policy").unwrap().starts_with("\"client-minute\";q=1;w=60"));
    let second = app.get(&job, METERED).await;
    assert_eq!(second.status, 429);
    assert_eq!(second.json()["violated-policies"], json!(["client-minute"]));
    assert_eq!(app.get(&user, METERED).await.status, 200, "other clients keep the plan's rate");
}

#[tokio::test]
async fn a_refused_call_names_the_limit_that_refused_it_and_the_usage_report_counts_each() {
    // A burst of 3 per minute and a quota of 6 units (listDocuments costs 1 on this plan).
    let (app, user, _) = metered_app(3, 3, 6, "block").await;
    let usage = app.token(DIR_A, "Usage.Read", DEV_APP_ID).await;
    let mut refused = std::collections::BTreeMap::new();
    let mut call = async || {
        let response = app.http(ClientRequest::get(METERED).header("Authorization", &format!("Bearer {user}"))).await;
        if response.status == 429 {
            *refused.entry(response.header("x-ms-error-code").unwrap().to_owned()).or_insert(0) += 1;
        }
        response.status
    };
    // The burst, then a refusal by the rate limit.
    let statuses = [call().await, call().await, call().await, call().await];
    assert_eq!(statuses, [200, 200, 200, 429]);
    // A minute later the rate allows three more, which spend the quota; then the quota refuses.
    app.clock.advance(chrono::Duration::seconds(61));
    let statuses = [call().await, call().await, call().await];
    assert_eq!(statuses, [200, 200, 200]);
    app.clock.advance(chrono::Duration::seconds(61));
    assert_eq!(call().await, 429);
    assert_eq!(refused, [("QuotaExceeded".to_owned(), 1), ("RateLimited".to_owned(), 1)].into());

    let conn = app.db();
    let named: Vec<(i64, Option<String>)> = conn
        .prepare("SELECT status, refusal FROM usage_events WHERE operation_id = 'listDocuments' ORDER BY seq")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    let refusals: Vec<Option<&str>> = named.iter().map(|(_, r)| r.as_deref()).collect();
    assert_eq!(refusals, [None, None, None, Some("rate"), None, None, None, Some("quota")], "{named:?}");

    // The report counts them from the raw events (the tail), then from the rollups, the same.
    let report = async || {
        let request = ClientRequest::get("/api/v1/usage?granularity=month&groupBy=operation")
            .header("Authorization", &format!("Bearer {usage}"));
        let report = app.http(request).await.json();
        let row = report["value"].as_array().unwrap().iter().find(|r| r["operationId"] == "listDocuments").cloned();
        let row = row.unwrap_or_else(|| panic!("{report}"));
        (row["calls"].as_i64(), row["errors"].as_i64(), row["rateLimited"].as_i64(), row["quotaRefused"].as_i64())
    };
    assert_eq!(report().await, (Some(8), Some(2), Some(1), Some(1)));
    app.clock.advance(chrono::Duration::seconds(121));
    let run = app.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(run.logs()[0].starts_with("UsageRollup: rolled up"), "{:?}", run.logs());
    assert_eq!(report().await, (Some(8), Some(2), Some(1), Some(1)), "the same from the rollups");
}

/// A refused call is still the tenant's and costs what its plan says: a call the rate limit refuses records the
/// plan's cost override, and the calls of a suspended tenant and of a revoked registration (identified, then
/// refused) are in that tenant's usage, not in nobody's.
#[actix_web::test]
async fn refused_calls_are_their_tenants_and_cost_what_the_plan_says() {
    // listDocuments costs 1 unit on this plan (its default is 2); a burst of one call per client.
    let (app, user, admin) = metered_app(60, 1, 1_000_000, "block").await;
    let tenants = app.get(&admin, "/api/v1/tenants").await.json();
    let a = tenants["value"].as_array().unwrap().iter().find(|t| t["entraTenantId"] == DIR_A).unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    for expected in [200, 429] {
        assert_eq!(app.get(&user, METERED).await.status, expected);
    }
    let rows = |status: u16| -> Vec<(Option<String>, Option<String>, i64, bool)> {
        let conn = app.db();
        let mut query = conn
            .prepare("SELECT tenant_id, client_id, units, billable FROM usage_events WHERE status = ?1 ORDER BY seq")
            .unwrap();
        query
            .query_map([status], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .map(Result::unwrap)
            .collect()
    };
    let dev_app = Some(DEV_APP_ID.to_owned());
    assert_eq!(rows(429), vec![(Some(a.clone()), dev_app.clone(), 1, false)], "the plan's cost, charged nothing");

    // A's own registration of an application, then revoked: that application's tokens are refused, as A's.
    let a_admin = app.token(DIR_A, "Tenant.Admin", "a-admin").await;
    let register = json!({"appId": "gone-app", "displayName": "Gone", "roles": ["Documents.Read"]});
    let client = app.send(&a_admin, ClientRequest::new("POST", "/api/v1/clients").json(&register)).await;
    assert_eq!(client.status, 201, "{}", String::from_utf8_lossy(&client.body));
    app.clock.advance(chrono::Duration::seconds(2));
    let revoke = ClientRequest::new("DELETE", &format!("/api/v1/clients/{}", client.json()["id"].as_str().unwrap()))
        .header("If-Match", client.header("etag").unwrap());
    assert_eq!(app.send(&a_admin, revoke).await.status, 200);
    let gone = app.mint(DIR_A, &["Documents.Read"], "gone-app");
    assert_eq!(app.get(&gone, METERED).await.json()["code"], "ClientRevoked");

    // Suspended: A's callers are refused.
    app.clock.advance(chrono::Duration::seconds(2));
    let a_path = format!("/api/v1/tenants/{a}");
    let suspend = ClientRequest::new("POST", &format!("{a_path}/suspend")).header("If-Match", "*");
    assert_eq!(app.send(&admin, suspend).await.status, 200);
    assert_eq!(app.get(&user, METERED).await.json()["code"], "TenantSuspended");

    // No plan applied to either refusal (the limit stage never ran): the default table's cost of the operation.
    let refused = rows(403);
    assert_eq!(
        refused,
        vec![(Some(a.clone()), Some("gone-app".to_owned()), 2, false), (Some(a.clone()), dev_app, 2, false)],
        "both refusals are A's usage"
    );
    let audited: Vec<Option<String>> = {
        let conn = app.db();
        let mut query = conn
            .prepare("SELECT tenant_id FROM audit_events WHERE action = 'listDocuments' AND outcome = 'denied'")
            .unwrap();
        query.query_map([], |r| r.get(0)).unwrap().map(Result::unwrap).collect()
    };
    assert_eq!(audited.len(), 2, "{audited:?}");
    assert!(audited.iter().all(|t| t.as_deref() == Some(a.as_str())), "in A's audit chain: {audited:?}");
}
