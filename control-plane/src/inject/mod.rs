//! The sidecar injector's core: pure functions from a pod (or pod template) to the same with the
//! Strait proxy added, shared by the admission webhook and `strait inject`, so both inject exactly
//! the same pod. Nothing here talks to the API server or can fail on its input: a template it does
//! not understand, or one that did not ask for injection, comes back [`Outcome::Unchanged`] with a
//! reason, and a bad override is replaced by the default with a warning (bad input never blocks a
//! deployment).
//!
//! - [`config`]: the injector's settings (the chart's ConfigMap).
//! - [`template`]: what is added and removed; [`probes`]: the app probes through the admin port;
//!   [`overrides`]: the `config.strait.io/*` annotations; [`manifest`]: multi-document YAML for the CLI.

pub mod config;
pub mod error;
pub mod manifest;
pub mod overrides;
pub mod probes;
pub mod template;

use std::collections::BTreeMap;

pub use config::InjectorConfig;
pub use error::{ConfigError, ManifestError};

/// What one injection needs besides the template.
#[derive(Clone, Copy, Debug)]
pub struct Context<'a> {
    pub config: &'a InjectorConfig,
    /// PEM of the trust anchors, for the proxy's `STRAIT_TRUST_ANCHORS_PEM`.
    pub trust_anchors_pem: &'a str,
    /// The pod's namespace (for messages; the proxy reads its own from the downward API).
    pub namespace: &'a str,
    /// The namespace's annotations (namespace-wide opt-in and overrides); `None`: not known.
    pub namespace_annotations: Option<&'a BTreeMap<String, String>>,
    /// The cluster runs native sidecars (Kubernetes >= 1.29).
    pub native_sidecars: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// The template with the proxy; `warnings` name every annotation that was ignored and why.
    Injected { template: serde_json::Value, warnings: Vec<String> },
    /// Left alone: already injected, opted out, not annotated, hostNetwork, not a pod template.
    Unchanged { reason: String },
}

/// Injects the proxy into `template`, a Pod or a pod template (`{metadata, spec}`) as JSON. Every
/// field it does not change is kept, so a JSONPatch diff of input and output only adds. Injecting
/// an injected pod changes nothing.
pub fn inject_template(template: &serde_json::Value, ctx: &Context<'_>) -> Outcome {
    template::inject(template, ctx)
}

/// Removes what [`inject_template`] added (containers, volumes, annotations) and restores the
/// app's probes.
pub fn uninject_template(template: &serde_json::Value) -> serde_json::Value {
    template::uninject(template)
}

/// `v1.29.3`, `1.31`, `v1.30.2-eks-1234`, `1.29+` (GKE's minor) → `(major, minor)`.
pub fn parse_kubernetes_version(s: &str) -> Option<(u32, u32)> {
    let s = s.trim();
    let s = s.strip_prefix(['v', 'V']).unwrap_or(s);
    let mut parts = s.splitn(3, '.');
    let major: u32 = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor.find(|c: char| !c.is_ascii_digit()).map_or(minor, |i| &minor[..i]);
    Some((major, digits.parse().ok()?))
}

/// Native sidecars (`restartPolicy: Always` init containers) are on by default from 1.29.
pub fn native_sidecars_supported(v: (u32, u32)) -> bool {
    v >= (1, 29)
}

#[cfg(test)]
mod tests;
