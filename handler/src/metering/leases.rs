//! Quota leases on the request path: a process spends grants of its tenants' quota units in memory, so a metered
//! request waits on the store for its quota only when the grant it spends from runs out or expires
//! (docs/usage.md, "Quota leases").
//!
//! One [`Book`] per (tenant, period) holds the lease being spent. A request takes its units from it in order
//! (its place in the lease gives its overage) and holds a [`LeaseTicket`] until its usage record is durable. A
//! lease that runs out or expires is retired; once its last ticket is finished it is settled in the background,
//! which gives its unspent units back to the store. A ticket dropped unfinished (the request future was dropped)
//! leaves its lease to be reclaimed after [`RECLAIM_MARGIN`], when every record it could still write is durable.
//!
//! [`RateLeases`] do the same for the GCRA rate limit: a batch of a (tenant, client)'s steps taken at once, spent
//! in memory for a short validity, the rest forfeited.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, NaiveDate, TimeDelta, Utc};
use uuid::Uuid;

use crate::clock::{Clock, IdGenerator};
use crate::store::{
    QuotaDebit, QuotaLeaseGrant, QuotaLeaseRequest, RateLimitDecision, RateLimitTake, Store, StoreError,
    overage_between,
};

/// How long after its expiry an unsettled lease is taken to be its crashed holder's and settled by others. A
/// holder stops spending a lease at expiry, and a usage record either commits within the store's bound for a
/// write (about 16 s on SQL Server, with its retries) or is never written; the margin covers that and clock skew.
pub const RECLAIM_MARGIN: TimeDelta = TimeDelta::seconds(60);

/// The (tenant, period) books a process keeps before it forgets those without a lease.
const MAX_QUOTA_BOOKS: usize = 10_000;

/// The (tenant, client) batches a process keeps before it forgets the expired ones.
const MAX_RATE_BOOKS: usize = 10_000;

/// The largest grant one request for a lease asks for.
const MAX_GRANT: i64 = 1_000_000;

/// How long a lease may be spent, and how much traffic a grant is sized for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseSettings {
    /// A lease's lifetime: plan changes and returned units reach other processes within it.
    pub validity: TimeDelta,
    /// A grant covers about this long of the process's recent spending (at least one request).
    pub target: TimeDelta,
}

/// What [`QuotaLeases::spend`] decided for one request.
pub enum Spend {
    /// The units are the request's; `overage_units` of them lie beyond the quota. `units_used` is the counter as
    /// this process knows it: the store's at its last grant, less what its lease has not handed out yet.
    Accepted { ticket: LeaseTicket, overage_units: i64, units_used: i64, quota_units: i64 },
    /// Fewer units are left unleased than the request costs (under `block`).
    Rejected { units_used: i64, quota_units: i64 },
}

/// The quota leases of this process.
#[derive(Clone)]
pub struct QuotaLeases {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn Store>,
    clock: Arc<dyn Clock>,
    ids: Arc<dyn IdGenerator>,
    holder: String,
    settings: LeaseSettings,
    books: Books<(Uuid, NaiveDate), Book>,
    /// Settlements running in the background, which [`QuotaLeases::settle_all`] waits for.
    settling: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    /// Requests served, grants taken and settlements made, for [`QuotaLeases::stats`].
    spends: AtomicU64,
    grants: AtomicU64,
    settlements: AtomicU64,
}

/// What a process's leases did since it started: the store transactions its admissions cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LeaseStats {
    /// Requests that took units from a quota lease, or a step of a rate batch.
    pub requests: u64,
    /// Store transactions those took: quota grants and settlements, or rate batches.
    pub store_transactions: u64,
}

/// A book per key; its requests queue on the book's lock while the store is asked.
type Books<K, B> = Mutex<HashMap<K, Arc<tokio::sync::Mutex<B>>>>;

/// A (tenant, period)'s book.
type SharedBook = Arc<tokio::sync::Mutex<Book>>;

