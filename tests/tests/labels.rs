//! Metric labels are bounded: no label value comes from what a client wrote. Requests with random
//! `Host` headers, through a proxy's outbound side (to a destination outside the mesh) and through
//! its inbound side (from a peer proxy), leave the number of series and the proxy's memory flat.
//!
//! `STRAIT_LABELS_REQUESTS` sets the number of random-`Host` requests per side (default 20 000, so
//! a debug build finishes in seconds; CI runs 100 000).

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use strait_tests::{ProxyHandle, TestDir, free_addr, free_port, http_get_via_proxy, metrics, proxy_named, testsrv_in};
use tokio::{io::AsyncWriteExt, net::TcpStream};

/// Clients sending at once, each on its own keep-alive connection.
const CONCURRENCY: usize = 32;
/// Requests sent before the first measurement, so that connections, pools, the allocator's arenas
/// and every label set a fixed destination produces exist already.
const WARM_UP: u64 = 2_000;
/// Series that may appear after the warm-up without any client-written value in them: a status
/// code or outcome seen for the first time (a connection reset answered 502 instead of 503, ...).
/// Each client-chosen label value would add two dozen series (a counter and a histogram's 16
/// buckets, sum and count), so even a handful of leaked values exceeds this.
const SERIES_SLACK: usize = 40;
/// RSS may grow this much: the allocator keeps freed memory in its arenas and the runtime's
/// buffers grow with the burst of 32 concurrent clients, which can take a few MiB whatever the
/// labels are. One label set costs the registry over a kilobyte (a counter, a histogram of 16
/// buckets, the label strings, the hash map entries), so 20 000 leaked values grow the RSS by tens
/// of MiB, and 100 000 by hundreds.
const RSS_SLACK: u64 = 8 << 20;

