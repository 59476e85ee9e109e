//! Mutual TLS between proxies (rustls, ring provider for the whole workspace).
//!
//! Client side: the server's certificate must chain to the trust anchors and carry, as its URI
//! SAN, the identity discovery promised for that endpoint. Server side: a client certificate
//! chained to the anchors is required, and its URI SAN becomes the peer's identity. Certificates
//! come from the identity store at every handshake; the anchors file is re-read when it changes,
//! so an anchor rotation needs no restart. Anchors given as text (`STRAIT_TRUST_ANCHORS_PEM`, as the
//! injector does) never change: a rotation there is a rollout.
//!
//! Every handshake this side starts is bounded (`STRAIT_TLS_HANDSHAKE_TIMEOUT`): a peer that
//! accepts TCP and then stalls fails the connect instead of holding the caller (and anything
//! waiting on the same endpoint) forever.

mod resolve;
mod verify;

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
    time::Duration,
};

use rustls::{
    ClientConfig, RootCertStore, ServerConfig,
    pki_types::{CertificateDer, ServerName, pem::PemObject},
    server::WebPkiClientVerifier,
};
use tokio::net::TcpStream;

use crate::identity::{self, Store};

pub type ClientStream = tokio_rustls::client::TlsStream<TcpStream>;
pub type ServerStream = tokio_rustls::server::TlsStream<TcpStream>;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("reading trust anchors {0}: {1}")]
    Anchors(String, String),
    #[error("no trust anchors in {0}")]
    NoAnchors(String),
    #[error(transparent)]
    Rustls(#[from] rustls::Error),
    #[error("building the client certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

pub struct Tls {
    pub store: Arc<Store>,
    handshake_timeout: Duration,
    /// `None`: the anchors came as text and are never re-read.
    anchors_path: Option<PathBuf>,
    configs: RwLock<Configs>,
}

struct Configs {
    client: Arc<ClientConfig>,
    server: Arc<ServerConfig>,
    anchors_pem: Vec<u8>,
}

/// A failed handshake, sorted by what it means to the caller.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("the peer's identity is not the one discovery promised: {0}")]
    IdentityMismatch(std::io::Error),
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
    #[error("{0:?} is not a valid identity")]
    BadIdentity(String),
    #[error("TLS handshake did not complete within {0:?}")]
    TimedOut(Duration),
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// `handshake_timeout` bounds every handshake [`Tls::connect`] starts.
    pub fn new(anchors_path: &Path, store: Arc<Store>, handshake_timeout: Duration) -> Result<Arc<Self>, TlsError> {
        let pem = std::fs::read(anchors_path)
            .map_err(|e| TlsError::Anchors(anchors_path.display().to_string(), e.to_string()))?;
        let configs = build(&pem, &anchors_path.display().to_string(), &store)?;
        Ok(Arc::new(Tls {
            store,
            handshake_timeout,
            anchors_path: Some(anchors_path.to_path_buf()),
            configs: RwLock::new(configs),
        }))
    }

    /// The anchors as PEM text (`STRAIT_TRUST_ANCHORS_PEM`).
    pub fn from_pem(pem: &str, store: Arc<Store>, handshake_timeout: Duration) -> Result<Arc<Self>, TlsError> {
        let configs = build(pem.as_bytes(), "STRAIT_TRUST_ANCHORS_PEM", &store)?;
        Ok(Arc::new(Tls { store, handshake_timeout, anchors_path: None, configs: RwLock::new(configs) }))
    }

    /// Re-reads the anchors file; a bad file is reported and the current anchors kept. Anchors
    /// given as text never change.
    pub fn reload_anchors(&self) -> Result<bool, TlsError> {
        let Some(path) = &self.anchors_path else { return Ok(false) };
        let pem = std::fs::read(path).map_err(|e| TlsError::Anchors(path.display().to_string(), e.to_string()))?;
        if self.configs.read().unwrap_or_else(|p| p.into_inner()).anchors_pem == pem {
            return Ok(false);
        }
        let c = build(&pem, &path.display().to_string(), &self.store)?;
        *self.configs.write().unwrap_or_else(|p| p.into_inner()) = c;
        Ok(true)
    }

    fn client_config(&self) -> Arc<ClientConfig> {
        self.configs.read().unwrap_or_else(|p| p.into_inner()).client.clone()
    }

    pub fn server_config(&self) -> Arc<ServerConfig> {
        self.configs.read().unwrap_or_else(|p| p.into_inner()).server.clone()
    }

    /// Opens mTLS to a peer proxy that must prove `identity`.
    pub async fn connect(&self, tcp: TcpStream, identity: &str) -> Result<ClientStream, HandshakeError> {
        let name = identity::server_name_for(identity).ok_or_else(|| HandshakeError::BadIdentity(identity.into()))?;
        let name = ServerName::try_from(name).map_err(|_| HandshakeError::BadIdentity(identity.into()))?;
        let connector = tokio_rustls::TlsConnector::from(self.client_config());
        let handshake = tokio::time::timeout(self.handshake_timeout, connector.connect(name, tcp));
        let Ok(done) = handshake.await else { return Err(HandshakeError::TimedOut(self.handshake_timeout)) };
        done.map_err(|e| {
            let mismatch = e
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
                .is_some_and(|r| matches!(r, rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForName)));
            if mismatch { HandshakeError::IdentityMismatch(e) } else { HandshakeError::Failed(e) }
        })
    }
}

