//! Authorities: the `host[:port]` strings proxies subscribe to, and which service names they mean.
//!
//! Accepted forms (DESIGN §9): `name.ns.svc.<cluster-domain>:port`, `name.ns.svc:port`,
//! `name.ns:port`, `name:port` from a proxy in the service's own namespace, and `<cluster IP>:port`.
//! Hosts are case-insensitive, a trailing dot is allowed, and a missing port means 80.

use std::net::{IpAddr, Ipv6Addr};

/// The port an authority without one names (HTTP's default).
pub const DEFAULT_PORT: u16 = 80;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthorityError {
    #[error("the authority is empty")]
    Empty,
    #[error("port {0:?} is not a number from 1 to 65535")]
    Port(String),
    #[error("host {0:?} is not a DNS name or an IP address")]
    Host(String),
}

/// What the host part of an authority is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Host {
    Ip(IpAddr),
    /// Lower-case, without a trailing dot.
    Name(String),
}

/// A parsed authority.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Authority {
    pub host: Host,
    pub port: u16,
}

/// A service's identity inside the mesh: its namespace and name (both lower-case).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: &str, name: &str) -> Self {
        Self { namespace: namespace.to_ascii_lowercase(), name: name.to_ascii_lowercase() }
    }
}

impl std::fmt::Display for ServiceName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.name, self.namespace)
    }
}

/// Parses `host[:port]`, where host is a DNS name, an IPv4 address or a bracketed IPv6 address
/// (a bare IPv6 address without a port is accepted too).
pub fn parse(authority: &str) -> Result<Authority, AuthorityError> {
    let authority = authority.trim();
    if authority.is_empty() {
        return Err(AuthorityError::Empty);
    }
    if let Ok(ip) = authority.parse::<Ipv6Addr>() {
        return Ok(Authority { host: Host::Ip(IpAddr::V6(ip)), port: DEFAULT_PORT });
    }
    let (host, port) = split_port(authority)?;
    if let Some(inner) = host.strip_prefix('[') {
        let ip = inner
            .strip_suffix(']')
            .and_then(|i| i.parse::<Ipv6Addr>().ok())
            .ok_or_else(|| AuthorityError::Host(host.to_string()))?;
        return Ok(Authority { host: Host::Ip(IpAddr::V6(ip)), port });
    }
    if let Ok(ip) = host.parse::<IpAddr>() {
        return Ok(Authority { host: Host::Ip(ip), port });
    }
    let name = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    if !is_dns_name(&name) {
        return Err(AuthorityError::Host(host.to_string()));
    }
    Ok(Authority { host: Host::Name(name), port })
}

fn split_port(authority: &str) -> Result<(&str, u16), AuthorityError> {
    if authority.starts_with('[') && authority.ends_with(']') {
        return Ok((authority, DEFAULT_PORT));
    }
    let Some((host, port)) = authority.rsplit_once(':') else {
        return Ok((authority, DEFAULT_PORT));
    };
    if host.contains(':') && !host.starts_with('[') {
        // An unbracketed IPv6 address followed by something that did not parse as one.
        return Err(AuthorityError::Host(authority.to_string()));
    }
    match port.parse::<u16>() {
        Ok(p) if p != 0 && port.bytes().all(|b| b.is_ascii_digit()) => Ok((host, p)),
        _ => Err(AuthorityError::Port(port.to_string())),
    }
}

fn is_dns_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// Which service a host name names, for a proxy in `client_namespace`. `None` when the name is not
/// one of the accepted service forms (it may still be a real DNS name outside the mesh).
pub fn service_name(host: &str, cluster_domain: &str, client_namespace: &str) -> Option<ServiceName> {
    let labels: Vec<&str> = host.split('.').collect();
    match labels.as_slice() {
        [name] if !client_namespace.is_empty() => Some(ServiceName::new(client_namespace, name)),
        [name, ns] | [name, ns, "svc"] => Some(ServiceName::new(ns, name)),
        [name, ns, "svc", domain @ ..] if !domain.is_empty() => {
            let cluster_domain = cluster_domain.trim_end_matches('.');
            domain.join(".").eq_ignore_ascii_case(cluster_domain).then(|| ServiceName::new(ns, name))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(host: &str, port: u16) -> Authority {
        Authority { host: Host::Name(host.into()), port }
    }

    #[test]
    fn parses_names_with_and_without_port() {
        assert_eq!(parse("orders.demo:8080"), Ok(name("orders.demo", 8080)));
        assert_eq!(parse("orders.demo"), Ok(name("orders.demo", 80)));
        assert_eq!(parse("Orders.DEMO.svc.Cluster.Local.:8080"), Ok(name("orders.demo.svc.cluster.local", 8080)));
        assert_eq!(parse(" orders:1 "), Ok(name("orders", 1)));
    }

    #[test]
    fn parses_ip_addresses() {
        let v4 = |p| Authority { host: Host::Ip("10.96.0.20".parse().unwrap()), port: p };
        let v6 = |p| Authority { host: Host::Ip("fd00::20".parse().unwrap()), port: p };
        assert_eq!(parse("10.96.0.20:8080"), Ok(v4(8080)));
        assert_eq!(parse("10.96.0.20"), Ok(v4(80)));
        assert_eq!(parse("[fd00::20]:8080"), Ok(v6(8080)));
        assert_eq!(parse("[fd00::20]"), Ok(v6(80)));
        assert_eq!(parse("fd00::20"), Ok(v6(80)));
    }

    #[test]
    fn rejects_bad_authorities() {
        assert_eq!(parse(""), Err(AuthorityError::Empty));
        assert_eq!(parse("orders:http"), Err(AuthorityError::Port("http".into())));
        assert_eq!(parse("orders:0"), Err(AuthorityError::Port("0".into())));
        assert_eq!(parse("orders:65536"), Err(AuthorityError::Port("65536".into())));
        assert_eq!(parse("orders:+80"), Err(AuthorityError::Port("+80".into())));
        assert!(matches!(parse("orders..demo:80"), Err(AuthorityError::Host(_))));
        assert!(matches!(parse("user@orders:80"), Err(AuthorityError::Host(_))));
        assert!(matches!(parse("[fd00::20:80"), Err(AuthorityError::Host(_))));
        assert!(matches!(parse("fd00::zz:80"), Err(AuthorityError::Host(_))));
        assert!(matches!(parse(":80"), Err(AuthorityError::Host(_))));
    }

    #[test]
    fn maps_every_name_form_to_the_service() {
        let orders = Some(ServiceName::new("demo", "orders"));
        for host in ["orders.demo.svc.cluster.local", "orders.demo.svc", "orders.demo"] {
            assert_eq!(service_name(host, "cluster.local", "elsewhere"), orders, "{host}");
        }
        assert_eq!(service_name("orders.demo.svc.cluster.local", "Cluster.Local.", ""), orders);
        assert_eq!(service_name("orders.demo.svc.corp.example", "corp.example", ""), orders);
    }

    #[test]
    fn short_names_only_resolve_in_the_client_namespace() {
        assert_eq!(service_name("orders", "cluster.local", "demo"), Some(ServiceName::new("demo", "orders")));
        assert_eq!(service_name("orders", "cluster.local", ""), None);
    }

    #[test]
    fn other_names_are_not_services() {
        assert_eq!(service_name("orders.demo.svc.other.domain", "cluster.local", "demo"), None);
        assert_eq!(service_name("orders.demo.pod.cluster.local", "cluster.local", "demo"), None);
        assert_eq!(service_name("a.b.c", "cluster.local", "demo"), None);
    }
}
