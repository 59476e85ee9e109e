//! Clients towards the next hop: HTTP/2 connections to peer proxies (one per endpoint, every
//! request multiplexed over it), and HTTP/1 and HTTP/2 connections to plain addresses (an
//! application behind the inbound side, or a destination outside the mesh).
//!
//! Connections are cached per destination and reused; a stale cached connection (the peer went
//! away) is replaced once, transparently, when the request had not been sent on it yet.

use std::{
    collections::HashMap,
    hash::Hash,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use http::Uri;
use hyper::{body::Incoming, client::conn::http2};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioIo, TokioTimer},
};
use tokio::{
    io::{AsyncRead, AsyncWrite, AsyncWriteExt},
    net::TcpStream,
};

use super::{Body, ProxyError, Request};
use crate::{
    metrics::Metrics,
    tls::{HandshakeError, Tls},
    transport::{
        BoxedIo,
        header::{Header, Protocol},
    },
};

pub type Upstream = http::Response<Incoming>;

/// Idle pooled HTTP/1 connections to one application address: enough for a burst of concurrent
/// requests to be reused, few enough that an idle sidecar holds little.
const H1_MAX_IDLE_PER_HOST: usize = 64;
const H1_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keeps HTTP/2 connections to peers alive through idle periods and finds dead ones.
const H2_KEEPALIVE: Duration = Duration::from_secs(20);

pub struct Clients {
    connect_timeout: Duration,
    /// Mesh TLS towards peers, when this proxy has an identity.
    tls: Option<Arc<Tls>>,
    metrics: Metrics,
    h1: Client<HttpConnector, Body>,
    h2: H2Pool<SocketAddr>,
    peers: H2Pool<(SocketAddr, u16)>,
}

impl Clients {
    pub fn new(connect_timeout: Duration, tls: Option<Arc<Tls>>, metrics: Metrics) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        connector.enforce_http(false);
        let h1 = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(H1_MAX_IDLE_PER_HOST)
            .pool_idle_timeout(H1_IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .http1_max_buf_size(super::headers::CODEC_MAX_HEADER_LIST_SIZE)
            .build(connector);
        Clients { connect_timeout, tls, metrics, h1, h2: H2Pool::default(), peers: H2Pool::default() }
    }

    /// Whether connections to an endpoint with this identity use mesh TLS.
    pub fn uses_tls(&self, identity: Option<&Arc<str>>) -> bool {
        self.tls.is_some() && identity.is_some()
    }

    /// Connects to a peer proxy: mTLS when this proxy has an identity and discovery names the
    /// peer's, then the transport header.
    pub async fn connect_peer(
        &self,
        proxy: SocketAddr,
        identity: Option<&Arc<str>>,
        header: Header,
    ) -> Result<BoxedIo, ProxyError> {
        let tcp = connect(proxy, self.connect_timeout).await.map_err(ProxyError::ConnectFailed)?;
        let mut io: BoxedIo = match (&self.tls, identity) {
            (Some(tls), Some(id)) => match tls.connect(tcp, id).await {
                Ok(s) => {
                    self.metrics.tls_handshakes.with_label_values(&["outbound", "ok"]).inc();
                    Box::new(s)
                }
                Err(e) => {
                    tracing::debug!(%proxy, identity = %id, error = %e, "mesh TLS handshake failed");
                    return Err(match e {
                        HandshakeError::IdentityMismatch(_) => {
                            self.metrics.tls_handshakes.with_label_values(&["outbound", "identity-mismatch"]).inc();
                            ProxyError::IdentityMismatch
                        }
                        HandshakeError::Failed(e) => {
                            self.metrics.tls_handshakes.with_label_values(&["outbound", "error"]).inc();
                            ProxyError::ConnectFailed(e)
                        }
                        HandshakeError::BadIdentity(_) => ProxyError::IdentityMismatch,
                        HandshakeError::TimedOut(_) => {
                            self.metrics.tls_handshakes.with_label_values(&["outbound", "timeout"]).inc();
                            ProxyError::ConnectFailed(std::io::Error::new(std::io::ErrorKind::TimedOut, e))
                        }
                    });
                }
            },
            _ => Box::new(tcp),
        };
        io.write_all(&header.encode()).await.map_err(ProxyError::ConnectFailed)?;
        Ok(io)
    }

    /// Sends a request over the HTTP/2 connection to a peer proxy, for its workload's `port`.
    pub async fn to_peer(
        &self,
        proxy: SocketAddr,
        port: u16,
        identity: Option<&Arc<str>>,
        req: Request,
    ) -> Result<Upstream, ProxyError> {
        self.peers
            .send(&(proxy, port), req, || self.connect_peer(proxy, identity, Header { port, protocol: Protocol::Http2 }))
            .await
    }

    /// Sends a request over HTTP/2 with prior knowledge to a plain address.
    pub async fn to_h2(&self, addr: SocketAddr, req: Request) -> Result<Upstream, ProxyError> {
        let timeout = self.connect_timeout;
        self.h2.send(&addr, req, || async move { connect(addr, timeout).await.map_err(ProxyError::ConnectFailed) }).await
    }

    /// Sends a request over a pooled HTTP/1 connection to a plain address. The URI is rewritten to
    /// name the address; the Host header keeps the authority the client asked for.
    pub async fn to_h1(&self, addr: SocketAddr, mut req: Request) -> Result<Upstream, ProxyError> {
        *req.version_mut() = http::Version::HTTP_11;
        *req.uri_mut() = uri_for(addr, req.uri())?;
        self.h1.request(req).await.map_err(|e| {
            if e.is_connect() {
                ProxyError::ConnectFailed(std::io::Error::other(e))
            } else {
                ProxyError::Upstream(Box::new(e))
            }
        })
    }


