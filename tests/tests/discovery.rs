//! End-to-end: proxies discover services from a real controller process (embedded mode) while
//! traffic flows: endpoints added, moved and removed, the controller killed and brought back, a
//! broken mesh file edit.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use http::StatusCode;
use strait_tests::{Process, ProxyHandle, TestDir, bin, free_addr, http_get, http_get_via_proxy, metrics, proxy_named, testsrv_in};

struct Backend {
    _app: Process,
    addr: SocketAddr,
    proxy: ProxyHandle,
}

async fn backend(dir: &TestDir, name: &str, ctl: SocketAddr) -> Backend {
    let (app, addr) = testsrv_in(dir.path(), "http", name).await;
    let d = ctl.to_string();
    let proxy = proxy_named(
        &format!("proxy-{name}"),
        &[("STRAIT_DISCOVERY_ADDR", &d), ("STRAIT_NAMESPACE", "demo"), ("STRAIT_WORKLOAD", name)],
    )
    .await;
    Backend { _app: app, addr, proxy }
}

fn mesh(endpoints: &[&Backend]) -> String {
    let eps: Vec<String> =
        endpoints.iter().map(|b| format!("      - {{address: \"{}\", proxy: \"{}\"}}", b.addr, b.proxy.inbound)).collect();
    format!(
        "services:\n  - name: web\n    namespace: demo\n    ports: [{{port: 8080}}]\n    endpoints:\n{}\n",
        eps.join("\n")
    )
}

fn start_controller(dir: &TestDir, mesh_path: &std::path::Path, discovery: SocketAddr, admin: SocketAddr) -> Process {
    let (m, d, a, i, w) = (
        mesh_path.to_str().unwrap().to_string(),
        discovery.to_string(),
        admin.to_string(),
        free_addr().to_string(),
        free_addr().to_string(),
    );
    Process::spawn(
        "controller",
        bin("strait-controller"),
        &["--mesh-file", &m, "--discovery-addr", &d, "--admin-addr", &a, "--identity-addr", &i, "--webhook-addr", &w],
        &[("STRAIT_LOG", "info")],
        dir.path(),
    )
}

async fn served(b: &Backend) -> u64 {
    let r = http_get(&format!("http://{}/count", b.addr)).await.unwrap();
    r.text().trim().parse().unwrap()
}

