//! Assembling the application: the actix `App` (used by the server and, in process, by default-mode invocations) and the running server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use utoipa_actix_web::AppExt as _;

use crate::clock::{SystemClock, TimeOrderedIds};
use crate::config::Config;
use crate::error::{json_payload_error, query_error};
use crate::functions::dispatch;
use crate::state::AppState;

/// Which routes an `App` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// Under the Functions host, on 127.0.0.1 only: the API plus the host protocol (`GET /` readiness and
    /// `POST /{FunctionName}` invocations, which carry no credentials of their own: the host is the caller).
    Host,
    /// Standalone `serve`: the API and `GET /`, and no invocation routes at all (the jobs run on in-process
    /// timers), so nothing reachable from the network can run a job or inject an integration event.
    Standalone,
    /// The API alone: the in-process target of default-mode HTTP invocations.
    ApiOnly,
}

impl Surface {
    /// The surface a server started with `runtime` serves.
    pub fn of(runtime: &crate::config::Runtime) -> Surface {
        match runtime {
            crate::config::Runtime::FunctionsHost { .. } => Surface::Host,
            crate::config::Runtime::Standalone => Surface::Standalone,
        }
    }
}

/// Builds the application. Production, tests and default-mode invocations all go through here.
pub fn app(
    state: web::Data<AppState>,
    surface: Surface,
) -> App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    let max_body = state.config.max_body_bytes;
    let (mut app, _) = App::new().into_utoipa_app().configure(crate::routes::configure).split_for_parts();
    if surface != Surface::ApiOnly {
        app = app.route("/", web::get().to(dispatch::readiness_probe));
    }
    if surface == Surface::Host {
        app = app.route("/{function}", web::post().to(dispatch::invoke));
    }
    app.app_data(state)
        .app_data(json_config(max_body))
        .app_data(query_config())
        .app_data(web::PayloadConfig::new(max_body))
        .default_service(web::to(crate::routes::not_matched))
        .wrap(from_fn(crate::api::deprecation::announce))
        .wrap(from_fn(crate::telemetry::middleware))
}

/// JSON bodies: size-capped, and every failure (413, 415, 400, 422) answered as a problem.
pub fn json_config(max_body: usize) -> web::JsonConfig {
    web::JsonConfig::default().limit(max_body).error_handler(|err, _| json_payload_error(err).into())
}

/// Query strings: parse failures answered as `invalid-query` problems.
pub fn query_config() -> web::QueryConfig {
    web::QueryConfig::default().error_handler(|err, _| query_error(err).into())
}

/// A bound, running server.
pub struct Running {
    pub port: u16,
    pub server: actix_web::dev::Server,
    pub state: web::Data<AppState>,
}

/// Opens the store (migrating it when configured to), binds the port and starts serving.
pub async fn start(config: Config) -> anyhow::Result<Running> {
    let store = crate::store::open(&config.store).await?;
    if config.auto_migrate {
        let report = store.migrate().await?;
        if !report.applied.is_empty() {
            tracing::info!(applied = ?report.applied, store = store.kind(), "applied migrations");
        }
    }
    let surface = Surface::of(&config.runtime);
    // Config already refuses this; the invocation routes must never listen beyond loopback, whatever changes there.
    anyhow::ensure!(
        surface != Surface::Host || config.bind_address.is_loopback(),
        "host mode listens on loopback only, not {}",
        config.bind_address
    );
    let listener = TcpListener::bind((config.bind_address, config.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", config.bind_address, config.port))?;
    let port = listener.local_addr()?.port();
    let workers = config.workers;
    let shutdown = config.shutdown_timeout.as_secs();
    let state = web::Data::new(AppState::new(config, store, Arc::new(SystemClock), Arc::new(TimeOrderedIds))?);
    // Load the identity provider's keys in the background: readiness must not wait for the network.
    let auth = state.auth.clone();
    actix_web::rt::spawn(async move { auth.warm_up().await });
    let for_workers = state.clone();
    let server = HttpServer::new(move || app(for_workers.clone(), surface))
        .workers(workers)
        .shutdown_timeout(shutdown)
        .listen(listener)?
        .run();
    Ok(Running { port, server, state })
}

#[cfg(test)]
mod tests {
    use actix_web::test::{TestRequest, call_service, init_service, read_body_json};
    use actix_web::{App, HttpResponse, web};
    use serde::Deserialize;

    use super::{json_config, query_config};

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Body {
        title: String,
    }

    #[derive(Debug, Deserialize)]
    #[allow(dead_code)]
    struct Params {
        maxpagesize: u8,
    }

    async fn echo(_: web::Json<Body>, _: web::Query<Params>) -> HttpResponse {
        HttpResponse::NoContent().finish()
    }

    /// Runs one request through an app with the production extractor configuration; returns status and problem.
    async fn problem(req: TestRequest) -> (u16, serde_json::Value) {
        let app = init_service(
            App::new().app_data(json_config(64)).app_data(query_config()).route("/x", web::post().to(echo)),
        )
        .await;
        let res = call_service(&app, req.to_request()).await;
        let status = res.status().as_u16();
        assert_eq!(res.headers().get("content-type").unwrap(), "application/problem+json");
        (status, read_body_json(res).await)
    }

    fn post(query: &str) -> TestRequest {
        TestRequest::post().uri(&format!("/x?{query}"))
    }

    #[actix_web::test]
    async fn extractor_failures_are_problems_with_the_right_status() {
        let ok = init_service(
            App::new().app_data(json_config(64)).app_data(query_config()).route("/x", web::post().to(echo)),
        )
        .await;
        let res =
            call_service(&ok, post("maxpagesize=5").set_json(serde_json::json!({"title": "a"})).to_request()).await;
        assert_eq!(res.status(), 204, "the happy path passes");

        let (status, body) = problem(
            post("maxpagesize=5").insert_header(("content-type", "application/json")).set_payload(vec![b' '; 65]),
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (413, Some("PayloadTooLarge")));

        let (status, body) =
            problem(post("maxpagesize=5").insert_header(("content-type", "text/plain")).set_payload("{}")).await;
        assert_eq!((status, body["code"].as_str()), (415, Some("UnsupportedMediaType")));

        let (status, body) = problem(
            post("maxpagesize=5").insert_header(("content-type", "application/json")).set_payload("{\"title\":"),
        )
        .await;
        assert_eq!((status, body["code"].as_str()), (400, Some("MalformedJson")));

        let (status, body) =
            problem(post("maxpagesize=5").set_json(serde_json::json!({"title": "a", "extra": 1}))).await;
        assert_eq!((status, body["code"].as_str()), (422, Some("ValidationFailed")));
        assert!(body["errors"][0]["message"].as_str().unwrap().contains("unknown field `extra`"), "{body}");

        let (status, body) = problem(post("maxpagesize=500").set_json(serde_json::json!({"title": "a"}))).await;
        assert_eq!((status, body["code"].as_str()), (400, Some("InvalidQuery")));
        assert_eq!(body["errors"][0]["field"], "query");
    }
}
