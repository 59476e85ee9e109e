//! A mesh file (DESIGN §9) read by the proxy itself: discovery without a controller, for tests,
//! demos and single-machine setups. The file is turned into the same snapshots the controller
//! would send (endpoints, identities, policy from annotations), so the data path cannot tell the
//! difference. What the file cannot say without a controller: certificates (no identity service).

use std::{net::SocketAddr, path::Path, sync::Arc};

use strait_proto::{discovery::v1 as pb, mesh::MeshFile};

use super::{ServiceProfile, Table};

#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("{path}: {source}")]
    Parse { path: String, source: strait_proto::mesh::ParseError },
    #[error("{path}: service {service}: {source}")]
    Profile { path: String, service: String, source: super::profile::ProfileError },
}

/// The table for the proxy of `workload` in `namespace`.
pub fn load(path: &Path, namespace: &str, workload: &str) -> Result<Table, StaticError> {
    let p = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| StaticError::Read { path: p.clone(), source })?;
    let mesh = MeshFile::parse(&text).map_err(|source| StaticError::Parse { path: p.clone(), source })?;
    table(&mesh, namespace, workload, "cluster.local")
        .map_err(|(service, source)| StaticError::Profile { path: p, service, source })
}

/// Builds the table for the proxy of `workload` in `namespace`: every service port under every
/// authority form, and the services its own workload serves by the workload's port.
pub fn table(
    mesh: &MeshFile,
    namespace: &str,
    workload: &str,
    cluster_domain: &str,
) -> Result<Table, (String, super::profile::ProfileError)> {
    let mut t = Table::default();
    for svc in &mesh.services {
        for port in &svc.ports {
            let snapshot = snapshot(mesh, svc, port);
            let profile = Arc::new(
                ServiceProfile::from_proto(&snapshot).map_err(|e| (format!("{}.{}", svc.name, svc.namespace), e))?,
            );
            let (n, ns, p) = (&svc.name, &svc.namespace, port.port);
            for host in [
                format!("{n}.{ns}.svc.{cluster_domain}"),
                format!("{n}.{ns}.svc"),
                format!("{n}.{ns}"),
            ] {
                t.insert_name(format!("{}:{p}", host.to_ascii_lowercase()), profile.clone());
            }
            if ns == namespace {
                t.insert_name(format!("{}:{p}", n.to_ascii_lowercase()), profile.clone());
            }
            if let Some(ip) = svc.cluster_ip.as_deref().and_then(|ip| ip.parse().ok()) {
                t.insert_addr(SocketAddr::new(ip, p), profile.clone());
            }
            if ns == namespace && !workload.is_empty() {
                let own = svc.endpoints.iter().filter(|e| e.workload.as_deref() == Some(workload));
                for e in own.filter_map(|e| e.address.parse::<SocketAddr>().ok()) {
                    t.insert_local(port.target_port.unwrap_or(e.port()), profile.clone());
                }
            }
        }
    }
    Ok(t)
}

fn snapshot(mesh: &MeshFile, svc: &strait_proto::mesh::Service, port: &strait_proto::mesh::Port) -> pb::Service {
    let protocol = match port.protocol.as_str() {
        "opaque" => pb::Protocol::Opaque,
        "grpc" => pb::Protocol::Grpc,
        "http2" => pb::Protocol::Http2,
        _ => pb::Protocol::Detect,
    };
    let endpoints = svc
        .endpoints
        .iter()
        .map(|e| {
            let mut address = e.address.clone();
            if let (Some(tp), Ok(a)) = (port.target_port, e.address.parse::<SocketAddr>()) {
                address = SocketAddr::new(a.ip(), tp).to_string();
            }
            let identity = e
                .workload
                .as_ref()
                .and_then(|w| workload(mesh, &svc.namespace, w))
                .filter(|_| e.proxy.is_some())
                .map(|w| format!("spiffe://{}/ns/{}/sa/{}", mesh.trust_domain, w.namespace, w.service_account))
                .unwrap_or_default();
            pb::Endpoint {
                address,
                proxy_address: e.proxy.clone().unwrap_or_default(),
                zone: e.zone.clone().unwrap_or_default(),
                weight: e.weight.unwrap_or(1),
                identity,
                workload: e.workload.clone().unwrap_or_default(),
            }
        })
        .collect();
    pb::Service {
        name: svc.name.clone(),
        namespace: svc.namespace.clone(),
        fqdn: format!("{}.{}.svc.cluster.local", svc.name, svc.namespace),
        cluster_ips: svc.cluster_ip.iter().cloned().collect(),
        port: port.port as u32,
        protocol: protocol as i32,
        endpoints,
        routes: Vec::new(),
        policy: Some(policy(svc)),
    }
}

/// The same policy the controller would send; problems are logged (the controller also counts them).
fn policy(svc: &strait_proto::mesh::Service) -> pb::Policy {
    let (policy, problems) = strait_proto::policy::from_annotations(&svc.annotations);
    for p in problems {
        tracing::warn!(service = %svc.name, namespace = %svc.namespace, "{p}; that field keeps its default");
    }
    policy
}

/// As the controller does: the workload of that name in the service's namespace, else the only one
/// of that name in the file.
fn workload<'a>(mesh: &'a MeshFile, namespace: &str, name: &str) -> Option<&'a strait_proto::mesh::Workload> {
    let same_ns = mesh.workloads.iter().find(|w| w.name == name && w.namespace == namespace);
    let mut by_name = mesh.workloads.iter().filter(|w| w.name == name);
    same_ns.or_else(|| match (by_name.next(), by_name.next()) {
        (Some(only), None) => Some(only),
        _ => None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discover::Discovery;

    #[test]
    fn every_authority_form_resolves() {
        let mesh = MeshFile::parse(
            r#"
services:
  - name: orders
    namespace: demo
    clusterIP: 10.96.0.20
    ports: [{port: 8080}, {port: 9000, protocol: opaque}]
    endpoints:
      - address: 127.0.0.1:18081
        proxy: 127.0.0.1:17143
"#,
        )
        .unwrap();
        let d = Discovery::new();
        d.replace(table(&mesh, "demo", "", "cluster.local").unwrap());
        for a in ["orders.demo.svc.cluster.local:8080", "orders.demo.svc:8080", "orders.demo:8080", "orders:8080", "ORDERS.demo.:8080"] {
            let p = d.resolve_authority(a).unwrap_or_else(|| panic!("{a}"));
            assert_eq!(&*p.name, "orders");
            assert_eq!(p.endpoints[0].proxy, Some("127.0.0.1:17143".parse().unwrap()));
        }
        assert!(d.resolve_authority("orders.demo:9000").unwrap().is_opaque());
        assert!(d.resolve_addr("10.96.0.20:8080".parse().unwrap()).is_some());
        assert!(d.resolve_authority("orders.other:8080").is_none());

        let other = Discovery::new();
        other.replace(table(&mesh, "elsewhere", "", "cluster.local").unwrap());
        assert!(other.resolve_authority("orders:8080").is_none());
    }
}
