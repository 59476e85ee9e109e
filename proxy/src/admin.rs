//! The admin listener: `/live`, `/ready`, `/metrics`, `/config`, `/shutdown` (POST, loopback only),
//! and `/app-probe/<container>/<kind>` (the application's own kubelet probes, see [`probe`]).
//!
//! It keeps serving while the proxy drains (until the process exits), so probes see `/ready`
//! answer 503 `draining` and metrics can be scraped to the end.
//!
//! Anyone who reaches it can open connections, so they are bounded: a request head must arrive
//! within `STRAIT_ADMIN_HEADER_TIMEOUT` (slow-loris clients are closed) and at most
//! `STRAIT_ADMIN_MAX_CONNECTIONS` are served at once (past it, new ones are closed and counted).

pub mod probe;

use std::{
    convert::Infallible,
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::transport::{Admitted, ConnectionLimit};
use crate::{config::Config, drain::Drain, http::Body, http::errors::STRAIT_ERROR, metrics::Metrics, ready::Readiness};

/// The `strait-error` value of a failed application probe.
pub const PROBE_FAILED: &str = "probe-failed";

#[derive(Clone)]
pub struct Admin {
    pub cfg: Arc<Config>,
    pub metrics: Metrics,
    pub drain: Drain,
    pub ready: Arc<Readiness>,
    /// Built from `cfg.app_probes`.
    pub probes: Arc<probe::Prober>,
}

impl Admin {
    pub async fn serve(self, listener: TcpListener) {
        let limit = ConnectionLimit::new(self.cfg.admin_max_connections, "admin", &self.metrics);
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let Some(Admitted { tcp, slot }) = limit.admit(tcp, peer) else { continue };
            // The address the caller dialled (the pod IP for kubelet): the default `Host` of a probe.
            let local = tcp.local_addr().map(|a| a.ip()).unwrap_or(self.cfg.admin_addr.ip());
            let admin = self.clone();
            let header_timeout = self.cfg.admin_header_timeout;
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req, peer, local).await) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(header_timeout)
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
                drop(slot);
            });
        }
    }

    async fn route(&self, req: http::Request<Incoming>, peer: SocketAddr, local: IpAddr) -> http::Response<Body> {
        if let Some(key) = req.uri().path().strip_prefix("/app-probe/") {
            if req.method() != Method::GET {
                return text(StatusCode::METHOD_NOT_ALLOWED, "use GET\n");
            }
            let caller = probe::Caller { local_ip: local, user_agent: req.headers().get(header::USER_AGENT).cloned() };
            return self.app_probe(key, &caller).await;
        }
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if self.drain.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else {
                    let missing = self.ready.missing();
                    if missing.is_empty() {
                        text(StatusCode::OK, "ready\n")
                    } else {
                        let body = format!("not ready: waiting for {}\n", missing.join(", "));
                        let mut rsp = http::Response::new(Body::from_bytes(Bytes::from(body)));
                        *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        rsp
                    }
                }
            }
            (&Method::GET, "/metrics") => {
                let mut rsp = http::Response::new(Body::from_bytes(Bytes::from(self.metrics.encode())));
                rsp.headers_mut()
                    .insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain; version=0.0.4"));
                rsp
            }
            (&Method::GET, "/config") => {
                let s = format!("{:#?}\n", self.cfg);
                http::Response::new(Body::from_bytes(Bytes::from(s)))
            }
            (&Method::POST, "/shutdown") => {
                if !peer.ip().is_loopback() {
                    return text(StatusCode::FORBIDDEN, "shutdown is allowed from localhost only\n");
                }
                tracing::info!("shutdown requested through the admin endpoint");
                self.drain.start();
                text(StatusCode::OK, "shutting down\n")
            }
            (_, "/shutdown") => text(StatusCode::METHOD_NOT_ALLOWED, "use POST\n"),
            _ => text(StatusCode::NOT_FOUND, "not found\n"),
        }
    }
}

impl Admin {
    /// `key` is `<container>/<kind>`: the application's status when the probe passes, else 503
    /// `strait-error: probe-failed` with the reason on one line; 404 for a probe the table lacks.
    async fn app_probe(&self, key: &str, caller: &probe::Caller) -> http::Response<Body> {
        let found = key.split_once('/').filter(|(_, kind)| !kind.contains('/'));
        let Some(app_probe) = found.and_then(|(container, kind)| self.probes.get(container, kind)) else {
            return text(StatusCode::NOT_FOUND, "no such probe (STRAIT_APP_PROBES)\n");
        };
        match self.probes.run(app_probe, caller).await {
            Ok(passed) => {
                let mut rsp = http::Response::new(Body::from_bytes(passed.body));
                *rsp.status_mut() = passed.status;
                rsp
            }
            Err(e) => {
                tracing::debug!(probe = key, error = %e, "application probe failed");
                let mut rsp = http::Response::new(Body::from_bytes(Bytes::from(format!("probe failed: {e}\n"))));
                *rsp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                rsp.headers_mut().insert(STRAIT_ERROR, http::HeaderValue::from_static(PROBE_FAILED));
                rsp.headers_mut().insert(header::CONTENT_TYPE, http::HeaderValue::from_static("text/plain"));
                rsp
            }
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> http::Response<Body> {
    let mut rsp = http::Response::new(Body::from_static(body));
    *rsp.status_mut() = status;
    rsp
}
