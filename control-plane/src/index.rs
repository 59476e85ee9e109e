//! The lookup structure discovery answers from: service name or cluster IP → the snapshot of each
//! service port, and workload → its inbound policy.
//!
//! It is kept up to date incrementally. The publisher owns a [`Builder`], which holds the mesh model
//! and turns each change (a whole new mesh, or a few services and workloads set or removed) into an
//! [`Update`]: new entries for what really changed and nothing else, built outside any lock. The
//! [`Index`] takes an update in a few hash-map inserts, and the update names the [`Topic`]s whose
//! answers changed, so only the streams subscribed to those are woken. An entry that did not change
//! keeps its `Arc`, so a stream tells "same" from "changed" with a pointer comparison; snapshots
//! are encoded once when built, so a rebuilt but equal entry is recognised by comparing bytes.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use prost::Message;
use strait_proto::discovery::v1 as pb;
use tokio::time::Instant;

use crate::{
    authority::{self, Authority, Host, ServiceName},
    model::{Change, Endpoint, InboundMode, Mesh, Protocol, Service, ServicePort, Workload, WorkloadRef},
    policy::{self, AnnotationError},
};

/// The snapshot of one service port, as sent in a `ServiceUpdate`.
#[derive(Debug)]
pub struct PortSnapshot {
    service: pb::Service,
    encoded: Bytes,
    /// When the source published the change this snapshot was built for (the oldest one, when a
    /// burst was coalesced): push latency is measured from it.
    changed_at: Instant,
}

impl PortSnapshot {
    fn new(service: pb::Service, changed_at: Instant) -> Self {
        let encoded = Bytes::from(service.encode_to_vec());
        Self { service, encoded, changed_at }
    }

    pub fn service(&self) -> &pb::Service {
        &self.service
    }

    pub fn changed_at(&self) -> Instant {
        self.changed_at
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

/// One service's snapshots, per service port.
#[derive(Debug)]
pub struct ServiceEntry {
    ports: BTreeMap<u16, Arc<PortSnapshot>>,
}

impl ServiceEntry {
    /// Same ports with the same snapshots (the time it was built does not matter).
    fn same_as(&self, other: &Self) -> bool {
        self.ports.len() == other.ports.len()
            && self.ports.iter().zip(&other.ports).all(|((pa, a), (pb, b))| pa == pb && (Arc::ptr_eq(a, b) || a == b))
    }
}

/// What a subscription watches: the key its answers are looked up under. The authority → topic
/// step needs no index (see [`topic`]), so it is done once per subscription; a change wakes the
/// streams subscribed to the topics it touched, and no others.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Topic {
    Service(ServiceName),
    Ip(IpAddr),
    Workload(WorkloadRef),
}

/// The topic and port an authority names for a proxy in `client_namespace`; `None` when it names
/// no service of the mesh, now or later (a name outside the service forms).
pub fn topic(authority: &Authority, cluster_domain: &str, client_namespace: &str) -> Option<(Topic, u16)> {
    let topic = match &authority.host {
        Host::Ip(ip) => Topic::Ip(*ip),
        Host::Name(host) => Topic::Service(authority::service_name(host, cluster_domain, client_namespace)?),
    };
    Some((topic, authority.port))
}

/// How many objects of each kind the index holds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub services: usize,
    pub endpoints: usize,
    pub workloads: usize,
}

/// What discovery reads. Written only through [`Index::apply`].
#[derive(Debug, Default)]
pub struct Index {
    cluster_domain: String,
    /// The mesh's SPIFFE trust domain (endpoints' identities and certificates are in it).
    trust_domain: String,
    by_name: HashMap<ServiceName, Arc<ServiceEntry>>,
    by_ip: HashMap<IpAddr, Arc<ServiceEntry>>,
    inbound: HashMap<WorkloadRef, Arc<pb::InboundPolicy>>,
    counts: Counts,
}

