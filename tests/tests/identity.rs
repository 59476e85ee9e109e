//! End-to-end: identity and mutual TLS between proxies, with a real controller (embedded mode)
//! issuing the certificates (issue 4, "Must pass in CI").
//!
//! Every test starts its own `strait-controller --mesh-file --state-dir` and proxies with
//! `STRAIT_DISCOVERY_ADDR`, `STRAIT_IDENTITY_ADDR`, `STRAIT_TRUST_ANCHORS=<state-dir>/trust-anchors.pem`
//! and a bootstrap token file. Requests go client → client proxy (explicit HTTP proxy) → server
//! proxy → server app.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use strait_tests::{
    ControllerHandle, Process, ProxyHandle, TestDir, controller, controller_named, free_addr, http_get,
    http_get_via_proxy, metrics, proxy_named, send_http1, spawn_proxy, testsrv_in,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
}

/// A workload of the mesh file: name, service account, bootstrap token.
#[derive(Clone, Copy)]
struct Wl {
    name: &'static str,
    sa: &'static str,
    token: &'static str,
}

const CLIENT: Wl = Wl { name: "client", sa: "client-sa", token: "client-token" };
const SERVER: Wl = Wl { name: "server", sa: "server-sa", token: "server-token" };

/// A service `name.demo:8080` with one endpoint: the app at `app`, its proxy's inbound at `proxy`,
/// run by `workload`.
struct Svc<'a> {
    name: &'a str,
    app: SocketAddr,
    proxy: SocketAddr,
    workload: &'a str,
}

