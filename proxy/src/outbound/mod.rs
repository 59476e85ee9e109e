//! The outbound side: connections from the local application (redirected by iptables, or sent
//! to the listener as an HTTP proxy), detected, routed by authority or original destination, and
//! forwarded to the chosen endpoint's proxy — or passed through when the mesh does not know the
//! destination.

mod http;
pub mod policy;
mod tcp;

use std::{net::SocketAddr, sync::Arc};

use tokio::net::{TcpListener, TcpStream};

use crate::{
    config::Config,
    detect::{self, Detected},
    discover::{Discovery, ServiceProfile, Unavailable},
    drain::{self, Drain},
    http::client::Clients,
    metrics::Metrics,
    transport::{Counted, orig_dst::orig_dst, own::OwnListeners},
};

pub(crate) const DIRECTION: &str = "outbound";

pub struct Outbound {
    pub(crate) cfg: Arc<Config>,
    pub(crate) discovery: Discovery,
    pub(crate) clients: Clients,
    pub(crate) logicals: policy::Logicals,
    pub(crate) dns: crate::dns::Dns,
    pub(crate) metrics: Metrics,
    pub(crate) drain: Drain,
    /// This proxy's own workload and namespace (`STRAIT_WORKLOAD`, `STRAIT_NAMESPACE`): the
    /// source labels of every outbound request, made once.
    pub(crate) src_workload: Arc<str>,
    pub(crate) src_namespace: Arc<str>,
    /// Where traffic must never be sent: back into this proxy.
    pub(crate) own: OwnListeners,
}

/// Where the client meant its connection to go, before any request says more.
#[derive(Clone, Debug)]
pub(crate) enum Target {
    /// Addressed to the listener itself: explicit proxy mode, HTTP only.
    Listener,
    /// Redirected by iptables: the original destination.
    OrigDst(SocketAddr),
    /// A CONNECT tunnel to this authority.
    Tunnel(Arc<str>),
}

pub(crate) use crate::transport::Io;

impl Outbound {
    pub fn new(
        cfg: Arc<Config>,
        discovery: Discovery,
        metrics: Metrics,
        drain: Drain,
        tls: Option<Arc<crate::tls::Tls>>,
        dns: crate::dns::Dns,
    ) -> Arc<Self> {
        let clients = Clients::new(cfg.connect_timeout, tls, metrics.clone());
        Arc::new(Outbound {
            src_workload: Arc::from(cfg.workload.as_str()),
            src_namespace: Arc::from(cfg.namespace.as_str()),
            own: OwnListeners::new(&cfg),
            cfg,
            discovery,
            clients,
            metrics,
            drain,
            logicals: policy::Logicals::default(),
            dns,
        })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let drain = self.drain.clone();
        // Per listener (STRAIT_MAX_CONNECTIONS).
        let limit = crate::transport::ConnectionLimit::new(self.cfg.max_connections, DIRECTION, &self.metrics);
        crate::transport::accept_until_drained(listener, &drain, DIRECTION, &limit, |tcp, _peer, watch| {
            self.clone().accept(tcp, watch)
        })
        .await
    }

    async fn accept(self: Arc<Self>, tcp: TcpStream, watch: drain::Watch) {
        let _ = tcp.set_nodelay(true);
        let target = match orig_dst(&tcp) {
            Some(dst) => Target::OrigDst(dst),
            None => Target::Listener,
        };
        let io = Counted::new(tcp, &self.metrics, DIRECTION);
        self.serve_io(io, target, &watch).await;
    }

    async fn profile_for(&self, target: &Target) -> Result<Option<Arc<ServiceProfile>>, Unavailable> {
        match target {
            Target::Listener => Ok(None),
            Target::OrigDst(a) => self.discovery.resolve_dst(*a).await,
            Target::Tunnel(auth) => self.discovery.resolve(auth).await,
        }
    }

    fn is_opaque(&self, target: &Target, profile: Option<&ServiceProfile>) -> bool {
        if profile.is_some_and(|p| p.is_opaque()) {
            return true;
        }
        let port = match target {
            Target::Listener => return false,
            Target::OrigDst(a) => a.port(),
            Target::Tunnel(auth) => auth.rsplit_once(':').and_then(|(_, p)| p.parse().ok()).unwrap_or(80),
        };
        self.cfg.outbound_opaque_ports.contains(&port)
    }

    /// Handles one client connection (accepted, or tunnelled through CONNECT).
    pub(crate) async fn serve_io<I: Io>(self: &Arc<Self>, io: I, target: Target, watch: &drain::Watch) {
        // Unanswered discovery: HTTP still gets its answer (a 503 naming the cause, see `http`);
        // any other stream is closed rather than passed through in plaintext.
        let (profile, unavailable) = match self.profile_for(&target).await {
            Ok(p) => (p, false),
            Err(e) => {
                tracing::debug!(error = %e, ?target, "no discovery answer for the destination");
                (None, true)
            }
        };
        if unavailable && self.is_opaque(&target, None) {
            self.metrics.detect.with_label_values(&[DIRECTION, "skipped"]).inc();
            return;
        }
        if self.is_opaque(&target, profile.as_deref()) {
            self.metrics.detect.with_label_values(&[DIRECTION, "skipped"]).inc();
            return tcp::forward(self, io, &target, profile).await;
        }
        let (detected, io) = match detect::detect(io, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(e) => {
                tracing::debug!(error = %e, "outbound detection failed");
                self.metrics.detect.with_label_values(&[DIRECTION, "error"]).inc();
                return;
            }
        };
        self.metrics.detect.with_label_values(&[DIRECTION, detected.as_str()]).inc();
        match detected {
            Detected::Http1 => http::serve_h1(self.clone(), io, target, watch).await,
            Detected::Http2 => http::serve_h2(self.clone(), io, target, watch).await,
            Detected::Closed => {}
            Detected::Tls | Detected::Opaque | Detected::Timeout if unavailable => {
                tracing::debug!(?target, "closing a non-HTTP stream: discovery has not answered (STRAIT_DISCOVERY_WAIT)");
            }
            Detected::Tls | Detected::Opaque | Detected::Timeout => tcp::forward(self, io, &target, profile).await,
        }
    }
}
