//! Obtains and renews the proxy's certificate: a fresh ECDSA P-256 key in memory, a CSR, the
//! workload's token, `Identity.Certify`; renewal at 70 % of the lifetime (with jitter so a fleet
//! does not renew in step), retries with backoff, and the current certificate kept while it is
//! still valid. The token goes only over TLS to a controller that proves the identity service's
//! SPIFFE identity with a certificate chained to the trust anchors.

use std::{
    path::PathBuf,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    sign::CertifiedKey,
};
use strait_proto::identity::v1::{CertifyRequest, identity_client::IdentityClient};

use super::Store;
use crate::metrics::Metrics;

/// Renew when this share of the lifetime has passed (DESIGN §4).
const RENEW_AT: f64 = 0.7;
/// Up to this share of the lifetime is added or removed at random from the renewal time.
const RENEW_JITTER: f64 = 0.05;
/// The shortest wait before a renewal: a certificate that looks almost expired when it arrives
/// (a clock far off the controller's) must not make the proxy ask again every second.
const MIN_RENEW_WAIT: Duration = Duration::from_secs(5);
const RETRY_MIN: Duration = Duration::from_millis(200);
const RETRY_MAX: Duration = Duration::from_secs(30);

pub struct Certifier {
    pub addr: String,
    /// The identity the identity service must prove.
    pub server_id: String,
    /// The anchors (and the TLS client) the controller's certificate is checked with.
    pub tls: Arc<crate::tls::Tls>,
    pub workload: String,
    pub token_file: Option<PathBuf>,
    pub store: Arc<Store>,
    pub metrics: Metrics,
    pub dns: crate::dns::Dns,
}

#[derive(Debug, thiserror::Error)]
pub enum CertifyError {
    #[error("reading the identity token {0}: {1}")]
    Token(String, std::io::Error),
    #[error("making the key or CSR: {0}")]
    Key(#[from] rcgen::Error),
    #[error("controller address: {0}")]
    Address(std::io::Error),
    #[error("connecting to the identity service: {0}")]
    Connect(String),
    #[error("identity service refused: {0}")]
    Refused(#[from] tonic::Status),
    #[error("the certificate's key cannot be used: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("the controller returned an empty certificate")]
    Empty,
}

impl Certifier {
    /// Runs forever: certify, sleep until renewal, repeat.
    pub async fn run(self) {
        let mut retry = RETRY_MIN;
        loop {
            match self.certify_once().await {
                Ok(not_after) => {
                    retry = RETRY_MIN;
                    let now = now_unix();
                    let lifetime = not_after.saturating_sub(now) as f64;
                    let jitter = (fastrand::f64() * 2.0 - 1.0) * RENEW_JITTER;
                    let wait = Duration::from_secs_f64(lifetime * (RENEW_AT + jitter)).max(MIN_RENEW_WAIT);
                    tracing::info!(identity = %self.store.spiffe, expires_in = ?Duration::from_secs(lifetime as u64), renew_in = ?wait, "certificate obtained");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => {
                    self.metrics.identity_certify.with_label_values(&["error"]).inc();
                    tracing::warn!(identity = %self.store.spiffe, error = %e, retry_in = ?retry, "certification failed; keeping the current certificate");
                    tokio::time::sleep(retry.mul_f64(0.5 + fastrand::f64() * 0.5)).await;
                    retry = (retry * 2).min(RETRY_MAX);
                }
            }
        }
    }

    async fn certify_once(&self) -> Result<u64, CertifyError> {
        let token = match &self.token_file {
            Some(p) => tokio::fs::read_to_string(p)
                .await
                .map_err(|e| CertifyError::Token(p.display().to_string(), e))?
                .trim()
                .to_string(),
            None => String::new(),
        };
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)?;
        let mut params = rcgen::CertificateParams::default();
        params.subject_alt_names =
            vec![rcgen::SanType::URI(rcgen::string::Ia5String::try_from(self.store.spiffe.to_string())?)];
        let csr = params.serialize_request(&key)?;
        let (tls, server_id) = (self.tls.clone(), self.server_id.clone());
        let connector = tower::service_fn(move |uri: http::Uri| {
            let (tls, server_id) = (tls.clone(), server_id.clone());
            async move {
                let authority = uri.authority().map(|a| a.as_str().to_string()).unwrap_or_default();
                let tcp = tokio::net::TcpStream::connect(authority).await?;
                let _ = tcp.set_nodelay(true);
                let stream = tls.connect(tcp, &server_id).await.map_err(|e| match e {
                    crate::tls::HandshakeError::IdentityMismatch(e) => std::io::Error::other(format!(
                        "the identity service did not prove {server_id} (STRAIT_IDENTITY_SERVER_ID): {e}"
                    )),
                    other => std::io::Error::other(other),
                })?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(stream))
            }
        });
        let channel = crate::dns::grpc_endpoint(&self.dns, &self.addr, Duration::from_secs(2))
            .await
            .map_err(CertifyError::Address)?
            .timeout(Duration::from_secs(10))
            .connect_with_connector(connector)
            .await
            .map_err(|e| CertifyError::Connect(with_sources(&e)))?;
        let rsp = IdentityClient::new(channel)
            .certify(CertifyRequest {
                identity: self.store.spiffe.to_string(),
                token,
                csr_der: csr.der().to_vec(),
                workload: self.workload.clone(),
            })
            .await?
            .into_inner();
        if rsp.leaf_der.is_empty() {
            return Err(CertifyError::Empty);
        }
        let mut chain = vec![CertificateDer::from(rsp.leaf_der)];
        chain.extend(rsp.chain_der.into_iter().map(CertificateDer::from));
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let provider = rustls::crypto::ring::default_provider();
        let signing = provider.key_provider.load_private_key(der)?;
        self.store.set(Arc::new(CertifiedKey::new(chain, signing)), rsp.not_after_unix);
        self.metrics.identity_certify.with_label_values(&["ok"]).inc();
        self.metrics.identity_expiry.set(rsp.not_after_unix as i64);
        Ok(rsp.not_after_unix)
    }
}

/// An error and its sources, `: `-separated (tonic's own message is only "transport error").
fn with_sources(e: &dyn std::error::Error) -> String {
    let mut message = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
