//! The original destination of a connection that iptables redirected to one of our listeners
//! (`SO_ORIGINAL_DST`, IPv4 and IPv6). No socket option in tokio or socket2 reads it for IPv6, so
//! this is a small `getsockopt` call.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::AsRawFd;

/// From linux/netfilter_ipv4.h and linux/netfilter_ipv6/ip6_tables.h.
const SO_ORIGINAL_DST: libc::c_int = 80;
const IP6T_SO_ORIGINAL_DST: libc::c_int = 80;

/// The address the client originally connected to, or `None` when the connection was not
/// redirected (the kernel has no NAT entry for it, or the destination is the listener itself).
pub fn orig_dst(sock: &tokio::net::TcpStream) -> Option<SocketAddr> {
    let local = sock.local_addr().ok()?;
    let dst = match local {
        SocketAddr::V4(_) => v4(sock.as_raw_fd()),
        SocketAddr::V6(_) => v6(sock.as_raw_fd()).or_else(|| v4(sock.as_raw_fd())),
    }?;
    // Conntrack answers for connections it did not rewrite too: with the address they were sent to,
    // which is then the listener's own (compared as IPv4 when it arrived on a dual-stack socket).
    let local = match local {
        SocketAddr::V6(a) => match a.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, a.port())),
            None => local,
        },
        v4 => v4,
    };
    (dst != local).then_some(dst)
}

fn v4(fd: i32) -> Option<SocketAddr> {
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `sa` and `len` are valid for writes of the size passed.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_IP, SO_ORIGINAL_DST, &mut sa as *mut _ as *mut libc::c_void, &mut len)
    };
    if rc != 0 || sa.sin_family != libc::AF_INET as libc::sa_family_t {
        return None;
    }
    let ip = Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr));
    Some(SocketAddr::V4(SocketAddrV4::new(ip, u16::from_be(sa.sin_port))))
}

fn v6(fd: i32) -> Option<SocketAddr> {
    let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t;
    // SAFETY: `sa` and `len` are valid for writes of the size passed.
    let rc = unsafe {
        libc::getsockopt(fd, libc::SOL_IPV6, IP6T_SO_ORIGINAL_DST, &mut sa as *mut _ as *mut libc::c_void, &mut len)
    };
    if rc != 0 || sa.sin6_family != libc::AF_INET6 as libc::sa_family_t {
        return None;
    }
    let ip = Ipv6Addr::from(sa.sin6_addr.s6_addr);
    let v6 = SocketAddrV6::new(ip, u16::from_be(sa.sin6_port), sa.sin6_flowinfo, sa.sin6_scope_id);
    Some(match ip.to_ipv4_mapped() {
        Some(v4) => SocketAddr::V4(SocketAddrV4::new(v4, v6.port())),
        None => SocketAddr::V6(v6),
    })
}
