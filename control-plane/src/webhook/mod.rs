//! The injector's admission webhook: `POST /inject` takes an AdmissionReview v1 for a Pod being
//! created and answers with a JSONPatch that adds the proxy (DESIGN §9, contracts: controller
//! flags `--webhook-*`).
//!
//! The server is generic over the mutation: a [`Mutator`] turns a Pod into the Pod to create, and
//! this module only turns that into an AdmissionReview answer (the patch is the difference, so
//! the mutator never writes JSONPatch by hand). What the mutator needs from the cluster (its
//! Kubernetes version, the injector config, the trust anchors) is read once at start-up into a
//! [`Context`]; nothing on the request path calls the API server.
//!
//! Bad input never blocks a pod: every review that carries a uid is answered `allowed: true`;
//! what could not be done is said in a warning (shown by kubectl) and counted in
//! `strait_webhook_reviews_total{result="error"}`.
//!
//! - [`review`]: the AdmissionReview types, and the decision for one review.
//! - [`server`]: HTTPS (rustls), the serving certificate re-read when its files change, limits.

pub mod error;
pub mod review;
pub mod server;

use std::{path::PathBuf, sync::Arc};

use serde_json::Value;

pub use error::WebhookError;

/// What a mutator makes of a Pod.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mutation {
    /// The Pod to create instead; `None` leaves it as it is.
    pub patched: Option<Value>,
    /// Shown to whoever created the Pod (kubectl prints them).
    pub warnings: Vec<String>,
    /// Why the Pod was left alone or injected with defaults (logged, and sent as the review's
    /// audit annotation `reason`).
    pub reason: Option<String>,
}

/// Turns the Pod object of a review (and its namespace) into a [`Mutation`]. Runs on a blocking
/// thread, under the review's deadline; a panic is caught and answered like bad input.
pub type Mutator = Arc<dyn Fn(&Value /* the Pod object */, &str /* namespace */) -> Mutation + Send + Sync>;

/// Builds the mutator from what was read at start-up.
pub type BuildMutator = fn(&Context) -> Result<Mutator, WebhookError>;

/// A Kubernetes minor release, as `/version` tells it (`1`, `31+` → 1.31).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct KubernetesVersion {
    pub major: u32,
    pub minor: u32,
}

impl KubernetesVersion {
    /// From `/version`'s `major` and `minor` (providers append `+` or other suffixes to minor);
    /// `None` when they are not numbers.
    pub fn parse(major: &str, minor: &str) -> Option<Self> {
        let digits = |s: &str| -> Option<u32> {
            let end = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
            s[..end].parse().ok()
        };
        Some(Self { major: digits(major.trim())?, minor: digits(minor.trim())? })
    }

    /// Native sidecars (an init container with `restartPolicy: Always`) are on by default from 1.29.
    pub fn has_native_sidecars(&self) -> bool {
        (self.major, self.minor) >= (1, 29)
    }
}

impl std::fmt::Display for KubernetesVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)
    }
}

/// What the mutator is built from, read once at start-up.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// The cluster's version; `None` when it could not be read (inject classic sidecars then).
    pub kubernetes_version: Option<KubernetesVersion>,
    /// `--injector-config`, and its contents (YAML, the chart's ConfigMap).
    pub injector_config_path: Option<PathBuf>,
    pub injector_config: Option<serde_yaml::Value>,
    /// The PEM text of the controller's `--trust-anchors`, for the proxies'
    /// `STRAIT_TRUST_ANCHORS_PEM`.
    pub trust_anchors_pem: Option<String>,
    pub trust_domain: String,
    pub cluster_domain: String,
    /// The namespaces' Strait annotations (namespace-wide opt-in and overrides), kept by a watch.
    pub namespaces: Option<crate::k8s::namespaces::Namespaces>,
}

impl Context {
    /// Reads `--injector-config` (YAML; an unreadable or malformed file fails start-up, so a
    /// broken ConfigMap is noticed at rollout and not at the first pod).
    pub fn read_injector_config(path: &std::path::Path) -> Result<serde_yaml::Value, WebhookError> {
        let text = std::fs::read_to_string(path).map_err(|e| WebhookError::Io(path.display().to_string(), e))?;
        serde_yaml::from_str(&text).map_err(|e| WebhookError::InjectorConfig(path.display().to_string(), e.to_string()))
    }
}

/// Where and how the webhook is served.
#[derive(Debug, Clone)]
pub struct WebhookConfig {
    pub addr: std::net::SocketAddr,
    /// The serving certificate (PEM, intermediates may follow) and its key (PKCS#8, SEC1 or RSA).
    pub cert: PathBuf,
    pub key: PathBuf,
    pub injector_config: Option<PathBuf>,
    pub limits: server::Limits,
    /// The mutation the webhook applies.
    pub build: BuildMutator,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_as_providers_write_them() {
        let v = |major, minor| KubernetesVersion::parse(major, minor);
        assert_eq!(v("1", "31"), Some(KubernetesVersion { major: 1, minor: 31 }));
        assert_eq!(v("1", "28+"), Some(KubernetesVersion { major: 1, minor: 28 }));
        assert_eq!(v("", "30"), None);
        assert_eq!(v("1", "x"), None);
        assert!(!v("1", "28+").unwrap().has_native_sidecars());
        assert!(v("1", "29").unwrap().has_native_sidecars());
        assert!(v("2", "0").unwrap().has_native_sidecars());
        assert_eq!(v("1", "31").unwrap().to_string(), "1.31");
    }
}
