//! Assembling the application: the actix `App` (used by the server and, in process, by default-mode invocations) and the running server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_service::{IntoServiceFactory as _, ServiceFactoryExt as _, boxed};
use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpRequest, HttpResponse, HttpServer, web};
use utoipa_actix_web::AppExt as _;

use crate::clock::{SystemClock, TimeOrderedIds};
use crate::config::Config;
use crate::error::{AppError, json_payload_error, query_error};
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
        app = app.route("/{function}", web::post().to(invoke));
    }
    let (routes, contracts) = (state.routes.clone(), state.contracts.clone());
    let cors_origins = web::Data::new(state.config.cors_origins.clone());
    let app = app
        .app_data(state)
        // The route table and the contracts on their own as well: the stages below `state` find a request's
        // operation and its contract there.
        .app_data(routes)
        .app_data(contracts)
        .app_data(cors_origins)
        .app_data(json_config(max_body))
        .app_data(query_config())
        .app_data(web::PayloadConfig::new(max_body))
        .default_service(web::to(crate::routes::not_matched))
        // Innermost of the app-wide middleware, around every route and the fallback: a framework error (an
        // extractor's, actix-web's own) becomes a problem before deprecation headers are added and telemetry
        // logs the status, and inside telemetry's scope, so the problem carries the request id.
        .wrap(from_fn(crate::error::problems));
    // Debug builds (every test) check each answer's status against its operation's declared ones.
    app.wrap(actix_web::middleware::Condition::new(cfg!(debug_assertions), from_fn(crate::api::gate::conformance)))
        .wrap(from_fn(crate::api::deprecation::announce))
        // Inside telemetry (a preflight is logged with its request id), outside everything that authenticates or
        // meters: a preflight carries no credentials.
        .wrap(from_fn(crate::api::cors::apply))
        .wrap(from_fn(crate::telemetry::middleware))
        .wrap(from_fn(crate::api::http10::sized_for_http10))
        .wrap(from_fn(crate::api::head::as_get))
}

/// `POST /{function}`: the host's invocations, with the API app default-mode HTTP invocations run through.
async fn invoke(
    req: HttpRequest,
    function: web::Path<String>,
    payload: web::Payload,
    state: web::Data<AppState>,
) -> Result<HttpResponse, AppError> {
    dispatch::invoke(req, function, payload, state, api_only).await
}

/// The API alone ([`Surface::ApiOnly`]), boxed: the in-process target of default-mode HTTP invocations. Built
/// here and passed down, because `functions` sits below `startup` in the layer order.
fn api_only(state: web::Data<AppState>) -> dispatch::ApiFactory {
    boxed::factory(app(state, Surface::ApiOnly).into_factory().map(|res| res.map_into_boxed_body()))
}

