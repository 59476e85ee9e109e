//! End-to-end: identity in Kubernetes mode. A real `strait-controller --kubernetes --state-dir`
//! watches the list/watch test API server (`strait_tests::kube_api`) and checks each proxy's token
//! with a TokenReview against it (audience `identity.strait.io`); real proxies present their
//! pod's token from `STRAIT_IDENTITY_TOKEN_FILE` (issue 4: "TokenReview path tested against the
//! Kubernetes test server").
//!
//! The mesh itself comes from the server's Service, EndpointSlice and Pods: the server pod's IP is
//! a loopback address of its own (`127.x.y.z`), where its app and its proxy's inbound listener
//! (the default port 7143, which the controller assumes for every meshed pod) listen, so a request
//! goes client app → client proxy → (mTLS) → server proxy → server app exactly as in a cluster.

use std::{net::Ipv4Addr, path::PathBuf, time::Duration};

use http::StatusCode;
use serde_json::json;
use strait_tests::{
    Process, ProxyHandle, TestDir, bin, free_addr, http_get, http_get_via_proxy,
    kube_api::{KubeApi, TokenUser},
    metrics, proxy_named, spawn_proxy, testsrv_at, wait_for_http_ok,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const AUDIENCE: &str = "identity.strait.io";
/// The proxy's inbound port in every meshed pod, as the controller assumes it (DESIGN §3).
const INBOUND_PORT: u16 = 7143;

fn spiffe(sa: &str) -> String {
    format!("spiffe://cluster.local/ns/demo/sa/{sa}")
}

/// A token of a pod of `demo`, bound to that pod, for `audience`.
fn pod_token(sa: &str, pod: &str, audience: &str) -> TokenUser {
    TokenUser::service_account("demo", sa, audience, Some((pod, &format!("uid-{pod}"))))
}

/// Fields drop in order: processes (printing their logs' tails if the test failed) before the
/// directory that holds the logs.
struct Cluster {
    controller: Process,
    api: KubeApi,
    discovery: String,
    identity: String,
    admin: String,
    state_dir: PathBuf,
    dir: TestDir,
}

impl Cluster {
    /// The test API server (with `prepare`d objects) and a ready controller serving identity.
    async fn start(label: &str, prepare: impl FnOnce(&KubeApi)) -> Cluster {
        let dir = TestDir::new(label);
        let api = KubeApi::start().await;
        prepare(&api);
        let kubeconfig = api.write_kubeconfig(&dir);
        let state_dir = dir.join("state");
        let (discovery, identity, admin) = (free_addr().to_string(), free_addr().to_string(), free_addr().to_string());
        let args = [
            "--kubernetes".to_string(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--state-dir={}", state_dir.display()),
            format!("--discovery-addr={discovery}"),
            format!("--identity-addr={identity}"),
            format!("--admin-addr={admin}"),
            format!("--webhook-addr={}", free_addr()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let controller = Process::spawn("controller", bin("strait-controller"), &args, &[("STRAIT_LOG", "info")], dir.path());
        wait_for_http_ok(&format!("http://{admin}/ready"), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("controller not ready: {e}\n{}", controller.log()));
        Cluster { controller, api, discovery, identity, admin, state_dir, dir }
    }

    /// The environment of the proxy of pod `pod` (service account `sa`) presenting `token`.
    fn proxy_env(&self, pod: &str, sa: &str, token: &str, extra: &[(&'static str, String)]) -> Vec<(&'static str, String)> {
        let file = self.dir.write(format!("{pod}-{}.token", fastrand::u32(..)), token);
        let mut env = vec![
            ("STRAIT_DISCOVERY_ADDR", self.discovery.clone()),
            ("STRAIT_IDENTITY_ADDR", self.identity.clone()),
            ("STRAIT_TRUST_ANCHORS", self.state_dir.join("trust-anchors.pem").display().to_string()),
            ("STRAIT_NAMESPACE", "demo".to_string()),
            ("STRAIT_WORKLOAD", pod.to_string()),
            ("STRAIT_SERVICE_ACCOUNT", sa.to_string()),
            ("STRAIT_IDENTITY_TOKEN_FILE", file.display().to_string()),
        ];
        env.extend(extra.iter().cloned());
        env
    }

    /// A proxy that must become ready.
    async fn proxy(&self, pod: &str, sa: &str, token: &str, extra: &[(&'static str, String)]) -> ProxyHandle {
        proxy_named(pod, &refs(&self.proxy_env(pod, sa, token, extra))).await
    }

    /// A proxy that is not waited for.
    fn spawn(&self, pod: &str, sa: &str, token: &str) -> ProxyHandle {
        spawn_proxy(pod, &refs(&self.proxy_env(pod, sa, token, &[])))
    }

    async fn issued(&self, result: &str) -> f64 {
        let text = metrics::scrape(self.admin.parse().unwrap()).await;
        metrics::value(&text, "strait_controller_certificates_issued_total", &[("result", result)])
    }
}

fn refs<'a>(env: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    env.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

async fn value(p: &ProxyHandle, name: &str, labels: &[(&str, &str)]) -> f64 {
    metrics::value(&p.metrics().await, name, labels)
}

async fn ready_status(p: &ProxyHandle) -> StatusCode {
    http_get(&format!("http://{}/ready", p.admin)).await.unwrap().status
}

/// Polls `check` every 100 ms until it holds; panics with `what` after `timeout`.
async fn wait_until<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A meshed pod of `demo` at `ip` (none: not scheduled yet), with `annotations` besides the
/// injector's.
fn pod(name: &str, sa: &str, ip: Option<Ipv4Addr>, app_port: Option<u16>, annotations: serde_json::Value) -> serde_json::Value {
    let mut a = json!({"strait.io/inject": "enabled"});
    a.as_object_mut().unwrap().extend(annotations.as_object().unwrap().clone());
    let ports = app_port.map(|p| json!([{"name": "http", "containerPort": p}])).unwrap_or(json!([]));
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "demo", "uid": format!("uid-{name}"), "annotations": a},
        "spec": {"serviceAccountName": sa, "containers": [{"name": "app", "ports": ports}, {"name": "strait-proxy"}]},
        "status": {"phase": "Running", "podIP": ip.map(|ip| ip.to_string())},
    })
}

/// A loopback address of its own for a pod (127.0.0.0/8 all reaches this machine on Linux).
fn pod_ip() -> Ipv4Addr {
    Ipv4Addr::new(127, fastrand::u8(16..=250), fastrand::u8(..), fastrand::u8(1..=254))
}

/// The token of each pod proves its service account: a proxy with its pod's token is certified
/// and becomes ready; an unknown token, a token of another service account than the one asked
/// for, a token for another audience and another pod's token get no certificate and stay not ready; the controller
/// counts each answer, and no token reaches its log. While the API server cannot review tokens,
/// requests are `unavailable` and the proxy waits; once it can, the proxy is certified.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxies_are_certified_by_their_service_account_token_through_token_review() {
    let c = Cluster::start("k8s-tokenreview", |api| {
        api.apply(pod("client-0", "client-sa", None, None, json!({})));
        api.add_token("client-0-token", pod_token("client-sa", "client-0", AUDIENCE));
        api.add_token("other-0-token", pod_token("other-sa", "other-0", AUDIENCE));
        // A token the API server accepts for itself only (a legacy Secret token, say).
        api.add_token("legacy-token", pod_token("client-sa", "client-0", "https://kubernetes.default.svc.cluster.local"));
    })
    .await;

    let good = c.proxy("client-0", "client-sa", "client-0-token\n", &[]).await;
    assert_eq!(value(&good, "strait_identity_certify_total", &[("result", "ok")]).await, 1.0);
    assert!(value(&good, "strait_identity_cert_expiry_timestamp_seconds", &[]).await > 0.0);
    assert_eq!(c.issued("ok").await, 1.0);
    assert_eq!(c.api.token_reviews(), 1);

    let unknown = c.spawn("guessed-0", "client-sa", "guessed-token");
    let greedy = c.spawn("other-0", "client-sa", "other-0-token");
    let legacy = c.spawn("legacy-0", "client-sa", "legacy-token");
    // client-0's good token, copied into another pod's proxy.
    let thief = c.spawn("client-9", "client-sa", "client-0-token");
    wait_until("the controller to refuse all four", Duration::from_secs(30), || async {
        [&unknown, &greedy, &legacy, &thief].iter().all(|p| p.log().contains("identity service refused"))
    })
    .await;
    assert!(c.issued("unauthenticated").await >= 2.0 && c.issued("denied").await >= 2.0);
    for p in [&unknown, &greedy, &legacy, &thief] {
        assert!(value(p, "strait_identity_certify_total", &[("result", "error")]).await >= 1.0);
        assert_eq!(ready_status(p).await, StatusCode::SERVICE_UNAVAILABLE, "{}", p.log());
        assert_eq!(value(p, "strait_identity_certify_total", &[("result", "ok")]).await, 0.0);
        assert_eq!(value(p, "strait_identity_cert_expiry_timestamp_seconds", &[]).await, 0.0);
    }
    assert_eq!(c.issued("ok").await, 1.0, "nothing else was signed");
    let log = c.controller.log();
    for why in [
        "TokenReview",
        "the Kubernetes API did not authenticate the token: [invalid bearer token, token lookup failed]",
        "the token proves spiffe://cluster.local/ns/demo/sa/other-sa, not the requested spiffe://cluster.local/ns/demo/sa/client-sa",
        // The API server itself refuses a token of another audience when the review names one.
        r#"is invalid for the target audiences [\"identity.strait.io\"]"#,
        "the token belongs to pod demo/client-0, not to the workload client-9 the proxy names",
    ] {
        assert!(log.contains(why), "the controller's log does not say {why:?}:\n{log}");
    }
    for token in ["client-0-token", "other-0-token", "legacy-token", "guessed-token"] {
        assert!(!log.contains(token), "a token reached the log");
    }

    // The API server cannot review tokens (say, RBAC lost `create tokenreviews`): unavailable,
    // not a bad token; the proxy keeps trying and is certified once reviews work again.
    c.api.fail_token_reviews(StatusCode::FORBIDDEN);
    c.api.add_token("client-1-token", pod_token("client-sa", "client-1", AUDIENCE));
    let waiting = c.spawn("client-1", "client-sa", "client-1-token");
    // (The refused proxies' retries meet the failure too; this one must have been told.)
    wait_until("the waiting proxy to be answered unavailable", Duration::from_secs(30), || async {
        waiting.log().contains("needs `create` on tokenreviews.authentication.k8s.io")
    })
    .await;
    assert!(waiting.log().contains("The service is currently unavailable"), "not UNAVAILABLE: {}", waiting.log());
    assert!(c.issued("unavailable").await >= 1.0);
    assert_eq!(ready_status(&waiting).await, StatusCode::SERVICE_UNAVAILABLE);
    c.api.heal_token_reviews();
    wait_until("the waiting proxy to become ready", Duration::from_secs(40), || async {
        ready_status(&waiting).await == StatusCode::OK
    })
    .await;
    assert_eq!(c.issued("ok").await, 2.0);
    for p in [&unknown, &greedy, &legacy, &thief] {
        assert_eq!(ready_status(p).await, StatusCode::SERVICE_UNAVAILABLE);
    }
}

/// Two proxies certified through TokenReview, the mesh from the API server's objects: the server
/// app is told the client's identity, the client proxy checked the server's, and the server pod's
/// `config.strait.io/inbound-mode: strict` annotation reaches its proxy, which refuses plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_between_pods_carries_the_identity_proven_by_token_review() {
    let log_dir = TestDir::new("k8s-mtls-apps");
    let ip = pod_ip();
    let (_app_p, app) = testsrv_at(log_dir.path(), "http", "web", &format!("{ip}:0")).await;
    let c = Cluster::start("k8s-mtls", |api| {
        api.apply(pod("server-0", "server-sa", Some(ip), Some(app.port()), json!({"config.strait.io/inbound-mode": "strict"})));
        api.apply(pod("client-0", "client-sa", Some(pod_ip()), None, json!({})));
        api.apply(json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "web", "namespace": "demo", "uid": "uid-web"},
            "spec": {"clusterIP": "10.96.0.80", "clusterIPs": ["10.96.0.80"], "selector": {"app": "web"},
                     "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]},
        }));
        api.apply(json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "web-k8s4x", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": app.port(), "protocol": "TCP"}],
            "endpoints": [{"addresses": [ip.to_string()], "conditions": {"ready": true},
                           "targetRef": {"kind": "Pod", "namespace": "demo", "name": "server-0"}}],
        }));
        api.add_token("server-0-token", pod_token("server-sa", "server-0", AUDIENCE));
        api.add_token("client-0-token", pod_token("client-sa", "client-0", AUDIENCE));
    })
    .await;
    let server_in = format!("{ip}:{INBOUND_PORT}");
    let server = c.proxy("server-0", "server-sa", "server-0-token", &[("STRAIT_INBOUND_ADDR", server_in.clone())]).await;
    let client = c.proxy("client-0", "client-sa", "client-0-token", &[]).await;
    assert_eq!(c.issued("ok").await, 2.0);

    for i in 0..3 {
        let r = http_get_via_proxy(client.outbound, &format!("http://web.demo:8080/hello/{i}")).await.unwrap();
        assert_eq!(r.status, StatusCode::OK, "{}\n{}", r.text(), client.log());
        assert_eq!(r.text(), format!("web GET /hello/{i}"));
        assert_eq!(r.header("x-seen-client-id"), Some(spiffe("client-sa").as_str()), "the app sees the client's identity");
    }
    let outbound = [("direction", "outbound"), ("result", "ok")];
    assert_eq!(value(&client, "strait_tls_handshakes_total", &outbound).await, 1.0, "the server's identity was checked");
    let client_id = spiffe("client-sa");
    let inbound = [("direction", "inbound"), ("tls", "true"), ("peer_id", client_id.as_str())];
    assert_eq!(value(&server, "strait_requests_total", &inbound).await, 3.0, "{}", server.metrics().await);

    // The pod's annotation made its proxy strict: plaintext straight at its inbound is refused.
    wait_until("the server proxy to receive its inbound policy", Duration::from_secs(10), || async {
        value(&server, "strait_discovery_updates_total", &[("result", "inbound-policy")]).await >= 1.0
    })
    .await;
    let mut tcp = tokio::net::TcpStream::connect(&server_in).await.unwrap();
    tcp.write_all(b"GET /raw HTTP/1.1\r\nhost: web.demo:8080\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), tcp.read_to_end(&mut answer)).await;
    assert!(read.is_ok() && answer.is_empty(), "strict inbound answered plaintext: {:?}", String::from_utf8_lossy(&answer));
    assert_eq!(value(&server, "strait_inbound_refused_total", &[("reason", "strict-plaintext")]).await, 1.0);
    assert_eq!(value(&server, "strait_requests_total", &[("direction", "inbound"), ("tls", "false")]).await, 0.0);
}