/// The identity (URI SAN) of a verified peer certificate.
pub fn peer_identity(certs: Option<&[CertificateDer<'_>]>) -> Option<Arc<str>> {
    let leaf = certs?.first()?;
    let ee = webpki::EndEntityCert::try_from(leaf).ok()?;
    ee.valid_uri_names().find(|u| u.starts_with("spiffe://")).map(Arc::from)
}

/// `source` names where the anchors came from, for errors.
fn build(pem: &[u8], source: &str, store: &Arc<Store>) -> Result<Configs, TlsError> {
    let mut roots = RootCertStore::empty();
    let mut anchors = Vec::new();
    for cert in CertificateDer::pem_slice_iter(pem) {
        let cert = cert.map_err(|e| TlsError::Anchors(source.to_string(), e.to_string()))?;
        roots.add(cert.clone())?;
        anchors.push(
            webpki::anchor_from_trusted_cert(&cert)
                .map_err(|e| TlsError::Anchors(source.to_string(), format!("{e:?}")))?
                .to_owned(),
        );
    }
    if anchors.is_empty() {
        return Err(TlsError::NoAnchors(source.to_string()));
    }
    let provider = provider();
    let resolver = Arc::new(resolve::FromStore(store.clone()));
    let client = ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verify::SpiffeServerVerifier::new(anchors, provider.clone())))
        .with_client_cert_resolver(resolver.clone());
    let client_verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone()).build()?;
    let server = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(client_verifier)
        .with_cert_resolver(resolver);
    Ok(Configs { client: Arc::new(client), server: Arc::new(server), anchors_pem: pem.to_vec() })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> Arc<Store> {
        Store::new("spiffe://cluster.local/ns/a/sa/b".into(), "b.a.serviceaccount.identity.cluster.local".into())
    }

    #[test]
    fn anchors_as_text_are_checked_and_never_reloaded() {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        let tls = Tls::from_pem(&pem, store(), crate::config::DEFAULT_TLS_HANDSHAKE_TIMEOUT).unwrap();
        assert!(!tls.reload_anchors().unwrap());
        let e = Tls::from_pem("not a certificate", store(), crate::config::DEFAULT_TLS_HANDSHAKE_TIMEOUT).err().unwrap();
        assert!(e.to_string().contains("STRAIT_TRUST_ANCHORS_PEM"), "{e}");
    }
}
