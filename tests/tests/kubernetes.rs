//! End-to-end: `strait-controller --kubernetes` against the list/watch test API server
//! (`strait_tests::kube_api`) fed with the manifests in `tests/fixtures/k8s/`, and the discovery
//! answers a proxy receives, checked field by field.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use http::StatusCode;
use serde_json::{Value, json};
use strait_proto::discovery::v1::{
    self as pb, discovery_client::DiscoveryClient, not_found::Reason, policy::Balancer, watch_request::Request,
    watch_response::Response,
};
use strait_tests::{
    Process, TestDir, bin, free_addr,
    kube_api::{KubeApi, fixtures_dir},
    metrics, wait_for_http_ok,
};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// How long a change may take to reach a subscriber. Generous: a re-list after 410 Gone waits for
/// kube's backoff (0.8 s, jittered) first.
const PROPAGATION: Duration = Duration::from_secs(10);
/// How long to watch for a message that must not come.
const QUIET: Duration = Duration::from_millis(1000);

/// Fields drop in order: the controller (printing its log's tail if the test failed) before the
/// directory that holds the log.
struct Cluster {
    controller: Process,
    api: KubeApi,
    discovery: SocketAddr,
    admin: SocketAddr,
    _dir: TestDir,
}

impl Cluster {
    /// The test API server with the fixtures (then `prepare`d), and a controller watching it (not
    /// waiting for it to be ready).
    async fn start(label: &str, prepare: impl FnOnce(&KubeApi)) -> Cluster {
        let dir = TestDir::new(label);
        let api = KubeApi::with_manifests(&fixtures_dir()).await;
        prepare(&api);
        let (discovery, admin) = (free_addr(), free_addr());
        let kubeconfig: PathBuf = api.write_kubeconfig(&dir);
        let args = [
            "--kubernetes".to_string(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--discovery-addr={discovery}"),
            format!("--admin-addr={admin}"),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let env = [("STRAIT_LOG", "info,strait_controller=debug")];
        let controller = Process::spawn("controller", bin("strait-controller"), &args, &env, dir.path());
        Cluster { _dir: dir, api, controller, discovery, admin }
    }

    async fn ready(label: &str) -> Cluster {
        let c = Self::start(label, |_| {}).await;
        c.wait_ready().await;
        c
    }

    /// A ready cluster and a proxy's stream past its inbound policy.
    async fn with_proxy(label: &str) -> (Cluster, Proxy) {
        let c = Self::ready(label).await;
        let mut p = c.proxy().await;
        p.inbound().await;
        (c, p)
    }

    async fn wait_ready(&self) {
        wait_for_http_ok(&format!("http://{}/ready", self.admin), Duration::from_secs(30))
            .await
            .unwrap_or_else(|e| panic!("controller not ready: {e}\n{}", self.controller.log()));
    }

    async fn metric(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        metrics::value(&metrics::scrape(self.admin).await, name, labels)
    }

    /// A discovery stream from a proxy in `demo` (the web pod with the native sidecar).
    async fn proxy(&self) -> Proxy {
        self.proxy_of("demo", "web-7d9f8-abcde", "web").await
    }

    /// A discovery stream from the proxy of pod `namespace/pod`: its Hello names the pod as the
    /// workload (the injector sets `STRAIT_WORKLOAD` to the pod's name).
    async fn proxy_of(&self, namespace: &str, pod: &str, service_account: &str) -> Proxy {
        let channel = tonic::transport::Channel::from_shared(format!("http://{}", self.discovery))
            .unwrap()
            .connect()
            .await
            .unwrap_or_else(|e| panic!("connect to discovery: {e}\n{}", self.controller.log()));
        let (tx, requests) = mpsc::channel(16);
        let rx = DiscoveryClient::new(channel).watch(ReceiverStream::new(requests)).await.unwrap().into_inner();
        let p = Proxy { tx, rx };
        p.send(Request::Hello(pb::Hello {
            namespace: namespace.into(),
            workload: pod.into(),
            service_account: service_account.into(),
            proxy_version: "test".into(),
        }))
        .await;
        p
    }
}

struct Proxy {
    tx: mpsc::Sender<pb::WatchRequest>,
    rx: Streaming<pb::WatchResponse>,
}

impl Proxy {
    async fn send(&self, r: Request) {
        self.tx.send(pb::WatchRequest { request: Some(r) }).await.unwrap();
    }

    async fn subscribe(&self, authority: &str) {
        self.send(Request::Subscribe(pb::Subscribe { authority: authority.into() })).await;
    }

    /// The next message, `None` if none comes within `wait`.
    async fn next_within(&mut self, wait: Duration) -> Option<Response> {
        match tokio::time::timeout(wait, self.rx.message()).await {
            Ok(Ok(Some(m))) => m.response,
            Ok(other) => panic!("the stream ended: {other:?}"),
            Err(_) => None,
        }
    }

    async fn next(&mut self) -> Response {
        self.next_within(PROPAGATION).await.unwrap_or_else(|| panic!("no message within {PROPAGATION:?}"))
    }

    /// Subscribes and returns the answer (acknowledged, as a proxy does).
    async fn get(&mut self, authority: &str) -> Response {
        self.subscribe(authority).await;
        let r = self.next().await;
        self.ack(&r).await;
        r
    }

    async fn ack(&self, r: &Response) {
        let (authority, version) = match r {
            Response::Service(u) => (u.authority.clone(), u.version),
            Response::NotFound(n) => (n.authority.clone(), n.version),
            Response::Inbound(_) => return,
        };
        self.send(Request::Ack(pb::Ack { authority, version })).await;
    }

    async fn service(&mut self, authority: &str) -> pb::Service {
        match self.get(authority).await {
            Response::Service(u) => {
                assert_eq!(u.authority, authority);
                u.service.expect("an update without its service")
            }
            other => panic!("{authority}: wanted a service, got {other:?}"),
        }
    }

    /// Updates of `authority` until one satisfies `done` (sources converge one kind at a time: after
    /// a re-list, the endpoints may arrive before the Service's policy).
    async fn until(&mut self, authority: &str, done: impl Fn(&pb::Service) -> bool) -> pb::Service {
        let deadline = tokio::time::Instant::now() + PROPAGATION;
        loop {
            let s = self.update(authority).await;
            if done(&s) {
                return s;
            }
            assert!(tokio::time::Instant::now() < deadline, "{authority} did not converge: last {s:?}");
        }
    }

    /// The next update, for `authority`. Inbound policies in between are skipped: they follow the
    /// services that reach the workload (the ports it serves), so a service change may bring one.
    async fn update(&mut self, authority: &str) -> pb::Service {
        loop {
            let r = self.next().await;
            self.ack(&r).await;
            match r {
                Response::Service(u) if u.authority == authority => return u.service.unwrap(),
                Response::Inbound(_) => continue,
                other => panic!("wanted an update of {authority}, got {other:?}"),
            }
        }
    }

    async fn inbound(&mut self) -> pb::InboundPolicy {
        match self.next().await {
            Response::Inbound(i) => i,
            other => panic!("wanted the inbound policy, got {other:?}"),
        }
    }
}

fn endpoint(address: &str, proxy: &str, zone: &str, identity: &str, workload: &str) -> pb::Endpoint {
    pb::Endpoint {
        address: address.into(),
        proxy_address: proxy.into(),
        zone: zone.into(),
        weight: 1,
        identity: identity.into(),
        workload: workload.into(),
    }
}

const WEB_ID: &str = "spiffe://cluster.local/ns/demo/sa/web";

fn web_endpoints(port: u16) -> Vec<pb::Endpoint> {
    vec![
        endpoint(&format!("10.1.0.11:{port}"), "10.1.0.11:7143", "zone-a", WEB_ID, "web-7d9f8-abcde"),
        endpoint(&format!("10.1.0.12:{port}"), "10.1.0.12:7143", "zone-b", WEB_ID, "web-7d9f8-fghij"),
    ]
}

fn addresses(s: &pb::Service) -> Vec<&str> {
    s.endpoints.iter().map(|e| e.address.as_str()).collect()
}

/// Sets the conditions of the endpoint with `ip` in the EndpointSlice `demo/<slice>`.
fn set_conditions(api: &KubeApi, slice: &str, ip: &str, conditions: Value) -> u64 {
    api.modify("EndpointSlice", "demo", slice, |s| {
        let e = s["endpoints"].as_array_mut().unwrap().iter_mut().find(|e| e["addresses"][0] == ip).unwrap();
        e["conditions"] = conditions;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proxy_gets_every_service_of_the_cluster_field_by_field() {
    let c = Cluster::ready("k8s-answers").await;
    let mut p = c.proxy().await;
    // The proxy's own workload is a meshed pod: the default inbound policy.
    let inbound = p.inbound().await;
    assert_eq!((inbound.mode, inbound.opaque_ports.len()), (pb::inbound_policy::Mode::Permissive as i32, 0));

    let web = p.service("web.demo.svc.cluster.local:8080").await;
    assert_eq!((web.name.as_str(), web.namespace.as_str()), ("web", "demo"));
    assert_eq!(web.fqdn, "web.demo.svc.cluster.local");
    assert_eq!(web.cluster_ips, ["10.96.0.10"]);
    assert_eq!((web.port, web.protocol), (8080, pb::Protocol::Detect as i32));
    // The named target port `http-web` is 8081 on every pod. Ready endpoints only: the draining
    // 10.1.0.13 waits while ready ones exist, the not-ready 10.1.0.14 is dropped. The legacy pod
    // has no sidecar: no proxy, no identity.
    let mut want = web_endpoints(8081);
    want.push(endpoint("10.1.0.15:8081", "", "zone-c", "", "web-legacy-0"));
    assert_eq!(web.endpoints, want);
    assert!(web.routes.is_empty());
    // Policy from the annotations; the bad `retry.strait.io/limit: three` leaves only the limit unset.
    let policy = web.policy.clone().unwrap();
    assert_eq!(policy.request_timeout_ms, 2_000);
    let retry = policy.retry.clone().unwrap();
    assert_eq!(retry.http_on, ["5xx", "connect-failure"]);
    assert_eq!(retry.limit, None);
    assert_eq!(policy.circuit.unwrap().consecutive_failures, 5);
    assert_eq!(policy.balancer, Balancer::RoundRobin as i32);
    assert_eq!(policy.bulkhead, None);

    // The gRPC port: its own target port, and only the pods whose slice lists it.
    let grpc = p.service("web.demo:9090").await;
    assert_eq!((grpc.port, grpc.protocol), (9090, pb::Protocol::Grpc as i32));
    assert_eq!(grpc.endpoints, web_endpoints(9091));
    assert_eq!(grpc.policy, web.policy);

    // The same service under its other names: cluster IP, `name.ns.svc`, the short name from `demo`.
    for authority in ["10.96.0.10:8080", "web.demo.svc:8080", "web:8080"] {
        assert_eq!(p.service(authority).await, web, "{authority}");
    }

    // Headless: no cluster IP, endpoints by name; `tcp-redis` is opaque.
    let cache = p.service("cache.demo:6379").await;
    assert!(cache.cluster_ips.is_empty());
    assert_eq!(cache.protocol, pb::Protocol::Opaque as i32);
    let cache_id = "spiffe://cluster.local/ns/demo/sa/cache";
    assert_eq!(cache.endpoints, [endpoint("10.1.0.31:6379", "10.1.0.31:7143", "", cache_id, "cache-0")]);
    assert_eq!(cache.policy, Some(pb::Policy::default()));

    // No ready endpoint left: the serving, terminating one serves.
    let checkout = p.service("checkout.demo:80").await;
    assert_eq!(checkout.cluster_ips, ["10.96.0.30"]);
    assert_eq!(checkout.endpoints, [endpoint("10.1.0.21:8080", "", "", "", "checkout-5c6b7-aaaaa")]);

    let api_server = p.service("kubernetes.default:443").await;
    assert_eq!(addresses(&api_server), ["172.18.0.2:6443"]);

    // ExternalName: not in the mesh, so the proxy falls back to DNS.
    match p.get("billing.demo:443").await {
        Response::NotFound(n) => assert_eq!(n.reason, Reason::DoesNotExist as i32),
        other => panic!("{other:?}"),
    }
    // A port the service does not have, and a name from another namespace's point of view.
    for authority in ["web.demo:1234", "nope.demo:80"] {
        assert!(matches!(p.get(authority).await, Response::NotFound(_)), "{authority}");
    }

    // The stores, counted by kind; the bad annotation reported once.
    for (kind, n) in [("Service", 5.0), ("EndpointSlice", 5.0), ("Pod", 6.0)] {
        assert_eq!(c.metric("strait_controller_watched_objects", &[("kind", kind)]).await, n, "{kind}");
    }
    assert_eq!(c.metric("strait_controller_watched_objects", &[("kind", "services")]).await, 4.0);
    let errors = c.metric("strait_controller_annotation_errors_total", &[("annotation", "retry.strait.io/limit")]).await;
    assert_eq!(errors, 1.0);
    assert!(c.controller.log().contains("bad policy annotation"), "{}", c.controller.log());

    // … and as a Warning Event on the Service, where `kubectl describe` shows it.
    let event = wait_for(PROPAGATION, || c.api.objects("Event").into_iter().next()).await.expect("no Event created");
    assert_eq!(event["apiVersion"], "events.k8s.io/v1");
    assert_eq!(event["metadata"]["namespace"], "demo");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "InvalidAnnotation");
    assert_eq!(event["reportingController"], "strait-controller");
    assert_eq!(
        (&event["regarding"]["kind"], &event["regarding"]["name"], &event["regarding"]["uid"]),
        (&json!("Service"), &json!("web"), &json!("6b1f7d2e-0c51-4b8e-9a43-3f0c9d6f0a01"))
    );
    assert!(event["note"].as_str().unwrap().contains("retry.strait.io/limit"), "{event}");
    tokio::time::sleep(QUIET).await;
    assert_eq!(c.api.objects("Event").len(), 1, "reported once");
}

async fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if tokio::time::Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_to_slices_pods_and_annotations_reach_the_subscribers() {
    let (c, mut p) = Cluster::with_proxy("k8s-changes").await;
    const WEB: &str = "web.demo:8080";
    assert_eq!(addresses(&p.service(WEB).await), ["10.1.0.11:8081", "10.1.0.12:8081", "10.1.0.15:8081"]);

    // Scale down: web-…-fghij stops being ready.
    set_conditions(&c.api, "web-x7k2p", "10.1.0.12", json!({"ready": false, "serving": false, "terminating": true}));
    assert_eq!(addresses(&p.update(WEB).await), ["10.1.0.11:8081", "10.1.0.15:8081"]);

    // Scale up: a new meshed pod, then its endpoint.
    c.api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-7d9f8-uvwxy", "namespace": "demo", "labels": {"app": "web"}},
        "spec": {"serviceAccountName": "web", "containers": [{"name": "app"}, {"name": "strait-proxy"}]},
        "status": {"phase": "Running", "podIP": "10.1.0.16"},
    }));
    c.api.modify("EndpointSlice", "demo", "web-x7k2p", |s| {
        s["endpoints"].as_array_mut().unwrap().push(json!({
            "addresses": ["10.1.0.16"], "conditions": {"ready": true}, "zone": "zone-a",
            "targetRef": {"kind": "Pod", "namespace": "demo", "name": "web-7d9f8-uvwxy"},
        }));
    });
    let web = p.update(WEB).await;
    assert_eq!(addresses(&web), ["10.1.0.11:8081", "10.1.0.15:8081", "10.1.0.16:8081"]);
    assert_eq!(web.endpoints[2], endpoint("10.1.0.16:8081", "10.1.0.16:7143", "zone-a", WEB_ID, "web-7d9f8-uvwxy"));

    // Policy: fix the bad annotation, change another one.
    c.api.modify("Service", "demo", "web", |s| {
        s["metadata"]["annotations"]["retry.strait.io/limit"] = json!("3");
        s["metadata"]["annotations"]["timeout.strait.io/request"] = json!("5s");
    });
    let policy = p.update(WEB).await.policy.unwrap();
    assert_eq!((policy.request_timeout_ms, policy.retry.unwrap().limit), (5_000, Some(3)));

    // A slice goes away: its endpoint with it.
    c.api.delete("EndpointSlice", "demo", "web-m4q9z");
    assert_eq!(addresses(&p.update(WEB).await), ["10.1.0.11:8081", "10.1.0.16:8081"]);

    // A pod status change changes nothing a proxy sees: no update.
    c.api.modify("Pod", "demo", "web-7d9f8-abcde", |pod| pod["status"]["hostIP"] = json!("172.18.0.9"));
    assert_eq!(p.next_within(QUIET).await, None);

    // A pod loses its sidecar: the services it backs are rebuilt, its endpoint is no longer meshed.
    c.api.modify("Pod", "demo", "web-7d9f8-uvwxy", |pod| pod["spec"]["containers"] = json!([{"name": "app"}]));
    let web = p.update(WEB).await;
    assert_eq!(web.endpoints[1], endpoint("10.1.0.16:8081", "", "zone-a", "", "web-7d9f8-uvwxy"));

    // The service goes away: the subscriber hears it does not exist any more.
    c.api.delete("Service", "demo", "web");
    match p.next().await {
        Response::NotFound(n) => assert_eq!((n.authority.as_str(), n.reason), (WEB, Reason::DoesNotExist as i32)),
        other => panic!("{other:?}"),
    }
}

/// A hand-written slice whose port has no number: its endpoints' port is the Service's named target
/// port, resolved from their Pod. A Pod that arrives after the slice makes its endpoint appear, as
/// a whole rebuild would show it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_arriving_after_its_slice_resolves_the_named_target_port() {
    let (c, mut p) = Cluster::with_proxy("k8s-late-pod").await;
    const WEB: &str = "web.demo:8080";
    let before: Vec<String> = addresses(&p.service(WEB).await).into_iter().map(str::to_string).collect();
    c.api.apply(json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "web-hand", "namespace": "demo", "labels": {"kubernetes.io/service-name": "web"}},
        "addressType": "IPv4",
        "ports": [{"name": "http", "protocol": "TCP"}],
        "endpoints": [{
            "addresses": ["10.1.0.30"], "conditions": {"ready": true},
            "targetRef": {"kind": "Pod", "namespace": "demo", "name": "web-late"},
        }],
    }));
    // Without its Pod the endpoint has no port: not served, nothing changes.
    assert_eq!(p.next_within(QUIET).await, None);
    c.api.apply(json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "web-late", "namespace": "demo"},
        "spec": {"serviceAccountName": "web", "containers": [
            {"name": "app", "ports": [{"name": "http-web", "containerPort": 8081}]}, {"name": "strait-proxy"},
        ]},
        "status": {"phase": "Running", "podIP": "10.1.0.30"},
    }));
    let mut want = before;
    want.push("10.1.0.30:8081".to_string());
    want.sort();
    assert_eq!(addresses(&p.update(WEB).await), want.iter().map(String::as_str).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_ended_with_410_gone_is_listed_again_and_converges() {
    let (c, mut p) = Cluster::with_proxy("k8s-gone").await;
    const WEB: &str = "web.demo:8080";
    assert_eq!(p.service(WEB).await.endpoints.len(), 3);
    let lists_before = c.api.lists_of("EndpointSlice");
    assert_eq!(lists_before, 1);

    // The watches stall; meanwhile 10.1.0.11 leaves and the timeout annotation changes. Nothing can
    // reach the controller.
    c.api.pause_watches();
    set_conditions(&c.api, "web-x7k2p", "10.1.0.11", json!({"ready": false}));
    c.api.modify("Service", "demo", "web", |s| s["metadata"]["annotations"]["timeout.strait.io/request"] = json!("7s"));
    assert_eq!(p.next_within(QUIET).await, None, "a change arrived through a stalled watch");

    // The history is compacted and every watch ends with 410 Gone: the controller must list again,
    // and the changes made while its watches were broken show up.
    c.api.expire_watches();
    let web = p.until(WEB, |s| s.policy.as_ref().unwrap().request_timeout_ms == 7_000 && s.endpoints.len() == 2).await;
    assert_eq!(addresses(&web), ["10.1.0.12:8081", "10.1.0.15:8081"]);
    // Each kind lists again on its own (after kube's backoff), changed or not.
    for kind in ["Service", "EndpointSlice", "Pod"] {
        let listed = wait_for(PROPAGATION, || (c.api.lists_of(kind) >= 2).then_some(())).await;
        assert!(listed.is_some(), "{kind} was not listed again");
        assert!(c.metric("strait_controller_watch_lists_total", &[("kind", kind)]).await >= 2.0, "{kind}");
        assert!(c.metric("strait_controller_watch_errors_total", &[("kind", kind)]).await >= 1.0, "{kind}");
    }
    assert!(c.controller.log().contains("410 Gone"), "{}", c.controller.log());

    // The new watches deliver as before.
    set_conditions(&c.api, "web-x7k2p", "10.1.0.11", json!({"ready": true}));
    assert_eq!(addresses(&p.update(WEB).await), ["10.1.0.11:8081", "10.1.0.12:8081", "10.1.0.15:8081"]);

    // A watch that ends cleanly (timeoutSeconds, an API server restart) is resumed from its last
    // version, without a list.
    let lists: Vec<usize> = ["Service", "EndpointSlice", "Pod"].map(|k| c.api.lists_of(k)).to_vec();
    c.api.close_watches();
    set_conditions(&c.api, "web-x7k2p", "10.1.0.11", json!({"ready": false}));
    assert_eq!(addresses(&p.update(WEB).await), ["10.1.0.12:8081", "10.1.0.15:8081"]);
    assert_eq!(["Service", "EndpointSlice", "Pod"].map(|k| c.api.lists_of(k)).to_vec(), lists);

    // The same, but the history was compacted past the watchers' versions meanwhile: resuming gets
    // 410 Gone at once, and the controller lists again. The change here: the pod behind 10.1.0.12
    // is gone (its endpoint stays in the slice, no longer meshed).
    c.api.pause_watches();
    c.api.delete("Pod", "demo", "web-7d9f8-fghij");
    c.api.compact();
    c.api.close_watches();
    let web = p.update(WEB).await;
    let orphan = web.endpoints.iter().find(|e| e.address == "10.1.0.12:8081").unwrap();
    assert_eq!((orphan.proxy_address.as_str(), orphan.identity.as_str()), ("", ""), "a pod-less endpoint is not meshed");
    assert_eq!(orphan.workload, "web-7d9f8-fghij");
    for (kind, before) in ["Service", "EndpointSlice", "Pod"].iter().zip(lists) {
        let listed = wait_for(PROPAGATION, || (c.api.lists_of(kind) > before).then_some(())).await;
        assert!(listed.is_some(), "{kind} was not listed again");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ready_and_answers_only_after_the_first_full_list_of_every_kind() {
    // Pods cannot be listed at first (no RBAC rights yet, say).
    let c = Cluster::start("k8s-ready", |api| api.fail("Pod", StatusCode::FORBIDDEN)).await;
    let url = format!("http://{}/ready", c.admin);
    wait_for_http_ok(&format!("http://{}/live", c.admin), Duration::from_secs(30)).await.unwrap();
    let mut p = c.proxy().await;
    p.subscribe("web.demo:8080").await;
    // Let the watchers try a few times.
    let forbidden = wait_for(PROPAGATION, || (c.api.lists_of("Pod") >= 1).then_some(())).await;
    assert!(forbidden.is_some(), "the controller never tried to list pods");
    assert_eq!(p.next_within(QUIET).await, None, "an answer before the first full sync");
    let status = strait_tests::http_get(&url).await.unwrap().status;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(c.metric("strait_controller_watch_errors_total", &[("kind", "Pod")]).await >= 1.0);

    c.api.heal("Pod");
    c.wait_ready().await;
    assert!(matches!(p.next().await, Response::Inbound(_)));
    match p.next().await {
        Response::Service(u) => assert_eq!(u.service.unwrap().endpoints.len(), 3),
        other => panic!("{other:?}"),
    }
}

/// A meshed pod that serves no Service: `mail-0`, SMTP on the named port `smtp`.
fn mail_pod(annotations: Value) -> Value {
    let mut a = json!({"strait.io/inject": "enabled"});
    a.as_object_mut().unwrap().extend(annotations.as_object().unwrap().clone());
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "mail-0", "namespace": "demo", "uid": "0d0c2a8e-1111-4c3e-8d4a-000000000041", "annotations": a},
        "spec": {"serviceAccountName": "mail", "containers": [
            {"name": "postfix", "ports": [{"name": "smtp", "containerPort": 2525}]},
            {"name": "strait-proxy"},
        ]},
        "status": {"phase": "Running", "podIP": "10.1.0.41"},
    })
}

