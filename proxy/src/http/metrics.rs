//! Records each request's golden metrics when its response headers are ready.

use std::time::Duration;

use http::StatusCode;

use crate::metrics::Metrics;

/// What a request's metrics say about where it went; borrowed from the cached target, so
/// recording allocates nothing.
pub struct Labels<'a> {
    pub direction: &'a str,
    pub authority: &'a str,
    pub dst_service: &'a str,
    pub dst_namespace: &'a str,
    pub tls: &'a str,
    pub peer_id: &'a str,
}

pub enum Outcome<'a> {
    Response { status: StatusCode, grpc_status: Option<&'a str> },
    ProxyError { status: StatusCode, kind: &'static str },
}

pub fn record(m: &Metrics, l: &Labels<'_>, outcome: &Outcome<'_>, elapsed: Duration) {
    let (status, grpc, outcome_label) = match outcome {
        Outcome::Response { status, grpc_status } => {
            let failed = status.is_server_error() || grpc_status.is_some_and(|g| g != "0");
            (*status, grpc_status.unwrap_or(""), if failed { "failure" } else { "success" })
        }
        Outcome::ProxyError { status, kind } => {
            m.proxy_errors.with_label_values(&[l.direction, l.dst_service, kind]).inc();
            (*status, "", "error")
        }
    };
    m.requests
        .with_label_values(&[
            l.direction,
            l.authority,
            l.dst_service,
            l.dst_namespace,
            status.as_str(),
            grpc,
            outcome_label,
            l.tls,
            l.peer_id,
        ])
        .inc();
    m.request_duration
        .with_label_values(&[l.direction, l.authority, l.dst_service, l.dst_namespace, outcome_label, l.tls, l.peer_id])
        .observe(elapsed.as_secs_f64());
}
