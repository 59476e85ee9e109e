//! Tests of the end-to-end support itself: every `strait-testsrv` mode answers as documented, and
//! the harness (processes, directories, waits, clients, metrics parser) does what it says. No proxy.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode, Version};
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use hyper::body::Frame;
use strait_tests::echo::EchoRequest;
use strait_tests::echo::echo_client::EchoClient;
use strait_tests::{metrics, *};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;
use tokio_tungstenite::tungstenite::Message;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn get(uri: &str, host: &str) -> Request<Empty<Bytes>> {
    Request::get(uri)
        .header("host", host)
        .body(Empty::new())
        .unwrap()
}

async fn get_text(addr: SocketAddr, path: &str) -> String {
    let response = http_get(&format!("http://{addr}{path}")).await.unwrap();
    assert_eq!(response.status, 200, "GET {path}: {}", response.text());
    response.text()
}

// ---- http mode ----

#[tokio::test]
async fn http1_default_route_reports_what_it_saw() {
    let (_srv, addr) = testsrv("http", "web").await;
    let mut request = get("/hello?x=1", "web.demo:8080");
    request.headers_mut().insert(
        "strait-client-id",
        "spiffe://cluster.local/ns/demo/sa/x".parse().unwrap(),
    );
    let response = send_http1(addr, request).await.unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.version, Version::HTTP_11);
    assert_eq!(response.text(), "web GET /hello?x=1");
    assert_eq!(response.header("x-served-by"), Some("web"));
    assert_eq!(response.header("x-seen-host"), Some("web.demo:8080"));
    assert_eq!(
        response.header("x-seen-client-id"),
        Some("spiffe://cluster.local/ns/demo/sa/x")
    );
    assert_eq!(response.header("x-seen-version"), Some("HTTP/1.1"));

    let response = http_get(&format!("http://{addr}/")).await.unwrap();
    assert_eq!(response.text(), "web GET /");
    assert_eq!(response.header("x-seen-client-id"), Some(""));
    assert_eq!(
        response.header("x-seen-host"),
        Some(addr.to_string().as_str())
    );
}

#[tokio::test]
async fn http_h2c_on_the_same_port() {
    let (_srv, addr) = testsrv("http", "web").await;
    let response = send_h2c(
        addr,
        Request::get("http://web.demo:8080/path")
            .body(Empty::<Bytes>::new())
            .unwrap(),
    )
    .await
    .unwrap();
    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.version, Version::HTTP_2);
    assert_eq!(response.text(), "web GET /path");
    assert_eq!(response.header("x-seen-host"), Some("web.demo:8080"));
    assert_eq!(response.header("x-seen-version"), Some("HTTP/2.0"));

    let upload = Request::post("http://web.demo:8080/upload")
        .body(Full::new(Bytes::from_static(b"abc")))
        .unwrap();
    let response = send_h2c(addr, upload).await.unwrap();
    assert_eq!(response.text(), format!("bytes=3 sum={}", 97 + 98 + 99));
}

#[tokio::test]
async fn absolute_form_request_as_sent_to_an_http_proxy() {
    let (_srv, addr) = testsrv("http", "web").await;
    // The test server accepts absolute-form too, which shows what the helper puts on the wire.
    let response = http_get_via_proxy(addr, "http://web.demo:8080/via?proxy=1")
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(response.text(), "web GET /via?proxy=1");
    assert_eq!(response.header("x-seen-host"), Some("web.demo:8080"));
}

#[tokio::test]
async fn echo_streams_the_body_back_while_it_is_sent() {
    let (_srv, addr) = testsrv("http", "web").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, BoxError>>(4);
    let body = StreamBody::new(ReceiverStream::new(rx));
    let mut sender = strait_tests::client::http1_connect(addr).await.unwrap();
    let request = Request::post("/echo")
        .header("host", "web")
        .body(body)
        .unwrap();
    tx.send(Ok(Frame::data(Bytes::from_static(b"ping-1"))))
        .await
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.headers()["transfer-encoding"], "chunked");
    let mut body = response.into_body();
    // The first chunk comes back before the request body is complete.
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(first, "ping-1");
    tx.send(Ok(Frame::data(Bytes::from_static(b"ping-2"))))
        .await
        .unwrap();
    let second = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(second, "ping-2");
    drop(tx);
    assert!(body.collect().await.unwrap().to_bytes().is_empty());
}

