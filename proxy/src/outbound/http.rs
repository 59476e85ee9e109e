//! HTTP on the outbound side: each request is routed by its authority (absolute-form URI, Host or
//! `:authority`), then by the connection's original destination; meshed services go to an
//! endpoint's proxy as HTTP/2, everything else passes through unchanged. CONNECT opens a tunnel
//! that is handled like a new connection to the authority it names.

use std::{convert::Infallible, sync::Arc, time::Instant};

use http::{HeaderValue, Method, StatusCode, Uri, Version, header};
use hyper::body::Incoming;

use super::{DIRECTION, Io, Outbound, Target};
use crate::{
    discover::ServiceProfile,
    transport::header::{Header, Protocol},
    drain,
    http::{
        Body, ProxyError, Request, Response,
        client::Upstream,
        headers,
        metrics::{self, Deferred, Labels, Outcome, OwnedLabels},
        server, upgrade,
    },
};

#[derive(Clone)]
struct Handler {
    ob: Arc<Outbound>,
    target: Target,
}

pub(super) async fn serve_h1<I: Io>(ob: Arc<Outbound>, io: I, target: Target, watch: &drain::Watch) {
    let h = Handler { ob, target };
    server::serve_h1(io, hyper::service::service_fn(move |req| h.clone().handle(req)), watch).await
}

pub(super) async fn serve_h2<I: Io>(ob: Arc<Outbound>, io: I, target: Target, watch: &drain::Watch) {
    let h = Handler { ob, target };
    server::serve_h2(io, hyper::service::service_fn(move |req| h.clone().handle(req)), watch).await
}

impl Handler {
    async fn handle(self, req: http::Request<Incoming>) -> Result<Response, Infallible> {
        let start = Instant::now();
        if let Err(e) = headers::check_size(req.headers()) {
            return Ok(e.into_response());
        }
        if req.method() == Method::CONNECT {
            return Ok(self.connect(req));
        }
        let version = req.version();
        let mut req = req.map(Body::from);
        let authority = match request_authority(&req) {
            Some(a) => a,
            None => match &self.target {
                Target::OrigDst(a) => a.to_string(),
                Target::Tunnel(a) => a.to_string(),
                Target::Listener => {
                    return Ok(ProxyError::BadRequest("no authority").into_response());
                }
            },
        };
        let resolved = match self.ob.discovery.resolve(&authority).await {
            Ok(None) => match &self.target {
                Target::OrigDst(a) => self.ob.discovery.resolve_dst(*a).await,
                _ => Ok(None),
            },
            other => other,
        };
        // Discovery that has not answered fails closed: a destination it cannot place is never
        // assumed to be outside the mesh (that would send meshed traffic in plaintext).
        let (profile, unavailable) = match resolved {
            Ok(p) => (p, None),
            Err(e) => (None, Some(e)),
        };
        // The application never gets to set the identity header the inbound side vouches for.
        req.headers_mut().remove(headers::CLIENT_ID);
        // The route discovery defines for this request (its name, never its path, is the label).
        let route = profile.as_ref().and_then(|p| p.route(&req)).cloned();

        // Labels name what the mesh resolved, never the authority the client wrote: a destination
        // outside the mesh is `unknown`, so random hosts cannot grow the registry.
        let (result, labels_authority, peer, dst_workload) = match &profile {
            Some(p) => {
                let (r, peer, workload) = self.to_service(req, p, &authority).await;
                (r, &*p.authority, peer, workload)
            }
            None => match unavailable {
                Some(e) => (Err(e.into()), crate::metrics::UNKNOWN, None, None),
                None => (self.passthrough(req, &authority).await, crate::metrics::UNKNOWN, None, None),
            },
        };
        let labels = Labels {
            direction: DIRECTION,
            authority: labels_authority,
            dst_service: profile.as_ref().map_or("", |p| &p.name),
            dst_namespace: profile.as_ref().map_or("", |p| &p.namespace),
            tls: if peer.is_some() { "true" } else { "false" },
            peer_id: peer.as_deref().unwrap_or(""),
            src_workload: &self.ob.src_workload,
            src_namespace: &self.ob.src_namespace,
            dst_workload: dst_workload.as_deref().unwrap_or(""),
            route: route.as_deref().map_or("", |r| r),
        };
        let rsp = match result {
            Ok(mut rsp) => {
                let peer_tls = peer.is_some();
                let deferred = metrics::status_in_trailers(rsp.headers()).then(|| {
                    let owned = OwnedLabels {
                        direction: DIRECTION,
                        authority: profile.as_ref().map(|p| p.authority.clone()),
                        dst_service: profile.as_ref().map(|p| p.name.clone()),
                        dst_namespace: profile.as_ref().map(|p| p.namespace.clone()),
                        tls: if peer_tls { "true" } else { "false" },
                        peer_id: peer.clone(),
                        src_workload: Some(self.ob.src_workload.clone()),
                        src_namespace: Some(self.ob.src_namespace.clone()),
                        dst_workload: dst_workload.clone(),
                        route: route.clone(),
                    };
                    Deferred::new(&self.ob.metrics, owned, rsp.status(), start.elapsed())
                });
                if deferred.is_none() {
                    let grpc = rsp.headers().get("grpc-status").and_then(|v| v.to_str().ok());
                    let outcome = Outcome::Response { status: rsp.status(), grpc_status: grpc, broken: false };
                    metrics::record(&self.ob.metrics, &labels, &outcome, start.elapsed());
                }
                if rsp.status() != StatusCode::SWITCHING_PROTOCOLS {
                    headers::strip_hop_by_hop(rsp.headers_mut());
                }
                *rsp.version_mut() = version;
                match deferred {
                    Some(metrics) => rsp.map(|body| Body::Trailed { body, metrics }),
                    None => rsp.map(Body::from),
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, %authority, "outbound request failed");
                let outcome = Outcome::ProxyError { status: e.status(), kind: e.kind() };
                metrics::record(&self.ob.metrics, &labels, &outcome, start.elapsed());
                e.into_response()
            }
        };
        Ok(rsp)
    }

