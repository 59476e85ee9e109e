//! End-to-end: the injector webhook of a real `strait-controller --kubernetes` (against the test
//! API server), over HTTPS with a certificate made here, fed real AdmissionReview v1 JSON
//! (`tests/fixtures/webhook/`).
//!
//! What is checked holds for any mutation: the patch applies to the pod (with Rust's `json-patch`,
//! and with Python's `jsonpatch` when `STRAIT_TEST_PYTHON` names a python3 that has it, as the
//! webhook tier does), the result carries the injector's marker annotation, a review of the
//! patched pod changes nothing, and bad input is answered without blocking anything.

use std::{io::Write, net::SocketAddr, path::Path, sync::Arc, time::Duration};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, SanType};
use serde_json::{Value, json};
use strait_tests::{Process, TestDir, bin, free_addr, kube_api::KubeApi, metrics, wait_for_http_ok};
use tokio::net::TcpStream;

const FIXTURE: &str = include_str!("../fixtures/webhook/admission-review-pod.json");
/// Set by `scripts/tiers/30-webhook.sh`: a python3 with `jsonpatch`.
const PYTHON_ENV: &str = "STRAIT_TEST_PYTHON";
/// How long a rewritten certificate may take to be served (the controller polls every 200 ms).
const RELOAD: Duration = Duration::from_secs(10);

