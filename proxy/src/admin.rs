//! The admin listener: `/live`, `/ready`, `/metrics`, `/config`, and `/shutdown` (POST, loopback only).
//!
//! It keeps serving while the proxy drains (until the process exits), so probes see `/ready`
//! answer 503 `draining` and metrics can be scraped to the end.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use bytes::Bytes;
use http::{Method, StatusCode, header};
use hyper::body::Incoming;
use tokio::net::TcpListener;

use crate::{config::Config, drain::Drain, http::Body, metrics::Metrics};

#[derive(Clone)]
pub struct Admin {
    pub cfg: Arc<Config>,
    pub metrics: Metrics,
    pub drain: Drain,
    pub ready: Arc<AtomicBool>,
}

impl Admin {
    pub async fn serve(self, listener: TcpListener) {
        loop {
            let (tcp, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.route(req, peer)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tcp), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    }

    fn route(&self, req: http::Request<Incoming>, peer: SocketAddr) -> http::Response<Body> {
        match (req.method(), req.uri().path()) {
            (&Method::GET, "/live") => text(StatusCode::OK, "live\n"),
            (&Method::GET, "/ready") => {
                if self.drain.is_draining() {
                    text(StatusCode::SERVICE_UNAVAILABLE, "draining\n")
                } else if self.ready.load(Ordering::Acquire) {
                    text(StatusCode::OK, "ready\n")
                } else {
                    text(StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
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

fn text(status: StatusCode, body: &'static str) -> http::Response<Body> {
    let mut rsp = http::Response::new(Body::from_static(body));
    *rsp.status_mut() = status;
    rsp
}
