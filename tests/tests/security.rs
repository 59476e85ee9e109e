//! Process tier: the attacks of the security review that need no interception, against real
//! proxies on loopback. Each test failed on the code before its fix.
//!
//! - self-loop: a request or CONNECT that names one of the proxy's own listeners is refused with
//!   508 `strait-error: loop-detected` instead of being sent back into the proxy.
//! - header limits: a request header list of up to 64 KiB crosses a proxy pair (mTLS, HTTP/2
//!   between the proxies), beyond it the client gets 431 `strait-error: headers-too-large`.
//! - local ports: a peer's transport header may name only the ports the workload serves, and never
//!   one of the proxy's own listeners by `0.0.0.0`/`[::]`/loopback.
//! - retries: a `strait-error: connect-failed` that an application (meshed or not) sends itself does
//!   not make a POST look safe to send again.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use strait_tests::{
    ControllerHandle, ProxyHandle, TestDir, controller, free_addr, free_port, http_connect_tunnel, proxy_named,
    send_h2c, send_http1, testsrv_in,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Whether this host can listen on `[::1]` (the IPv6 cases are skipped where it cannot).
fn has_ipv6() -> bool {
    std::net::TcpListener::bind("[::1]:0").is_ok()
}

fn get(target: &str, host: &str) -> Request<Empty<Bytes>> {
    Request::get(target).header("host", host).body(Empty::new()).unwrap()
}