fn policy(mode: pb::inbound_policy::Mode, opaque_ports: &[u32]) -> (i32, Vec<u32>) {
    (mode as i32, opaque_ports.to_vec())
}

fn got(p: &pb::InboundPolicy) -> (i32, Vec<u32>) {
    (p.mode, p.opaque_ports.clone())
}

/// The Pod annotations `config.strait.io/inbound-mode` and `config.strait.io/opaque-ports` become
/// the inbound policy the pod's proxy receives (found by the namespace and workload of its Hello),
/// and follow their changes; a bad value is reported (log, metric, Warning Event on the Pod, once)
/// and leaves its field at the default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_annotations_set_the_inbound_policy_its_proxy_receives() {
    use pb::inbound_policy::Mode;
    let c = Cluster::start("k8s-inbound", |api| {
        api.apply(mail_pod(json!({
            "config.strait.io/inbound-mode": "strict",
            "config.strait.io/opaque-ports": "25, 3306-3307,smtp",
        })));
    })
    .await;
    c.wait_ready().await;
    let mut mail = c.proxy_of("demo", "mail-0", "mail").await;
    assert_eq!(got(&mail.inbound().await), policy(Mode::Strict, &[25, 2525, 3306, 3307]));
    // The redis pod: no annotations; its opaque Service port (`tcp-redis`) is opaque inbound too.
    let mut cache = c.proxy_of("demo", "cache-0", "cache").await;
    assert_eq!(got(&cache.inbound().await), policy(Mode::Permissive, &[6379]));

    // Bad values: each field falls back to its default, and each problem is reported.
    c.api.modify("Pod", "demo", "mail-0", |p| {
        p["metadata"]["annotations"]["config.strait.io/inbound-mode"] = json!("enforcing");
        p["metadata"]["annotations"]["config.strait.io/opaque-ports"] = json!("25,smtps");
    });
    assert_eq!(got(&mail.inbound().await), policy(Mode::Permissive, &[]));
    for annotation in ["config.strait.io/inbound-mode", "config.strait.io/opaque-ports"] {
        let errors = c.metric("strait_controller_annotation_errors_total", &[("annotation", annotation)]).await;
        assert_eq!(errors, 1.0, "{annotation}");
    }
    let log = c.controller.log();
    assert!(log.contains("bad inbound policy annotation"), "{log}");
    assert!(log.contains(r#"\"enforcing\" is not one of permissive, strict"#), "{log}");
    let pod_events = || -> Vec<Value> {
        c.api.objects("Event").into_iter().filter(|e| e["regarding"]["kind"] == "Pod").collect()
    };
    let events = wait_for(PROPAGATION, || Some(pod_events()).filter(|e| e.len() == 2)).await.unwrap_or_else(pod_events);
    assert_eq!(events.len(), 2, "{events:?}");
    for e in &events {
        assert_eq!((&e["type"], &e["reason"]), (&json!("Warning"), &json!("InvalidAnnotation")));
        assert_eq!((&e["regarding"]["name"], &e["regarding"]["uid"]), (&json!("mail-0"), &json!("0d0c2a8e-1111-4c3e-8d4a-000000000041")));
    }
    let notes: Vec<&str> = events.iter().map(|e| e["note"].as_str().unwrap()).collect();
    assert!(notes.iter().any(|n| n.contains("\"smtps\"") && n.contains("config.strait.io/opaque-ports")), "{notes:?}");

    // A change that leaves the same problems reports nothing again, and sends no policy.
    c.api.modify("Pod", "demo", "mail-0", |p| p["status"]["hostIP"] = json!("172.18.0.9"));
    assert_eq!(mail.next_within(QUIET).await, None);
    assert_eq!(pod_events().len(), 2, "reported once");

    // Fixed: the policy follows.
    c.api.modify("Pod", "demo", "mail-0", |p| {
        p["metadata"]["annotations"]["config.strait.io/inbound-mode"] = json!("strict");
        p["metadata"]["annotations"]["config.strait.io/opaque-ports"] = json!("25");
    });
    assert_eq!(got(&mail.inbound().await), policy(Mode::Strict, &[25]));
    assert_eq!(cache.next_within(QUIET).await, None, "another pod's change is not sent to this one");
    let errors = c.metric("strait_controller_annotation_errors_total", &[("annotation", "config.strait.io/inbound-mode")]).await;
    assert_eq!(errors, 1.0);
}
