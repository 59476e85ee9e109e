//! The one place where a failure of the proxy itself becomes an HTTP response: the status and the
//! `strait-error` header of DESIGN §9, so callers can tell the mesh's errors from their server's.

use http::{HeaderValue, StatusCode};

use super::{Body, Response};

pub const STRAIT_ERROR: &str = "strait-error";

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("request timed out")]
    Timeout,
    #[error("bulkhead full")]
    BulkheadFull,
    #[error("no endpoints")]
    NoEndpoints,
    #[error("circuit open")]
    CircuitOpen,
    #[error("connect failed: {0}")]
    ConnectFailed(std::io::Error),
    #[error("peer identity does not match")]
    IdentityMismatch,
    #[error("upstream failed: {0}")]
    Upstream(Box<dyn std::error::Error + Send + Sync>),
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    #[error("proxy is shutting down")]
    ShuttingDown,
    #[error(transparent)]
    DiscoveryUnavailable(#[from] crate::discover::Unavailable),
    /// The destination is one of this proxy's own listeners.
    #[error("request loops back to the proxy")]
    LoopDetected,
    /// The request's header list is over [`super::headers::DEFAULT_MAX_HEADER_LIST_SIZE`].
    #[error("request header list too large")]
    HeadersTooLarge,
    /// A peer named a port the workload does not serve.
    #[error("port not served by the workload")]
    PortNotAllowed,
}

impl ProxyError {
    /// The `strait-error` value; also the `error` label of `strait_proxy_errors_total`.
    pub fn kind(&self) -> &'static str {
        match self {
            ProxyError::Timeout => "timeout",
            ProxyError::BulkheadFull => "bulkhead-full",
            ProxyError::NoEndpoints => "no-endpoints",
            ProxyError::CircuitOpen => "circuit-open",
            ProxyError::ConnectFailed(_) => "connect-failed",
            ProxyError::IdentityMismatch => "identity-mismatch",
            ProxyError::Upstream(_) => "upstream-failed",
            ProxyError::BadRequest(_) => "bad-request",
            ProxyError::ShuttingDown => "shutting-down",
            ProxyError::DiscoveryUnavailable(_) => "discovery-unavailable",
            ProxyError::LoopDetected => "loop-detected",
            ProxyError::HeadersTooLarge => "headers-too-large",
            ProxyError::PortNotAllowed => "port-not-allowed",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BulkheadFull | ProxyError::NoEndpoints | ProxyError::CircuitOpen => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            ProxyError::ShuttingDown | ProxyError::DiscoveryUnavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed(_) | ProxyError::IdentityMismatch | ProxyError::Upstream(_) => {
                StatusCode::BAD_GATEWAY
            }
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::LoopDetected => StatusCode::LOOP_DETECTED,
            ProxyError::HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            ProxyError::PortNotAllowed => StatusCode::FORBIDDEN,
        }
    }

    pub fn into_response(self) -> Response {
        let mut rsp = http::Response::new(Body::from_static(self.kind()));
        *rsp.status_mut() = self.status();
        rsp.headers_mut().insert(STRAIT_ERROR, HeaderValue::from_static(self.kind()));
        rsp.headers_mut().insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        rsp
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_carries_its_header() {
        let r = ProxyError::Timeout.into_response();
        assert_eq!(r.status(), 504);
        assert_eq!(r.headers()[STRAIT_ERROR], "timeout");
        let r = ProxyError::ConnectFailed(std::io::ErrorKind::ConnectionRefused.into()).into_response();
        assert_eq!(r.status(), 502);
        assert_eq!(r.headers()[STRAIT_ERROR], "connect-failed");
        assert_eq!(ProxyError::BulkheadFull.into_response().status(), 503);
    }
}