impl Index {
    /// An index that names nothing (before the first load).
    pub fn empty(cluster_domain: &str) -> Self {
        Self { cluster_domain: cluster_domain.to_string(), ..Self::default() }
    }

    /// A whole index from one mesh, and the annotation problems of each service (its policy then
    /// leaves those fields at their defaults). Where a mesh lists a service twice, the first one
    /// wins; where two services claim one cluster IP, the one whose name sorts first.
    pub fn build(mesh: &Mesh, cluster_domain: &str) -> (Self, Vec<(ServiceName, AnnotationError)>) {
        let mut builder = Builder::new(cluster_domain);
        let update = builder.full(mesh.clone(), Instant::now());
        let mut index = Self::empty(cluster_domain);
        index.apply(&update);
        (index, update.errors)
    }

    /// Takes an update in: a few inserts and removals.
    pub fn apply(&mut self, update: &Update) {
        if let Some(td) = &update.trust_domain {
            self.trust_domain.clone_from(td);
        }
        for (name, entry) in &update.services {
            match entry {
                Some(e) => self.by_name.insert(name.clone(), e.clone()),
                None => self.by_name.remove(name),
            };
        }
        for (ip, entry) in &update.ips {
            match entry {
                Some(e) => self.by_ip.insert(*ip, e.clone()),
                None => self.by_ip.remove(ip),
            };
        }
        for (w, policy) in &update.inbound {
            match policy {
                Some(p) => self.inbound.insert(w.clone(), p.clone()),
                None => self.inbound.remove(w),
            };
        }
        self.counts = update.counts;
    }

    pub fn cluster_domain(&self) -> &str {
        &self.cluster_domain
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// What `authority` names for a proxy in `client_namespace`.
    pub fn resolve(&self, authority: &Authority, client_namespace: &str) -> Resolution {
        match topic(authority, &self.cluster_domain, client_namespace) {
            Some((topic, port)) => self.resolve_topic(&topic, port),
            None => Resolution::NotFound(pb::not_found::Reason::DoesNotExist),
        }
    }

    /// What a topic names at `port`.
    pub fn resolve_topic(&self, topic: &Topic, port: u16) -> Resolution {
        let entry = match topic {
            Topic::Service(name) => self.by_name.get(name),
            Topic::Ip(ip) => self.by_ip.get(ip),
            Topic::Workload(_) => None,
        };
        match entry.and_then(|e| e.ports.get(&port)) {
            None => Resolution::NotFound(pb::not_found::Reason::DoesNotExist),
            Some(s) if s.service.endpoints.is_empty() => Resolution::NotFound(pb::not_found::Reason::NoEndpoints),
            Some(s) => Resolution::Service(s.clone()),
        }
    }

    /// The inbound policy of a workload (`version` left at 0); a workload the mesh does not list
    /// gets the defaults.
    pub fn inbound(&self, namespace: &str, workload: &str) -> pb::InboundPolicy {
        self.inbound_of(&workload_key(namespace, workload)).map(|p| (**p).clone()).unwrap_or_default()
    }

    /// [`Index::inbound`] by key; `None` means the defaults.
    pub fn inbound_of(&self, key: &WorkloadRef) -> Option<&Arc<pb::InboundPolicy>> {
        self.inbound.get(key)
    }
}

/// A change as the index takes it: the entries to replace (`None`: remove), the topics whose
/// answers changed, and the annotation problems not reported before.
#[derive(Debug, Default)]
pub struct Update {
    trust_domain: Option<String>,
    services: Vec<(ServiceName, Option<Arc<ServiceEntry>>)>,
    ips: Vec<(IpAddr, Option<Arc<ServiceEntry>>)>,
    inbound: Vec<(WorkloadRef, Option<Arc<pb::InboundPolicy>>)>,
    counts: Counts,
    /// Whose answers changed: wake the streams subscribed to these.
    pub topics: Vec<Topic>,
    /// Bad annotations of the services this update rebuilt, each reported once while it lasts.
    pub errors: Vec<(ServiceName, AnnotationError)>,
}

impl Update {
    /// Whether the index changes at all.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.trust_domain.is_none()
    }

