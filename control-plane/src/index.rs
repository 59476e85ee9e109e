//! The lookup structure discovery answers from: authority → the snapshot of one service port, and
//! workload → its inbound policy. Built once per mesh change; every snapshot is encoded at build
//! time so that thousands of streams can tell "changed" from "same" by comparing bytes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use prost::Message;
use strait_proto::discovery::v1 as pb;

use crate::{
    authority::{self, Authority, Host, ServiceName},
    model::{Endpoint, InboundMode, Mesh, Protocol, Service, ServicePort, Workload, WorkloadRef},
    policy::{self, AnnotationError},
};

/// The snapshot of one service port, as sent in a `ServiceUpdate`.
#[derive(Debug)]
pub struct PortSnapshot {
    service: pb::Service,
    encoded: Bytes,
}

impl PortSnapshot {
    fn new(service: pb::Service) -> Self {
        let encoded = Bytes::from(service.encode_to_vec());
        Self { service, encoded }
    }

    pub fn service(&self) -> &pb::Service {
        &self.service
    }
}

impl PartialEq for PortSnapshot {
    fn eq(&self, other: &Self) -> bool {
        self.encoded == other.encoded
    }
}

/// What an authority names right now.
#[derive(Debug, Clone)]
pub enum Resolution {
    Service(Arc<PortSnapshot>),
    NotFound(pb::not_found::Reason),
}

impl PartialEq for Resolution {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Service(a), Self::Service(b)) => Arc::ptr_eq(a, b) || a == b,
            (Self::NotFound(a), Self::NotFound(b)) => a == b,
            _ => false,
        }
    }
}

#[derive(Debug)]
struct ServiceEntry {
    ports: BTreeMap<u16, Arc<PortSnapshot>>,
}

/// How many objects of each kind an index was built from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub services: usize,
    pub endpoints: usize,
    pub workloads: usize,
}

#[derive(Debug, Default)]
pub struct Index {
    cluster_domain: String,
    /// The mesh's SPIFFE trust domain (endpoints' identities and certificates are in it).
    trust_domain: String,
    by_name: HashMap<ServiceName, Arc<ServiceEntry>>,
    by_ip: HashMap<IpAddr, Arc<ServiceEntry>>,
    inbound: HashMap<WorkloadRef, pb::InboundPolicy>,
    counts: Counts,
}

impl Index {
    /// An index that names nothing (before the first load).
    pub fn empty(cluster_domain: &str) -> Self {
        Self { cluster_domain: cluster_domain.to_string(), ..Self::default() }
    }

