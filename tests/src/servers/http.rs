//! `strait-testsrv http`: HTTP/1.1 and h2c (prior knowledge) on one port.
//!
//! | route | answer |
//! | --- | --- |
//! | `GET /`, any unknown path, any method | 200, body `NAME METHOD PATH` (PATH with its query, if any) |
//! | `POST /echo` | the request body streamed back, chunked |
//! | `POST /upload` | the body consumed as it streams in; `bytes=<N> sum=<wrapping u64 sum of the bytes>` |
//! | `GET /chunked?n=K[&delay_ms=D]` | K chunks `chunk-<i>\n` (i from 0), D ms apart |
//! | `GET /bytes/N` | N bytes, byte i = i % 251, with `content-length` |
//! | `GET /slow?ms=N` | 200 `slow done` after N ms |
//! | `ANY /status/N` | status N (200..=599), body `status N` (none for 204 and 304) |
//! | `GET /ws` + WebSocket upgrade | WebSocket echo of text and binary messages |
//! | `GET /headers` | the request headers as a JSON object (repeated headers joined by `, `) |
//! | `GET /count` | how many requests this process served, not counting `/count` and `/cancelled` |
//! | `GET /cancelled` | how many of them the client abandoned before the response's end |
//! | `POST /record` with `x-request-id: ID` | the body consumed, then `ID` remembered; answers `recorded ID bytes=<N>` (400 without the header) |
//! | `GET /recorded` | every `ID` `POST /record` remembered, one per line in arrival order (a repeated one appears again) |
//! | `POST /fault?status=N&percent=P&delay_ms=D&hang=1&reset=1` | from now on every other request is delayed D ms, then hangs forever, or has its connection reset, or is answered with status N (P % of requests, default all); `POST /fault` alone clears the fault |
//!
//! Every response carries `x-served-by: NAME`, `x-seen-host` (the `Host` header, else the URI's
//! authority as HTTP/2 `:authority`), `x-seen-client-id` (the `strait-client-id` header, or empty),
//! `x-seen-version` (`HTTP/1.1` or `HTTP/2.0`) and `x-seen-peer` (the TCP peer address of the
//! connection the request came on: under interception, the local proxy).

