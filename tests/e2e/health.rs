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

#[actix_web::test]
async fn a_store_file_removed_under_the_process_is_not_ready_and_acknowledges_no_write() {
    let app = TestApp::start().await;
    let token = app.token("aaaaaaaa-0000-0000-0000-0000000000aa", "Documents.Write", "writer").await;
    let create = || {
        ClientRequest::new("POST", "/api/v1/documents")
            .json(&serde_json::json!({"title": "kept?", "docType": "memo"}))
            .header("Authorization", &format!("Bearer {token}"))
    };
    assert_eq!(app.http(create()).await.status, 201);
    for suffix in ["", "-wal", "-shm"] {
        std::fs::remove_file(app.root.join(format!("data/meterline.db{suffix}"))).unwrap();
    }
    let refused = app.http(create()).await;
    assert_eq!(refused.status, 503, "{}", String::from_utf8_lossy(&refused.body));
    assert_eq!(ready(&app).await.0, 503, "readiness takes the instance out");
}
