//! The services every handler and job reaches, built once at startup and shared by all workers.

use std::sync::Arc;

use chrono::TimeDelta;

use crate::api::contract::Contracts;
use crate::api::cursor::CursorSigner;
use crate::api::operations::RouteTable;
use crate::auth::Authenticator;
use crate::azure::servicebus::{ServiceBusAuth, ServiceBusSender};
use crate::clock::{Clock, IdGenerator};
use crate::config::Config;
use crate::lookups::Lookups;
use crate::metering::leases::{LeaseSettings, QuotaLeases, RateLeases};
use crate::metering::recorder::UsageRecorder;
use crate::metering::refusals::RefusalAudits;
use crate::resilience::{Breaker, BreakerPolicy};
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
    /// This process's quota leases; `None` when every request debits the store's counter itself.
    pub leases: Option<QuotaLeases>,
    /// This process's batches of rate-limit steps; `None` when every request takes its step in the store.
    pub rate_leases: Option<RateLeases>,
    /// Repeated refusals counted instead of audited one by one, until their window ends.
    pub refusal_audits: Arc<RefusalAudits>,
    /// The OpenAPI document, serialized once.
    pub openapi_json: actix_web::web::Bytes,
    /// Path templates, methods and operation ids of every route: 405 answers, and which operation a request
    /// is. Also registered as app data on its own, for the stages below `state` ([`operation_of`]).
    ///
    /// [`operation_of`]: crate::api::operations::operation_of
    pub routes: actix_web::web::Data<RouteTable>,
    /// Every operation's declared statuses and the checks its query and body pass (`api::contract`); also
    /// registered as app data on its own, like `routes`.
    pub contracts: actix_web::web::Data<Contracts>,
    /// Sends outbox events to Service Bus; `None` when no namespace or connection string is configured.
    pub outbox_sender: Option<Arc<ServiceBusSender>>,
    /// Every send to Service Bus passes it (`jobs::outbox`): while open, a run stops instead of failing each row.
    pub servicebus_breaker: Arc<Breaker>,
    /// The breakers of every dependency this process calls (the store's, the OpenID provider's, Service Bus's
    /// when configured, Key Vault's when `cli` read secrets), as `GET /api/health/ready` lists them.
    pub breakers: Vec<Arc<Breaker>>,
    /// The most matches a search in relevance order ranks (`store::search::SEARCH_WINDOW`; tests lower it).
    pub search_window: u32,
    /// The most audit events one `verifyAuditChain` call checks (`metering::audit::VERIFY_LIMIT`; tests lower it).
    pub audit_verify_limit: u64,
}

impl AppState {
    /// `openapi` is the API's document (`routes::openapi`, which `startup::state` passes in): it is served as
    /// it is, and the route table is derived from it.
    pub fn new(
        config: Config,
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
        openapi: &utoipa::openapi::OpenApi,
    ) -> anyhow::Result<Self> {
        let routes = actix_web::web::Data::new(RouteTable::from_openapi(openapi));
        let contracts = actix_web::web::Data::new(Contracts::from_openapi(openapi, config.max_body_bytes)?);
        let openapi_json = serde_json::to_vec(openapi).expect("the OpenAPI document serializes").into();
        let auth = Arc::new(Authenticator::from_config(&config.auth, clock.clone())?);
        let cursor_key = match &config.cursor_key {
            Some(key) => secrecy::ExposeSecret::expose_secret(key).as_bytes().to_vec(),
            // Two ids carry 148 random bits from the OS (74 each); the timestamps in them add nothing secret.
            None => [ids.new_id().as_bytes().as_slice(), ids.new_id().as_bytes().as_slice()].concat(),
        };
        let cursors = CursorSigner::new(cursor_key);
        let recorder = UsageRecorder::new(store.clone());
        let leases = config.usage.quota_lease.map(|validity| {
            let settings = LeaseSettings {
                validity: TimeDelta::from_std(validity).expect("at most 60 s"),
                target: TimeDelta::from_std(config.usage.quota_lease_target).unwrap_or(TimeDelta::MAX),
            };
            QuotaLeases::new(store.clone(), clock.clone(), ids.clone(), settings)
        });
        let rate_leases = config
            .usage
            .rate_lease
            .map(|validity| RateLeases::new(store.clone(), TimeDelta::from_std(validity).expect("at most 5 s")));
        let refusal_audits = Arc::new(RefusalAudits::new(config.usage.refusal_audit_window));
        let lookups = Lookups::new(store.clone(), clock.clone(), config.lookup_cache_ttl);
        let outbox_sender = outbox_sender(&config)?.map(Arc::new);
        let servicebus_breaker = Breaker::new("servicebus", BreakerPolicy::RETRIED_CALLS, clock.clone());
        let mut breakers = vec![store.breaker().clone()];
        breakers.extend(auth.breaker());
        if outbox_sender.is_some() {
            breakers.push(servicebus_breaker.clone());
        }
        Ok(AppState {
            config: Arc::new(config),
            store,
            lookups,
            clock,
            ids,
            auth,
            cursors,
            recorder,
            leases,
            rate_leases,
            refusal_audits,
            openapi_json,
            routes,
            contracts,
            outbox_sender,
            servicebus_breaker,
            breakers,
            search_window: crate::store::search::SEARCH_WINDOW,
            audit_verify_limit: crate::metering::audit::VERIFY_LIMIT,
        })
    }
}

impl AppState {
    /// A period's counter as its tenant reads it (usage summaries, the RateLimit quota of requests that cost
    /// nothing): less the units this process's unsettled quota leases hold that no billable request used.
    /// Units other processes hold unspent count as used until their leases are settled (docs/usage.md).
    pub async fn quota_usage(
        &self,
        tenant_id: uuid::Uuid,
        period_start: chrono::NaiveDate,
    ) -> Result<Option<crate::store::QuotaUsage>, crate::store::StoreError> {
        let Some(usage) = self.store.quota_usage(tenant_id, period_start).await? else { return Ok(None) };
        let unspent = match &self.leases {
            Some(leases) => leases.unspent(tenant_id, period_start).await,
            None => 0,
        };
        let units_used = usage.units_used - unspent;
        Ok(Some(usage.with_units_used(units_used)))
    }
}

/// The outbox's Service Bus sender: SAS when a connection string is configured (the fallback wins, so a
/// deployment can switch to it without removing the namespace), else the managed identity for the namespace.
fn outbox_sender(config: &Config) -> anyhow::Result<Option<ServiceBusSender>> {
    let integration = &config.integration;
    let auth = match (&integration.servicebus_connection_string, &integration.servicebus_namespace) {
        (Some(connection_string), _) => ServiceBusAuth::Sas { connection_string: connection_string.clone() },
        (None, Some(namespace)) => ServiceBusAuth::Entra {
            namespace: namespace.clone(),
            credential: crate::azure::managed_identity(integration.managed_identity_client_id.as_deref())?,
        },
        (None, None) => return Ok(None),
    };
    Ok(Some(ServiceBusSender::new(auth, &integration.outbox_topic, integration.outbox_send_timeout)?))
}
