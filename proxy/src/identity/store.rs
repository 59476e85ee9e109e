//! The current certificate and key, read by the TLS stack at every handshake (so a renewal takes
//! effect for new connections without touching open ones).

use std::sync::{Arc, RwLock};

use rustls::sign::CertifiedKey;
use tokio::sync::watch;

pub struct Store {
    pub spiffe: Arc<str>,
    pub server_name: Arc<str>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    ready: watch::Sender<bool>,
}

impl Store {
    pub fn new(spiffe: String, server_name: String) -> Arc<Self> {
        let (ready, _) = watch::channel(false);
        Arc::new(Store { spiffe: spiffe.into(), server_name: server_name.into(), current: RwLock::new(None), ready })
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn set(&self, key: Arc<CertifiedKey>) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.ready.send_replace(true);
    }

    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    pub async fn wait_ready(&self) {
        let mut rx = self.ready.subscribe();
        let _ = rx.wait_for(|r| *r).await;
    }
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("spiffe", &self.spiffe).field("ready", &self.is_ready()).finish()
    }
}
