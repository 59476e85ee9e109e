//! End-to-end: the data path through a pair of real proxies on loopback.
//!
//! client → proxy A (outbound, explicit HTTP proxy / h2c / CONNECT) → proxy B (inbound) → app.
//! Discovery comes from a static mesh file read by both proxies.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{Full, StreamBody};
use strait_tests::{
    ProxyHandle, TestDir, echo, free_addr, http_connect_tunnel, http_get_via_proxy, metrics, proxy_named, send_h2c,
    send_http1, testsrv_in,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct Pair {
    dir: TestDir,
    a: ProxyHandle,
    b: ProxyHandle,
    _apps: Vec<strait_tests::Process>,
    http_app: SocketAddr,
}

/// Starts the apps, then B (whose inbound address goes into the mesh file), then A.
async fn pair(extra_env: &[(&str, &str)]) -> Pair {
    let dir = TestDir::new("data-path");
    let (http_p, http_app) = testsrv_in(dir.path(), "http", "web").await;
    let (grpc_p, grpc_app) = testsrv_in(dir.path(), "grpc", "grpc").await;
    let (banner_p, banner_app) = testsrv_in(dir.path(), "banner", "banner").await;
    let (echo_p, echo_app) = testsrv_in(dir.path(), "tcp-echo", "echo").await;
    let b_inbound = free_addr();
    let mesh = format!(
        r#"
trustDomain: cluster.local
workloads:
  - {{name: server, namespace: demo, serviceAccount: server}}
services:
  - name: web
    namespace: demo
    clusterIP: 10.96.0.10
    ports: [{{port: 8080, protocol: http}}]
    endpoints: [{{address: "{http_app}", proxy: "{b_inbound}", workload: server}}]
  - name: grpc
    namespace: demo
    ports: [{{port: 9090, protocol: grpc}}]
    endpoints: [{{address: "{grpc_app}", proxy: "{b_inbound}", workload: server}}]
  - name: banner
    namespace: demo
    ports: [{{port: 2525, protocol: opaque}}]
    endpoints: [{{address: "{banner_app}", proxy: "{b_inbound}", workload: server}}]
  - name: echo
    namespace: demo
    ports: [{{port: 7000, protocol: opaque}}]
    endpoints: [{{address: "{echo_app}", proxy: "{b_inbound}", workload: server}}]
"#
    );
    let mesh_path = dir.write("mesh.yaml", &mesh);
    let mesh_path = mesh_path.to_str().unwrap().to_string();
    let b_in = b_inbound.to_string();
    let mut env_b = vec![
        ("STRAIT_DISCOVERY_FILE", mesh_path.as_str()),
        ("STRAIT_NAMESPACE", "demo"),
        ("STRAIT_WORKLOAD", "server"),
        ("STRAIT_INBOUND_ADDR", b_in.as_str()),
        ("STRAIT_LOG", "info"),
    ];
    env_b.extend_from_slice(extra_env);
    let b = proxy_named("proxy-b", &env_b).await;
    let mut env_a =
        vec![("STRAIT_DISCOVERY_FILE", mesh_path.as_str()), ("STRAIT_NAMESPACE", "demo"), ("STRAIT_WORKLOAD", "client")];
    env_a.extend_from_slice(extra_env);
    let a = proxy_named("proxy-a", &env_a).await;
    Pair { dir, a, b, _apps: vec![http_p, grpc_p, banner_p, echo_p], http_app }
}

fn post(url: &str, body: impl Into<Bytes>) -> Request<Full<Bytes>> {
    let host = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    Request::post(url).header("host", host).body(Full::new(body.into())).unwrap()
}

#[tokio::test]
async fn http1_get_post_and_chunked_through_the_pair() {
    let p = pair(&[]).await;
    let r = http_get_via_proxy(p.a.outbound, "http://web.demo:8080/hello").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "web GET /hello");
    assert_eq!(r.header("x-seen-host"), Some("web.demo:8080"));
    // HTTP/2 between the proxies, HTTP/1.1 again at the application.
    assert_eq!(r.header("x-seen-version"), Some("HTTP/1.1"));

    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
    let r = send_http1(p.a.outbound, post("http://web.demo:8080/echo", body.clone())).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body.as_ref(), body.as_slice());

    // A chunked request body (no content-length) and a chunked response.
    let chunks: Vec<Result<http_body::Frame<Bytes>, std::io::Error>> =
        (0..64).map(|i| Ok(http_body::Frame::data(Bytes::from(vec![i as u8; 1000])))).collect();
    let req = Request::post("http://web.demo:8080/upload")
        .header("host", "web.demo:8080")
        .body(StreamBody::new(futures_util::stream::iter(chunks)))
        .unwrap();
    let r = send_http1(p.a.outbound, req).await.unwrap();
    let sum: u64 = (0..64u64).map(|i| i * 1000).sum();
    assert_eq!(r.text(), format!("bytes=64000 sum={sum}"));
    let r = http_get_via_proxy(p.a.outbound, "http://web.demo:8080/chunked?n=50").await.unwrap();
    assert_eq!(r.text().lines().count(), 50);
    assert!(r.text().starts_with("chunk-0\n"));

    let ma = p.a.metrics().await;
    let out = metrics::value(&ma, "strait_requests_total", &[("direction", "outbound"), ("dst_service", "web")]);
    assert_eq!(out, 4.0, "{ma}");
    let mb = p.b.metrics().await;
    let inb = metrics::value(&mb, "strait_requests_total", &[("direction", "inbound"), ("status_code", "200")]);
    assert_eq!(inb, 4.0, "{mb}");
}

