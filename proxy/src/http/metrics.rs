//! Records each request's golden metrics when its response headers are ready, or, for a gRPC
//! response whose status comes in trailers after the messages, when those trailers pass
//! ([`Deferred`]); latency is always the time to the response headers.

use std::{sync::Arc, time::Duration};

use http::{HeaderMap, StatusCode};

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
    pub src_workload: &'a str,
    pub src_namespace: &'a str,
    pub dst_workload: &'a str,
    pub route: &'a str,
}

pub enum Outcome<'a> {
    /// `broken`: the response body failed part way (its outcome is a failure whatever its status).
    Response { status: StatusCode, grpc_status: Option<&'a str>, broken: bool },
    ProxyError { status: StatusCode, kind: &'static str },
}

pub fn record(m: &Metrics, l: &Labels<'_>, outcome: &Outcome<'_>, elapsed: Duration) {
    let (status, grpc, outcome_label) = match outcome {
        Outcome::Response { status, grpc_status, broken } => {
            let failed = *broken || status.is_server_error() || grpc_status.is_some_and(|g| g != "0");
            // The label takes gRPC's 17 codes; anything else an upstream sends is `other`, so a
            // broken server cannot grow the metric without bound.
            let grpc = match grpc_status {
                Some(g) if g.parse::<u8>().is_ok_and(|c| c <= 16) && !g.starts_with('+') => g,
                Some(_) => "other",
                None => "",
            };
            (*status, grpc, if failed { "failure" } else { "success" })
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
            l.src_workload,
            l.src_namespace,
            l.dst_workload,
            l.route,
        ])
        .inc();
    m.request_duration
        .with_label_values(&[
            l.direction,
            l.authority,
            l.dst_service,
            l.dst_namespace,
            outcome_label,
            l.tls,
            l.peer_id,
            l.src_workload,
            l.src_namespace,
            l.dst_workload,
            l.route,
        ])
        .observe(elapsed.as_secs_f64());
}

/// Whether a response's outcome is known only at its end: gRPC (by content type) without
/// `grpc-status` in its headers, so the status comes in trailers.
/// gRPC-Web carries its status inside the body, not in HTTP trailers: not deferred.
pub fn status_in_trailers(headers: &HeaderMap) -> bool {
    let grpc = headers.get(http::header::CONTENT_TYPE).is_some_and(|v| {
        let v = v.as_bytes();
        v.starts_with(b"application/grpc") && !v.starts_with(b"application/grpc-web")
    });
    grpc && !headers.contains_key("grpc-status")
}

/// [`Labels`], owned, for a response recorded at its end.
pub struct OwnedLabels {
    pub direction: &'static str,
    /// `None`: [`crate::metrics::UNKNOWN`].
    pub authority: Option<Arc<str>>,
    pub dst_service: Option<Arc<str>>,
    pub dst_namespace: Option<Arc<str>>,
    pub tls: &'static str,
    pub peer_id: Option<Arc<str>>,
    pub src_workload: Option<Arc<str>>,
    pub src_namespace: Option<Arc<str>>,
    pub dst_workload: Option<Arc<str>>,
    pub route: Option<Arc<str>>,
}

/// A response's metrics, waiting for its trailers. Recorded once: by [`Deferred::finish`] when the
/// body ends (without a status, the call counts as failed), or on drop when the body was abandoned
/// (the client went away) — then without a gRPC status, classified by the HTTP status alone.
pub struct Deferred(Option<Box<Waiting>>);

struct Waiting {
    metrics: Metrics,
    labels: OwnedLabels,
    status: StatusCode,
    elapsed: Duration,
}

impl Deferred {
    pub fn new(metrics: &Metrics, labels: OwnedLabels, status: StatusCode, elapsed: Duration) -> Self {
        Self(Some(Box::new(Waiting { metrics: metrics.clone(), labels, status, elapsed })))
    }

    /// Records with the trailers' `grpc-status` (`None`: the stream ended without one). A body that
    /// failed mid-stream counts as a failure whatever its status.
    pub fn finish(&mut self, grpc_status: Option<&str>, body_failed: bool) {
        let Some(w) = self.0.take() else { return };
        let l = &w.labels;
        let labels = Labels {
            direction: l.direction,
            authority: l.authority.as_deref().unwrap_or(crate::metrics::UNKNOWN),
            dst_service: l.dst_service.as_deref().unwrap_or(""),
            dst_namespace: l.dst_namespace.as_deref().unwrap_or(""),
            tls: l.tls,
            peer_id: l.peer_id.as_deref().unwrap_or(""),
            src_workload: l.src_workload.as_deref().unwrap_or(""),
            src_namespace: l.src_namespace.as_deref().unwrap_or(""),
            dst_workload: l.dst_workload.as_deref().unwrap_or(""),
            route: l.route.as_deref().unwrap_or(""),
        };
        let outcome = Outcome::Response { status: w.status, grpc_status, broken: body_failed };
        record(&w.metrics, &labels, &outcome, w.elapsed);
    }
}

impl Drop for Deferred {
    fn drop(&mut self) {
        self.finish(None, false);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        pairs.iter().map(|(k, v)| (http::header::HeaderName::from_static(k), http::HeaderValue::from_static(v))).collect()
    }

    #[test]
    fn only_grpc_without_a_status_in_its_headers_waits_for_trailers() {
        assert!(status_in_trailers(&headers(&[("content-type", "application/grpc")])));
        assert!(status_in_trailers(&headers(&[("content-type", "application/grpc+proto")])));
        assert!(!status_in_trailers(&headers(&[("content-type", "application/grpc"), ("grpc-status", "14")])));
        assert!(!status_in_trailers(&headers(&[("content-type", "application/grpc-web+proto")])));
        assert!(!status_in_trailers(&headers(&[("content-type", "text/plain")])));
    }

    #[test]
    fn a_call_ending_without_a_status_fails_and_unknown_statuses_share_a_label() {
        let m = Metrics::new();
        let labels = || OwnedLabels {
            direction: "outbound",
            authority: Some(Arc::from("grpc.demo:9090")),
            dst_service: None,
            dst_namespace: None,
            tls: "false",
            peer_id: None,
            src_workload: None,
            src_namespace: None,
            dst_workload: None,
            route: None,
        };
        Deferred::new(&m, labels(), StatusCode::OK, Duration::from_millis(1)).finish(None, true);
        Deferred::new(&m, labels(), StatusCode::OK, Duration::from_millis(1)).finish(Some("99"), false);
        Deferred::new(&m, labels(), StatusCode::OK, Duration::from_millis(1)).finish(Some("0"), false);
        drop(Deferred::new(&m, labels(), StatusCode::OK, Duration::from_millis(1)));
        let text = m.encode();
        let has = |grpc: &str, outcome: &str| {
            text.lines().any(|l| {
                l.starts_with("strait_requests_total{")
                    && l.contains(&format!("grpc_status=\"{grpc}\""))
                    && l.contains(&format!("outcome=\"{outcome}\""))
                    && l.ends_with(" 1")
            })
        };
        assert!(has("", "failure"), "no status at the end: failed\n{text}");
        assert!(has("other", "failure"), "status 99: one label for all unknown ones\n{text}");
        assert!(has("0", "success"));
        assert!(has("", "success"), "an abandoned body: classified by its HTTP status\n{text}");
    }
}
