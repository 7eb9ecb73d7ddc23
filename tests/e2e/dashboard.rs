//! The usage dashboard (`/api/dashboard`) in a real browser: Debian's headless Chromium, driven by playwright-core
//! (`tests/dashboard/run.mjs`), over a handler app with usage seeded across two periods, several days, operations,
//! clients, errors, rate-limit and quota refusals, and a closed month's statement.
//!
//! The app is `startup::app` over a real loopback port (actix-web's `HttpServer`) with the manual clock of
//! [`TestApp`], so the seeding spans days without waiting and the page shows the same figures on every run. The
//! browser signs in through the page's own form with development tokens; the test then reads the API itself for
//! the same windows and checks that the page showed exactly that, that each chart drew, that no request left for
//! another host, that axe-core finds no serious or critical violation, that a caller without `Usage.Read` is
//! refused and that a tenant cannot reach another tenant's figures. The screenshots are saved under
//! `<target>/dashboard-artifacts/`; `UPDATE_SCREENSHOTS=1` also copies the tenant and platform views to
//! `docs/images/` for the README.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use serde_json::{Value, json};

use crate::support::app::TestApp;
use crate::support::browser::{chromium, run_script};
use crate::support::host::{ClientRequest, ClientResponse, HostEmulator, on_schedule, repo_root};

const DIR_A: &str = "aaaaaaaa-0000-0000-0000-0000000000aa";
const DIR_B: &str = "bbbbbbbb-0000-0000-0000-0000000000bb";
const DIR_C: &str = "cccccccc-0000-0000-0000-0000000000cc";
const DIR_OPS: &str = "0000000f-0000-0000-0000-00000000000f";
/// The page's own application: its calls are self-service reads, left out of the comparisons below because they
/// keep adding to today's figures while the page runs.
const PAGE_APP: &str = "dashboard-app";
/// Where `scripts/install-test-deps` puts Chromium; `METERLINE_TEST_CHROMIUM` overrides it.
/// The whole browser run: seven sessions of a second or two each.
const BROWSER_BUDGET: Duration = Duration::from_secs(240);

fn at(day: u32, hour: u32, minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 3, day, hour, minute, 0).unwrap()
}

fn auth(token: &str, request: ClientRequest) -> ClientRequest {
    request.header("Authorization", &format!("Bearer {token}"))
}

/// The seeded world: tenant A near its quota (a `block` plan with a tight rate), B over its quota (an `allow`
/// plan), C lightly used, and a platform administrator.
struct World {
    app: TestApp,
    a_id: String,
    b_id: String,
    rate_limited: usize,
    quota_refused: usize,
}

impl World {
    fn mint(&self, directory: &str, roles: &[&str], app_id: &str) -> String {
        self.app.mint(directory, roles, app_id)
    }

