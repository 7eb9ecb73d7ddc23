//! `RateLimit-Policy` and `RateLimit` header fields (draft-ietf-httpapi-ratelimit-headers-10).
//!
//! Named policies: `minute` (the plan's requests per minute, for this client; `client-minute` when the client's
//! registration caps it lower), `month` (the tenant's monthly quota of billable units) and, for a client whose
//! registration caps its share, `client-month`. `q` is the quota, `w` the window in seconds, `r` what is left, `t`
//! the seconds until it is fully available again.

use actix_web::http::header::{HeaderName, HeaderValue};

/// What the limit stage learned about a request's limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LimitState {
    /// `minute`, or `client-minute` when the client's own cap is the rate that applies.
    pub rate_policy: &'static str,
    pub requests_per_minute: i64,
    pub burst: i64,
    /// Requests this client could send right now.
    pub burst_remaining: i64,
    /// Seconds until the whole burst is available again.
    pub burst_reset_secs: i64,
    pub quota_units: i64,
    pub quota_remaining: i64,
    /// Seconds until the quota period ends.
    pub period_secs: i64,
    pub period_reset_secs: i64,
    /// A capped client's share of the quota: (cap, units it used this period).
    pub client_quota: Option<(i64, i64)>,
}

/// The two header fields for `state`.
pub fn header_fields(state: &LimitState) -> [(HeaderName, HeaderValue); 2] {
    let mut policy = format!(
        "\"{}\";q={};w=60;qu=\"requests\", \"month\";q={};w={}",
        state.rate_policy, state.requests_per_minute, state.quota_units, state.period_secs
    );
    let mut current = format!(
        "\"{}\";r={};t={}, \"month\";r={};t={}",
        state.rate_policy,
        state.burst_remaining.max(0),
        state.burst_reset_secs.max(0),
        state.quota_remaining.max(0),
        state.period_reset_secs.max(0)
    );
    if let Some((cap, used)) = state.client_quota {
        policy.push_str(&format!(", \"client-month\";q={cap};w={}", state.period_secs));
        current.push_str(&format!(", \"client-month\";r={};t={}", (cap - used).max(0), state.period_reset_secs.max(0)));
    }
    [
        (HeaderName::from_static("ratelimit-policy"), HeaderValue::from_str(&policy).expect("header text")),
        (HeaderName::from_static("ratelimit"), HeaderValue::from_str(&current).expect("header text")),
    ]
}

/// Requests available at once under GCRA, and seconds until the burst is whole again.
pub fn burst_state(tat_micros: i64, now_micros: i64, emission_interval_micros: i64, burst: i64) -> (i64, i64) {
    let backlog = (tat_micros - now_micros).max(0);
    let used = (backlog + emission_interval_micros - 1) / emission_interval_micros.max(1);
    ((burst - used).clamp(0, burst), (backlog + 999_999) / 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_draft_syntax() {
        let mut state = LimitState {
            rate_policy: "minute",
            requests_per_minute: 60,
            burst: 10,
            burst_remaining: 9,
            burst_reset_secs: 1,
            quota_units: 1000,
            quota_remaining: 998,
            period_secs: 2_678_400,
            period_reset_secs: 86_400,
            client_quota: None,
        };
        let [policy, current] = header_fields(&state);
        assert_eq!(policy.1, "\"minute\";q=60;w=60;qu=\"requests\", \"month\";q=1000;w=2678400");
        assert_eq!(current.1, "\"minute\";r=9;t=1, \"month\";r=998;t=86400");
        (state.rate_policy, state.client_quota) = ("client-minute", Some((100, 40)));
        let [policy, current] = header_fields(&state);
        assert_eq!(
            policy.1,
            "\"client-minute\";q=60;w=60;qu=\"requests\", \"month\";q=1000;w=2678400, \"client-month\";q=100;w=2678400"
        );
        assert_eq!(current.1, "\"client-minute\";r=9;t=1, \"month\";r=998;t=86400, \"client-month\";r=60;t=86400");
    }

    #[test]
    fn burst_state_counts_the_gcra_backlog() {
        assert_eq!(burst_state(0, 10_000_000, 1_000_000, 5), (5, 0), "idle: the whole burst");
        assert_eq!(burst_state(12_000_000, 10_000_000, 1_000_000, 5), (3, 2));
        assert_eq!(burst_state(15_500_000, 10_000_000, 1_000_000, 5), (0, 6));
    }
}
