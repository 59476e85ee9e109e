//! `strait.identity.v1.Identity/Certify`: a proxy sends a CSR, the SPIFFE ID it wants and a token;
//! the controller signs only when the token proves exactly that ID in the mesh's trust domain.
//! Every answer is counted in `strait_controller_certificates_issued_total{result}`.

use std::{sync::Arc, time::Duration};

use strait_proto::identity::v1::{CertifyRequest, CertifyResponse, identity_server::Identity};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::{
    SpiffeId,
    auth::{AuthError, Authenticator, Proof},
    ca::{Ca, CaError},
};
use crate::{metrics::Metrics, store::MeshStatus};

/// Values of the `result` label, in the order they are checked.
pub const RESULTS: [&str; 6] = ["ok", "invalid", "unauthenticated", "denied", "unavailable", "error"];

/// A CSR is a few hundred bytes; anything much bigger is not one.
const MAX_CSR_BYTES: usize = 16 * 1024;

pub struct IdentityService {
    ca: Arc<Ca>,
    auth: Arc<dyn Authenticator>,
    status: watch::Receiver<Arc<MeshStatus>>,
    metrics: Arc<Metrics>,
}

/// Why a request was not signed.
#[derive(Debug)]
enum Refusal {
    /// The request is malformed (identity, CSR).
    Invalid(String),
    /// The proof does not hold.
    Unauthenticated(String),
    /// The proof holds, but not for what was asked.
    Denied(String),
    /// Cannot sign now (mesh not loaded, issuer expired, token check unavailable).
    Unavailable(String),
    Internal(String),
}

impl Refusal {
    fn label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::Unauthenticated(_) => "unauthenticated",
            Self::Denied(_) => "denied",
            Self::Unavailable(_) => "unavailable",
            Self::Internal(_) => "error",
        }
    }

    fn into_status(self) -> Status {
        match self {
            Self::Invalid(m) => Status::invalid_argument(m),
            Self::Unauthenticated(m) => Status::unauthenticated(m),
            Self::Denied(m) => Status::permission_denied(m),
            Self::Unavailable(m) => Status::unavailable(m),
            Self::Internal(m) => Status::internal(m),
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Invalid(m) | Self::Unauthenticated(m) | Self::Denied(m) | Self::Unavailable(m) | Self::Internal(m) => m,
        }
    }
}

impl IdentityService {
    /// `status` gives the mesh's trust domain (the one discovery puts in endpoints' identities).
    pub fn new(
        ca: Arc<Ca>,
        auth: Arc<dyn Authenticator>,
        status: watch::Receiver<Arc<MeshStatus>>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self { ca, auth, status, metrics }
    }

    async fn certify_checked(&self, r: &CertifyRequest, peer: Option<std::net::SocketAddr>) -> Result<CertifyResponse, Refusal> {
        let trust_domain = {
            let status = self.status.borrow();
            if !status.loaded {
                return Err(Refusal::Unavailable("the mesh is not loaded yet".into()));
            }
            status.trust_domain.clone()
        };
        let requested = SpiffeId::parse(&r.identity).map_err(Refusal::Invalid)?;
        if requested.trust_domain != trust_domain {
            return Err(Refusal::Denied(format!(
                "{requested} is not in this mesh's trust domain {trust_domain:?} (check STRAIT_TRUST_DOMAIN)"
            )));
        }
        if r.csr_der.is_empty() || r.csr_der.len() > MAX_CSR_BYTES {
            return Err(Refusal::Invalid(format!("the CSR is {} bytes; expected a DER PKCS#10 request", r.csr_der.len())));
        }
        let proof = Proof { token: &r.token, workload: &r.workload, requested: &requested, peer };
        let principal = self.auth.authenticate(&proof).await.map_err(|e| match e {
            AuthError::Unauthenticated(m) => Refusal::Unauthenticated(m),
            AuthError::Denied(m) => Refusal::Denied(m),
            AuthError::Unavailable(m) => Refusal::Unavailable(m),
        })?;
        if principal.namespace != requested.namespace || principal.service_account != requested.service_account {
            let proven = SpiffeId::new(&trust_domain, &principal.namespace, &principal.service_account);
            return Err(Refusal::Denied(format!(
                "the token proves {proven}, not the requested {requested} (check STRAIT_NAMESPACE and STRAIT_SERVICE_ACCOUNT)"
            )));
        }
        let signed = self.ca.sign(&r.csr_der, &requested.to_string()).map_err(|e| match e {
            CaError::Csr(_) => Refusal::Invalid(e.to_string()),
            CaError::Expired { .. } => Refusal::Unavailable(e.to_string()),
            e => Refusal::Internal(format!("signing: {e}")),
        })?;
        Ok(CertifyResponse { leaf_der: signed.leaf_der, chain_der: signed.chain_der, not_after_unix: signed.not_after_unix })
    }
}