fn requests() -> u64 {
    std::env::var("STRAIT_LABELS_REQUESTS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000)
}

/// Lines of the exposition that are samples (not `# HELP` / `# TYPE`): one per series.
fn series_count(text: &str) -> usize {
    text.lines().filter(|l| !l.is_empty() && !l.starts_with('#')).count()
}

/// A `Host` nobody configured: a random address in 127/8 and a port nothing listens on, so a
/// passthrough fails at once (connection refused) without DNS and without pooled connections.
fn random_host(closed_port: u16) -> String {
    format!("127.{}.{}.{}:{closed_port}", fastrand::u8(1..), fastrand::u8(..), fastrand::u8(1..))
}

/// How a client reaches the proxy side under test.
#[derive(Clone, Copy)]
enum Via {
    /// The outbound listener as an explicit HTTP proxy: the `Host` names a destination outside the mesh.
    Outbound(SocketAddr),
    /// The inbound listener, as a peer proxy without an identity does: a transport header for the
    /// application's port (HTTP/1 framing), then requests.
    Inbound { listener: SocketAddr, app_port: u16 },
}

async fn connect(via: Via) -> http1::SendRequest<Empty<Bytes>> {
    let (addr, header) = match via {
        Via::Outbound(a) => (a, None),
        Via::Inbound { listener, app_port } => {
            let mut h = b"strait\0\x01\x00\x03".to_vec();
            h.extend_from_slice(&app_port.to_be_bytes());
            h.push(2);
            (listener, Some(h))
        }
    };
    let mut tcp = TcpStream::connect(addr).await.expect("connecting to the proxy");
    tcp.set_nodelay(true).expect("nodelay");
    if let Some(h) = header {
        tcp.write_all(&h).await.expect("writing the transport header");
    }
    let (sender, conn) = http1::handshake(TokioIo::new(tcp)).await.expect("http1 handshake");
    tokio::spawn(async move {
        let _ = conn.await;
    });
    sender
}

/// Sends `n` requests with random `Host` headers through `via`, `CONCURRENCY` at a time; returns
/// how many got a response (any status).
async fn random_hosts(via: Via, n: u64, closed_port: u16) -> u64 {
    let next = Arc::new(AtomicU64::new(0));
    let answered = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..CONCURRENCY {
        let (next, answered) = (next.clone(), answered.clone());
        tasks.spawn(async move {
            let mut sender = connect(via).await;
            while next.fetch_add(1, Ordering::Relaxed) < n {
                if sender.ready().await.is_err() {
                    sender = connect(via).await;
                }
                let req = Request::get("/").header("host", random_host(closed_port)).body(Empty::new()).unwrap();
                match sender.send_request(req).await {
                    Ok(rsp) => {
                        let _ = rsp.into_body().collect().await;
                        answered.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(_) => sender = connect(via).await,
                }
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("client task");
    }
    answered.load(Ordering::Relaxed)
}

/// Warms up, measures, sends `requests()` more, measures again: series and RSS must stay flat.
async fn assert_flat(side: &str, proxy: &ProxyHandle, via: Via, closed_port: u16) {
    let answered = random_hosts(via, WARM_UP, closed_port).await;
    assert!(answered > WARM_UP / 2, "{side}: only {answered} of {WARM_UP} warm-up requests answered\n{}", proxy.log());
    let before = series_count(&proxy.metrics().await);
    let rss_before = proxy.process.rss_bytes();

    let n = requests();
    let started = std::time::Instant::now();
    let answered = random_hosts(via, n, closed_port).await;
    assert!(answered > n / 2, "{side}: only {answered} of {n} requests answered\n{}", proxy.log());
    let text = proxy.metrics().await;
    let after = series_count(&text);
    let rss_after = proxy.process.rss_bytes();
    eprintln!(
        "{side}: {n} random-Host requests in {:?}; series {before} -> {after}; RSS {} -> {} KiB",
        started.elapsed(),
        rss_before >> 10,
        rss_after >> 10
    );
    assert!(
        after <= before + SERIES_SLACK,
        "{side}: random Host headers grew the metrics from {before} to {after} series\n{}",
        text.lines().filter(|l| l.starts_with("strait_requests_total")).take(20).collect::<Vec<_>>().join("\n")
    );
    assert!(
        rss_after <= rss_before + RSS_SLACK,
        "{side}: random Host headers grew the RSS from {} to {} KiB",
        rss_before >> 10,
        rss_after >> 10
    );
    // Whatever the client wrote, the label names a mesh service or `unknown`.
    for s in metrics::series(&text, "strait_requests_total", &[]) {
        let authority = s.label("authority").unwrap_or_default();
        assert!(!authority.starts_with("127."), "{side}: a client's Host became a label value: {authority}");
    }
}

#[tokio::test]
async fn random_host_headers_leave_series_and_memory_flat() {
    let dir = TestDir::new("labels");
    let (_app_p, app) = testsrv_in(dir.path(), "http", "web").await;
    let b_inbound = free_addr();
    let mesh = format!(
        r#"
trustDomain: cluster.local
workloads:
  - {{name: server, namespace: demo, serviceAccount: server}}
services:
  - name: web
    namespace: demo
    ports: [{{port: 8080, protocol: http}}]
    endpoints: [{{address: "{app}", proxy: "{b_inbound}", workload: server}}]
"#
    );
    let mesh_path = dir.write("mesh.yaml", &mesh);
    let mesh_path = mesh_path.to_str().unwrap().to_string();
    let b_in = b_inbound.to_string();
    let b = proxy_named(
        "proxy-b",
        &[
            ("STRAIT_DISCOVERY_FILE", mesh_path.as_str()),
            ("STRAIT_NAMESPACE", "demo"),
            ("STRAIT_WORKLOAD", "server"),
            ("STRAIT_INBOUND_ADDR", b_in.as_str()),
        ],
    )
    .await;
    let a = proxy_named(
        "proxy-a",
        &[("STRAIT_DISCOVERY_FILE", mesh_path.as_str()), ("STRAIT_NAMESPACE", "demo"), ("STRAIT_WORKLOAD", "client")],
    )
    .await;
    let closed_port = free_port();

    assert_flat("outbound", &a, Via::Outbound(a.outbound), closed_port).await;
    assert_flat("inbound", &b, Via::Inbound { listener: b.inbound, app_port: app.port() }, closed_port).await;

    // Both sides still label what the mesh knows: the inbound side by the service it serves.
    let text = b.metrics().await;
    assert!(
        metrics::value(&text, "strait_requests_total", &[("direction", "inbound"), ("authority", "web.demo:8080")])
            >= requests() as f64,
        "inbound requests are labelled with the workload's service\n{text}"
    );
    let text = a.metrics().await;
    assert!(
        metrics::value(&text, "strait_requests_total", &[("direction", "outbound"), ("authority", "unknown")])
            >= requests() as f64,
        "passthrough requests share the `unknown` authority\n{text}"
    );

    // A meshed request: the endpoint's workload, from discovery, is its destination.
    let rsp = http_get_via_proxy(a.outbound, "http://web.demo:8080/").await.expect("a meshed request");
    assert_eq!(rsp.status, 200, "{}", rsp.text());
    let text = a.metrics().await;
    assert_eq!(
        metrics::value(
            &text,
            "strait_requests_total",
            &[("authority", "web.demo:8080"), ("dst_workload", "server"), ("src_workload", "client"), ("route", "")]
        ),
        1.0,
        "a meshed request is labelled with its endpoint's workload\n{text}"
    );
    // The labels added to the old ones: the source is this proxy's own workload (outbound), the
    // destination workload the one behind the inbound proxy.
    assert!(
        metrics::value(&text, "strait_requests_total", &[("src_workload", "client"), ("src_namespace", "demo")])
            >= requests() as f64,
        "outbound requests carry the proxy's own workload as their source\n{text}"
    );
    let text = b.metrics().await;
    assert!(
        metrics::value(&text, "strait_requests_total", &[("direction", "inbound"), ("dst_workload", "server")])
            >= requests() as f64,
        "inbound requests carry the proxy's own workload as their destination\n{text}"
    );
    // The series gauge counts what the scrape shows.
    let gauge = metrics::value(&text, "strait_metrics_series", &[]);
    assert_eq!(gauge, series_count(&text) as f64, "strait_metrics_series\n{text}");
}