    async fn call(
        &self,
        directory: &str,
        app_id: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> ClientResponse {
        let token = self.mint(directory, &["Documents.Read", "Documents.Write"], app_id);
        let mut request = auth(&token, ClientRequest::new(method, path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.app.http(request).await
    }

    /// A working hour of tenant `directory`: lists, perhaps a create, a read of a missing document (404) and a
    /// `/me`.
    async fn traffic(&self, directory: &str, lists: usize, create: bool) {
        for _ in 0..lists {
            let res = self.call(directory, "portal-app", "GET", "/api/v1/documents", None).await;
            assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
            self.app.clock.advance(TimeDelta::seconds(3));
        }
        if create {
            let doc = json!({"title": "Rate limits", "docType": "guidance"});
            assert_eq!(self.call(directory, "batch-app", "POST", "/api/v1/documents", Some(doc)).await.status, 201);
            self.app.clock.advance(TimeDelta::seconds(3));
        }
        let missing = "/api/v1/documents/00000000-0000-0000-0000-00000000dead";
        let res = self.call(directory, "batch-app", "GET", missing, None).await;
        assert_eq!(res.status, 404, "{}", String::from_utf8_lossy(&res.body));
        self.call(directory, "reports-app", "GET", "/api/v1/me", None).await;
        self.app.clock.advance(TimeDelta::seconds(3));
    }
}

/// `rate-limited` or `quota-exceeded` for a 429, from its problem type.
fn refusal(res: &ClientResponse) -> Option<&'static str> {
    let problem = (res.status == 429).then(|| res.json())?;
    let kind = problem["type"].as_str().unwrap_or_default();
    ["rate-limited", "quota-exceeded"].into_iter().find(|k| kind.ends_with(k))
}

async fn seed() -> World {
    let app = TestApp::builder().at(Utc.with_ymd_and_hms(2026, 2, 27, 10, 5, 0).unwrap()).start().await;
    let admin = app.token(DIR_OPS, "Platform.Admin,Usage.Read", "ops").await;
    for directory in [DIR_A, DIR_B, DIR_C] {
        app.token(directory, "Usage.Read", PAGE_APP).await;
    }
    let send = |r: ClientRequest| app.http(auth(&admin, r));
    let plans = [
        json!({"code": "metered", "name": "Metered", "requestsPerMinute": 120, "burst": 40, "monthlyQuotaUnits": 240,
            "overagePolicy": "block", "currency": "EUR", "basePriceMicros": 49_000_000, "overageUnitPriceMicros": 0}),
        json!({"code": "flex", "name": "Flex", "requestsPerMinute": 100_000, "burst": 10_000, "monthlyQuotaUnits": 60,
            "overagePolicy": "allow", "currency": "EUR", "basePriceMicros": 99_000_000, "overageUnitPriceMicros": 2_000}),
    ];
    for plan in &plans {
        assert_eq!(send(ClientRequest::new("POST", "/api/v1/plans").json(plan)).await.status, 201);
    }
    let tenants = send(ClientRequest::get("/api/v1/tenants")).await.json();
    let id_of = |directory: &str| {
        tenants["value"].as_array().unwrap().iter().find(|t| t["entraTenantId"] == directory).unwrap()["id"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    let (a_id, b_id) = (id_of(DIR_A), id_of(DIR_B));
    for (id, plan, name) in
        [(&a_id, "metered", "Adatum"), (&b_id, "flex", "Bellows"), (&id_of(DIR_C), "developer", "Contoso")]
    {
        let patch = ClientRequest::new("PATCH", &format!("/api/v1/tenants/{id}"))
            .body(json!({"plan": plan, "name": name}).to_string())
            .header("Content-Type", "application/merge-patch+json")
            .header("If-Match", "*");
        let res = send(patch).await;
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    }
    let mut world = World { app, a_id, b_id, rate_limited: 0, quota_refused: 0 };

    // February: a little traffic, so the month closes with a statement.
    world.traffic(DIR_A, 2, true).await;
    world.traffic(DIR_B, 2, true).await;

    // March 2 to 9, three working hours a day (five on the last two), more each day.
    for day in 2..=9 {
        let hours: &[u32] = if day >= 8 { &[8, 11, 13, 15, 18] } else { &[8, 11, 15] };
        for (i, hour) in hours.iter().enumerate() {
            if day == 9 && *hour > 15 {
                continue; // now is 9 March, 15:xx
            }
            world.app.clock.set(at(day, *hour, 2));
            world.traffic(DIR_A, 1 + (day as usize + i) % 3, i == 0).await;
            world.traffic(DIR_B, 3, i == 1).await;
            if i == 0 {
                world.traffic(DIR_C, 1, true).await;
            }
        }
        if day == 5 {
            // A burst beyond A's (burst 40) with the clock standing still: the limiter refuses the rest.
            world.app.clock.set(at(day, 16, 30));
            let token = world.mint(DIR_A, &["Documents.Read"], "portal-app");
            let calls = (0..50).map(|_| world.app.http(auth(&token, ClientRequest::get("/api/v1/documents"))));
            for res in futures_util::future::join_all(calls).await {
                if refusal(&res) == Some("rate-limited") {
                    world.rate_limited += 1;
                }
            }
        }
    }
    // On the last day A spends its quota (block): the calls past it are refused.
    world.app.clock.set(at(9, 15, 20));
    for _ in 0..200 {
        let res = world.call(DIR_A, "portal-app", "GET", "/api/v1/documents", None).await;
        world.app.clock.advance(TimeDelta::seconds(2));
        if refusal(&res) == Some("quota-exceeded") {
            world.quota_refused += 1;
            if world.quota_refused == 3 {
                break;
            }
        }
    }
    assert!(world.rate_limited > 0 && world.quota_refused == 3, "{} {}", world.rate_limited, world.quota_refused);

    // The rollup runs (closing February and writing its statements); the last minutes stay in the tail.
    world.app.clock.set(at(9, 15, 40));
    let run = world.app.invoke_timer("UsageRollup", on_schedule()).await;
    assert!(run.logs()[0].starts_with("UsageRollup: rolled up"), "{:?}", run.logs());
    world.app.clock.set(at(9, 15, 47));
    world.traffic(DIR_C, 2, false).await;
    world
}

/// The real app on a loopback port, served with the world's state (and so its manual clock).
fn serve(world: &World) -> (String, actix_web::dev::ServerHandle) {
    let state = world.app.state.clone();
    let server = actix_web::HttpServer::new(move || {
        meterline::startup::app(state.clone(), meterline::startup::Surface::ApiOnly)
    })
    .workers(1)
    .disable_signals()
    .bind(("127.0.0.1", 0))
    .expect("a loopback port");
    let origin = format!("http://{}", server.addrs()[0]);
    let server = server.run();
    let handle = server.handle();
    actix_web::rt::spawn(server);
    (origin, handle)
}

fn artifacts() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|| repo_root().join("target"));
    let dir = if target.is_absolute() { target } else { repo_root().join(target) }.join("dashboard-artifacts");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Runs `tests/dashboard/run.mjs` with these sessions and returns what each saw.
async fn browse(origin: &str, sessions: Value) -> Value {
    let plan = json!({"chromium": chromium(), "origin": origin, "outDir": artifacts(), "sessions": sessions});
    run_script("run.mjs", &plan, BROWSER_BUDGET).await
}

/// A table the page showed: its header and rows.
fn table<'a>(session: &'a Value, name: &str) -> (Vec<&'a str>, &'a Vec<Value>) {
    let t = &session["tables"][name];
    let head = t["head"].as_array().unwrap_or_else(|| panic!("no table {name}: {session}"));
    (head.iter().map(|h| h.as_str().unwrap()).collect(), t["rows"].as_array().unwrap())
}

fn figure(session: &Value, name: &str) -> Value {
    let raw = session["figures"][name]["value"]
        .as_str()
        .unwrap_or_else(|| panic!("no figure {name}: {}", session["figures"]));
    raw.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(raw))
}

fn sum_by(rows: &[Value], key: &str, value: &str, of: &str) -> i64 {
    rows.iter().filter(|r| r[key] == of).map(|r| r[value].as_i64().unwrap()).sum()
}

fn check_session_basics(name: &str, session: &Value, origin: &str) {
    assert!(session["error"].is_null(), "{name}: {}\n{}", session["error"], session["html"]);
    let requests: Vec<&str> = session["requests"].as_array().unwrap().iter().map(|u| u.as_str().unwrap()).collect();
    assert!(!requests.is_empty());
    for url in &requests {
        assert!(url.starts_with(&format!("{origin}/")), "{name}: a request left for another host: {url}");
    }
    // The refused sessions' API answers (403, 404) show as failed loads; nothing else may (a CSP violation would).
    let refused = ["no-usage-read", "b-naming-a"].contains(&name);
    let errors: Vec<&Value> = session["consoleErrors"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| {
            !(refused
                && e.as_str().unwrap().starts_with("Failed to load resource: the server responded with a status of 4"))
        })
        .collect();
    assert!(errors.is_empty(), "{name}: console errors: {errors:?}");
}

fn check_axe(name: &str, session: &Value) {
    let serious: Vec<&Value> = session["axe"]
        .as_array()
        .unwrap_or_else(|| panic!("{name}: axe did not run"))
        .iter()
        .filter(|v| matches!(v["impact"].as_str(), Some("serious" | "critical")))
        .collect();
    assert!(serious.is_empty(), "{name}: axe-core found serious or critical violations: {serious:#?}");
}

fn check_charts(name: &str, session: &Value, expected: &[&str]) {
    for chart in expected {
        let c = &session["charts"][*chart];
        assert_eq!(c["drawn"], json!(true), "{name}: chart {chart} was not drawn: {c}");
        assert!(c["paintedPixels"].as_i64().unwrap() > 500, "{name}: chart {chart} is empty: {c}");
    }
}

#[actix_web::test]
async fn the_dashboard_shows_the_apis_figures_in_a_real_browser_to_those_allowed_to_see_them() {
    let world = seed().await;
    let (origin, server) = serve(&world);
    let a_page = world.mint(DIR_A, &["Usage.Read"], PAGE_APP);
    let a_documents_only = world.mint(DIR_A, &["Documents.Read"], PAGE_APP);
    let b_page = world.mint(DIR_B, &["Usage.Read"], PAGE_APP);
    let admin = world.mint(DIR_OPS, &["Platform.Admin", "Usage.Read"], PAGE_APP);
    let a_id = world.a_id.clone();
    // February, the closed period A's page can pick (one day of traffic, the 27th).
    let months = world.app.http(auth(&a_page, ClientRequest::get("/api/v1/usage?granularity=month"))).await.json();
    let february = months["value"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["windowStart"].as_str().unwrap().starts_with("2026-02"))
        .unwrap()["windowStart"]
        .as_str()
        .unwrap()
        .to_owned();
    let sessions = json!([
        {"name": "february", "token": a_page, "hash": format!("#tenant&period={february}")},
        {"name": "tenant", "token": a_page, "hash": "", "axe": true, "hover": "daily", "screenshot": "dashboard-tenant.png"},
        {"name": "phone", "token": a_page, "hash": "", "viewport": {"width": 390, "height": 844},
            "screenshot": "dashboard-tenant-phone.png"},
        {"name": "platform", "token": admin, "hash": "#platform", "axe": true, "screenshot": "dashboard-platform.png"},
        {"name": "admin-into-a", "token": admin, "hash": format!("#tenant={a_id}")},
        {"name": "no-usage-read", "token": a_documents_only, "hash": "", "axe": true},
        {"name": "b-naming-a", "token": b_page, "hash": format!("#tenant={a_id}")},
        {"name": "signed-out", "token": null, "hash": "", "axe": true},
    ]);
    let seen = browse(&origin, sessions).await;
    server.stop(true).await;
    for (name, session) in seen.as_object().unwrap() {
        check_session_basics(name, session, &origin);
    }

    // What the API answers for the same windows, read now (after the page), by another client of A.
    let checker = world.mint(DIR_A, &["Usage.Read"], "checker");
    let api = |path: String| {
        let app = &world.app;
        let token = checker.clone();
        async move {
            let res = app.http(auth(&token, ClientRequest::get(&path))).await;
            assert_eq!(res.status, 200, "{path}: {}", String::from_utf8_lossy(&res.body));
            res
        }
    };
    let summary = api("/api/v1/usage/summary".into()).await.json();
    let (from, to) = (summary["periodStartsAt"].as_str().unwrap(), summary["resetsAt"].as_str().unwrap());
    let window = |extra: &str| format!("/api/v1/usage?from={from}&to={to}&{extra}");

    // The tenant view: the quota figures equal the summary.
    let tenant = &seen["tenant"];
    assert!(tenant["tenantViewShown"].as_bool().unwrap() && tenant["refusal"].is_null(), "{tenant}");
    for (figure_name, field) in [
        ("units-used", "unitsUsed"),
        ("quota-units", "quotaUnits"),
        ("granted-units", "grantedUnits"),
        ("remaining-units", "remainingUnits"),
        ("overage-units", "overageUnits"),
        ("projected-units", "projectedUnits"),
        ("requests-per-minute", "requestsPerMinute"),
        ("burst", "burst"),
    ] {
        assert_eq!(figure(tenant, figure_name), summary[field], "{figure_name} = summary.{field}");
    }
    assert_eq!(summary["remainingUnits"], json!(0), "A spent its quota while seeding");
    assert!(tenant["figures"]["projected-exhaustion"]["text"] == "spent", "{}", tenant["figures"]);
    assert!(!tenant["figures"]["ratelimit-policy"]["text"].as_str().unwrap().is_empty());

    // Daily calls by operation: every day and every operation but the page's own reads.
    let daily = api(window("granularity=day&groupBy=operation")).await.json();
    let rows = daily["value"].as_array().unwrap();
    let days: BTreeSet<&str> = rows.iter().map(|r| r["windowStart"].as_str().unwrap()).collect();
    let (head, shown) = table(tenant, "daily");
    assert_eq!(shown.len(), days.len(), "one row per day with calls: {shown:?}");
    let seeded_ops = ["listDocuments", "createDocument", "getDocument"];
    for op in seeded_ops {
        let column = head.iter().position(|h| *h == op).unwrap_or_else(|| panic!("no column {op}: {head:?}"));
        for (row, day) in shown.iter().zip(&days) {
            let expected: i64 = rows
                .iter()
                .filter(|r| r["windowStart"] == *day && r["operationId"] == op)
                .map(|r| r["calls"].as_i64().unwrap())
                .sum();
            assert_eq!(row[column], json!(expected), "{op} on {day}");
        }
    }

    // Hourly calls of the last two days, the same way.
    let as_of: DateTime<Utc> = summary["asOf"].as_str().unwrap().parse().unwrap();
    let hourly = api(format!(
        "/api/v1/usage?granularity=hour&groupBy=operation&from={}",
        (as_of - TimeDelta::hours(48)).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
    ))
    .await
    .json();
    let rows = hourly["value"].as_array().unwrap();
    let hours: BTreeSet<&str> = rows.iter().map(|r| r["windowStart"].as_str().unwrap()).collect();
    let (head, shown) = table(tenant, "hourly");
    assert_eq!(shown.len(), hours.len(), "{shown:?}");
    let column = head.iter().position(|h| *h == "listDocuments").unwrap();
    for (row, hour) in shown.iter().zip(&hours) {
        let expected: i64 = rows
            .iter()
            .filter(|r| r["windowStart"] == *hour && r["operationId"] == "listDocuments")
            .map(|r| r["calls"].as_i64().unwrap())
            .sum();
        assert_eq!(row[column], json!(expected), "listDocuments in the hour of {hour}");
    }

    // The period by operation (errors included: the 404s and 429s) and by client.
    let ops = api(window("granularity=month&groupBy=operation")).await.json();
    let ops = ops["value"].as_array().unwrap();
    let (_, shown) = table(tenant, "operations");
    for op in seeded_ops {
        let row = shown.iter().find(|r| r[0] == op).unwrap_or_else(|| panic!("no row {op}"));
        for (i, field) in [(1, "calls"), (2, "units"), (3, "billableUnits"), (4, "errors")] {
            assert_eq!(row[i], json!(sum_by(ops, "operationId", field, op)), "{op} {field}");
        }
    }
    let list_errors = sum_by(ops, "operationId", "errors", "listDocuments");
    assert!(list_errors >= (world.rate_limited + world.quota_refused) as i64, "the refusals are errors");
    // Refusals by the limit that refused them: exactly the 429s the seeding saw, by their problem code.
    let total = |field: &str| ops.iter().map(|r| r[field].as_i64().unwrap()).sum::<i64>();
    assert_eq!(total("rateLimited"), world.rate_limited as i64, "every rate-limit refusal, and only those");
    assert_eq!(total("quotaRefused"), world.quota_refused as i64, "every quota refusal, and only those");
    assert_eq!(figure(tenant, "period-rate-limited"), json!(total("rateLimited")));
    assert_eq!(figure(tenant, "period-quota-refused"), json!(total("quotaRefused")));
    let clients = api(window("granularity=month&groupBy=client")).await.json();
    let clients = clients["value"].as_array().unwrap();
    let (_, shown) = table(tenant, "clients");
    for client in ["portal-app", "batch-app", "reports-app"] {
        let row = shown.iter().find(|r| r[0] == client).unwrap_or_else(|| panic!("no client {client}: {shown:?}"));
        assert_eq!(row[1], json!(sum_by(clients, "clientId", "calls", client)), "{client}");
    }
    assert_eq!(shown[0][0], "portal-app", "the busiest client first");

    // Errors per day: the errors of every day (the page's own reads all succeed).
    let totals = api(window("granularity=day")).await.json();
    let (_, shown) = table(tenant, "errors");
    assert_eq!(shown.len(), totals["value"].as_array().unwrap().len());
    for (row, api_row) in shown.iter().zip(totals["value"].as_array().unwrap()) {
        assert_eq!(row[2], api_row["errors"]);
        assert_eq!((&row[4], &row[5]), (&api_row["rateLimited"], &api_row["quotaRefused"]), "refusals of {}", row[0]);
    }

    // Statements: February's, closed by the rollup.
    let statements = api("/api/v1/billing/statements".into()).await.json();
    let (_, shown) = table(tenant, "statements");
    let periods: Vec<&Value> = shown.iter().map(|r| &r[0]).collect();
    let expected: Vec<&Value> = statements["value"].as_array().unwrap().iter().map(|s| &s["period"]).collect();
    assert_eq!(periods, expected);
    assert_eq!(expected, vec!["2026-02"]);

    check_charts("tenant", tenant, &["daily", "hourly", "errors", "latency"]);
    let hover = tenant["hover"]["values"].as_array().unwrap();
    assert!(
        hover.iter().any(|v| v.as_str().unwrap().chars().any(|c| c.is_ascii_digit())),
        "numbers on hover: {hover:?}"
    );
    check_axe("tenant", tenant);

    // An earlier period picked: its figures are its statement's, and a one-day series spans one day.
    let february = &seen["february"];
    let statement = &statements["value"][0];
    for (figure_name, field) in [
        ("units-used", "usedUnits"),
        ("quota-units", "quotaUnits"),
        ("overage-units", "overageUnits"),
        ("amount-due", "amountDueMicros"),
    ] {
        assert_eq!(figure(february, figure_name), statement[field], "February's {figure_name} = statement.{field}");
    }
    assert!(
        february["figures"]["remaining-units"].is_null(),
        "no live counter for a closed period: {}",
        february["figures"]
    );
    for chart in ["errors", "latency", "daily"] {
        assert_eq!(february["charts"][chart]["xSpanSeconds"], json!(86_400), "{chart}: {}", february["charts"][chart]);
    }
    check_charts("february", february, &["daily", "errors", "latency"]);

    // On a phone the same page fits the screen's width and still draws.
    let phone = &seen["phone"];
    assert_eq!(phone["overflowsHorizontally"], json!(false));
    check_charts("phone", phone, &["daily", "hourly", "errors", "latency"]);
    assert!(phone["charts"]["daily"]["width"].as_i64().unwrap() <= 390);

    // The platform view equals the platform reads.
    let admin_api = |path: &str| {
        let req = auth(&admin, ClientRequest::get(path));
        world.app.http(req)
    };
    let all = admin_api("/api/v1/usage/tenants").await.json();
    let pipeline = admin_api("/api/v1/usage/pipeline").await.json();
    let platform = &seen["platform"];
    assert!(platform["platformViewShown"].as_bool().unwrap(), "{platform}");
    let list = all["value"].as_array().unwrap();
    assert_eq!(figure(platform, "tenants"), json!(list.len()));
    assert_eq!(figure(platform, "rollup-lag-seconds"), pipeline["rollup"]["lagSeconds"]);
    assert_eq!(figure(platform, "outbox-due"), pipeline["outbox"]["due"]);
    assert_eq!(figure(platform, "quarantine-open"), pipeline["quarantine"]["open"]);
    let (_, by_usage) = table(platform, "by-usage");
    let names: Vec<&Value> = by_usage.iter().map(|r| &r[0]).collect();
    let expected: Vec<&Value> = list.iter().map(|t| &t["name"]).collect();
    assert_eq!(names, expected, "ranked by units used");
    for (row, t) in by_usage.iter().zip(list) {
        assert_eq!((&row[2], &row[3]), (&t["unitsUsed"], &t["quotaUnits"]));
    }
    let (_, near) = table(platform, "near-quota");
    assert!(near.iter().any(|r| r[0] == "Adatum"), "A is at its quota: {near:?}");
    let (_, over) = table(platform, "by-overage");
    assert_eq!(over.len(), 1, "{over:?}");
    assert_eq!(over[0][0], "Bellows");
    let b = list.iter().find(|t| t["tenantId"] == world.b_id.as_str()).unwrap();
    assert_eq!(over[0][5], b["overageUnits"]);
    assert!(b["overageUnits"].as_i64().unwrap() > 0);
    check_charts("platform", platform, &["tenants"]);
    check_axe("platform", platform);

    // The platform administrator follows the link into A's view and sees A's figures.
    let into_a = &seen["admin-into-a"];
    assert!(into_a["refusal"].is_null(), "{into_a}");
    assert_eq!(figure(into_a, "units-used"), summary["unitsUsed"]);
    assert_eq!(figure(into_a, "quota-units"), summary["quotaUnits"]);

    // Without Usage.Read: a clear refusal, and no figure at all.
    let refused = &seen["no-usage-read"];
    let text = refused["refusal"].as_str().unwrap_or_else(|| panic!("no refusal shown: {refused}"));
    assert!(text.contains("Usage.Read"), "{text}");
    assert_eq!(refused["tenantViewShown"], json!(false));
    assert_eq!(refused["figures"], json!({}));
    check_axe("no-usage-read", refused);

    // B naming A: refused as if A did not exist, with none of A's figures.
    let b_naming_a = &seen["b-naming-a"];
    let text = b_naming_a["refusal"].as_str().unwrap_or_else(|| panic!("no refusal shown: {b_naming_a}"));
    assert!(text.contains("No such tenant"), "{text}");
    assert!(!text.contains("HTTP 404"), "the API's own reason, not the status: {text}");
    assert_eq!(b_naming_a["figures"], json!({}));
    assert_eq!(b_naming_a["tenantViewShown"], json!(false));

    // Signed out: the sign-in form, accessible, and no API call without a token.
    let signed_out = &seen["signed-out"];
    assert_eq!(signed_out["signInShown"], json!(true));
    assert!(signed_out["requests"].as_array().unwrap().iter().all(|u| !u.as_str().unwrap().contains("/api/v1/")));
    check_axe("signed-out", signed_out);

    // The screenshots are artifacts; UPDATE_SCREENSHOTS=1 refreshes the README's.
    let out = artifacts();
    for shot in ["dashboard-tenant.png", "dashboard-tenant-phone.png", "dashboard-platform.png"] {
        assert!(std::fs::metadata(out.join(shot)).is_ok_and(|m| m.len() > 10_000), "{shot} was saved");
    }
    if std::env::var_os("UPDATE_SCREENSHOTS").is_some() {
        let images = repo_root().join("docs/images");
        std::fs::create_dir_all(&images).unwrap();
        for shot in ["dashboard-tenant.png", "dashboard-platform.png"] {
            std::fs::copy(out.join(shot), images.join(shot)).unwrap();
        }
    }
}

#[tokio::test]
async fn the_dashboard_is_public_and_every_file_is_reachable_through_the_function_routes() {
    let host = HostEmulator::start().await;
    let res = host.http(ClientRequest::get("/api/dashboard")).await;
    assert_ne!(res.header("x-emulator"), Some("no-function-route"), "no function.json route reaches /api/dashboard");
    assert_eq!((res.status, res.header("location")), (308, Some("/api/dashboard/")));
    let page = host.http(ClientRequest::get("/api/dashboard/")).await;
    assert_eq!(page.status, 200);
    let csp = page.header("content-security-policy").expect("a Content-Security-Policy");
    assert!(
        csp.contains("default-src 'none'") && csp.contains("script-src 'self';") && csp.contains("connect-src 'self';"),
        "{csp}"
    );
    assert!(!csp.contains("unsafe"), "{csp}");
    let html = String::from_utf8(page.body.clone()).unwrap();
    let mut files: Vec<String> = ["href=\"./", "src=\"./"]
        .iter()
        .flat_map(|attr| html.split(attr).skip(1).map(|rest| rest[..rest.find('"').unwrap()].to_owned()))
        .collect();
    files.extend(["config.json", "vendor/msal-browser/msal-browser.min.js", "vendor/uplot/LICENSE"].map(String::from));
    assert!(files.iter().any(|f| f == "vendor/uplot/uPlot.iife.min.js"), "{html}");
    for file in &files {
        let res = host.http(ClientRequest::get(&format!("/api/dashboard/{file}"))).await;
        assert_eq!(res.status, 200, "/api/dashboard/{file}: {:?}", res.header("x-emulator"));
    }
    let config = host.http(ClientRequest::get("/api/dashboard/config.json")).await.json();
    assert_eq!(config, json!({"authMode": "local"}), "local mode outside Azure: the development token flow");
}