#[tokio::test]
async fn chunked_bytes_slow_and_status_routes() {
    let (_srv, addr) = testsrv("http", "web").await;
    let response = http_get(&format!("http://{addr}/chunked?n=5"))
        .await
        .unwrap();
    assert_eq!(response.header("transfer-encoding"), Some("chunked"));
    assert_eq!(
        response.text(),
        "chunk-0\nchunk-1\nchunk-2\nchunk-3\nchunk-4\n"
    );

    let response = http_get(&format!("http://{addr}/bytes/100000"))
        .await
        .unwrap();
    assert_eq!(response.header("content-length"), Some("100000"));
    assert_eq!(response.body.len(), 100_000);
    assert!(
        response
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8)
    );

    assert_eq!(get_text(addr, "/slow?ms=50").await, "slow done");

    let response = http_get(&format!("http://{addr}/status/503"))
        .await
        .unwrap();
    assert_eq!(response.status, 503);
    assert_eq!(response.header("x-served-by"), Some("web"));
    let response = http_get(&format!("http://{addr}/status/204"))
        .await
        .unwrap();
    assert_eq!(response.status, 204);
    assert!(response.body.is_empty());

    let headers: serde_json::Value =
        serde_json::from_str(&get_text(addr, "/headers").await).unwrap();
    assert_eq!(headers["host"], addr.to_string());
}

#[tokio::test]
async fn upload_of_a_few_mib_is_counted_and_summed() {
    let (_srv, addr) = testsrv("http", "web").await;
    let chunks: Vec<Bytes> = (0..64)
        .map(|_| {
            Bytes::from(
                (0..64 * 1024)
                    .map(|_| fastrand::u8(..))
                    .collect::<Vec<u8>>(),
            )
        })
        .collect();
    let expected_sum = chunks
        .iter()
        .flat_map(|c| c.iter())
        .fold(0u64, |s, &b| s.wrapping_add(u64::from(b)));
    let frames = futures_util::stream::iter(
        chunks
            .into_iter()
            .map(|c| Ok::<_, BoxError>(Frame::data(c))),
    );
    let request = Request::post("/upload")
        .header("host", "web")
        .body(StreamBody::new(frames))
        .unwrap();
    let response = send_http1(addr, request).await.unwrap();
    assert_eq!(response.status, 200);
    assert_eq!(
        response.text(),
        format!("bytes={} sum={expected_sum}", 4 * 1024 * 1024)
    );
}

#[tokio::test]
async fn counts_served_and_cancelled_requests() {
    let (_srv, addr) = testsrv("http", "web").await;
    for _ in 0..3 {
        get_text(addr, "/").await;
    }
    assert_eq!(get_text(addr, "/count").await, "3");
    assert_eq!(get_text(addr, "/cancelled").await, "0");

    // A client that gives up while the server is still waiting.
    let mut sender = strait_tests::client::http1_connect::<Empty<Bytes>>(addr)
        .await
        .unwrap();
    let slow = sender.send_request(get("/slow?ms=10000", "web"));
    assert!(
        tokio::time::timeout(Duration::from_millis(200), slow)
            .await
            .is_err()
    );
    drop(sender);

    wait_for_text(addr, "/cancelled", "1").await;

    // An HTTP/2 client that stops reading in the middle of the response.
    let mut sender = strait_tests::client::h2c_connect::<Empty<Bytes>>(addr)
        .await
        .unwrap();
    let request = Request::get("http://web/chunked?n=100&delay_ms=20")
        .body(Empty::new())
        .unwrap();
    let mut body = sender.send_request(request).await.unwrap().into_body();
    assert_eq!(
        body.frame().await.unwrap().unwrap().into_data().unwrap(),
        "chunk-0\n"
    );
    drop((body, sender));
    wait_for_text(addr, "/cancelled", "2").await;
    assert_eq!(get_text(addr, "/count").await, "5");
}

async fn wait_for_text(addr: SocketAddr, path: &str, expected: &str) {
    let mut text = String::new();
    for _ in 0..250 {
        text = get_text(addr, path).await;
        if text == expected {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(text, expected, "GET {path}");
}

#[tokio::test]
async fn websocket_echo_of_text_and_binary() {
    let (_srv, addr) = testsrv("http", "web").await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut ws, response) = tokio_tungstenite::client_async(format!("ws://{addr}/ws"), stream)
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let binary: Vec<u8> = (0..=255).collect();
    ws.send(Message::binary(binary.clone())).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::binary(binary));
    ws.close(None).await.unwrap();
    // The server answers the close handshake, then the stream ends.
    while let Some(message) = ws.next().await {
        assert!(matches!(message, Ok(Message::Close(_))), "{message:?}");
    }
}

// ---- grpc mode ----

