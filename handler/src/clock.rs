//! Injected time and randomness, so every test can fix "now" and the ids it will see.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{DateTime, Utc};
use uuid::Uuid;

/// The source of "now" for everything that stores or compares time.
pub trait Clock: Send + Sync + 'static {
    fn now(&self) -> DateTime<Utc>;
}

/// The real wall clock, at microsecond precision: what both stores keep (DATETIME2(6), RFC 3339 micros),
/// so a time the API returns is exactly the time it stored and compares equal when a client sends it back.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> DateTime<Utc> {
        chrono::SubsecRound::trunc_subsecs(Utc::now(), 6)
    }
}

/// A clock that only moves when told to.
#[derive(Debug)]
pub struct ManualClock(Mutex<DateTime<Utc>>);

impl ManualClock {
    pub fn new(start: DateTime<Utc>) -> Self {
        Self(Mutex::new(start))
    }

    pub fn set(&self, now: DateTime<Utc>) {
        *self.0.lock().expect("clock lock") = now;
    }

    pub fn advance(&self, by: chrono::Duration) {
        let mut now = self.0.lock().expect("clock lock");
        *now += by;
    }
}

impl Clock for ManualClock {
    fn now(&self) -> DateTime<Utc> {
        *self.0.lock().expect("clock lock")
    }
}

/// The source of new unique ids (request ids, event ids, row ids).
pub trait IdGenerator: Send + Sync + 'static {
    fn new_id(&self) -> Uuid;
}

/// Version-7 UUIDs (RFC 9562): a millisecond timestamp, a counter, then random bits (74 of them, from the OS),
/// increasing within the process. Rows inserted one after another get neighbouring keys, so an id index
/// appends to its last page instead of writing a random one (on SQLite, more creates per second than version 4:
/// BENCHMARKS.md). An id shows when it was made, as the rows' own timestamps do. The one secret made of ids,
/// the fallback cursor-signing key (`AppState::new`), takes two: 148 random bits.
#[derive(Debug, Default, Clone, Copy)]
pub struct TimeOrderedIds;

impl IdGenerator for TimeOrderedIds {
    fn new_id(&self) -> Uuid {
        Uuid::now_v7()
    }
}

/// Predictable ids `00000000-0000-0000-0000-000000000001`, `...0002`, … for tests.
#[derive(Debug, Default)]
pub struct SequentialIds(AtomicU64);

impl IdGenerator for SequentialIds {
    fn new_id(&self) -> Uuid {
        Uuid::from_u128(u128::from(self.0.fetch_add(1, Ordering::Relaxed) + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let start = DateTime::parse_from_rfc3339("2026-01-31T23:59:59Z").unwrap().with_timezone(&Utc);
        let clock = ManualClock::new(start);
        assert_eq!(clock.now(), start);
        clock.advance(chrono::Duration::seconds(1));
        assert_eq!(clock.now().to_rfc3339(), "2026-02-01T00:00:00+00:00");
    }

    #[test]
    fn the_system_clock_has_microsecond_precision() {
        let now = SystemClock.now();
        assert_eq!(now.timestamp_subsec_nanos() % 1000, 0);
    }

    #[test]
    fn sequential_ids_count_from_one() {
        let ids = SequentialIds::default();
        assert_eq!(ids.new_id().to_string(), "00000000-0000-0000-0000-000000000001");
        assert_eq!(ids.new_id().to_string(), "00000000-0000-0000-0000-000000000002");
    }

    #[test]
    fn time_ordered_ids_are_version_7_increasing_and_distinct_across_threads() {
        // Many ids fall in one millisecond: the counter, not the clock, orders those.
        let ids: Vec<Uuid> = (0..4)
            .map(|_| std::thread::spawn(|| (0..2_000).map(|_| TimeOrderedIds.new_id()).collect::<Vec<_>>()))
            .flat_map(|thread| thread.join().unwrap())
            .collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        // Each thread's ids increase; all of them are distinct.
        assert!(ids.chunks(2_000).all(|own| own.windows(2).all(|w| w[0] < w[1])));
        assert_eq!(ids.iter().collect::<std::collections::HashSet<_>>().len(), ids.len());
    }
}