#[tonic::async_trait]
impl Identity for IdentityService {
    async fn certify(&self, request: Request<CertifyRequest>) -> Result<Response<CertifyResponse>, Status> {
        let peer = request.remote_addr();
        let r = request.into_inner();
        let result = self.certify_checked(&r, peer).await;
        let label = result.as_ref().map_or_else(Refusal::label, |_| "ok");
        self.metrics.certificates.with_label_values(&[label]).inc();
        match result {
            Ok(rsp) => {
                tracing::info!(identity = %r.identity, workload = %r.workload, peer = ?peer, not_after = rsp.not_after_unix, "certificate issued");
                Ok(Response::new(rsp))
            }
            Err(refusal) => {
                tracing::warn!(identity = %r.identity, workload = %r.workload, peer = ?peer, result = label, reason = refusal.message(), "certificate refused");
                Err(refusal.into_status())
            }
        }
    }
}

/// Re-reads the issuer files every `interval` until `shutdown`: a new issuer is used for the next
/// certificate; a bad one is reported (log, `strait_controller_issuer_reloads_total{result="error"}`)
/// and the current one keeps signing.
pub async fn watch_issuer(ca: Arc<Ca>, interval: Duration, metrics: Arc<Metrics>, shutdown: CancellationToken) {
    let watched = ca.clone();
    crate::reload::watch(watched, interval, shutdown, move |result| match result {
        Ok(()) => {
            metrics.issuer_reloads.with_label_values(&["ok"]).inc();
            metrics.issuer_expiry.set(i64::try_from(ca.issuer_not_after_unix()).unwrap_or(i64::MAX));
            tracing::info!(issuer = %ca.issuer_subject(), cert = %ca.files().cert.display(), "issuer reloaded; new certificates come from it");
        }
        Err(e) => {
            metrics.issuer_reloads.with_label_values(&["error"]).inc();
            tracing::warn!(error = %e, issuer = %ca.issuer_subject(), "issuer files changed but cannot be used; the current issuer keeps signing");
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        identity::{
            auth::{BootstrapAuthenticator, BootstrapTokens},
            ca,
        },
        mesh_file, store,
    };
    use rcgen::{CertificateParams, KeyPair};
    use strait_proto::mesh::MeshFile;
    use x509_parser::prelude::{FromDer, X509Certificate};

    const MESH: &str = r#"
trustDomain: cluster.local
workloads:
  - {name: orders-v1, namespace: demo, serviceAccount: orders, token: "orders-token"}
  - {name: web, namespace: demo, serviceAccount: web, token: "web-token"}
"#;

    struct Fixture {
        service: IdentityService,
        metrics: Arc<Metrics>,
        _dir: tempfile::TempDir,
        _shutdown: tokio_util::sync::DropGuard,
    }

    async fn fixture() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let metrics = Arc::new(Metrics::new().unwrap());
        let file = MeshFile::parse(MESH).unwrap();
        let (store, reader, publisher) = store::new("cluster.local", store::DEFAULT_PUSH_INTERVAL, metrics.clone());
        let mut rx = reader.status();
        let shutdown = CancellationToken::new();
        tokio::spawn(publisher.run(shutdown.clone()));
        store.publish(mesh_file::to_model(&file).unwrap());
        rx.wait_for(|s| s.loaded).await.unwrap();
        let (_tx, tokens) = watch::channel(Arc::new(BootstrapTokens::from_file(&file)));
        let ca = Arc::new(ca::Ca::load_or_create(dir.path(), Duration::from_secs(60)).unwrap());
        let auth = Arc::new(BootstrapAuthenticator::new(tokens));
        let service = IdentityService::new(ca, auth, rx, metrics.clone());
        Fixture { service, metrics, _dir: dir, _shutdown: shutdown.drop_guard() }
    }

    fn request(identity: &str, workload: &str, token: &str) -> CertifyRequest {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let csr = CertificateParams::default().serialize_request(&key).unwrap();
        CertifyRequest { identity: identity.into(), token: token.into(), csr_der: csr.der().to_vec(), workload: workload.into() }
    }

    #[tokio::test]
    async fn signs_exactly_what_the_token_proves() {
        let f = fixture().await;
        let rsp = f
            .service
            .certify(Request::new(request("spiffe://cluster.local/ns/demo/sa/orders", "orders-v1", "orders-token")))
            .await
            .unwrap()
            .into_inner();
        let (_, leaf) = X509Certificate::from_der(&rsp.leaf_der).unwrap();
        let san = leaf.subject_alternative_name().unwrap().unwrap();
        assert_eq!(san.value.general_names.len(), 1);
        assert_eq!(san.value.general_names[0].to_string(), "URI(spiffe://cluster.local/ns/demo/sa/orders)");
        assert_eq!(rsp.chain_der.len(), 1);
        assert_eq!(i64::try_from(rsp.not_after_unix).unwrap(), leaf.validity().not_after.timestamp());

        let refused = [
            // Wrong token, another workload's token, no token.
            (request("spiffe://cluster.local/ns/demo/sa/orders", "orders-v1", "web-token"), tonic::Code::Unauthenticated),
            (request("spiffe://cluster.local/ns/demo/sa/orders", "orders-v1", ""), tonic::Code::Unauthenticated),
            (request("spiffe://cluster.local/ns/demo/sa/orders", "ghost", "orders-token"), tonic::Code::Unauthenticated),
            // A good token, but for another service account, namespace or trust domain.
            (request("spiffe://cluster.local/ns/demo/sa/web", "orders-v1", "orders-token"), tonic::Code::PermissionDenied),
            (request("spiffe://cluster.local/ns/kube-system/sa/orders", "orders-v1", "orders-token"), tonic::Code::Unauthenticated),
            (request("spiffe://evil.org/ns/demo/sa/orders", "orders-v1", "orders-token"), tonic::Code::PermissionDenied),
            // Malformed requests.
            (request("spiffe://cluster.local/ns/demo/sa/orders/x", "orders-v1", "orders-token"), tonic::Code::InvalidArgument),
            (
                CertifyRequest { csr_der: b"not a csr".to_vec(), ..request("spiffe://cluster.local/ns/demo/sa/orders", "orders-v1", "orders-token") },
                tonic::Code::InvalidArgument,
            ),
            (
                CertifyRequest { csr_der: vec![], ..request("spiffe://cluster.local/ns/demo/sa/orders", "orders-v1", "orders-token") },
                tonic::Code::InvalidArgument,
            ),
        ];
        for (req, code) in refused {
            let what = format!("{} {} {:?}", req.identity, req.workload, req.token);
            let status = f.service.certify(Request::new(req)).await.unwrap_err();
            assert_eq!(status.code(), code, "{what}: {status:?}");
            assert!(!status.message().contains("orders-token"), "a refusal never echoes a token");
        }
        let count = |r| f.metrics.certificates.with_label_values(&[r]).get();
        assert_eq!(
            [count("ok"), count("unauthenticated"), count("denied"), count("invalid"), count("unavailable"), count("error")],
            [1, 4, 2, 3, 0, 0]
        );
    }
}
