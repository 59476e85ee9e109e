//! Resilience policy from a Service's annotations (DESIGN §5).
//!
//! [`from_annotations`] is pure: it returns the policy and every problem it found. A bad value
//! leaves only its own field at the default; the service is still served.

use std::collections::BTreeMap;

use crate::discovery::v1 as pb;

pub const REQUEST_TIMEOUT: &str = "timeout.strait.io/request";
pub const RETRY_HTTP: &str = "retry.strait.io/http";
pub const RETRY_GRPC: &str = "retry.strait.io/grpc";
pub const RETRY_LIMIT: &str = "retry.strait.io/limit";
pub const RETRY_TIMEOUT: &str = "retry.strait.io/timeout";
pub const RETRY_BUDGET: &str = "retry.strait.io/budget";
pub const CIRCUIT_CONSECUTIVE_FAILURES: &str = "circuit.strait.io/consecutive-failures";
pub const CIRCUIT_EJECTION_TIME: &str = "circuit.strait.io/ejection-time";
pub const CIRCUIT_MAX_EJECTION: &str = "circuit.strait.io/max-ejection";
pub const BULKHEAD_MAX_CONCURRENT: &str = "bulkhead.strait.io/max-concurrent";
pub const BULKHEAD_MAX_PENDING: &str = "bulkhead.strait.io/max-pending";
pub const BALANCER_ALGORITHM: &str = "balancer.strait.io/algorithm";

/// Every policy annotation this controller reads.
pub const ANNOTATIONS: [&str; 12] = [
    REQUEST_TIMEOUT,
    RETRY_HTTP,
    RETRY_GRPC,
    RETRY_LIMIT,
    RETRY_TIMEOUT,
    RETRY_BUDGET,
    CIRCUIT_CONSECUTIVE_FAILURES,
    CIRCUIT_EJECTION_TIME,
    CIRCUIT_MAX_EJECTION,
    BULKHEAD_MAX_CONCURRENT,
    BULKHEAD_MAX_PENDING,
    BALANCER_ALGORITHM,
];

/// Annotation domains that carry service policy; an unknown key in one of them is a typo to report.
const POLICY_DOMAINS: [&str; 5] =
    ["timeout.strait.io/", "retry.strait.io/", "circuit.strait.io/", "bulkhead.strait.io/", "balancer.strait.io/"];

/// Metric label for an annotation key in a policy domain that this controller does not know.
pub const UNKNOWN_ANNOTATION_LABEL: &str = "unknown";

/// gRPC status names as written in `retry.strait.io/grpc`, with their codes. `ok` is not here: a
/// success is never retried.
const GRPC_STATUSES: [(&str, u32); 16] = [
    ("cancelled", 1),
    ("unknown", 2),
    ("invalid-argument", 3),
    ("deadline-exceeded", 4),
    ("not-found", 5),
    ("already-exists", 6),
    ("permission-denied", 7),
    ("resource-exhausted", 8),
    ("failed-precondition", 9),
    ("aborted", 10),
    ("out-of-range", 11),
    ("unimplemented", 12),
    ("internal", 13),
    ("unavailable", 14),
    ("data-loss", 15),
    ("unauthenticated", 16),
];