/// A CA and the webhook certificate it signed (for `localhost` and 127.0.0.1).
struct Pki {
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn pki(name: &str) -> Pki {
    let ca_key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut ca = CertificateParams::default();
    ca.distinguished_name.push(DnType::CommonName, name);
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names.push(SanType::IpAddress([127, 0, 0, 1].into()));
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    Pki { ca_pem: ca_cert.pem(), cert_pem: cert.pem(), key_pem: key.serialize_pem() }
}

/// Writes through a rename, as a Secret remount swaps files.
fn write_atomically(path: &Path, contents: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::File::create(&tmp).and_then(|mut f| f.write_all(contents.as_bytes())).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Fields drop in order: the controller (printing its log if the test failed) before its directory.
struct Webhook {
    controller: Process,
    _api: KubeApi,
    addr: SocketAddr,
    admin: SocketAddr,
    pki: Pki,
    dir: TestDir,
}

impl Webhook {
    async fn start(label: &str, prepare: impl FnOnce(&KubeApi)) -> Webhook {
        let dir = TestDir::new(label);
        let api = KubeApi::start().await;
        prepare(&api);
        let pki = pki("webhook test CA");
        let (cert, key, config) =
            (dir.path().join("tls.crt"), dir.path().join("tls.key"), dir.path().join("injector.yaml"));
        write_atomically(&cert, &pki.cert_pem);
        write_atomically(&key, &pki.key_pem);
        // The chart's ConfigMap fields (charts/strait/templates/injector-config.yaml).
        write_atomically(
            &config,
            "proxyImage: strait-proxy:test\nproxyImagePullPolicy: IfNotPresent\n\
             discoveryAddr: strait-controller.strait-system.svc:8086\nidentityAddr: strait-controller.strait-system.svc:8080\n\
             identityServerId: spiffe://cluster.local/ns/strait-system/sa/strait-controller\ntrustDomain: cluster.local\n\
             proxyUID: 2102\nlogLevel: info\nresources: {requests: {cpu: 10m, memory: 32Mi}}\n",
        );
        let (addr, admin, discovery) = (free_addr(), free_addr(), free_addr());
        let kubeconfig = api.write_kubeconfig(&dir);
        let args = [
            "--kubernetes".to_string(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--discovery-addr={discovery}"),
            format!("--admin-addr={admin}"),
            format!("--webhook-addr={addr}"),
            format!("--webhook-cert={}", cert.display()),
            format!("--webhook-key={}", key.display()),
            format!("--injector-config={}", config.display()),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let controller =
            Process::spawn("controller", bin("strait-controller"), &args, &[("STRAIT_LOG", "info")], dir.path());
        let w = Webhook { controller, _api: api, addr, admin, pki, dir };
        wait_for_http_ok(&format!("http://{}/live", w.admin), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("controller not up: {e}\n{}", w.controller.log()));
        w
    }

    async fn connect(&self) -> Client {
        self.connect_trusting(&self.pki.ca_pem).await.unwrap_or_else(|e| panic!("{e}\n{}", self.controller.log()))
    }

    async fn connect_trusting(&self, ca_pem: &str) -> Result<Client, String> {
        Client::connect(self.addr, ca_pem).await
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::value(&metrics::scrape(self.admin).await, name, labels)
    }
}

/// An HTTP/1.1 connection over TLS that trusts one CA.
struct Client {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Client {
    async fn connect(addr: SocketAddr, ca_pem: &str) -> Result<Client, String> {
        use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
            roots.add(cert.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?;
        }
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.map_err(|e| format!("connect {addr}: {e}"))?;
        let name = ServerName::try_from("localhost").map_err(|e| e.to_string())?;
        let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| format!("TLS handshake with {addr}: {e}"))?;
        let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
        tokio::spawn(conn);
        Ok(Client { sender })
    }

    async fn request(&mut self, method: Method, path: &str, body: Vec<u8>) -> (StatusCode, Bytes) {
        let req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost")
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        let response = tokio::time::timeout(Duration::from_secs(30), self.sender.send_request(req))
            .await
            .expect("an answer in time")
            .expect("an answer");
        let status = response.status();
        (status, response.into_body().collect().await.expect("the body").to_bytes())
    }

    /// POSTs `review` to `/inject` (as the API server does, with its timeout in the URL).
    async fn review(&mut self, review: &Value) -> Value {
        let (status, body) =
            self.request(Method::POST, "/inject?timeout=5s", serde_json::to_vec(review).unwrap()).await;
        assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).expect("an AdmissionReview")
    }
}

fn fixture() -> Value {
    serde_json::from_str(FIXTURE).unwrap()
}

/// The JSONPatch of an answer, `None` when there is none (or it is empty).
fn patch_of(answer: &Value) -> Option<Value> {
    let b64 = answer["response"]["patch"].as_str()?;
    assert_eq!(answer["response"]["patchType"], "JSONPatch");
    let patch: Value = serde_json::from_slice(&base64::engine::general_purpose::STANDARD.decode(b64).unwrap()).unwrap();
    (!patch.as_array().unwrap().is_empty()).then_some(patch)
}

/// Applies `patch` with Python's `jsonpatch` (the library is the point: another implementation of
/// RFC 6902 than the one that wrote the patch).
fn python_apply(python: &str, pod: &Value, patch: &Value) -> Value {
    let script = "import json, sys, jsonpatch\n\
                  d = json.load(sys.stdin)\n\
                  json.dump(jsonpatch.JsonPatch(d['patch']).apply(d['pod']), sys.stdout)\n";
    let mut child = std::process::Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{python}: {e}"));
    let input = serde_json::to_vec(&json!({"pod": pod, "patch": patch})).unwrap();
    child.stdin.take().unwrap().write_all(&input).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "python jsonpatch: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn a_pod_is_injected_once_and_its_patch_applies() {
    let w = Webhook::start("webhook-inject", |_| {}).await;
    let mut client = w.connect().await;
    let review = fixture();
    let answer = client.review(&review).await;
    let response = &answer["response"];
    assert_eq!(answer["apiVersion"], "admission.k8s.io/v1");
    assert_eq!(answer["kind"], "AdmissionReview");
    assert_eq!(response["uid"], review["request"]["uid"]);
    assert_eq!(response["allowed"], true);
    let patch = patch_of(&answer).unwrap_or_else(|| panic!("no patch: {answer}\n{}", w.controller.log()));

    let pod = &review["request"]["object"];
    let mut patched = pod.clone();
    json_patch::patch(&mut patched, &serde_json::from_value::<json_patch::Patch>(patch.clone()).unwrap()).unwrap();
    if let Ok(python) = std::env::var(PYTHON_ENV) {
        assert_eq!(python_apply(&python, pod, &patch), patched, "jsonpatch (Python) and json-patch (Rust) agree");
        eprintln!("the patch applied with Python jsonpatch ({python}) gives the expected pod");
    }
    // What stays true of any injection (contracts.md): the marker, and the app's container kept.
    assert!(patched["metadata"]["annotations"]["strait.io/injected"].is_string(), "{patched}");
    let containers = patched["spec"]["containers"].as_array().unwrap();
    assert!(containers.iter().any(|c| c == &pod["spec"]["containers"][0]), "the app container is kept: {patched}");

    // The injected pod, reviewed again, is left as it is.
    let mut again = review.clone();
    again["request"]["uid"] = json!("second-review");
    again["request"]["object"] = patched.clone();
    let answer = client.review(&again).await;
    assert_eq!(answer["response"]["uid"], "second-review");
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(patch_of(&answer), None, "injecting an injected pod changes nothing: {answer}");
    if let Ok(python) = std::env::var(PYTHON_ENV) {
        let empty = answer["response"].get("patch").map_or(json!([]), |_| patch_of(&answer).unwrap_or(json!([])));
        assert_eq!(python_apply(&python, &patched, &empty), patched);
    }

    assert_eq!(w.metric("strait_webhook_reviews_total", &[("result", "injected")]).await, 1.0);
    assert_eq!(w.metric("strait_webhook_reviews_total", &[("result", "unchanged")]).await, 1.0);
    assert_eq!(w.metric("strait_webhook_review_duration_seconds_count", &[]).await, 2.0);
    assert!(w.controller.log().contains("kubernetes_version=1.31"), "{}", w.controller.log());
}

/// The API server speaks HTTP/2 when offered: one review over h2 (ALPN).
#[tokio::test]
async fn a_review_over_http2() {
    use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
    let w = Webhook::start("webhook-h2", |_| {}).await;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(w.pki.ca_pem.as_bytes()).unwrap()).unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(w.addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), TokioIo::new(tls)).await.unwrap();
    tokio::spawn(conn);
    let req = Request::builder()
        .method(Method::POST)
        .uri(format!("https://localhost:{}/inject?timeout=10s", w.addr.port()))
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(FIXTURE)))
        .unwrap();
    let response = sender.send_request(req).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let answer: Value = serde_json::from_slice(&response.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert!(patch_of(&answer).is_some(), "{answer}");
}

