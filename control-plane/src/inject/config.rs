//! The injector's settings: what the chart renders into the `strait-injector` ConfigMap (and the
//! controller reads with `--injector-config`), with the defaults `strait inject` uses without one.
//! Checked once at start-up, so a bad chart value stops the controller instead of every pod.

use serde::Deserialize;

use super::error::ConfigError;

/// The chart's release namespace and the controller's Service, for the built-in defaults.
pub const DEFAULT_CONTROLLER_HOST: &str = "strait-controller.strait-system.svc";
/// The proxy's UID (the image's `USER`, and what `strait-proxy init` exempts by default).
pub const DEFAULT_PROXY_UID: u32 = 7102;

#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct InjectorConfig {
    pub proxy_image: String,
    pub proxy_image_pull_policy: String,
    pub discovery_addr: String,
    pub identity_addr: String,
    pub identity_server_id: String,
    pub trust_domain: String,
    #[serde(rename = "proxyUID")]
    pub proxy_uid: u32,
    pub log_level: String,
    /// A Kubernetes `ResourceRequirements` object (`requests`, `limits`).
    pub resources: serde_json::Value,
}

impl Default for InjectorConfig {
    fn default() -> Self {
        InjectorConfig {
            proxy_image: format!("strait-proxy:{}", env!("CARGO_PKG_VERSION")),
            proxy_image_pull_policy: "IfNotPresent".into(),
            discovery_addr: format!("{DEFAULT_CONTROLLER_HOST}:8086"),
            identity_addr: format!("{DEFAULT_CONTROLLER_HOST}:8080"),
            identity_server_id: "spiffe://cluster.local/ns/strait-system/sa/strait-controller".into(),
            trust_domain: "cluster.local".into(),
            proxy_uid: DEFAULT_PROXY_UID,
            log_level: "info".into(),
            resources: serde_json::json!({"requests": {"cpu": "10m", "memory": "20Mi"}, "limits": {"memory": "128Mi"}}),
        }
    }
}

impl InjectorConfig {
    /// Reads and checks the ConfigMap's `config.yaml`. Missing fields take the defaults; unknown
    /// ones are ignored (a newer chart may add some).
    pub fn from_yaml(s: &str) -> Result<Self, ConfigError> {
        let c: InjectorConfig = if s.trim().is_empty() { InjectorConfig::default() } else { serde_yaml::from_str(s)? };
        c.validate()?;
        Ok(c)
    }

    /// Every mistake at once.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut errors = Vec::new();
        if self.proxy_image.trim().is_empty() {
            errors.push("proxyImage is empty".to_string());
        }
        if !matches!(self.proxy_image_pull_policy.as_str(), "Always" | "IfNotPresent" | "Never") {
            errors.push(format!(
                "proxyImagePullPolicy {:?} is not Always, IfNotPresent or Never",
                self.proxy_image_pull_policy
            ));
        }
        for (field, v) in [("discoveryAddr", &self.discovery_addr), ("identityAddr", &self.identity_addr)] {
            match v.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0) => {}
                _ => errors.push(format!("{field} {v:?} is not host:port")),
            }
        }
        let id = &self.identity_server_id;
        let parts: Vec<&str> = id.strip_prefix("spiffe://").map(|r| r.split('/').collect()).unwrap_or_default();
        if !matches!(parts.as_slice(), [td, "ns", ns, "sa", sa] if !td.is_empty() && !ns.is_empty() && !sa.is_empty()) {
            errors.push(format!(
                "identityServerId {id:?} is not spiffe://<trust domain>/ns/<namespace>/sa/<service account>"
            ));
        }
        if self.trust_domain.is_empty() || self.trust_domain.contains(['/', ' ']) {
            errors.push(format!("trustDomain {:?} is not a trust domain", self.trust_domain));
        }
        if self.proxy_uid == 0 {
            errors.push("proxyUID 0 is root: the proxy runs as a non-root user the init container exempts".into());
        }
        if super::overrides::log_level(&self.log_level).is_none() {
            errors.push(format!(
                "logLevel {:?} is not a log filter such as info or warn,strait_proxy=debug",
                self.log_level
            ));
        }
        match &self.resources {
            serde_json::Value::Null => {}
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    match (k.as_str(), v) {
                        ("requests" | "limits", serde_json::Value::Object(q)) => {
                            for (name, qty) in q {
                                if qty.as_str().is_none_or(|s| super::overrides::quantity(s).is_none()) && !qty.is_u64()
                                {
                                    errors.push(format!("resources.{k}.{name} {qty} is not a Kubernetes quantity"));
                                }
                            }
                        }
                        ("requests" | "limits", serde_json::Value::Null) => {}
                        ("claims", _) => {}
                        _ => errors.push(format!("resources.{k} is not requests or limits")),
                    }
                }
            }
            other => errors.push(format!("resources {other} is not an object with requests and limits")),
        }
        if errors.is_empty() { Ok(()) } else { Err(ConfigError::Invalid(errors)) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_the_chart_renders() {
        let c = InjectorConfig::from_yaml(
            r#"
proxyImage: strait-proxy:0.1.0
proxyImagePullPolicy: IfNotPresent
discoveryAddr: strait-controller.mesh.svc:8086
identityAddr: strait-controller.mesh.svc:8080
identityServerId: spiffe://example.org/ns/mesh/sa/strait-controller
trustDomain: example.org
proxyUID: 7102
logLevel: info
resources: {"limits":{"memory":"128Mi"},"requests":{"cpu":"10m","memory":"20Mi"}}
"#,
        )
        .unwrap();
        assert_eq!(c.discovery_addr, "strait-controller.mesh.svc:8086");
        assert_eq!(c.trust_domain, "example.org");
        assert_eq!(c.resources["requests"]["cpu"], "10m");
        assert_eq!(InjectorConfig::from_yaml("").unwrap(), InjectorConfig::default());
        assert_eq!(InjectorConfig::from_yaml("proxyUID: 1000\nfuture: 1").unwrap().proxy_uid, 1000);
    }

    #[test]
    fn reports_every_mistake() {
        let e = InjectorConfig::from_yaml(
            "proxyImagePullPolicy: Sometimes\ndiscoveryAddr: nowhere\nidentityServerId: x\nproxyUID: 0\nresources: {requests: {cpu: lots}}",
        )
        .unwrap_err()
        .to_string();
        for want in ["Sometimes", "nowhere", "identityServerId", "proxyUID 0", "lots"] {
            assert!(e.contains(want), "{want} missing from {e}");
        }
        assert!(InjectorConfig::from_yaml("proxyUID: -1").is_err());
    }
}
