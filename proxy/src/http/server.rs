//! Serving HTTP on an accepted connection, with graceful shutdown when the proxy drains (see
//! [`crate::drain`]):
//!
//! - HTTP/1: while draining, every response carries `connection: close`, so a keep-alive client
//!   is told to leave after its next request instead of having its idle connection cut under a
//!   request it is about to send. When the listeners close, idle connections are closed and a
//!   busy one finishes its request.
//! - HTTP/2: GOAWAY (hyper's graceful shutdown) at the start of the drain for connections opened
//!   before it, when the listeners close for those opened during the accept period; open streams
//!   finish.
//!
//! HTTP/2 connections are bounded too: at most `DEFAULT_H2_MAX_CONCURRENT_STREAMS` streams, and a
//! graceful close (GOAWAY) once no request started for `DEFAULT_H2_IDLE_TIMEOUT` or the connection
//! is `DEFAULT_H2_MAX_CONNECTION_AGE` old (hyper has neither, so they are kept here).

use std::{
    convert::Infallible,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    task::{Context, Poll, ready},
    time::Duration,
};

use http::{HeaderValue, StatusCode, header};
use hyper::{body::Incoming, service::Service};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};

use super::{Response, headers::CODEC_MAX_HEADER_LIST_SIZE};
use crate::config::{DEFAULT_H2_IDLE_TIMEOUT, DEFAULT_H2_MAX_CONCURRENT_STREAMS, DEFAULT_H2_MAX_CONNECTION_AGE};
use crate::drain::{self, Drain};

/// A client has this long to send a request's headers; slow-loris connections are closed.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);
/// Finds dead HTTP/2 clients (a peer proxy whose host vanished).
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

pub async fn serve_h1<I, S>(io: I, svc: S, watch: &drain::Watch)
where
    I: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    S: Service<http::Request<Incoming>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let svc = CloseWhenDraining { inner: svc, drain: watch.drain().clone() };
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_buf_size(CODEC_MAX_HEADER_LIST_SIZE)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades();
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = watch.closing() => {
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
    S: Service<http::Request<Incoming>, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    let requests = Arc::new(AtomicU64::new(0));
    let svc = CountRequests { inner: svc, requests: requests.clone() };
    let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .timer(TokioTimer::new())
        .keep_alive_interval(H2_KEEPALIVE)
        .max_concurrent_streams(DEFAULT_H2_MAX_CONCURRENT_STREAMS)
        .max_header_list_size(CODEC_MAX_HEADER_LIST_SIZE as u32)
        .serve_connection(TokioIo::new(io), svc);
    tokio::pin!(conn);
    let r = tokio::select! {
        r = conn.as_mut() => r,
        _ = watch.wind_down() => {
            conn.as_mut().graceful_shutdown();
            conn.await
        }
        why = idle_or_aged(&requests, DEFAULT_H2_IDLE_TIMEOUT, DEFAULT_H2_MAX_CONNECTION_AGE) => {
            tracing::debug!(why, "closing HTTP/2 connection gracefully");
            conn.as_mut().graceful_shutdown();
            tokio::select! {
                r = conn.as_mut() => r,
                // A drain that starts meanwhile needs nothing more: GOAWAY is sent already.
                _ = watch.closing() => conn.await,
            }
        }
    };
    if let Err(e) = r {
        tracing::debug!(error = %e, "HTTP/2 connection ended");
    }
}

/// Resolves once no request started (`requests` did not move) for `idle` — checked every `idle`, so
/// after between one and two of them — or once `max_age` has passed, whichever is first.
async fn idle_or_aged(requests: &AtomicU64, idle: Duration, max_age: Duration) -> &'static str {
    let aged = tokio::time::sleep(max_age);
    tokio::pin!(aged);
    let mut seen = requests.load(Ordering::Relaxed);
    loop {
        tokio::select! {
            _ = aged.as_mut() => return "max connection age",
            _ = tokio::time::sleep(idle) => {
                let now = requests.load(Ordering::Relaxed);
                if now == seen {
                    return "idle";
                }
                seen = now;
            }
        }
    }
}

/// Counts the requests an HTTP/2 connection started, for [`idle_or_aged`].
struct CountRequests<S> {
    inner: S,
    requests: Arc<AtomicU64>,
}

impl<S: Service<http::Request<Incoming>>> Service<http::Request<Incoming>> for CountRequests<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn call(&self, req: http::Request<Incoming>) -> Self::Future {
        self.requests.fetch_add(1, Ordering::Relaxed);
        self.inner.call(req)
    }
}

/// Wraps an HTTP/1 connection's service: hands the drain to upgrades (through the request's
/// extensions, see [`super::upgrade`]) and marks responses `connection: close` while draining.
struct CloseWhenDraining<S> {
    inner: S,
    drain: Drain,
}

impl<S> Service<http::Request<Incoming>> for CloseWhenDraining<S>
where
    S: Service<http::Request<Incoming>, Response = Response, Error = Infallible>,
{
    type Response = Response;
    type Error = Infallible;
    type Future = MarkClose<S::Future>;

    fn call(&self, mut req: http::Request<Incoming>) -> Self::Future {
        req.extensions_mut().insert(self.drain.clone());
        MarkClose { inner: self.inner.call(req), drain: self.drain.clone() }
    }
}

pin_project_lite::pin_project! {
    struct MarkClose<F> {
        #[pin]
        inner: F,
        drain: Drain,
    }
}

impl<F> Future for MarkClose<F>
where
    F: Future<Output = Result<Response, Infallible>>,
{
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let Ok(mut rsp) = ready!(this.inner.poll(cx));
        if this.drain.is_draining() && rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
            rsp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        Poll::Ready(Ok(rsp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_and_aged_connections_are_found() {
        let requests = AtomicU64::new(0);
        let start = tokio::time::Instant::now();
        assert_eq!(idle_or_aged(&requests, Duration::from_secs(10), Duration::from_secs(100)).await, "idle");
        assert!(start.elapsed() < Duration::from_secs(21));
        // Busy all along: only its age ends it.
        let busy = async {
            loop {
                requests.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        let start = tokio::time::Instant::now();
        let why = tokio::select! {
            why = idle_or_aged(&requests, Duration::from_secs(10), Duration::from_secs(100)) => why,
            _ = busy => unreachable!(),
        };
        assert_eq!((why, start.elapsed()), ("max connection age", Duration::from_secs(100)));
    }
}
