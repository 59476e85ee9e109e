//! End-to-end: the per-service resilience policy (DESIGN §5) set by Service annotations in the
//! mesh file, served by a real controller, applied by a real client proxy to real failing servers.
//! Every test asserts counts: requests, attempts each server saw, and the proxy's metrics.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use strait_tests::{
    HttpResponse, Process, ProxyHandle, TestDir, echo, free_addr, http_get, http_get_via_proxy, metrics,
    proxy_named, send_http1, testsrv_in,
};

struct App {
    process: Process,
    addr: SocketAddr,
}

impl App {
    async fn count(&self) -> u64 {
        http_get(&format!("http://{}/count", self.addr)).await.unwrap().text().trim().parse().unwrap()
    }

    async fn fault(&self, query: &str) {
        let req = Request::post(format!("http://{}/fault?{query}", self.addr))
            .header("host", self.addr.to_string())
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = send_http1(self.addr, req).await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
    }

    async fn cancelled(&self) -> u64 {
        http_get(&format!("http://{}/cancelled", self.addr)).await.unwrap().text().trim().parse().unwrap()
    }
}

/// A controller, one client proxy, one server proxy in front of every app (apps differ by port,
/// which the transport header names), and the mesh file they share.
struct Mesh {
    dir: TestDir,
    mesh_path: std::path::PathBuf,
    _ctl: strait_tests::fixtures::ControllerHandle,
    client: ProxyHandle,
    server: ProxyHandle,
}

struct Svc<'a> {
    name: &'a str,
    port: u16,
    protocol: &'a str,
    annotations: &'a [(&'a str, &'a str)],
    endpoints: Vec<(SocketAddr, SocketAddr)>,
}

