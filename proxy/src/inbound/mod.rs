//! The inbound side: connections from peer proxies (a transport header names the local port and
//! the framing), and, under iptables, connections redirected from clients outside the mesh. Every
//! request and stream is forwarded only to this proxy's own workload.

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::Instant,
};

use http::{StatusCode, Version, header};
use hyper::body::Incoming;
use tokio::{
    io::AsyncReadExt,
    net::{TcpListener, TcpStream},
};

use strait_proto::discovery::v1 as pb;
use tokio::sync::watch;

use crate::{
    config::{Config, InboundMode},
    discover::{Discovery, ServiceProfile},
    tls::{Tls, peer_identity},
    detect::{self, Detected},
    drain::{self, Drain},
    http::{
        Body, ProxyError, Request, Response,
        client::{Clients, Upstream},
        headers,
        metrics::{self, Deferred, Labels, Outcome, OwnedLabels},
        server, upgrade,
    },
    metrics::Metrics,
    transport::{
        BoxedIo, Counted, Io, Prefixed,
        header::{Header, Protocol},
        orig_dst::orig_dst,
        own::OwnListeners,
        tcp,
    },
};

const DIRECTION: &str = "inbound";

/// How long a connection with no detected protocol may stay silent on both sides before it is
/// closed: no protocol waits this long before its first byte, and an open connection to the
/// workload should not be held for nothing.
const UNDETECTED_IDLE_LIMIT: std::time::Duration = std::time::Duration::from_secs(60);

/// Inside every mesh TLS server name (`<sa>.<ns>.serviceaccount.identity.strait.<td>`).
const MESH_SERVER_NAME_INFIX: &str = ".serviceaccount.identity.strait.";

pub struct Inbound {
    /// The workload's inbound policy from the controller (mode, opaque ports), when there is one.
    policy: Option<watch::Receiver<Arc<pb::InboundPolicy>>>,
    cfg: Arc<Config>,
    clients: Clients,
    metrics: Metrics,
    drain: Drain,
    tls: Option<Arc<Tls>>,
    /// What the workload serves on each port: the labels of its requests.
    discovery: Discovery,
    /// This proxy's own workload (`STRAIT_WORKLOAD`): the `dst_workload` of its requests.
    workload: Arc<str>,
    own: OwnListeners,
}

impl Inbound {
    pub fn new(
        cfg: Arc<Config>,
        metrics: Metrics,
        drain: Drain,
        tls: Option<Arc<Tls>>,
        policy: Option<watch::Receiver<Arc<pb::InboundPolicy>>>,
        discovery: Discovery,
    ) -> Arc<Self> {
        // Towards the local application only: never mesh TLS.
        let clients = Clients::new(cfg.connect_timeout, None, metrics.clone());
        let workload = Arc::from(cfg.workload.as_str());
        Arc::new(Inbound { policy, own: OwnListeners::new(&cfg), cfg, clients, metrics, drain, tls, discovery, workload })
    }

    /// Strict when the environment or the controller's policy for this workload says so.
    fn strict(&self) -> bool {
        self.cfg.inbound_mode == InboundMode::Strict
            || self.policy.as_ref().is_some_and(|p| p.borrow().mode() == pb::inbound_policy::Mode::Strict)
    }

    fn is_opaque(&self, port: u16) -> bool {
        self.cfg.inbound_opaque_ports.contains(&port)
            || self.policy.as_ref().is_some_and(|p| p.borrow().opaque_ports.contains(&(port as u32)))
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let drain = self.drain.clone();
        // Per listener (STRAIT_MAX_CONNECTIONS).
        let limit = crate::transport::ConnectionLimit::new(self.cfg.max_connections, DIRECTION, &self.metrics);
        crate::transport::accept_until_drained(listener, &drain, DIRECTION, &limit, |tcp, peer, watch| {
            self.clone().accept(tcp, peer, watch)
        })
        .await
    }

