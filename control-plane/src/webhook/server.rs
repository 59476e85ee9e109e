//! The webhook's HTTPS server: rustls (no OpenSSL), HTTP/1.1 or HTTP/2 by ALPN, the serving
//! certificate re-read when its files change (the chart's Secret is remounted on renewal; the
//! same poller as the identity issuer, [`crate::reload`]).
//!
//! Every limit keeps a misbehaving client from holding the controller, never the API server from
//! creating a pod: a review that runs out of time is still answered `allowed: true`.

use std::{
    convert::Infallible,
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::{body::Incoming, service::service_fn};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

use super::{
    Mutator, WebhookError,
    review::{self, Decision, ReviewResult},
};
use crate::{
    metrics::Metrics,
    reload::{Reload, Seen},
};

/// The largest review read: the API server's own limit on a request body is 3 MiB, and a Pod's
/// review is that one object plus a few hundred bytes (etcd stores objects only up to 1.5 MiB), so
/// a larger body is not a Pod that could be created.
pub const DEFAULT_MAX_BODY: usize = 3 * 1024 * 1024;
/// A body over the limit is still read (and dropped) up to this much, within the deadline, so a
/// client that writes it all before reading gets the `413` instead of a broken pipe; past it the
/// connection is closed.
pub const DRAIN_LIMIT: usize = 16 * 1024 * 1024;
/// A client gets this long to send a request's headers (slow-loris protection; the API server
/// sends them at once).
pub const DEFAULT_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// And this long for its TLS handshake.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A review (reading the body, then the mutation) is answered within this: below the chart's
/// `webhook.timeoutSeconds` (5 s), so that the API server gets our "allowed, with a warning"
/// rather than timing out itself. The API server also sends its own timeout in the URL
/// (`?timeout=5s`); a shorter one than this is honoured, less [`DEADLINE_MARGIN`].
pub const DEFAULT_REVIEW_DEADLINE: Duration = Duration::from_secs(4);
/// Left of the API server's timeout for the answer to travel back.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(500);
/// Concurrent connections; more wait in the listen backlog. The API servers keep a few
/// connections each and reuse them, so this only bounds a flood.
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// What a client may cost the webhook.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub max_body: usize,
    pub header_read_timeout: Duration,
    pub handshake_timeout: Duration,
    pub review_deadline: Duration,
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body: DEFAULT_MAX_BODY,
            header_read_timeout: DEFAULT_HEADER_READ_TIMEOUT,
            handshake_timeout: DEFAULT_HANDSHAKE_TIMEOUT,
            review_deadline: DEFAULT_REVIEW_DEADLINE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// The serving certificate, from `--webhook-cert` and `--webhook-key`, kept current.
pub struct WebhookCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    seen: Seen,
}

impl std::fmt::Debug for WebhookCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookCert").field("cert", &self.cert).field("key", &self.key).finish_non_exhaustive()
    }
}

impl WebhookCert {
    /// Reads the pair; fails when it cannot serve (no certificate, a key that is not PKCS#8, SEC1
    /// or RSA, or one that does not belong to the certificate).
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, WebhookError> {
        let seen = Seen::new(fingerprint(cert, key));
        let current = load_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_path_buf(),
            key: key.to_path_buf(),
            current: RwLock::new(Arc::new(current)),
            seen,
        }))
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert
    }

    fn current(&self) -> Arc<CertifiedKey> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Reload for WebhookCert {
    type Error = WebhookError;

    /// A pair that cannot be used is reported once and the current one kept (so writing the
    /// certificate and then the key works: the second write is tried again).
    fn reload_if_changed(&self) -> Result<bool, WebhookError> {
        if !self.seen.changed(fingerprint(&self.cert, &self.key)) {
            return Ok(false);
        }
        let next = load_pair(&self.cert, &self.key)?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        Ok(true)
    }
}

impl ResolvesServerCert for WebhookCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn fingerprint(cert: &Path, key: &Path) -> u64 {
    crate::reload::fingerprint([cert, key])
}

fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, WebhookError> {
    let io = |p: &Path| {
        let p = p.to_path_buf();
        move |e| WebhookError::Io(p.display().to_string(), e)
    };
    let cert_pem = std::fs::read(cert).map_err(io(cert))?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| WebhookError::Pem(cert.display().to_string(), e.to_string()))?;
    if chain.is_empty() {
        return Err(WebhookError::NoCertificate(cert.display().to_string()));
    }
    let key_pem = std::fs::read(key).map_err(io(key))?;
    // PKCS#8, SEC1 (`EC PRIVATE KEY`, what cert-manager writes for ECDSA) and PKCS#1 RSA.
    let der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| WebhookError::Pem(key.display().to_string(), e.to_string()))?;
    let provider = rustls::crypto::ring::default_provider();
    match CertifiedKey::from_der(chain, der, &provider) {
        Ok(k) => Ok(k),
        Err(rustls::Error::InconsistentKeys(_)) => {
            Err(WebhookError::KeyMismatch { cert: cert.display().to_string(), key: key.display().to_string() })
        }
        Err(e) => Err(WebhookError::Key(key.display().to_string(), e.to_string())),
    }
}

/// TLS 1.2 or 1.3 with the webhook certificate; HTTP/2 or HTTP/1.1 by ALPN.
pub fn server_config(cert: Arc<WebhookCert>) -> Result<Arc<ServerConfig>, WebhookError> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// What each request needs.
pub struct State {
    pub mutator: Mutator,
    pub metrics: Arc<Metrics>,
    pub limits: Limits,
}

/// Serves the webhook on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, state: Arc<State>, shutdown: CancellationToken) {
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let connections = Arc::new(Semaphore::new(state.limits.max_connections.max(1)));
    loop {
        // A connection past the limit waits in the kernel's backlog until one closes.
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            permit = connections.clone().acquire_owned() => match permit {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (tcp, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "webhook accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = tcp.set_nodelay(true);
        let (acceptor, state, shutdown) = (acceptor.clone(), state.clone(), shutdown.clone());
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(state.limits.handshake_timeout, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => return tracing::debug!(%peer, error = %e, "webhook TLS handshake failed"),
                Err(_) => return tracing::debug!(%peer, "webhook TLS handshake timed out"),
            };
            let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
            let header_read_timeout = state.limits.header_read_timeout;
            let service = service_fn(move |req: Request<Incoming>| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(handle(req, &state).await) }
            });
            let io = TokioIo::new(tls);
            let served = async {
                if h2 {
                    hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                        .timer(TokioTimer::new())
                        .serve_connection(io, service)
                        .await
                } else {
                    hyper::server::conn::http1::Builder::new()
                        .timer(TokioTimer::new())
                        .header_read_timeout(header_read_timeout)
                        .serve_connection(io, service)
                        .await
                }
            };
            tokio::select! {
                result = served => if let Err(e) = result {
                    tracing::debug!(%peer, error = %e, "webhook connection ended");
                },
                _ = shutdown.cancelled() => {}
            }
        });
    }
}

/// Answers one request: `POST /inject` (a review), `GET /live`.
async fn handle(req: Request<Incoming>, state: &State) -> Response<Full<Bytes>> {
    match (req.method(), req.uri().path()) {
        (&Method::POST, "/inject") => {
            let start = Instant::now();
            let (response, result) = inject(req, state).await;
            state.metrics.webhook_reviews.with_label_values(&[result.as_str()]).inc();
            state.metrics.webhook_review_duration.observe(start.elapsed().as_secs_f64());
            response
        }
        (&Method::GET | &Method::HEAD, "/live") => text(StatusCode::OK, "live\n"),
        (_, "/inject") => text(StatusCode::METHOD_NOT_ALLOWED, "POST an AdmissionReview v1 to /inject\n"),
        _ => text(StatusCode::NOT_FOUND, "not found: the injector is POST /inject\n"),
    }
}

