//! Metering on the request path: one usage record per request, rate limits, monthly quotas, RateLimit headers.
//!
//! Two middleware stages wrap every `/api/v1` route, configured in one place (`routes::configure`):
//! [`stage::record`] outside authentication, so every request (a 401 too) yields exactly one usage
//! event, written durably before the response leaves, with the request's audit event ([`audit`]) in the same
//! transaction when it changed state or was refused; and [`stage::limit`] after it, which applies the
//! caller's plan: a GCRA rate limit per (tenant, client), kept in the store so scaled-out processes share it,
//! and the tenant's monthly quota, spent from this process's quota lease ([`leases`]) whose grants the store
//! decides. A new endpoint gets authentication,
//! limits, metering and audit by having an operation id, an `Authorized<P>` permission and an entry in
//! [`costs::COSTS`]; if it changes state, it passes its [`ledger::ledger`] (usage and audit event, with an
//! [`audit::AuditNote`] of what changed) to the store write, which commits them in its transaction.

pub mod audit;
pub mod costs;
pub mod headers;
pub mod leases;
pub mod ledger;
pub mod recorder;
pub mod stage;

use chrono::{DateTime, Datelike, NaiveDate, Utc};

/// The UTC calendar month containing `now`: its first day and the first day of the next month.
pub fn period(now: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let start = NaiveDate::from_ymd_opt(now.year(), now.month(), 1).expect("the first of a month exists");
    let end = if now.month() == 12 {
        NaiveDate::from_ymd_opt(now.year() + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(now.year(), now.month() + 1, 1)
    }
    .expect("the first of a month exists");
    (start, end)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn periods_are_utc_calendar_months() {
        let (start, end) = period(Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap());
        assert_eq!((start.to_string(), end.to_string()), ("2026-12-01".into(), "2027-01-01".into()));
        let (start, end) = period(Utc.with_ymd_and_hms(2028, 2, 29, 0, 0, 0).unwrap());
        assert_eq!((start.to_string(), end.to_string()), ("2028-02-01".into(), "2028-03-01".into()));
    }
}
