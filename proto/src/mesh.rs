//! The embedded mesh file (DESIGN §9): services, endpoints and workload identities on one machine.
//!
//! The controller serves it in embedded mode; the proxy can also read it directly as a static
//! discovery source (no controller), which the data-path tests and `strait demo` use.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MeshFile {
    #[serde(default = "default_trust_domain")]
    pub trust_domain: String,
    #[serde(default)]
    pub workloads: Vec<Workload>,
    #[serde(default)]
    pub services: Vec<Service>,
}

fn default_trust_domain() -> String {
    "cluster.local".to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    #[serde(default)]
    pub token: Option<String>,
    /// Inbound mode: `permissive` (default) or `strict`.
    #[serde(default)]
    pub inbound_mode: Option<String>,
    /// Ports of this workload that are opaque on its inbound side.
    #[serde(default)]
    pub opaque_ports: Vec<u16>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    #[serde(default, rename = "clusterIP")]
    pub cluster_ip: Option<String>,
    #[serde(default)]
    pub ports: Vec<Port>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Port {
    pub port: u16,
    /// `http` (detected), `grpc`, `opaque`.
    #[serde(default = "default_protocol")]
    pub protocol: String,
    /// The endpoints' port for this service port, when it differs (like a Service's targetPort).
    #[serde(default)]
    pub target_port: Option<u16>,
}

fn default_protocol() -> String {
    "http".to_string()
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Endpoint {
    /// `ip:port` of the application's own listener.
    pub address: String,
    /// `ip:port` of the endpoint's sidecar inbound listener; absent = not meshed.
    #[serde(default)]
    pub proxy: Option<String>,
    #[serde(default)]
    pub workload: Option<String>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub weight: Option<u32>,
}

#[derive(Debug)]
pub struct ParseError {
    pub message: String,
    /// 1-based line of the error, when known.
    pub line: Option<usize>,
}

impl std::fmt::Display for ParseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(f, "line {l}: {}", self.message),
            None => f.write_str(&self.message),
        }
    }
}

impl std::error::Error for ParseError {}

impl MeshFile {
    /// Parses and checks a mesh file. Errors name the line where the YAML parser knows it.
    pub fn parse(text: &str) -> Result<Self, ParseError> {
        let mesh: MeshFile = serde_yaml::from_str(text).map_err(|e| ParseError {
            line: e.location().map(|l| l.line()),
            message: e.to_string(),
        })?;
        mesh.check()?;
        Ok(mesh)
    }

    fn check(&self) -> Result<(), ParseError> {
        let err = |message: String| Err(ParseError { message, line: None });
        for s in &self.services {
            if s.name.is_empty() || s.namespace.is_empty() {
                return err("a service needs a name and a namespace".into());
            }
            if let Some(ip) = &s.cluster_ip {
                if ip.parse::<std::net::IpAddr>().is_err() {
                    return err(format!("service {}.{}: clusterIP {ip:?} is not an IP address", s.name, s.namespace));
                }
            }
            for p in &s.ports {
                if !matches!(p.protocol.as_str(), "http" | "grpc" | "opaque" | "http2") {
                    return err(format!(
                        "service {}.{} port {}: protocol {:?} is not one of http, grpc, opaque",
                        s.name, s.namespace, p.port, p.protocol
                    ));
                }
            }
            for e in &s.endpoints {
                if e.address.parse::<std::net::SocketAddr>().is_err() {
                    return err(format!("service {}.{}: endpoint address {:?} is not ip:port", s.name, s.namespace, e.address));
                }
                if let Some(p) = &e.proxy {
                    if p.parse::<std::net::SocketAddr>().is_err() {
                        return err(format!("service {}.{}: endpoint proxy {p:?} is not ip:port", s.name, s.namespace));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_design_example() {
        let m = MeshFile::parse(
            r#"
trustDomain: cluster.local
workloads:
  - name: orders-v1
    namespace: demo
    serviceAccount: orders
    token: "change-me"
services:
  - name: orders
    namespace: demo
    clusterIP: 10.96.0.20
    ports: [{port: 8080, protocol: http}]
    annotations:
      retry.strait.io/http: "5xx"
    endpoints:
      - address: 127.0.0.1:18081
        proxy: 127.0.0.1:17143
        workload: orders-v1
"#,
        )
        .unwrap();
        assert_eq!(m.services[0].endpoints[0].proxy.as_deref(), Some("127.0.0.1:17143"));
        assert_eq!(m.services[0].cluster_ip.as_deref(), Some("10.96.0.20"));
    }

    #[test]
    fn reports_the_line_of_a_bad_edit() {
        let e = MeshFile::parse("services:\n  - name: a\n    namespace: b\n    ports: [{port: x}]\n").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
    }
}
