//! Opaque TCP on the outbound side: to the chosen endpoint's proxy (with a transport header), to
//! a non-meshed endpoint, or straight through to a destination the mesh does not know.

use std::sync::Arc;

use super::{DIRECTION, Io, Outbound, Target};
use crate::{
    discover::ServiceProfile,
    http::ProxyError,
    transport::{
        BoxedIo,
        header::{Header, Protocol},
        tcp,
    },
};

pub(super) async fn forward<I: Io>(
    ob: &Arc<Outbound>,
    mut io: I,
    target: &Target,
    profile: Option<Arc<ServiceProfile>>,
) {
    let plain = |r: Result<tokio::net::TcpStream, ProxyError>| r.map(|s| Box::new(s) as BoxedIo);
    let server = match (profile, target) {
        (Some(p), _) => {
            let logical = ob.logicals.get(&p, &ob.metrics);
            match logical.balancer.pick(false, None) {
                Ok(pick) => {
                    let ep = &pick.state.endpoint;
                    match ep.proxy {
                        Some(proxy) => {
                            let header = Header { port: ep.addr.port(), protocol: Protocol::Opaque };
                            ob.clients.connect_peer(proxy, ep.identity.as_ref(), header).await
                        }
                        None => plain(ob.clients.connect(ep.addr).await),
                    }
                }
                Err(e) => Err(e),
            }
        }
        (None, Target::OrigDst(dst)) if ob.own.contains(*dst) => Err(ProxyError::LoopDetected),
        (None, Target::OrigDst(dst)) => {
            ob.metrics.passthrough.with_label_values(&[DIRECTION, "tcp"]).inc();
            plain(ob.clients.connect(*dst).await)
        }
        (None, Target::Tunnel(authority)) => {
            ob.metrics.passthrough.with_label_values(&[DIRECTION, "tcp"]).inc();
            match ob.dns.resolve(authority).await {
                Ok(addr) if ob.own.contains(addr) => Err(ProxyError::LoopDetected),
                Ok(addr) => plain(ob.clients.connect(addr).await),
                Err(e) => Err(ProxyError::ConnectFailed(e)),
            }
        }
        (None, Target::Listener) => {
            tracing::debug!("non-HTTP connection to the outbound listener has no destination; closing");
            return;
        }
    };
    match server {
        Ok(mut s) => {
            if let Err(e) = tcp::forward(&mut io, &mut s).await {
                tracing::debug!(error = %e, "outbound TCP forwarding ended");
            }
        }
        Err(e) => tracing::debug!(error = %e, ?target, "outbound TCP connect failed"),
    }
}