#[tokio::test]
async fn grpc_unary_reports_authority_and_fails_on_request() {
    let (_srv, addr) = testsrv("grpc", "echo").await;
    let mut client = EchoClient::connect(format!("http://{addr}")).await.unwrap();
    let response = client
        .unary(EchoRequest {
            message: "hi".into(),
            repeat: 0,
        })
        .await
        .unwrap();
    assert_eq!(response.metadata().get("x-served-by").unwrap(), "echo");
    let reply = response.into_inner();
    assert_eq!(reply.message, "hi");
    assert_eq!(reply.seen_authority, addr.to_string());

    let mut client = EchoClient::new(grpc_channel(addr, "echo.demo:8080").await.unwrap());
    let reply = client
        .unary(EchoRequest {
            message: "there".into(),
            repeat: 0,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.seen_authority, "echo.demo:8080");

    let status = client
        .unary(EchoRequest {
            message: "fail:14".into(),
            repeat: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
}

#[tokio::test]
async fn grpc_bidi_echoes_each_message_as_it_comes_and_server_streams() {
    let (_srv, addr) = testsrv("grpc", "echo").await;
    let mut client = EchoClient::new(grpc_channel(addr, "echo.demo:8080").await.unwrap());
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tx.send(EchoRequest {
        message: "one".into(),
        repeat: 0,
    })
    .await
    .unwrap();
    let mut replies = client
        .bidi(ReceiverStream::new(rx))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(replies.message().await.unwrap().unwrap().message, "one");
    tx.send(EchoRequest {
        message: "two".into(),
        repeat: 0,
    })
    .await
    .unwrap();
    let two = replies.message().await.unwrap().unwrap();
    assert_eq!(
        (two.message.as_str(), two.seen_authority.as_str()),
        ("two", "echo.demo:8080")
    );
    drop(tx);
    assert!(replies.message().await.unwrap().is_none());

    let stream = client
        .server_stream(EchoRequest {
            message: "n".into(),
            repeat: 3,
        })
        .await
        .unwrap();
    let messages: Vec<String> = stream
        .into_inner()
        .map(|r| r.unwrap().message)
        .collect::<Vec<_>>()
        .await;
    assert_eq!(messages, ["n 0", "n 1", "n 2"]);
}

// ---- TCP modes ----

#[tokio::test]
async fn banner_speaks_first_echoes_lines_and_quits() {
    let (_srv, addr) = testsrv("banner", "smtp").await;
    let stream = TcpStream::connect(addr).await.unwrap();
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read);
    let mut line = String::new();
    lines.read_line(&mut line).await.unwrap();
    assert_eq!(line, "220 smtp ready\r\n");
    write.write_all(b"HELO test\r\n").await.unwrap();
    line.clear();
    lines.read_line(&mut line).await.unwrap();
    assert_eq!(line, "echo: HELO test\r\n");
    write.write_all(b"QUIT\r\n").await.unwrap();
    let mut rest = Vec::new();
    lines.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
}

#[tokio::test]
async fn tcp_echo_with_half_close() {
    let (_srv, addr) = testsrv("tcp-echo", "echo").await;
    let data: Vec<u8> = (0..1_000_000u32).map(|i| (i % 253) as u8).collect();
    let (mut read, mut write) = TcpStream::connect(addr).await.unwrap().into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        write.write_all(&sent).await.unwrap();
        write.shutdown().await.unwrap(); // half-close: the echo must still arrive whole
        write
    });
    let mut echoed = Vec::new();
    read.read_to_end(&mut echoed).await.unwrap();
    let _write = writer.await.unwrap();
    assert_eq!(echoed.len(), data.len());
    assert!(echoed == data);
}

#[tokio::test]
async fn connect_tunnel_through_a_minimal_http_proxy() {
    let (_srv, banner) = testsrv("banner", "db").await;
    let proxy = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy_addr = proxy.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut client, _) = proxy.accept().await.unwrap();
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            head.push(client.read_u8().await.unwrap());
        }
        let head = String::from_utf8(head).unwrap();
        let target = head.split_whitespace().nth(1).unwrap().to_owned();
        assert!(head.starts_with("CONNECT "), "{head}");
        let mut upstream = TcpStream::connect(target).await.unwrap();
        client
            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
            .await
            .unwrap();
        let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
    });
    let tunnel = http_connect_tunnel(proxy_addr, &banner.to_string())
        .await
        .unwrap();
    let mut lines = BufReader::new(tunnel);
    let mut line = String::new();
    lines.read_line(&mut line).await.unwrap();
    assert_eq!(line, "220 db ready\r\n");
}

// ---- harness ----

