//! The proxy's own identity: a key made in memory (it never leaves the process), a certificate for
//! `spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>` from the controller's
//! `Identity.Certify`, renewed at 70 % of its lifetime, and the mapping between identities and the
//! TLS server names proxies use to reach each other.

pub mod certify;
pub mod store;

pub use store::Store;

/// `spiffe://<td>/ns/<ns>/sa/<sa>`.
pub fn spiffe_id(trust_domain: &str, namespace: &str, service_account: &str) -> String {
    format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}")
}

/// The TLS server name a client proxy sends to reach a proxy with this identity:
/// `<sa>.<ns>.serviceaccount.identity.strait.<td>`. A DNS name (SNI cannot carry a URI), derived
/// one-to-one from the identity, so the inbound side can tell mesh TLS meant for it from an
/// application's own TLS, and the client can check the certificate's URI against it.
pub fn server_name_for(spiffe: &str) -> Option<String> {
    let rest = spiffe.strip_prefix("spiffe://")?;
    let (td, path) = rest.split_once('/')?;
    let path = path.strip_prefix("ns/")?;
    let (ns, sa) = path.split_once("/sa/")?;
    if td.is_empty() || ns.is_empty() || sa.is_empty() || sa.contains('/') {
        return None;
    }
    Some(format!("{sa}.{ns}.serviceaccount.identity.strait.{td}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_names_follow_identities() {
        let id = spiffe_id("cluster.local", "demo", "orders");
        assert_eq!(id, "spiffe://cluster.local/ns/demo/sa/orders");
        assert_eq!(server_name_for(&id).as_deref(), Some("orders.demo.serviceaccount.identity.strait.cluster.local"));
        assert_eq!(server_name_for("spiffe://td/ns/x"), None);
        assert_eq!(server_name_for("https://td/ns/a/sa/b"), None);
    }
}