async fn inject(req: Request<Incoming>, state: &State) -> (Response<Full<Bytes>>, ReviewResult) {
    let deadline = Instant::now() + deadline(req.uri().query(), state.limits.review_deadline);
    let max = state.limits.max_body;
    let too_large = |drained: bool| {
        tracing::warn!(limit = max, "webhook: a body larger than the limit refused");
        let message =
            format!("the body is larger than {max} bytes, the API server's own request limit; not a Pod review\n");
        let mut r = text(StatusCode::PAYLOAD_TOO_LARGE, message);
        if !drained {
            r.headers_mut().insert(header::CONNECTION, header::HeaderValue::from_static("close"));
        }
        (r, ReviewResult::Error)
    };
    let declared = req.headers().get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT as u64) {
        return too_large(false);
    }
    let body = match read_body(req.into_body(), max, deadline).await {
        Body::Read(b) => b,
        Body::TooLarge { drained } => return too_large(drained),
        Body::Failed(e) => {
            return (text(StatusCode::BAD_REQUEST, format!("reading the body: {e}\n")), ReviewResult::Error);
        }
        Body::TimedOut => {
            return (
                text(StatusCode::REQUEST_TIMEOUT, "the body did not arrive within the review deadline\n"),
                ReviewResult::Error,
            );
        }
    };
    let parsed = match review::parse(&body) {
        Ok(p) => p,
        Err(e) => {
            tracing::warn!(error = %e, "webhook: a request that is not an AdmissionReview");
            return (
                text(StatusCode::BAD_REQUEST, format!("{e}; POST an AdmissionReview v1 (admission.k8s.io/v1)\n")),
                ReviewResult::Error,
            );
        }
    };
    let (decision, pod) = match &parsed.target {
        Err(reason) => (Decision::error(format!("{reason}; the object was admitted unchanged")), None),
        Ok(target) => {
            let pod = format!("{}/{}", target.namespace, target.display_name());
            let (mutator, target) = (state.mutator.clone(), target.clone());
            let run = tokio::task::spawn_blocking(move || review::decide(&target, &mutator));
            let decision = match tokio::time::timeout_at(deadline.into(), run).await {
                Ok(Ok(d)) => d,
                Ok(Err(e)) => {
                    Decision::error(format!("the injector failed on this pod ({e}); it was created without a proxy"))
                }
                Err(_) => Decision::error("the injector did not answer in time; the pod was created without a proxy"),
            };
            (decision, Some(pod))
        }
    };
    let pod = pod.as_deref().unwrap_or("-");
    match decision.result {
        ReviewResult::Injected => tracing::info!(uid = %parsed.uid, %pod, "webhook: injected"),
        ReviewResult::Unchanged => {
            tracing::debug!(uid = %parsed.uid, %pod, reason = decision.reason.as_deref().unwrap_or(""), "webhook: unchanged")
        }
        ReviewResult::Error => {
            tracing::warn!(uid = %parsed.uid, %pod, reason = decision.reason.as_deref().unwrap_or(""), "webhook: allowed without injection")
        }
    }
    let answer = review::answer(&parsed.uid, &parsed.api_version, &decision);
    match serde_json::to_vec(&answer) {
        Ok(body) => {
            let mut r = Response::new(Full::new(Bytes::from(body)));
            r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("application/json"));
            (r, decision.result)
        }
        Err(e) => (text(StatusCode::INTERNAL_SERVER_ERROR, format!("writing the answer: {e}\n")), ReviewResult::Error),
    }
}

enum Body {
    Read(Bytes),
    /// Over the limit; `drained` when the rest was read to its end (the connection can go on).
    TooLarge {
        drained: bool,
    },
    Failed(String),
    TimedOut,
}

/// Reads at most `max` bytes by `deadline`; a larger body is read on, and dropped, up to
/// [`DRAIN_LIMIT`].
async fn read_body(mut body: Incoming, max: usize, deadline: Instant) -> Body {
    let mut buf = bytes::BytesMut::new();
    let mut total = 0usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Err(_) => return if total > max { Body::TooLarge { drained: false } } else { Body::TimedOut },
            Ok(None) => break,
            Ok(Some(Err(e))) => return Body::Failed(e.to_string()),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total = total.saturating_add(data.len());
        if total <= max {
            buf.extend_from_slice(&data);
        } else if total > DRAIN_LIMIT {
            return Body::TooLarge { drained: false };
        } else {
            buf = bytes::BytesMut::new();
        }
    }
    if total > max { Body::TooLarge { drained: true } } else { Body::Read(buf.freeze()) }
}