#[tokio::test]
async fn garbage_gets_a_clear_answer_and_the_next_review_still_works() {
    let w = Webhook::start("webhook-garbage", |_| {}).await;

    // Not JSON: no uid to answer to.
    let (status, body) = w.connect().await.request(Method::POST, "/inject", b"hello".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(String::from_utf8_lossy(&body).contains("not an AdmissionReview"), "{}", String::from_utf8_lossy(&body));

    // A review of something else than a Pod: allowed, no patch, and a warning that says why.
    let mut deployment = fixture();
    deployment["request"]["kind"] = json!({"group": "apps", "version": "v1", "kind": "Deployment"});
    deployment["request"]["object"] =
        json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "web"}});
    let answer = w.connect().await.review(&deployment).await;
    assert_eq!(answer["response"]["uid"], deployment["request"]["uid"]);
    assert_eq!(answer["response"]["allowed"], true);
    assert_eq!(patch_of(&answer), None);
    let warning = answer["response"]["warnings"][0].as_str().unwrap();
    assert!(warning.contains("only Pods are injected") && warning.contains("Deployment"), "{warning}");

    // A Pod the webhook cannot read: allowed as it is, with a warning.
    let mut broken = fixture();
    broken["request"]["object"]["spec"]["containers"] = json!("not a list");
    let answer = w.connect().await.review(&broken).await;
    assert_eq!((answer["response"]["allowed"].clone(), patch_of(&answer)), (json!(true), None));
    assert!(answer["response"]["warnings"][0].as_str().unwrap().contains("not a valid Pod"), "{answer}");

    // 4 MiB: over the limit, read and dropped, and the connection goes on.
    let mut client = w.connect().await;
    let (status, body) = client.request(Method::POST, "/inject", vec![b' '; 4 << 20]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(String::from_utf8_lossy(&body).contains("larger than"), "{}", String::from_utf8_lossy(&body));

    // Wrong method, wrong path.
    assert_eq!(client.request(Method::GET, "/inject", vec![]).await.0, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(client.request(Method::GET, "/nope", vec![]).await.0, StatusCode::NOT_FOUND);
    assert_eq!(client.request(Method::GET, "/live", vec![]).await.0, StatusCode::OK);

    // And the next good review is injected, on the same connection.
    let answer = client.review(&fixture()).await;
    assert!(patch_of(&answer).is_some(), "{answer}");
    assert_eq!(w.metric("strait_webhook_reviews_total", &[("result", "error")]).await, 4.0);
    assert_eq!(w.metric("strait_webhook_reviews_total", &[("result", "injected")]).await, 1.0);
}

#[tokio::test]
async fn a_renewed_certificate_is_served_without_a_restart() {
    let w = Webhook::start("webhook-reload", |_| {}).await;
    let renewed = pki("renewed webhook CA");
    assert!(w.connect_trusting(&renewed.ca_pem).await.is_err(), "not served before the renewal");
    write_atomically(&w.dir.path().join("tls.key"), &renewed.key_pem);
    write_atomically(&w.dir.path().join("tls.crt"), &renewed.cert_pem);
    let deadline = tokio::time::Instant::now() + RELOAD;
    let mut client = loop {
        match w.connect_trusting(&renewed.ca_pem).await {
            Ok(c) => break c,
            Err(e) if tokio::time::Instant::now() > deadline => panic!("{e}\n{}", w.controller.log()),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(patch_of(&client.review(&fixture()).await).is_some());
    assert!(w.connect_trusting(&w.pki.ca_pem).await.is_err(), "the old certificate is no longer served");
}

#[tokio::test]
async fn an_unknown_cluster_version_is_said_and_reviews_still_work() {
    let w = Webhook::start("webhook-no-version", |api| api.hide_version()).await;
    assert!(patch_of(&w.connect().await.review(&fixture()).await).is_some());
    let log = w.controller.log();
    assert!(log.contains("injecting classic sidecars") && log.contains("kubernetes_version=unknown"), "{log}");
}

/// Review latency over one connection, as the API server reuses its connections: p50 and p99 of
/// 1000 reviews, printed (never asserted: speed depends on the machine).
#[tokio::test]
async fn benchmark_review_latency() {
    let w = Webhook::start("webhook-bench", |_| {}).await;
    let mut client = w.connect().await;
    let review = fixture();
    for _ in 0..50 {
        client.review(&review).await;
    }
    let mut took: Vec<Duration> = Vec::with_capacity(1000);
    for _ in 0..1000 {
        let start = std::time::Instant::now();
        let answer = client.review(&review).await;
        took.push(start.elapsed());
        assert_eq!(answer["response"]["allowed"], true);
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q).ceil() as usize).min(took.len()) - 1];
    println!(
        "webhook review latency over 1000 reviews (HTTPS, HTTP/1.1, one connection, debug build): p50 {:?}, p99 {:?}, max {:?}",
        at(0.50),
        at(0.99),
        took[took.len() - 1]
    );
}
