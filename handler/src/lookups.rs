//! Short-lived caches of the rows every metered request reads: the API client, the tenant, the plan and its cost overrides.
//!
//! Without them each request makes four store reads before its handler runs. Entries live for
//! `METERLINE_LOOKUP_CACHE_SECS` (5 s by default; 0 turns caching off), measured on the injected clock.
//! "Not found" is cached too, so unregistered applications do not cost a read per request.
//!
//! Consistency: a change made through this process clears every entry at once ([`Lookups::invalidate`],
//! called by the handlers and consumers that change tenants, plans and API clients), so it applies to
//! the very next request. A change made through another process (Functions scale-out) applies here
//! within the cache lifetime: a suspended tenant or revoked client may make calls for up to that long,
//! which is the documented trade (ARCHITECTURE.md). Limits and quotas themselves are never cached.

use std::hash::Hash;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::clock::Clock;
use crate::store::{ApiClient, Plan, Store, StoreError, Tenant};

/// Entries per cache: far more tenants, plans and clients than one process serves in a few seconds.
const CAPACITY: usize = 10_000;

/// A value read at `read_at`, in the generation the cache had then.
#[derive(Clone)]
struct Entry<V> {
    value: V,
    read_at: DateTime<Utc>,
    generation: u64,
}

/// One keyed cache with a lifetime.
struct Timed<K, V> {
    entries: quick_cache::sync::Cache<K, Entry<V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Timed<K, V> {
    fn new() -> Self {
        Timed { entries: quick_cache::sync::Cache::new(CAPACITY) }
    }

    fn fresh(&self, key: &K, now: DateTime<Utc>, ttl: chrono::Duration, generation: u64) -> Option<V> {
        let entry = self.entries.get(key)?;
        (entry.generation == generation && now - entry.read_at < ttl && entry.read_at <= now).then_some(entry.value)
    }
}

/// The caches, shared by every worker of a process.
pub struct Lookups {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ttl: chrono::Duration,
    /// Bumped by [`Lookups::invalidate`]: entries of an older generation are stale.
    generation: AtomicU64,
    clients: Timed<(Uuid, String), Arc<Vec<ApiClient>>>,
    tenants: Timed<Uuid, Option<Tenant>>,
    tenants_by_directory: Timed<Uuid, Option<Tenant>>,
    plans: Timed<String, Option<Plan>>,
    plan_costs: Timed<String, Arc<Vec<(String, i64)>>>,
}

impl std::fmt::Debug for Lookups {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lookups").field("ttl", &self.ttl).finish_non_exhaustive()
    }
}

/// Reads through `cache`: a fresh entry, else the store (and remembers what it said).
macro_rules! read_through {
    ($self:ident, $cache:ident, $key:expr, $load:expr) => {{
        let now = $self.clock.now();
        let generation = $self.generation.load(Ordering::Acquire);
        if let Some(value) = $self.$cache.fresh(&$key, now, $self.ttl, generation) {
            return Ok(value);
        }
        let value = $load;
        if $self.ttl > chrono::Duration::zero() {
            $self.$cache.entries.insert($key, Entry { value: value.clone(), read_at: now, generation });
        }
        Ok(value)
    }};
}