use std::io;
use std::sync::{Arc, Mutex};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::header::{CONNECTION, HOST, SEC_WEBSOCKET_ACCEPT, SEC_WEBSOCKET_KEY, UPGRADE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

use super::body::{Boxed, Completion, PatternBody, Tracked, full, streamed};
use super::{BoxError, accept_loop};

struct State {
    served_by: HeaderValue,
    name: String,
    served: AtomicU64,
    cancelled: Arc<AtomicU64>,
    fault: Fault,
    /// The ids `POST /record` saw, in arrival order.
    recorded: Mutex<Vec<String>>,
}

/// Faults switched on at run time through `POST /fault`, applied to every other request.
#[derive(Default)]
struct Fault {
    status: AtomicU32,
    percent: AtomicU32,
    delay_ms: AtomicU64,
    hang: AtomicBool,
    reset: AtomicBool,
}

/// Serves the HTTP test application on `listener` until dropped.
pub async fn serve(listener: TcpListener, name: &str) -> io::Result<()> {
    let state = Arc::new(State {
        served_by: HeaderValue::from_str(name).unwrap_or(HeaderValue::from_static("invalid-name")),
        name: name.to_owned(),
        served: AtomicU64::new(0),
        cancelled: Arc::new(AtomicU64::new(0)),
        fault: Fault::default(),
        recorded: Mutex::new(Vec::new()),
    });
    accept_loop(listener, move |stream| {
        let state = state.clone();
        let peer = stream
            .peer_addr()
            .ok()
            .and_then(|a| HeaderValue::from_str(&a.to_string()).ok())
            .unwrap_or(HeaderValue::from_static(""));
        async move {
            let service = service_fn(move |request| handle(state.clone(), peer.clone(), request));
            let mut builder = auto::Builder::new(TokioExecutor::new());
            // Large header lists are the proxy's to limit, not the test app's (hyper's HTTP/2
            // default is 16 KiB).
            builder.http2().max_header_list_size(256 * 1024);
            builder.serve_connection_with_upgrades(TokioIo::new(stream), service).await
        }
    })
    .await
}

async fn handle(
    state: Arc<State>,
    peer: HeaderValue,
    request: Request<Incoming>,
) -> Result<Response<Tracked>, BoxError> {
    let introspection = (request.method() == Method::GET
        && matches!(request.uri().path(), "/count" | "/cancelled" | "/recorded"))
        || (request.method() == Method::POST && request.uri().path() == "/fault");
    if !introspection {
        state.served.fetch_add(1, Ordering::Relaxed);
    }
    // Dropped unfinished if this future or the response body is dropped early (client gone).
    let completion = Completion::new(state.cancelled.clone());
    if introspection {
        completion.finish();
    }
    let mut seen = seen_headers(&state, &request);
    seen.insert("x-seen-peer", peer);
    if !introspection {
        if let Some(response) = apply_fault(&state.fault).await? {
            let mut response = response;
            response.headers_mut().extend(seen);
            return Ok(response.map(|body| Tracked::new(body, completion)));
        }
    }
    let mut response = route(&state, request).await;
    response.headers_mut().extend(seen);
    Ok(response.map(|body| Tracked::new(body, completion)))
}

fn seen_headers(state: &State, request: &Request<Incoming>) -> HeaderMap {
    let headers = request.headers();
    let host = headers.get(HOST).cloned().or_else(|| {
        request
            .uri()
            .authority()
            .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
    });
    let client_id = headers.get("strait-client-id").cloned();
    let version = format!("{:?}", request.version());
    let mut seen = HeaderMap::new();
    seen.insert("x-served-by", state.served_by.clone());
    seen.insert("x-seen-host", host.unwrap_or(HeaderValue::from_static("")));
    seen.insert(
        "x-seen-client-id",
        client_id.unwrap_or(HeaderValue::from_static("")),
    );
    if let Ok(version) = HeaderValue::from_str(&version) {
        seen.insert("x-seen-version", version);
    }
    seen
}

async fn route(state: &State, request: Request<Incoming>) -> Response<Boxed> {
    let path = request.uri().path().to_owned();
    let method = request.method().clone();
    match (&method, path.as_str()) {
        (&Method::GET, "/count") => text(state.served.load(Ordering::Relaxed).to_string()),
        (&Method::GET, "/cancelled") => text(state.cancelled.load(Ordering::Relaxed).to_string()),
        (&Method::POST, "/fault") => set_fault(&state.fault, &request),
        (&Method::POST, "/echo") => echo(request),
        (&Method::POST, "/upload") => upload(request).await,
        (&Method::POST, "/record") => record(state, request).await,
        (&Method::GET, "/recorded") => {
            let ids = state.recorded.lock().unwrap_or_else(|p| p.into_inner());
            text(ids.iter().map(|id| format!("{id}\n")).collect::<String>())
        }
        (&Method::GET, "/chunked") => chunked(&request),
        (&Method::GET, "/slow") => {
            let ms = query_u64(&request, "ms").unwrap_or(0);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            text("slow done")
        }
        (&Method::GET, "/headers") => headers_json(&request),
        (&Method::GET, "/ws") if is_websocket_upgrade(&request) => websocket(request),
        (&Method::GET, p) if p.starts_with("/bytes/") => {
            match p["/bytes/".len()..].parse::<u64>() {
                Ok(n) => Response::new(PatternBody::new(n).boxed()),
                Err(_) => with_status(StatusCode::BAD_REQUEST, "bad length"),
            }
        }
        (_, p) if p.starts_with("/status/") => {
            let mut response = status(&p["/status/".len()..]);
            // `?strait-error=<value>`: an application that imitates the proxy's error header.
            let imitated = request.uri().query().into_iter().flat_map(|q| q.split('&')).find_map(|kv| kv.strip_prefix("strait-error="));
            if let Some(v) = imitated.and_then(|v| HeaderValue::from_str(v).ok()) {
                response.headers_mut().insert("strait-error", v);
            }
            response
        }
        _ => {
            let target = request
                .uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/");
            text(format!("{} {} {}", state.name, method, target))
        }
    }
}

fn set_fault(f: &Fault, request: &Request<Incoming>) -> Response<Boxed> {
    f.status.store(query_u64(request, "status").unwrap_or(0) as u32, Ordering::Relaxed);
    f.percent.store(query_u64(request, "percent").unwrap_or(100).min(100) as u32, Ordering::Relaxed);
    f.delay_ms.store(query_u64(request, "delay_ms").unwrap_or(0), Ordering::Relaxed);
    f.hang.store(query_u64(request, "hang") == Some(1), Ordering::Relaxed);
    f.reset.store(query_u64(request, "reset") == Some(1), Ordering::Relaxed);
    text("fault set")
}

/// The configured fault for one request: `Ok(Some)` to answer with, `Err` to reset the
/// connection, `Ok(None)` to serve normally.
async fn apply_fault(f: &Fault) -> Result<Option<Response<Boxed>>, BoxError> {
    let delay = f.delay_ms.load(Ordering::Relaxed);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    if f.hang.load(Ordering::Relaxed) {
        std::future::pending::<()>().await;
    }
    if f.reset.load(Ordering::Relaxed) {
        return Err("fault: reset".into());
    }
    match f.status.load(Ordering::Relaxed) {
        0 => Ok(None),
        code if fastrand::u32(0..100) < f.percent.load(Ordering::Relaxed) => Ok(Some(status(&code.to_string()))),
        _ => Ok(None),
    }
}

fn text(body: impl Into<Bytes>) -> Response<Boxed> {
    let mut response = Response::new(full(body));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain"),
    );
    response
}

