//! What an authority resolves to, parsed once when discovery delivers it so the data path never
//! parses addresses or policy per request.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use strait_proto::discovery::v1 as pb;

#[derive(Debug)]
pub struct ServiceProfile {
    pub name: Arc<str>,
    pub namespace: Arc<str>,
    /// The authority used as a metric label: `name.namespace:port`.
    pub authority: Arc<str>,
    pub port: u16,
    pub protocol: pb::Protocol,
    pub endpoints: Arc<[Endpoint]>,
    pub policy: pb::Policy,
    /// Round-robin cursor until the balancer stage replaces it.
    next: AtomicUsize,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Endpoint {
    /// The application's own listener.
    pub addr: SocketAddr,
    /// The endpoint's sidecar inbound listener, when meshed.
    pub proxy: Option<SocketAddr>,
    /// The identity its sidecar must present.
    pub identity: Option<Arc<str>>,
    pub weight: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum ProfileError {
    #[error("endpoint address {0:?} is not ip:port")]
    Address(String),
    #[error("endpoint proxy address {0:?} is not ip:port")]
    ProxyAddress(String),
}

impl ServiceProfile {
    pub fn from_proto(svc: &pb::Service) -> Result<Self, ProfileError> {
        let mut endpoints = Vec::with_capacity(svc.endpoints.len());
        for e in &svc.endpoints {
            let addr = e.address.parse().map_err(|_| ProfileError::Address(e.address.clone()))?;
            let proxy = if e.proxy_address.is_empty() {
                None
            } else {
                Some(e.proxy_address.parse().map_err(|_| ProfileError::ProxyAddress(e.proxy_address.clone()))?)
            };
            endpoints.push(Endpoint {
                addr,
                proxy,
                identity: (!e.identity.is_empty()).then(|| Arc::from(e.identity.as_str())),
                weight: e.weight.max(1),
            });
        }
        Ok(ServiceProfile {
            name: Arc::from(svc.name.as_str()),
            namespace: Arc::from(svc.namespace.as_str()),
            authority: Arc::from(format!("{}.{}:{}", svc.name, svc.namespace, svc.port)),
            port: svc.port as u16,
            protocol: svc.protocol(),
            endpoints: endpoints.into(),
            policy: svc.policy.clone().unwrap_or_default(),
            next: AtomicUsize::new(0),
        })
    }

    /// Whether `other` says the same (a controller sending an authority again after a reconnection).
    pub fn same_as(&self, other: &ServiceProfile) -> bool {
        self.name == other.name
            && self.namespace == other.namespace
            && self.port == other.port
            && self.protocol == other.protocol
            && self.endpoints == other.endpoints
            && self.policy == other.policy
    }

    pub fn is_opaque(&self) -> bool {
        self.protocol == pb::Protocol::Opaque
    }

    /// Picks the next endpoint, round robin.
    pub fn pick(&self) -> Option<&Endpoint> {
        if self.endpoints.is_empty() {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.endpoints.len();
        self.endpoints.get(i)
    }
}