/// Bounded: a request that loops never answers by itself.
async fn bounded<T>(what: &str, f: impl Future<Output = std::io::Result<T>>) -> std::io::Result<T> {
    tokio::time::timeout(Duration::from_secs(5), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 5 s (looping?)"))
}

#[tokio::test]
async fn requests_and_connects_to_the_proxys_own_listeners_are_refused_as_loops() {
    let v6 = has_ipv6();
    let (out, inb, admin) = (free_port(), free_port(), free_port());
    let out_addrs = if v6 { format!("127.0.0.1:{out},[::1]:{out}") } else { format!("127.0.0.1:{out}") };
    let in_addr = format!("127.0.0.1:{inb}");
    // The admin port on every address, as the injector configures it.
    let admin_addr = format!("0.0.0.0:{admin}");
    let dir = TestDir::new("security-loop");
    let mesh = dir.write("mesh.yaml", "trustDomain: cluster.local\nworkloads: []\nservices: []\n");
    let p = proxy_named(
        "proxy-loop",
        &[
            ("STRAIT_OUTBOUND_ADDR", out_addrs.as_str()),
            ("STRAIT_INBOUND_ADDR", in_addr.as_str()),
            ("STRAIT_ADMIN_ADDR", admin_addr.as_str()),
            ("STRAIT_DISCOVERY_FILE", mesh.to_str().unwrap()),
        ],
    )
    .await;
    let outbound: SocketAddr = ([127, 0, 0, 1], out).into();

    let mut own = vec![
        format!("127.0.0.1:{out}"),
        format!("0.0.0.0:{out}"),
        format!("localhost:{out}"),
        format!("LocalHost.:{out}"),
        format!("127.0.0.1:{admin}"),
        format!("0.0.0.0:{admin}"),
        format!("localhost:{admin}"),
        format!("127.0.0.1:{inb}"),
        format!("127.0.0.2:{admin}"),
    ];
    if v6 {
        own.extend([format!("[::1]:{out}"), format!("[::]:{out}")]);
    }
    for authority in &own {
        // Absolute form, as an HTTP proxy client sends it.
        let r = bounded(authority, send_http1(outbound, get(&format!("http://{authority}/metrics"), authority)))
            .await
            .unwrap_or_else(|e| panic!("{authority}: {e}"));
        assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{authority}: {}", r.text());
        assert_eq!(r.header("strait-error"), Some("loop-detected"), "{authority}");
        // Origin form, named only by Host.
        let r = bounded(authority, send_http1(outbound, get("/ready", authority))).await.unwrap();
        assert_eq!(r.status, StatusCode::LOOP_DETECTED, "{authority} by Host");
        assert_eq!(r.header("strait-error"), Some("loop-detected"), "{authority} by Host");
        // CONNECT is refused before the tunnel opens.
        let e = bounded(authority, async { Ok(http_connect_tunnel(outbound, authority).await) })
            .await
            .unwrap()
            .expect_err(&format!("CONNECT {authority} was accepted"));
        assert!(e.to_string().contains("508"), "CONNECT {authority}: {e}");
    }
    // h2c names the authority in :authority.
    let authority = format!("127.0.0.1:{admin}");
    let r = bounded("h2c", send_h2c(outbound, get(&format!("http://{authority}/ready"), &authority))).await.unwrap();
    assert_eq!(r.status, StatusCode::LOOP_DETECTED);
    assert_eq!(r.header("strait-error"), Some("loop-detected"));

    // The proxy is still well and counts the refusals.
    let m = p.metrics().await;
    let loops = strait_tests::metrics::value(&m, "strait_proxy_errors_total", &[("error", "loop-detected")]);
    assert!(loops >= own.len() as f64 * 2.0, "{m}");
}

/// A client and a server workload with identities from an embedded controller, and the service
/// `web.demo:8080` served by the `http` test app behind the server's proxy (mTLS between the two).
struct MeshedPair {
    dir: TestDir,
    _ctl: ControllerHandle,
    _app: strait_tests::Process,
    app: SocketAddr,
    a: ProxyHandle,
    b: ProxyHandle,
}

async fn meshed_pair(label: &str) -> MeshedPair {
    meshed_pair_with(label, &[]).await
}

async fn meshed_pair_with(label: &str, server_env: &[(&'static str, String)]) -> MeshedPair {
    let dir = TestDir::new(label);
    let (app_p, app) = testsrv_in(dir.path(), "http", "web").await;
    let b_in = free_addr();
    let mesh = format!(
        r#"trustDomain: cluster.local
workloads:
  - {{name: client, namespace: demo, serviceAccount: client-sa, token: "client-token"}}
  - {{name: server, namespace: demo, serviceAccount: server-sa, token: "server-token"}}
services:
  - name: web
    namespace: demo
    ports: [{{port: 8080, protocol: http}}]
    endpoints: [{{address: "{app}", proxy: "{b_in}", workload: server}}]
"#
    );
    let ctl = controller(dir.path(), &mesh, &[]).await;
    let start = |name: &'static str, workload: &'static str, sa: &'static str, extra: Vec<(&'static str, String)>| {
        let token = dir.write(format!("{workload}.token"), format!("{workload}-token\n"));
        let mut env = ctl.proxy_env();
        env.extend([
            ("STRAIT_NAMESPACE", "demo".to_string()),
            ("STRAIT_WORKLOAD", workload.to_string()),
            ("STRAIT_SERVICE_ACCOUNT", sa.to_string()),
            ("STRAIT_IDENTITY_TOKEN_FILE", token.display().to_string()),
        ]);
        env.extend(extra);
        async move {
            let refs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            proxy_named(name, &refs).await
        }
    };
    let mut b_env = vec![("STRAIT_INBOUND_ADDR", b_in.to_string())];
    b_env.extend(server_env.iter().cloned());
    let b = start("proxy-server", "server", "server-sa", b_env).await;
    let a = start("proxy-client", "client", "client-sa", vec![]).await;
    MeshedPair { dir, _ctl: ctl, _app: app_p, app, a, b }
}

/// `curl` through `proxy` with `size` bytes of extra header values (in fields of at most 16 KiB:
/// curl's HTTP/2 encoder refuses a single field over 64 KiB); the status and the `strait-error`
/// header of the answer. `http2`: h2c with prior knowledge instead of HTTP/1.1 through the proxy.
fn curl_with_header(dir: &TestDir, proxy: SocketAddr, size: usize, http2: bool) -> (u16, Option<String>) {
    let fields: String = (0..size.div_ceil(16 * 1024))
        .map(|i| format!("x-big-{i}: {}\r\n", "a".repeat((size - i * 16 * 1024).min(16 * 1024))))
        .collect();
    let header = dir.write(format!("header-{size}"), fields);
    let mut cmd = std::process::Command::new("curl");
    cmd.args(["-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10", "-H"]).arg(format!("@{}", header.display()));
    if http2 {
        // Straight to the outbound listener as an h2c client naming the service in :authority.
        cmd.args([
            "--http2-prior-knowledge",
            "--connect-to",
            &format!("web.demo:8080:{}:{}", proxy.ip(), proxy.port()),
        ]);
    } else {
        cmd.args(["-x", &format!("http://{proxy}")]);
    }
    let out = cmd.arg("http://web.demo:8080/hello").output().expect("curl runs");
    let head = String::from_utf8_lossy(&out.stdout).to_string();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        panic!("curl with a {size}-byte header: no status; {head} {}", String::from_utf8_lossy(&out.stderr))
    });
    let error = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("strait-error")))
        .map(|(_, v)| v.trim().to_string());
    (status, error)
}