    async fn accept(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, watch: drain::Watch) {
        let _ = tcp.set_nodelay(true);
        // Until the controller's first answer (the workload's inbound policy), a connection waits
        // for it, bounded by STRAIT_DISCOVERY_WAIT, rather than being served as permissive; then
        // STRAIT_INBOUND_MODE decides alone (strict refuses plaintext, permissive serves it).
        if let Some(remote) = self.discovery.remote_client()
            && !remote.is_synced()
            && !remote.wait_synced(self.cfg.discovery_wait).await
        {
            tracing::debug!(%peer, mode = ?self.cfg.inbound_mode, "no inbound policy from the controller yet; using STRAIT_INBOUND_MODE");
        }
        if let Some(dst) = orig_dst(&tcp) {
            let io = Counted::new(tcp, &self.metrics, DIRECTION);
            return self.redirected(io, dst, &watch).await;
        }
        // The address the peer proxy dialled: the workload is reached on the same one.
        let arrived = match tcp.local_addr() {
            Ok(a) => unmapped(a.ip()),
            Err(_) => return,
        };
        // Addressed to the inbound listener itself: a peer proxy. Mesh TLS when this proxy has an
        // identity; a plaintext transport header only from proxies without one, and never in strict mode.
        let mut first = [0u8; 1];
        let is_tls = match tokio::time::timeout(self.cfg.detect_timeout, tcp.peek(&mut first)).await {
            Ok(Ok(1)) => first[0] == 0x16,
            _ => {
                self.metrics.garbage_connections.inc();
                return;
            }
        };
        let io = Counted::new(tcp, &self.metrics, DIRECTION);
        match (&self.tls, is_tls) {
            (Some(tls), true) => {
                // Bounded as a whole: ClientHello, then the rest of the handshake.
                let handshake = tokio::time::timeout(self.cfg.tls_handshake_timeout, self.handshake(tls, io, peer));
                let Ok(done) = handshake.await else {
                    self.metrics.tls_handshakes.with_label_values(&[DIRECTION, "timeout"]).inc();
                    tracing::debug!(%peer, "inbound TLS handshake timed out; closing");
                    return;
                };
                let Some((stream, peer_id)) = done else { return };
                self.serve_peer(stream, arrived, Some(peer_id), &watch).await
            }
            (_, false) if !self.strict() => {
                self.serve_peer(io, arrived, None, &watch).await
            }
            (_, false) => {
                self.metrics.inbound_refused.with_label_values(&["strict-plaintext"]).inc();
                tracing::debug!(%peer, "plaintext connection refused in strict mode");
            }
            (None, true) => {
                self.metrics.inbound_refused.with_label_values(&["no-identity"]).inc();
                tracing::debug!(%peer, "TLS connection but this proxy has no identity; closing");
            }
        }
    }

    /// Terminates mesh TLS meant for this proxy (its server name); anything else is refused.
    async fn handshake<I: Io>(&self, tls: &Tls, io: I, peer: SocketAddr) -> Option<(BoxedIo, Arc<str>)> {
        let acceptor = tokio_rustls::LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(self.cfg.detect_timeout, acceptor).await {
            Ok(Ok(s)) => s,
            _ => {
                self.metrics.tls_handshakes.with_label_values(&[DIRECTION, "error"]).inc();
                return None;
            }
        };
        if start.client_hello().server_name() != Some(&*tls.store.server_name) {
            self.metrics.inbound_refused.with_label_values(&["server-name"]).inc();
            let sni = start.client_hello().server_name().map(str::to_owned);
            tracing::debug!(%peer, ?sni, "TLS not meant for this proxy; closing");
            if sni.as_deref().is_some_and(|n| n.contains(MESH_SERVER_NAME_INFIX)) {
                // A peer proxy expecting another identity here (say, a stale endpoint): answer with
                // our certificate so it sees who it reached and reports an identity mismatch rather
                // than a bare reset. Nothing is served on the connection either way.
                let _ = start.into_stream(tls.server_config()).await;
            }
            return None;
        }
        match start.into_stream(tls.server_config()).await {
            Ok(stream) => {
                let Some(id) = peer_identity(stream.get_ref().1.peer_certificates()) else {
                    self.metrics.tls_handshakes.with_label_values(&[DIRECTION, "no-identity"]).inc();
                    return None;
                };
                self.metrics.tls_handshakes.with_label_values(&[DIRECTION, "ok"]).inc();
                Some((Box::new(stream), id))
            }
            Err(e) => {
                self.metrics.tls_handshakes.with_label_values(&[DIRECTION, "error"]).inc();
                tracing::debug!(%peer, error = %e, "inbound TLS handshake failed");
                None
            }
        }
    }

