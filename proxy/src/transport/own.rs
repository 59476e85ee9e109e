//! Whether an address reaches one of this proxy's own listeners (outbound, inbound, admin).
//!
//! Sending traffic there would loop: a request through the outbound listener whose authority is
//! the outbound listener comes back to it, once more per hop, until the proxy runs out of sockets;
//! one to the admin port would let a client (or, inbound, a peer) reach `/shutdown` and `/config`
//! through the proxy. Both directions ask this one place before they connect anywhere.
//!
//! A listener on the unspecified address takes connections to every address of the host, and a
//! connection to the unspecified address itself reaches the host (Linux connects it to loopback),
//! so the comparison is by reach, not by equality. Whether an address is one of the host's own is
//! asked of the kernel (binding a UDP socket to it succeeds only for a local address), and only
//! when the port is one of the listeners' ports.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};

use crate::config::Config;

#[derive(Clone, Debug)]
pub struct OwnListeners {
    addrs: Vec<SocketAddr>,
}

impl OwnListeners {
    pub fn new(cfg: &Config) -> Self {
        let addrs = cfg.outbound_addrs.iter().chain(&cfg.inbound_addrs).chain([&cfg.admin_addr]).copied().collect();
        OwnListeners { addrs }
    }

    /// Whether connecting to `target` would reach one of the listeners.
    pub fn contains(&self, target: SocketAddr) -> bool {
        let ip = target.ip().to_canonical();
        let mut local = None;
        self.addrs.iter().filter(|l| l.port() == target.port()).any(|l| {
            let l_ip = l.ip().to_canonical();
            if l_ip == ip {
                return true;
            }
            let same_family = l_ip.is_ipv4() == ip.is_ipv4();
            // `0.0.0.0`, `[::]`, `127.0.0.0/8`, `[::1]`: all reach loopback listeners of the family.
            let loopbackish = |a: IpAddr| a.is_loopback() || a.is_unspecified();
            if same_family && loopbackish(l_ip) && loopbackish(ip) {
                return true;
            }
            // A `[::]` listener also takes IPv4 unless the socket is IPv6-only: assume it does.
            let covers = l_ip.is_unspecified() && (same_family || l_ip.is_ipv6());
            covers && *local.get_or_insert_with(|| is_local(ip))
        })
    }

    /// Whether an authority (`host:port`, port 80 when absent) names a listener before any name
    /// resolution: an IP literal, or `localhost` (and its subdomains, RFC 6761), which reach
    /// loopback whatever DNS says.
    pub fn named_by(&self, authority: &str) -> bool {
        let Ok((host, port)) = crate::dns::split(authority) else { return false };
        if let Ok(ip) = host.parse::<IpAddr>() {
            return self.contains(SocketAddr::new(ip, port));
        }
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        if host == "localhost" || host.ends_with(".localhost") {
            return self.contains(SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port))
                || self.contains(SocketAddr::new(Ipv6Addr::LOCALHOST.into(), port));
        }
        false
    }
}

/// Loopback and unspecified addresses are local; any other is local when a socket can be bound to it.
fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn own(addrs: &[&str]) -> OwnListeners {
        OwnListeners { addrs: addrs.iter().map(|a| a.parse().unwrap()).collect() }
    }

    fn has(o: &OwnListeners, target: &str) -> bool {
        o.contains(target.parse().unwrap())
    }

    #[test]
    fn loopback_and_unspecified_reach_loopback_listeners() {
        let o = own(&["127.0.0.1:7140", "[::1]:7140"]);
        for t in
            ["127.0.0.1:7140", "127.0.0.2:7140", "0.0.0.0:7140", "[::1]:7140", "[::]:7140", "[::ffff:127.0.0.1]:7140"]
        {
            assert!(has(&o, t), "{t}");
        }
        assert!(!has(&o, "127.0.0.1:7141"));
        assert!(!has(&o, "10.1.2.3:7140"), "another host's port");
    }

    #[test]
    fn unspecified_listeners_cover_the_hosts_addresses_only() {
        let o = own(&["0.0.0.0:7191"]);
        assert!(has(&o, "127.0.0.1:7191"));
        assert!(has(&o, "0.0.0.0:7191"));
        // TEST-NET-3: never an address of this host.
        assert!(!has(&o, "203.0.113.9:7191"));
        let o = own(&["[::]:7143"]);
        assert!(has(&o, "[::1]:7143"));
        assert!(has(&o, "127.0.0.1:7143"));
        assert!(!has(&o, "[2001:db8::1]:7143"));
    }

    #[test]
    fn authorities_by_literal_and_localhost() {
        let o = own(&["127.0.0.1:7140", "0.0.0.0:7191"]);
        for a in ["127.0.0.1:7140", "localhost:7140", "LOCALHOST.:7191", "a.localhost:7191", "[::ffff:127.0.0.1]:7140"]
        {
            assert!(o.named_by(a), "{a}");
        }
        for a in ["localhost:80", "web.demo:7140", "localhost", "example.com:7191", "not an authority"] {
            assert!(!o.named_by(a), "{a}");
        }
    }
}
