//! Discovery end to end, in-process: a controller on loopback ports serving a mesh file, and the
//! generated tonic client playing the proxy.

use std::{path::Path, time::Duration};

use strait_controller::{Config, Controller, Error, mesh_file::MeshFileError};
use strait_proto::discovery::v1::{
    self as pb, discovery_client::DiscoveryClient, not_found::Reason, watch_request::Request,
    watch_response::Response,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
    time::Instant,
};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status, Streaming, transport::Channel};

/// How long an update may take to reach a subscriber after the file changed.
const PROPAGATION: Duration = Duration::from_secs(1);
/// How long to watch for a message that must not come: several poll intervals.
const QUIET: Duration = Duration::from_millis(700);

fn mesh(orders_endpoints: &[&str], extra: &str) -> String {
    let endpoints: String = orders_endpoints.iter().map(|e| format!("      - {e}\n")).collect();
    format!(
        r#"trustDomain: example.org
workloads:
  - {{name: orders-v1, namespace: demo, serviceAccount: orders, token: t}}
  - {{name: web-v1, namespace: demo, serviceAccount: web, inboundMode: strict, opaquePorts: [3306]}}
services:
  - name: orders
    namespace: demo
    clusterIP: 10.96.0.20
    ports: [{{port: 8080, protocol: http, targetPort: 18080}}, {{port: 9090, protocol: grpc}}]
    annotations:
      retry.strait.io/http: "5xx,connect-failure"
      retry.strait.io/grpc: "unavailable"
      timeout.strait.io/request: 2s
      balancer.strait.io/algorithm: round-robin
    endpoints:
{endpoints}  - {{name: empty, namespace: demo, ports: [{{port: 80}}]}}
{extra}"#
    )
}

const FIRST: &str = r#"{address: "127.0.0.1:18081", proxy: "127.0.0.1:17143", workload: orders-v1, zone: z1}"#;
const SECOND: &str = r#"{address: "127.0.0.2:18081", weight: 3}"#;

/// Replaces the file in one step, as editors and ConfigMap updates do.
fn write(path: &Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

struct Mesh {
    _dir: tempfile::TempDir,
    path: std::path::PathBuf,
    controller: Controller,
}

async fn controller(text: &str) -> Mesh {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    write(&path, text);
    let config = Config {
        discovery_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::embedded(&path)
    };
    let controller = strait_controller::start(config).await.unwrap();
    Mesh { _dir: dir, path, controller }
}

async fn channel(c: &Controller) -> Channel {
    Channel::from_shared(format!("http://{}", c.discovery_addr())).unwrap().connect().await.unwrap()
}

/// One discovery stream, as a proxy holds it.
struct Proxy {
    tx: mpsc::Sender<pb::WatchRequest>,
    rx: Streaming<pb::WatchResponse>,
}

impl Proxy {
    async fn open(c: &Controller) -> Self {
        Self::on(channel(c).await).await
    }

    async fn on(channel: Channel) -> Self {
        let (tx, requests) = mpsc::channel(16);
        let rx = DiscoveryClient::new(channel).watch(ReceiverStream::new(requests)).await.unwrap().into_inner();
        Self { tx, rx }
    }

    /// Opens a stream and says hello as `web-v1` in `demo`; returns it with its inbound policy.
    async fn hello(c: &Controller, namespace: &str) -> (Self, pb::InboundPolicy) {
        let mut p = Self::open(c).await;
        p.send(Request::Hello(pb::Hello {
            namespace: namespace.into(),
            workload: "web-v1".into(),
            service_account: "web".into(),
            proxy_version: "test".into(),
        }))
        .await;
        match p.next().await {
            Ok(Response::Inbound(i)) => (p, i),
            other => panic!("wanted the inbound policy first, got {other:?}"),
        }
    }

    async fn send(&self, r: Request) {
        self.tx.send(pb::WatchRequest { request: Some(r) }).await.unwrap();
    }

    async fn subscribe(&self, authority: &str) {
        self.send(Request::Subscribe(pb::Subscribe { authority: authority.into() })).await;
    }

    async fn next(&mut self) -> Result<Response, Status> {
        match tokio::time::timeout(Duration::from_secs(5), self.rx.message()).await {
            Ok(Ok(Some(m))) => Ok(m.response.expect("a response with no message")),
            Ok(Ok(None)) => Err(Status::ok("stream ended")),
            Ok(Err(status)) => Err(status),
            Err(_) => panic!("no message within 5 s"),
        }
    }

    async fn update(&mut self) -> pb::ServiceUpdate {
        match self.next().await {
            Ok(Response::Service(u)) => u,
            other => panic!("wanted a service update, got {other:?}"),
        }
    }

    async fn not_found(&mut self) -> pb::NotFound {
        match self.next().await {
            Ok(Response::NotFound(n)) => n,
            other => panic!("wanted NotFound, got {other:?}"),
        }
    }

    async fn quiet(&mut self) {
        if let Ok(m) = tokio::time::timeout(QUIET, self.rx.message()).await {
            panic!("wanted nothing, got {m:?}");
        }
    }
}

/// Sends and receives message bodies as raw bytes, to put anything on the wire.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = Vec<u8>;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut tonic::codec::EncodeBuf<'_>) -> Result<(), Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn decode(&mut self, src: &mut tonic::codec::DecodeBuf<'_>) -> Result<Option<Vec<u8>>, Status> {
        let n = bytes::Buf::remaining(src);
        Ok(Some(bytes::Buf::copy_to_bytes(src, n).to_vec()))
    }
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: admin\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    let status = out.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    (status, out)
}

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{series} missing from\n{text}"))
}