const HTTP_CONDITIONS: [&str; 4] = ["5xx", "gateway-error", "connect-failure", "reset"];

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AnnotationError {
    #[error("{annotation}: {value:?} is not a duration such as 500ms, 2s, 1m or 1h (greater than zero)")]
    Duration { annotation: &'static str, value: String },
    #[error("{annotation}: {value:?} is not a whole number from {min} to {max}")]
    Number { annotation: &'static str, value: String, min: u32, max: u32 },
    #[error("{annotation}: {value:?} is not a percentage from 0% to 100% such as 20%")]
    Percent { annotation: &'static str, value: String },
    #[error(
        "{annotation}: {item:?} is not a retry condition (5xx, gateway-error, connect-failure, reset, or a status from 400 to 599)"
    )]
    RetryCondition { annotation: &'static str, item: String },
    #[error("{annotation}: {item:?} is not a gRPC status such as unavailable, deadline-exceeded or 14")]
    GrpcStatus { annotation: &'static str, item: String },
    #[error("{annotation}: {value:?} is not a budget such as 20% or 20%,10/s")]
    Budget { annotation: &'static str, value: String },
    #[error("{annotation}: {value:?} is not a balancer algorithm (peak-ewma, round-robin)")]
    Algorithm { annotation: &'static str, value: String },
    #[error("{annotation} is not a Strait policy annotation (known: {known})", known = ANNOTATIONS.join(", "))]
    Unknown { annotation: String },
}

impl AnnotationError {
    /// The annotation key, bounded for use as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Duration { annotation, .. }
            | Self::Number { annotation, .. }
            | Self::Percent { annotation, .. }
            | Self::RetryCondition { annotation, .. }
            | Self::GrpcStatus { annotation, .. }
            | Self::Budget { annotation, .. }
            | Self::Algorithm { annotation, .. } => annotation,
            Self::Unknown { .. } => UNKNOWN_ANNOTATION_LABEL,
        }
    }
}

/// Reads every policy annotation. Absent or empty annotations leave their field unset; a bad one
/// leaves its field unset and is reported.
pub fn from_annotations(annotations: &BTreeMap<String, String>) -> (pb::Policy, Vec<AnnotationError>) {
    let mut errors = Vec::new();
    let mut r = Reader { annotations, errors: &mut errors };

    let request_timeout_ms = r.read(REQUEST_TIMEOUT, duration_ms).unwrap_or(0);
    let retry = pb::RetryPolicy {
        http_on: r.read(RETRY_HTTP, http_conditions).unwrap_or_default(),
        grpc_on: r.read(RETRY_GRPC, grpc_codes).unwrap_or_default(),
        limit: r.read(RETRY_LIMIT, |k, v| number(k, v, 0, 100)),
        per_try_timeout_ms: r.read(RETRY_TIMEOUT, duration_ms).unwrap_or(0),
        ..Default::default()
    };
    let (budget_percent, budget_min_per_second) = match r.read(RETRY_BUDGET, budget) {
        Some((share, min)) => (Some(share), min),
        None => (None, None),
    };
    let retry = pb::RetryPolicy { budget_percent, budget_min_per_second, ..retry };
    let circuit = pb::CircuitBreaker {
        consecutive_failures: r.read(CIRCUIT_CONSECUTIVE_FAILURES, |k, v| number(k, v, 1, 1_000_000)).unwrap_or(0),
        ejection_time_ms: r.read(CIRCUIT_EJECTION_TIME, duration_ms).unwrap_or(0),
        max_ejection_percent: r.read(CIRCUIT_MAX_EJECTION, percent),
    };
    let bulkhead = pb::Bulkhead {
        max_concurrent: r.read(BULKHEAD_MAX_CONCURRENT, |k, v| number(k, v, 1, 1_000_000)).unwrap_or(0),
        max_pending: r.read(BULKHEAD_MAX_PENDING, |k, v| number(k, v, 0, 1_000_000)).unwrap_or(0),
    };
    let balancer = r.read(BALANCER_ALGORITHM, algorithm).unwrap_or(pb::policy::Balancer::PeakEwma);

    for key in annotations.keys() {
        if POLICY_DOMAINS.iter().any(|d| key.starts_with(d)) && !ANNOTATIONS.contains(&key.as_str()) {
            errors.push(AnnotationError::Unknown { annotation: key.clone() });
        }
    }
    let policy = pb::Policy {
        request_timeout_ms,
        retry: (retry != pb::RetryPolicy::default()).then_some(retry),
        circuit: (circuit != pb::CircuitBreaker::default()).then_some(circuit),
        bulkhead: (bulkhead != pb::Bulkhead::default()).then_some(bulkhead),
        balancer: balancer as i32,
    };
    (policy, errors)
}

/// Reads annotations one at a time, collecting what is wrong with them.
struct Reader<'a> {
    annotations: &'a BTreeMap<String, String>,
    errors: &'a mut Vec<AnnotationError>,
}

impl Reader<'_> {
    /// The parsed value of `key`; `None` when it is absent, empty or bad (then the error is kept).
    fn read<T>(&mut self, key: &'static str, parse: impl Fn(&'static str, &str) -> Result<T, AnnotationError>) -> Option<T> {
        let value = self.annotations.get(key).map(|v| v.trim()).filter(|v| !v.is_empty())?;
        parse(key, value).map_err(|e| self.errors.push(e)).ok()
    }
}

