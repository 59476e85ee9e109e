//! Process tier: the attacks of the security review that need no interception, against real
//! proxies on loopback. Each test failed on the code before its fix.
//!
//! - self-loop: a request or CONNECT that names one of the proxy's own listeners is refused with
//!   508 `strait-error: loop-detected` instead of being sent back into the proxy.

use std::{net::SocketAddr, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use strait_tests::{TestDir, free_port, http_connect_tunnel, proxy_named, send_h2c, send_http1};

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
