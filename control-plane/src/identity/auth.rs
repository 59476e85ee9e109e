//! What a proxy's token proves. The identity service asks an [`Authenticator`] who the caller is,
//! then signs only if that is exactly the identity asked for.
//!
//! Embedded mode: [`BootstrapAuthenticator`], the per-workload bootstrap tokens of the mesh file.
//! Kubernetes mode: [`super::tokenreview::TokenReviewAuthenticator`] (projected ServiceAccount
//! token, audience `identity.strait.io`, checked with the TokenReview API) implements the same
//! trait; the service does not change.

use std::{collections::HashMap, net::SocketAddr, sync::Arc};

use strait_proto::mesh::MeshFile;
use tokio::sync::watch;

use super::SpiffeId;

/// What the caller presented.
#[derive(Debug)]
pub struct Proof<'a> {
    /// The bearer token (bootstrap token, or projected ServiceAccount token).
    pub token: &'a str,
    /// The workload the caller says it is (embedded mode finds the token by it).
    pub workload: &'a str,
    /// The identity asked for, already parsed and in the mesh's trust domain.
    pub requested: &'a SpiffeId,
    pub peer: Option<SocketAddr>,
}

/// Who the proof shows the caller to be. The service compares it with the identity asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub namespace: String,
    pub service_account: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AuthError {
    /// The proof does not hold (unknown workload, wrong or missing token, rejected by TokenReview).
    #[error("{0}")]
    Unauthenticated(String),
    /// The proof holds, but for a principal that can never hold a mesh identity (a Kubernetes
    /// user that is not a ServiceAccount).
    #[error("{0}")]
    Denied(String),
    /// The proof cannot be checked right now (e.g. the Kubernetes API is unreachable); retry.
    #[error("{0}")]
    Unavailable(String),
}

#[tonic::async_trait]
pub trait Authenticator: Send + Sync + 'static {
    async fn authenticate(&self, proof: &Proof<'_>) -> Result<Principal, AuthError>;
}

/// The mesh file's workloads and their bootstrap tokens, by (namespace, name).
#[derive(Debug, Default)]
pub struct BootstrapTokens {
    workloads: HashMap<(String, String), Entry>,
}

#[derive(Debug)]
struct Entry {
    service_account: String,
    token: Option<String>,
}

impl BootstrapTokens {
    pub fn from_file(file: &MeshFile) -> Self {
        let workloads = file
            .workloads
            .iter()
            .map(|w| {
                let entry = Entry {
                    service_account: w.service_account.clone(),
                    token: w.token.clone().filter(|t| !t.is_empty()),
                };
                ((w.namespace.clone(), w.name.clone()), entry)
            })
            .collect();
        Self { workloads }
    }
}

/// Embedded mode: the request's workload must be in the mesh file, in the requested namespace,
/// with that token; it then proves that workload's namespace and service account.
pub struct BootstrapAuthenticator {
    tokens: watch::Receiver<Arc<BootstrapTokens>>,
}

impl BootstrapAuthenticator {
    pub fn new(tokens: watch::Receiver<Arc<BootstrapTokens>>) -> Self {
        Self { tokens }
    }
}

#[tonic::async_trait]
impl Authenticator for BootstrapAuthenticator {
    async fn authenticate(&self, proof: &Proof<'_>) -> Result<Principal, AuthError> {
        let fail = |m: String| Err(AuthError::Unauthenticated(m));
        let ns = &proof.requested.namespace;
        let name = proof.workload;
        if name.is_empty() {
            return fail("the request names no workload (STRAIT_WORKLOAD); embedded mode checks the token of that workload".into());
        }
        let tokens = self.tokens.borrow().clone();
        let Some(entry) = tokens.workloads.get(&(ns.clone(), name.to_string())) else {
            return fail(format!("workload {name} in namespace {ns} is not in the mesh file"));
        };
        let Some(expected) = &entry.token else {
            return fail(format!("workload {name} in namespace {ns} has no token in the mesh file, so it cannot obtain a certificate"));
        };
        if proof.token.is_empty() {
            return fail(format!("no token presented for workload {name} in namespace {ns} (STRAIT_IDENTITY_TOKEN_FILE)"));
        }
        if !constant_time_eq(proof.token.as_bytes(), expected.as_bytes()) {
            return fail(format!("the token presented is not workload {name}'s (namespace {ns})"));
        }
        Ok(Principal { namespace: ns.clone(), service_account: entry.service_account.clone() })
    }
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was right.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn authenticator(yaml: &str) -> BootstrapAuthenticator {
        let tokens = BootstrapTokens::from_file(&MeshFile::parse(yaml).unwrap());
        let (_tx, rx) = watch::channel(Arc::new(tokens));
        BootstrapAuthenticator::new(rx)
    }

    #[tokio::test]
    async fn bootstrap_tokens_prove_their_workload_only() {
        let auth = authenticator(
            r#"
workloads:
  - {name: orders-v1, namespace: demo, serviceAccount: orders, token: "s3cret"}
  - {name: notoken, namespace: demo, serviceAccount: nt}
  - {name: orders-v1, namespace: other, serviceAccount: other-orders, token: "t2"}
"#,
        );
        let want = SpiffeId::new("cluster.local", "demo", "orders");
        let proof = |token, workload, requested| Proof { token, workload, requested, peer: None };
        assert_eq!(
            auth.authenticate(&proof("s3cret", "orders-v1", &want)).await,
            Ok(Principal { namespace: "demo".into(), service_account: "orders".into() })
        );
        // The principal is the workload's service account, whatever was asked for.
        let other_sa = SpiffeId::new("cluster.local", "demo", "admin");
        assert_eq!(auth.authenticate(&proof("s3cret", "orders-v1", &other_sa)).await.unwrap().service_account, "orders");
        let refused = [
            (proof("wrong", "orders-v1", &want), "not workload orders-v1's"),
            (proof("s3cret!", "orders-v1", &want), "not workload orders-v1's"),
            (proof("", "orders-v1", &want), "no token presented"),
            (proof("s3cret", "", &want), "names no workload"),
            (proof("s3cret", "payments", &want), "not in the mesh file"),
            (proof("", "notoken", &want), "has no token in the mesh file"),
            // A token of the same workload name in another namespace proves nothing here.
            (proof("t2", "orders-v1", &want), "not workload orders-v1's"),
        ];
        for (p, why) in refused {
            match auth.authenticate(&p).await {
                Err(AuthError::Unauthenticated(m)) => assert!(m.contains(why), "{p:?}: {m}"),
                other => panic!("{p:?}: {other:?}"),
            }
        }
    }
}
