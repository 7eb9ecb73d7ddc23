//! The services every handler and job reaches, built once at startup and shared by all workers.

use std::sync::Arc;

use crate::api::cursor::CursorSigner;
use crate::auth::Authenticator;
use crate::clock::{Clock, IdGenerator};
use crate::config::Config;
use crate::lookups::Lookups;
use crate::metering::recorder::UsageRecorder;
use crate::routes::RouteTable;
use crate::store::Store;

/// Shared application state, registered as `web::Data<AppState>`.
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Arc<dyn Store>,
    /// Short-lived caches of tenants, plans and API clients in front of `store`.
    pub lookups: Lookups,
    pub clock: Arc<dyn Clock>,
    pub ids: Arc<dyn IdGenerator>,
    /// Validates bearer tokens (and caches the results).
    pub auth: Arc<Authenticator>,
    /// Signs and checks list cursors.
    pub cursors: CursorSigner,
    /// Writes usage events with group commit.
    pub recorder: UsageRecorder,
    /// The OpenAPI document, serialized once.
    pub openapi_json: actix_web::web::Bytes,
    /// Path templates and methods of every route, for 405 answers.
    pub routes: RouteTable,
}

impl AppState {
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
    ) -> anyhow::Result<Self> {
        let openapi = crate::routes::openapi();
        let routes = RouteTable::from_openapi(&openapi);
        let openapi_json = serde_json::to_vec(&openapi).expect("the OpenAPI document serializes").into();
        let auth = Arc::new(Authenticator::from_config(&config.auth, clock.clone())?);
        let cursor_key = match &config.cursor_key {
            Some(key) => secrecy::ExposeSecret::expose_secret(key).as_bytes().to_vec(),
            None => [ids.new_id().as_bytes().as_slice(), ids.new_id().as_bytes().as_slice()].concat(),
        };
        let cursors = CursorSigner::new(cursor_key);
        let recorder = UsageRecorder::start(store.clone());
        let lookups = Lookups::new(store.clone(), clock.clone(), config.lookup_cache_ttl);
        Ok(AppState {
            config: Arc::new(config),
            store,
            lookups,
            clock,
            ids,
            auth,
            cursors,
            recorder,
            openapi_json,
            routes,
        })
    }
}