fn with_status(status: StatusCode, body: &'static str) -> Response<Boxed> {
    let mut response = text(body);
    *response.status_mut() = status;
    response
}

fn query_u64(request: &Request<Incoming>, key: &str) -> Option<u64> {
    request.uri().query()?.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        if k == key { v.parse().ok() } else { None }
    })
}

fn echo(request: Request<Incoming>) -> Response<Boxed> {
    // A stream body has no size hint, so the echo is chunked even when the request was not.
    let frames = futures_util::stream::unfold(request.into_body(), |mut body| async move {
        let frame = body.frame().await?;
        Some((frame.map_err(BoxError::from), body))
    });
    Response::new(streamed(frames))
}

async fn upload(request: Request<Incoming>) -> Response<Boxed> {
    let mut body = request.into_body();
    let (mut bytes, mut sum) = (0u64, 0u64);
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Some(data) = frame.data_ref() {
                    bytes += data.len() as u64;
                    sum = data.iter().fold(sum, |s, &b| s.wrapping_add(u64::from(b)));
                }
            }
            Err(_) => return with_status(StatusCode::BAD_REQUEST, "request body failed"),
        }
    }
    text(format!("bytes={bytes} sum={sum}"))
}

/// Remembers the request's id once its whole body has arrived: a request counted here reached the
/// application, so a client can tell duplicates (the same id twice, over all servers) from losses.
async fn record(state: &State, request: Request<Incoming>) -> Response<Boxed> {
    let Some(id) = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_owned) else {
        return with_status(StatusCode::BAD_REQUEST, "x-request-id missing");
    };
    let body = match request.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return with_status(StatusCode::BAD_REQUEST, "request body failed"),
    };
    state.recorded.lock().unwrap_or_else(|p| p.into_inner()).push(id.clone());
    text(format!("recorded {id} bytes={}", body.len()))
}

fn chunked(request: &Request<Incoming>) -> Response<Boxed> {
    let n = query_u64(request, "n").unwrap_or(3);
    let delay = Duration::from_millis(query_u64(request, "delay_ms").unwrap_or(0));
    let frames = futures_util::stream::unfold(0u64, move |i| async move {
        if i >= n {
            return None;
        }
        if i > 0 && !delay.is_zero() {
            tokio::time::sleep(delay).await;
        }
        let frame: Result<Frame<Bytes>, BoxError> =
            Ok(Frame::data(Bytes::from(format!("chunk-{i}\n"))));
        Some((frame, i + 1))
    });
    Response::new(streamed(frames))
}

fn status(code: &str) -> Response<Boxed> {
    let status = match code.parse::<u16>().ok().filter(|c| (200..=599).contains(c)) {
        Some(code) => StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST),
        None => return with_status(StatusCode::BAD_REQUEST, "status must be 200..=599"),
    };
    let mut response = if matches!(status.as_u16(), 204 | 304) {
        Response::new(full(Bytes::new()))
    } else {
        text(format!("status {}", status.as_u16()))
    };
    *response.status_mut() = status;
    response
}

fn headers_json(request: &Request<Incoming>) -> Response<Boxed> {
    let mut object = serde_json::Map::new();
    for name in request.headers().keys() {
        let values: Vec<String> = request
            .headers()
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        object.insert(
            name.as_str().to_owned(),
            serde_json::Value::String(values.join(", ")),
        );
    }
    let mut response = Response::new(full(serde_json::Value::Object(object).to_string()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn header_has_token(headers: &HeaderMap, name: http::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn is_websocket_upgrade(request: &Request<Incoming>) -> bool {
    let headers = request.headers();
    header_has_token(headers, CONNECTION, "upgrade")
        && header_has_token(headers, UPGRADE, "websocket")
        && headers.contains_key(SEC_WEBSOCKET_KEY)
}

fn websocket(mut request: Request<Incoming>) -> Response<Boxed> {
    let accept = request
        .headers()
        .get(SEC_WEBSOCKET_KEY)
        .map(|key| derive_accept_key(key.as_bytes()))
        .and_then(|accept| HeaderValue::from_str(&accept).ok());
    let Some(accept) = accept else {
        return with_status(StatusCode::BAD_REQUEST, "bad Sec-WebSocket-Key");
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        match on_upgrade.await {
            Ok(upgraded) => {
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None)
                        .await;
                if let Err(e) = websocket_echo(ws).await {
                    eprintln!("websocket: {e}");
                }
            }
            Err(e) => eprintln!("websocket upgrade: {e}"),
        }
    });
    let mut response = Response::new(full(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// Echoes text and binary messages until the client closes.
async fn websocket_echo<S>(mut ws: WebSocketStream<S>) -> Result<(), BoxError>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    while let Some(message) = ws.next().await {
        // Pings and the close handshake are answered by tungstenite on the next poll; the stream
        // ends once the close handshake is done.
        if let message @ (Message::Text(_) | Message::Binary(_)) = message? {
            ws.send(message).await?;
        }
    }
    Ok(())
}