#[tokio::test]
async fn http1_requests_are_multiplexed_over_one_connection_between_proxies() {
    let p = pair(&[]).await;
    let mut tasks = Vec::new();
    for i in 0..20 {
        let a = p.a.outbound;
        // Each request on its own client connection.
        tasks.push(tokio::spawn(async move {
            http_get_via_proxy(a, &format!("http://web.demo:8080/r{i}")).await.unwrap().status
        }));
    }
    for t in tasks {
        assert_eq!(t.await.unwrap(), StatusCode::OK);
    }
    let mb = p.b.metrics().await;
    let conns = metrics::value(&mb, "strait_tcp_connections_opened_total", &[("direction", "inbound")]);
    assert_eq!(conns, 1.0, "20 requests from 20 client connections share one proxy-to-proxy connection");
    let ma = p.a.metrics().await;
    assert_eq!(metrics::value(&ma, "strait_tcp_connections_opened_total", &[("direction", "outbound")]), 20.0);
    assert_eq!(metrics::value(&ma, "strait_protocol_detect_total", &[("result", "http1")]), 20.0);
}

#[tokio::test]
async fn http2_prior_knowledge_keeps_http2_to_the_app() {
    let p = pair(&[]).await;
    let req = Request::get("http://web.demo:8080/h2").body(Full::new(Bytes::new())).unwrap();
    let r = send_h2c(p.a.outbound, req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "web GET /h2");
    assert_eq!(r.header("x-seen-version"), Some("HTTP/2.0"));
    assert_eq!(r.header("x-seen-host"), Some("web.demo:8080"));
    let ma = p.a.metrics().await;
    assert_eq!(metrics::value(&ma, "strait_protocol_detect_total", &[("result", "http2")]), 1.0);
}