fn mesh_yaml(workloads: &[Wl], services: &[Svc<'_>]) -> String {
    let mut y = String::from("trustDomain: cluster.local\nworkloads:\n");
    for w in workloads {
        y += &format!("  - {{name: {}, namespace: demo, serviceAccount: {}, token: \"{}\"}}\n", w.name, w.sa, w.token);
    }
    y += "services:\n";
    for s in services {
        y += &format!(
            "  - name: {}\n    namespace: demo\n    ports: [{{port: 8080, protocol: http}}]\n    endpoints: [{{address: \"{}\", proxy: \"{}\", workload: {}}}]\n",
            s.name, s.app, s.proxy, s.workload
        );
    }
    y
}

/// Replaces `path` in one step (write a temporary file, rename), as operators and Secret mounts do.
fn replace(path: &Path, contents: &str) {
    let tmp = path.with_extension(format!("tmp{}", fastrand::u32(..)));
    std::fs::write(&tmp, contents).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// The environment of a proxy running `w` with identity from `ctl` (its token in a file), plus `extra`.
fn proxy_env(ctl: &ControllerHandle, dir: &TestDir, w: Wl, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
    let token = dir.write(format!("{}-{}.token", w.name, fastrand::u32(..)), format!("{}\n", w.token));
    let mut env = ctl.proxy_env();
    env.extend([
        ("STRAIT_NAMESPACE", "demo".to_string()),
        ("STRAIT_WORKLOAD", w.name.to_string()),
        ("STRAIT_SERVICE_ACCOUNT", w.sa.to_string()),
        ("STRAIT_IDENTITY_TOKEN_FILE", token.display().to_string()),
    ]);
    env.extend(extra.iter().cloned());
    env
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn meshed(name: &str, ctl: &ControllerHandle, dir: &TestDir, w: Wl, extra: &[(&'static str, String)]) -> ProxyHandle {
    proxy_named(name, &refs(&proxy_env(ctl, dir, w, extra))).await
}

fn inbound_at(addr: SocketAddr) -> (&'static str, String) {
    ("STRAIT_INBOUND_ADDR", addr.to_string())
}

async fn value(p: &ProxyHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::value(&p.metrics().await, name, labels)
}

async fn ctl_value(c: &ControllerHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::value(&c.metrics().await, name, labels)
}

async fn certified(p: &ProxyHandle) -> f64 {
    value(p, "strait_identity_certify_total", &[("result", "ok")]).await
}

async fn issued(c: &ControllerHandle, result: &str) -> f64 {
    ctl_value(c, "strait_controller_certificates_issued_total", &[("result", result)]).await
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn ready_status(p: &ProxyHandle) -> StatusCode {
    http_get(&format!("http://{}/ready", p.admin)).await.unwrap().status
}

async fn served(app: SocketAddr) -> u64 {
    http_get(&format!("http://{app}/count")).await.unwrap().text().trim().parse().unwrap()
}

fn now_unix() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64()
}

// ---------------------------------------------------------------------------------------------
// Packet capture (tcpdump) for the "no plaintext between the proxies" check.

/// Why the capture cannot run here, if it cannot. Under `CI=true` it must run.
fn capture_unavailable() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    let reason = if unsafe { libc::geteuid() } != 0 {
        Some("not root, so tcpdump cannot capture".to_string())
    } else if tcpdump().is_none() {
        Some("tcpdump is not installed (`make test` installs it when root)".to_string())
    } else {
        None
    };
    if let Some(r) = &reason {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI must run the packet capture, but: {r}");
    }
    reason
}

fn tcpdump() -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/bin"])
        .map(|d| Path::new(d).join("tcpdump"))
        .find(|p| p.is_file())
}

struct Capture {
    process: Process,
    file: PathBuf,
}

/// Captures loopback TCP traffic to or from `port` into `<dir>/<name>.pcap`; returns once tcpdump listens.
async fn start_capture(dir: &TestDir, name: &str, port: u16) -> Capture {
    let file = dir.join(format!("{name}.pcap"));
    let (f, p) = (file.display().to_string(), port.to_string());
    let args = ["-i", "lo", "-n", "-U", "--immediate-mode", "-s", "0", "-Z", "root", "-w", &f, "tcp", "port", &p];
    let mut process = Process::spawn(name, tcpdump().unwrap(), &args, &[], dir.path());
    process.wait_for_log_line("tcpdump: listening on", Duration::from_secs(10)).await;
    Capture { process, file }
}

impl Capture {
    /// Stops tcpdump (SIGINT flushes the file) and returns the capture's bytes.
    async fn finish(mut self) -> Vec<u8> {
        // Packets sent just before are already written (-U, --immediate-mode); a short pause lets
        // the last ones through the kernel's capture buffer.
        tokio::time::sleep(Duration::from_millis(300)).await;
        self.process.signal(libc::SIGINT);
        self.process.wait_exit(Duration::from_secs(10)).await.unwrap();
        std::fs::read(&self.file).unwrap()
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

// ---------------------------------------------------------------------------------------------

/// client app → client proxy → (mTLS) → server proxy → server app: the app is told the client's
/// identity (a forged header is replaced), and a capture between the proxies holds no plaintext;
/// neither does one of the proxies' calls to the identity service, which carry their tokens.
#[tokio::test]
async fn mutual_tls_names_the_client_and_nothing_crosses_in_plaintext() {
    let dir = TestDir::new("mtls");
    let (_app_p, app) = testsrv_in(dir.path(), "http", "web").await;
    let b_in = free_addr();
    let mesh = mesh_yaml(&[CLIENT, SERVER], &[Svc { name: "web", app, proxy: b_in, workload: "server" }]);
    let ctl = controller(dir.path(), &mesh, &[]).await;
    assert!(ctl.trust_anchors().is_file());
    assert!(ctl.log().contains(&ctl.trust_anchors().display().to_string()), "the controller says where the anchors are");
    // The proxies' tokens go to the identity service: over TLS, never readable on the wire.
    let to_identity = match capture_unavailable() {
        None => Some(start_capture(&dir, "to-identity", ctl.identity.port()).await),
        Some(_) => None,
    };
    let b = meshed("proxy-server", &ctl, &dir, SERVER, &[inbound_at(b_in)]).await;
    let a = meshed("proxy-client", &ctl, &dir, CLIENT, &[]).await;
    if let Some(capture) = to_identity {
        let captured = capture.finish().await;
        assert!(contains(&captured, b"strait-controller.strait-system.serviceaccount.identity.strait.cluster.local"), "no ClientHello captured");
        for plain in [&b"server-token"[..], b"client-token", b"spiffe://", b"PRI * HTTP/2.0", b"strait.identity.v1"] {
            assert!(!contains(&captured, plain), "{:?} went to the identity service in plaintext", String::from_utf8_lossy(plain));
        }
    }

    let captures = match capture_unavailable() {
        None => Some((start_capture(&dir, "between-proxies", b_in.port()).await, start_capture(&dir, "to-app", app.port()).await)),
        Some(reason) => {
            eprintln!("SKIPPED the packet capture part: {reason}");
            None
        }
    };

    let canary = format!("canary{:016x}", fastrand::u64(..));
    for i in 0..3 {
        let path = format!("/secret-{canary}/{i}");
        let req = Request::get(format!("http://web.demo:8080{path}"))
            .header("host", "web.demo:8080")
            .header("x-canary", canary.as_str())
            .header("strait-client-id", "spiffe://cluster.local/ns/kube-system/sa/admin")
            .body(Empty::<Bytes>::new())
            .unwrap();
        let r = send_http1(a.outbound, req).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}", r.text());
        assert_eq!(r.text(), format!("web GET {path}"));
        assert_eq!(r.header("x-seen-client-id"), Some(spiffe("client-sa").as_str()), "the app sees the verified identity only");
    }

    if let Some((between, to_app)) = captures {
        let between = between.finish().await;
        let to_app = to_app.finish().await;
        // The capture did see the proxies' connection, from its ClientHello on.
        assert!(contains(&between, b"server-sa.demo.serviceaccount.identity.strait.cluster.local"), "no ClientHello captured");
        assert!(contains(&between, &[0x17, 0x03, 0x03]), "no TLS application data captured");
        for plain in [canary.as_bytes(), b"secret-", b"HTTP/1.1", b"PRI * HTTP/2.0", b"web.demo", b"x-canary", b"GET"] {
            assert!(!contains(&between, plain), "{:?} crossed between the proxies in plaintext", String::from_utf8_lossy(plain));
        }
        // The same capture on the app's port does see it: the check above can fail.
        assert!(contains(&to_app, canary.as_bytes()) && contains(&to_app, b"x-canary"), "the app-side capture misses the request");
        eprintln!("captured {} bytes between the proxies, {} to the app", between.len(), to_app.len());
    }

    let mb = b.metrics().await;
    let client_id = spiffe("client-sa");
    let inbound = [("direction", "inbound"), ("tls", "true"), ("peer_id", client_id.as_str())];
    assert_eq!(metrics::value(&mb, "strait_requests_total", &inbound), 3.0, "{mb}");
    assert_eq!(metrics::value(&mb, "strait_requests_total", &[("direction", "inbound"), ("tls", "false")]), 0.0);
    assert_eq!(metrics::value(&mb, "strait_tls_handshakes_total", &[("direction", "inbound"), ("result", "ok")]), 1.0);
    assert_eq!(value(&a, "strait_tls_handshakes_total", &[("direction", "outbound"), ("result", "ok")]).await, 1.0);
    assert_eq!(value(&a, "strait_identity_certify_total", &[("result", "ok")]).await, 1.0);
    let expiry = value(&a, "strait_identity_cert_expiry_timestamp_seconds", &[]).await;
    assert!((expiry - now_unix() - 24.0 * 3600.0).abs() < 120.0, "a 24 h certificate by default, expires at {expiry}");
    assert_eq!(issued(&ctl, "ok").await, 2.0);
}

/// A wrong bootstrap token, a good token for another service account, and another trust domain:
/// no certificate, the proxy stays not ready, and the controller counts why. Once the token file
/// holds the right token, the proxy gets its certificate and becomes ready.
#[tokio::test]
async fn no_certificate_without_a_valid_proof_and_no_readiness_without_a_certificate() {
    let dir = TestDir::new("refused");
    const LATE: Wl = Wl { name: "late", sa: "late-sa", token: "late-token" };
    let ctl = controller(dir.path(), &mesh_yaml(&[SERVER, LATE], &[]), &[]).await;
    let start = |name: &str, w: Wl, extra: &[(&'static str, String)]| spawn_proxy(name, &refs(&proxy_env(&ctl, &dir, w, extra)));
    let impostor = start("impostor", Wl { token: "guessed", ..SERVER }, &[]);
    let greedy = start("greedy", Wl { sa: "admin", ..SERVER }, &[]);
    // Another trust domain, still talking to this controller (whose identity is in cluster.local).
    let foreign = start(
        "foreign",
        SERVER,
        &[
            ("STRAIT_TRUST_DOMAIN", "evil.org".into()),
            ("STRAIT_IDENTITY_SERVER_ID", "spiffe://cluster.local/ns/strait-system/sa/strait-controller".into()),
        ],
    );
    // A proxy that expects another identity service never sends it its token: TLS fails first.
    let wary = start("wary", SERVER, &[("STRAIT_IDENTITY_SERVER_ID", "spiffe://cluster.local/ns/elsewhere/sa/other-controller".into())]);
    let late_token = dir.write("late.token", "not-yet\n");
    let late = spawn_proxy(
        "late",
        &refs(&proxy_env(&ctl, &dir, LATE, &[("STRAIT_IDENTITY_TOKEN_FILE", late_token.display().to_string())])),
    );

    wait_until("the controller to refuse all four", Duration::from_secs(30), || async {
        issued(&ctl, "unauthenticated").await >= 2.0 && issued(&ctl, "denied").await >= 2.0
    })
    .await;
    for p in [&impostor, &greedy, &foreign, &late, &wary] {
        wait_until("the proxy to count its refusal", Duration::from_secs(10), || async {
            value(p, "strait_identity_certify_total", &[("result", "error")]).await >= 1.0
        })
        .await;
        assert_eq!(ready_status(p).await, StatusCode::SERVICE_UNAVAILABLE, "{}", p.log());
        assert_eq!(certified(p).await, 0.0);
        assert_eq!(value(p, "strait_identity_cert_expiry_timestamp_seconds", &[]).await, 0.0);
    }
    assert_eq!(issued(&ctl, "ok").await, 0.0, "nothing was signed");
    assert!(wary.log().contains("did not prove spiffe://cluster.local/ns/elsewhere/sa/other-controller"), "the wary proxy refused the controller's certificate:\n{}", wary.log());
    let log = ctl.log();
    for why in [
        "the token presented is not workload server's",
        "the token proves spiffe://cluster.local/ns/demo/sa/server-sa, not the requested spiffe://cluster.local/ns/demo/sa/admin",
        "is not in this mesh's trust domain",
    ] {
        assert!(log.contains(why), "the controller's log does not say {why:?}:\n{log}");
    }
    assert!(!log.contains("server-token"), "tokens never reach the log");

    // The proxy keeps trying (with backoff): the right token makes it ready.
    replace(&late_token, "late-token\n");
    wait_until("the late proxy to become ready", Duration::from_secs(40), || async {
        ready_status(&late).await == StatusCode::OK
    })
    .await;
    assert_eq!(certified(&late).await, 1.0);
    assert_eq!(issued(&ctl, "ok").await, 1.0);
    for p in [&impostor, &greedy, &foreign] {
        assert_eq!(ready_status(p).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// Discovery says the endpoint is run by workload `x` (service account x-sa), but the proxy there
/// runs `y` (y-sa): the client proxy refuses it with 502 and `strait-error: identity-mismatch`, and
/// nothing reaches the app. Correcting the mesh file makes the same request succeed.
#[tokio::test]
async fn a_server_with_another_identity_than_discovery_promised_is_refused() {
    let dir = TestDir::new("mismatch");
    const X: Wl = Wl { name: "x", sa: "x-sa", token: "x-token" };
    const Y: Wl = Wl { name: "y", sa: "y-sa", token: "y-token" };
    let (_app_p, app) = testsrv_in(dir.path(), "http", "web").await;
    let y_in = free_addr();
    let ctl = controller(dir.path(), &mesh_yaml(&[CLIENT, X, Y], &[Svc { name: "web", app, proxy: y_in, workload: "x" }]), &[]).await;
    let y = meshed("proxy-y", &ctl, &dir, Y, &[inbound_at(y_in)]).await;
    let a = meshed("proxy-client", &ctl, &dir, CLIENT, &[]).await;

    let r = http_get_via_proxy(a.outbound, "http://web.demo:8080/hello").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.header("strait-error"), Some("identity-mismatch"));
    assert_eq!(value(&a, "strait_tls_handshakes_total", &[("direction", "outbound"), ("result", "identity-mismatch")]).await, 1.0);
    assert_eq!(value(&a, "strait_tls_handshakes_total", &[("direction", "outbound"), ("result", "ok")]).await, 0.0);
    assert_eq!(value(&y, "strait_inbound_refused_total", &[("reason", "server-name")]).await, 1.0);
    assert_eq!(value(&y, "strait_requests_total", &[]).await, 0.0);
    assert_eq!(served(app).await, 0, "nothing reached the app");

    replace(&ctl.mesh_file, &mesh_yaml(&[CLIENT, X, Y], &[Svc { name: "web", app, proxy: y_in, workload: "y" }]));
    let mut mismatches = 1;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = http_get_via_proxy(a.outbound, "http://web.demo:8080/hello").await.unwrap();
        if r.status == StatusCode::OK {
            assert_eq!(r.header("x-seen-client-id"), Some(spiffe("client-sa").as_str()));
            break;
        }
        assert_eq!(r.header("strait-error"), Some("identity-mismatch"));
        mismatches += 1;
        assert!(Instant::now() < deadline, "the corrected identity did not reach the client proxy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let refused = value(&y, "strait_inbound_refused_total", &[("reason", "server-name")]).await;
    assert_eq!(refused, f64::from(mismatches));
    assert_eq!(served(app).await, 1);
}

/// B's certificate comes from a controller with a 10 s lifetime, which is then stopped, so B cannot
/// renew and its certificate expires. Peers configured alike (A and C, certified by a second
/// controller on the same state directory) talk to B before the expiry; after it, a fresh handshake
/// is refused in both directions: A as client refuses B's server certificate, A as server refuses
/// B's client certificate.
#[tokio::test]
async fn an_expired_certificate_is_refused_both_as_server_and_as_client() {
    let dir = TestDir::new("expired");
    const A: Wl = Wl { name: "a", sa: "a-sa", token: "a-token" };
    const B: Wl = Wl { name: "b", sa: "b-sa", token: "b-token" };
    const C: Wl = Wl { name: "c", sa: "c-sa", token: "c-token" };
    let (_pa, app_a) = testsrv_in(dir.path(), "http", "app-a").await;
    let (_pb, app_b) = testsrv_in(dir.path(), "http", "app-b").await;
    let (_pc, app_c) = testsrv_in(dir.path(), "http", "app-c").await;
    let (a_in, b_in, c_in) = (free_addr(), free_addr(), free_addr());
    let mesh = mesh_yaml(
        &[A, B, C],
        &[
            Svc { name: "web-a", app: app_a, proxy: a_in, workload: "a" },
            Svc { name: "web-b", app: app_b, proxy: b_in, workload: "b" },
            Svc { name: "web-c", app: app_c, proxy: c_in, workload: "c" },
        ],
    );
    let long = controller_named("controller-long", dir.path(), &mesh, &[]).await;
    let mut short = controller_named("controller-short", dir.path(), &mesh, &["--cert-lifetime", "10s"]).await;
    let debug = ("STRAIT_LOG", "info,strait_proxy::http::client=debug,strait_proxy::inbound=debug".to_string());
    let a = meshed("proxy-a", &long, &dir, A, &[inbound_at(a_in), debug.clone()]).await;
    let c = meshed("proxy-c", &long, &dir, C, &[inbound_at(c_in)]).await;
    let b_extra = [inbound_at(b_in), ("STRAIT_IDENTITY_ADDR", short.identity.to_string())];
    let b = meshed("proxy-b", &long, &dir, B, &b_extra).await;
    short.process.kill();
    let b_expiry = value(&b, "strait_identity_cert_expiry_timestamp_seconds", &[]).await;
    assert!(b_expiry - now_unix() <= 10.5, "B's certificate lives 10 s, expires at {b_expiry}");

    // Before the expiry, B's certificate is good both ways.
    let r = http_get_via_proxy(c.outbound, "http://web-b.demo:8080/before").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = http_get_via_proxy(b.outbound, "http://web-c.demo:8080/before").await.unwrap();
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert!(now_unix() < b_expiry, "the checks before the expiry ran late; the test machine is too slow");

    let wait = (b_expiry + 1.5 - now_unix()).max(0.0);
    tokio::time::sleep(Duration::from_secs_f64(wait)).await;
    assert_eq!(certified(&b).await, 1.0, "B could not renew");

    // A as client: B's server certificate has expired.
    let r = http_get_via_proxy(a.outbound, "http://web-b.demo:8080/after").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(r.header("strait-error"), Some("connect-failed"));
    assert_eq!(value(&a, "strait_tls_handshakes_total", &[("direction", "outbound"), ("result", "error")]).await, 1.0);
    // A as server: B's client certificate has expired.
    let r = http_get_via_proxy(b.outbound, "http://web-a.demo:8080/after").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(value(&a, "strait_tls_handshakes_total", &[("direction", "inbound"), ("result", "error")]).await, 1.0);
    assert_eq!(value(&a, "strait_tls_handshakes_total", &[("direction", "inbound"), ("result", "ok")]).await, 0.0);
    assert_eq!((served(app_a).await, served(app_b).await, served(app_c).await), (0, 1, 1));
    let log = a.log();
    for what in ["mesh TLS handshake failed", "inbound TLS handshake failed"] {
        let lines: Vec<&str> = log.lines().filter(|l| l.contains(what)).collect();
        assert_eq!(lines.len(), 1, "{what}:\n{log}");
        assert!(lines[0].to_lowercase().contains("expired"), "A names the expiry as the reason: {}", lines[0]);
    }
}

/// A strict proxy serves mesh TLS only: a proxy without identity (plaintext transport header) and a
/// raw plaintext client are refused and counted; a meshed client gets through.
#[tokio::test]
async fn strict_mode_refuses_plaintext() {
    let dir = TestDir::new("strict");
    let (_app_p, app) = testsrv_in(dir.path(), "http", "web").await;
    let b_in = free_addr();
    let ctl = controller(dir.path(), &mesh_yaml(&[CLIENT, SERVER], &[Svc { name: "web", app, proxy: b_in, workload: "server" }]), &[]).await;
    let b = meshed("proxy-strict", &ctl, &dir, SERVER, &[inbound_at(b_in), ("STRAIT_INBOUND_MODE", "strict".into())]).await;
    let a = meshed("proxy-meshed", &ctl, &dir, CLIENT, &[]).await;
    let d = ctl.discovery.to_string();
    let plain = proxy_named(
        "proxy-plaintext",
        &[("STRAIT_DISCOVERY_ADDR", d.as_str()), ("STRAIT_NAMESPACE", "demo"), ("STRAIT_WORKLOAD", "client")],
    )
    .await;

    let r = http_get_via_proxy(a.outbound, "http://web.demo:8080/meshed").await.unwrap();
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.header("x-seen-client-id"), Some(spiffe("client-sa").as_str()));

    // The connection is accepted, then closed unread: the plaintext proxy sees it fail.
    let r = http_get_via_proxy(plain.outbound, "http://web.demo:8080/plaintext").await.unwrap();
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert!(matches!(r.header("strait-error"), Some("upstream-failed" | "connect-failed")), "{:?}", r.header("strait-error"));
    assert_eq!(value(&b, "strait_inbound_refused_total", &[("reason", "strict-plaintext")]).await, 1.0);

    // Plaintext HTTP straight at the inbound listener: closed without an answer.
    let mut tcp = tokio::net::TcpStream::connect(b_in).await.unwrap();
    tcp.write_all(b"GET /raw HTTP/1.1\r\nhost: web.demo:8080\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok() && answer.is_empty(), "strict inbound answered plaintext: {answer:?}");
    assert_eq!(value(&b, "strait_inbound_refused_total", &[("reason", "strict-plaintext")]).await, 2.0);

    assert_eq!(served(app).await, 1, "only the meshed request reached the app");
    let mb = b.metrics().await;
    assert_eq!(metrics::value(&mb, "strait_requests_total", &[("direction", "inbound"), ("tls", "true")]), 1.0);
    assert_eq!(metrics::value(&mb, "strait_requests_total", &[("direction", "inbound"), ("tls", "false")]), 0.0);
}

// ---------------------------------------------------------------------------------------------
// Steady load: every request's outcome counted.

struct Load {
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// `workers` loops of `GET http://web.demo:8080/load` through `outbound`, each on a new client
/// connection, `pause` apart.
fn load(outbound: SocketAddr, workers: usize, pause: Duration) -> Load {
    let (ok, failed, stop) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let tasks = (0..workers)
        .map(|_| {
            let (ok, failed, stop, failures) = (ok.clone(), failed.clone(), stop.clone(), failures.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    let outcome = tokio::time::timeout(
                        Duration::from_secs(10),
                        http_get_via_proxy(outbound, "http://web.demo:8080/load"),
                    )
                    .await;
                    match outcome {
                        Ok(Ok(r)) if r.status == StatusCode::OK && r.text() == "web GET /load" => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            let what = match other {
                                Ok(Ok(r)) => format!("{} {:?} {}", r.status, r.header("strait-error"), r.text()),
                                Ok(Err(e)) => e.to_string(),
                                Err(_) => "no answer within 10 s".into(),
                            };
                            failures.lock().unwrap().push(what);
                        }
                    }
                    tokio::time::sleep(pause).await;
                }
            })
        })
        .collect();
    Load { ok, failed, failures, stop, tasks }
}

impl Load {
    /// Stops the workers and returns (ok, failed, the failures' descriptions).
    async fn finish(self) -> (u64, u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), self.failed.load(Ordering::Relaxed), failures)
    }
}

/// A new client proxy (so a new mTLS handshake with the server proxy) sends `n` requests; all must
/// succeed. Returns the proxy, for its metrics.
async fn fresh_client(name: &str, ctl: &ControllerHandle, dir: &TestDir, n: usize) -> ProxyHandle {
    let p = meshed(name, ctl, dir, CLIENT, &[]).await;
    for i in 0..n {
        let r = http_get_via_proxy(p.outbound, "http://web.demo:8080/load").await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{name} request {i}: {} {:?}\n{}", r.status, r.header("strait-error"), p.log());
    }
    assert_eq!(value(&p, "strait_tls_handshakes_total", &[("direction", "outbound"), ("result", "ok")]).await, 1.0);
    p
}

async fn pair(dir: &TestDir, extra_args: &[&str]) -> (ControllerHandle, Process, SocketAddr, ProxyHandle, ProxyHandle) {
    let (app_p, app) = testsrv_in(dir.path(), "http", "web").await;
    let b_in = free_addr();
    let mesh = mesh_yaml(&[CLIENT, SERVER], &[Svc { name: "web", app, proxy: b_in, workload: "server" }]);
    let ctl = controller(dir.path(), &mesh, extra_args).await;
    let b = meshed("proxy-server", &ctl, dir, SERVER, &[inbound_at(b_in)]).await;
    let a = meshed("proxy-client", &ctl, dir, CLIENT, &[]).await;
    (ctl, app_p, app, a, b)
}

/// One-minute certificates, renewed at 70 % ± 5 % (every ~42 s), under steady load: both proxies
/// renew at least twice, no request fails, and a client that connects after the renewals
/// handshakes with the renewed certificates.
#[tokio::test]
async fn one_minute_certificates_renew_under_steady_load_without_a_failed_request() {
    let dir = TestDir::new("renewal");
    let (ctl, _app_p, app, a, b) = pair(&dir, &["--cert-lifetime", "1m"]).await;
    let first_expiry = value(&b, "strait_identity_cert_expiry_timestamp_seconds", &[]).await;
    assert!((first_expiry - now_unix() - 60.0).abs() < 5.0, "a 1-minute certificate, expires at {first_expiry}");
    let load = load(a.outbound, 2, Duration::from_millis(20));

    let start = Instant::now();
    wait_until("three certificates on both proxies", Duration::from_secs(110), || async {
        certified(&a).await >= 3.0 && certified(&b).await >= 3.0
    })
    .await;
    eprintln!("both proxies renewed twice in {:?}", start.elapsed());
    let expiry = value(&b, "strait_identity_cert_expiry_timestamp_seconds", &[]).await;
    assert!(expiry >= first_expiry + 70.0, "the renewed certificate expires later ({first_expiry} → {expiry})");
    let late = fresh_client("proxy-late", &ctl, &dir, 20).await;

    let (ok, failed, failures) = load.finish().await;
    assert_eq!(failed, 0, "failed requests: {:?}", &failures[..failures.len().min(10)]);
    assert!(ok > 500, "steady load: only {ok} requests");
    assert_eq!(served(app).await, ok + 20, "every request reached the app exactly once");
    let inbound_ok = value(&b, "strait_requests_total", &[("direction", "inbound"), ("status_code", "200")]).await;
    assert_eq!(inbound_ok as u64, ok + 20);
    for p in [&a, &b] {
        assert_eq!(value(p, "strait_identity_certify_total", &[("result", "error")]).await, 0.0);
    }
    let total = certified(&a).await + certified(&b).await + certified(&late).await;
    assert_eq!(issued(&ctl, "ok").await, total, "the controller signed exactly what the proxies received");
    eprintln!("{ok} requests under load, 0 failed, {total} certificates issued");
}

/// A new trust anchor and an issuer it certified: (anchor PEM, issuer certificate PEM, issuer key PEM).
fn new_anchor_and_issuer() -> (String, String, String) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose};
    let ca_params = |name: &str, is_ca| {
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, name);
        p.is_ca = is_ca;
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p
    };
    let anchor_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let anchor_params = ca_params("rotated trust anchor", IsCa::Ca(BasicConstraints::Unconstrained));
    let anchor = anchor_params.self_signed(&anchor_key).unwrap();
    let anchor_issuer = Issuer::new(anchor_params, anchor_key);
    let issuer_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let issuer = ca_params("rotated issuer", IsCa::Ca(BasicConstraints::Constrained(0)))
        .signed_by(&issuer_key, &anchor_issuer)
        .unwrap();
    (anchor.pem(), issuer.pem(), issuer_key.serialize_pem())
}

/// Anchor rotation under steady load, in three steps with the controller and proxies running:
/// 1. the anchors file becomes old + new; 2. the controller's issuer files are replaced by an issuer
/// of the new anchor (it reloads them) and the proxies renew (10 s certificates) from it; 3. the old
/// anchor is dropped. No request fails, and a new client handshakes after each step.
#[tokio::test]
async fn trust_anchor_rotation_under_steady_load_without_a_failed_request() {
    let dir = TestDir::new("rotation");
    let (ctl, _app_p, app, a, b) = pair(&dir, &["--cert-lifetime", "10s"]).await;
    let load = load(a.outbound, 2, Duration::from_millis(20));
    let anchors_path = ctl.trust_anchors();
    let old_anchor = std::fs::read_to_string(&anchors_path).unwrap();
    let (new_anchor, new_issuer, new_issuer_key) = new_anchor_and_issuer();
    let reloads = |p: &ProxyHandle| p.log().matches("trust anchors reloaded").count();
    let issuer_reloads = || async { ctl_value(&ctl, "strait_controller_issuer_reloads_total", &[("result", "ok")]).await };
    let mut fresh = 0;

    // 1. Trust both anchors.
    replace(&anchors_path, &format!("{old_anchor}{new_anchor}"));
    wait_until("the proxies to trust both anchors", Duration::from_secs(10), || async { reloads(&a) == 1 && reloads(&b) == 1 }).await;
    wait_until("the controller to see the bundle", Duration::from_secs(10), || async { issuer_reloads().await == 1.0 }).await;
    let _c1 = fresh_client("proxy-fresh-1", &ctl, &dir, 10).await;
    fresh += 10;

    // 2. The new issuer: key and certificate replaced one after the other.
    replace(&ctl.state_dir.join("issuer-key.pem"), &new_issuer_key);
    replace(&ctl.state_dir.join("issuer.pem"), &new_issuer);
    wait_until("the controller to take the new issuer", Duration::from_secs(10), || async { issuer_reloads().await == 2.0 }).await;
    assert!(ctl.log().contains("CN=rotated issuer"), "{}", ctl.log());
    // A client certified by the new issuer while the server still holds an old-issuer certificate.
    let _c2 = fresh_client("proxy-fresh-2", &ctl, &dir, 10).await;
    fresh += 10;
    let (a0, b0) = (certified(&a).await, certified(&b).await);
    wait_until("both proxies to renew twice from the new issuer", Duration::from_secs(40), || async {
        certified(&a).await >= a0 + 2.0 && certified(&b).await >= b0 + 2.0
    })
    .await;

    // 3. Drop the old anchor: only new-issuer certificates verify from now on.
    replace(&anchors_path, &new_anchor);
    wait_until("the proxies to drop the old anchor", Duration::from_secs(10), || async { reloads(&a) == 2 && reloads(&b) == 2 }).await;
    wait_until("the controller to see the new anchors", Duration::from_secs(10), || async { issuer_reloads().await == 3.0 }).await;
    let _c3 = fresh_client("proxy-fresh-3", &ctl, &dir, 10).await;
    fresh += 10;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let (ok, failed, failures) = load.finish().await;
    assert_eq!(failed, 0, "failed requests: {:?}", &failures[..failures.len().min(10)]);
    assert!(ok > 100, "steady load: only {ok} requests");
    assert_eq!(served(app).await, ok + fresh);
    let inbound_ok = value(&b, "strait_requests_total", &[("direction", "inbound"), ("status_code", "200")]).await;
    assert_eq!(inbound_ok as u64, ok + fresh);
    assert_eq!(value(&b, "strait_tls_handshakes_total", &[("direction", "inbound"), ("result", "error")]).await, 0.0);
    assert_eq!(ctl_value(&ctl, "strait_controller_certificates_issued_total", &[("result", "error")]).await, 0.0);
    assert_eq!(ctl_value(&ctl, "strait_controller_certificates_issued_total", &[("result", "unavailable")]).await, 0.0);
}
