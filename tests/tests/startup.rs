//! End-to-end: start-up fails closed (issue 15, items 4 and 9). `/ready` waits for the identity
//! certificate and the controller's first answer; the first request right after `/ready` succeeds;
//! before discovery answers, a request gets a clear 503 instead of plaintext passthrough; an
//! expired certificate that cannot be renewed takes the proxy out of readiness.

use std::{
    net::SocketAddr,
    path::Path,
    time::{Duration, Instant},
};

use http::StatusCode;
use strait_tests::{
    ControllerHandle, Process, ProxyHandle, TestDir, bin, controller, free_addr, http_get, http_get_via_proxy, metrics,
    proxy_named, spawn_proxy, testsrv_in,
};

const MESH_HEAD: &str = "trustDomain: cluster.local\nworkloads:\n  - {name: client, namespace: demo, serviceAccount: client-sa, token: \"client-token\"}\n  - {name: server, namespace: demo, serviceAccount: server-sa, token: \"server-token\"}\n";

fn mesh(app: SocketAddr, server_inbound: SocketAddr) -> String {
    format!(
        "{MESH_HEAD}services:\n  - name: web\n    namespace: demo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{app}\", proxy: \"{server_inbound}\", workload: server}}]\n"
    )
}

/// The environment of a proxy for `workload` with discovery and identity from `ctl`.
fn meshed_env(
    ctl: &ControllerHandle,
    dir: &TestDir,
    workload: &str,
    extra: &[(&'static str, String)],
) -> Vec<(&'static str, String)> {
    let token = dir.write(format!("{workload}-{}.token", fastrand::u32(..)), format!("{workload}-token\n"));
    let mut env = ctl.proxy_env();
    env.extend([
        ("STRAIT_NAMESPACE", "demo".to_string()),
        ("STRAIT_WORKLOAD", workload.to_string()),
        ("STRAIT_SERVICE_ACCOUNT", format!("{workload}-sa")),
        ("STRAIT_IDENTITY_TOKEN_FILE", token.display().to_string()),
    ]);
    env.extend(extra.iter().cloned());
    env
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn ready(p: &ProxyHandle) -> (StatusCode, String) {
    match http_get(&format!("http://{}/ready", p.admin)).await {
        Ok(r) => (r.status, r.text()),
        Err(e) => (StatusCode::BAD_GATEWAY, e.to_string()),
    }
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A controller in embedded mode on the given discovery address (identity and admin on free ports).
fn controller_at(dir: &Path, name: &str, mesh_yaml: &str, discovery: SocketAddr) -> Process {
    let mesh_path = dir.join(format!("{name}.yaml"));
    std::fs::write(&mesh_path, mesh_yaml).unwrap();
    let (m, d, a, i, w, s) = (
        mesh_path.display().to_string(),
        discovery.to_string(),
        free_addr().to_string(),
        free_addr().to_string(),
        free_addr().to_string(),
        dir.join("state").display().to_string(),
    );
    let args = [
        "--mesh-file",
        &m,
        "--discovery-addr",
        &d,
        "--admin-addr",
        &a,
        "--identity-addr",
        &i,
        "--webhook-addr",
        &w,
        "--state-dir",
        &s,
    ];
    Process::spawn(name, bin("strait-controller"), &args, &[("STRAIT_LOG", "info")], dir)
}

#[tokio::test]
async fn ready_waits_for_the_controllers_first_answer() {
    let dir = TestDir::new("ready-discovery");
    let (_app, app) = testsrv_in(dir.path(), "http", "web").await;
    let discovery = free_addr();
    let d = discovery.to_string();
    let proxy = spawn_proxy("proxy", &[("STRAIT_DISCOVERY_ADDR", &d), ("STRAIT_NAMESPACE", "demo")]);
    strait_tests::wait_for_tcp(proxy.admin, Duration::from_secs(10)).await.unwrap();
    // The controller is not up: the proxy must not report ready, and must say what it waits for.
    for _ in 0..10 {
        let (status, body) = ready(&proxy).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "ready without discovery: {body}\n{}", proxy.log());
        assert!(body.contains("discovery"), "the body names what is missing: {body:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let _ctl = controller_at(dir.path(), "controller", &mesh(app, free_addr()), discovery);
    wait_until("ready once the controller answers", Duration::from_secs(20), || async {
        ready(&proxy).await.0 == StatusCode::OK
    })
    .await;
}

#[tokio::test]
async fn the_first_request_right_after_ready_succeeds() {
    let dir = TestDir::new("first-request");
    let (_app, app) = testsrv_in(dir.path(), "http", "web").await;
    let server_in = free_addr();
    // Identity is served from the start; discovery comes up a little after the proxies (a
    // controller starting with them, or a discovery stream that needs a reconnection).
    let ctl = controller(dir.path(), &mesh(app, server_in), &[]).await;
    for round in 0..2 {
        let discovery = free_addr();
        let debug = ("STRAIT_LOG", "info,strait_proxy=debug".to_string());
        let disc = ("STRAIT_DISCOVERY_ADDR", discovery.to_string());
        let server_extra = [("STRAIT_INBOUND_ADDR", server_in.to_string()), debug.clone(), disc.clone()];
        let server_env = meshed_env(&ctl, &dir, "server", &server_extra);
        let client_env = meshed_env(&ctl, &dir, "client", &[debug, disc]);
        let server = spawn_proxy(&format!("server-{round}"), &refs(&server_env));
        let client = spawn_proxy(&format!("client-{round}"), &refs(&client_env));
        let late = {
            let (dir, yaml) = (dir.path().to_path_buf(), mesh(app, server_in));
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await;
                controller_at(&dir, &format!("discovery-{round}"), &yaml, discovery)
            })
        };
        wait_until("both proxies ready", Duration::from_secs(30), || async {
            ready(&server).await.0 == StatusCode::OK && ready(&client).await.0 == StatusCode::OK
        })
        .await;
        let r = http_get_via_proxy(client.outbound, "http://web.demo:8080/").await.unwrap();
        assert_eq!(
            r.status,
            StatusCode::OK,
            "round {round}: first request after /ready: {:?} {}\nclient log:\n{}\nserver log:\n{}",
            r.header("strait-error"),
            r.text(),
            client.log(),
            server.log()
        );
        drop((client, server, late.await.unwrap()));
        // The server's inbound address is reused by the next round's proxy.
        strait_tests::net::retry_until("the inbound port is free", Duration::from_secs(10), || async {
            std::net::TcpListener::bind(server_in).map(drop).map_err(|e| e.to_string())
        })
        .await
        .unwrap();
    }
}

#[tokio::test]
async fn before_discovery_answers_a_request_gets_503_not_plaintext_passthrough() {
    let dir = TestDir::new("discovery-wait");
    let (_app, app) = testsrv_in(dir.path(), "http", "web").await;
    let d = free_addr().to_string();
    let proxy = spawn_proxy(
        "proxy",
        &[("STRAIT_DISCOVERY_ADDR", &d), ("STRAIT_NAMESPACE", "demo"), ("STRAIT_DISCOVERY_WAIT", "300ms")],
    );
    strait_tests::wait_for_tcp(proxy.outbound, Duration::from_secs(10)).await.unwrap();
    let r = http_get_via_proxy(proxy.outbound, &format!("http://{app}/")).await.unwrap();
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{} {}\n{}", r.status, r.text(), proxy.log());
    assert_eq!(r.header("strait-error"), Some("discovery-unavailable"));
    let served: u64 = http_get(&format!("http://{app}/count")).await.unwrap().text().trim().parse().unwrap();
    assert_eq!(served, 0, "nothing passed through to the app");
}

#[tokio::test]
async fn an_expired_certificate_that_cannot_be_renewed_makes_the_proxy_not_ready() {
    let dir = TestDir::new("expired-cert");
    let (_app, app) = testsrv_in(dir.path(), "http", "web").await;
    let mut ctl = controller(dir.path(), &mesh(app, free_addr()), &["--cert-lifetime", "10s"]).await;
    let env = meshed_env(&ctl, &dir, "client", &[]);
    let proxy = proxy_named("proxy", &refs(&env)).await;
    let valid = |m: &str| metrics::value(m, "strait_identity_certificate_valid", &[]);
    wait_until("the certificate is valid", Duration::from_secs(5), || async { valid(&proxy.metrics().await) == 1.0 })
        .await;
    ctl.process.kill();
    wait_until("not ready after the certificate expired", Duration::from_secs(30), || async {
        ready(&proxy).await.0 == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    let (_, body) = ready(&proxy).await;
    assert!(body.contains("certificate"), "the body says why: {body:?}");
    wait_until("the metric shows it", Duration::from_secs(5), || async { valid(&proxy.metrics().await) == 0.0 }).await;
    // A renewed certificate makes it ready again.
    ctl.restart().await;
    wait_until("ready again after renewal", Duration::from_secs(30), || async {
        ready(&proxy).await.0 == StatusCode::OK
    })
    .await;
    wait_until("the metric shows it", Duration::from_secs(5), || async { valid(&proxy.metrics().await) == 1.0 }).await;
}

/// A plaintext peer connection (transport header for `app_port`, HTTP/1 framing) with one request;
/// returns what came back before the connection closed (empty: refused).
async fn plaintext_peer_request(inbound: SocketAddr, app_port: u16) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    let mut h = b"strait\0\x01\x00\x03".to_vec();
    h.extend_from_slice(&app_port.to_be_bytes());
    h.push(2);
    h.extend_from_slice(b"GET / HTTP/1.1\r\nhost: web.demo:8080\r\nconnection: close\r\n\r\n");
    tcp.write_all(&h).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), tcp.read_to_end(&mut got)).await;
    String::from_utf8_lossy(&got).into_owned()
}

#[tokio::test]
async fn before_the_inbound_policy_arrives_a_connection_waits_for_it() {
    let dir = TestDir::new("inbound-wait");
    let (_app, app) = testsrv_in(dir.path(), "http", "web").await;
    let discovery = free_addr();
    let d = discovery.to_string();
    let env = [
        ("STRAIT_DISCOVERY_ADDR", d.as_str()),
        ("STRAIT_NAMESPACE", "demo"),
        ("STRAIT_WORKLOAD", "server"),
        ("STRAIT_DISCOVERY_WAIT", "15s"),
    ];
    let proxy = spawn_proxy("proxy", &env);
    strait_tests::wait_for_tcp(proxy.inbound, Duration::from_secs(10)).await.unwrap();
    // The controller says the workload is strict, but only a second after the connection arrived:
    // the connection must wait for that, not be served as permissive meanwhile.
    let yaml = format!(
        "workloads:\n  - {{name: server, namespace: demo, serviceAccount: server-sa, inboundMode: strict}}\nservices:\n  - name: web\n    namespace: demo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{app}\", proxy: \"{}\", workload: server}}]\n",
        proxy.inbound
    );
    let late = {
        let dir = dir.path().to_path_buf();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(1)).await;
            controller_at(&dir, "controller", &yaml, discovery)
        })
    };
    let got = plaintext_peer_request(proxy.inbound, app.port()).await;
    let _ctl = late.await.unwrap();
    assert!(got.is_empty(), "plaintext served before the strict policy arrived: {got:?}\n{}", proxy.log());
    let served: u64 = http_get(&format!("http://{app}/count")).await.unwrap().text().trim().parse().unwrap();
    assert_eq!(served, 0, "nothing reached the app");
}