#[tokio::test]
async fn grpc_unary_errors_and_bidirectional_streaming() {
    let p = pair(&[]).await;
    let ch = strait_tests::grpc_channel(p.a.outbound, "grpc.demo:9090").await.unwrap();
    let mut c = echo::echo_client::EchoClient::new(ch);
    let r = c.unary(echo::EchoRequest { message: "hi".into(), repeat: 0 }).await.unwrap().into_inner();
    assert_eq!(r.message, "hi");
    assert_eq!(r.seen_authority, "grpc.demo:9090");

    // A gRPC error status travels back (trailers-only response).
    let e = c.unary(echo::EchoRequest { message: "fail:14".into(), repeat: 0 }).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::Unavailable);

    // Server streaming: trailers after the messages.
    let mut s = c.server_stream(echo::EchoRequest { message: "s".into(), repeat: 5 }).await.unwrap().into_inner();
    let mut got = Vec::new();
    while let Some(m) = s.message().await.unwrap() {
        got.push(m.message);
    }
    assert_eq!(got, vec!["s 0", "s 1", "s 2", "s 3", "s 4"]);

    // Bidirectional: each reply arrives before the next request is sent.
    let (tx, rx) = tokio::sync::mpsc::channel(1);
    let mut replies = c.bidi(tokio_stream::wrappers::ReceiverStream::new(rx)).await.unwrap().into_inner();
    for i in 0..10 {
        tx.send(echo::EchoRequest { message: format!("m{i}"), repeat: 0 }).await.unwrap();
        let m = tokio::time::timeout(Duration::from_secs(5), replies.message()).await.unwrap().unwrap().unwrap();
        assert_eq!(m.message, format!("m{i}"));
    }
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    // A status in trailers after messages.
    let mut s = c.server_stream(echo::EchoRequest { message: "fail:13".into(), repeat: 2 }).await.unwrap().into_inner();
    assert!(s.message().await.unwrap().is_some() && s.message().await.unwrap().is_some());
    assert_eq!(s.message().await.unwrap_err().code(), tonic::Code::Internal);

    // Both proxies count every call by the status it ended with, from headers or from trailers.
    let (ma, mb) = (p.a.metrics().await, p.b.metrics().await);
    for (m, labels) in [(&ma, [("direction", "outbound"), ("dst_service", "grpc")]), (&mb, [("direction", "inbound"), ("authority", "grpc.demo:9090")])] {
        let count = |grpc: &str, outcome: &str| {
            let mut l = labels.to_vec();
            l.extend([("grpc_status", grpc), ("outcome", outcome)]);
            metrics::value(m, "strait_requests_total", &l)
        };
        assert_eq!(count("14", "failure"), 1.0, "trailers-only error\n{m}");
        assert_eq!(count("13", "failure"), 1.0, "error in trailers after messages\n{m}");
        assert_eq!(count("0", "success"), 3.0, "unary, server stream and bidi, status in trailers\n{m}");
        assert_eq!(count("", "success"), 0.0, "no gRPC call is left without its status\n{m}");
    }
}

async fn websocket_echo<S>(stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let (mut ws, rsp) = tokio_tungstenite::client_async("ws://web.demo:8080/ws", stream).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..5 {
        ws.send(tokio_tungstenite::tungstenite::Message::text(format!("ping {i}"))).await.unwrap();
        let m = ws.next().await.unwrap().unwrap();
        assert_eq!(m.into_text().unwrap().as_str(), format!("ping {i}"));
    }
    ws.send(tokio_tungstenite::tungstenite::Message::binary(vec![0u8, 1, 2, 255])).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_data().as_ref(), &[0u8, 1, 2, 255]);
    ws.close(None).await.unwrap();
}

#[tokio::test]
async fn websocket_echo_through_the_pair() {
    let p = pair(&[]).await;
    // Directly to the outbound listener, the service named by Host.
    let tcp = tokio::net::TcpStream::connect(p.a.outbound).await.unwrap();
    websocket_echo(tcp).await;
    // Through a CONNECT tunnel, as proxy-aware WebSocket clients do.
    let tunnel = http_connect_tunnel(p.a.outbound, "web.demo:8080").await.unwrap();
    websocket_echo(tunnel).await;
}

#[tokio::test]
async fn server_speaks_first_on_an_opaque_port() {
    let p = pair(&[]).await;
    let mut t = http_connect_tunnel(p.a.outbound, "banner.demo:2525").await.unwrap();
    // The server talks first; nothing was sent, and nothing waits for detection.
    let started = std::time::Instant::now();
    let mut buf = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), t.read(&mut buf)).await.unwrap().unwrap();
    assert_eq!(&buf[..n], b"220 banner ready\r\n");
    assert!(started.elapsed() < Duration::from_millis(900), "banner waited for detection: {:?}", started.elapsed());
    t.write_all(b"hello\r\n").await.unwrap();
    let n = t.read(&mut buf).await.unwrap();
    assert_eq!(&buf[..n], b"echo: hello\r\n");
}