/// The application state, with the OpenAPI document of the routes this build serves.
pub fn state(
    config: Config,
    store: Arc<dyn crate::store::Store>,
    clock: Arc<dyn crate::clock::Clock>,
    ids: Arc<dyn crate::clock::IdGenerator>,
) -> anyhow::Result<AppState> {
    AppState::new(config, store, clock, ids, &crate::routes::openapi())
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
/// `breakers` are those of dependencies called before the app exists (Key Vault's, from `cli`), listed by
/// readiness with the app's own.
pub async fn start(config: Config, breakers: Vec<Arc<crate::resilience::Breaker>>) -> anyhow::Result<Running> {
    // One clock for the store (migration stamps) and the app.
    let clock: Arc<dyn crate::clock::Clock> = Arc::new(SystemClock);
    let store = crate::store::open(&config.store, clock.clone()).await?;
    let report = if config.auto_migrate {
        let report = store.migrate().await?;
        if !report.applied.is_empty() {
            tracing::info!(applied = ?report.applied, store = store.kind(), "applied migrations");
        }
        report
    } else {
        // Without it the schema must already be this build's: the port opens only on a store it can serve.
        crate::store::check_migrated(store.as_ref()).await?
    };
    if !report.newer.is_empty() {
        tracing::warn!(newer = ?report.newer, store = store.kind(), "the database has migrations of a newer release; this release runs on it (each migration keeps the release before it working)");
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
    let mut state = state(config, store, clock, Arc::new(TimeOrderedIds))?;
    state.breakers.extend(breakers);
    let state = web::Data::new(state);
    // Load the identity provider's keys in the background: readiness must not wait for the network.
    let auth = state.auth.clone();
    actix_web::rt::spawn(async move { auth.warm_up().await });
    let for_workers = state.clone();
    let server = HttpServer::new(move || app(for_workers.clone(), surface))
        .keep_alive(keep_alive(surface))
        .workers(workers)
        .shutdown_timeout(shutdown)
        .listen(listener)?
        .run();
    Ok(Running { port, server, state })
}

/// How long an idle connection stays open. Under the host, longer than the host's own pool keeps one idle (.NET's
/// `SocketsHttpHandler.PooledConnectionIdleTimeout`, 1 minute), so the host always closes first: a handler closing
/// one the host is about to reuse fails that request, and a proxied request's body cannot be sent again. The host is
/// the only client there, on loopback. Standalone keeps actix-web's 5 s for clients it does not know.
pub fn keep_alive(surface: Surface) -> actix_web::http::KeepAlive {
    match surface {
        Surface::Host => std::time::Duration::from_secs(HOST_KEEP_ALIVE_SECS).into(),
        Surface::Standalone | Surface::ApiOnly => actix_web::http::KeepAlive::default(),
    }
}

/// [`keep_alive`] under the host, in seconds: twice the host's idle timeout.
const HOST_KEEP_ALIVE_SECS: u64 = 120;

#[cfg(test)]
mod tests {
    #[test]
    fn the_host_closes_idle_connections_before_the_handler_does() {
        use actix_web::http::KeepAlive;
        let dotnet_pool_idle = std::time::Duration::from_secs(60);
        match super::keep_alive(super::Surface::Host) {
            KeepAlive::Timeout(idle) => assert!(idle > dotnet_pool_idle, "{idle:?}"),
            other => panic!("a bounded idle timeout, not {other:?}"),
        }
        assert_eq!(super::keep_alive(super::Surface::Standalone), KeepAlive::default());
    }

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
        assert_eq!((status, body["code"].as_str()), (422, Some("ValidationFailed")));
        assert_eq!(body["errors"][0]["field"], "query");
    }

    async fn echo_bytes(body: web::Bytes) -> HttpResponse {
        HttpResponse::Ok().body(body)
    }

    #[actix_web::test]
    async fn framework_errors_are_problems_too() {
        use actix_web::error::InternalError;
        use actix_web::middleware::from_fn;

        use crate::error::{AppError, ErrorCode};

        // The app-wide middleware of `app`, in its order, around routes whose errors actix-web renders itself.
        let app = init_service(
            App::new()
                .app_data(web::PayloadConfig::new(16))
                .route("/bytes", web::post().to(echo_bytes))
                .route(
                    "/n/{n}",
                    web::get().to(|n: web::Path<u32>| async move { HttpResponse::Ok().body(n.to_string()) }),
                )
                .route(
                    "/only-get",
                    web::post().to(|| async {
                        let allow = HttpResponse::MethodNotAllowed().insert_header(("Allow", "GET, HEAD")).finish();
                        Err::<HttpResponse, _>(InternalError::from_response("use GET", allow))
                    }),
                )
                .route("/no-data", web::get().to(|_: web::Data<String>| async { HttpResponse::Ok().finish() }))
                .route(
                    "/own-text",
                    web::get().to(|| async { HttpResponse::BadRequest().body("a handler's own answer") }),
                )
                .route(
                    "/own-problem",
                    web::get().to(|| async {
                        Err::<HttpResponse, _>(AppError::new(ErrorCode::Conflict).with_detail("ours, untouched"))
                    }),
                )
                .wrap(from_fn(crate::error::problems))
                .wrap(from_fn(crate::api::deprecation::announce))
                .wrap(from_fn(crate::telemetry::middleware)),
        )
        .await;
        let call = |req: TestRequest| {
            let app = &app;
            async move {
                let res = call_service(app, req.to_request()).await;
                let header = |name: &str| res.headers().get(name).map(|v| v.to_str().unwrap().to_owned());
                let (status, content_type, allow) = (res.status().as_u16(), header("content-type"), header("allow"));
                let (request_id, error_code) = (header("x-request-id"), header("x-ms-error-code"));
                let body = actix_web::test::read_body(res).await;
                (status, content_type, allow, request_id, error_code, body)
            }
        };

        let (status, _, _, _, _, body) = call(TestRequest::post().uri("/bytes").set_payload(vec![b'x'; 16])).await;
        assert_eq!((status, &body[..]), (200, &[b'x'; 16][..]), "a body at the limit passes");

        // `web::Bytes` over its PayloadConfig: actix's PayloadError, once a 413 text/plain, now a problem.
        let (status, content_type, _, request_id, error_code, body) =
            call(TestRequest::post().uri("/bytes").set_payload(vec![b'x'; 17])).await;
        assert_eq!((status, content_type.as_deref()), (413, Some("application/problem+json")));
        assert_eq!(error_code.as_deref(), Some("PayloadTooLarge"));
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "PayloadTooLarge");
        assert_eq!(problem["type"], "https://meterline.dev/problems/payload-too-large");
        assert_eq!(problem["status"], 413);
        assert_eq!(problem["detail"], "payload reached size limit", "the framework's message is the detail");
        assert_eq!(problem["requestId"].as_str(), request_id.as_deref(), "the problem carries the request id");

        let (status, content_type, _, _, _, body) = call(TestRequest::get().uri("/n/abc")).await;
        assert_eq!((status, content_type.as_deref()), (404, Some("application/problem+json")));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"], "NotFound");

        let (status, content_type, allow, _, _, body) = call(TestRequest::post().uri("/only-get")).await;
        assert_eq!((status, content_type.as_deref()), (405, Some("application/problem+json")));
        assert_eq!(allow.as_deref(), Some("GET, HEAD"), "headers that matter are kept");
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["code"], "MethodNotAllowed");

        // A server error is opaque: the framework's message goes to the log, not to the client.
        let (status, content_type, _, _, _, body) = call(TestRequest::get().uri("/no-data")).await;
        assert_eq!((status, content_type.as_deref()), (500, Some("application/problem+json")));
        let problem: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(problem["code"], "Internal");
        assert!(problem.get("detail").is_none(), "{problem}");
        assert!(!String::from_utf8_lossy(&body).to_lowercase().contains("configured"), "{problem}");

        // Not errors of the framework: a handler's own plain answer, and a problem of ours, pass unchanged.
        let (status, content_type, _, _, _, body) = call(TestRequest::get().uri("/own-text")).await;
        assert_eq!((status, &body[..]), (400, &b"a handler's own answer"[..]));
        assert_ne!(content_type.as_deref(), Some("application/problem+json"));
        let (status, _, _, _, error_code, body) = call(TestRequest::get().uri("/own-problem")).await;
        assert_eq!((status, error_code.as_deref()), (409, Some("Conflict")));
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&body).unwrap()["detail"], "ours, untouched");
    }
}