#[tokio::test]
async fn header_lists_up_to_64_kib_cross_a_meshed_pair_and_larger_ones_get_431() {
    let p = meshed_pair("security-headers").await;
    for http2 in [false, true] {
        for size in [16 * 1024, 60 * 1024] {
            let (status, error) = curl_with_header(&p.dir, p.a.outbound, size, http2);
            assert_eq!(status, 200, "{size} bytes (h2c {http2}): strait-error {error:?}\n{}\n{}", p.a.log(), p.b.log());
        }
    }
    let (status, error) = curl_with_header(&p.dir, p.a.outbound, 80 * 1024, false);
    assert_eq!((status, error.as_deref()), (431, Some("headers-too-large")), "80 KiB over HTTP/1.1");
    // curl's HTTP/2 encoder sends no header block over 64 KiB: hyper's client sends this one.
    let mut req = Request::get("http://web.demo:8080/hello");
    for i in 0..5 {
        req = req.header(format!("x-big-{i}"), "a".repeat(16 * 1024));
    }
    let r = send_h2c(p.a.outbound, req.body(Empty::<Bytes>::new()).unwrap()).await.unwrap();
    assert_eq!((r.status.as_u16(), r.header("strait-error")), (431, Some("headers-too-large")), "80 KiB over h2c");
    let handshakes = strait_tests::metrics::value(
        &p.a.metrics().await,
        "strait_tls_handshakes_total",
        &[("direction", "outbound"), ("result", "ok")],
    );
    assert!(handshakes >= 1.0, "the pair did not use mTLS");
}