#[tokio::test]
async fn opaque_tcp_passes_half_close_through() {
    let p = pair(&[]).await;
    let mut t = http_connect_tunnel(p.a.outbound, "echo.demo:7000").await.unwrap();
    let data: Vec<u8> = (0..300_000u32).map(|i| (i % 256) as u8).collect();
    let (mut r, mut w) = t.split();
    let write = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut got = Vec::new();
    let read = r.read_to_end(&mut got);
    let (_, n) = tokio::join!(write, read);
    n.unwrap();
    assert_eq!(got.len(), data.len());
    assert!(got == data);
}

#[tokio::test]
async fn passthrough_to_a_destination_outside_the_mesh() {
    let p = pair(&[]).await;
    let url = format!("http://{}/outside", p.http_app);
    let r = http_get_via_proxy(p.a.outbound, &url).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "web GET /outside");
    let ma = p.a.metrics().await;
    assert_eq!(metrics::value(&ma, "strait_passthrough_total", &[("protocol", "http")]), 1.0);
    let mb = p.b.metrics().await;
    assert_eq!(metrics::value(&mb, "strait_requests_total", &[]), 0.0, "B was not involved");
}

#[tokio::test]
async fn one_gib_upload_streams_without_buffering() {
    let p = pair(&[]).await;
    const CHUNK: usize = 256 * 1024;
    const CHUNKS: usize = 4096; // 1 GiB
    let chunk = Bytes::from((0..CHUNK).map(|i| (i % 251) as u8).collect::<Vec<u8>>());
    let per_chunk: u64 = chunk.iter().map(|b| *b as u64).sum();
    let c = chunk.clone();
    let stream = futures_util::stream::iter(0..CHUNKS).map(move |_| Ok::<_, std::io::Error>(http_body::Frame::data(c.clone())));
    let req = Request::post("http://web.demo:8080/upload")
        .header("host", "web.demo:8080")
        .header("content-length", (CHUNK * CHUNKS).to_string())
        .body(StreamBody::new(stream))
        .unwrap();
    let r = send_http1(p.a.outbound, req).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), format!("bytes={} sum={}", CHUNK * CHUNKS, per_chunk * CHUNKS as u64));
    for (name, proxy) in [("A", &p.a), ("B", &p.b)] {
        let peak = proxy.process.peak_rss_bytes();
        assert!(peak < 64 * 1024 * 1024, "proxy {name} peak RSS {} MiB", peak / (1024 * 1024));
    }
}

