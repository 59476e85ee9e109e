//! The probe client behind `GET /app-probe/<container>/<kind>`: runs one of the application's own
//! kubelet probes (`STRAIT_APP_PROBES`) against 127.0.0.1 inside the pod, as kubelet would have run it
//! against the pod IP.
//!
//! Why: with a strict inbound side, kubelet (no mesh identity) can no longer reach the application's
//! port, so the injector points the probes at the admin port and the proxy runs them. The proxy's
//! own connections are exempt from interception (its UID), so the probe reaches the application
//! directly, not through the mesh. What kubelet does is kept where it matters to the outcome: the
//! timeout covers the whole probe, HTTPS is not verified, `Host` defaults to `<pod IP>:<port>`,
//! `User-Agent` is kubelet's own and `Accept` is `*/*` unless the probe sets them, 200..=399 pass,
//! at most 10 KiB of the body is read, and a TCP probe only connects. Unlike kubelet, redirects are
//! not followed: the 3xx is answered (a pass for kubelet) without its `Location`.
//!
//! Each probe holds one of a few permits while it runs: the admin port is reachable from the
//! cluster, and a flood of probe requests must not turn into a flood of connections to the app.

mod insecure_tls;

use std::{
    collections::HashSet,
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    pin::pin,
    sync::{Arc, OnceLock},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use futures_util::future::{Either, select};
use http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::TcpStream,
    sync::Semaphore,
    time::{Instant, timeout_at},
};

use crate::config::{AppProbe, AppProbes, HttpProbe, ProbeAction};

/// Probes that may run at once; kubelet runs at most three per container, a few containers per pod.
pub const MAX_CONCURRENT_PROBES: usize = 8;
/// kubelet reads this much of a probe's response body.
pub const MAX_BODY_BYTES: usize = 10 * 1024;
/// When the caller is not kubelet (a person with curl, say).
const DEFAULT_USER_AGENT: &str = "kube-probe/strait";

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error("too many probes in flight: none finished within the probe's timeout ({0:?})")]
    Busy(Duration),
    #[error("no answer within the probe's timeout ({0:?})")]
    Timeout(Duration),
    #[error("connecting to {0}: {1}")]
    Connect(SocketAddr, io::Error),
    #[error("setting up the TLS client: {0}")]
    TlsConfig(rustls::Error),
    #[error("TLS handshake with {0}: {1}")]
    Tls(SocketAddr, io::Error),
    #[error("building the request: {0}")]
    Request(#[from] http::Error),
    #[error("HTTP exchange with {0}: {1}")]
    Http(SocketAddr, hyper::Error),
    #[error("the application answered {0}")]
    Status(StatusCode),
}

/// A passed probe: the application's status (200..=399) and the start of its body.
#[derive(Debug)]
pub struct Passed {
    pub status: StatusCode,
    pub body: Bytes,
}

/// What the proxy knows of the probe request it answers.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The address the caller reached the admin port on (the pod IP for kubelet): the default `Host`.
    pub local_ip: IpAddr,
    /// The caller's `User-Agent` (kubelet's `kube-probe/<version>` is passed on).
    pub user_agent: Option<HeaderValue>,
}

pub struct Prober {
    probes: AppProbes,
    permits: Semaphore,
    /// Built on the first HTTPS probe.
    tls: OnceLock<Result<Arc<rustls::ClientConfig>, rustls::Error>>,
}

impl Prober {
    pub fn new(probes: AppProbes) -> Self {
        Prober { probes, permits: Semaphore::new(MAX_CONCURRENT_PROBES), tls: OnceLock::new() }
    }

    pub fn get(&self, container: &str, kind: &str) -> Option<&AppProbe> {
        self.probes.get(container, kind)
    }

    /// Runs `probe` once; waiting for a permit counts against its timeout.
    pub async fn run(&self, probe: &AppProbe, caller: &Caller) -> Result<Passed, ProbeError> {
        let deadline = Instant::now() + probe.timeout;
        let _permit = match timeout_at(deadline, self.permits.acquire()).await {
            Ok(Ok(permit)) => permit,
            // The semaphore is never closed; a closed one would be as good as none free.
            Ok(Err(_)) | Err(_) => return Err(ProbeError::Busy(probe.timeout)),
        };
        timeout_at(deadline, self.attempt(probe, caller)).await.map_err(|_| ProbeError::Timeout(probe.timeout))?
    }

