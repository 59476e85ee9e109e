//! Serving HTTP on an accepted connection, with graceful shutdown when the proxy drains: HTTP/1
//! finishes the in-flight request and closes, HTTP/2 sends GOAWAY and lets open streams finish.

use std::time::Duration;

use hyper::{body::Incoming, service::Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::Response;
use crate::drain;

/// A client has this long to send a request's headers; slow-loris connections are closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Finds dead HTTP/2 clients (a peer proxy whose host vanished).
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

pub async fn serve_h1<I, S>(io: I, svc: S, watch: &drain::Watch)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service<http::Request<Incoming>, Response = Response, Error = std::convert::Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = watch.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP/1 connection ended");
    }
}

pub async fn serve_h2<I, S>(io: I, svc: S, watch: &drain::Watch)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service<http::Request<Incoming>, Response = Response, Error = std::convert::Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = watch.signaled() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP/2 connection ended");
    }
}