/// The book of `key`, made if new. Past `bound` books, first forgets those no request is using and that `keep`
/// does not hold on to, so a process's books stay bounded however many keys it sees.
fn book_of<K: std::hash::Hash + Eq, B: Default>(
    books: &Books<K, B>,
    key: K,
    bound: usize,
    keep: impl Fn(&B) -> bool,
) -> Arc<tokio::sync::Mutex<B>> {
    let mut books = books.lock().expect("books");
    if books.len() >= bound {
        books.retain(|_, book| Arc::strong_count(book) > 1 || book.try_lock().map_or(true, |b| keep(&b)));
    }
    books.entry(key).or_default().clone()
}

/// Units (or steps) a second, from what a process spent since `since`, averaged with the `previous` estimate.
/// Measured over at least 10 ms: a lease or batch spent by a burst of requests says little about the rate that
/// follows.
fn blended_rate(previous: f64, spent: i64, since: DateTime<Utc>, now: DateTime<Utc>) -> f64 {
    let secs = (now - since).num_microseconds().unwrap_or(i64::MAX) as f64 / 1e6;
    let sample = spent as f64 / secs.max(0.01);
    if previous == 0.0 { sample } else { (previous + sample) / 2.0 }
}

/// The lease a (tenant, period) spends from in this process, and how fast it spends.
#[derive(Default)]
struct Book {
    current: Option<Spending>,
    /// Leases retired and not settled yet: the counter still holds what they did not spend.
    retired: Vec<Spending>,
    /// Units a second this process spent from its recent leases (an average over them).
    rate: f64,
    /// The store's counter and quota at the last grant or refusal.
    last_seen: Option<(i64, i64)>,
}

struct Spending {
    held: Arc<Held>,
    /// Units handed out so far, in order: the next request's units start here.
    allocated: i64,
}

/// A granted lease, shared with the tickets of the requests spending from it.
struct Held {
    id: Uuid,
    first_unit: i64,
    granted: i64,
    units_used_at_grant: i64,
    quota_units: i64,
    granted_at: DateTime<Utc>,
    expires_at: DateTime<Utc>,
    in_flight: AtomicU32,
    /// Units handed to requests that then failed (not billable): the settlement gives them back.
    refunded: AtomicI64,
    retired: AtomicBool,
    abandoned: AtomicBool,
    settling: AtomicBool,
    /// The store has settled it: the counter no longer holds its units.
    settled: AtomicBool,
}

impl Spending {
    /// Units of the counter this lease holds that no billable request used: not handed out, or handed to a
    /// request that failed. Its settlement gives them back; until then they count as used in the store.
    fn held_back(&self) -> i64 {
        self.held.granted - self.allocated + self.held.refunded.load(Ordering::SeqCst)
    }

    /// Whether the counter may still hold what this lease holds back: not settled, and not yet past the margin
    /// after which another process may settle it (one whose request was abandoned is reclaimed so).
    fn outstanding(&self, now: DateTime<Utc>) -> bool {
        !self.held.settled.load(Ordering::SeqCst) && now < self.held.expires_at + RECLAIM_MARGIN
    }
}

/// A request's claim on units of a lease, from the limit stage until its usage record is durable.
pub struct LeaseTicket {
    held: Arc<Held>,
    inner: Arc<Inner>,
    units: i64,
    finished: bool,
}

impl LeaseTicket {
    /// The lease the request's usage event names.
    pub fn lease_id(&self) -> Uuid {
        self.held.id
    }

    /// The request's records are written (or will never be): its lease may be settled once it is retired. A request
    /// that is not `billable` gives its units back at the settlement.
    pub fn finish(mut self, billable: bool) {
        self.finished = true;
        if !billable {
            self.held.refunded.fetch_add(self.units, Ordering::SeqCst);
        }
        self.held.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.inner.settle_when_done(&self.held);
    }
}