    async fn attempt(&self, probe: &AppProbe, caller: &Caller) -> Result<Passed, ProbeError> {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, probe.port));
        let tcp = TcpStream::connect(addr).await.map_err(|e| ProbeError::Connect(addr, e))?;
        let http = match &probe.action {
            ProbeAction::Tcp => return Ok(Passed { status: StatusCode::OK, body: Bytes::from_static(b"connected\n") }),
            ProbeAction::Http(http) => http,
        };
        let _ = tcp.set_nodelay(true);
        let request = request(http, probe.port, caller)?;
        let (status, body) = if http.https {
            let config = self.tls.get_or_init(insecure_tls::client_config).clone().map_err(ProbeError::TlsConfig)?;
            let name = ServerName::IpAddress(addr.ip().into());
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|e| ProbeError::Tls(addr, e))?;
            exchange(tls, request).await
        } else {
            exchange(tcp, request).await
        }
        .map_err(|e| ProbeError::Http(addr, e))?;
        if (200..400).contains(&status.as_u16()) {
            Ok(Passed { status, body })
        } else {
            Err(ProbeError::Status(status))
        }
    }
}

/// The request kubelet would send: `GET <path>`, `Host`, `User-Agent`, `Accept`, the probe's headers
/// (a name they set replaces the default), and no keep-alive.
fn request(probe: &HttpProbe, port: u16, caller: &Caller) -> Result<http::Request<Empty<Bytes>>, ProbeError> {
    let host = match &probe.host {
        Some(h) => h.clone(),
        None => HeaderValue::try_from(SocketAddr::new(caller.local_ip.to_canonical(), port).to_string())
            .map_err(http::Error::from)?,
    };
    let user_agent = caller
        .user_agent
        .clone()
        .filter(|ua| ua.as_bytes().starts_with(b"kube-probe/"))
        .unwrap_or(HeaderValue::from_static(DEFAULT_USER_AGENT));
    let mut headers = HeaderMap::new();
    headers.insert(header::USER_AGENT, user_agent);
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    let mut replaced = HashSet::new();
    for (name, value) in &probe.headers {
        if replaced.insert(name) {
            headers.remove(name);
        }
        headers.append(name, value.clone());
    }
    headers.insert(header::HOST, host);
    headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
    let mut request = http::Request::get(Uri::from(probe.path.clone())).body(Empty::new())?;
    *request.headers_mut() = headers;
    Ok(request)
}