#[tokio::test]
async fn a_subscription_gets_the_snapshot_then_every_real_change() {
    let m = controller(&mesh(&[FIRST], "")).await;
    let (mut p, inbound) = Proxy::hello(&m.controller, "demo").await;
    assert_eq!(inbound.opaque_ports, [3306]);
    assert_eq!(inbound.mode, pb::inbound_policy::Mode::Strict as i32);

    p.subscribe("orders.demo:8080").await;
    let u = p.update().await;
    assert_eq!(u.authority, "orders.demo:8080");
    assert!(u.version > inbound.version);
    let s = u.service.unwrap();
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("orders", "demo"));
    assert_eq!(s.fqdn, "orders.demo.svc.cluster.local");
    assert_eq!(s.cluster_ips, ["10.96.0.20"]);
    assert_eq!(s.port, 8080);
    assert_eq!(s.protocol, pb::Protocol::Detect as i32);
    assert_eq!(s.endpoints.len(), 1);
    let e = &s.endpoints[0];
    assert_eq!(e.address, "127.0.0.1:18080", "the port's targetPort replaces the endpoint's port");
    assert_eq!(e.proxy_address, "127.0.0.1:17143");
    assert_eq!(e.identity, "spiffe://example.org/ns/demo/sa/orders");
    assert_eq!((e.zone.as_str(), e.weight, e.workload.as_str()), ("z1", 1, "orders-v1"));
    let policy = s.policy.unwrap();
    assert_eq!(policy.request_timeout_ms, 2_000);
    assert_eq!(policy.balancer, pb::policy::Balancer::RoundRobin as i32);
    let retry = policy.retry.unwrap();
    assert_eq!(retry.http_on, ["5xx", "connect-failure"]);
    assert_eq!(retry.grpc_on, [14]);
    p.send(Request::Ack(pb::Ack { authority: u.authority.clone(), version: u.version })).await;

    // The gRPC port of the same service, by cluster IP.
    p.subscribe("10.96.0.20:9090").await;
    let grpc = p.update().await;
    assert_eq!(grpc.service.as_ref().unwrap().protocol, pb::Protocol::Grpc as i32);
    assert_eq!(grpc.service.unwrap().endpoints[0].address, "127.0.0.1:18081");

    // A new endpoint arrives quickly, once per subscription it changes.
    let edited = Instant::now();
    write(&m.path, &mesh(&[FIRST, SECOND], ""));
    let mut got = [p.update().await, p.update().await];
    assert!(edited.elapsed() < PROPAGATION, "took {:?}", edited.elapsed());
    got.sort_by(|a, b| a.authority.cmp(&b.authority));
    assert_eq!(got[1].authority, "orders.demo:8080");
    assert!(got[1].version > u.version);
    let endpoints = &got[1].service.as_ref().unwrap().endpoints;
    assert_eq!(endpoints.len(), 2);
    assert_eq!((endpoints[1].address.as_str(), endpoints[1].proxy_address.as_str()), ("127.0.0.2:18080", ""));
    assert_eq!((endpoints[1].identity.as_str(), endpoints[1].weight), ("", 3));

    // An edit that changes nothing served (a comment, reordered endpoints) sends nothing.
    write(&m.path, &format!("# a comment\n{}", mesh(&[SECOND, FIRST], "")));
    p.quiet().await;

    // A bad edit is refused; the last good mesh keeps serving, new subscriptions included.
    write(&m.path, &mesh(&[FIRST], "  - {name: broken, namespace: demo, ports: [{port: x}]}\n"));
    p.quiet().await;
    let (_, metrics) = http_get(m.controller.admin_addr(), "/metrics").await;
    assert_eq!(metric(&metrics, "strait_controller_config_reloads_total{result=\"error\"}"), 1.0);
    p.subscribe("orders:8080").await;
    assert_eq!(p.update().await.service.unwrap().endpoints.len(), 2, "the last good mesh is served");

    // Fixing the file serves it again.
    write(&m.path, &mesh(&[FIRST], ""));
    let mut fixed = [p.update().await, p.update().await, p.update().await];
    fixed.sort_by(|a, b| a.authority.cmp(&b.authority));
    let authorities: Vec<_> = fixed.iter().map(|u| u.authority.as_str()).collect();
    assert_eq!(authorities, ["10.96.0.20:9090", "orders.demo:8080", "orders:8080"]);
    assert!(fixed.iter().all(|u| u.service.as_ref().unwrap().endpoints.len() == 1));

    // Written in place, same size, its modification time set back: still seen (the change time,
    // which no tool can set, moved on).
    let modified = std::fs::metadata(&m.path).unwrap().modified().unwrap();
    let same_size = mesh(&[FIRST], "").replace("zone: z1", "zone: z2");
    std::fs::write(&m.path, &same_size).unwrap();
    std::fs::File::options().write(true).open(&m.path).unwrap().set_modified(modified).unwrap();
    let moved = [p.update().await, p.update().await, p.update().await];
    assert!(moved.iter().all(|u| u.service.as_ref().unwrap().endpoints[0].zone == "z2"));

    let (_, metrics) = http_get(m.controller.admin_addr(), "/metrics").await;
    assert_eq!(metric(&metrics, "strait_controller_subscriptions"), 3.0);
    assert!(metric(&metrics, "strait_controller_push_duration_seconds_count") >= 5.0);
    assert_eq!(metric(&metrics, "strait_discovery_acks_total"), 1.0);
    m.controller.shutdown().await;
}

