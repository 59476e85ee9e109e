//! Discovery: the one interface through which the data path learns what an authority names.
//!
//! An authority (`orders.demo:8080`, a cluster IP and port) resolves to a [`ServiceProfile`]: the
//! service's endpoints with their sidecars' addresses and identities, its protocol and its policy.
//! Sources fill one [`Table`]: a static mesh file now, the controller's gRPC stream later; the
//! data path never knows which.

pub mod profile;
pub mod remote;
pub mod static_file;

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, RwLock},
};

pub use profile::{Endpoint, ServiceProfile};

/// Discovery has not answered about a destination within `STRAIT_DISCOVERY_WAIT` (the controller
/// is unreachable, or has not answered since start-up). The data path fails closed on it: a
/// destination it cannot place is never assumed to be outside the mesh.
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("discovery has not answered in time (STRAIT_DISCOVERY_WAIT)")]
pub struct Unavailable;

/// Answers "what does this authority name?": from a table a static source fills, or from the
/// controller, asked on demand.
#[derive(Clone, Default)]
pub struct Discovery {
    table: Arc<RwLock<Table>>,
    remote: Option<Arc<remote::Client>>,
}

/// Profiles by every authority form that names them.
#[derive(Default)]
pub struct Table {
    /// `host:port`, host lower-case, for every accepted name form.
    by_name: HashMap<String, Arc<ServiceProfile>>,
    by_addr: HashMap<SocketAddr, Arc<ServiceProfile>>,
    /// The services this proxy's own workload serves, by the workload's port: what the inbound
    /// side labels its requests with (never the `Host` a client wrote).
    by_local_port: HashMap<u16, Arc<ServiceProfile>>,
}

impl Table {
    pub fn insert_name(&mut self, authority: String, profile: Arc<ServiceProfile>) {
        self.by_name.insert(authority, profile);
    }

    pub fn insert_addr(&mut self, addr: SocketAddr, profile: Arc<ServiceProfile>) {
        self.by_addr.insert(addr, profile);
    }

    /// Records that the proxy's own workload serves `profile` on `port`; the first service named
    /// for a port keeps it (two Services selecting one container port are one set of requests).
    pub fn insert_local(&mut self, port: u16, profile: Arc<ServiceProfile>) {
        self.by_local_port.entry(port).or_insert(profile);
    }

    pub fn len(&self) -> usize {
        self.by_name.len() + self.by_addr.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Discovery {
    pub fn new() -> Self {
        Self::default()
    }

    /// Discovery from the controller at `addr`; spawn the returned task.
    pub fn remote(
        addr: String,
        who: remote::Identity,
        metrics: crate::metrics::Metrics,
        dns: crate::dns::Dns,
        first_answer_timeout: std::time::Duration,
        max_subscriptions: usize,
    ) -> (Self, impl Future<Output = ()> + Send + 'static) {
        let (client, task) = remote::Client::new(addr, who, metrics, dns, first_answer_timeout, max_subscriptions);
        (Discovery { table: Arc::default(), remote: Some(client) }, task)
    }

    pub fn remote_client(&self) -> Option<&Arc<remote::Client>> {
        self.remote.as_ref()
    }

    /// Resolves an HTTP authority (`host[:port]`).
    pub async fn resolve(&self, authority: &str) -> Result<Option<Arc<ServiceProfile>>, Unavailable> {
        match &self.remote {
            None => Ok(self.resolve_authority(authority)),
            Some(r) => {
                if is_normal(authority) {
                    r.resolve(authority).await
                } else {
                    match normalize_authority(authority) {
                        Some(a) => r.resolve(&a).await,
                        None => Ok(None),
                    }
                }
            }
        }
    }

    /// Resolves a connection's original destination (a Service's cluster IP and port).
    pub async fn resolve_dst(&self, addr: SocketAddr) -> Result<Option<Arc<ServiceProfile>>, Unavailable> {
        match &self.remote {
            None => Ok(self.resolve_addr(addr)),
            Some(r) => r.resolve(&addr.to_string()).await,
        }
    }

    /// Replaces the whole table (a static source's reload).
    pub fn replace(&self, table: Table) {
        match self.table.write() {
            Ok(mut t) => *t = table,
            Err(poisoned) => *poisoned.into_inner() = table,
        }
    }

    /// Resolves an HTTP authority (`host[:port]`). No allocation when the authority is already in
    /// normal form (lower-case host with a port), which is what clients send.
    pub fn resolve_authority(&self, authority: &str) -> Option<Arc<ServiceProfile>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = table.by_name.get(authority) {
            return Some(p.clone());
        }
        if let Ok(addr) = authority.parse::<SocketAddr>() {
            return table.by_addr.get(&addr).cloned();
        }
        let normal = normalize_authority(authority)?;
        if let Some(p) = table.by_name.get(&normal) {
            return Some(p.clone());
        }
        normal.parse::<SocketAddr>().ok().and_then(|a| table.by_addr.get(&a).cloned())
    }

    /// The service the proxy's own workload serves on its `port`, when discovery says: the mesh file
    /// does; the controller's inbound policy does not carry it yet, so with a controller the
    /// inbound side's requests are labelled `unknown`.
    pub fn local_service(&self, port: u16) -> Option<Arc<ServiceProfile>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.by_local_port.get(&port).cloned()
    }

    /// Resolves a connection's original destination (a Service's cluster IP and port).
    pub fn resolve_addr(&self, addr: SocketAddr) -> Option<Arc<ServiceProfile>> {
        let table = self.table.read().unwrap_or_else(|p| p.into_inner());
        table.by_addr.get(&addr).cloned()
    }
}

fn is_normal(authority: &str) -> bool {
    authority.rsplit_once(':').is_some_and(|(h, p)| {
        !h.is_empty() && !h.ends_with('.') && !h.bytes().any(|b| b.is_ascii_uppercase()) && p.parse::<u16>().is_ok()
    })
}

/// Lower-case host, trailing dot removed, port made explicit (80 when absent).
pub fn normalize_authority(authority: &str) -> Option<String> {
    let authority = authority.trim();
    if authority.is_empty() {
        return None;
    }
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, _)) if !h.ends_with(']') && h.contains(':') => (authority, 80), // bare IPv6
        Some((h, p)) => (h, p.parse::<u16>().ok()?),
        None => (authority, 80),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    Some(format!("{host}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalizes() {
        assert_eq!(normalize_authority("Orders.Demo.").as_deref(), Some("orders.demo:80"));
        assert_eq!(normalize_authority("orders.demo:8080").as_deref(), Some("orders.demo:8080"));
        assert_eq!(normalize_authority("[::1]:8080").as_deref(), Some("[::1]:8080"));
        assert_eq!(normalize_authority("a:xx"), None);
    }
}
