//! End-to-end: the proxy's resource limits against clients that hold connections open. A slow
//! request head on the admin port is closed after `STRAIT_ADMIN_HEADER_TIMEOUT`; connections past
//! `STRAIT_ADMIN_MAX_CONNECTIONS` / `STRAIT_MAX_CONNECTIONS` are closed at once and counted in
//! `strait_connections_refused_total{listener}`, and the listener serves again once a slot is free.
//! The controller caps subscriptions per stream (`--max-subscriptions`, RESOURCE_EXHAUSTED naming
//! the cap); a proxy holds at most `STRAIT_MAX_SUBSCRIPTIONS` and so never runs into it.

use std::{net::SocketAddr, time::Duration};

use strait_proto::discovery::v1::{self as pb, discovery_client::DiscoveryClient, watch_request::Request};
use strait_tests::{TestDir, controller, http_get, http_get_via_proxy, metrics, proxy_named, testsrv_in};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// Waits up to `within` for the server to close `tcp` (EOF or reset); false if it is still open.
async fn closed_within(tcp: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, tcp.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            // An answer (a 408, say) before the close is fine.
            Ok(Ok(_)) => continue,
        }
    }
}

/// Opens `n` connections that each sent the first line of a request head and wait.
async fn idle_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    // The readiness checks' connection to the admin port is closed first, so that it neither
    // takes a slot nor frees one while the test counts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut held = Vec::new();
    for _ in 0..n {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET http://127.0.0.1:1/live HTTP/1.1\r\n").await.unwrap();
        held.push(tcp);
    }
    // Accepted and registered by the proxy before the next one arrives.
    tokio::time::sleep(Duration::from_millis(300)).await;
    held
}

/// Sends a whole request on a new connection: `None` if the proxy closed it without an answer,
/// else the answer's first bytes.
async fn one_request(addr: SocketAddr) -> Option<String> {
    let mut tcp = TcpStream::connect(addr).await.unwrap();
    // The write may already fail if the proxy closed the connection first.
    let _ = tcp.write_all(b"GET http://127.0.0.1:1/live HTTP/1.1\r\nhost: 127.0.0.1:1\r\n\r\n").await;
    let mut buf = [0u8; 12];
    match tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await {
        Ok(Ok(0)) | Ok(Err(_)) => None,
        Ok(Ok(n)) => Some(String::from_utf8_lossy(&buf[..n]).into_owned()),
        Err(_) => Some("(no answer, not closed)".into()),
    }
}

#[tokio::test]
async fn admin_closes_a_slow_request_head() {
    let p = proxy_named("slowloris", &[("STRAIT_ADMIN_HEADER_TIMEOUT", "1s")]).await;
    let mut tcp = TcpStream::connect(p.admin).await.unwrap();
    tcp.write_all(b"GET /live HT").await.unwrap();
    assert!(closed_within(&mut tcp, Duration::from_secs(10)).await, "a partial request line is closed");
    // Whole requests are still served.
    assert_eq!(http_get(&format!("http://{}/live", p.admin)).await.unwrap().status, 200);
}

#[tokio::test]
async fn admin_closes_connections_past_the_limit() {
    let p = proxy_named("admin-limit", &[("STRAIT_ADMIN_MAX_CONNECTIONS", "3")]).await;
    let held = idle_connections(p.admin, 3).await;
    assert_eq!(one_request(p.admin).await, None, "the fourth connection is closed unanswered");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = p.metrics().await;
    assert!(metrics::value(&m, "strait_connections_refused_total", &[("listener", "admin")]) >= 1.0, "{m}");
}

#[tokio::test]
async fn outbound_closes_connections_past_the_limit() {
    let p = proxy_named("outbound-limit", &[("STRAIT_MAX_CONNECTIONS", "2")]).await;
    let held = idle_connections(p.outbound, 2).await;
    assert_eq!(one_request(p.outbound).await, None, "the third connection is closed unanswered");
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let m = p.metrics().await;
    assert!(metrics::value(&m, "strait_connections_refused_total", &[("listener", "outbound")]) >= 1.0, "{m}");
    // A slot is free again: the listener answers.
    let answer = one_request(p.outbound).await;
    assert!(answer.as_deref().is_some_and(|a| a.starts_with("HTTP/1.1 ")), "{answer:?}");
}

/// Five services, each served by `app` directly (no peer proxy).
fn five_services(app: SocketAddr) -> String {
    let mut mesh = String::from("services:\n");
    for i in 0..5 {
        mesh.push_str(&format!(
            "  - name: web{i}\n    namespace: demo\n    ports: [{{port: 8080}}]\n    endpoints:\n      - {{address: \"{app}\"}}\n"
        ));
    }
    mesh
}

#[tokio::test]
async fn a_stream_past_the_subscription_cap_is_refused_naming_it() {
    let dir = TestDir::new("subscription-cap");
    let ctl = controller(dir.path(), "services: []\n", &["--max-subscriptions", "3"]).await;
    let channel =
        tonic::transport::Endpoint::from_shared(format!("http://{}", ctl.discovery)).unwrap().connect().await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    let hello = pb::Hello {
        namespace: "demo".into(),
        workload: "w".into(),
        service_account: "default".into(),
        proxy_version: "test".into(),
    };
    tx.send(pb::WatchRequest { request: Some(Request::Hello(hello)) }).await.unwrap();
    for i in 0..4 {
        let authority = format!("web{i}.demo:8080");
        tx.send(pb::WatchRequest { request: Some(Request::Subscribe(pb::Subscribe { authority })) }).await.unwrap();
    }
    let mut stream = DiscoveryClient::new(channel)
        .watch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    let status = loop {
        match tokio::time::timeout(Duration::from_secs(10), stream.message()).await.expect("the stream ends") {
            Ok(Some(_)) => continue,
            Ok(None) => panic!("the stream ended without an error"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    assert!(status.message().contains("more than 3 subscriptions"), "{status:?}");
    let m = metrics::scrape(ctl.admin).await;
    assert_eq!(
        metrics::value(&m, "strait_discovery_stream_errors_total", &[("reason", "too_many_subscriptions")]),
        1.0
    );
}

#[tokio::test]
async fn a_proxy_stays_within_the_subscription_cap() {
    let dir = TestDir::new("proxy-subscriptions");
    let (_app, app) = testsrv_in(dir.path(), "http", "web").await;
    let ctl = controller(dir.path(), &five_services(app), &["--max-subscriptions", "3"]).await;
    let d = ctl.discovery.to_string();
    let p = proxy_named(
        "client",
        &[("STRAIT_DISCOVERY_ADDR", &d), ("STRAIT_NAMESPACE", "demo"), ("STRAIT_MAX_SUBSCRIPTIONS", "3")],
    )
    .await;
    // Five services, twice over: every one is served although only three are held at a time.
    for round in 0..2 {
        for i in 0..5 {
            let r = http_get_via_proxy(p.outbound, &format!("http://web{i}.demo:8080/")).await.unwrap();
            assert_eq!(r.status, 200, "round {round}, web{i}: {}", r.text());
        }
    }
    let m = metrics::scrape(ctl.admin).await;
    assert_eq!(
        metrics::value(&m, "strait_discovery_stream_errors_total", &[("reason", "too_many_subscriptions")]),
        0.0,
        "the controller never refused the proxy's stream"
    );
    let m = p.metrics().await;
    assert_eq!(metrics::value(&m, "strait_discovery_connected", &[]), 1.0, "{m}");
}