/// `500ms`, `2s`, `1m`, `1h` → milliseconds. Zero and bare numbers are refused (a unit is required,
/// and a zero deadline would mean "not set" on the wire).
pub fn parse_duration_ms(value: &str) -> Option<u64> {
    let digits_end = value.find(|c: char| !c.is_ascii_digit()).unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let n: u64 = number.parse().ok()?;
    let scale = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        _ => return None,
    };
    n.checked_mul(scale).filter(|&ms| ms > 0)
}

fn duration_ms(annotation: &'static str, value: &str) -> Result<u64, AnnotationError> {
    parse_duration_ms(value).ok_or_else(|| AnnotationError::Duration { annotation, value: value.into() })
}

fn number(annotation: &'static str, value: &str, min: u32, max: u32) -> Result<u32, AnnotationError> {
    value
        .parse::<u32>()
        .ok()
        .filter(|n| (min..=max).contains(n) && value.bytes().all(|b| b.is_ascii_digit()))
        .ok_or_else(|| AnnotationError::Number { annotation, value: value.into(), min, max })
}

/// `20%` → 20.
fn parse_percent(value: &str) -> Option<u32> {
    let n = value.trim().strip_suffix('%')?.trim();
    n.bytes().all(|b| b.is_ascii_digit()).then(|| n.parse::<u32>().ok()).flatten().filter(|&p| p <= 100)
}

fn percent(annotation: &'static str, value: &str) -> Result<u32, AnnotationError> {
    parse_percent(value).ok_or_else(|| AnnotationError::Percent { annotation, value: value.into() })
}

/// `20%` or `20%,10/s` (the share, then the retries always allowed per second).
fn budget(annotation: &'static str, value: &str) -> Result<(u32, Option<u32>), AnnotationError> {
    let bad = || AnnotationError::Budget { annotation, value: value.into() };
    let (share, min) = match value.split_once(',') {
        Some((share, min)) => {
            let rate = min.trim().strip_suffix("/s").ok_or_else(bad)?;
            (share, Some(number(annotation, rate, 0, 1_000_000).map_err(|_| bad())?))
        }
        None => (value, None),
    };
    Ok((parse_percent(share).ok_or_else(bad)?, min))
}

fn list(value: &str) -> impl Iterator<Item = String> + '_ {
    value.split(',').map(|i| i.trim().to_ascii_lowercase()).filter(|i| !i.is_empty())
}

fn http_conditions(annotation: &'static str, value: &str) -> Result<Vec<String>, AnnotationError> {
    let mut out = Vec::new();
    for item in list(value) {
        let is_status = item.len() == 3 && item.parse::<u16>().is_ok_and(|c| (400..=599).contains(&c));
        if !is_status && !HTTP_CONDITIONS.contains(&item.as_str()) {
            return Err(AnnotationError::RetryCondition { annotation, item });
        }
        if !out.contains(&item) {
            out.push(item);
        }
    }
    Ok(out)
}

/// A gRPC status name (`deadline-exceeded`, `DEADLINE_EXCEEDED`) or code (`4`) → its code.
pub fn grpc_status_code(item: &str) -> Option<u32> {
    let name = item.trim().to_ascii_lowercase().replace('_', "-");
    if let Ok(code) = name.parse::<u32>() {
        return (1..=16).contains(&code).then_some(code);
    }
    GRPC_STATUSES.iter().find(|(n, _)| *n == name).map(|(_, c)| *c)
}