impl Drop for LeaseTicket {
    fn drop(&mut self) {
        if !self.finished {
            // The request's record may still commit: only the reclaim, after the margin, may count its lease.
            self.held.abandoned.store(true, Ordering::SeqCst);
            self.held.in_flight.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

impl QuotaLeases {
    pub fn new(
        store: Arc<dyn Store>,
        clock: Arc<dyn Clock>,
        ids: Arc<dyn IdGenerator>,
        settings: LeaseSettings,
    ) -> Self {
        let holder = format!("handler-{}", ids.new_id());
        QuotaLeases {
            inner: Arc::new(Inner {
                store,
                clock,
                ids,
                holder,
                settings,
                books: Mutex::new(HashMap::new()),
                settling: Mutex::new(Vec::new()),
                spends: AtomicU64::new(0),
                grants: AtomicU64::new(0),
                settlements: AtomicU64::new(0),
            }),
        }
    }

    /// Takes `debit.units` for one request from this process's lease of the debit's period, taking a new grant
    /// from the store when the lease has run out or expired (requests of the same period wait for that one grant).
    pub async fn spend(&self, debit: &QuotaDebit) -> Result<Spend, StoreError> {
        let book = self.inner.book(debit.tenant_id, debit.period_start);
        let mut book = book.lock().await;
        let (now, units) = (debit.now, debit.units.max(1));
        for _ in 0..2 {
            if let Some(spending) = book.current.as_mut()
                && now < spending.held.expires_at
                && spending.allocated + units <= spending.held.granted
            {
                self.inner.spends.fetch_add(1, Ordering::Relaxed);
                let held = &spending.held;
                let offset = spending.allocated;
                spending.allocated += units;
                held.in_flight.fetch_add(1, Ordering::SeqCst);
                let quota_units = held.quota_units;
                return Ok(Spend::Accepted {
                    overage_units: overage_between(held.first_unit + offset, units, quota_units),
                    units_used: held.units_used_at_grant - spending.held_back(),
                    quota_units,
                    ticket: LeaseTicket { held: held.clone(), inner: self.inner.clone(), units, finished: false },
                });
            }
            book.retire_current(&self.inner, now);
            let want = book.grant_size(units, self.inner.settings.target);
            let request = QuotaLeaseRequest {
                lease_id: self.inner.ids.new_id(),
                holder: self.inner.holder.clone(),
                debit: QuotaDebit { units: want, ..debit.clone() },
                min_units: units,
                expires_at: now + self.inner.settings.validity,
                reclaim_before: now - RECLAIM_MARGIN,
            };
            self.inner.grants.fetch_add(1, Ordering::Relaxed);
            match self.inner.store.grant_quota_lease(&request).await? {
                QuotaLeaseGrant::Granted { units: granted, first_unit, units_used, quota_units } => {
                    crate::telemetry::metrics::quota_lease_granted(granted);
                    book.last_seen = Some((units_used, quota_units));
                    let held = Held {
                        id: request.lease_id,
                        first_unit,
                        granted,
                        units_used_at_grant: units_used,
                        quota_units,
                        granted_at: now,
                        expires_at: request.expires_at,
                        in_flight: AtomicU32::new(0),
                        refunded: AtomicI64::new(0),
                        retired: AtomicBool::new(false),
                        abandoned: AtomicBool::new(false),
                        settling: AtomicBool::new(false),
                        settled: AtomicBool::new(false),
                    };
                    book.current = Some(Spending { held: Arc::new(held), allocated: 0 });
                }
                QuotaLeaseGrant::Exhausted { units_used, quota_units } => {
                    book.last_seen = Some((units_used, quota_units));
                    return Ok(Spend::Rejected { units_used, quota_units });
                }
            }
        }
        Err(StoreError::Other(anyhow::anyhow!("a fresh quota lease could not pay for the request that asked for it")))
    }

    /// Retires every lease this process holds and settles those no request is spending from, waiting for the
    /// store and for the settlements already running (shutdown, and tests that read the counter). Leases still in
    /// use settle when their last request finishes.
    pub async fn settle_all(&self) {
        self.settled().await;
        let books: Vec<_> = self.inner.books.lock().expect("lease books").values().cloned().collect();
        for book in books {
            let mut book = book.lock().await;
            if let Some(old) = book.current.take() {
                old.held.retired.store(true, Ordering::SeqCst);
                if old.held.in_flight.load(Ordering::SeqCst) == 0
                    && !old.held.abandoned.load(Ordering::SeqCst)
                    && !old.held.settling.swap(true, Ordering::SeqCst)
                {
                    self.inner.settle(&old.held).await;
                }
                book.retired.push(old);
            }
        }
    }

    /// Waits for the settlements running in the background.
    pub async fn settled(&self) {
        let running: Vec<_> = std::mem::take(&mut *self.inner.settling.lock().expect("settlements"));
        for settlement in running {
            let _ = settlement.await;
        }
    }

    /// The units of the period's counter this process's unsettled leases hold and no billable request used: not
    /// handed out yet, or handed to requests that failed. Their settlements give them back.
    pub async fn unspent(&self, tenant_id: Uuid, period_start: NaiveDate) -> i64 {
        let Some(book) = self.inner.books.lock().expect("lease books").get(&(tenant_id, period_start)).cloned() else {
            return 0;
        };
        let book = book.lock().await;
        let now = self.inner.clock.now();
        book.current.iter().chain(&book.retired).filter(|s| s.outstanding(now)).map(Spending::held_back).sum()
    }

    /// Retires the leases that expired while no request came to spend them, so their settlement gives their
    /// unspent units back within a sweep of their expiry instead of at the period's next request (or the reclaim,
    /// a minute later). The server runs it every second ([`QuotaLeases::sweep_every`]).
    pub async fn sweep(&self) {
        let now = self.inner.clock.now();
        let books: Vec<_> = self.inner.books.lock().expect("lease books").values().cloned().collect();
        for book in books {
            // A book in use is being spent or renewed: its own request retires what expired.
            let Ok(mut book) = book.try_lock() else { continue };
            if book.current.as_ref().is_some_and(|c| now >= c.held.expires_at) {
                book.retire_current(&self.inner, now);
            } else {
                book.forget_settled(now);
            }
        }
    }

    /// Sweeps every `interval` on the current runtime until the leases are dropped.
    pub fn sweep_every(&self, interval: std::time::Duration) {
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(interval);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                QuotaLeases { inner }.sweep().await;
            }
        });
    }