#[tokio::test]
async fn garbage_stalls_and_disconnects_do_not_disturb_others() {
    let p = pair(&[]).await;
    // Garbage to the outbound listener: closed.
    let mut g = tokio::net::TcpStream::connect(p.a.outbound).await.unwrap();
    g.write_all(b"\x00\x01\x02garbage\xff\r\n\r\n").await.unwrap();
    let mut sink = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut sink)).await.unwrap();
    // Garbage to the inbound listener: closed and counted.
    let mut g = tokio::net::TcpStream::connect(p.b.inbound).await.unwrap();
    g.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let _ = tokio::time::timeout(Duration::from_secs(5), g.read_to_end(&mut sink)).await.unwrap();
    let mb = p.b.metrics().await;
    assert_eq!(metrics::value(&mb, "strait_inbound_rejected_connections_total", &[]), 1.0);

    // A client that stalls mid-request.
    let mut stalled = tokio::net::TcpStream::connect(p.a.outbound).await.unwrap();
    stalled
        .write_all(b"POST http://web.demo:8080/upload HTTP/1.1\r\nHost: web.demo:8080\r\nContent-Length: 100000\r\n\r\nabc")
        .await
        .unwrap();
    // A client that disconnects mid-response.
    let mut quitter = tokio::net::TcpStream::connect(p.a.outbound).await.unwrap();
    quitter
        .write_all(b"GET http://web.demo:8080/bytes/200000000 HTTP/1.1\r\nHost: web.demo:8080\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 65536];
    let mut read = 0;
    while read < 200_000 {
        read += quitter.read(&mut buf).await.unwrap();
    }
    drop(quitter);

    // Everyone else is served.
    for i in 0..20 {
        let r = http_get_via_proxy(p.a.outbound, &format!("http://web.demo:8080/ok{i}")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }
    drop(stalled);
    // The abandoned download was cancelled all the way to the application.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let r = strait_tests::http_get(&format!("http://{}/cancelled", p.http_app)).await.unwrap();
        if r.text().trim() != "0" {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the app never saw the download cancelled");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn graceful_shutdown_lets_an_in_flight_request_finish() {
    let mut p = pair(&[("STRAIT_SHUTDOWN_GRACE_PERIOD", "10s")]).await;
    let a = p.a.outbound;
    let slow = tokio::spawn(async move { http_get_via_proxy(a, "http://web.demo:8080/slow?ms=1500").await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Both proxies are told to stop while the request is in flight.
    p.a.process.signal(libc::SIGTERM);
    p.b.process.signal(libc::SIGTERM);
    let r = slow.await.unwrap().unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.text(), "slow done");
    let st = p.a.process.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(st.success(), "proxy A exited with {st:?}");
    let st = p.b.process.wait_exit(Duration::from_secs(10)).await.unwrap();
    assert!(st.success(), "proxy B exited with {st:?}");
    assert!(tokio::net::TcpStream::connect(a).await.is_err(), "the listener is closed");
    drop(p.dir);
}

#[tokio::test]
async fn bad_configuration_is_reported_all_at_once() {
    let out = std::process::Command::new(strait_tests::bin("strait-proxy"))
        .env_clear()
        .env("STRAIT_OUTBOUND_ADDR", "not-an-address")
        .env("STRAIT_WORKER_THREADS", "zero")
        .env("STRAIT_LOG_FORMAT", "xml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for key in ["STRAIT_OUTBOUND_ADDR", "STRAIT_WORKER_THREADS", "STRAIT_LOG_FORMAT"] {
        assert!(err.contains(key), "{key} missing from: {err}");
    }
}

/// The first bytes of a mesh connection (`proxy/src/transport/header.rs`): magic, body length 3,
/// the target port on the peer's workload, the framing (3 = opaque).
fn opaque_transport_header(port: u16) -> Vec<u8> {
    let mut h = b"strait\0\x01\x00\x03".to_vec();
    h.extend_from_slice(&port.to_be_bytes());
    h.push(3);
    h
}

/// Sends `head` on `io` and returns the response head the application's echo headers are in.
async fn response_head(io: &mut tokio::net::TcpStream) -> String {
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(Duration::from_secs(10), io.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "closed before a response: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got).to_lowercase()
}

/// Security: the identity header the application sees comes only from the proxy. A client without
/// an identity that announces an opaque stream, pauses past the detection timeout, or starts its
/// request with what a naive detector takes for non-HTTP (an empty line, a lower-case method)
/// still has its request parsed, and its own `strait-client-id` removed.
#[tokio::test]
async fn a_client_cannot_forge_the_identity_header_through_the_opaque_path() {
    let p = pair(&[]).await;
    let forged = "strait-client-id: spiffe://cluster.local/ns/kube-system/sa/admin";
    let cases: [(&str, &[u8], Duration); 4] = [
        ("opaque stream", b"GET /who HTTP/1.1\r\n", Duration::ZERO),
        ("opaque stream after a pause", b"GET /who HTTP/1.1\r\n", Duration::from_millis(1500)),
        ("leading empty line", b"\r\nGET /who HTTP/1.1\r\n", Duration::from_millis(1200)),
        ("lower-case method", b"get /who HTTP/1.1\r\n", Duration::ZERO),
    ];
    for (name, line, pause) in cases {
        let mut io = tokio::net::TcpStream::connect(p.b.inbound).await.unwrap();
        io.write_all(&opaque_transport_header(p.http_app.port())).await.unwrap();
        tokio::time::sleep(pause).await;
        let mut req = line.to_vec();
        req.extend_from_slice(format!("Host: web\r\n{forged}\r\nConnection: close\r\n\r\n").as_bytes());
        io.write_all(&req).await.unwrap();
        let head = response_head(&mut io).await;
        assert!(!head.contains("kube-system"), "{name}: the application saw the forged identity:\n{head}");
    }
}