#[tokio::test]
async fn process_guard_reports_memory_and_terminates() {
    let (mut srv, addr) = testsrv("http", "web").await;
    assert!(srv.pid() > 0);
    assert!(srv.is_running());
    let rss = srv.rss_bytes();
    assert!(rss > 100 * 1024, "rss {rss}");
    assert!(srv.peak_rss_bytes() >= rss);
    assert!(srv.log().contains(&format!("listening {addr}")));
    let status = srv.terminate(Duration::from_secs(10)).await.unwrap();
    assert!(status.success(), "{status}");
    assert!(!srv.is_running());
}

#[tokio::test]
async fn waits_succeed_and_time_out() {
    let (_srv, addr) = testsrv("http", "web").await;
    wait_for_tcp(addr, Duration::from_secs(5)).await.unwrap();
    wait_for_http_ok(&format!("http://{addr}/"), Duration::from_secs(5))
        .await
        .unwrap();
    let error = wait_for_http_ok(
        &format!("http://{addr}/status/503"),
        Duration::from_millis(200),
    )
    .await
    .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
    assert!(error.to_string().contains("503"), "{error}");

    let nobody = free_addr();
    let error = wait_for_tcp(nobody, Duration::from_millis(200))
        .await
        .unwrap_err();
    assert_eq!(error.kind(), std::io::ErrorKind::TimedOut);
}

#[test]
fn test_dir_is_written_and_removed() {
    let dir = TestDir::new("selftest");
    let path = dir.write("sub/mesh.yaml", "services: []\n");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "services: []\n");
    assert!(path.starts_with(std::env::temp_dir()));
    let root = dir.path().to_path_buf();
    drop(dir);
    assert_eq!(
        root.exists(),
        std::env::var_os("STRAIT_KEEP_TEST_DIRS").is_some()
    );
}

#[test]
#[should_panic(expected = "cargo build --workspace --bins")]
fn missing_binary_says_how_to_build_it() {
    bin("strait-no-such-binary");
}

#[test]
fn free_ports_are_bindable() {
    let port = free_port();
    assert_ne!(port, 0);
    std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
}

// ---- metrics parser ----

const SAMPLE: &str = r#"# HELP strait_requests_total Requests handled.
# TYPE strait_requests_total counter
strait_requests_total{direction="outbound",dst_service="web",status_code="200"} 7
strait_requests_total{direction="outbound",dst_service="web",status_code="503"} 2
strait_requests_total{direction="inbound",dst_service="web",status_code="200"} 1e1
strait_requests_total{direction="outbound",dst_service="api",status_code="200",} 4 1700000000000
# TYPE strait_request_duration_seconds histogram
strait_request_duration_seconds_bucket{dst_service="web",le="0.1"} 3
strait_request_duration_seconds_bucket{dst_service="web",le="+Inf"} 9
strait_request_duration_seconds_sum{dst_service="web"} 1.5
strait_request_duration_seconds_count{dst_service="web"} 9
strait_discovery_connected 1
strait_weird{path="a\"b\\c\nd"} NaN
"#;

#[test]
fn metrics_values_sum_matching_series() {
    use metrics::value;
    assert_eq!(value(SAMPLE, "strait_requests_total", &[]), 23.0);
    assert_eq!(
        value(
            SAMPLE,
            "strait_requests_total",
            &[("direction", "outbound")]
        ),
        13.0
    );
    assert_eq!(
        value(
            SAMPLE,
            "strait_requests_total",
            &[("dst_service", "web"), ("status_code", "200")]
        ),
        17.0
    );
    assert_eq!(
        value(SAMPLE, "strait_requests_total", &[("dst_service", "nope")]),
        0.0
    );
    assert_eq!(
        value(
            SAMPLE,
            "strait_request_duration_seconds_count",
            &[("dst_service", "web")]
        ),
        9.0
    );
    assert_eq!(
        value(
            SAMPLE,
            "strait_request_duration_seconds_bucket",
            &[("le", "+Inf")]
        ),
        9.0
    );
    assert_eq!(value(SAMPLE, "strait_discovery_connected", &[]), 1.0);
    assert_eq!(value(SAMPLE, "strait_missing", &[]), 0.0);
    let weird = metrics::series(SAMPLE, "strait_weird", &[]);
    assert_eq!(weird[0].label("path"), Some("a\"b\\c\nd"));
    assert!(weird[0].value.is_nan());
}

#[test]
fn metrics_parser_rejects_broken_text() {
    for bad in [
        "9bad_name 1",
        "m{a=\"1\"",
        "m{a=1} 1",
        "m{a=\"1\",a=\"2\"} 1",
        "m{a=\"\\x\"} 1",
        "m one",
        "m 1 2 3",
        "m{a=\"1\"} 1\nm{a=\"1\"} 2",
        "# TYPE m countr",
    ] {
        assert!(metrics::parse(bad).is_err(), "accepted {bad:?}");
    }
}