    /// The requests that spent from quota leases, and the grants and settlements they took.
    pub fn stats(&self) -> LeaseStats {
        LeaseStats {
            requests: self.inner.spends.load(Ordering::Relaxed),
            store_transactions: self.inner.grants.load(Ordering::Relaxed)
                + self.inner.settlements.load(Ordering::Relaxed),
        }
    }
}

impl Inner {
    fn book(&self, tenant_id: Uuid, period_start: NaiveDate) -> SharedBook {
        // A book that holds no lease (a refused tenant's, say) can be forgotten; one with a lease is kept until the
        // lease is settled.
        book_of(&self.books, (tenant_id, period_start), MAX_QUOTA_BOOKS, |b| b.current.is_some())
    }

    fn retire(self: &Arc<Self>, held: &Arc<Held>) {
        held.retired.store(true, Ordering::SeqCst);
        self.settle_when_done(held);
    }

    /// Settles a retired lease in the background once no request spends from it (and none was abandoned).
    fn settle_when_done(self: &Arc<Self>, held: &Arc<Held>) {
        if held.retired.load(Ordering::SeqCst)
            && held.in_flight.load(Ordering::SeqCst) == 0
            && !held.abandoned.load(Ordering::SeqCst)
            && !held.settling.swap(true, Ordering::SeqCst)
        {
            let (inner, held) = (self.clone(), held.clone());
            let settlement = tokio::spawn(async move { inner.settle(&held).await });
            let mut running = self.settling.lock().expect("settlements");
            running.retain(|s| !s.is_finished());
            running.push(settlement);
        }
    }

    async fn settle(&self, held: &Held) {
        let id = held.id;
        self.settlements.fetch_add(1, Ordering::Relaxed);
        match self.store.settle_quota_lease(id, self.clock.now()).await {
            Ok(Some(settled)) => {
                held.settled.store(true, Ordering::SeqCst);
                crate::telemetry::metrics::quota_lease_settled(settled.returned_units)
            }
            Ok(None) => tracing::error!(lease = %id, "a quota lease this process took is not in the store"),
            // Not lost: the next grant of the period, or the rollup job, reclaims it after the margin.
            Err(err) => {
                tracing::warn!(lease = %id, error = %err, "settling a quota lease failed; it will be reclaimed")
            }
        }
    }
}