impl Lookups {
    /// `ttl` zero turns caching off: every lookup reads the store.
    pub fn new(store: Arc<dyn Store>, clock: Arc<dyn Clock>, ttl: std::time::Duration) -> Self {
        Lookups {
            store,
            clock,
            ttl: chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::zero()),
            generation: AtomicU64::new(0),
            clients: Timed::new(),
            tenants: Timed::new(),
            tenants_by_directory: Timed::new(),
            plans: Timed::new(),
            plan_costs: Timed::new(),
        }
    }

    /// Forgets everything: call after changing a tenant, plan or API client.
    pub fn invalidate(&self) {
        // The generation makes a read that started before this call unable to store a stale entry as fresh.
        self.generation.fetch_add(1, Ordering::AcqRel);
        self.clients.entries.clear();
        self.tenants.entries.clear();
        self.tenants_by_directory.entries.clear();
        self.plans.entries.clear();
        self.plan_costs.entries.clear();
    }

    /// Every registration of the application `app_id` for the directory `directory` (see [`crate::auth::guard`]).
    /// `app_id` is compared as registrations store it ([`crate::store::app_key`]).
    pub async fn api_clients_for_app(&self, directory: Uuid, app_id: &str) -> Result<Arc<Vec<ApiClient>>, StoreError> {
        let app_id = crate::store::app_key(app_id);
        read_through!(
            self,
            clients,
            (directory, app_id.clone()),
            Arc::new(self.store.api_clients_for_app(directory, &app_id).await?)
        )
    }

    pub async fn tenant(&self, id: Uuid) -> Result<Option<Tenant>, StoreError> {
        read_through!(self, tenants, id, self.store.get_tenant(id).await?)
    }

    pub async fn tenant_by_entra_id(&self, directory: Uuid) -> Result<Option<Tenant>, StoreError> {
        read_through!(self, tenants_by_directory, directory, self.store.get_tenant_by_entra_id(directory).await?)
    }

    pub async fn plan(&self, code: &str) -> Result<Option<Plan>, StoreError> {
        read_through!(self, plans, code.to_owned(), self.store.get_plan(code).await?)
    }

    /// The plan's per-operation cost overrides.
    pub async fn plan_costs(&self, code: &str) -> Result<Arc<Vec<(String, i64)>>, StoreError> {
        read_through!(self, plan_costs, code.to_owned(), Arc::new(self.store.plan_operation_costs(code).await?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;
    use crate::store::OveragePolicy;
    use crate::store::SqliteStore;

    fn plan(code: &str, quota: i64, at: DateTime<Utc>) -> Plan {
        Plan {
            code: code.into(),
            name: code.into(),
            requests_per_minute: 60,
            burst: 10,
            monthly_quota_units: quota,
            overage_policy: OveragePolicy::Block,
            currency: "EUR".into(),
            base_price_micros: 0,
            overage_unit_price_micros: 0,
            created_at: at,
            updated_at: at,
            version: 1,
        }
    }

    async fn setup(ttl_secs: u64) -> (tempfile::TempDir, Arc<dyn Store>, Arc<ManualClock>, Lookups) {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("l.db")).await.unwrap());
        store.migrate().await.unwrap();
        let clock = Arc::new(ManualClock::new(DateTime::from_timestamp(1_800_000_000, 0).unwrap()));
        let lookups = Lookups::new(store.clone(), clock.clone(), std::time::Duration::from_secs(ttl_secs));
        (dir, store, clock, lookups)
    }

    #[tokio::test]
    async fn entries_live_for_the_ttl_on_the_injected_clock_and_invalidate_clears_them_at_once() {
        let (_dir, store, clock, lookups) = setup(5).await;
        let now = clock.now();
        // "Not found" is remembered too.
        assert_eq!(lookups.plan("gold").await.unwrap(), None);
        store.create_plan(&plan("gold", 100, now), None).await.unwrap();
        assert_eq!(lookups.plan("gold").await.unwrap(), None, "served from the cache within the TTL");
        clock.advance(chrono::Duration::seconds(5));
        assert_eq!(lookups.plan("gold").await.unwrap().unwrap().monthly_quota_units, 100, "re-read after the TTL");

        let mut changed = plan("gold", 500, now);
        changed.version = 1;
        store.update_plan(&changed, 1, None, None).await.unwrap();
        assert_eq!(lookups.plan("gold").await.unwrap().unwrap().monthly_quota_units, 100);
        lookups.invalidate();
        assert_eq!(lookups.plan("gold").await.unwrap().unwrap().monthly_quota_units, 500, "invalidate applies at once");
    }

    #[tokio::test]
    async fn a_zero_ttl_reads_the_store_every_time() {
        let (_dir, store, clock, lookups) = setup(0).await;
        assert_eq!(lookups.plan("gold").await.unwrap(), None);
        store.create_plan(&plan("gold", 100, clock.now()), None).await.unwrap();
        assert!(lookups.plan("gold").await.unwrap().is_some());
    }
}