fn grpc_codes(annotation: &'static str, value: &str) -> Result<Vec<u32>, AnnotationError> {
    let mut out = Vec::new();
    for item in list(value) {
        let code = grpc_status_code(&item).ok_or(AnnotationError::GrpcStatus { annotation, item })?;
        if !out.contains(&code) {
            out.push(code);
        }
    }
    Ok(out)
}

fn algorithm(annotation: &'static str, value: &str) -> Result<pb::policy::Balancer, AnnotationError> {
    match value.to_ascii_lowercase().as_str() {
        "peak-ewma" => Ok(pb::policy::Balancer::PeakEwma),
        "round-robin" => Ok(pb::policy::Balancer::RoundRobin),
        _ => Err(AnnotationError::Algorithm { annotation, value: value.into() }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(pairs: &[(&str, &str)]) -> (pb::Policy, Vec<AnnotationError>) {
        from_annotations(&pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect())
    }

    /// Asserts that one annotation is refused: one error, for that annotation, and a default policy.
    fn refused(key: &'static str, value: &str) {
        let (p, errors) = policy(&[(key, value)]);
        assert_eq!(p, pb::Policy::default(), "{key}={value:?}");
        assert_eq!(errors.len(), 1, "{key}={value:?}: {errors:?}");
        assert_eq!(errors[0].label(), key);
    }

    #[test]
    fn no_annotations_no_policy() {
        assert_eq!(policy(&[]), (pb::Policy::default(), vec![]));
        assert_eq!(policy(&[(REQUEST_TIMEOUT, "  "), ("app", "x")]), (pb::Policy::default(), vec![]));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("500ms"), Some(500));
        assert_eq!(parse_duration_ms("2s"), Some(2_000));
        assert_eq!(parse_duration_ms("1m"), Some(60_000));
        assert_eq!(parse_duration_ms("1h"), Some(3_600_000));
        for bad in ["", "5", "0s", "1.5s", "-1s", "s", "2 s", "2sec", "99999999999999999999h"] {
            assert_eq!(parse_duration_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn request_timeout() {
        assert_eq!(policy(&[(REQUEST_TIMEOUT, "2s")]).0.request_timeout_ms, 2_000);
        refused(REQUEST_TIMEOUT, "2 seconds");
    }

    #[test]
    fn retry_http() {
        let (p, e) = policy(&[(RETRY_HTTP, "5xx, Gateway-Error,connect-failure,reset,503,429,5xx")]);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(p.retry.unwrap().http_on, ["5xx", "gateway-error", "connect-failure", "reset", "503", "429"]);
        refused(RETRY_HTTP, "5xx,timeout");
        refused(RETRY_HTTP, "200");
        refused(RETRY_HTTP, "5000");
    }

    #[test]
    fn retry_grpc() {
        let (p, e) = policy(&[(
            RETRY_GRPC,
            "unavailable,deadline-exceeded,RESOURCE_EXHAUSTED,internal,cancelled,unknown,10",
        )]);
        assert!(e.is_empty(), "{e:?}");
        assert_eq!(p.retry.unwrap().grpc_on, [14, 4, 8, 13, 1, 2, 10]);
        refused(RETRY_GRPC, "unavailable,nope");
        refused(RETRY_GRPC, "ok");
        refused(RETRY_GRPC, "17");
    }

    #[test]
    fn grpc_status_names() {
        for (name, code) in GRPC_STATUSES {
            assert_eq!(grpc_status_code(name), Some(code));
        }
        assert_eq!(grpc_status_code("0"), None);
    }

    #[test]
    fn retry_limit_and_timeout() {
        let retry = policy(&[(RETRY_LIMIT, "3"), (RETRY_TIMEOUT, "300ms")]).0.retry.unwrap();
        assert_eq!((retry.limit, retry.per_try_timeout_ms), (Some(3), 300));
        assert_eq!(policy(&[(RETRY_LIMIT, "0")]).0.retry.unwrap().limit, Some(0));
        refused(RETRY_LIMIT, "-1");
        refused(RETRY_LIMIT, "three");
        refused(RETRY_LIMIT, "101");
        refused(RETRY_TIMEOUT, "300");
    }

    #[test]
    fn retry_budget() {
        let retry = policy(&[(RETRY_BUDGET, "20%")]).0.retry.unwrap();
        assert_eq!((retry.budget_percent, retry.budget_min_per_second), (Some(20), None));
        let retry = policy(&[(RETRY_BUDGET, "5%, 3/s")]).0.retry.unwrap();
        assert_eq!((retry.budget_percent, retry.budget_min_per_second), (Some(5), Some(3)));
        refused(RETRY_BUDGET, "20");
        refused(RETRY_BUDGET, "120%");
        refused(RETRY_BUDGET, "20%,10");
        refused(RETRY_BUDGET, "0.2");
    }

    #[test]
    fn circuit_breaker() {
        let c = policy(&[
            (CIRCUIT_CONSECUTIVE_FAILURES, "5"),
            (CIRCUIT_EJECTION_TIME, "30s"),
            (CIRCUIT_MAX_EJECTION, "50%"),
        ])
        .0
        .circuit
        .unwrap();
        assert_eq!((c.consecutive_failures, c.ejection_time_ms, c.max_ejection_percent), (5, 30_000, Some(50)));
        refused(CIRCUIT_CONSECUTIVE_FAILURES, "0");
        refused(CIRCUIT_CONSECUTIVE_FAILURES, "many");
        refused(CIRCUIT_EJECTION_TIME, "forever");
        refused(CIRCUIT_MAX_EJECTION, "50");
        refused(CIRCUIT_MAX_EJECTION, "101%");
    }

    #[test]
    fn bulkhead() {
        let b = policy(&[(BULKHEAD_MAX_CONCURRENT, "100"), (BULKHEAD_MAX_PENDING, "10")]).0.bulkhead.unwrap();
        assert_eq!((b.max_concurrent, b.max_pending), (100, 10));
        refused(BULKHEAD_MAX_CONCURRENT, "0");
        refused(BULKHEAD_MAX_CONCURRENT, "1e3");
        refused(BULKHEAD_MAX_PENDING, "-5");
    }

    #[test]
    fn balancer() {
        assert_eq!(policy(&[(BALANCER_ALGORITHM, "round-robin")]).0.balancer, pb::policy::Balancer::RoundRobin as i32);
        assert_eq!(policy(&[(BALANCER_ALGORITHM, "peak-ewma")]).0.balancer, pb::policy::Balancer::PeakEwma as i32);
        refused(BALANCER_ALGORITHM, "random");
    }

    #[test]
    fn a_bad_annotation_leaves_the_others_alone() {
        let (p, e) = policy(&[(REQUEST_TIMEOUT, "soon"), (RETRY_LIMIT, "4"), (BULKHEAD_MAX_CONCURRENT, "8")]);
        assert_eq!(e.len(), 1);
        assert_eq!(p.request_timeout_ms, 0);
        assert_eq!(p.retry.unwrap().limit, Some(4));
        assert_eq!(p.bulkhead.unwrap().max_concurrent, 8);
    }

    #[test]
    fn unknown_policy_annotations_are_reported() {
        let (p, e) = policy(&[("retry.strait.io/limt", "3"), ("config.strait.io/opaque-ports", "3306")]);
        assert_eq!(p, pb::Policy::default());
        assert_eq!(e, [AnnotationError::Unknown { annotation: "retry.strait.io/limt".into() }]);
        assert_eq!(e[0].label(), UNKNOWN_ANNOTATION_LABEL);
    }
}
