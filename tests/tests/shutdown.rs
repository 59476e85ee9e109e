//! End-to-end: the proxy's graceful shutdown. On SIGTERM it reports not ready (`/ready` 503,
//! "draining") while its listeners keep accepting for `STRAIT_SHUTDOWN_ACCEPT_PERIOD` (clients still
//! find it until discovery has removed it); HTTP/1 responses then carry `connection: close`, HTTP/2
//! connections get GOAWAY; then the listeners close, upgraded and opaque streams may go on until
//! the grace period ends, and the process exits as soon as nothing is left.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::Empty;
use strait_tests::{ProxyHandle, TestDir, client, http_connect_tunnel, http_get, proxy_named, testsrv_in};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

fn get(url: &str) -> Request<Empty<Bytes>> {
    let host = url.trim_start_matches("http://").split('/').next().unwrap().to_string();
    Request::get(url).header("host", host).body(Empty::new()).unwrap()
}

async fn lone_proxy(name: &str, accept: &str, grace: &str) -> ProxyHandle {
    proxy_named(name, &[("STRAIT_SHUTDOWN_ACCEPT_PERIOD", accept), ("STRAIT_SHUTDOWN_GRACE_PERIOD", grace)]).await
}

#[tokio::test]
async fn sigterm_keeps_accepting_during_the_drain_window_then_exits_when_idle() {
    let dir = TestDir::new("shutdown");
    let (_app, app) = testsrv_in(dir.path(), "http", "web").await;
    // A long grace period: the proxy must leave as soon as it is idle, not when the grace is over.
    let mut p = lone_proxy("proxy", "3s", "60s").await;
    let url = format!("http://{app}/");

    // A keep-alive HTTP/1 client and an HTTP/2 client, both connected before the signal.
    let mut h1 = client::http1_connect::<Empty<Bytes>>(p.outbound).await.unwrap();
    let r = client::collect(h1.send_request(get(&url)).await.unwrap()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(r.header("connection"), Some("close"), "no close before the drain");
    let mut h2 = client::h2c_connect::<Empty<Bytes>>(p.outbound).await.unwrap();
    let r = client::collect(h2.send_request(get(&url)).await.unwrap()).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    let in_flight = h2.send_request(get(&format!("http://{app}/slow?ms=1500")));

    p.process.signal(libc::SIGTERM);
    let signalled = Instant::now();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let ready = http_get(&format!("http://{}/ready", p.admin)).await.unwrap();
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(ready.text().contains("draining"), "/ready says why: {:?}", ready.text());

    // A request in flight on the HTTP/2 connection finishes.
    let r = client::collect(in_flight.await.unwrap()).await.unwrap();
    assert_eq!((r.status, r.text().as_str()), (StatusCode::OK, "slow done"));

    // A second after the signal a new connection is still accepted and served.
    tokio::time::sleep(Duration::from_secs(1).saturating_sub(signalled.elapsed())).await;
    let r = client::send_http1(p.outbound, get(&url)).await.expect("a new connection during the drain window");
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);

    // The idle keep-alive connection was not cut: its next request is served, told to close.
    let r = client::collect(h1.send_request(get(&url)).await.expect("keep-alive connection still open")).await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("connection"), Some("close"), "{:?}", r.headers);

    // The HTTP/2 connection was sent GOAWAY: once its stream is done it ends.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !h2.is_closed() {
        assert!(Instant::now() < deadline, "the HTTP/2 connection was never closed by the proxy");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let status = p.process.wait_exit(Duration::from_secs(30)).await.expect("the proxy exits once idle");
    assert!(status.success(), "exit status {status:?}");
    assert!(tokio::net::TcpStream::connect(p.outbound).await.is_err(), "the listener is closed");
}

#[tokio::test]
async fn upgraded_and_opaque_streams_drain_until_the_grace_period() {
    let dir = TestDir::new("shutdown-streams");
    let (_web, web) = testsrv_in(dir.path(), "http", "web").await;
    let (_echo, echo) = testsrv_in(dir.path(), "tcp-echo", "echo").await;
    let mut p = lone_proxy("proxy", "1s", "6s").await;

    let tcp = tokio::net::TcpStream::connect(p.outbound).await.unwrap();
    let (mut ws, rsp) = tokio_tungstenite::client_async(format!("ws://{web}/ws"), tcp).await.unwrap();
    assert_eq!(rsp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut tunnel = http_connect_tunnel(p.outbound, &echo.to_string()).await.unwrap();

    p.process.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // Past the accept window: the listeners are closed, the streams still flow.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(p.process.is_running(), "the proxy waits for its upgraded and opaque streams");
    ws.send(Message::text("still here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "still here");
    tunnel.write_all(b"ping\n").await.unwrap();
    let mut buf = [0u8; 5];
    tunnel.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"ping\n");

    // The tunnel ends; the WebSocket alone keeps the proxy running.
    drop(tunnel);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(p.process.is_running(), "an upgraded connection is drained like any other");
    ws.send(Message::text("and here")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap().into_text().unwrap().as_str(), "and here");

    // Nobody closes it: the grace period ends it and the process exits.
    let status =
        p.process.wait_exit(Duration::from_secs(30)).await.expect("the proxy exits at the end of the grace period");
    assert!(status.success(), "exit status {status:?}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(5),
        "the WebSocket was kept until the grace period: {:?}",
        signalled.elapsed()
    );
    let closed = tokio::time::timeout(Duration::from_secs(5), ws.next()).await;
    assert!(matches!(closed, Ok(None | Some(Err(_)))), "the WebSocket is closed with the process: {closed:?}");
    drop(dir);
}
