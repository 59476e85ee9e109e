//! Name resolution with hickory-resolver, for destinations outside the mesh (passthrough by name)
//! and for the controller's address. It reads the system configuration (`/etc/resolv.conf`,
//! `/etc/hosts`) once, caches answers for their TTL, and never blocks a runtime thread (unlike
//! `getaddrinfo`, which tokio must run on its blocking pool).

use std::{
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use hickory_resolver::TokioResolver;

#[derive(Clone)]
pub struct Dns {
    resolver: Option<Arc<TokioResolver>>,
}

impl Dns {
    /// From the system configuration. Without one (a sealed test namespace, a minimal image),
    /// only IP literals resolve, which is reported once here.
    pub fn from_system() -> Self {
        match TokioResolver::builder_tokio().and_then(|b| b.build()) {
            Ok(r) => Dns { resolver: Some(Arc::new(r)) },
            Err(e) => {
                tracing::warn!(error = %e, "no DNS configuration; only IP addresses resolve");
                Dns { resolver: None }
            }
        }
    }

    /// `host:port` (port 80 when absent) to one address.
    pub async fn resolve(&self, authority: &str) -> std::io::Result<SocketAddr> {
        let (host, port) = split(authority)?;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, port));
        }
        let not_found = || std::io::Error::new(std::io::ErrorKind::NotFound, format!("{host} has no address"));
        let Some(r) = &self.resolver else { return Err(not_found()) };
        let ips = r
            .lookup_ip(host)
            .await
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::NotFound, format!("resolving {host}: {e}")))?;
        ips.iter().next().map(|ip| SocketAddr::new(ip, port)).ok_or_else(not_found)
    }
}

/// A gRPC endpoint for a control-plane address (`host:port`): connects to the address the name
/// resolves to now, and keeps the name as the request authority.
pub async fn grpc_endpoint(dns: &Dns, addr: &str, connect_timeout: std::time::Duration) -> std::io::Result<tonic::transport::Endpoint> {
    let bad = |e: &dyn std::fmt::Display| std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{addr:?}: {e}"));
    let resolved = dns.resolve(addr).await?;
    let origin: http::Uri = format!("http://{addr}").parse().map_err(|e| bad(&e))?;
    Ok(tonic::transport::Endpoint::from_shared(format!("http://{resolved}"))
        .map_err(|e| bad(&e))?
        .origin(origin)
        .connect_timeout(connect_timeout)
        .tcp_nodelay(true))
}

pub(crate) fn split(authority: &str) -> std::io::Result<(&str, u16)> {
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("{authority:?} is not host:port"));
    if let Some(rest) = authority.strip_prefix('[') {
        let (host, tail) = rest.split_once(']').ok_or_else(bad)?;
        let port = match tail.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None if tail.is_empty() => 80,
            None => return Err(bad()),
        };
        return Ok((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h, p.parse().map_err(|_| bad())?)),
        Some(_) => Ok((authority, 80)), // a bare IPv6 address
        None => Ok((authority, 80)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_and_hosts() {
        let d = Dns::from_system();
        assert_eq!(d.resolve("10.0.0.1:8080").await.unwrap(), "10.0.0.1:8080".parse().unwrap());
        assert_eq!(d.resolve("[::1]:81").await.unwrap(), "[::1]:81".parse().unwrap());
        assert_eq!(d.resolve("10.0.0.1").await.unwrap().port(), 80);
        assert!(d.resolve("x:notaport").await.is_err());
        // /etc/hosts is read: localhost resolves without a DNS server.
        assert!(d.resolve("localhost:80").await.unwrap().ip().is_loopback());
    }
}
