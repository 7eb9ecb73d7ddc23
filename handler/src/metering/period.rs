//! Billing periods: a tenant's period runs from local midnight of its anchor day, in its IANA time zone, to the
//! same day a month later. The default (anchor 1, UTC) is the UTC calendar month.

use chrono::{DateTime, Datelike, Months, NaiveDate, Offset, TimeZone, Utc};
use chrono_tz::Tz;

/// When a tenant's periods start: `anchor_day` (1 to 28, so every month has it) at local midnight in
/// `time_zone`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BillingCalendar {
    pub anchor_day: u32,
    pub time_zone: Tz,
}

impl Default for BillingCalendar {
    fn default() -> Self {
        BillingCalendar { anchor_day: 1, time_zone: Tz::UTC }
    }
}

/// One billing period: its first local day and the first local day of the next period (`start`, `end`, the
/// store's keys), and the instants they begin at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub start: NaiveDate,
    pub end: NaiveDate,
    pub starts_at: DateTime<Utc>,
    pub ends_at: DateTime<Utc>,
}

/// Why a calendar cannot be used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalendarError {
    AnchorDay,
    UnknownTimeZone,
    /// The zone's offset changes its minutes over the year (Australia/Lord_Howe): hour windows cannot follow it.
    UnalignedTimeZone,
}

impl BillingCalendar {
    /// A tenant's calendar as stored (validated when the tenant was created; a time zone that no longer parses
    /// reads as UTC).
    pub fn of(tenant: &crate::store::Tenant) -> Self {
        BillingCalendar {
            anchor_day: tenant.billing.anchor_day.clamp(1, 28) as u32,
            time_zone: tenant.billing.time_zone.parse().unwrap_or(Tz::UTC),
        }
    }

    /// A calendar from stored or requested settings; the time zone is an IANA name (`Asia/Kolkata`).
    pub fn new(anchor_day: u32, time_zone: &str) -> Result<Self, CalendarError> {
        if !(1..=28).contains(&anchor_day) {
            return Err(CalendarError::AnchorDay);
        }
        let time_zone: Tz = time_zone.parse().map_err(|_| CalendarError::UnknownTimeZone)?;
        let calendar = BillingCalendar { anchor_day, time_zone };
        calendar.window_offset_minutes().ok_or(CalendarError::UnalignedTimeZone)?;
        Ok(calendar)
    }

    /// The minutes past the UTC hour at which this zone's local hours begin (0 for most zones, 30 for
    /// Asia/Kolkata, 15 for Asia/Kathmandu: UTC+5:45, so its local midnight is 18:15 UTC), if that is the same all
    /// year in every year from 1990 to 2100; hour rollups of the tenant are aligned to it, so its local days and
    /// periods are whole hour windows.
    pub fn window_offset_minutes(&self) -> Option<i32> {
        let minutes = |t: DateTime<Utc>| {
            let offset = self.time_zone.offset_from_utc_datetime(&t.naive_utc()).fix().local_minus_utc();
            // A local hour starts where the local clock reads :00, that is `-offset` minutes past a UTC hour.
            (-offset / 60).rem_euclid(60)
        };
        let first = minutes(Utc.with_ymd_and_hms(1990, 1, 1, 0, 0, 0).single()?);
        let mut t = Utc.with_ymd_and_hms(1990, 1, 1, 0, 0, 0).single()?;
        let last = Utc.with_ymd_and_hms(2100, 1, 1, 0, 0, 0).single()?;
        while t < last {
            if minutes(t) != first {
                return None;
            }
            t += chrono::Duration::days(14);
        }
        Some(first)
    }

    /// Whether the tenant's local days are UTC days, so the day rollups (UTC days) serve its days and periods;
    /// any other tenant's are summed from its hour rollups.
    pub fn has_utc_days(&self) -> bool {
        self.time_zone == Tz::UTC
    }

    /// The instant local `date` begins: its local midnight, or, where a daylight-saving change skips midnight,
    /// the first local instant of the day.
    pub fn midnight(&self, date: NaiveDate) -> DateTime<Utc> {
        let mut local = date.and_hms_opt(0, 0, 0).expect("midnight exists");
        for _ in 0..4 {
            if let Some(t) = self.time_zone.from_local_datetime(&local).earliest() {
                return t.with_timezone(&Utc);
            }
            local += chrono::Duration::minutes(30);
        }
        Utc.from_utc_datetime(&date.and_hms_opt(0, 0, 0).expect("midnight exists"))
    }

    /// The period that starts on local `start` (a stored period key).
    pub fn period_starting(&self, start: NaiveDate) -> Period {
        let end = start + Months::new(1);
        Period { start, end, starts_at: self.midnight(start), ends_at: self.midnight(end) }
    }

