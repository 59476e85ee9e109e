//! Small HTTP, gRPC and tunnel clients for tests: one fresh connection per call, whole bodies
//! collected, so a test reads like the request it makes.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode, Uri, Version};
use http_body_util::{BodyExt, Empty};
use hyper::body::{Body, Incoming};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Upper bound on any one request made by these helpers, so a hung peer fails a test instead of
/// hanging it.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// A response with its whole body.
#[derive(Debug, Clone)]
pub struct HttpResponse {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl HttpResponse {
    /// The body as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// A header's value, if present and visible ASCII.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

fn other(context: &str, e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("{context}: {e}"))
}

async fn with_timeout<T>(fut: impl Future<Output = io::Result<T>>) -> io::Result<T> {
    tokio::time::timeout(REQUEST_TIMEOUT, fut)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {REQUEST_TIMEOUT:?}"),
            ))
        })
}

/// Opens an HTTP/1.1 connection to `addr` (upgrades allowed); the connection task runs in the
/// background until the returned sender and its responses are dropped.
pub async fn http1_connect<B>(addr: SocketAddr) -> io::Result<http1::SendRequest<B>>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| other("http1 handshake", e))?;
    tokio::spawn(async move {
        let _ = conn.with_upgrades().await;
    });
    Ok(sender)
}

/// Opens an HTTP/2 connection to `addr` with prior knowledge (h2c).
pub async fn h2c_connect<B>(addr: SocketAddr) -> io::Result<http2::SendRequest<B>>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, conn) = http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
        .await
        .map_err(|e| other("h2c handshake", e))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

/// Reads a response's whole body.
pub async fn collect(response: Response<Incoming>) -> io::Result<HttpResponse> {
    let (parts, body) = response.into_parts();
    let body = body
        .collect()
        .await
        .map_err(|e| other("reading response body", e))?
        .to_bytes();
    Ok(HttpResponse {
        status: parts.status,
        version: parts.version,
        headers: parts.headers,
        body,
    })
}

/// Sends `request` as is (request target and `Host` header as the caller built them) on a new
/// HTTP/1.1 connection to `addr`.
pub async fn send_http1<B>(addr: SocketAddr, request: Request<B>) -> io::Result<HttpResponse>
where
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    with_timeout(async {
        let mut sender = http1_connect(addr).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| other("http1 request", e))?;
        collect(response).await
    })
    .await
}

/// Sends `request` on a new h2c connection to `addr`. The request's URI should be absolute
/// (`http://authority/path`): its authority becomes `:authority`.
pub async fn send_h2c<B>(addr: SocketAddr, request: Request<B>) -> io::Result<HttpResponse>
where
    B: Body + Send + Unpin + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    with_timeout(async {
        let mut sender = h2c_connect(addr).await?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| other("h2c request", e))?;
        collect(response).await
    })
    .await
}

/// Splits `http://host:port/path?q` into its authority and its origin-form target (`/` if empty).
pub fn split_http_url(url: &str) -> io::Result<(String, String)> {
    let uri: Uri = url.parse().map_err(|e| other(url, e))?;
    if uri.scheme_str() != Some("http") {
        return Err(other(url, "only http:// URLs are supported"));
    }
    let authority = uri
        .authority()
        .ok_or_else(|| other(url, "no authority"))?
        .to_string();
    let target = uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let target = if target.is_empty() { "/" } else { target };
    Ok((authority, target.to_owned()))
}

async fn resolve(authority: &str) -> io::Result<SocketAddr> {
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    tokio::net::lookup_host(&with_port)
        .await?
        .next()
        .ok_or_else(|| other(authority, "resolves to no address"))
}

fn get_request(target: &str, host: &str) -> io::Result<Request<Empty<Bytes>>> {
    Request::get(target)
        .header(http::header::HOST, host)
        .body(Empty::new())
        .map_err(|e| other(target, e))
}

/// `GET url` over HTTP/1.1 straight to the URL's host (origin-form request).
pub async fn http_get(url: &str) -> io::Result<HttpResponse> {
    let (authority, target) = split_http_url(url)?;
    let addr = resolve(&authority).await?;
    send_http1(addr, get_request(&target, &authority)?).await
}

/// `GET url` through the HTTP proxy at `proxy` (for a Strait proxy: its outbound listener), as an
/// absolute-form HTTP/1.1 request (`GET http://web.demo:8080/path HTTP/1.1` with `Host: web.demo:8080`).
pub async fn http_get_via_proxy(proxy: SocketAddr, url: &str) -> io::Result<HttpResponse> {
    let (authority, _) = split_http_url(url)?;
    send_http1(proxy, get_request(url, &authority)?).await
}

/// Repeats `GET url` until it answers 200 or `timeout` passes (error `TimedOut` with the last failure).
pub async fn wait_for_http_ok(url: &str, timeout: Duration) -> io::Result<()> {
    crate::net::retry_until(&format!("GET {url} not 200"), timeout, || async move {
        match tokio::time::timeout(Duration::from_secs(2), http_get(url)).await {
            Ok(Ok(response)) if response.status == StatusCode::OK => Ok(()),
            Ok(Ok(response)) => Err(format!("status {}", response.status)),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("no answer within 2s".to_owned()),
        }
    })
    .await
}

/// Opens a TCP tunnel to `authority` through the HTTP proxy at `proxy` with `CONNECT`. Fails unless
/// the proxy answers 2xx; the returned stream starts right after the proxy's response head.
pub async fn http_connect_tunnel(proxy: SocketAddr, authority: &str) -> io::Result<TcpStream> {
    with_timeout(async {
        let mut stream = TcpStream::connect(proxy).await?;
        stream.set_nodelay(true)?;
        let head = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream.write_all(head.as_bytes()).await?;
        // Read byte by byte so that nothing after the head is consumed.
        let mut response = Vec::new();
        while !response.ends_with(b"\r\n\r\n") {
            if response.len() > 16 * 1024 {
                return Err(other("CONNECT", "response head over 16 KiB"));
            }
            let byte = stream.read_u8().await?;
            response.push(byte);
        }
        let head = String::from_utf8_lossy(&response);
        let status_line = head.lines().next().unwrap_or_default();
        let status = status_line.split_whitespace().nth(1).unwrap_or_default();
        if !status.starts_with('2') {
            return Err(other("CONNECT refused", status_line));
        }
        Ok(stream)
    })
    .await
}

/// A gRPC channel that connects to `addr` (for example a proxy's outbound listener) and names
/// `authority` (for example `echo.demo:8080`) in every request's `:authority`.
pub async fn grpc_channel(
    addr: SocketAddr,
    authority: &str,
) -> io::Result<tonic::transport::Channel> {
    let origin: Uri = format!("http://{authority}")
        .parse()
        .map_err(|e| other(authority, e))?;
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .map_err(|e| other("endpoint", e))?
        .origin(origin)
        .connect_timeout(Duration::from_secs(10))
        .connect()
        .await
        .map_err(|e| other("grpc connect", e))
}
