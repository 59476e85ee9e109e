//! The policy a service's snapshot carries, turned once into what the stages use (durations,
//! condition sets), so no stage parses anything per request.

use std::time::Duration;

use strait_proto::discovery::v1 as pb;
use tower::retry::budget::TpsBudget;

/// DESIGN §5 defaults.
pub const DEFAULT_RETRY_LIMIT: u32 = 2;
pub const DEFAULT_BUDGET_PERCENT: u32 = 20;
pub const DEFAULT_BUDGET_MIN_PER_SECOND: u32 = 10;
/// Upper bounds of what a controller may send for the retry budget. tower's `TpsBudget::new`
/// panics past 1000 retries per request and at `i32::MAX` per second; a retry limit per request
/// caps real retries long before either, so larger values are clamped, never trusted.
pub const MAX_BUDGET_PERCENT: u32 = 100_000;
pub const MAX_BUDGET_MIN_PER_SECOND: u32 = 1_000_000;
pub const DEFAULT_EJECTION_TIME: Duration = Duration::from_secs(30);
pub const DEFAULT_MAX_EJECTION_PERCENT: u32 = 50;
/// How long a retry budget remembers requests (tower's default window): long enough to smooth a
/// burst, short enough that an outage's retries are bounded by recent traffic.
pub const BUDGET_TTL: Duration = Duration::from_secs(10);
/// Bodies up to this size are kept so the request can be sent again (DESIGN §5).
pub const MAX_REPLAY_BODY: u64 = 64 * 1024;

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Policy {
    pub request_timeout: Option<Duration>,
    pub retry: Retry,
    pub circuit: Circuit,
    pub bulkhead: Bulkhead,
    pub round_robin: bool,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Retry {
    pub on_5xx: bool,
    pub on_gateway_error: bool,
    pub on_connect_failure: bool,
    pub on_reset: bool,
    pub on_status: Vec<u16>,
    pub on_grpc: Vec<u32>,
    pub limit: u32,
    pub per_try_timeout: Option<Duration>,
    pub budget_percent: u32,
    pub budget_min_per_second: u32,
}

impl Retry {
    /// The retry budget: `budget_min_per_second` retries per second always, plus
    /// `budget_percent` of the requests of the last `BUDGET_TTL`.
    pub fn budget(&self) -> TpsBudget {
        TpsBudget::new(BUDGET_TTL, self.budget_min_per_second, self.budget_percent as f32 / 100.0)
    }

    /// Whether any condition is configured (otherwise nothing is ever retried or buffered).
    pub fn enabled(&self) -> bool {
        self.limit > 0
            && (self.on_5xx
                || self.on_gateway_error
                || self.on_connect_failure
                || self.on_reset
                || !self.on_status.is_empty()
                || !self.on_grpc.is_empty())
    }
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Circuit {
    /// 0 = the breaker is off (connect failures still back off, see `breaker`).
    pub consecutive_failures: u32,
    pub ejection_time: Duration,
    pub max_ejection_percent: u32,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub struct Bulkhead {
    /// 0 = no limit.
    pub max_concurrent: u32,
    pub max_pending: u32,
}

fn ms(v: u64) -> Option<Duration> {
    (v > 0).then(|| Duration::from_millis(v))
}

impl Policy {
    pub fn from_proto(p: &pb::Policy) -> Self {
        let r = p.retry.clone().unwrap_or_default();
        let mut retry = Retry {
            limit: r.limit.unwrap_or(DEFAULT_RETRY_LIMIT),
            per_try_timeout: ms(r.per_try_timeout_ms),
            budget_percent: r.budget_percent.unwrap_or(DEFAULT_BUDGET_PERCENT).min(MAX_BUDGET_PERCENT),
            budget_min_per_second: r
                .budget_min_per_second
                .unwrap_or(DEFAULT_BUDGET_MIN_PER_SECOND)
                .min(MAX_BUDGET_MIN_PER_SECOND),
            on_grpc: r.grpc_on.clone(),
            ..Retry::default()
        };
        for c in &r.http_on {
            match c.as_str() {
                "5xx" => retry.on_5xx = true,
                "gateway-error" => retry.on_gateway_error = true,
                "connect-failure" => retry.on_connect_failure = true,
                "reset" => retry.on_reset = true,
                code => match code.parse::<u16>() {
                    Ok(n) if (100..600).contains(&n) => retry.on_status.push(n),
                    // The controller validates annotations; an unknown condition from a newer
                    // controller is ignored rather than failing the whole policy.
                    _ => tracing::debug!(condition = code, "unknown retry condition ignored"),
                },
            }
        }
        let c = p.circuit.clone().unwrap_or_default();
        let b = p.bulkhead.clone().unwrap_or_default();
        Policy {
            request_timeout: ms(p.request_timeout_ms),
            retry,
            circuit: Circuit {
                consecutive_failures: c.consecutive_failures,
                ejection_time: ms(c.ejection_time_ms).unwrap_or(DEFAULT_EJECTION_TIME),
                max_ejection_percent: c.max_ejection_percent.unwrap_or(DEFAULT_MAX_EJECTION_PERCENT).min(100),
            },
            bulkhead: Bulkhead { max_concurrent: b.max_concurrent, max_pending: b.max_pending },
            round_robin: p.balancer() == pb::policy::Balancer::RoundRobin,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_conditions() {
        let p = Policy::from_proto(&pb::Policy::default());
        assert_eq!(p.retry.limit, 2);
        assert_eq!(p.retry.budget_percent, 20);
        assert!(!p.retry.enabled());
        assert_eq!(p.circuit.max_ejection_percent, 50);
        assert_eq!(p.circuit.ejection_time, Duration::from_secs(30));

        let p = Policy::from_proto(&pb::Policy {
            request_timeout_ms: 500,
            retry: Some(pb::RetryPolicy {
                http_on: vec!["5xx".into(), "503".into(), "connect-failure".into(), "bogus".into()],
                grpc_on: vec![14],
                limit: Some(3),
                ..Default::default()
            }),
            ..Default::default()
        });
        assert_eq!(p.request_timeout, Some(Duration::from_millis(500)));
        assert!(p.retry.enabled() && p.retry.on_5xx && p.retry.on_connect_failure && !p.retry.on_reset);
        assert_eq!(p.retry.on_status, vec![503]);
        assert_eq!(p.retry.on_grpc, vec![14]);
        assert_eq!(p.retry.limit, 3);
    }

    mod props {
        use proptest::prelude::*;
        use tower::retry::budget::Budget;

        use super::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(200))]

            /// Whatever a controller sends, the budget is built (no panic) and, within one window,
            /// allows the per-second floor over the window plus at most the configured share of
            /// the requests, as tower rounds it: a retry costs a whole number of requests
            /// (`floor(100 / percent)`), so 20 % is exact and 60 % behaves as 100 %.
            #[test]
            fn the_budget_never_allows_more_than_floor_plus_share(
                percent in prop_oneof![0u32..=300, any::<u32>()],
                min in prop_oneof![0u32..=20, any::<u32>()],
                requests in 0u64..2_000,
            ) {
                let p = Policy::from_proto(&pb::Policy {
                    retry: Some(pb::RetryPolicy {
                        budget_percent: Some(percent),
                        budget_min_per_second: Some(min),
                        ..Default::default()
                    }),
                    ..Default::default()
                });
                let retry = &p.retry;
                prop_assert!(retry.budget_percent <= MAX_BUDGET_PERCENT);
                prop_assert!(retry.budget_min_per_second <= MAX_BUDGET_MIN_PER_SECOND);
                let budget = retry.budget();
                for _ in 0..requests {
                    budget.deposit();
                }
                let floor = u64::from(retry.budget_min_per_second) * BUDGET_TTL.as_secs();
                let ratio = f64::from(retry.budget_percent) / 100.0;
                let share = if ratio == 0.0 {
                    0
                } else if ratio <= 1.0 {
                    requests / (1.0 / ratio).floor() as u64
                } else {
                    requests * 1000 / (1000.0 / ratio).floor() as u64
                };
                let bound = floor + share;
                // Withdraw until refused, but never loop past the bound (+1 to see a refusal).
                let limit = bound.min(100_000) + 1;
                let mut allowed = 0u64;
                while allowed < limit && budget.withdraw() {
                    allowed += 1;
                }
                if bound < 100_000 {
                    prop_assert!(allowed <= bound, "{allowed} retries allowed, bound {bound}");
                    prop_assert!(allowed >= floor.min(bound), "floor {floor} not available: {allowed}");
                }
            }
        }
    }
}
