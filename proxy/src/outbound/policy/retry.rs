//! Retries: which failures may be tried again, on which requests, and keeping a request's body so
//! it can be sent again. The budget (a share of requests plus a minimum per second, so retries
//! never amplify an outage) is tower's `TpsBudget`.
//!
//! A request is retried only while its body is small enough to keep (≤ 64 KiB, DESIGN §5; see
//! `http::replay`), and a
//! non-idempotent request only when the failure happened before it reached the server (a refused
//! connection, here or between the peer proxy and its application), or when the service lists the
//! gRPC status it answered as retryable.

use std::time::Duration;

use http::{Method, request::Parts};

use super::config::Retry;
use crate::http::{Body, ProxyError, Request, client::Upstream, errors::STRAIT_ERROR};

/// Pause before retry n (1-based): 25 ms doubling, capped at 250 ms, with full jitter, so retries
/// of many clients spread out without adding much latency to a single request.
const BACKOFF_BASE: Duration = Duration::from_millis(25);
const BACKOFF_MAX: Duration = Duration::from_millis(250);

pub fn backoff(n: u32) -> Duration {
    let cap = BACKOFF_BASE.saturating_mul(1 << n.saturating_sub(1).min(8)).min(BACKOFF_MAX);
    cap.mul_f64(fastrand::f64())
}

/// RFC 9110 §9.2.2.
pub fn idempotent(m: &Method) -> bool {
    matches!(*m, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// Marks a response that a peer proxy sent (in its extensions): only such a response's
/// `strait-error` is the word of a proxy. A peer's inbound side removes its application's own
/// `strait-error`, and a server outside the mesh may send anything.
#[derive(Copy, Clone, Debug)]
pub struct FromPeerProxy;

/// Whether the request never reached the application: our connection to the peer failed, or the
/// peer proxy says it could not connect to its application. A `strait-error: connect-failed` from
/// anyone else (an application, a server outside the mesh) is not believed: it would make a POST
/// that did reach a server look safe to send again.
pub fn never_reached_server(result: &Result<Upstream, ProxyError>) -> bool {
    match result {
        Err(ProxyError::ConnectFailed(_)) => true,
        Ok(rsp) => {
            rsp.extensions().get::<FromPeerProxy>().is_some()
                && rsp.headers().get(STRAIT_ERROR).is_some_and(|v| v == "connect-failed")
        }
        Err(_) => false,
    }
}

/// The retry reason (a metric label) when `result` may be tried again under `policy`.
pub fn reason(policy: &Retry, result: &Result<Upstream, ProxyError>, idempotent: bool) -> Option<&'static str> {
    if never_reached_server(result) {
        return policy.on_connect_failure.then_some("connect-failure");
    }
    // gRPC calls are all POSTs: the statuses the service lists (`retry.strait.io/grpc`) are its
    // statement that those calls may be sent again.
    if let Ok(rsp) = result {
        let grpc = rsp.headers().get("grpc-status").and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
        if grpc.is_some_and(|g: u32| policy.on_grpc.contains(&g)) {
            return Some("grpc");
        }
    }
    if !idempotent {
        return None;
    }
    match result {
        Err(ProxyError::Upstream(_)) => policy.on_reset.then_some("reset"),
        Err(ProxyError::Timeout) => (policy.on_5xx || policy.on_gateway_error).then_some("timeout"),
        Err(_) => None,
        Ok(rsp) => {
            let s = rsp.status();
            if policy.on_5xx && s.is_server_error() {
                return Some("5xx");
            }
            if policy.on_gateway_error && matches!(s.as_u16(), 502..=504) {
                return Some("gateway-error");
            }
            if policy.on_status.contains(&s.as_u16()) {
                return Some("status");
            }
            None
        }
    }
}

/// A copy of the request for another attempt. Extensions are not copied: upgrades never retry.
pub fn rebuild(parts: &Parts, body: Body) -> Request {
    let mut req = http::Request::new(body);
    *req.method_mut() = parts.method.clone();
    *req.uri_mut() = parts.uri.clone();
    *req.version_mut() = parts.version;
    *req.headers_mut() = parts.headers.clone();
    req
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn conditions() {
        let p = Retry { on_5xx: true, on_connect_failure: true, limit: 2, ..Default::default() };
        let refused = Err(ProxyError::ConnectFailed(std::io::ErrorKind::ConnectionRefused.into()));
        assert_eq!(reason(&p, &refused, false), Some("connect-failure"));
        assert_eq!(reason(&p, &Err(ProxyError::Timeout), true), Some("timeout"));
        assert_eq!(reason(&p, &Err(ProxyError::Timeout), false), None);
        let p = Retry { on_reset: true, limit: 2, ..Default::default() };
        assert_eq!(reason(&p, &Err(ProxyError::Upstream("reset".into())), true), Some("reset"));
        assert_eq!(reason(&p, &Err(ProxyError::Upstream("reset".into())), false), None);
    }

    #[test]
    fn backoff_is_bounded() {
        for n in 1..20 {
            assert!(backoff(n) <= BACKOFF_MAX);
        }
        assert!(idempotent(&Method::GET) && !idempotent(&Method::POST));
    }
}
