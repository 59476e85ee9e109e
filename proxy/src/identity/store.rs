//! The current certificate and key, read by the TLS stack at every handshake (so a renewal takes
//! effect for new connections without touching open ones), and when it expires: an expired
//! certificate that could not be renewed takes the proxy out of readiness.

use std::{
    sync::{
        Arc, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{SystemTime, UNIX_EPOCH},
};

use rustls::sign::CertifiedKey;
use tokio::sync::watch;

pub struct Store {
    pub spiffe: Arc<str>,
    pub server_name: Arc<str>,
    current: RwLock<Option<Arc<CertifiedKey>>>,
    /// The current certificate's notAfter (Unix seconds); 0 before the first.
    not_after: AtomicU64,
    ready: watch::Sender<bool>,
}

impl Store {
    pub fn new(spiffe: String, server_name: String) -> Arc<Self> {
        let (ready, _) = watch::channel(false);
        Arc::new(Store { spiffe: spiffe.into(), server_name: server_name.into(), current: RwLock::new(None), not_after: AtomicU64::new(0), ready })
    }

    pub fn current(&self) -> Option<Arc<CertifiedKey>> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Installs a certificate valid until `not_after_unix`.
    pub fn set(&self, key: Arc<CertifiedKey>, not_after_unix: u64) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Some(key);
        self.not_after.store(not_after_unix, Ordering::Release);
        self.ready.send_replace(true);
    }

    /// Whether a certificate is installed and has not expired.
    pub fn is_valid_now(&self) -> bool {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        self.is_ready() && now < self.not_after.load(Ordering::Acquire)
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
