//! What `/ready` means: the proxy can serve its workload's traffic as the mesh intends. That takes
//! the listeners, the identity certificate (when identity is configured) and one answer from the
//! controller (when discovery comes from one): before it, a destination cannot be told apart from
//! one outside the mesh, so a ready proxy would have to guess. A certificate that expired without
//! renewal makes the proxy not ready again: peers refuse it, so the pod should leave its Services.
//! Losing the controller later does not: the last good answers keep being served.

use std::sync::{
    Arc,
    atomic::{AtomicBool, Ordering},
};

use crate::{discover::remote, identity};

pub struct Readiness {
    listening: AtomicBool,
    identity: Option<Arc<identity::Store>>,
    discovery: Option<Arc<remote::Client>>,
}

impl Readiness {
    pub fn new(identity: Option<Arc<identity::Store>>, discovery: Option<Arc<remote::Client>>) -> Arc<Self> {
        Arc::new(Readiness { listening: AtomicBool::new(false), identity, discovery })
    }

    /// The listeners serve.
    pub fn set_listening(&self) {
        self.listening.store(true, Ordering::Release);
    }

    /// Whether the certificate is good (`None` without identity).
    pub fn certificate_valid(&self) -> Option<bool> {
        self.identity.as_ref().map(|s| s.is_valid_now())
    }

    /// What readiness still waits for, one phrase each; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        let mut missing = Vec::new();
        if !self.listening.load(Ordering::Acquire) {
            missing.push("listeners");
        }
        if let Some(store) = &self.identity {
            if !store.is_ready() {
                missing.push("identity certificate (none issued yet)");
            } else if !store.is_valid_now() {
                missing.push("identity certificate (expired; renewal failing)");
            }
        }
        if self.discovery.as_ref().is_some_and(|d| !d.is_synced()) {
            missing.push("discovery (no answer from the controller yet)");
        }
        missing
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreachable_controller(wait: std::time::Duration) -> Arc<remote::Client> {
        // The stream task is never spawned: nothing ever answers.
        let who = remote::Identity { namespace: "demo".into(), workload: "w".into(), service_account: "sa".into() };
        let (client, _task) = remote::Client::new(
            "127.0.0.1:1".into(),
            who,
            crate::metrics::Metrics::new(),
            crate::dns::Dns::from_system(),
            wait,
            crate::discover::remote::DEFAULT_MAX_SUBSCRIPTIONS,
        );
        client
    }

    #[test]
    fn ready_needs_the_listeners() {
        let r = Readiness::new(None, None);
        assert_eq!(r.missing(), ["listeners"]);
        r.set_listening();
        assert!(r.missing().is_empty());
        assert_eq!(r.certificate_valid(), None);
    }

    #[tokio::test]
    async fn not_ready_and_no_guess_before_the_controller_answers() {
        let client = unreachable_controller(std::time::Duration::from_millis(20));
        let r = Readiness::new(None, Some(client.clone()));
        r.set_listening();
        assert_eq!(r.missing(), ["discovery (no answer from the controller yet)"]);
        assert!(!client.wait_synced(std::time::Duration::from_millis(20)).await);
        // An unanswered lookup is an error, not "outside the mesh".
        assert!(client.resolve("web.demo:8080").await.is_err());
    }
}