#[tokio::test]
async fn unknown_authorities_get_not_found_until_they_exist() {
    let m = controller(&mesh(&[FIRST], "")).await;
    let (mut p, _) = Proxy::hello(&m.controller, "elsewhere").await;

    p.subscribe("later.demo:8080").await;
    let n = p.not_found().await;
    assert_eq!((n.authority.as_str(), n.reason), ("later.demo:8080", Reason::DoesNotExist as i32));
    p.subscribe("orders:8080").await;
    assert_eq!(p.not_found().await.reason, Reason::DoesNotExist as i32, "short names only in the same namespace");
    p.subscribe("orders.demo:1").await;
    assert_eq!(p.not_found().await.reason, Reason::DoesNotExist as i32, "a port the service does not have");
    p.subscribe("empty.demo").await;
    assert_eq!(p.not_found().await.reason, Reason::NoEndpoints as i32);
    p.subscribe("not an authority").await;
    assert_eq!(p.not_found().await.reason, Reason::DoesNotExist as i32);

    // Unsubscribed authorities hear nothing more; the others learn that the service now exists.
    p.send(Request::Unsubscribe(pb::Unsubscribe { authority: "orders.demo:1".into() })).await;
    let later = r#"  - name: later
    namespace: demo
    ports: [{port: 8080}, {port: 1}]
    endpoints: [{address: "127.0.0.3:8080"}]
"#;
    write(&m.path, &mesh(&[FIRST], later).replace("{port: 9090, protocol: grpc}", "{port: 9090, protocol: grpc}, {port: 1}"));
    let u = p.update().await;
    assert_eq!(u.authority, "later.demo:8080");
    assert!(u.version > n.version);
    p.quiet().await;

    p.send(Request::Nack(pb::Nack { authority: u.authority, version: u.version, reason: "test".into() })).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, metrics) = http_get(m.controller.admin_addr(), "/metrics").await;
    assert_eq!(metric(&metrics, "strait_discovery_nacks_total"), 1.0);
    assert_eq!(metric(&metrics, "strait_discovery_updates_total{kind=\"not_found\"}"), 5.0);
    m.controller.shutdown().await;
}

