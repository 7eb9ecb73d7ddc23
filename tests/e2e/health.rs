//! Readiness in process: what `GET /api/health/ready` answers as the store's breaker opens, turns half-open
//! and closes, with the app's clock moved by the test and another connection holding SQLite's write lock.

use std::time::Duration;

use serde_json::Value;

use crate::support::app::TestApp;
use crate::support::host::ClientRequest;

async fn ready(app: &TestApp) -> (u16, String) {
    let response = app.http(ClientRequest::get("/api/health/ready")).await;
    let body: Value = serde_json::from_slice(&response.body).unwrap();
    let store = body["breakers"].as_array().and_then(|all| all.iter().find(|b| b["dependency"] == "store")).cloned();
    (response.status, store.map(|b| b["state"].as_str().unwrap_or_default().to_owned()).unwrap_or_default())
}

#[actix_web::test]
async fn a_half_open_store_is_ready_only_once_it_takes_a_write() {
    let app = TestApp::start().await;
    assert_eq!(ready(&app).await, (200, "closed".to_owned()));

    // Another connection holds the write lock: reads still answer, writes fail after the writer's wait bound.
    let holder = app.db();
    holder.execute_batch("BEGIN IMMEDIATE").unwrap();
    let breaker = app.store.breaker().clone();
    for _ in 0..5 {
        breaker.admit().unwrap().finish(false);
    }
    let (status, state) = ready(&app).await;
    assert_eq!((status, state.as_str()), (503, "open"));

    // The open period passes: the breaker is half-open, and readiness is its probe. A read would answer here.
    app.clock.advance(chrono::TimeDelta::from_std(Duration::from_secs(6)).unwrap());
    let (status, state) = ready(&app).await;
    assert_eq!((status, state.as_str()), (503, "open"), "the probe write failed, so the breaker opened again");

    // The lock goes away; after the next open period the probe succeeds and closes the breaker.
    holder.execute_batch("ROLLBACK").unwrap();
    app.clock.advance(chrono::TimeDelta::from_std(Duration::from_secs(6)).unwrap());
    assert_eq!(ready(&app).await, (200, "closed".to_owned()), "the probe closed it");
}