    /// The period that starts in the month beginning on `month` (its anchor day): `YYYY-MM` names it.
    pub fn period_starting_in(&self, month: NaiveDate) -> Period {
        let start = NaiveDate::from_ymd_opt(month.year(), month.month(), self.anchor_day).expect("anchor days exist");
        self.period_starting(start)
    }

    /// The period containing the instant `t`.
    pub fn period_containing(&self, t: DateTime<Utc>) -> Period {
        let local = t.with_timezone(&self.time_zone).date_naive();
        let this_month = NaiveDate::from_ymd_opt(local.year(), local.month(), self.anchor_day)
            .expect("anchor days exist every month");
        let start = if local >= this_month { this_month } else { this_month - Months::new(1) };
        let period = self.period_starting(start);
        // At the very start of a period whose midnight a clock change moved, the local date can disagree by one
        // day with the instant; the instants decide.
        if t < period.starts_at {
            self.period_starting(start - Months::new(1))
        } else if t >= period.ends_at {
            self.period_starting(period.end)
        } else {
            period
        }
    }

    /// The local day containing `t`: its first instant and the next day's.
    pub fn day_containing(&self, t: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
        let date = t.with_timezone(&self.time_zone).date_naive();
        let next = date.succ_opt().expect("a next day exists");
        (self.midnight(date), self.midnight(next))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn the_default_calendar_is_utc_calendar_months() {
        let c = BillingCalendar::default();
        let p = c.period_containing(at("2026-12-31T23:59:59Z"));
        assert_eq!((p.start.to_string(), p.end.to_string()), ("2026-12-01".into(), "2027-01-01".into()));
        assert_eq!((p.starts_at, p.ends_at), (at("2026-12-01T00:00:00Z"), at("2027-01-01T00:00:00Z")));
        let p = c.period_containing(at("2028-02-29T00:00:00Z"));
        assert_eq!((p.start.to_string(), p.end.to_string()), ("2028-02-01".into(), "2028-03-01".into()));
        assert!(c.has_utc_days());
        assert_eq!(c.window_offset_minutes(), Some(0));
    }

    #[test]
    fn kolkata_with_anchor_15_starts_at_local_midnight_half_past_the_utc_hour() {
        let c = BillingCalendar::new(15, "Asia/Kolkata").unwrap();
        assert_eq!(c.window_offset_minutes(), Some(30));
        // 2026-03-14T18:30Z is local midnight of 15 March.
        let p = c.period_containing(at("2026-03-14T18:30:00Z"));
        assert_eq!((p.start.to_string(), p.end.to_string()), ("2026-03-15".into(), "2026-04-15".into()));
        assert_eq!((p.starts_at, p.ends_at), (at("2026-03-14T18:30:00Z"), at("2026-04-14T18:30:00Z")));
        let before = c.period_containing(at("2026-03-14T18:29:59Z"));
        assert_eq!(before.start.to_string(), "2026-02-15");
        assert_eq!(
            c.day_containing(at("2026-03-20T20:00:00Z")),
            (at("2026-03-20T18:30:00Z"), at("2026-03-21T18:30:00Z"))
        );
    }

    #[test]
    fn daylight_saving_moves_the_instants_not_the_local_days() {
        let c = BillingCalendar::new(1, "Europe/Paris").unwrap();
        let p = c.period_containing(at("2026-03-31T21:59:59Z"));
        assert_eq!((p.starts_at, p.ends_at), (at("2026-02-28T23:00:00Z"), at("2026-03-31T22:00:00Z")));
        assert_eq!(c.window_offset_minutes(), Some(0));
    }

    #[test]
    fn unusable_calendars_are_refused() {
        assert_eq!(BillingCalendar::new(29, "UTC"), Err(CalendarError::AnchorDay));
        assert_eq!(BillingCalendar::new(0, "UTC"), Err(CalendarError::AnchorDay));
        assert_eq!(BillingCalendar::new(1, "Mars/Olympus"), Err(CalendarError::UnknownTimeZone));
        assert_eq!(BillingCalendar::new(1, "Australia/Lord_Howe"), Err(CalendarError::UnalignedTimeZone));
        let kathmandu = BillingCalendar::new(1, "Asia/Kathmandu").unwrap();
        assert_eq!(kathmandu.window_offset_minutes(), Some(15), "local midnight is 18:15 UTC");
        assert_eq!(kathmandu.period_containing(at("2026-03-10T00:00:00Z")).starts_at, at("2026-02-28T18:15:00Z"));
        assert_eq!(BillingCalendar::new(1, "Australia/Eucla").unwrap().window_offset_minutes(), Some(15));
        assert_eq!(BillingCalendar::new(1, "America/St_Johns").unwrap().window_offset_minutes(), Some(30));
    }
}