fn mesh_yaml(services: &[Svc<'_>]) -> String {
    let mut y = String::from("services:\n");
    for s in services {
        y += &format!(
            "  - name: {}\n    namespace: demo\n    ports: [{{port: {}, protocol: {}}}]\n    annotations:\n",
            s.name, s.port, s.protocol
        );
        if s.annotations.is_empty() {
            y += "      strait.io/none: \"\"\n";
        }
        for (k, v) in s.annotations {
            y += &format!("      {k}: \"{v}\"\n");
        }
        y += "    endpoints:\n";
        for (app, proxy) in &s.endpoints {
            y += &format!("      - {{address: \"{app}\", proxy: \"{proxy}\"}}\n");
        }
    }
    y
}

impl Mesh {
    async fn start() -> Mesh {
        let dir = TestDir::new("resilience");
        let ctl = strait_tests::fixtures::controller(dir.path(), "services: []\n", &[]).await;
        let d = ctl.discovery.to_string();
        let env = [("STRAIT_DISCOVERY_ADDR", d.as_str()), ("STRAIT_NAMESPACE", "demo"), ("STRAIT_LOG", "info")];
        let server = proxy_named("server", &env).await;
        let client = proxy_named("client", &env).await;
        Mesh { mesh_path: ctl.mesh_file.clone(), dir, _ctl: ctl, client, server }
    }

    async fn app(&self, mode: &str, name: &str) -> App {
        let (process, addr) = testsrv_in(self.dir.path(), mode, name).await;
        App { process, addr }
    }

    fn endpoints(&self, apps: &[&App]) -> Vec<(SocketAddr, SocketAddr)> {
        apps.iter().map(|a| (a.addr, self.server.inbound)).collect()
    }

    /// Writes the mesh and waits until the client proxy serves `probe` through it.
    async fn publish(&self, services: &[Svc<'_>]) {
        std::fs::write(&self.mesh_path, mesh_yaml(services)).unwrap();
    }

    async fn get(&self, url: &str) -> HttpResponse {
        http_get_via_proxy(self.client.outbound, url).await.unwrap()
    }

    async fn wait_served(&self, url: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(r) = http_get_via_proxy(self.client.outbound, url).await {
                if r.header("strait-error").is_none() && r.header("x-served-by").is_some() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{url} never served");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::value(&self.client.metrics().await, name, labels)
    }
}

/// Runs `n` GETs with `workers` in parallel; returns the responses in completion order.
async fn run(proxy: SocketAddr, url: &str, n: usize, workers: usize) -> Vec<HttpResponse> {
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let (next, url) = (next.clone(), url.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while (next.fetch_add(1, Ordering::Relaxed) as usize) < n {
                out.push(http_get_via_proxy(proxy, &url).await.unwrap());
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

fn ok(rs: &[HttpResponse]) -> usize {
    rs.iter().filter(|r| r.status == StatusCode::OK).count()
}

#[tokio::test]
async fn a_failing_endpoint_is_ejected_and_a_probe_brings_it_back() {
    let m = Mesh::start().await;
    let apps = [m.app("http", "a").await, m.app("http", "b").await, m.app("http", "bad").await];
    apps[2].fault("status=500").await;
    // Round robin keeps sending the bad endpoint its share until the breaker acts (peak-EWMA would
    // avoid it on its own, see the slow-endpoint test).
    let ann = [
        ("circuit.strait.io/consecutive-failures", "5"),
        ("circuit.strait.io/ejection-time", "500ms"),
        ("balancer.strait.io/algorithm", "round-robin"),
    ];
    let eps = m.endpoints(&[&apps[0], &apps[1], &apps[2]]);
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &ann, endpoints: eps }]).await;
    m.wait_served("http://web.demo:8080/").await;

    let bad_before = apps[2].count().await;
    let rs = run(m.client.outbound, "http://web.demo:8080/x", 2000, 4).await;
    let failed = rs.len() - ok(&rs);
    let bad_saw = apps[2].count().await - bad_before;
    eprintln!("2000 requests: {failed} failed; the bad endpoint saw {bad_saw}");
    // The first 5 failures eject it (fewer when probing before the run already counted some);
    // after that only the half-open probes (500 ms, doubling) fail.
    assert!(failed >= 1, "the breaker needs failures first");
    assert!(failed.saturating_sub(5) <= 10, "{failed} failures: at least 99.5 % of requests after the first 5 must succeed");
    assert_eq!(failed as u64, bad_saw, "every failure is one the bad endpoint answered");
    assert!(m.metric("strait_circuit_ejections_total", &[("dst_service", "web")]).await >= 1.0);
    assert_eq!(m.metric("strait_circuit_open", &[("dst_service", "web"), ("endpoint", &apps[2].addr.to_string())]).await, 1.0);

    // It recovers: the next probe succeeds and it gets traffic again.
    apps[2].fault("").await;
    let before = apps[2].count().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r = m.get("http://web.demo:8080/y").await;
        assert_eq!(r.status, StatusCode::OK);
        if apps[2].count().await > before + 3 {
            break;
        }
        assert!(Instant::now() < deadline, "the recovered endpoint never came back");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.metric("strait_circuit_open", &[("dst_service", "web"), ("endpoint", &apps[2].addr.to_string())]).await, 0.0);
}

#[tokio::test]
async fn an_endpoint_killed_under_load_loses_no_get() {
    let m = Mesh::start().await;
    let apps = [m.app("http", "a").await, m.app("http", "b").await, m.app("http", "c").await];
    // The third endpoint has its own proxy, killed with its app: the whole pod dies.
    let mut eps = m.endpoints(&[&apps[0], &apps[1]]);
    let pod_proxy = proxy_named(
        "pod-c",
        &[("STRAIT_DISCOVERY_FILE", m.mesh_path.to_str().unwrap()), ("STRAIT_NAMESPACE", "demo")],
    )
    .await;
    eps.push((apps[2].addr, pod_proxy.inbound));
    let ann = [("retry.strait.io/http", "connect-failure,reset")];
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &ann, endpoints: eps }]).await;
    m.wait_served("http://web.demo:8080/").await;

    let stop = Arc::new(AtomicBool::new(false));
    let load = {
        let (stop, proxy) = (stop.clone(), m.client.outbound);
        tokio::spawn(async move {
            let mut rs = Vec::new();
            let mut tasks = Vec::new();
            for _ in 0..4 {
                let stop = stop.clone();
                tasks.push(tokio::spawn(async move {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        out.push(http_get_via_proxy(proxy, "http://web.demo:8080/load").await.unwrap());
                    }
                    out
                }));
            }
            for t in tasks {
                rs.extend(t.await.unwrap());
            }
            rs
        })
    };
    tokio::time::sleep(Duration::from_millis(700)).await;
    let c_before = apps[2].count().await;
    assert!(c_before > 0, "the third endpoint was in use");
    let mut pod = pod_proxy;
    let [a, b, mut c] = apps;
    pod.process.kill();
    c.process.kill();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let rs = load.await.unwrap();
    let failed: Vec<_> = rs.iter().filter(|r| r.status != StatusCode::OK).map(|r| (r.status, r.header("strait-error").map(str::to_string))).collect();
    eprintln!("{} GETs, failed: {failed:?}", rs.len());
    assert!(failed.is_empty(), "{} of {} GETs failed: {failed:?}", failed.len(), rs.len());
    assert!(rs.len() > 100);
    let retried = m.metric("strait_retries_total", &[("dst_service", "web")]).await;
    eprintln!("retries: {retried}");
    assert!(retried >= 1.0, "the dead endpoint's failures were retried");
    drop((a, b));
}