impl Book {
    /// Retires the lease being spent, if any: no request takes units from it any more, and it is settled once its
    /// last request has finished.
    fn retire_current(&mut self, inner: &Arc<Inner>, now: DateTime<Utc>) {
        if let Some(old) = self.current.take() {
            self.learn(&old, now);
            inner.retire(&old.held);
            self.forget_settled(now);
            self.retired.push(old);
        }
    }

    /// Forgets the retired leases that are no longer [`Spending::outstanding`].
    fn forget_settled(&mut self, now: DateTime<Utc>) {
        self.retired.retain(|s| s.outstanding(now));
    }

    /// Learns the spending rate from a lease being retired.
    fn learn(&mut self, old: &Spending, now: DateTime<Utc>) {
        self.rate = blended_rate(self.rate, old.allocated, old.held.granted_at, now);
    }

    /// The units to ask for: the recent rate over the target duration, at least one request's `units`, at most
    /// half of what the store had left at the last grant (so near exhaustion grants shrink to single requests).
    fn grant_size(&self, units: i64, target: TimeDelta) -> i64 {
        let target_secs = target.num_milliseconds() as f64 / 1000.0;
        let mut want = ((self.rate * target_secs).ceil() as i64).clamp(units, MAX_GRANT);
        if let Some((used, quota)) = self.last_seen {
            want = want.min(((quota - used) / 2).max(units));
        }
        want
    }
}

/// Rate leases: steps of a (tenant, client)'s GCRA taken from the store a batch at a time
/// ([`crate::store::gcra_batch`]) and spent in memory until `validity` ends; steps left then are forfeited.
#[derive(Clone)]
pub struct RateLeases {
    inner: Arc<RateInner>,
}

struct RateInner {
    store: Arc<dyn Store>,
    validity: TimeDelta,
    takes: AtomicU64,
    batches: AtomicU64,
    books: Books<(Uuid, String), RateBook>,
}

/// A (tenant, client)'s batch of steps in this process.
#[derive(Default)]
struct RateBook {
    /// Steps of the batch not handed out yet.
    left: i64,
    granted: i64,
    granted_at: Option<DateTime<Utc>>,
    valid_until: Option<DateTime<Utc>>,
    /// The theoretical arrival time after the whole batch, and the interval it was taken at.
    tat_micros: i64,
    interval_micros: i64,
    /// Steps a second this process took recently.
    rate: f64,
}

impl RateLeases {
    pub fn new(store: Arc<dyn Store>, validity: TimeDelta) -> Self {
        let inner = RateInner {
            store,
            validity,
            takes: AtomicU64::new(0),
            batches: AtomicU64::new(0),
            books: Mutex::new(HashMap::new()),
        };
        RateLeases { inner: Arc::new(inner) }
    }