    /// Through the service's resilience stack to one of its endpoints; also returns the identity
    /// the endpoint proved when the hop is mesh TLS, and the endpoint's workload.
    async fn to_service(
        &self,
        mut req: Request,
        p: &Arc<ServiceProfile>,
        authority: &str,
    ) -> (Result<Upstream, ProxyError>, Option<Arc<str>>, Option<Arc<str>>) {
        let logical = self.ob.logicals.get(p, &self.ob.metrics);
        if headers::is_upgrade(req.headers()) {
            // An upgrade becomes a byte stream: balanced, but never retried or timed out.
            let pick = match logical.balancer.pick(false, None) {
                Ok(p) => p,
                Err(e) => return (Err(e), None, None),
            };
            let r = self.to_endpoint(req, &pick.state.endpoint, authority).await;
            return (r, None, pick.state.endpoint.workload.clone());
        }
        // Rewritten once for every attempt: the HTTP/2 hop to the peer proxy.
        if req.version() != Version::HTTP_2 {
            req.headers_mut().insert(headers::ORIG_PROTO, headers::ORIG_PROTO_HTTP1);
        }
        headers::strip_hop_by_hop(req.headers_mut());
        let host = req.headers_mut().remove(header::HOST);
        match absolute(req.uri(), host.as_ref(), authority) {
            Ok(uri) => *req.uri_mut() = uri,
            Err(e) => return (Err(e), None, None),
        }
        let sent = logical
            .call(req, &self.ob.metrics, |req, ep| async move { self.to_endpoint(req, &ep.endpoint, authority).await })
            .await;
        let peer = sent.peer.filter(|id| self.ob.clients.uses_tls(Some(id)));
        (sent.result, peer, sent.workload)
    }

    async fn to_endpoint(&self, mut req: Request, ep: &crate::discover::Endpoint, authority: &str) -> Result<Upstream, ProxyError> {
        let port = ep.addr.port();
        let upgrade = headers::is_upgrade(req.headers());
        match ep.proxy {
            Some(proxy) if upgrade => {
                set_origin_form(&mut req, authority)?;
                let header = Header { port, protocol: Protocol::Http1 };
                let io = self.ob.clients.connect_peer(proxy, ep.identity.as_ref(), header).await?;
                upgrade::send(io, req).await
            }
            Some(proxy) => self.ob.clients.to_peer(proxy, port, ep.identity.as_ref(), req).await.map(|mut rsp| {
                rsp.extensions_mut().insert(crate::outbound::policy::retry::FromPeerProxy);
                rsp
            }),
            None => {
                // Not meshed: the request goes out as the client sent it.
                if req.headers_mut().remove(headers::ORIG_PROTO).is_some() {
                    *req.version_mut() = Version::HTTP_11;
                    let host = req.uri().authority().map(|a| a.as_str().to_string());
                    if let Some(h) = host.and_then(|h| HeaderValue::from_str(&h).ok()) {
                        req.headers_mut().insert(header::HOST, h);
                    }
                }
                self.direct(req, ep.addr, authority).await
            }
        }
    }