    pub fn counts(&self) -> Counts {
        self.counts
    }
}

/// The publisher's side: the mesh model, and a mirror of what the index holds, so that a change is
/// compared and built without reading the index.
#[derive(Debug, Default)]
pub struct Builder {
    cluster_domain: String,
    trust_domain: String,
    services: HashMap<ServiceName, Service>,
    workloads: HashMap<WorkloadRef, Workload>,
    /// Workload → the services whose endpoints name it (identity and opaque ports follow it). A
    /// list, not a set: nearly always one service, and a cluster has a workload per pod.
    referenced_by: HashMap<WorkloadRef, Vec<ServiceName>>,
    /// Cluster IP → the services that claim it (a broken source may give one IP twice).
    ip_claims: HashMap<IpAddr, BTreeSet<ServiceName>>,
    entries: HashMap<ServiceName, Arc<ServiceEntry>>,
    by_ip: HashMap<IpAddr, Arc<ServiceEntry>>,
    inbound: HashMap<WorkloadRef, Arc<pb::InboundPolicy>>,
    /// Annotation problems already reported, per service.
    errors: HashMap<ServiceName, Vec<AnnotationError>>,
    endpoints: usize,
}

/// What a change touched, to rebuild.
#[derive(Default)]
struct Dirty {
    services: HashSet<ServiceName>,
    ips: HashSet<IpAddr>,
    workloads: HashSet<WorkloadRef>,
}

impl Builder {
    pub fn new(cluster_domain: &str) -> Self {
        Self { cluster_domain: cluster_domain.to_string(), ..Self::default() }
    }

    /// Replaces the whole mesh; only what differs from the current one is rebuilt.
    pub fn full(&mut self, mesh: Mesh, changed_at: Instant) -> Update {
        let mut dirty = Dirty::default();
        let trust_domain_changed = mesh.trust_domain != self.trust_domain;
        let mut services: HashMap<ServiceName, Service> = HashMap::with_capacity(mesh.services.len());
        for s in mesh.services {
            services.entry(ServiceName::new(&s.namespace, &s.name)).or_insert(s);
        }
        let mut workloads: HashMap<WorkloadRef, Workload> = HashMap::with_capacity(mesh.workloads.len());
        for w in mesh.workloads {
            workloads.entry(workload_key(&w.namespace, &w.name)).or_insert(w);
        }
        for (name, s) in differences(&self.services, services) {
            self.set_service(name, s, &mut dirty);
        }
        for (key, w) in differences(&self.workloads, workloads) {
            self.set_workload(key, w, &mut dirty);
        }
        let mut update = Update::default();
        if trust_domain_changed {
            self.trust_domain.clone_from(&mesh.trust_domain);
            update.trust_domain = Some(mesh.trust_domain);
            // Every meshed endpoint's identity names the trust domain.
            dirty.services.extend(self.services.keys().cloned());
        }
        self.finish(dirty, changed_at, update)
    }

    /// Sets and removes the services and workloads a source says changed.
    pub fn apply(&mut self, change: Change, changed_at: Instant) -> Update {
        let mut dirty = Dirty::default();
        for (name, s) in change.services {
            let name = ServiceName::new(&name.namespace, &name.name);
            if self.services.get(&name) != s.as_ref() {
                self.set_service(name, s, &mut dirty);
            }
        }
        for (key, w) in change.workloads {
            let key = workload_key(&key.namespace, &key.name);
            if self.workloads.get(&key) != w.as_ref() {
                self.set_workload(key, w, &mut dirty);
            }
        }
        self.finish(dirty, changed_at, Update::default())
    }

    fn set_service(&mut self, name: ServiceName, new: Option<Service>, dirty: &mut Dirty) {
        if let Some(old) = self.services.remove(&name) {
            self.account(&name, &old, false, dirty);
        }
        if let Some(s) = new {
            self.account(&name, &s, true, dirty);
            self.services.insert(name.clone(), s);
        }
        dirty.services.insert(name);
    }