/// One HTTP/1.1 exchange on `io`: the status and up to [`MAX_BODY_BYTES`] of the body. The
/// connection is driven here, not in a task of its own, so a caller that gives up (the timeout)
/// closes it by dropping this future.
async fn exchange<T>(io: T, request: http::Request<Empty<Bytes>>) -> Result<(StatusCode, Bytes), hyper::Error>
where
    T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    let response = async move {
        let response = sender.send_request(request).await?;
        let status = response.status();
        let mut body = response.into_body();
        let mut got = BytesMut::new();
        while got.len() < MAX_BODY_BYTES {
            match body.frame().await {
                None => break,
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        got.extend_from_slice(&data);
                    }
                }
            }
        }
        got.truncate(MAX_BODY_BYTES);
        Ok((status, got.freeze()))
    };
    match select(pin!(response), pin!(conn)).await {
        Either::Left((result, _conn)) => result,
        // The connection ended (the server closed it after the response, say): what was received
        // is still read; a connection that failed fails the response too.
        Either::Right((_, response)) => response.await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DEFAULT_PROBE_TIMEOUT;
    use http::HeaderName;
    use tokio::{
        io::{AsyncReadExt, AsyncWriteExt},
        net::TcpListener,
    };

    fn caller() -> Caller {
        Caller { local_ip: "10.1.2.3".parse().unwrap(), user_agent: Some(HeaderValue::from_static("kube-probe/1.31")) }
    }

    fn http_probe(port: u16, https: bool, headers: &[(&'static str, &'static str)]) -> AppProbe {
        AppProbe {
            port,
            timeout: DEFAULT_PROBE_TIMEOUT,
            action: ProbeAction::Http(HttpProbe {
                https,
                path: "/healthz?x=1".parse().unwrap(),
                host: None,
                headers: headers
                    .iter()
                    .map(|(n, v)| (HeaderName::from_static(n), HeaderValue::from_static(v)))
                    .collect(),
            }),
        }
    }

    /// Accepts one connection, returns what the client sent up to the end of its head, answers `answer`.
    async fn one_shot(answer: &'static [u8]) -> (u16, tokio::task::JoinHandle<String>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let head = read_head(&mut s).await;
            s.write_all(answer).await.unwrap();
            head
        });
        (port, task)
    }

    async fn read_head<S: AsyncRead + Unpin>(s: &mut S) -> String {
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") && s.read(&mut byte).await.unwrap() == 1 {
            head.push(byte[0]);
        }
        String::from_utf8(head).unwrap()
    }

    #[tokio::test]
    async fn sends_what_kubelet_sends() {
        let (port, server) = one_shot(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        let prober = Prober::new(AppProbes::default());
        let passed =
            prober.run(&http_probe(port, false, &[("accept", "application/json"), ("x-a", "1")]), &caller()).await;
        assert_eq!(passed.unwrap().status, 204);
        let head = server.await.unwrap().to_lowercase();
        assert!(head.starts_with("get /healthz?x=1 http/1.1\r\n"), "{head}");
        for line in
            [&format!("host: 10.1.2.3:{port}"), "user-agent: kube-probe/1.31", "accept: application/json", "x-a: 1"]
        {
            assert!(head.contains(&format!("{line}\r\n")), "{line} missing:\n{head}");
        }
        assert!(!head.contains("*/*"), "the probe's Accept replaces the default:\n{head}");
    }

    #[tokio::test]
    async fn classifies_statuses_and_failures() {
        let prober = Prober::new(AppProbes::default());
        let (port, _s) = one_shot(b"HTTP/1.1 302 Found\r\nlocation: /x\r\ncontent-length: 0\r\n\r\n").await;
        assert_eq!(prober.run(&http_probe(port, false, &[]), &caller()).await.unwrap().status, 302);
        let (port, _s) = one_shot(b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 4\r\n\r\nbad!").await;
        let e = prober.run(&http_probe(port, false, &[]), &caller()).await.unwrap_err();
        assert!(matches!(e, ProbeError::Status(s) if s == 500), "{e}");
        let (port, _s) = one_shot(b"garbage\r\n\r\n").await;
        let e = prober.run(&http_probe(port, false, &[]), &caller()).await.unwrap_err();
        assert!(matches!(e, ProbeError::Http(..)), "{e}");
        // A listener that never answers: the timeout (tokio's clock is real here, 1 s).
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        let e = prober.run(&http_probe(port, false, &[]), &caller()).await.unwrap_err();
        assert!(matches!(e, ProbeError::Timeout(_)), "{e}");
        drop(l);
        let tcp = AppProbe { port, timeout: DEFAULT_PROBE_TIMEOUT, action: ProbeAction::Tcp };
        assert!(matches!(prober.run(&tcp, &caller()).await.unwrap_err(), ProbeError::Connect(..)));
    }

    #[tokio::test]
    async fn reads_at_most_ten_kib_of_the_body() {
        static BIG: std::sync::LazyLock<Vec<u8>> = std::sync::LazyLock::new(|| {
            let mut r = b"HTTP/1.1 200 OK\r\ncontent-length: 20000\r\n\r\n".to_vec();
            r.extend(std::iter::repeat_n(b'x', 20000));
            r
        });
        let (port, _s) = one_shot(&BIG).await;
        let passed = Prober::new(AppProbes::default()).run(&http_probe(port, false, &[]), &caller()).await.unwrap();
        assert_eq!(passed.body.len(), MAX_BODY_BYTES);
    }

    #[tokio::test]
    async fn https_accepts_a_self_signed_certificate() {
        let cert = rcgen::generate_simple_self_signed(vec!["app.example".into()]).unwrap();
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let server = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.cert.der().clone()], key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            let (tcp, _) = l.accept().await.unwrap();
            let mut tls = acceptor.accept(tcp).await.unwrap();
            read_head(&mut tls).await;
            tls.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").await.unwrap();
            tls.shutdown().await.unwrap();
        });
        let passed = Prober::new(AppProbes::default()).run(&http_probe(port, true, &[]), &caller()).await.unwrap();
        assert_eq!((passed.status, &passed.body[..]), (StatusCode::OK, &b"ok"[..]));
    }

    #[tokio::test]
    async fn probes_wait_for_a_permit_within_their_timeout() {
        let prober = Prober::new(AppProbes::default());
        let _all = prober.permits.acquire_many(MAX_CONCURRENT_PROBES as u32).await.unwrap();
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let probe = AppProbe {
            port: l.local_addr().unwrap().port(),
            timeout: Duration::from_millis(50),
            action: ProbeAction::Tcp,
        };
        assert!(matches!(prober.run(&probe, &caller()).await.unwrap_err(), ProbeError::Busy(_)));
    }
}