    /// A connection from a peer proxy: the transport header, then what it announces.
    async fn serve_peer<I: Io>(
        self: &Arc<Self>,
        mut io: I,
        arrived: IpAddr,
        peer_id: Option<Arc<str>>,
        watch: &drain::Watch,
    ) {
        let header = match tokio::time::timeout(self.cfg.detect_timeout, Header::read(&mut io)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.metrics.garbage_connections.inc();
                tracing::debug!(error = %e, "inbound connection without a valid transport header; closing");
                return;
            }
            Err(_) => {
                self.metrics.garbage_connections.inc();
                tracing::debug!("inbound connection sent no transport header in time; closing");
                return;
            }
        };
        let local = SocketAddr::new(self.cfg.inbound_local_ip.unwrap_or(arrived), header.port);
        if self.is_own_listener(local) {
            return;
        }
        if !self.serves(header.port) {
            return self.refuse_port(io, header, watch).await;
        }
        match header.protocol {
            Protocol::Http2 => self.http(io, local, peer_id, Detected::Http2, watch).await,
            Protocol::Http1 => self.http(io, local, peer_id, Detected::Http1, watch).await,
            // Opaque from the peer's point of view (an opaque service port, a CONNECT tunnel, or
            // what the peer could not detect). Unless this workload declares the port opaque, the
            // first bytes still decide here, so an HTTP request inside gets its identity headers
            // from this proxy, never from the client; the workload is connected at once, so a
            // server-speaks-first protocol is not held up.
            Protocol::Opaque if self.is_opaque(local.port()) => {
                self.metrics.detect.with_label_values(&[DIRECTION, "skipped"]).inc();
                self.opaque(io, local).await
            }
            Protocol::Opaque => self.undetected(Prefixed::new(bytes::Bytes::new(), io), local, peer_id, watch).await,
        }
    }

    /// Serves HTTP to the workload at `local`: every request's identity headers come from this proxy.
    async fn http<I: Io>(
        self: &Arc<Self>,
        io: I,
        local: SocketAddr,
        peer_id: Option<Arc<str>>,
        version: Detected,
        watch: &drain::Watch,
    ) {
        // Once per connection: the service this port serves names its requests in the metrics.
        let service = self.discovery.local_service(local.port());
        let src_namespace = peer_id.as_deref().and_then(identity_namespace).map(Arc::from);
        let h = Handler { ib: self.clone(), local, peer_id, service, src_namespace };
        let svc = hyper::service::service_fn(move |r| h.clone().handle(r));
        if version == Detected::Http2 {
            server::serve_h2(io, svc, watch).await
        } else {
            server::serve_h1(io, svc, watch).await
        }
    }

    /// A byte stream for the workload at `local`: forwarded as is on a port the workload declares
    /// opaque, otherwise detected and served as HTTP when it is HTTP.
    async fn stream<I: Io>(self: &Arc<Self>, io: I, local: SocketAddr, peer_id: Option<Arc<str>>, watch: &drain::Watch) {
        if self.is_opaque(local.port()) {
            self.metrics.detect.with_label_values(&[DIRECTION, "skipped"]).inc();
            return self.opaque(io, local).await;
        }
        let (detected, io) = match detect::detect(io, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        self.metrics.detect.with_label_values(&[DIRECTION, detected.as_str()]).inc();
        match detected {
            Detected::Http1 | Detected::Http2 => self.http(io, local, peer_id, detected, watch).await,
            Detected::Closed => {}
            Detected::Tls | Detected::Opaque => self.opaque(io, local).await,
            Detected::Timeout => self.undetected(io, local, peer_id, watch).await,
        }
    }

    /// No verdict yet (detection timed out, or a peer announced an opaque stream): a
    /// server-speaks-first protocol on a port not declared opaque, or a client that is slow — or
    /// pausing on purpose, hoping its request goes through unparsed. The workload is connected
    /// and whoever speaks first decides: the
    /// workload (a banner: forwarded as TCP), or the client, whose bytes are classified as they
    /// arrive (HTTP is served as HTTP, with this proxy's identity headers only). A connection on
    /// which neither speaks for [`UNDETECTED_IDLE_LIMIT`] is closed.
    async fn undetected<I: Io>(
        self: &Arc<Self>,
        io: Prefixed<I>,
        local: SocketAddr,
        peer_id: Option<Arc<str>>,
        watch: &drain::Watch,
    ) {
        let (prefix, mut io) = io.into_parts();
        let mut app = match self.clients.connect(local).await {
            Ok(app) => app,
            Err(e) => return tracing::debug!(error = %e, %local, "inbound TCP connect failed"),
        };
        let mut buf = bytes::BytesMut::from(prefix);
        let idle = tokio::time::sleep(UNDETECTED_IDLE_LIMIT);
        tokio::pin!(idle);
        let mut one = [0u8; 1];
        let detected = loop {
            tokio::select! {
                // The workload spoke (or closed) first.
                _ = app.peek(&mut one) => break Detected::Opaque,
                // Cancel safe: when the other branch wins, nothing was read.
                r = io.read_buf(&mut buf) => match r {
                    Err(_) => return,
                    Ok(0) => break Detected::Opaque,
                    Ok(_) => if let Some(d) = detect::verdict(&buf) { break d },
                },
                _ = &mut idle => {
                    self.metrics.inbound_refused.with_label_values(&["undetected"]).inc();
                    return tracing::debug!(%local, "no protocol detected and nothing sent; closing");
                }
            }
        };
        let io = Prefixed::new(buf.freeze(), io);
        match detected {
            Detected::Http1 | Detected::Http2 => {
                drop(app);
                self.http(io, local, peer_id, detected, watch).await
            }
            _ => {
                let mut io = io;
                if let Err(e) = tcp::forward(&mut io, &mut app).await {
                    tracing::debug!(error = %e, "inbound TCP forwarding ended");
                }
            }
        }
    }

    /// Traffic iptables redirected here from a client outside the mesh: to the address it was sent to
    /// (the pod's own; the proxy's UID is not redirected again), or the same port on
    /// `STRAIT_INBOUND_LOCAL_IP` when set.
    async fn redirected<I: Io>(self: &Arc<Self>, io: I, dst: SocketAddr, watch: &drain::Watch) {
        let local = SocketAddr::new(self.cfg.inbound_local_ip.unwrap_or(unmapped(dst.ip())), dst.port());
        if self.is_own_listener(local) {
            return;
        }
        if self.strict() {
            self.metrics.inbound_refused.with_label_values(&["strict-plaintext"]).inc();
            tracing::debug!(%dst, "plaintext to a meshed port refused in strict mode");
            return;
        }
        self.stream(io, local, None, watch).await
    }

    /// Whether a peer may name this port of the workload: one a service of the mesh reaches it at
    /// (the controller's inbound policy), one of `STRAIT_INBOUND_PORTS`, or one it declares opaque.
    /// When neither of the first two lists anything (a mesh file without a controller, an older
    /// controller), every port is allowed, as before.
    fn serves(&self, port: u16) -> bool {
        let policy = self.policy.as_ref().map(|p| p.borrow().clone());
        let (served, opaque) = policy.as_deref().map_or((&[][..], &[][..]), |p| (&p.ports[..], &p.opaque_ports[..]));
        let env = (&self.cfg.inbound_ports[..], &self.cfg.inbound_opaque_ports[..]);
        if served.is_empty() && env.0.is_empty() {
            return true;
        }
        served.iter().chain(opaque).any(|&p| p == u32::from(port)) || env.0.contains(&port) || env.1.contains(&port)
    }

    /// A peer named a port the workload does not serve: HTTP gets 403 `strait-error:
    /// port-not-allowed` for every request (the client proxy passes it on, so the caller learns
    /// why), a byte stream is closed.
    async fn refuse_port<I: Io>(&self, io: I, header: Header, watch: &drain::Watch) {
        self.metrics.inbound_refused.with_label_values(&["port"]).inc();
        tracing::debug!(port = header.port, "a peer named a port the workload does not serve; refused");
        let svc = hyper::service::service_fn(|_| async { Ok(ProxyError::PortNotAllowed.into_response()) });
        match header.protocol {
            Protocol::Http2 => server::serve_h2(io, svc, watch).await,
            Protocol::Http1 => server::serve_h1(io, svc, watch).await,
            Protocol::Opaque => {}
        }
    }

    /// A target that is one of this proxy's own listeners (a client outside the pod sent traffic to
    /// the outbound or admin port, or a peer named one in its header) is refused: forwarding it would
    /// loop back into the proxy, and would let outsiders use the outbound side as an open proxy.
    /// The comparison is by reach ([`OwnListeners`]): `0.0.0.0`, `[::]`, `[::1]` and any loopback
    /// address count, as does any address of the host behind an unspecified listener.
    fn is_own_listener(&self, target: SocketAddr) -> bool {
        let own = self.own.contains(target);
        if own {
            self.metrics.inbound_refused.with_label_values(&["loop"]).inc();
            tracing::debug!(%target, "inbound target is one of the proxy's own listeners; refused");
        }
        own
    }

    async fn opaque<I>(&self, mut io: I, local: SocketAddr)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    {
        match self.clients.connect(local).await {
            Ok(mut app) => {
                if let Err(e) = tcp::forward(&mut io, &mut app).await {
                    tracing::debug!(error = %e, "inbound TCP forwarding ended");
                }
            }
            Err(e) => tracing::debug!(error = %e, %local, "inbound TCP connect failed"),
        }
    }
}