    /// Adds (`claim`) or takes away what a service's endpoints and cluster IPs refer to.
    fn account(&mut self, name: &ServiceName, s: &Service, claim: bool, dirty: &mut Dirty) {
        if claim {
            self.endpoints += s.endpoints.len();
        } else {
            self.endpoints -= s.endpoints.len();
        }
        for w in s.endpoints.iter().filter_map(|e| e.workload.as_ref()) {
            let key = workload_key(&w.namespace, &w.name);
            if claim {
                let names = self.referenced_by.entry(key.clone()).or_default();
                if !names.contains(name) {
                    names.push(name.clone());
                }
            } else if let Some(names) = self.referenced_by.get_mut(&key) {
                names.retain(|n| n != name);
                if names.is_empty() {
                    self.referenced_by.remove(&key);
                }
            }
            // Its inbound policy lists the ports the service reaches it at (and which are opaque).
            dirty.workloads.insert(key);
        }
        for ip in &s.cluster_ips {
            if claim {
                self.ip_claims.entry(*ip).or_default().insert(name.clone());
            } else if let Some(names) = self.ip_claims.get_mut(ip) {
                names.remove(name);
                if names.is_empty() {
                    self.ip_claims.remove(ip);
                }
            }
            dirty.ips.insert(*ip);
        }
    }

    fn set_workload(&mut self, key: WorkloadRef, new: Option<Workload>, dirty: &mut Dirty) {
        match new {
            Some(w) => self.workloads.insert(key.clone(), w),
            None => self.workloads.remove(&key),
        };
        if let Some(names) = self.referenced_by.get(&key) {
            dirty.services.extend(names.iter().cloned());
        }
        dirty.workloads.insert(key);
    }