#[tokio::test]
async fn a_slow_endpoint_gets_little_traffic_under_peak_ewma() {
    let m = Mesh::start().await;
    let apps = [m.app("http", "a").await, m.app("http", "b").await, m.app("http", "slow").await];
    apps[2].fault("delay_ms=2000").await;
    let eps = m.endpoints(&[&apps[0], &apps[1], &apps[2]]);
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &[], endpoints: eps }]).await;
    m.wait_served("http://web.demo:8080/").await;
    let before: Vec<u64> = futures_util::future::join_all(apps.iter().map(|a| a.count())).await;
    let rs = run(m.client.outbound, "http://web.demo:8080/x", 1000, 8).await;
    assert_eq!(ok(&rs), 1000);
    let after: Vec<u64> = futures_util::future::join_all(apps.iter().map(|a| a.count())).await;
    let slow = after[2] - before[2];
    let total: u64 = after.iter().zip(&before).map(|(a, b)| a - b).sum();
    eprintln!("slow endpoint got {slow} of {total}");
    assert!((slow as f64) < 0.05 * total as f64, "slow endpoint got {slow} of {total}");
}

#[tokio::test]
async fn the_request_timeout_answers_504_and_cancels_the_server_side() {
    let m = Mesh::start().await;
    let app = m.app("http", "hang").await;
    let ann = [("timeout.strait.io/request", "500ms")];
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &ann, endpoints: m.endpoints(&[&app]) }]).await;
    m.wait_served("http://web.demo:8080/").await;
    app.fault("hang=1").await;
    let started = Instant::now();
    let r = m.get("http://web.demo:8080/hang").await;
    let took = started.elapsed();
    assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(r.header("strait-error"), Some("timeout"));
    assert!(took >= Duration::from_millis(450) && took < Duration::from_secs(3), "answered after {took:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while app.cancelled().await == 0 {
        assert!(Instant::now() < deadline, "the server never saw the request cancelled");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(m.metric("strait_proxy_errors_total", &[("error", "timeout")]).await, 1.0);
}

