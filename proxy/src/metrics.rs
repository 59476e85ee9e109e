//! Golden metrics (DESIGN §6), registered once and shared by every stage.
//!
//! Label values are bounded: every one comes from the mesh (discovery, the proxy's own
//! configuration, a verified peer identity) or from a fixed set (directions, status codes,
//! outcomes), never from what a client wrote: a random `Host` must not grow the registry until the
//! pod runs out of memory. A destination the mesh does not know is labelled [`UNKNOWN`].

use std::{
    sync::{Arc, Mutex},
    time::Instant,
};

use prometheus::{
    Gauge, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

/// Buckets of `strait_request_duration_seconds`, in seconds: 0.1 ms to 10 s in the 1–2.5–5 series
/// (each bound ×2 or ×2.5 the one before), 16 bounds plus `+Inf`.
///
/// Why this layout: a hop between two sidecars on one node adds 0.1–0.5 ms (`make bench`), so the
/// lowest bounds are 0.1, 0.25 and 0.5 ms; a bucket never spans more than ×2.5, so a quantile
/// interpolated within one (`histogram_quantile`, `strait stat`) is never off by more than that ratio.
/// Above 10 s only the count matters (`+Inf`): such requests are timeouts, and
/// their own metrics say so. Every bound is a series per label set, so the layout stays short.
const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The `authority` of a request whose destination the mesh does not know (or, inbound, whose local
/// port serves no service discovery names): one bucket for everything else.
pub const UNKNOWN: &str = "unknown";

/// The labels of `strait_requests_total`. New ones are only appended, so dashboards and
/// `strait stat` keep working: `src_workload`/`src_namespace` (outbound: this proxy's own
/// workload; inbound: the namespace of the peer's verified identity), `dst_workload` (the
/// endpoint's workload from discovery; inbound: this proxy's own) and `route` (the service
/// profile's route that matched, empty when none did).
pub const REQUEST_LABELS: &[&str] = &[
    "direction", "authority", "dst_service", "dst_namespace", "status_code", "grpc_status", "outcome", "tls",
    "peer_id", "src_workload", "src_namespace", "dst_workload", "route",
];
pub const DURATION_LABELS: &[&str] = &[
    "direction", "authority", "dst_service", "dst_namespace", "outcome", "tls", "peer_id", "src_workload",
    "src_namespace", "dst_workload", "route",
];

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub requests: IntCounterVec,
    pub request_duration: HistogramVec,
    pub proxy_errors: IntCounterVec,
    pub detect: IntCounterVec,
    pub tcp_opened: IntCounterVec,
    pub tcp_closed: IntCounterVec,
    pub tcp_sent: IntCounterVec,
    pub tcp_received: IntCounterVec,
    pub tcp_open: IntGaugeVec,
    pub passthrough: IntCounterVec,
    pub discovery_connected: IntGauge,
    pub discovery_updates: IntCounterVec,
    /// `strait_discovery_stale_seconds`, computed at each scrape from `discovery_stale_since`.
    discovery_stale: Gauge,
    /// Since when the discovery snapshot may be out of date (`None`: it is current).
    discovery_stale_since: Arc<Mutex<Option<Instant>>>,
    pub ready: IntGauge,
    pub garbage_connections: IntCounter,
    pub tls_handshakes: IntCounterVec,
    pub identity_certify: IntCounterVec,
    pub identity_expiry: IntGauge,
    /// `strait_identity_certificate_valid`: 1 while the proxy holds a certificate that has not expired.
    pub identity_valid: IntGauge,
    pub inbound_refused: IntCounterVec,
    /// `strait_connections_refused_total{listener}`: closed at accept, the listener's connection
    /// limit reached (`admin`, `inbound`, `outbound`).
    pub connections_refused: IntCounterVec,
    pub retries: IntCounterVec,
    pub retry_budget_exhausted: IntCounterVec,
    pub circuit_open: IntGaugeVec,
    pub circuit_ejections: IntCounterVec,
    pub bulkhead_in_flight: IntGaugeVec,
    pub bulkhead_rejected: IntCounterVec,
    /// `strait_metrics_series`, alone in its registry: set at each scrape from the count of the
    /// main registry's series, then encoded after them.
    series: IntGauge,
    series_registry: Registry,
}

fn must<T>(r: prometheus::Result<T>) -> T {
    // Registration fails only on a programming error (duplicate or malformed names), caught by tests.
    r.expect("metric definitions are valid")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        // process_cpu_seconds_total, process_resident_memory_bytes, process_open_fds, ...: the
        // per-proxy dashboard's CPU and memory panels.
        must(registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self())));
        let counter = |name: &str, help: &str, labels: &[&str]| {
            let c = must(IntCounterVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(c.clone())));
            c
        };
        let requests = counter("strait_requests_total", "HTTP requests the proxy handled.", REQUEST_LABELS);
        let proxy_errors = counter(
            "strait_proxy_errors_total",
            "Responses the proxy produced itself, by strait-error kind.",
            &["direction", "dst_service", "error"],
        );
        let detect = counter(
            "strait_protocol_detect_total",
            "Connections by the protocol detected on their first bytes.",
            &["direction", "result"],
        );
        let tcp_opened = counter("strait_tcp_connections_opened_total", "TCP connections accepted.", &["direction"]);
        let tcp_closed = counter("strait_tcp_connections_closed_total", "TCP connections closed.", &["direction"]);
        let tcp_sent = counter(
            "strait_tcp_sent_bytes_total",
            "Bytes written to accepted connections (towards the client).",
            &["direction"],
        );
        let tcp_received = counter(
            "strait_tcp_received_bytes_total",
            "Bytes read from accepted connections (from the client).",
            &["direction"],
        );
        let passthrough = counter(
            "strait_passthrough_total",
            "Connections or requests forwarded to a destination the mesh does not know.",
            &["direction", "protocol"],
        );
        let discovery_updates = counter(
            "strait_discovery_updates_total",
            "Discovery updates received, by result (applied, rejected).",
            &["result"],
        );
        let tls_handshakes = counter(
            "strait_tls_handshakes_total",
            "mTLS handshakes between proxies, by direction and result.",
            &["direction", "result"],
        );
        let identity_certify = counter(
            "strait_identity_certify_total",
            "Certificate requests to the controller, by result.",
            &["result"],
        );
        let inbound_refused = counter(
            "strait_inbound_refused_total",
            "Inbound connections refused by policy (strict mode plaintext, TLS not meant for this proxy).",
            &["reason"],
        );
        let connections_refused = counter(
            "strait_connections_refused_total",
            "Connections closed as soon as they were accepted because the listener's connection limit was reached.",
            &["listener"],
        );
        // At 0 from the start, so an alert on the rate sees every listener.
        for listener in ["admin", "inbound", "outbound"] {
            connections_refused.with_label_values(&[listener]);
        }
        let retries = counter("strait_retries_total", "Requests sent again, by reason.", &["dst_service", "reason"]);
        let retry_budget_exhausted = counter(
            "strait_retry_budget_exhausted_total",
            "Retries not made because the service's retry budget was spent.",
            &["dst_service"],
        );
        let circuit_ejections = counter(
            "strait_circuit_ejections_total",
            "Endpoints ejected by their circuit breaker.",
            &["dst_service"],
        );
        let bulkhead_rejected = counter(
            "strait_bulkhead_rejected_total",
            "Requests refused because the service's bulkhead was full.",
            &["dst_service"],
        );
        let gauge = |name: &str, help: &str, labels: &[&str]| {
            let g = must(IntGaugeVec::new(Opts::new(name, help), labels));
            must(registry.register(Box::new(g.clone())));
            g
        };
        let circuit_open = gauge(
            "strait_circuit_open",
            "1 while an endpoint is ejected (open or half-open circuit).",
            &["dst_service", "endpoint"],
        );
        let bulkhead_in_flight =
            gauge("strait_bulkhead_in_flight", "Requests in flight to the service from this proxy.", &["dst_service"]);
        let tcp_open = must(IntGaugeVec::new(
            Opts::new("strait_tcp_connections_open", "TCP connections open now."),
            &["direction"],
        ));
        must(registry.register(Box::new(tcp_open.clone())));
        let request_duration = must(HistogramVec::new(
            HistogramOpts::new("strait_request_duration_seconds", "Time to the response headers.")
                .buckets(LATENCY_BUCKETS.to_vec()),
            DURATION_LABELS,
        ));
        must(registry.register(Box::new(request_duration.clone())));
        let discovery_connected = must(IntGauge::new(
            "strait_discovery_connected",
            "1 while the proxy holds a stream to the control plane (or reads a static mesh file).",
        ));
        must(registry.register(Box::new(discovery_connected.clone())));
        let discovery_stale = must(Gauge::new(
            "strait_discovery_stale_seconds",
            "Seconds the discovery snapshot has gone without being known current: 0 while the stream to the \
             control plane is up (or a mesh file is read), then growing while the proxy serves its last snapshot.",
        ));
        must(registry.register(Box::new(discovery_stale.clone())));
        let ready = must(IntGauge::new("strait_ready", "1 once the proxy is ready to serve."));
        must(registry.register(Box::new(ready.clone())));
        let garbage_connections = must(IntCounter::new(
            "strait_inbound_rejected_connections_total",
            "Inbound connections closed because their first bytes were not a valid transport header.",
        ));
        must(registry.register(Box::new(garbage_connections.clone())));
        let identity_expiry = must(IntGauge::new(
            "strait_identity_cert_expiry_timestamp_seconds",
            "When the proxy's current certificate expires (Unix seconds).",
        ));
        must(registry.register(Box::new(identity_expiry.clone())));
        let identity_valid = must(IntGauge::new(
            "strait_identity_certificate_valid",
            "1 while the proxy holds an identity certificate that has not expired; 0 before the first one \
             and once it expired without renewal (the proxy is then not ready).",
        ));
        must(registry.register(Box::new(identity_valid.clone())));
        let series_registry = Registry::new();
        let series = must(IntGauge::new(
            "strait_metrics_series",
            "Series this proxy's /metrics exposes (this one included), counted at each scrape: flat unless \
             something grows the label sets.",
        ));
        must(series_registry.register(Box::new(series.clone())));
        Metrics {
            series,
            series_registry,
            registry,
            tls_handshakes,
            identity_certify,
            identity_expiry,
            identity_valid,
            inbound_refused,
            connections_refused,
            retries,
            retry_budget_exhausted,
            circuit_open,
            circuit_ejections,
            bulkhead_in_flight,
            bulkhead_rejected,
            requests,
            request_duration,
            proxy_errors,
            detect,
            tcp_opened,
            tcp_closed,
            tcp_sent,
            tcp_received,
            tcp_open,
            passthrough,
            discovery_connected,
            discovery_updates,
            discovery_stale,
            // Nothing is known before the first answer.
            discovery_stale_since: Arc::new(Mutex::new(Some(Instant::now()))),
            ready,
            garbage_connections,
        }
    }

    /// Discovery is up to date (the stream to the controller is up, or a mesh file was read).
    pub fn discovery_current(&self) {
        *self.discovery_stale_since.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// The stream to the controller is lost: the snapshot ages from now on (unless it already did).
    pub fn discovery_lost(&self) {
        self.discovery_stale_since.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(Instant::now);
    }

    pub fn encode(&self) -> String {
        let since = *self.discovery_stale_since.lock().unwrap_or_else(|p| p.into_inner());
        self.discovery_stale.set(since.map_or(0.0, |t| t.elapsed().as_secs_f64()));
        let mut buf = String::new();
        let enc = prometheus::TextEncoder::new();
        if let Err(e) = enc.encode_utf8(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        // Every line that is not a comment is a series; plus this gauge's own.
        let lines = buf.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
        self.series.set(lines as i64 + 1);
        if let Err(e) = enc.encode_utf8(&self.series_registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "encoding metrics");
        }
        buf
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn registers_and_encodes() {
        let m = super::Metrics::new();
        m.tcp_opened.with_label_values(&["outbound"]).inc();
        assert!(m.encode().contains("strait_tcp_connections_opened_total{direction=\"outbound\"} 1"));
    }

    #[test]
    fn the_series_gauge_counts_every_series_of_the_scrape() {
        let m = super::Metrics::new();
        m.tcp_opened.with_label_values(&["inbound"]).inc();
        let text = m.encode();
        let lines = text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count();
        assert!(text.contains(&format!("\nstrait_metrics_series {lines}\n")), "{text}");
    }
}