    /// One request's rate-limit decision: a step of this process's batch, or of a new batch from the store when
    /// the batch is spent, expired or taken at another rate (a plan change). The decision's `tat_micros` is the
    /// theoretical arrival time after this request, as if the batch's steps had been taken one at a time.
    pub async fn take(&self, take: &RateLimitTake) -> Result<RateLimitDecision, StoreError> {
        let now = DateTime::<Utc>::from_timestamp_micros(take.now_micros).unwrap_or_default();
        // One book per client ever seen would grow without end (a client may be each user): an expired batch can be
        // forgotten, which forfeits nothing.
        let key = (take.tenant_id, take.client_id.clone());
        let book = book_of(&self.inner.books, key, MAX_RATE_BOOKS, |b| b.valid_until.is_some_and(|until| now < until));
        let mut book = book.lock().await;
        let interval = take.emission_interval_micros.max(1);
        self.inner.takes.fetch_add(1, Ordering::Relaxed);
        if book.left > 0 && book.valid_until.is_some_and(|v| now < v) && book.interval_micros == interval {
            book.left -= 1;
            return Ok(RateLimitDecision {
                allowed: true,
                tat_micros: book.tat_micros - book.left * interval,
                retry_after_micros: 0,
            });
        }
        if let Some(granted_at) = book.granted_at {
            book.rate = blended_rate(book.rate, book.granted - book.left, granted_at, now);
        }
        let validity_secs = self.inner.validity.num_milliseconds() as f64 / 1000.0;
        let want = ((book.rate * validity_secs).ceil() as i64).clamp(1, take.burst.max(1));
        self.inner.batches.fetch_add(1, Ordering::Relaxed);
        let tokens = self.inner.store.take_rate_tokens(take, want).await?;
        crate::telemetry::metrics::rate_lease_steps(tokens.granted, book.left);
        *book = RateBook {
            left: (tokens.granted - 1).max(0),
            granted: tokens.granted,
            granted_at: Some(now),
            valid_until: Some(now + self.inner.validity),
            tat_micros: tokens.tat_micros,
            interval_micros: interval,
            rate: book.rate,
        };
        Ok(RateLimitDecision {
            allowed: tokens.granted > 0,
            tat_micros: tokens.tat_micros - book.left * interval,
            retry_after_micros: tokens.retry_after_micros,
        })
    }
}

impl RateLeases {
    /// The rate-limit decisions made, and the batches they took from the store.
    pub fn stats(&self) -> LeaseStats {
        LeaseStats {
            requests: self.inner.takes.load(Ordering::Relaxed),
            store_transactions: self.inner.batches.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn book(rate: f64, last_seen: Option<(i64, i64)>) -> Book {
        Book { current: None, retired: Vec::new(), rate, last_seen }
    }

    #[test]
    fn a_grant_covers_the_target_duration_of_recent_spending_and_half_of_what_is_left() {
        let half_second = TimeDelta::milliseconds(500);
        assert_eq!(book(0.0, None).grant_size(3, half_second), 3, "no history: one request");
        assert_eq!(book(1000.0, None).grant_size(1, half_second), 500);
        assert_eq!(book(1000.0, Some((0, 10_000))).grant_size(1, half_second), 500);
        assert_eq!(book(1000.0, Some((9_900, 10_000))).grant_size(1, half_second), 50, "half of what is left");
        assert_eq!(book(1000.0, Some((9_999, 10_000))).grant_size(2, half_second), 2, "at least one request");
        assert_eq!(book(1e12, None).grant_size(1, half_second), MAX_GRANT);
    }

    use crate::store::OperationsStore;

    fn take(client: usize, now_micros: i64) -> RateLimitTake {
        RateLimitTake {
            tenant_id: Uuid::from_u128(7),
            client_id: format!("client-{client}"),
            now_micros,
            emission_interval_micros: 1_000_000,
            burst: 10,
        }
    }

    #[tokio::test]
    async fn rate_books_are_bounded_and_forgetting_an_expired_batch_changes_no_decision() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::SqliteStore::open(&dir.path().join("leases.db")).await.unwrap();
        store.migrate().await.unwrap();
        let leases = RateLeases::new(Arc::new(store), TimeDelta::milliseconds(500));
        let t0 = 1_800_000_000_000_000;
        for client in 0..MAX_RATE_BOOKS {
            assert!(leases.take(&take(client, t0)).await.unwrap().allowed);
        }
        assert_eq!(leases.inner.books.lock().unwrap().len(), MAX_RATE_BOOKS);
        // A second later every batch has expired: the next new client makes the process forget them all.
        let later = t0 + 1_000_000;
        assert!(leases.take(&take(MAX_RATE_BOOKS, later)).await.unwrap().allowed);
        assert_eq!(leases.inner.books.lock().unwrap().len(), 1);
        // A forgotten client's state is the store's: its next step continues from it (two of its burst of 10 used,
        // one interval since: nine left).
        let again = leases.take(&take(0, later)).await.unwrap();
        assert!(again.allowed);
        assert_eq!(again.tat_micros, t0 + 2_000_000, "the TAT the store kept, plus this step");
    }
}
