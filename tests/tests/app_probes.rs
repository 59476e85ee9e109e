//! End-to-end: the application's kubelet probes through the proxy's admin port
//! (`STRAIT_APP_PROBES`, `GET /app-probe/<container>/<kind>`). A passing probe answers the
//! application's status (200..=399); a failing one (an application status outside that range,
//! no answer within the probe's timeout, a refused connection) answers 503 with
//! `strait-error: probe-failed` and the reason; an unknown probe 404. A bad table stops the proxy
//! at start-up with a message naming the variable.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Empty;
use strait_tests::{HttpResponse, ProxyHandle, free_port, proxy, send_http1, spawn_proxy, testsrv};

async fn probe(p: &ProxyHandle, key: &str) -> HttpResponse {
    let request = Request::get(format!("/app-probe/{key}"))
        .header("host", p.admin.to_string())
        .header("user-agent", "kube-probe/1.31")
        .body(Empty::<Bytes>::new())
        .unwrap();
    send_http1(p.admin, request).await.unwrap()
}

fn assert_failed(r: &HttpResponse, why: &str) {
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.text());
    assert_eq!(r.header("strait-error"), Some("probe-failed"));
    let text = r.text();
    assert!(text.starts_with("probe failed: ") && text.contains(why), "{text:?} should say {why:?}");
    assert_eq!(text.lines().count(), 1, "one line: {text:?}");
}

#[tokio::test]
async fn probes_run_against_the_application_as_kubelet_would() {
    let (_app, app) = testsrv("http", "web").await;
    let port = app.port();
    let closed = free_port();
    let table = format!(
        r#"{{
        "web/readiness": {{"port": {port}, "path": "/headers", "host": "web.example",
                          "headers": [{{"name": "x-probe", "value": "ready"}}]}},
        "web/startup": {{"port": {port}, "path": "/status/302"}},
        "web/liveness": {{"port": {port}, "path": "/status/500"}},
        "slow/readiness": {{"port": {port}, "path": "/slow?ms=20000", "timeoutSeconds": 1}},
        "tcp/liveness": {{"port": {port}, "tcp": true}},
        "tcp/readiness": {{"port": {closed}, "tcp": true}},
        "http/readiness": {{"port": {closed}}}
    }}"#
    );
    let p = proxy(&[("STRAIT_APP_PROBES", &table)]).await;

    // The probe's path, Host and headers reach the application, with kubelet's User-Agent.
    let r = probe(&p, "web/readiness").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(seen["host"], "web.example", "{seen}");
    assert_eq!(seen["x-probe"], "ready", "{seen}");
    assert_eq!(seen["user-agent"], "kube-probe/1.31", "{seen}");
    assert_eq!(seen["accept"], "*/*", "{seen}");

    // 3xx passes (kubelet counts 200..=399) and is answered as is.
    assert_eq!(probe(&p, "web/startup").await.status, StatusCode::FOUND);
    // The application's 500 is a failed probe: 503 probe-failed, saying what the application answered.
    assert_failed(&probe(&p, "web/liveness").await, "the application answered 500");
    // No answer within the probe's timeout.
    assert_failed(&probe(&p, "slow/readiness").await, "no answer within the probe's timeout (1s)");
    // tcpSocket: a connection is enough; a closed port fails, as does an HTTP probe to it.
    assert_eq!(probe(&p, "tcp/liveness").await.status, StatusCode::OK);
    assert_failed(&probe(&p, "tcp/readiness").await, &format!("connecting to 127.0.0.1:{closed}"));
    assert_failed(&probe(&p, "http/readiness").await, &format!("connecting to 127.0.0.1:{closed}"));

    // Probes the table does not hold.
    for key in ["web/ready", "nope/readiness", "web/readiness/x", "web"] {
        assert_eq!(probe(&p, key).await.status, StatusCode::NOT_FOUND, "{key}");
    }
    // The table shows in /config without header values.
    let config = strait_tests::http_get(&format!("http://{}/config", p.admin)).await.unwrap().text();
    assert!(config.contains("x-probe") && !config.contains("\"ready\""), "{config}");
}

#[tokio::test]
async fn a_bad_probe_table_stops_the_proxy_at_start_up() {
    for (table, says) in [
        (
            "{\"web/readiness\": {\"port\": 8080, \"scheme\": \"FTP\"}}",
            "\"web/readiness\": scheme \"FTP\" is not HTTP or HTTPS",
        ),
        ("{\"web/alive\": {\"port\": 8080}}", "\"alive\" is not liveness, readiness or startup"),
        ("[1, 2]", "STRAIT_APP_PROBES: invalid type"),
    ] {
        let mut p = spawn_proxy("bad-probes", &[("STRAIT_APP_PROBES", table)]);
        let status = p.process.wait_exit(Duration::from_secs(30)).await.unwrap();
        assert_eq!(status.code(), Some(2), "{}", p.log());
        let log = p.log();
        assert!(log.contains("STRAIT_APP_PROBES") && log.contains(says), "{says:?} missing from:\n{log}");
    }
}