    /// To a destination the mesh does not know: the original destination, or the authority's
    /// address from DNS.
    async fn passthrough(&self, req: Request, authority: &str) -> Result<Upstream, ProxyError> {
        self.ob.metrics.passthrough.with_label_values(&[DIRECTION, "http"]).inc();
        let addr = match &self.target {
            Target::OrigDst(a) => *a,
            _ if self.ob.own.named_by(authority) => return Err(ProxyError::LoopDetected),
            _ => self.ob.dns.resolve(authority).await.map_err(ProxyError::ConnectFailed)?,
        };
        if self.ob.own.contains(addr) {
            return Err(ProxyError::LoopDetected);
        }
        self.direct(req, addr, authority).await
    }

    /// To a plain address, in the protocol the client spoke.
    async fn direct(&self, mut req: Request, addr: std::net::SocketAddr, authority: &str) -> Result<Upstream, ProxyError> {
        if req.version() == Version::HTTP_2 {
            headers::strip_hop_by_hop(req.headers_mut());
            let host = req.headers_mut().remove(header::HOST);
            *req.uri_mut() = absolute(req.uri(), host.as_ref(), authority)?;
            return self.ob.clients.to_h2(addr, req).await;
        }
        if headers::is_upgrade(req.headers()) {
            set_origin_form(&mut req, authority)?;
            let io = self.ob.clients.connect(addr).await?;
            return upgrade::send(io, req).await;
        }
        ensure_host(&mut req, authority);
        self.ob.clients.to_h1(addr, req).await
    }

    /// CONNECT authority: answer 200, then treat the tunnel as a new connection to the authority.
    fn connect(&self, req: http::Request<Incoming>) -> Response {
        let Some(authority) = req.uri().authority().map(|a| Arc::<str>::from(a.as_str())) else {
            return ProxyError::BadRequest("CONNECT needs host:port").into_response();
        };
        if self.ob.own.named_by(&authority) {
            return ProxyError::LoopDetected.into_response();
        }
        let ob = self.ob.clone();
        tokio::spawn(async move {
            match hyper::upgrade::on(req).await {
                Ok(upgraded) => {
                    let watch = ob.drain.watch();
                    let io: Box<dyn Io> = Box::new(hyper_util::rt::TokioIo::new(upgraded));
                    serve_tunnel(ob, io, authority, watch).await
                }
                Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
            }
        });
        http::Response::new(Body::empty())
    }
}

/// A boxed future breaks the type cycle of a tunnel that could itself carry HTTP (and CONNECT).
fn serve_tunnel(
    ob: Arc<Outbound>,
    io: Box<dyn Io>,
    authority: Arc<str>,
    watch: drain::Watch,
) -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> {
    Box::pin(async move { ob.serve_io(io, Target::Tunnel(authority), &watch).await })
}

/// The authority a request names: absolute-form URI or `:authority`, else Host.
fn request_authority<B>(req: &http::Request<B>) -> Option<String> {
    if let Some(a) = req.uri().authority() {
        return Some(a.as_str().to_string());
    }
    req.headers().get(header::HOST).and_then(|h| h.to_str().ok()).map(str::to_string)
}

/// `http://<authority><path>` for an HTTP/2 hop; the authority is the Host the client sent, or the
/// one it resolved by.
fn absolute(uri: &Uri, host: Option<&HeaderValue>, authority: &str) -> Result<Uri, ProxyError> {
    let auth = uri
        .authority()
        .map(|a| a.as_str())
        .or_else(|| host.and_then(|h| h.to_str().ok()))
        .unwrap_or(authority);
    let pq = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    Uri::builder()
        .scheme(uri.scheme().cloned().unwrap_or(http::uri::Scheme::HTTP))
        .authority(auth)
        .path_and_query(pq)
        .build()
        .map_err(|_| ProxyError::BadRequest("request target"))
}

/// HTTP/1 to the next hop: origin-form target, Host set.
fn set_origin_form(req: &mut Request, authority: &str) -> Result<(), ProxyError> {
    ensure_host(req, authority);
    if req.uri().authority().is_some() {
        let pq = req.uri().path_and_query().map(|p| p.as_str()).unwrap_or("/");
        *req.uri_mut() = pq.parse().map_err(|_| ProxyError::BadRequest("request target"))?;
    }
    *req.version_mut() = Version::HTTP_11;
    Ok(())
}

fn ensure_host(req: &mut Request, authority: &str) {
    if !req.headers().contains_key(header::HOST) {
        let host = req.uri().authority().map(|a| a.as_str()).unwrap_or(authority);
        if let Ok(v) = HeaderValue::from_str(host) {
            req.headers_mut().insert(header::HOST, v);
        }
    }
}
