//! Standalone `serve` runs the timer functions' jobs in-process, on the schedules of their `function.json`.
//!
//! Under the Functions host the host's timers call `POST /{FunctionName}` instead, so this runs only standalone
//! (and only with `METERLINE_STANDALONE_TIMERS=true`). Schedules are NCRONTAB expressions with seconds
//! (`{second} {minute} {hour} {day} {month} {day-of-week}`), evaluated in UTC; [`Schedule`] understands `*`,
//! numbers, ranges `a-b`, steps `*/n` and `a-b/n`, and lists `a,b`, which is what the functions use.

use std::sync::Arc;

use chrono::{DateTime, Datelike, DurationRound, TimeDelta, Timelike, Utc};

use crate::jobs::{self, Job, JobTrigger};
use crate::state::AppState;

/// A parsed six-field NCRONTAB expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    /// Allowed values per field: second, minute, hour, day of month, month, day of week (0 = Sunday).
    fields: [Vec<bool>; 6],
}

const RANGES: [(u32, u32); 6] = [(0, 59), (0, 59), (0, 23), (1, 31), (1, 12), (0, 6)];

impl Schedule {
    pub fn parse(expression: &str) -> Result<Self, String> {
        let parts: Vec<&str> = expression.split_whitespace().collect();
        if parts.len() != 6 {
            return Err(format!("expected six fields (with seconds), got {expression:?}"));
        }
        let mut fields: [Vec<bool>; 6] = Default::default();
        for (i, part) in parts.iter().enumerate() {
            let (lo, hi) = RANGES[i];
            let mut allowed = vec![false; hi as usize + 1];
            for item in part.split(',') {
                let (range, step) = match item.split_once('/') {
                    Some((range, step)) => (range, step.parse::<u32>().map_err(|_| format!("bad step in {item:?}"))?),
                    None => (item, 1),
                };
                let (from, to) = match range {
                    "*" => (lo, hi),
                    _ => match range.split_once('-') {
                        Some((a, b)) => (number(a)?, number(b)?),
                        None if step > 1 => (number(range)?, hi),
                        None => (number(range)?, number(range)?),
                    },
                };
                if from < lo || to > hi || from > to || step == 0 {
                    return Err(format!("{item:?} is outside {lo}-{hi}"));
                }
                for v in (from..=to).step_by(step as usize) {
                    allowed[v as usize] = true;
                }
            }
            fields[i] = allowed;
        }
        Ok(Schedule { fields })
    }

    fn matches(&self, t: DateTime<Utc>) -> bool {
        let values = [t.second(), t.minute(), t.hour(), t.day(), t.month(), t.weekday().num_days_from_sunday()];
        values.iter().zip(&self.fields).all(|(v, allowed)| allowed.get(*v as usize).copied().unwrap_or(false))
    }

    /// The first whole second strictly after `after` that the schedule names (within about a year).
    pub fn next_after(&self, after: DateTime<Utc>) -> Option<DateTime<Utc>> {
        let mut t = after.duration_trunc(TimeDelta::seconds(1)).ok()? + TimeDelta::seconds(1);
        let limit = after + TimeDelta::days(400);
        while t < limit {
            if self.matches(t) {
                return Some(t);
            }
            // Skip a whole minute when nothing in it can match.
            let minute_ok = self.fields[1][t.minute() as usize]
                && self.fields[2][t.hour() as usize]
                && self.fields[3][t.day() as usize]
                && self.fields[4][t.month() as usize]
                && self.fields[5][t.weekday().num_days_from_sunday() as usize];
            t = if minute_ok {
                t + TimeDelta::seconds(1)
            } else {
                t.duration_trunc(TimeDelta::minutes(1)).ok()? + TimeDelta::minutes(1)
            };
        }
        None
    }
}

fn number(raw: &str) -> Result<u32, String> {
    raw.parse().map_err(|_| format!("{raw:?} is not a number"))
}

/// Spawns one task per timer (an NCRONTAB schedule and its job: the timer functions' own, `functions::timers`)
/// that runs its job at each scheduled time, for the life of the process.
pub fn start(state: Arc<AppState>, timers: impl IntoIterator<Item = (&'static str, Job)>) {
    for (schedule, job) in timers {
        let schedule = Schedule::parse(schedule).expect("the registry's schedules parse (a unit test checks)");
        let state = state.clone();
        actix_web::rt::spawn(async move {
            loop {
                let now = state.clock.now();
                let Some(next) = schedule.next_after(now) else { return };
                tokio::time::sleep((next - now).to_std().unwrap_or_default()).await;
                if let Err(err) = jobs::run(&state, job, JobTrigger::Schedule).await {
                    tracing::error!(job = job.name(), error = ?err, "scheduled job failed; it runs again at its next time");
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 1, h, m, s).unwrap()
    }

    #[test]
    fn next_times_follow_the_expression() {
        let five = Schedule::parse("0 */5 * * * *").unwrap();
        assert_eq!(five.next_after(at(10, 3, 12)), Some(at(10, 5, 0)));
        assert_eq!(five.next_after(at(10, 5, 0)), Some(at(10, 10, 0)), "strictly after");
        let half = Schedule::parse("*/30 * * * * *").unwrap();
        assert_eq!(half.next_after(at(10, 3, 12)), Some(at(10, 3, 30)));
        let listed = Schedule::parse("15 0 2,14 * * 1-5").unwrap();
        // 2026-03-01 is a Sunday: the next weekday is Monday the 2nd.
        assert_eq!(listed.next_after(at(10, 0, 0)), Some(Utc.with_ymd_and_hms(2026, 3, 2, 2, 0, 15).unwrap()));
        for bad in ["* * * * *", "61 * * * * *", "*/0 * * * * *", "a * * * * *"] {
            assert!(Schedule::parse(bad).is_err(), "{bad}");
        }
    }
}