    /// Rebuilds what is dirty and keeps only what really changed.
    fn finish(&mut self, mut dirty: Dirty, changed_at: Instant, mut update: Update) -> Update {
        for name in dirty.services {
            let built = self.services.get(&name).map(|s| {
                let (policy, problems) = policy::from_annotations(&s.annotations);
                let ports = s
                    .ports
                    .iter()
                    .map(|port| (port.port, Arc::new(PortSnapshot::new(self.port_snapshot(s, port, &policy), changed_at))))
                    .collect();
                (ServiceEntry { ports }, problems)
            });
            let (entry, problems) = match built {
                Some((entry, problems)) => (Some(entry), problems),
                None => (None, Vec::new()),
            };
            let reported = self.errors.get(&name).map_or(&[][..], Vec::as_slice);
            update.errors.extend(problems.iter().filter(|p| !reported.contains(p)).map(|p| (name.clone(), p.clone())));
            if problems.is_empty() {
                self.errors.remove(&name);
            } else {
                self.errors.insert(name.clone(), problems);
            }
            let same = match (&entry, self.entries.get(&name)) {
                (Some(new), Some(old)) => new.same_as(old),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            if let Some(s) = self.services.get(&name) {
                dirty.ips.extend(s.cluster_ips.iter().copied());
            }
            let entry = entry.map(Arc::new);
            match &entry {
                Some(e) => self.entries.insert(name.clone(), e.clone()),
                None => self.entries.remove(&name),
            };
            update.services.push((name.clone(), entry));
            update.topics.push(Topic::Service(name));
        }
        for ip in dirty.ips {
            let owner = self.ip_claims.get(&ip).and_then(|names| names.first()).and_then(|n| self.entries.get(n)).cloned();
            let same = match (&owner, self.by_ip.get(&ip)) {
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            match &owner {
                Some(e) => self.by_ip.insert(ip, e.clone()),
                None => self.by_ip.remove(&ip),
            };
            update.ips.push((ip, owner));
            update.topics.push(Topic::Ip(ip));
        }
        for key in dirty.workloads {
            // The default policy is not stored: `Index::inbound` answers it for any workload it
            // does not know, and most workloads have it.
            let policy = self.workloads.get(&key).map(|w| self.inbound_policy(&key, w)).filter(|p| *p != pb::InboundPolicy::default());
            let same = match (&policy, self.inbound.get(&key)) {
                (Some(a), Some(b)) => a == &**b,
                (None, None) => true,
                _ => false,
            };
            if same {
                continue;
            }
            let policy = policy.map(Arc::new);
            match &policy {
                Some(p) => self.inbound.insert(key.clone(), p.clone()),
                None => self.inbound.remove(&key),
            };
            update.inbound.push((key.clone(), policy));
            update.topics.push(Topic::Workload(key));
        }
        update.counts = Counts { services: self.services.len(), endpoints: self.endpoints, workloads: self.workloads.len() };
        update
    }

    fn port_snapshot(&self, service: &Service, port: &ServicePort, policy: &pb::Policy) -> pb::Service {
        let mut endpoints: Vec<pb::Endpoint> = service
            .endpoints
            .iter()
            .filter_map(|e| {
                let address = target_address(e, port)?;
                let workload = e.workload.as_ref().and_then(|r| self.workloads.get(&workload_key(&r.namespace, &r.name)));
                let identity = match (e.proxy, workload) {
                    (Some(_), Some(w)) => spiffe_id(&self.trust_domain, w),
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
            fqdn: format!("{}.{}.svc.{}", service.name, service.namespace, self.cluster_domain.trim_end_matches('.')),
            cluster_ips: service.cluster_ips.iter().map(|ip| ip.to_string()).collect(),
            port: u32::from(port.port),
            protocol: proto_protocol(port.protocol) as i32,
            endpoints,
            routes: Vec::new(),
            policy: Some(policy.clone()),
        }
    }

    /// A workload's inbound policy: its declared opaque ports plus the ports at which it serves an
    /// opaque service port (so a server-speaks-first protocol is never held up by detection).
    fn inbound_policy(&self, key: &WorkloadRef, w: &Workload) -> pb::InboundPolicy {
        let mut opaque: BTreeSet<u32> = w.opaque_ports.iter().map(|&p| u32::from(p)).collect();
        let mut served = BTreeSet::new();
        for s in self.referenced_by.get(key).into_iter().flatten().filter_map(|name| self.services.get(name)) {
            for port in &s.ports {
                let mine = s.endpoints.iter().filter(|e| e.workload.as_ref().is_some_and(|r| workload_key(&r.namespace, &r.name) == *key));
                let ports: Vec<u32> = mine.filter_map(|e| target_address(e, port)).map(|a| u32::from(a.port())).collect();
                if port.protocol == Protocol::Opaque {
                    opaque.extend(&ports);
                }
                served.extend(ports);
            }
        }
        let mode = match w.inbound_mode {
            InboundMode::Permissive => pb::inbound_policy::Mode::Permissive,
            InboundMode::Strict => pb::inbound_policy::Mode::Strict,
        };
        pb::InboundPolicy {
            version: 0,
            opaque_ports: opaque.into_iter().collect(),
            mode: mode as i32,
            ports: served.into_iter().collect(),
        }
    }
}

/// What turns `old` into `new`: the keys `new` lacks (`None`), then the entries it holds
/// differently or newly.
fn differences<K: Eq + std::hash::Hash + Clone, V: PartialEq>(old: &HashMap<K, V>, new: HashMap<K, V>) -> Vec<(K, Option<V>)> {
    let mut out: Vec<(K, Option<V>)> = old.keys().filter(|k| !new.contains_key(*k)).map(|k| (k.clone(), None)).collect();
    out.extend(new.into_iter().filter(|(k, v)| old.get(k) != Some(v)).map(|(k, v)| (k, Some(v))));
    out
}

/// A workload's key in the index (names are case-insensitive).
pub fn workload_key(namespace: &str, name: &str) -> WorkloadRef {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{authority::parse, mesh_file};
    use crate::model::Change;
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

    fn model() -> Mesh {
        mesh_file::to_model(&MeshFile::parse(MESH).unwrap()).unwrap()
    }

    fn name(ns: &str, n: &str) -> ServiceName {
        ServiceName::new(ns, n)
    }

    /// Every answer the index gives for the test mesh's authorities and workloads.
    fn answers(i: &Index) -> Vec<String> {
        let mut out: Vec<String> = ["orders.demo:8080", "orders.demo:9090", "10.96.0.20:8080", "10.96.0.21:8080", "db.data:3306", "empty.demo:80"]
            .iter()
            .map(|a| match resolve(i, a, "") {
                Resolution::Service(s) => format!("{a} {:?}", s.service()),
                other => format!("{a} {other:?}"),
            })
            .collect();
        out.extend(["orders-v1", "db-0"].iter().map(|w| format!("{w} {:?}", (i.inbound("demo", w), i.inbound("data", w)))));
        out
    }

    #[test]
    fn changes_applied_one_by_one_give_the_index_a_whole_build_gives() {
        let start = model();
        let mut builder = Builder::new("cluster.local");
        let mut index = Index::empty("cluster.local");
        index.apply(&builder.full(start.clone(), Instant::now()));

        // Move orders' endpoints, make db's workload strict-less and renamed account, add a
        // service on orders' IP and drop the empty one.
        let mut end = start.clone();
        end.services[0].endpoints.truncate(1);
        end.services[0].endpoints[0].address = "127.0.0.7:18081".parse().unwrap();
        end.services[1].endpoints[0].address = "127.0.0.9:3308".parse().unwrap();
        end.workloads[0].service_account = "orders-sa".into();
        end.services.pop();
        let mut twin = end.services[0].clone();
        (twin.name, twin.cluster_ips) = ("twin".into(), vec!["10.96.0.21".parse().unwrap()]);
        end.services.push(twin.clone());

        let changes = [
            Change { services: vec![(name("demo", "orders"), Some(end.services[0].clone()))], workloads: vec![] },
            Change {
                services: vec![(name("data", "db"), Some(end.services[1].clone())), (name("demo", "empty"), None)],
                workloads: vec![(WorkloadRef { namespace: "demo".into(), name: "orders-v1".into() }, Some(end.workloads[0].clone()))],
            },
            Change { services: vec![(name("demo", "twin"), Some(twin))], workloads: vec![] },
        ];
        let mut topics = Vec::new();
        for change in changes {
            let update = builder.apply(change, Instant::now());
            topics.extend(update.topics.iter().cloned());
            index.apply(&update);
        }
        let (whole, _) = Index::build(&end, "cluster.local");
        assert_eq!(answers(&index), answers(&whole));
        assert_eq!(index.counts(), whole.counts());
        assert!(topics.contains(&Topic::Ip("10.96.0.20".parse().unwrap())));
        assert!(topics.contains(&Topic::Workload(workload_key("data", "db-0"))), "db-0's opaque port moved with its endpoint");
        assert!(!topics.contains(&Topic::Workload(workload_key("demo", "orders-v1"))), "orders-v1's policy did not change");
        let orders = service(resolve(&index, "orders.demo:8080", ""));
        assert_eq!(orders.endpoints[0].identity, "spiffe://example.org/ns/demo/sa/orders-sa");
        assert_eq!(index.inbound("data", "db-0").opaque_ports, [3308]);
    }

    #[test]
    fn an_unchanged_service_keeps_its_snapshot_and_wakes_nobody() {
        let mut builder = Builder::new("cluster.local");
        let mut index = Index::empty("cluster.local");
        index.apply(&builder.full(model(), Instant::now()));
        let before = resolve(&index, "orders.demo:8080", "");
        let update = builder.full(model(), Instant::now());
        assert!(update.is_empty(), "{update:?}");
        let mut m = model();
        m.services[1].endpoints[0].zone = Some("z9".into());
        let update = builder.full(m, Instant::now());
        assert_eq!(update.topics, [Topic::Service(name("data", "db"))]);
        index.apply(&update);
        match (before, resolve(&index, "orders.demo:8080", "")) {
            (Resolution::Service(a), Resolution::Service(b)) => assert!(Arc::ptr_eq(&a, &b)),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn two_services_on_one_ip_the_first_name_wins_until_it_goes() {
        let mut m = model();
        let mut other = m.services[0].clone();
        other.name = "aaa".into();
        other.endpoints.truncate(1);
        m.services.push(other);
        let mut builder = Builder::new("cluster.local");
        let mut index = Index::empty("cluster.local");
        index.apply(&builder.full(m, Instant::now()));
        assert_eq!(service(resolve(&index, "10.96.0.20:8080", "")).name, "aaa");
        index.apply(&builder.apply(Change { services: vec![(name("demo", "aaa"), None)], workloads: vec![] }, Instant::now()));
        assert_eq!(service(resolve(&index, "10.96.0.20:8080", "")).name, "orders");
    }

    /// What the index answers, in a comparable form: per name and per IP the encoded snapshot
    /// of each port, and the inbound policies.
    type View = (String, Counts, BTreeMap<String, Vec<(u16, Bytes)>>, BTreeMap<IpAddr, Vec<(u16, Bytes)>>, BTreeMap<WorkloadRef, pb::InboundPolicy>);

    fn view(index: &Index) -> View {
        let ports = |e: &ServiceEntry| e.ports.iter().map(|(p, s)| (*p, s.encoded.clone())).collect::<Vec<_>>();
        (
            index.trust_domain.clone(),
            index.counts,
            index.by_name.iter().map(|(n, e)| (format!("{}/{}", n.namespace, n.name), ports(e))).collect(),
            index.by_ip.iter().map(|(ip, e)| (*ip, ports(e))).collect(),
            index.inbound.iter().map(|(k, p)| (k.clone(), (**p).clone())).collect(),
        )
    }

    mod props {
        //! The incremental index against one built from scratch: whatever sequence of whole meshes
        //! or changes a source sends, the index answers as one built from the final mesh.
        use super::*;
        use proptest::{collection::vec, option, prelude::*, sample::select};

        fn ip(i: u8) -> IpAddr {
            IpAddr::from([10, 96, 0, i])
        }

        fn workload_ref() -> impl Strategy<Value = WorkloadRef> {
            (select(vec!["a", "b"]), select(vec!["w0", "w1", "w2"]))
                .prop_map(|(ns, n)| WorkloadRef { namespace: ns.into(), name: n.into() })
        }

        fn endpoint() -> impl Strategy<Value = Endpoint> {
            (1u8..4, select(vec![80u16, 81]), option::of(1u8..4), option::of(workload_ref()), option::of(1u32..3)).prop_map(
                |(host, port, proxy, workload, weight)| Endpoint {
                    address: SocketAddr::from(([127, 0, 0, host], port)),
                    proxy: proxy.map(|h| SocketAddr::from(([127, 0, 0, h], 7143))),
                    workload,
                    zone: None,
                    weight,
                    ports: BTreeMap::new(),
                },
            )
        }

        fn service() -> impl Strategy<Value = Service> {
            (
                select(vec!["a", "b"]),
                select(vec!["s0", "s1", "s2"]),
                vec(1u8..4, 0..2),
                vec((select(vec![80u16, 8080]), select(vec![Protocol::Detect, Protocol::Grpc, Protocol::Opaque]), option::of(select(vec![81u16]))), 0..3),
                option::of(select(vec!["3", "many"])),
                vec(endpoint(), 0..4),
            )
                .prop_map(|(ns, name, ips, ports, limit, endpoints)| Service {
                    name: name.into(),
                    namespace: ns.into(),
                    cluster_ips: ips.into_iter().map(ip).collect(),
                    ports: ports.into_iter().map(|(port, protocol, target_port)| ServicePort { port, protocol, target_port }).collect(),
                    annotations: limit.map(|l| ("retry.strait.io/limit".to_string(), l.to_string())).into_iter().collect(),
                    endpoints,
                })
        }

        fn workload() -> impl Strategy<Value = Workload> {
            (workload_ref(), select(vec!["sa0", "sa1"]), any::<bool>(), vec(select(vec![25u16, 3306]), 0..2)).prop_map(
                |(r, sa, strict, opaque_ports)| Workload {
                    name: r.name,
                    namespace: r.namespace,
                    service_account: sa.into(),
                    inbound_mode: if strict { InboundMode::Strict } else { InboundMode::Permissive },
                    opaque_ports,
                },
            )
        }

        fn mesh() -> impl Strategy<Value = Mesh> {
            (select(vec!["a.org", "b.org"]), vec(service(), 0..5), vec(workload(), 0..4)).prop_map(|(td, services, workloads)| Mesh {
                trust_domain: td.into(),
                services,
                workloads,
            })
        }

        /// One change: a service or workload set (`Some`) or removed (`None`).
        #[derive(Debug, Clone)]
        enum Step {
            Service(Service, bool),
            Workload(Workload, bool),
        }

        fn step() -> impl Strategy<Value = Step> {
            prop_oneof![
                (service(), any::<bool>()).prop_map(|(s, set)| Step::Service(s, set)),
                (workload(), any::<bool>()).prop_map(|(w, set)| Step::Workload(w, set)),
            ]
        }

        fn from_scratch(mesh: &Mesh) -> View {
            view(&Index::build(mesh, "cluster.local").0)
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            #[test]
            fn whole_meshes_in_sequence_answer_as_the_last_one_built_from_scratch(meshes in vec(mesh(), 1..5)) {
                let mut builder = Builder::new("cluster.local");
                let mut index = Index::empty("cluster.local");
                for m in &meshes {
                    index.apply(&builder.full(m.clone(), Instant::now()));
                }
                prop_assert_eq!(view(&index), from_scratch(meshes.last().unwrap()));
                // The same mesh again changes nothing.
                let again = builder.full(meshes.last().unwrap().clone(), Instant::now());
                prop_assert!(again.is_empty());
            }

            #[test]
            fn changes_answer_as_the_resulting_mesh_built_from_scratch(start in mesh(), steps in vec(step(), 1..12)) {
                let mut builder = Builder::new("cluster.local");
                let mut index = Index::empty("cluster.local");
                index.apply(&builder.full(start.clone(), Instant::now()));
                // The mesh the changes lead to: first occurrence wins in a whole mesh, as in the builder.
                let mut services: BTreeMap<ServiceName, Service> = BTreeMap::new();
                for s in start.services {
                    services.entry(ServiceName::new(&s.namespace, &s.name)).or_insert(s);
                }
                let mut workloads: BTreeMap<WorkloadRef, Workload> = BTreeMap::new();
                for w in start.workloads {
                    workloads.entry(workload_key(&w.namespace, &w.name)).or_insert(w);
                }
                for step in steps {
                    let change = match step {
                        Step::Service(s, set) => {
                            let key = ServiceName::new(&s.namespace, &s.name);
                            let value = set.then_some(s);
                            match &value {
                                Some(s) => services.insert(key.clone(), s.clone()),
                                None => services.remove(&key),
                            };
                            Change { services: vec![(key, value)], workloads: vec![] }
                        }
                        Step::Workload(w, set) => {
                            let key = workload_key(&w.namespace, &w.name);
                            let value = set.then_some(w);
                            match &value {
                                Some(w) => workloads.insert(key.clone(), w.clone()),
                                None => workloads.remove(&key),
                            };
                            Change { services: vec![], workloads: vec![(key, value)] }
                        }
                    };
                    index.apply(&builder.apply(change, Instant::now()));
                }
                let end = Mesh {
                    trust_domain: start.trust_domain,
                    services: services.into_values().collect(),
                    workloads: workloads.into_values().collect(),
                };
                prop_assert_eq!(view(&index), from_scratch(&end));
            }
        }
    }
}