    pub async fn connect(&self, addr: SocketAddr) -> Result<TcpStream, ProxyError> {
        connect(addr, self.connect_timeout).await.map_err(ProxyError::ConnectFailed)
    }
}

/// `http://<addr><path?query>`.
pub fn uri_for(addr: SocketAddr, uri: &Uri) -> Result<Uri, ProxyError> {
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme("http")
        .authority(addr.to_string())
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target"))
}

pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    let s = tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr} timed out")))??;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Sends a request on a fresh HTTP/1 connection, upgrades allowed (the connection is then the
/// upgraded stream's).
pub async fn send_h1_upgrade<T>(io: T, req: Request) -> Result<Upstream, ProxyError>
where
    T: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let (mut tx, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .map_err(|e| ProxyError::Upstream(Box::new(e)))?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "upgraded HTTP/1 client connection ended");
        }
    });
    tx.send_request(req).await.map_err(|e| ProxyError::Upstream(Box::new(e)))
}

/// HTTP/2 connections by destination.
pub struct H2Pool<K> {
    slots: Mutex<HashMap<K, Arc<Slot>>>,
}

/// One destination's connection. `sender` is read on every request (a short std lock, never held
/// across an await); `connecting` serialises connection set-up so a burst of first requests
/// shares one handshake instead of opening one connection each. The set-up under it is bounded
/// (connect timeout, then the TLS handshake timeout), and a request that waited for someone else's
/// attempt fails with it instead of starting its own: behind a peer that stalls every handshake,
/// each request waits for at most one attempt, not for every attempt queued ahead of it.
#[derive(Default)]
struct Slot {
    sender: Mutex<Option<http2::SendRequest<Body>>>,
    connecting: tokio::sync::Mutex<()>,
    /// Connection attempts started (under `connecting`).
    attempts: std::sync::atomic::AtomicU64,
}

impl Slot {
    fn live(&self) -> Option<http2::SendRequest<Body>> {
        let s = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        s.as_ref().filter(|s| !s.is_closed()).cloned()
    }

    fn clear_if_closed(&self) {
        let mut s = self.sender.lock().unwrap_or_else(|p| p.into_inner());
        if s.as_ref().is_some_and(|s| s.is_closed()) {
            *s = None;
        }
    }
}

impl<K> Default for H2Pool<K> {
    fn default() -> Self {
        H2Pool { slots: Mutex::new(HashMap::new()) }
    }
}

impl<K: Eq + Hash + Clone> H2Pool<K> {
    fn slot(&self, key: &K) -> Arc<Slot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(key) {
            return s.clone();
        }
        // Destinations come and go (pods are replaced); forget those whose connection is gone
        // whenever a new one appears, so the map stays as large as the live set.
        slots.retain(|_, slot| Arc::strong_count(slot) > 1 || slot.live().is_some());
        let s = Arc::new(Slot::default());
        slots.insert(key.clone(), s.clone());
        s
    }

    async fn connect<F, Fut, IO>(&self, slot: &Slot, connect: F) -> Result<http2::SendRequest<Body>, ProxyError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<IO, ProxyError>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        use std::sync::atomic::Ordering;
        let seen = slot.attempts.load(Ordering::Acquire);
        let _one_at_a_time = slot.connecting.lock().await;
        if let Some(tx) = slot.live() {
            return Ok(tx);
        }
        if slot.attempts.load(Ordering::Acquire) != seen {
            // The attempt this request waited for failed: nothing was sent, so the request may be
            // retried, but not by queueing another attempt here.
            return Err(ProxyError::ConnectFailed(std::io::Error::other(
                "the connection attempt this request waited for failed",
            )));
        }
        slot.attempts.fetch_add(1, Ordering::AcqRel);
        let io = connect().await?;
        let (tx, conn) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .keep_alive_interval(H2_KEEPALIVE)
            .keep_alive_while_idle(true)
            .max_header_list_size(super::headers::CODEC_MAX_HEADER_LIST_SIZE as u32)
            .handshake(TokioIo::new(io))
            .await
            .map_err(|e| ProxyError::ConnectFailed(std::io::Error::other(e)))?;
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP/2 client connection ended");
            }
        });
        *slot.sender.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx.clone());
        Ok(tx)
    }

    pub async fn send<F, Fut, IO>(&self, key: &K, mut req: Request, connect: F) -> Result<Upstream, ProxyError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<IO, ProxyError>>,
        IO: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    {
        *req.version_mut() = http::Version::HTTP_2;
        let slot = self.slot(key);
        let mut fresh = false;
        loop {
            let mut tx = match slot.live() {
                Some(tx) => tx,
                None => {
                    fresh = true;
                    self.connect(&slot, &connect).await?
                }
            };
            if tx.ready().await.is_err() {
                slot.clear_if_closed();
                if fresh {
                    return Err(ProxyError::ConnectFailed(std::io::ErrorKind::ConnectionReset.into()));
                }
                fresh = true;
                continue;
            }
            match tx.try_send_request(req).await {
                Ok(rsp) => return Ok(rsp),
                Err(mut e) => match e.take_message() {
                    // Not sent: the cached connection was dead. Try once on a new one.
                    Some(r) if !fresh => {
                        slot.clear_if_closed();
                        req = r;
                        fresh = true;
                    }
                    _ => return Err(ProxyError::Upstream(Box::new(e.into_error()))),
                },
            }
        }
    }
}