#[derive(Clone)]
struct Handler {
    ib: Arc<Inbound>,
    local: SocketAddr,
    /// The client proxy's verified identity, when the connection is mesh TLS.
    peer_id: Option<Arc<str>>,
    /// The service of this workload on `local`'s port, from discovery (`None`: `unknown`).
    service: Option<Arc<ServiceProfile>>,
    /// The namespace in the peer's verified identity (`None` without mesh TLS).
    src_namespace: Option<Arc<str>>,
}

impl Handler {
    async fn handle(self, req: http::Request<Incoming>) -> Result<Response, Infallible> {
        let start = Instant::now();
        if let Err(e) = headers::check_size(req.headers()) {
            return Ok(e.into_response());
        }
        let mut req = req.map(Body::from);
        // Only the inbound side vouches for a client's identity; never trust one from the wire.
        req.headers_mut().remove(headers::CLIENT_ID);
        if let Some(id) = &self.peer_id {
            if let Ok(v) = http::HeaderValue::from_str(id) {
                req.headers_mut().insert(headers::CLIENT_ID, v);
            }
        }
        let orig_h1 = req.headers_mut().remove(headers::ORIG_PROTO).is_some();
        let client_version = req.version();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();

        let result = self.forward(req, orig_h1, &authority).await;
        // The service discovery says this port serves, never the Host the client wrote.
        let svc = self.service.as_deref();
        let labels = Labels {
            direction: DIRECTION,
            authority: svc.map_or(crate::metrics::UNKNOWN, |s| &s.authority),
            dst_service: svc.map_or("", |s| &s.name),
            dst_namespace: svc.map_or("", |s| &s.namespace),
            tls: if self.peer_id.is_some() { "true" } else { "false" },
            peer_id: self.peer_id.as_deref().unwrap_or(""),
            // The transport header names no source workload (yet): the peer's identity, in
            // `peer_id` and `src_namespace`, is what is verified.
            src_workload: "",
            src_namespace: self.src_namespace.as_deref().unwrap_or(""),
            dst_workload: &self.ib.workload,
            route: "",
        };
        let rsp = match result {
            Ok(mut rsp) => {
                // `strait-error` is the proxies' word; an application's own would be believed upstream.
                rsp.headers_mut().remove(crate::http::errors::STRAIT_ERROR);
                let peer_tls = self.peer_id.is_some();
                let deferred = metrics::status_in_trailers(rsp.headers()).then(|| {
                    let owned = OwnedLabels {
                        direction: DIRECTION,
                        authority: svc.map(|s| s.authority.clone()),
                        dst_service: svc.map(|s| s.name.clone()),
                        dst_namespace: svc.map(|s| s.namespace.clone()),
                        tls: if peer_tls { "true" } else { "false" },
                        peer_id: self.peer_id.clone(),
                        src_workload: None,
                        src_namespace: self.src_namespace.clone(),
                        dst_workload: Some(self.ib.workload.clone()),
                        route: None,
                    };
                    Deferred::new(&self.ib.metrics, owned, rsp.status(), start.elapsed())
                });
                if deferred.is_none() {
                    let grpc = rsp.headers().get("grpc-status").and_then(|v| v.to_str().ok());
                    let outcome = Outcome::Response { status: rsp.status(), grpc_status: grpc, broken: false };
                    metrics::record(&self.ib.metrics, &labels, &outcome, start.elapsed());
                }
                if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    headers::strip_hop_by_hop(rsp.headers_mut());
                }
                *rsp.version_mut() = client_version;
                match deferred {
                    Some(metrics) => rsp.map(|body| Body::Trailed { body, metrics }),
                    None => rsp.map(Body::from),
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, local = %self.local, "inbound request failed");
                let outcome = Outcome::ProxyError { status: e.status(), kind: e.kind() };
                metrics::record(&self.ib.metrics, &labels, &outcome, start.elapsed());
                e.into_response()
            }
        };
        Ok(rsp)
    }

    async fn forward(&self, mut req: Request, orig_h1: bool, authority: &str) -> Result<Upstream, ProxyError> {
        let clients = &self.ib.clients;
        if req.version() != Version::HTTP_2 {
            // HTTP/1 end to end: an upgrade, or a redirected HTTP/1 client.
            if headers::is_upgrade(req.headers()) {
                let io = clients.connect(self.local).await?;
                return upgrade::send(io, req).await;
            }
            return clients.to_h1(self.local, req).await;
        }
        if orig_h1 {
            // Travelled as HTTP/2 between the proxies; the application speaks HTTP/1.
            headers::strip_hop_by_hop(req.headers_mut());
            if !req.headers().contains_key(header::HOST) {
                if let Ok(v) = http::HeaderValue::from_str(authority) {
                    req.headers_mut().insert(header::HOST, v);
                }
            }
            return clients.to_h1(self.local, req).await;
        }
        clients.to_h2(self.local, req).await
    }
}

/// The namespace of a mesh identity, `spiffe://<trust domain>/ns/<namespace>/sa/<service account>`.
fn identity_namespace(id: &str) -> Option<&str> {
    let path = id.strip_prefix("spiffe://")?.split_once('/')?.1;
    let rest = path.strip_prefix("ns/")?;
    let (ns, sa) = rest.split_once("/sa/")?;
    (!ns.is_empty() && !ns.contains('/') && !sa.is_empty()).then_some(ns)
}

/// An IPv4 address that reached an IPv6 socket as `::ffff:a.b.c.d`, as the IPv4 address it is.
fn unmapped(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_source_namespace_is_read_from_the_identity_only() {
        let ns = super::identity_namespace;
        assert_eq!(ns("spiffe://cluster.local/ns/demo/sa/web"), Some("demo"));
        assert_eq!(ns("spiffe://cluster.local/ns//sa/web"), None);
        assert_eq!(ns("spiffe://cluster.local/ns/a/b/sa/web"), None);
        assert_eq!(ns("https://cluster.local/ns/demo/sa/web"), None);
    }
}
