//! Assembling the application: the actix `App` (used by the server and, in process, by default-mode invocations) and the running server.

use std::net::TcpListener;
use std::sync::Arc;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::middleware::from_fn;
use actix_web::{App, HttpServer, web};
use utoipa_actix_web::AppExt as _;

use crate::clock::{RandomIds, SystemClock};
use crate::config::Config;
use crate::error::{json_payload_error, query_error};
use crate::functions::dispatch;
use crate::state::AppState;

/// Which routes an `App` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Surface {
    /// The API plus the host protocol (`GET /` readiness and `POST /{FunctionName}` invocations).
    Host,
    /// The API alone: the in-process target of default-mode HTTP invocations.
    ApiOnly,
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
    if surface == Surface::Host {
        app = app
            .route("/", web::get().to(dispatch::readiness_probe))
            .route("/{function}", web::post().to(dispatch::invoke));
    }
    app.app_data(state)
        .app_data(web::JsonConfig::default().limit(max_body).error_handler(|err, _| json_payload_error(err).into()))
        .app_data(web::QueryConfig::default().error_handler(|err, _| query_error(err).into()))
        .app_data(web::PayloadConfig::new(max_body))
        .default_service(web::to(crate::routes::not_matched))
        .wrap(from_fn(crate::telemetry::middleware))
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
    let listener = TcpListener::bind((config.bind_address, config.port))
        .map_err(|e| anyhow::anyhow!("cannot listen on {}:{}: {e}", config.bind_address, config.port))?;
    let port = listener.local_addr()?.port();
    let workers = config.workers;
    let shutdown = config.shutdown_timeout.as_secs();
    let state = web::Data::new(AppState::new(config, store, Arc::new(SystemClock), Arc::new(RandomIds)));
    let for_workers = state.clone();
    let server = HttpServer::new(move || app(for_workers.clone(), Surface::Host))
        .workers(workers)
        .shutdown_timeout(shutdown)
        .listen(listener)?
        .run();
    Ok(Running { port, server, state })
}