#[tokio::test]
async fn retries_stay_within_the_budget_when_everything_fails() {
    let m = Mesh::start().await;
    let apps = [m.app("http", "a").await, m.app("http", "b").await];
    let ann = [("retry.strait.io/http", "5xx"), ("retry.strait.io/limit", "2"), ("retry.strait.io/budget", "20%,10/s")];
    let eps = m.endpoints(&[&apps[0], &apps[1]]);
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &ann, endpoints: eps }]).await;
    m.wait_served("http://web.demo:8080/").await;
    for a in &apps {
        a.fault("status=503").await;
    }
    let before = apps[0].count().await + apps[1].count().await;
    let n = 1000;
    let started = Instant::now();
    let rs = run(m.client.outbound, "http://web.demo:8080/x", n, 4).await;
    let secs = started.elapsed().as_secs_f64();
    assert!(rs.iter().all(|r| r.status == StatusCode::SERVICE_UNAVAILABLE));
    let attempts = apps[0].count().await + apps[1].count().await - before;
    let retries = attempts - n as u64;
    // tower's TpsBudget: 20 % of requests plus a reserve of 10/s over its 10 s window.
    let bound = (n as f64 * 0.2 + 10.0 * 10.0_f64.max(secs)).ceil() as u64;
    eprintln!("{n} requests in {secs:.1}s → {attempts} attempts ({retries} retries, bound {bound}); unbudgeted would be {}", n * 3);
    assert!(retries <= bound, "{retries} retries exceed the budget {bound}");
    assert!(retries > 0);
    assert_eq!(m.metric("strait_retries_total", &[("dst_service", "web")]).await, retries as f64);
    assert!(m.metric("strait_retry_budget_exhausted_total", &[("dst_service", "web")]).await > 0.0);
}

#[tokio::test]
async fn the_bulkhead_fails_fast_and_keeps_other_services_healthy() {
    let m = Mesh::start().await;
    let (slow, fast) = (m.app("http", "slow").await, m.app("http", "fast").await);
    let ann = [("bulkhead.strait.io/max-concurrent", "10"), ("bulkhead.strait.io/max-pending", "0")];
    m.publish(&[
        Svc { name: "a", port: 8080, protocol: "http", annotations: &ann, endpoints: m.endpoints(&[&slow]) },
        Svc { name: "b", port: 8080, protocol: "http", annotations: &[], endpoints: m.endpoints(&[&fast]) },
    ])
    .await;
    m.wait_served("http://a.demo:8080/").await;
    m.wait_served("http://b.demo:8080/").await;
    // Normal latency of B, before A is loaded.
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(m.get("http://b.demo:8080/").await.status, StatusCode::OK);
    }
    let baseline = t.elapsed() / 20;
    slow.fault("delay_ms=1500").await;
    let proxy = m.client.outbound;
    let a_tasks: Vec<_> = (0..30)
        .map(|_| {
            tokio::spawn(async move {
                let t = Instant::now();
                let r = http_get_via_proxy(proxy, "http://a.demo:8080/").await.unwrap();
                (r, t.elapsed())
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t = Instant::now();
    for _ in 0..20 {
        assert_eq!(m.get("http://b.demo:8080/").await.status, StatusCode::OK);
    }
    let loaded = t.elapsed() / 20;
    let mut full = 0;
    let mut served = 0;
    for task in a_tasks {
        let (r, took) = task.await.unwrap();
        match r.status {
            StatusCode::OK => served += 1,
            StatusCode::SERVICE_UNAVAILABLE => {
                assert_eq!(r.header("strait-error"), Some("bulkhead-full"));
                assert!(took < Duration::from_millis(1000), "rejected after {took:?}: not fast");
                full += 1;
            }
            s => panic!("unexpected {s}"),
        }
    }
    eprintln!("A: {served} served, {full} rejected; B latency {baseline:?} before, {loaded:?} during");
    assert_eq!(served, 10);
    assert_eq!(full, 20);
    assert!(loaded < baseline + Duration::from_millis(100), "B slowed from {baseline:?} to {loaded:?}");
    assert_eq!(m.metric("strait_bulkhead_rejected_total", &[("dst_service", "a")]).await, 20.0);
}

#[tokio::test]
async fn posts_retry_only_when_they_never_reached_the_server() {
    let m = Mesh::start().await;
    let (bad, good) = (m.app("http", "bad").await, m.app("http", "good").await);
    bad.fault("status=500").await;
    // Round robin: every other POST goes to the failing server.
    let ann = [("retry.strait.io/http", "5xx,connect-failure"), ("balancer.strait.io/algorithm", "round-robin")];
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &ann, endpoints: m.endpoints(&[&bad, &good]) }]).await;
    m.wait_served("http://web.demo:8080/").await;
    let post = |body: &'static str| {
        Request::post("http://web.demo:8080/echo").header("host", "web.demo:8080").body(Full::new(Bytes::from(body))).unwrap()
    };
    let bad_before = bad.count().await;
    let retries_before = m.metric("strait_retries_total", &[("dst_service", "web")]).await;
    let mut five_hundreds = 0;
    for _ in 0..40 {
        let r = send_http1(m.client.outbound, post("order")).await.unwrap();
        if r.status == StatusCode::INTERNAL_SERVER_ERROR {
            five_hundreds += 1;
        } else {
            assert_eq!(r.text(), "order");
        }
    }
    let bad_saw = bad.count().await - bad_before;
    eprintln!("40 POSTs: {five_hundreds} answered 500, the failing server saw {bad_saw}");
    assert!(five_hundreds > 0);
    assert_eq!(five_hundreds, bad_saw, "a POST the server answered with 500 is never sent again");
    assert_eq!(m.metric("strait_retries_total", &[("dst_service", "web")]).await, retries_before);

    // An endpoint whose proxy refuses connections: the POST never reached a server, so it retries.
    let dead: SocketAddr = free_addr();
    m.publish(&[Svc {
        name: "web",
        port: 8080,
        protocol: "http",
        annotations: &ann,
        endpoints: vec![(good.addr, m.server.inbound), (bad.addr, dead)],
    }])
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    for _ in 0..40 {
        let r = send_http1(m.client.outbound, post("retry me")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{:?}", r.header("strait-error"));
        assert_eq!(r.text(), "retry me");
    }
    assert!(m.metric("strait_retries_total", &[("dst_service", "web"), ("reason", "connect-failure")]).await >= 1.0);
}

