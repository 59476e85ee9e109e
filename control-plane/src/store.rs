//! The store between the sources and the discovery streams. Sources publish whole meshes; one
//! publisher task turns the latest into an [`Index`] and shares it as one `watch` of
//! `Arc<Snapshot>` that every stream watches, so a change costs one build however many proxies
//! listen.
//!
//! Bursts coalesce here: a change is published at once when none was in the last
//! [`DEFAULT_PUSH_INTERVAL`], otherwise when that interval has passed, with whatever is newest then.

use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{index::Index, metrics::Metrics, model::Mesh};

/// The shortest time between two published snapshots. Kubernetes sources change in bursts (a
/// rollout touches many EndpointSlices within milliseconds); 50 ms gathers such a burst into one
/// push while staying far below what a person or a readiness probe can notice. A lone change is
/// not delayed at all.
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_millis(50);

/// The mesh as served at one moment.
#[derive(Debug)]
pub struct Snapshot {
    pub index: Index,
    /// False until a source has delivered its first full mesh.
    pub loaded: bool,
    /// Counts the published snapshots, from 0 (the empty one before the first load).
    pub generation: u64,
    /// When the oldest change this snapshot contains was published by its source.
    pub changed_at: Instant,
}

#[derive(Default)]
struct Pending {
    mesh: Option<Arc<Mesh>>,
    since: Option<Instant>,
}

struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
}

/// The sources' side: hands over whole meshes.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl Store {
    /// Replaces the mesh. Cheap: the index is built by the publisher.
    pub fn publish(&self, mesh: Mesh) {
        let mut pending = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        pending.mesh = Some(Arc::new(mesh));
        pending.since.get_or_insert_with(Instant::now);
        drop(pending);
        self.shared.notify.notify_one();
    }
}

/// Builds and publishes snapshots; run it with [`Publisher::run`].
pub struct Publisher {
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<Snapshot>>,
    cluster_domain: String,
    interval: Duration,
    metrics: Arc<Metrics>,
}

/// A store, the receiver of its snapshots (clone it per stream), and its publisher.
pub fn new(
    cluster_domain: &str,
    interval: Duration,
    metrics: Arc<Metrics>,
) -> (Store, watch::Receiver<Arc<Snapshot>>, Publisher) {
    let shared = Arc::new(Shared { pending: Mutex::new(Pending::default()), notify: Notify::new() });
    let empty = Snapshot { index: Index::empty(cluster_domain), loaded: false, generation: 0, changed_at: Instant::now() };
    let (tx, rx) = watch::channel(Arc::new(empty));
    let publisher =
        Publisher { shared: shared.clone(), tx, cluster_domain: cluster_domain.to_string(), interval, metrics };
    (Store { shared }, rx, publisher)
}

impl Publisher {
    /// Publishes until `shutdown`; then drops the sender, which ends every stream watching it.
    pub async fn run(self, shutdown: CancellationToken) {
        let mut last_published: Option<Instant> = None;
        let mut reported: HashSet<String> = HashSet::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = self.shared.notify.notified() => {}
            }
            if let Some(last) = last_published {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep_until(last + self.interval) => {}
                }
            }
            let (mesh, since) = {
                let mut pending = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                (pending.mesh.take(), pending.since.take())
            };
            let Some(mesh) = mesh else { continue };
            // Building the index of a large mesh is CPU work: off the runtime's threads, so the
            // streams keep flowing while it runs.
            let domain = self.cluster_domain.clone();
            let built = tokio::task::spawn_blocking(move || Index::build(&mesh, &domain)).await;
            let Ok((index, errors)) = built else {
                tracing::error!("index build task failed; keeping the current snapshot");
                continue;
            };
            self.publish(index, errors, since.unwrap_or_else(Instant::now), &mut reported);
            last_published = Some(Instant::now());
        }
    }

    fn publish(
        &self,
        index: Index,
        errors: Vec<(crate::authority::ServiceName, crate::policy::AnnotationError)>,
        changed_at: Instant,
        reported: &mut HashSet<String>,
    ) {
        // Report each bad annotation once, not again on every unrelated change.
        let mut current = HashSet::with_capacity(errors.len());
        for (service, error) in &errors {
            let key = format!("{service}\0{error}");
            if !reported.contains(&key) {
                tracing::warn!(%service, annotation = error.label(), error = %error, "bad policy annotation; that field keeps its default");
                self.metrics.annotation_errors.with_label_values(&[error.label()]).inc();
            }
            current.insert(key);
        }
        *reported = current;
        let counts = index.counts();
        for (kind, n) in [("services", counts.services), ("endpoints", counts.endpoints), ("workloads", counts.workloads)] {
            self.metrics.watched_objects.with_label_values(&[kind]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let generation = self.tx.borrow().generation + 1;
        self.tx.send_replace(Arc::new(Snapshot { index, loaded: true, generation, changed_at }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Service;

    fn mesh(services: usize) -> Mesh {
        let service = |i: usize| Service {
            name: format!("s{i}"),
            namespace: "n".into(),
            cluster_ips: vec![],
            ports: vec![],
            annotations: [("retry.strait.io/limit".to_string(), "x".to_string())].into(),
            endpoints: vec![],
        };
        Mesh { trust_domain: "td".into(), services: (0..services).map(service).collect(), workloads: vec![] }
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_goes_out_at_once_and_a_burst_is_coalesced() {
        let metrics = Arc::new(Metrics::new().unwrap());
        let (store, mut rx, publisher) = new("cluster.local", Duration::from_millis(50), metrics.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(publisher.run(shutdown.clone()));
        assert!(!rx.borrow().loaded);

        let start = Instant::now();
        store.publish(mesh(1));
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "the first change is not delayed");
        assert_eq!((rx.borrow().generation, rx.borrow().index.counts().services), (1, 1));

        // A burst right after: nothing before the interval is over, then only the newest.
        for n in 2..=5 {
            store.publish(mesh(n));
        }
        rx.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!((rx.borrow().generation, rx.borrow().index.counts().services), (2, 5));
        assert_eq!(rx.borrow().changed_at, start, "the burst's oldest change is what push time is measured from");

        // Long after, a lone change is again immediate.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = Instant::now();
        store.publish(mesh(6));
        rx.changed().await.unwrap();
        assert_eq!(later.elapsed(), Duration::ZERO);

        // The same bad annotation on the same service is counted once.
        let errors = metrics.annotation_errors.with_label_values(&["retry.strait.io/limit"]).get();
        assert_eq!(errors, 6);

        shutdown.cancel();
        task.await.unwrap();
        assert!(rx.changed().await.is_err(), "streams see the end of the publisher");
    }
}