/// What a peer proxy sends (plaintext, as a permissive inbound side accepts it): the transport
/// header naming `port` with HTTP/1 framing, then one request. The raw answer, empty when the
/// connection is closed without one.
async fn as_a_peer(inbound: SocketAddr, port: u16) -> String {
    let mut head = b"strait\0\x01".to_vec();
    head.extend_from_slice(&3u16.to_be_bytes());
    head.extend_from_slice(&port.to_be_bytes());
    head.push(2);
    head.extend_from_slice(b"GET /ready HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
    let mut tcp = tokio::net::TcpStream::connect(inbound).await.unwrap();
    tcp.write_all(&head).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    String::from_utf8_lossy(&answer).to_string()
}

#[tokio::test]
async fn a_peer_reaches_only_the_ports_the_workload_serves() {
    let p = meshed_pair("security-ports").await;
    // Listening in the server's pod, but no service of the mesh reaches it there.
    let (_secret_p, secret) = testsrv_in(p.dir.path(), "http", "secret").await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let refused = loop {
        let answer = as_a_peer(p.b.inbound, secret.port()).await;
        if answer.starts_with("HTTP/1.1 403") || std::time::Instant::now() > deadline {
            break answer;
        }
        // The inbound policy may not have arrived yet.
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(refused.starts_with("HTTP/1.1 403"), "{refused}");
    assert!(refused.to_ascii_lowercase().contains("strait-error: port-not-allowed"), "{refused}");
    let allowed = as_a_peer(p.b.inbound, p.app.port()).await;
    assert!(allowed.starts_with("HTTP/1.1 200"), "{allowed}");
    let m = p.b.metrics().await;
    assert!(strait_tests::metrics::value(&m, "strait_inbound_refused_total", &[("reason", "port")]) >= 1.0, "{m}");
}

#[tokio::test]
async fn a_peer_cannot_name_the_proxys_own_ports_through_unspecified_or_loopback_addresses() {
    let dir = TestDir::new("security-own-ports");
    let mesh = dir.write("mesh.yaml", "trustDomain: cluster.local\nworkloads: []\nservices: []\n");
    let admin = free_port();
    let admin_addr = format!("127.0.0.1:{admin}");
    let inbound_ports = admin.to_string();
    for local_ip in ["0.0.0.0", "127.0.0.2"] {
        let p = proxy_named(
            "proxy-own-ports",
            &[
                ("STRAIT_DISCOVERY_FILE", mesh.to_str().unwrap()),
                ("STRAIT_ADMIN_ADDR", admin_addr.as_str()),
                ("STRAIT_INBOUND_LOCAL_IP", local_ip),
                // Even a port the workload is said to serve is refused when it is the proxy's own.
                ("STRAIT_INBOUND_PORTS", inbound_ports.as_str()),
            ],
        )
        .await;
        let answer = as_a_peer(p.inbound, admin).await;
        assert_eq!(answer, "", "{local_ip}: the admin port answered a peer");
        let m = p.metrics().await;
        assert_eq!(strait_tests::metrics::value(&m, "strait_inbound_refused_total", &[("reason", "loop")]), 1.0, "{m}");
    }
}

#[tokio::test]
async fn an_imitated_connect_failed_from_a_server_does_not_get_a_post_retried() {
    let dir = TestDir::new("security-retry");
    let (_meshed_p, meshed_app) = testsrv_in(dir.path(), "http", "meshed").await;
    let (_plain_p, plain_app) = testsrv_in(dir.path(), "http", "plain").await;
    let b_in = free_addr();
    let mesh = format!(
        r#"trustDomain: cluster.local
workloads:
  - {{name: server, namespace: demo, serviceAccount: server}}
services:
  - name: meshed
    namespace: demo
    ports: [{{port: 8080, protocol: http}}]
    annotations: {{retry.strait.io/http: "connect-failure,5xx"}}
    endpoints: [{{address: "{meshed_app}", proxy: "{b_in}", workload: server}}]
  - name: plain
    namespace: demo
    ports: [{{port: 8080, protocol: http}}]
    annotations: {{retry.strait.io/http: "connect-failure,5xx"}}
    endpoints: [{{address: "{plain_app}"}}]
"#
    );
    let mesh = dir.write("mesh.yaml", mesh);
    let mesh = mesh.to_str().unwrap();
    let b_in_s = b_in.to_string();
    let _b = proxy_named(
        "proxy-b",
        &[
            ("STRAIT_DISCOVERY_FILE", mesh),
            ("STRAIT_NAMESPACE", "demo"),
            ("STRAIT_WORKLOAD", "server"),
            ("STRAIT_INBOUND_ADDR", b_in_s.as_str()),
        ],
    )
    .await;
    let a = proxy_named("proxy-a", &[("STRAIT_DISCOVERY_FILE", mesh), ("STRAIT_NAMESPACE", "demo")]).await;
    for (service, app) in [("meshed", meshed_app), ("plain", plain_app)] {
        let url = format!("http://{service}.demo:8080/status/502?strait-error=connect-failed");
        let req =
            Request::post(&url).header("host", format!("{service}.demo:8080")).body(Empty::<Bytes>::new()).unwrap();
        let r = send_http1(a.outbound, req).await.unwrap();
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{service}");
        let count = strait_tests::http_get(&format!("http://{app}/count")).await.unwrap().text();
        assert_eq!(count.trim(), "1", "{service}: the POST was sent {count} times");
    }
}
