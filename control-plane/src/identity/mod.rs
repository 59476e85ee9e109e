//! Identity: the controller's certificate authority and the `strait.identity.v1.Identity` service
//! that signs each proxy's CSR once the proxy proves who it is (DESIGN §4).
//!
//! - [`ca`]: the trust anchor and issuer, created in the state directory or read from files, and
//!   reloaded when those change.
//! - [`auth`]: the [`auth::Authenticator`] seam: what a token proves. Embedded mode checks the
//!   workload's bootstrap token from the mesh file.
//! - [`tokenreview`]: Kubernetes mode behind the same trait: the pod's projected ServiceAccount
//!   token (audience `identity.strait.io`), checked with the TokenReview API.
//! - [`service`]: `Identity.Certify`: parse the requested SPIFFE ID, authenticate, compare, sign.
//! - [`server_tls`]: the service's own TLS (a certificate from the same issuer), since proxies send
//!   their tokens to it.

pub mod auth;
pub mod ca;
pub mod server_tls;
pub mod service;
pub mod tokenreview;

use std::fmt;

/// The identity service's own identity when none is given: the controller's ServiceAccount in the
/// namespace the chart installs it in. Proxies expect the same by default.
pub fn default_server_id(trust_domain: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{DEFAULT_NAMESPACE}/sa/{DEFAULT_SERVICE_ACCOUNT}")
}

/// Where the controller runs, unless told otherwise.
pub const DEFAULT_NAMESPACE: &str = "strait-system";
pub const DEFAULT_SERVICE_ACCOUNT: &str = "strait-controller";

/// `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>`, the only shape of identity the
/// mesh hands out (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpiffeId {
    pub trust_domain: String,
    pub namespace: String,
    pub service_account: String,
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Self {
        Self {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        }
    }

    /// Parses an ID strictly (SPIFFE ID rules: lowercase trust domain of letters, digits, `.`, `-`,
    /// `_`; path segments of letters, digits, `.`, `-`, `_`, never `.` or `..`; nothing else: no
    /// port, user, query, fragment or percent-encoding).
    pub fn parse(id: &str) -> Result<Self, String> {
        let rest = id.strip_prefix("spiffe://").ok_or_else(|| format!("{id:?} does not start with spiffe://"))?;
        let (td, path) = rest.split_once('/').ok_or_else(|| format!("{id:?} has no path"))?;
        if td.is_empty() || td.len() > 255 || !td.bytes().all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b'.' | b'-' | b'_'))
        {
            return Err(format!("{id:?}: trust domain {td:?} is not a lowercase name"));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let [ns_key, ns, sa_key, sa] = segments[..] else {
            return Err(format!("{id:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>"));
        };
        if ns_key != "ns" || sa_key != "sa" {
            return Err(format!("{id:?} is not of the form spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>"));
        }
        for segment in [ns, sa] {
            let ok = !segment.is_empty()
                && segment != "."
                && segment != ".."
                && segment.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !ok {
                return Err(format!("{id:?}: {segment:?} is not a valid namespace or service account name"));
            }
        }
        Ok(Self::new(td, ns, sa))
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "spiffe://{}/ns/{}/sa/{}", self.trust_domain, self.namespace, self.service_account)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mesh_identities_strictly() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/demo/sa/orders").unwrap();
        assert_eq!(id, SpiffeId::new("cluster.local", "demo", "orders"));
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/demo/sa/orders");
        for bad in [
            "",
            "https://cluster.local/ns/demo/sa/orders",
            "spiffe://cluster.local",
            "spiffe:///ns/demo/sa/orders",
            "spiffe://Cluster.local/ns/demo/sa/orders",
            "spiffe://cluster.local:443/ns/demo/sa/orders",
            "spiffe://user@cluster.local/ns/demo/sa/orders",
            "spiffe://cluster.local/ns/demo/sa/orders/extra",
            "spiffe://cluster.local/ns/demo/sa/",
            "spiffe://cluster.local/ns/../sa/orders",
            "spiffe://cluster.local/ns/demo/sa/or%64ers",
            "spiffe://cluster.local/ns/demo/sa/orders?x=1",
            "spiffe://cluster.local/sa/orders/ns/demo",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad:?} was accepted");
        }
    }
}
