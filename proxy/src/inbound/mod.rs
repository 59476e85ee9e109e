//! The inbound side: connections from peer proxies (a transport header names the local port and
//! the framing), and, under iptables, connections redirected from clients outside the mesh. Every
//! request and stream is forwarded only to this proxy's own workload.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use http::{StatusCode, Version, header};
use hyper::body::Incoming;
use tokio::net::{TcpListener, TcpStream};

use crate::{
    config::Config,
    detect::{self, Detected},
    drain::{self, Drain},
    http::{
        Body, ProxyError, Request, Response,
        client::{Clients, Upstream},
        headers,
        metrics::{self, Labels, Outcome},
        server, upgrade,
    },
    metrics::Metrics,
    transport::{
        Counted,
        header::{Header, Protocol},
        orig_dst::orig_dst,
        tcp,
    },
};

const DIRECTION: &str = "inbound";

pub struct Inbound {
    cfg: Arc<Config>,
    clients: Clients,
    metrics: Metrics,
    drain: Drain,
}

impl Inbound {
    pub fn new(cfg: Arc<Config>, metrics: Metrics, drain: Drain) -> Arc<Self> {
        let clients = Clients::new(cfg.connect_timeout);
        Arc::new(Inbound { cfg, clients, metrics, drain })
    }

    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let accepted = tokio::select! {
                _ = self.drain.signaled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((tcp, peer)) => {
                    let watch = self.drain.watch();
                    let ib = self.clone();
                    tokio::spawn(async move { ib.accept(tcp, peer, watch).await });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "inbound accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            }
        }
    }

    async fn accept(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, watch: drain::Watch) {
        let _ = tcp.set_nodelay(true);
        let redirected = orig_dst(&tcp);
        let mut io = Counted::new(tcp, &self.metrics, DIRECTION);
        if let Some(dst) = redirected {
            return self.redirected(io, dst, &watch).await;
        }
        let header = match tokio::time::timeout(self.cfg.detect_timeout, Header::read(&mut io)).await {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => {
                self.metrics.garbage_connections.inc();
                tracing::debug!(%peer, error = %e, "inbound connection without a valid transport header; closing");
                return;
            }
            Err(_) => {
                self.metrics.garbage_connections.inc();
                tracing::debug!(%peer, "inbound connection sent no transport header in time; closing");
                return;
            }
        };
        let local = SocketAddr::new(self.cfg.inbound_local_ip, header.port);
        let h = Handler { ib: self.clone(), local };
        match header.protocol {
            Protocol::Http2 => server::serve_h2(io, hyper::service::service_fn(move |r| h.clone().handle(r)), &watch).await,
            Protocol::Http1 => server::serve_h1(io, hyper::service::service_fn(move |r| h.clone().handle(r)), &watch).await,
            Protocol::Opaque => self.opaque(io, local).await,
        }
    }

    /// Traffic iptables redirected here from a client outside the mesh: to the same port locally.
    async fn redirected<I>(self: &Arc<Self>, io: I, dst: SocketAddr, watch: &drain::Watch)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
    {
        let local = SocketAddr::new(self.cfg.inbound_local_ip, dst.port());
        if self.cfg.inbound_opaque_ports.contains(&dst.port()) {
            self.metrics.detect.with_label_values(&[DIRECTION, "skipped"]).inc();
            return self.opaque(io, local).await;
        }
        let (detected, io) = match detect::detect(io, self.cfg.detect_timeout).await {
            Ok(d) => d,
            Err(_) => return,
        };
        self.metrics.detect.with_label_values(&[DIRECTION, detected.as_str()]).inc();
        let h = Handler { ib: self.clone(), local };
        match detected {
            Detected::Http1 => server::serve_h1(io, hyper::service::service_fn(move |r| h.clone().handle(r)), watch).await,
            Detected::Http2 => server::serve_h2(io, hyper::service::service_fn(move |r| h.clone().handle(r)), watch).await,
            Detected::Closed => {}
            Detected::Tls | Detected::Opaque | Detected::Timeout => self.opaque(io, local).await,
        }
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
}

impl Handler {
    async fn handle(self, req: http::Request<Incoming>) -> Result<Response, Infallible> {
        let start = Instant::now();
        let mut req = req.map(Body::from);
        // Only the inbound side vouches for a client's identity; never trust one from the wire.
        req.headers_mut().remove(headers::CLIENT_ID);
        let orig_h1 = req.headers_mut().remove(headers::ORIG_PROTO).is_some();
        let client_version = req.version();
        let authority = req
            .uri()
            .authority()
            .map(|a| a.as_str().to_string())
            .or_else(|| req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string))
            .unwrap_or_default();

        let result = self.forward(req, orig_h1, &authority).await;
        let labels =
            Labels { direction: DIRECTION, authority: &authority, dst_service: "", dst_namespace: "", tls: "false", peer_id: "" };
        let rsp = match result {
            Ok(mut rsp) => {
                let grpc = rsp.headers().get("grpc-status").and_then(|v| v.to_str().ok());
                metrics::record(
                    &self.ib.metrics,
                    &labels,
                    &Outcome::Response { status: rsp.status(), grpc_status: grpc },
                    start.elapsed(),
                );
                if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    headers::strip_hop_by_hop(rsp.headers_mut());
                }
                *rsp.version_mut() = client_version;
                rsp.map(Body::from)
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