/// The review's deadline: ours, or the API server's `?timeout=` less a margin when shorter.
fn deadline(query: Option<&str>, ours: Duration) -> Duration {
    let theirs = query
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|kv| kv.strip_prefix("timeout="))
        .and_then(parse_go_duration)
        .map(|t| t.saturating_sub(DEADLINE_MARGIN));
    match theirs {
        Some(t) if !t.is_zero() => t.min(ours),
        _ => ours,
    }
}

/// What Go's `time.Duration.String` writes for the API server's webhook timeouts: `5s`, `2.5s`,
/// `1m0s`, `500ms`.
fn parse_go_duration(s: &str) -> Option<Duration> {
    if let Some(ms) = s.strip_suffix("ms") {
        return ms
            .parse::<f64>()
            .ok()
            .filter(|v| v.is_finite() && *v >= 0.0)
            .map(|v| Duration::from_secs_f64(v / 1000.0));
    }
    let s = s.strip_suffix('s')?;
    let (minutes, seconds) = match s.split_once('m') {
        Some((m, s)) => (m.parse::<u64>().ok()?, s),
        None => (0, s),
    };
    let seconds = seconds.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)?;
    Some(Duration::from_secs(minutes.saturating_mul(60)) + Duration::from_secs_f64(seconds))
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain; charset=utf-8"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixture(name: &str) -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/webhook").join(name)
    }

    #[test]
    fn pkcs8_sec1_and_rsa_keys_are_accepted_and_a_foreign_key_refused() {
        for (cert, key) in [("ec.crt", "ec-sec1.key"), ("ec.crt", "ec-pkcs8.key"), ("rsa.crt", "rsa-pkcs1.key")] {
            WebhookCert::load(&fixture(cert), &fixture(key)).unwrap_or_else(|e| panic!("{cert} {key}: {e}"));
        }
        let e = WebhookCert::load(&fixture("ec.crt"), &fixture("rsa-pkcs1.key")).unwrap_err();
        assert!(matches!(e, WebhookError::KeyMismatch { .. }), "{e}");
        let e = WebhookCert::load(&fixture("ec-sec1.key"), &fixture("ec-sec1.key")).unwrap_err();
        assert!(matches!(e, WebhookError::NoCertificate(_)), "{e}");
    }

    #[test]
    fn the_pair_is_reloaded_when_it_changes_and_a_bad_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = (dir.path().join("tls.crt"), dir.path().join("tls.key"));
        std::fs::copy(fixture("ec.crt"), &cert).unwrap();
        std::fs::copy(fixture("ec-sec1.key"), &key).unwrap();
        let w = WebhookCert::load(&cert, &key).unwrap();
        assert!(!w.reload_if_changed().unwrap());
        let first = w.current().cert[0].clone();
        // The certificate first, then its key: refused once, then taken.
        std::fs::copy(fixture("rsa.crt"), &cert).unwrap();
        assert!(matches!(w.reload_if_changed(), Err(WebhookError::KeyMismatch { .. })));
        assert!(!w.reload_if_changed().unwrap(), "a refused pair is reported once");
        assert_eq!(w.current().cert[0], first, "the old pair keeps serving");
        std::fs::copy(fixture("rsa-pkcs1.key"), &key).unwrap();
        assert!(w.reload_if_changed().unwrap());
        assert_ne!(w.current().cert[0], first);
    }

    #[test]
    fn the_deadline_honours_a_shorter_api_server_timeout() {
        let ours = DEFAULT_REVIEW_DEADLINE;
        assert_eq!(deadline(None, ours), ours);
        assert_eq!(deadline(Some("timeout=10s"), ours), ours);
        assert_eq!(deadline(Some("timeout=2s"), ours), Duration::from_millis(1500));
        assert_eq!(deadline(Some("a=b&timeout=2.5s"), ours), Duration::from_secs(2));
        assert_eq!(deadline(Some("timeout=1m0s"), ours), ours);
        assert_eq!(deadline(Some("timeout=300ms"), ours), ours, "a timeout within the margin is not one to go by");
        assert_eq!(deadline(Some("timeout=junk"), ours), ours);
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
    }
}
