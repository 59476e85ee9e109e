//! The mesh as the controller sees it, whatever it was read from: services with their ports and
//! endpoints, and the workloads that may hold an identity.
//!
//! Sources hand the [`crate::store`] either a whole [`Mesh`] (the mesh file, a Kubernetes re-list)
//! or a [`Change`] to a few services and workloads (a Kubernetes watch event); nothing downstream
//! knows where it came from.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr};

/// Services and workloads set (`Some`) or removed (`None`), by key; what is not named stays.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Change {
    pub services: Vec<(crate::authority::ServiceName, Option<Service>)>,
    pub workloads: Vec<(WorkloadRef, Option<Workload>)>,
}

impl Change {
    pub fn is_empty(&self) -> bool {
        self.services.is_empty() && self.workloads.is_empty()
    }
}

/// Everything discovery serves.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Mesh {
    /// SPIFFE trust domain of the workloads' identities.
    pub trust_domain: String,
    pub services: Vec<Service>,
    pub workloads: Vec<Workload>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    pub name: String,
    pub namespace: String,
    pub cluster_ips: Vec<IpAddr>,
    pub ports: Vec<ServicePort>,
    /// The Service's annotations; policy is read from them (DESIGN §5).
    pub annotations: BTreeMap<String, String>,
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServicePort {
    pub port: u16,
    pub protocol: Protocol,
    /// The endpoints' port for this service port, when it differs from the endpoint's own.
    pub target_port: Option<u16>,
}

/// What a service port speaks, as far as the proxy needs to know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    /// HTTP/1, HTTP/2 or opaque, detected from the first bytes.
    Detect,
    Http2,
    Grpc,
    /// Forwarded as TCP without detection (server-speaks-first protocols).
    Opaque,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// The application's own listener.
    pub address: SocketAddr,
    /// The endpoint's sidecar inbound listener; `None` when the endpoint is not meshed.
    pub proxy: Option<SocketAddr>,
    /// The workload (pod) behind the endpoint, when known.
    pub workload: Option<WorkloadRef>,
    pub zone: Option<String>,
    pub weight: Option<u32>,
    /// The endpoint's own port per service port, for sources that know it per endpoint (Kubernetes:
    /// an EndpointSlice's ports, named target ports resolved per pod). When not empty, the endpoint
    /// serves exactly the service ports listed here, at `address`'s IP; when empty, it serves every
    /// port of its service at `address` (or at the port's `target_port`).
    pub ports: BTreeMap<u16, u16>,
}

/// Names a workload: its namespace and name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct WorkloadRef {
    pub namespace: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Workload {
    pub name: String,
    pub namespace: String,
    pub service_account: String,
    pub inbound_mode: InboundMode,
    /// Ports of the workload that are opaque on its inbound side.
    pub opaque_ports: Vec<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InboundMode {
    /// Plain-text connections are accepted next to mTLS ones.
    #[default]
    Permissive,
    /// Only mTLS from meshed peers.
    Strict,
}

impl Mesh {
    /// How many objects of each kind the mesh holds: (services, endpoints, workloads).
    pub fn counts(&self) -> (usize, usize, usize) {
        let endpoints = self.services.iter().map(|s| s.endpoints.len()).sum();
        (self.services.len(), endpoints, self.workloads.len())
    }
}