#[tokio::test]
async fn protocol_errors_end_only_the_offending_stream() {
    let m = controller(&mesh(&[FIRST], "")).await;
    let shared = channel(&m.controller).await;
    let (mut good, _) = {
        let mut p = Proxy::on(shared.clone()).await;
        p.send(Request::Hello(pb::Hello { namespace: "demo".into(), ..Default::default() })).await;
        let inbound = p.next().await.unwrap();
        (p, inbound)
    };

    let mut early = Proxy::on(shared.clone()).await;
    early.subscribe("orders.demo:8080").await;
    assert_eq!(early.next().await.unwrap_err().code(), Code::InvalidArgument);

    let mut twice = Proxy::on(shared.clone()).await;
    twice.send(Request::Hello(pb::Hello::default())).await;
    twice.next().await.unwrap();
    twice.send(Request::Hello(pb::Hello::default())).await;
    assert_eq!(twice.next().await.unwrap_err().code(), Code::InvalidArgument);

    let mut empty = Proxy::on(shared.clone()).await;
    empty.send(Request::Hello(pb::Hello::default())).await;
    empty.next().await.unwrap();
    empty.tx.send(pb::WatchRequest { request: None }).await.unwrap();
    assert_eq!(empty.next().await.unwrap_err().code(), Code::InvalidArgument);

    // Bytes that do not decode as a WatchRequest: field 2 (Subscribe) sent as the number 7.
    let mut grpc = tonic::client::Grpc::new(shared.clone());
    grpc.ready().await.unwrap();
    let request = tonic::Request::new(tokio_stream::iter([vec![0x10, 0x07]]));
    let path = http::uri::PathAndQuery::from_static("/strait.discovery.v1.Discovery/Watch");
    let mut garbage = grpc.streaming(request, path, RawCodec).await.unwrap().into_inner();
    let status = tokio::time::timeout(Duration::from_secs(5), garbage.message()).await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{status:?}");

    // The well-behaved stream on the same connection is unaffected.
    good.subscribe("orders:8080").await;
    assert_eq!(good.update().await.authority, "orders:8080");

    let (_, metrics) = http_get(m.controller.admin_addr(), "/metrics").await;
    assert_eq!(metric(&metrics, "strait_discovery_stream_errors_total{reason=\"no_hello\"}"), 1.0);
    m.controller.shutdown().await;
}

#[tokio::test]
async fn admin_reports_readiness_and_what_is_watched() {
    let m = controller(&mesh(&[FIRST, SECOND], "")).await;
    let admin = m.controller.admin_addr();
    assert_eq!(http_get(admin, "/live").await.0, 200);
    assert_eq!(http_get(admin, "/ready").await.0, 200);
    let (status, metrics) = http_get(admin, "/metrics").await;
    assert_eq!(status, 200);
    assert_eq!(metric(&metrics, "strait_controller_watched_objects{kind=\"services\"}"), 2.0);
    assert_eq!(metric(&metrics, "strait_controller_watched_objects{kind=\"endpoints\"}"), 2.0);
    assert_eq!(metric(&metrics, "strait_controller_watched_objects{kind=\"workloads\"}"), 2.0);
    assert_eq!(metric(&metrics, "strait_controller_config_reloads_total{result=\"ok\"}"), 1.0);
    assert_eq!(http_get(admin, "/nope").await.0, 404);
    m.controller.shutdown().await;
}

#[tokio::test]
async fn streams_are_told_when_the_controller_stops() {
    let m = controller(&mesh(&[FIRST], "")).await;
    let (mut p, _) = Proxy::hello(&m.controller, "demo").await;
    m.controller.shutdown().await;
    assert_eq!(p.next().await.unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn a_bad_mesh_file_at_start_is_an_error_with_its_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.yaml");
    write(&path, "services:\n  - name: a\n    namespace: b\n    ports: [{port: x}]\n");
    let config = Config {
        discovery_addr: "127.0.0.1:0".parse().unwrap(),
        admin_addr: "127.0.0.1:0".parse().unwrap(),
        ..Config::embedded(&path)
    };
    match strait_controller::start(config).await {
        Err(Error::MeshFile(e @ MeshFileError::Parse { .. })) => {
            assert_eq!(e.line(), Some(4));
            assert!(e.to_string().contains("line 4"), "{e}");
        }
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a bad mesh file was accepted"),
    }
    let missing = Config { mesh_file: dir.path().join("absent.yaml"), ..Config::embedded("") };
    assert!(matches!(strait_controller::start(missing).await, Err(Error::MeshFile(MeshFileError::Read { .. }))));
}