#[tokio::test]
async fn grpc_unavailable_is_retried() {
    let m = Mesh::start().await;
    let (g1, g2) = (m.app("grpc", "g1").await, m.app("grpc", "g2").await);
    let ann = [("retry.strait.io/grpc", "unavailable")];
    m.publish(&[Svc { name: "grpc", port: 9090, protocol: "grpc", annotations: &ann, endpoints: m.endpoints(&[&g1, &g2]) }]).await;
    let ch = strait_tests::grpc_channel(m.client.outbound, "grpc.demo:9090").await.unwrap();
    let mut c = echo::echo_client::EchoClient::new(ch);
    let deadline = Instant::now() + Duration::from_secs(10);
    while c.unary(echo::EchoRequest { message: "hello".into(), repeat: 0 }).await.is_err() {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for _ in 0..50 {
        let r = c.unary(echo::EchoRequest { message: "fail-if:g1:14".into(), repeat: 0 }).await;
        assert!(r.is_ok(), "{r:?}");
    }
    assert!(m.metric("strait_retries_total", &[("dst_service", "grpc"), ("reason", "grpc")]).await >= 1.0);
}

#[tokio::test]
async fn a_policy_change_applies_without_a_restart() {
    let m = Mesh::start().await;
    let (bad, good) = (m.app("http", "bad").await, m.app("http", "good").await);
    // Round robin: half the requests go to the failing server whatever its latency.
    let rr = [("balancer.strait.io/algorithm", "round-robin")];
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &rr, endpoints: m.endpoints(&[&bad, &good]) }]).await;
    m.wait_served("http://web.demo:8080/").await;
    bad.fault("status=500").await;
    let rs = run(m.client.outbound, "http://web.demo:8080/", 100, 2).await;
    assert!(ok(&rs) < 100, "without retries some requests fail");
    let ann = [
        ("balancer.strait.io/algorithm", "round-robin"),
        ("retry.strait.io/http", "5xx"),
        ("retry.strait.io/limit", "3"),
        ("retry.strait.io/budget", "60%"),
    ];
    m.publish(&[Svc { name: "web", port: 8080, protocol: "http", annotations: &ann, endpoints: m.endpoints(&[&bad, &good]) }]).await;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let rs = run(m.client.outbound, "http://web.demo:8080/", 200, 2).await;
    assert_eq!(ok(&rs), 200, "with the new policy every request succeeds");
    assert!(m.metric("strait_retries_total", &[("dst_service", "web")]).await > 0.0);
}