    /// Builds the index; returns with it the annotation problems of each service (its policy then
    /// leaves those fields at their defaults). Where a source lists a service or cluster IP twice,
    /// the first one wins.
    pub fn build(mesh: &Mesh, cluster_domain: &str) -> (Self, Vec<(ServiceName, AnnotationError)>) {
        let workloads: HashMap<WorkloadRef, &Workload> =
            mesh.workloads.iter().map(|w| (workload_key(&w.namespace, &w.name), w)).collect();
        let mut index = Self::empty(cluster_domain);
        index.trust_domain = mesh.trust_domain.clone();
        let mut errors = Vec::new();
        for service in &mesh.services {
            let name = ServiceName::new(&service.namespace, &service.name);
            if index.by_name.contains_key(&name) {
                continue;
            }
            let (policy, problems) = policy::from_annotations(&service.annotations);
            errors.extend(problems.into_iter().map(|e| (name.clone(), e)));
            let ports = service
                .ports
                .iter()
                .map(|port| {
                    let snapshot = port_snapshot(mesh, &workloads, service, port, &policy, cluster_domain);
                    (port.port, Arc::new(PortSnapshot::new(snapshot)))
                })
                .collect();
            let entry = Arc::new(ServiceEntry { ports });
            for ip in &service.cluster_ips {
                index.by_ip.entry(*ip).or_insert_with(|| entry.clone());
            }
            index.by_name.insert(name, entry);
        }
        let served = opaque_ports_served(mesh);
        for w in &mesh.workloads {
            index.inbound.entry(workload_key(&w.namespace, &w.name)).or_insert_with(|| inbound_policy(&served, w));
        }
        let (services, endpoints, workloads) = mesh.counts();
        index.counts = Counts { services, endpoints, workloads };
        (index, errors)
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// What `authority` names for a proxy in `client_namespace`.
    pub fn resolve(&self, authority: &Authority, client_namespace: &str) -> Resolution {
        let entry = match &authority.host {
            Host::Ip(ip) => self.by_ip.get(ip),
            Host::Name(host) => authority::service_name(host, &self.cluster_domain, client_namespace)
                .and_then(|name| self.by_name.get(&name)),
        };
        match entry.and_then(|e| e.ports.get(&authority.port)) {
            None => Resolution::NotFound(pb::not_found::Reason::DoesNotExist),
            Some(s) if s.service.endpoints.is_empty() => Resolution::NotFound(pb::not_found::Reason::NoEndpoints),
            Some(s) => Resolution::Service(s.clone()),
        }
    }

    /// The inbound policy of a workload (`version` left at 0); a workload the mesh does not list
    /// gets the defaults.
    pub fn inbound(&self, namespace: &str, workload: &str) -> pb::InboundPolicy {
        self.inbound.get(&workload_key(namespace, workload)).cloned().unwrap_or_default()
    }
}

fn workload_key(namespace: &str, name: &str) -> WorkloadRef {
    WorkloadRef { namespace: namespace.to_ascii_lowercase(), name: name.to_ascii_lowercase() }
}

fn proto_protocol(p: Protocol) -> pb::Protocol {
    match p {
        Protocol::Detect => pb::Protocol::Detect,
        Protocol::Http2 => pb::Protocol::Http2,
        Protocol::Grpc => pb::Protocol::Grpc,
        Protocol::Opaque => pb::Protocol::Opaque,
    }
}

fn spiffe_id(trust_domain: &str, w: &Workload) -> String {
    format!("spiffe://{trust_domain}/ns/{}/sa/{}", w.namespace, w.service_account)
}

/// The endpoint's address for a service port: its own, with the port's target port when set; with
/// the endpoint's own port for it when the source gave ports per endpoint, and `None` when the
/// endpoint does not serve that port.
fn target_address(e: &Endpoint, port: &ServicePort) -> Option<SocketAddr> {
    if !e.ports.is_empty() {
        return e.ports.get(&port.port).map(|&p| SocketAddr::new(e.address.ip(), p));
    }
    Some(port.target_port.map_or(e.address, |tp| SocketAddr::new(e.address.ip(), tp)))
}

fn port_snapshot(
    mesh: &Mesh,
    workloads: &HashMap<WorkloadRef, &Workload>,
    service: &Service,
    port: &ServicePort,
    policy: &pb::Policy,
    cluster_domain: &str,
) -> pb::Service {
    let mut endpoints: Vec<pb::Endpoint> = service
        .endpoints
        .iter()
        .filter_map(|e| {
            let address = target_address(e, port)?;
            let workload = e.workload.as_ref().and_then(|r| workloads.get(&workload_key(&r.namespace, &r.name)));
            let identity = match (e.proxy, workload) {
                (Some(_), Some(w)) => spiffe_id(&mesh.trust_domain, w),
                _ => String::new(),
            };
            Some(pb::Endpoint {
                address: address.to_string(),
                proxy_address: e.proxy.map(|p| p.to_string()).unwrap_or_default(),
                zone: e.zone.clone().unwrap_or_default(),
                weight: e.weight.unwrap_or(1),
                identity,
                workload: e.workload.as_ref().map(|w| w.name.clone()).unwrap_or_default(),
            })
        })
        .collect();
    // A source's order means nothing; sorting keeps a reordering from looking like a change.
    endpoints.sort_by(|a, b| (&a.address, &a.proxy_address).cmp(&(&b.address, &b.proxy_address)));
    endpoints.dedup();
    pb::Service {
        name: service.name.clone(),
        namespace: service.namespace.clone(),
        fqdn: format!("{}.{}.svc.{}", service.name, service.namespace, cluster_domain.trim_end_matches('.')),
        cluster_ips: service.cluster_ips.iter().map(|ip| ip.to_string()).collect(),
        port: u32::from(port.port),
        protocol: proto_protocol(port.protocol) as i32,
        endpoints,
        routes: Vec::new(),
        policy: Some(policy.clone()),
    }
}

/// The ports at which each workload serves an opaque service port, in one pass over the services
/// (per workload it would be workloads × services).
fn opaque_ports_served(mesh: &Mesh) -> HashMap<WorkloadRef, BTreeSet<u32>> {
    let mut served: HashMap<WorkloadRef, BTreeSet<u32>> = HashMap::new();
    for s in &mesh.services {
        for port in s.ports.iter().filter(|p| p.protocol == Protocol::Opaque) {
            for e in &s.endpoints {
                if let (Some(r), Some(address)) = (e.workload.as_ref(), target_address(e, port)) {
                    served.entry(workload_key(&r.namespace, &r.name)).or_default().insert(u32::from(address.port()));
                }
            }
        }
    }
    served
}

/// A workload's inbound policy: its declared opaque ports plus the ports at which it serves an
/// opaque service port (so a server-speaks-first protocol is never held up by detection).
fn inbound_policy(served: &HashMap<WorkloadRef, BTreeSet<u32>>, w: &Workload) -> pb::InboundPolicy {
    let mut opaque: BTreeSet<u32> = w.opaque_ports.iter().map(|&p| u32::from(p)).collect();
    if let Some(ports) = served.get(&workload_key(&w.namespace, &w.name)) {
        opaque.extend(ports);
    }
    let mode = match w.inbound_mode {
        InboundMode::Permissive => pb::inbound_policy::Mode::Permissive,
        InboundMode::Strict => pb::inbound_policy::Mode::Strict,
    };
    pb::InboundPolicy { version: 0, opaque_ports: opaque.into_iter().collect(), mode: mode as i32 }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{authority::parse, mesh_file};
    use strait_proto::mesh::MeshFile;

    const MESH: &str = r#"
trustDomain: example.org
workloads:
  - {name: orders-v1, namespace: demo, serviceAccount: orders, opaquePorts: [25]}
  - {name: db-0, namespace: data, serviceAccount: db, inboundMode: strict}
services:
  - name: orders
    namespace: demo
    clusterIP: 10.96.0.20
    ports: [{port: 8080, protocol: http, targetPort: 18080}, {port: 9090, protocol: grpc}, {port: 81, protocol: http2}]
    annotations: {retry.strait.io/limit: "3", timeout.strait.io/request: "soon"}
    endpoints:
      - {address: "127.0.0.2:18081", proxy: "127.0.0.2:17143", workload: orders-v1, zone: z1}
      - {address: "127.0.0.1:18081", workload: orders-v1, weight: 5}
      - {address: "127.0.0.3:18081", proxy: "127.0.0.3:17143", workload: ghost}
  - name: db
    namespace: data
    ports: [{port: 3306, protocol: opaque}, {port: 80}]
    endpoints: [{address: "127.0.0.9:3307", proxy: "127.0.0.9:17143", workload: db-0}]
  - {name: empty, namespace: demo, ports: [{port: 80}]}
"#;

    fn index() -> (Index, Vec<(ServiceName, AnnotationError)>) {
        let mesh = mesh_file::to_model(&MeshFile::parse(MESH).unwrap()).unwrap();
        Index::build(&mesh, "cluster.local")
    }

    fn service(r: Resolution) -> pb::Service {
        match r {
            Resolution::Service(s) => s.service().clone(),
            other => panic!("{other:?}"),
        }
    }

    fn resolve(i: &Index, authority: &str, ns: &str) -> Resolution {
        i.resolve(&parse(authority).unwrap(), ns)
    }

    #[test]
    fn a_port_snapshot_carries_everything_the_proxy_needs() {
        let (i, errors) = index();
        let s = service(resolve(&i, "orders.demo:8080", "elsewhere"));
        assert_eq!((s.name.as_str(), s.namespace.as_str()), ("orders", "demo"));
        assert_eq!(s.fqdn, "orders.demo.svc.cluster.local");
        assert_eq!(s.cluster_ips, ["10.96.0.20"]);
        assert_eq!((s.port, s.protocol), (8080, pb::Protocol::Detect as i32));
        let eps: Vec<_> = s.endpoints.iter().map(|e| (e.address.as_str(), e.proxy_address.as_str(), e.identity.as_str())).collect();
        assert_eq!(
            eps,
            [
                ("127.0.0.1:18080", "", ""),
                ("127.0.0.2:18080", "127.0.0.2:17143", "spiffe://example.org/ns/demo/sa/orders"),
                ("127.0.0.3:18080", "127.0.0.3:17143", ""),
            ]
        );
        assert_eq!((s.endpoints[0].weight, s.endpoints[1].weight), (5, 1));
        assert_eq!((s.endpoints[1].zone.as_str(), s.endpoints[1].workload.as_str()), ("z1", "orders-v1"));
        let policy = s.policy.unwrap();
        assert_eq!(policy.retry.unwrap().limit, Some(3));
        assert_eq!(policy.request_timeout_ms, 0);
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].0, ServiceName::new("demo", "orders"));
        assert_eq!(errors[0].1.label(), policy::REQUEST_TIMEOUT);
    }

    #[test]
    fn protocols_follow_the_port() {
        let (i, _) = index();
        let proto = |a| service(resolve(&i, a, "")).protocol;
        assert_eq!(proto("orders.demo:9090"), pb::Protocol::Grpc as i32);
        assert_eq!(proto("orders.demo:81"), pb::Protocol::Http2 as i32);
        assert_eq!(proto("db.data:3306"), pb::Protocol::Opaque as i32);
        // Without a target port, the endpoint keeps its own port.
        assert_eq!(service(resolve(&i, "orders.demo:9090", "")).endpoints[0].address, "127.0.0.1:18081");
    }

    #[test]
    fn every_authority_form_names_the_same_snapshot() {
        let (i, _) = index();
        let want = resolve(&i, "orders.demo:8080", "");
        for a in [
            "orders.demo.svc.cluster.local:8080",
            "ORDERS.Demo.svc.cluster.local.:8080",
            "orders.demo.svc:8080",
            "10.96.0.20:8080",
        ] {
            assert_eq!(resolve(&i, a, ""), want, "{a}");
        }
        assert_eq!(resolve(&i, "orders:8080", "demo"), want);
        assert_eq!(service(resolve(&i, "db.data", "")).port, 80);
    }

    #[test]
    fn what_is_not_there() {
        let (i, _) = index();
        let missing = Resolution::NotFound(pb::not_found::Reason::DoesNotExist);
        assert_eq!(resolve(&i, "orders:8080", "other"), missing);
        assert_eq!(resolve(&i, "orders.demo:1234", ""), missing);
        assert_eq!(resolve(&i, "nope.demo:8080", ""), missing);
        assert_eq!(resolve(&i, "10.96.0.21:8080", ""), missing);
        assert_eq!(resolve(&i, "orders.demo.svc.other.domain:8080", ""), missing);
        assert_eq!(resolve(&i, "empty.demo:80", ""), Resolution::NotFound(pb::not_found::Reason::NoEndpoints));
    }

    #[test]
    fn rebuilding_the_same_mesh_yields_equal_snapshots() {
        let (a, _) = index();
        let (b, _) = index();
        assert_eq!(resolve(&a, "orders.demo:8080", ""), resolve(&b, "orders.demo:8080", ""));
    }

    #[test]
    fn inbound_policy_of_a_workload() {
        let (i, _) = index();
        let orders = i.inbound("demo", "orders-v1");
        assert_eq!((orders.opaque_ports.as_slice(), orders.mode), (&[25][..], pb::inbound_policy::Mode::Permissive as i32));
        let db = i.inbound("Data", "DB-0");
        assert_eq!((db.opaque_ports.as_slice(), db.mode), (&[3307][..], pb::inbound_policy::Mode::Strict as i32));
        assert_eq!(i.inbound("demo", "unknown"), pb::InboundPolicy::default());
        assert_eq!(i.counts(), Counts { services: 3, endpoints: 4, workloads: 2 });
    }
}