/// The client workload's proxy, once web.demo is served through it (its first request subscribes).
async fn client_served(disc: SocketAddr) -> ProxyHandle {
    let d = disc.to_string();
    let client = proxy_named("client", &[("STRAIT_DISCOVERY_ADDR", &d), ("STRAIT_NAMESPACE", "demo")]).await;
    strait_tests::net::retry_until("web.demo is served", Duration::from_secs(10), || async {
        match http_get_via_proxy(client.outbound, "http://web.demo:8080/").await {
            Ok(r) if r.status == StatusCode::OK => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await
    .unwrap();
    client
}

/// Steady load through the client proxy; counts successes and failures until stopped.
struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

fn load(proxy: SocketAddr, workers: usize) -> Load {
    let (ok, failed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let tasks = (0..workers)
        .map(|_| {
            let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    match http_get_via_proxy(proxy, "http://web.demo:8080/load").await {
                        Ok(r) if r.status == StatusCode::OK => ok.fetch_add(1, Ordering::Relaxed),
                        Ok(r) => {
                            eprintln!("failed request: {} {:?}", r.status, r.header("strait-error"));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(e) => {
                            eprintln!("failed request: {e}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            })
        })
        .collect();
    Load { ok, failed, stop, tasks }
}

impl Load {
    async fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed))
    }
}

/// Waits until `b` starts receiving traffic; returns how long it took.
async fn until_served(b: &Backend, within: Duration) -> Duration {
    let start = Instant::now();
    let before = served(b).await;
    loop {
        if served(b).await > before + 2 {
            return start.elapsed();
        }
        assert!(start.elapsed() < within, "endpoint {} got no traffic within {within:?}", b.addr);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn until_idle(b: &Backend, within: Duration) {
    let start = Instant::now();
    let mut last = served(b).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = served(b).await;
        if now == last {
            return;
        }
        last = now;
        assert!(start.elapsed() < within, "endpoint {} still gets traffic after {within:?}", b.addr);
    }
}

#[tokio::test]
async fn traffic_follows_endpoints_added_moved_and_removed_without_failures() {
    let dir = TestDir::new("discovery-move");
    let (disc, admin) = (free_addr(), free_addr());
    let mesh_path = dir.join("mesh.yaml");
    std::fs::write(&mesh_path, "services: []\n").unwrap();
    let _ctl = start_controller(&dir, &mesh_path, disc, admin);
    strait_tests::wait_for_http_ok(&format!("http://{admin}/ready"), Duration::from_secs(20)).await.unwrap();
    let (b1, b2, b3) = (backend(&dir, "one", disc).await, backend(&dir, "two", disc).await, backend(&dir, "three", disc).await);
    std::fs::write(&mesh_path, mesh(&[&b1])).unwrap();
    let client = client_served(disc).await;

    let l = load(client.outbound, 4);
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Add.
    std::fs::write(&mesh_path, mesh(&[&b1, &b2])).unwrap();
    let t = until_served(&b2, Duration::from_secs(1) + Duration::from_millis(500)).await;
    eprintln!("added endpoint served after {t:?}");
    // Move: b1 out, b3 in.
    std::fs::write(&mesh_path, mesh(&[&b2, &b3])).unwrap();
    let t = until_served(&b3, Duration::from_secs(2)).await;
    eprintln!("moved endpoint served after {t:?}");
    until_idle(&b1, Duration::from_secs(2)).await;
    // Remove.
    std::fs::write(&mesh_path, mesh(&[&b3])).unwrap();
    until_idle(&b2, Duration::from_secs(2)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (ok, failed) = l.finish().await;
    eprintln!("{ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0);
    assert!(ok > 100, "only {ok} requests ran");
    let m = client.metrics().await;
    assert!(metrics::value(&m, "strait_discovery_updates_total", &[("result", "applied")]) >= 4.0, "{m}");
    assert_eq!(metrics::value(&m, "strait_discovery_connected", &[]), 1.0);
}

#[tokio::test]
async fn controller_outage_keeps_traffic_flowing_and_a_change_made_meanwhile_arrives() {
    let dir = TestDir::new("discovery-outage");
    let (disc, admin) = (free_addr(), free_addr());
    let mesh_path = dir.join("mesh.yaml");
    std::fs::write(&mesh_path, "services: []\n").unwrap();
    let mut ctl = start_controller(&dir, &mesh_path, disc, admin);
    strait_tests::wait_for_http_ok(&format!("http://{admin}/ready"), Duration::from_secs(20)).await.unwrap();
    let (b1, b2) = (backend(&dir, "one", disc).await, backend(&dir, "two", disc).await);
    std::fs::write(&mesh_path, mesh(&[&b1])).unwrap();
    let client = client_served(disc).await;

    let l = load(client.outbound, 4);
    tokio::time::sleep(Duration::from_millis(300)).await;
    ctl.kill();
    // A broken edit and then a real change, both while the controller is gone.
    std::fs::write(&mesh_path, "services: [ {name: broken").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let m = client.metrics().await;
    assert_eq!(metrics::value(&m, "strait_discovery_connected", &[]), 0.0, "the proxy noticed the outage");
    let before = l.ok.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(l.ok.load(Ordering::Relaxed) > before + 20, "traffic keeps flowing on the last good answers");
    std::fs::write(&mesh_path, mesh(&[&b2])).unwrap();

    // The controller comes back on the same address; the proxy resubscribes and follows the change.
    let _ctl = start_controller(&dir, &mesh_path, disc, admin);
    let t = until_served(&b2, Duration::from_secs(15)).await;
    eprintln!("change made during the outage served {t:?} after the restart");
    until_idle(&b1, Duration::from_secs(3)).await;
    let (ok, failed) = l.finish().await;
    eprintln!("{ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0);
    let m = client.metrics().await;
    assert_eq!(metrics::value(&m, "strait_discovery_connected", &[]), 1.0);
}
