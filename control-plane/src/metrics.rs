//! The controller's Prometheus metrics. One registry per controller instance, so that several
//! controllers can run in one test process.

use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("registering metrics: {0}")]
    Register(#[from] prometheus::Error),
}

/// Buckets of `strait_controller_push_duration_seconds`: from well under a millisecond (an idle
/// controller) to seconds (a controller behind on thousands of streams).
const PUSH_BUCKETS: [f64; 14] =
    [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// Buckets of `strait_webhook_review_duration_seconds`: a review takes well under a millisecond;
/// the top buckets show reviews near the deadline (4 s) and the API server's timeout (5 s).
const WEBHOOK_BUCKETS: [f64; 14] = [0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0, 4.0, 5.0];

pub struct Metrics {
    registry: Registry,
    /// `strait_controller_config_reloads_total{result="ok"|"error"}`.
    pub config_reloads: IntCounterVec,
    /// `strait_controller_annotation_errors_total{annotation}`.
    pub annotation_errors: IntCounterVec,
    /// `strait_controller_watched_objects{kind}`: in the served mesh, `services`, `endpoints` and
    /// `workloads`; in Kubernetes mode also the objects in the reflector stores, by Kubernetes kind
    /// (`Service`, `EndpointSlice`, `Pod`).
    pub watched_objects: IntGaugeVec,
    /// `strait_controller_watch_lists_total{kind}`: complete lists of a Kubernetes kind (the first,
    /// then one after each watch that could not resume, such as 410 Gone).
    pub watch_lists: IntCounterVec,
    /// `strait_controller_watch_errors_total{kind}`: failed Kubernetes lists and watches.
    pub watch_errors: IntCounterVec,
    /// `strait_controller_push_duration_seconds`: from a mesh change to its update written to a stream.
    pub push_duration: Histogram,
    /// `strait_controller_subscriptions`: authorities subscribed to, over all streams.
    pub subscriptions: IntGauge,
    /// `strait_controller_discovery_streams`: open `Discovery.Watch` streams.
    pub streams: IntGauge,
    /// `strait_discovery_updates_total{kind="service"|"not_found"|"inbound"}`: messages sent.
    pub updates: IntCounterVec,
    /// `strait_discovery_acks_total`.
    pub acks: IntCounter,
    /// `strait_discovery_nacks_total`.
    pub nacks: IntCounter,
    /// `strait_discovery_stream_errors_total{reason}`: streams ended with an error.
    pub stream_errors: IntCounterVec,
    /// `strait_controller_certificates_issued_total{result}`: `Identity.Certify` answers, by
    /// result (`ok`, `invalid`, `unauthenticated`, `denied`, `unavailable`, `error`).
    pub certificates: IntCounterVec,
    /// `strait_controller_issuer_reloads_total{result="ok"|"error"}`: issuer file changes taken or refused.
    pub issuer_reloads: IntCounterVec,
    /// `strait_controller_issuer_expiry_timestamp_seconds`: when the issuer in use expires.
    pub issuer_expiry: IntGauge,
    /// `strait_webhook_reviews_total{result="injected"|"unchanged"|"error"}`: injector reviews answered.
    pub webhook_reviews: IntCounterVec,
    /// `strait_webhook_review_duration_seconds`: from a review's request to its answer.
    pub webhook_review_duration: Histogram,
}

impl Metrics {
    pub fn new() -> Result<Self, MetricsError> {
        let registry = Registry::new();
        let m = Self {
            config_reloads: IntCounterVec::new(
                Opts::new("strait_controller_config_reloads_total", "Mesh file loads, by result"),
                &["result"],
            )?,
            annotation_errors: IntCounterVec::new(
                Opts::new(
                    "strait_controller_annotation_errors_total",
                    "Bad policy annotations found (each counted once until it changes), by annotation",
                ),
                &["annotation"],
            )?,
            watched_objects: IntGaugeVec::new(
                Opts::new("strait_controller_watched_objects", "Objects in the served mesh, by kind"),
                &["kind"],
            )?,
            watch_lists: IntCounterVec::new(
                Opts::new("strait_controller_watch_lists_total", "Complete lists of a Kubernetes kind, by kind"),
                &["kind"],
            )?,
            watch_errors: IntCounterVec::new(
                Opts::new("strait_controller_watch_errors_total", "Failed Kubernetes lists and watches, by kind"),
                &["kind"],
            )?,
            push_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "strait_controller_push_duration_seconds",
                    "Time from a mesh change to the update being written to a discovery stream",
                )
                .buckets(PUSH_BUCKETS.to_vec()),
            )?,
            subscriptions: IntGauge::new("strait_controller_subscriptions", "Authorities subscribed to, over all streams")?,
            streams: IntGauge::new("strait_controller_discovery_streams", "Open discovery streams")?,
            updates: IntCounterVec::new(
                Opts::new("strait_discovery_updates_total", "Discovery messages sent to proxies, by kind"),
                &["kind"],
            )?,
            acks: IntCounter::new("strait_discovery_acks_total", "Versions proxies acknowledged")?,
            nacks: IntCounter::new("strait_discovery_nacks_total", "Versions proxies rejected")?,
            stream_errors: IntCounterVec::new(
                Opts::new("strait_discovery_stream_errors_total", "Discovery streams ended with an error, by reason"),
                &["reason"],
            )?,
            certificates: IntCounterVec::new(
                Opts::new("strait_controller_certificates_issued_total", "Identity.Certify answers, by result"),
                &["result"],
            )?,
            issuer_reloads: IntCounterVec::new(
                Opts::new("strait_controller_issuer_reloads_total", "Issuer file changes, taken (ok) or refused (error)"),
                &["result"],
            )?,
            issuer_expiry: IntGauge::new(
                "strait_controller_issuer_expiry_timestamp_seconds",
                "When the issuer signing proxies' certificates expires (Unix time); 0 when identity is not served",
            )?,
            webhook_reviews: IntCounterVec::new(
                Opts::new(
                    "strait_webhook_reviews_total",
                    "Injector webhook reviews answered (all allowed), by result: injected, unchanged, error",
                ),
                &["result"],
            )?,
            webhook_review_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "strait_webhook_review_duration_seconds",
                    "Time from an injector review's request to its answer",
                )
                .buckets(WEBHOOK_BUCKETS.to_vec()),
            )?,
            registry,
        };
        m.registry.register(Box::new(m.config_reloads.clone()))?;
        m.registry.register(Box::new(m.annotation_errors.clone()))?;
        m.registry.register(Box::new(m.watched_objects.clone()))?;
        m.registry.register(Box::new(m.watch_lists.clone()))?;
        m.registry.register(Box::new(m.watch_errors.clone()))?;
        m.registry.register(Box::new(m.push_duration.clone()))?;
        m.registry.register(Box::new(m.subscriptions.clone()))?;
        m.registry.register(Box::new(m.streams.clone()))?;
        m.registry.register(Box::new(m.updates.clone()))?;
        m.registry.register(Box::new(m.acks.clone()))?;
        m.registry.register(Box::new(m.nacks.clone()))?;
        m.registry.register(Box::new(m.stream_errors.clone()))?;
        m.registry.register(Box::new(m.certificates.clone()))?;
        m.registry.register(Box::new(m.issuer_reloads.clone()))?;
        m.registry.register(Box::new(m.issuer_expiry.clone()))?;
        m.registry.register(Box::new(m.webhook_reviews.clone()))?;
        m.registry.register(Box::new(m.webhook_review_duration.clone()))?;
        // process_cpu_seconds_total, process_resident_memory_bytes, ...: the control-plane dashboard.
        m.registry.register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))?;
        for kind in ["services", "endpoints", "workloads"] {
            m.watched_objects.with_label_values(&[kind]).set(0);
        }
        for result in ["ok", "error"] {
            m.config_reloads.with_label_values(&[result]).inc_by(0);
        }
        for kind in ["service", "not_found", "inbound"] {
            m.updates.with_label_values(&[kind]).inc_by(0);
        }
        for result in crate::identity::service::RESULTS {
            m.certificates.with_label_values(&[result]).inc_by(0);
        }
        for result in ["ok", "error"] {
            m.issuer_reloads.with_label_values(&[result]).inc_by(0);
        }
        for result in crate::webhook::review::ReviewResult::ALL {
            m.webhook_reviews.with_label_values(&[result.as_str()]).inc_by(0);
        }
        for reason in crate::discovery::STREAM_ERROR_REASONS {
            m.stream_errors.with_label_values(&[reason]).inc_by(0);
        }
        Ok(m)
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec only fails on a malformed metric family, which registration rules out.
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "encoding metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposes_every_family_with_its_labels() {
        let m = Metrics::new().unwrap();
        m.annotation_errors.with_label_values(&["retry.strait.io/limit"]).inc();
        m.push_duration.observe(0.002);
        let text = m.encode();
        for want in [
            "strait_controller_config_reloads_total{result=\"error\"} 0",
            "strait_controller_annotation_errors_total{annotation=\"retry.strait.io/limit\"} 1",
            "strait_controller_watched_objects{kind=\"services\"} 0",
            "strait_controller_push_duration_seconds_count 1",
            "strait_controller_subscriptions 0",
            "strait_discovery_updates_total{kind=\"service\"} 0",
            "strait_discovery_nacks_total 0",
            "strait_discovery_stream_errors_total{reason=\"hello_timeout\"} 0",
            "strait_controller_certificates_issued_total{result=\"denied\"} 0",
            "strait_controller_issuer_reloads_total{result=\"error\"} 0",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
    }
}
