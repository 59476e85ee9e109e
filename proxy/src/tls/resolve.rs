//! Hands rustls the current certificate at each handshake, from the identity store.

use std::sync::Arc;

use rustls::{SignatureScheme, client::ResolvesClientCert, server::ResolvesServerCert, sign::CertifiedKey};

use crate::identity::Store;

#[derive(Debug)]
pub struct FromStore(pub Arc<Store>);

impl ResolvesServerCert for FromStore {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }
}

impl ResolvesClientCert for FromStore {
    fn resolve(&self, _root_hint_subjects: &[&[u8]], _sigschemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        self.0.current()
    }

    fn has_certs(&self) -> bool {
        self.0.is_ready()
    }
}
