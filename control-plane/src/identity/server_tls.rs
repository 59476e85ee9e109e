//! The identity service's own TLS. Proxies send their tokens to `Identity.Certify`, so it is never
//! served in plain text: the controller holds a certificate from its own issuer for its own SPIFFE
//! identity (`--identity-server-id`), and proxies check it against their trust anchors and that
//! identity before they send anything. Clients present no certificate (they have none yet).
//!
//! The certificate is issued at start and again at half its lifetime or when the issuer changes,
//! on the handshake that finds it due; the key stays in memory.

use std::{
    io,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rcgen::{CertificateParams, KeyPair, PKCS_ECDSA_P256_SHA256, SanType};
use rustls::{
    ServerConfig,
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::{ClientHello, ResolvesServerCert},
    sign::CertifiedKey,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::mpsc,
};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::ca::{Ca, CaError};

/// How long a client may take to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshaken connections waiting for the gRPC server to take them. The server takes them as fast
/// as they come; the bound only keeps a flood of handshakes from queueing without limit.
const ACCEPTED_QUEUE: usize = 64;

/// The controller's own certificate, kept current.
pub struct OwnCert {
    ca: Arc<Ca>,
    spiffe: String,
    current: Mutex<Issued>,
}

struct Issued {
    key: Arc<CertifiedKey>,
    renew_at: SystemTime,
    /// The issuer that signed it: another one signing now means renew.
    issuer_id: u64,
    /// Renewals failed since the last success (logged once per run of failures).
    failures: u32,
}

/// After a failed renewal, the next try waits this long: the current certificate keeps serving,
/// and a handshake does not pay for a doomed signing each time.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

impl OwnCert {
    pub fn new(ca: Arc<Ca>, spiffe: &str) -> Result<Arc<Self>, CaError> {
        let issued = issue(&ca, spiffe)?;
        Ok(Arc::new(Self { ca, spiffe: spiffe.to_string(), current: Mutex::new(issued) }))
    }

    pub fn spiffe(&self) -> &str {
        &self.spiffe
    }

    fn current(&self) -> Arc<CertifiedKey> {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        let now = SystemTime::now();
        if now >= current.renew_at || current.issuer_id != self.ca.issuer_id() {
            match issue(&self.ca, &self.spiffe) {
                Ok(issued) => *current = issued,
                Err(e) => {
                    if current.failures == 0 {
                        tracing::warn!(error = %e, identity = %self.spiffe, "renewing the identity service's certificate failed; the current one serves");
                    }
                    current.failures += 1;
                    current.renew_at = now + RETRY_AFTER_FAILURE;
                    // Also when only the issuer changed: retry on time, not on every handshake.
                    current.issuer_id = self.ca.issuer_id();
                }
            }
        }
        current.key.clone()
    }
}

impl std::fmt::Debug for OwnCert {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OwnCert").field("spiffe", &self.spiffe).finish_non_exhaustive()
    }
}

impl ResolvesServerCert for OwnCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn issue(ca: &Ca, spiffe: &str) -> Result<Issued, CaError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params.subject_alt_names = vec![SanType::URI(rcgen::string::Ia5String::try_from(spiffe.to_string())?)];
    let csr = params.serialize_request(&key)?;
    let signed = ca.sign(csr.der(), spiffe)?;
    let issuer_id = signed.issuer_id;
    let mut chain = vec![CertificateDer::from(signed.leaf_der)];
    chain.extend(signed.chain_der.into_iter().map(CertificateDer::from));
    let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
    let signing = rustls::crypto::ring::default_provider()
        .key_provider
        .load_private_key(der)
        .map_err(|e| CaError::Key(e.to_string()))?;
    let now = SystemTime::now();
    let not_after = UNIX_EPOCH + Duration::from_secs(signed.not_after_unix);
    let half = not_after.duration_since(now).unwrap_or_default() / 2;
    Ok(Issued {
        key: Arc::new(CertifiedKey::new(chain, signing)),
        renew_at: now + half,
        issuer_id,
        failures: 0,
    })
}

/// TLS 1.3, the controller's certificate, no client certificate, HTTP/2 by ALPN.
pub fn server_config(own: Arc<OwnCert>) -> Result<Arc<ServerConfig>, rustls::Error> {
    let mut config = ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(own);
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// A handshaken connection, as the gRPC server takes it.
pub struct TlsIo(tokio_rustls::server::TlsStream<TcpStream>);

impl Connected for TlsIo {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.0.get_ref().0.connect_info()
    }
}

impl AsyncRead for TlsIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl AsyncWrite for TlsIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// Accepts on `listener` and handshakes each connection on its own task; yields the ones that
/// complete. A failed or slow handshake closes only that connection.
pub fn incoming(listener: TcpListener, config: Arc<ServerConfig>, shutdown: CancellationToken) -> ReceiverStream<io::Result<TlsIo>> {
    let (tx, rx) = mpsc::channel(ACCEPTED_QUEUE);
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept() => accepted,
            };
            let (tcp, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "identity accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let _ = tcp.set_nodelay(true);
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(tls)) => {
                        let _ = tx.send(Ok(TlsIo(tls))).await;
                    }
                    Ok(Err(e)) => tracing::debug!(%peer, error = %e, "identity TLS handshake failed"),
                    Err(_) => tracing::debug!(%peer, "identity TLS handshake timed out"),
                }
            });
        }
    });
    ReceiverStream::new(rx)
}
