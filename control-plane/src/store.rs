//! The store between the sources and the discovery streams.
//!
//! Sources hand over whole meshes ([`Store::publish`]) or changes to a few services and workloads
//! ([`Store::apply`]). One publisher task owns the [`Builder`]: it turns what is pending into index
//! updates (off the runtime's threads, since a whole mesh can take a while), applies them to the
//! shared [`Index`] under a short write lock, and wakes only the streams subscribed to the topics
//! that changed. A change costs work in proportion to what it touched and to who listens to it,
//! not to the size of the mesh or the number of proxies.
//!
//! Bursts coalesce here: a change is published at once when none was in the last
//! [`DEFAULT_PUSH_INTERVAL`], otherwise when that interval has passed, with whatever is pending then.

use std::{
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, RwLock, RwLockReadGuard, atomic::AtomicU64, atomic::Ordering},
    time::Duration,
};

use tokio::{
    sync::{Notify, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

use crate::{
    index::{Builder, Counts, Index, Topic, Update},
    metrics::Metrics,
    model::{Change, Mesh},
};

/// The shortest time between two publications. Kubernetes sources change in bursts (a rollout
/// touches many EndpointSlices within milliseconds); 50 ms gathers such a burst into one push while
/// staying far below what a person or a readiness probe can notice. A lone change is not delayed
/// at all.
pub const DEFAULT_PUSH_INTERVAL: Duration = Duration::from_millis(50);

/// What the admin server and the identity service need to know of the mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshStatus {
    /// False until a source has delivered its first full mesh.
    pub loaded: bool,
    /// Counts the publications, from 0 (the empty index before the first load).
    pub generation: u64,
    /// The mesh's SPIFFE trust domain.
    pub trust_domain: String,
    pub counts: Counts,
}

#[derive(Default)]
struct Pending {
    full: Option<Mesh>,
    changes: Vec<Change>,
    since: Option<Instant>,
}

/// A stream's wake-up: notified when a topic it watches changed.
type Waker = Arc<Notify>;

struct Shared {
    pending: Mutex<Pending>,
    notify: Notify,
    index: RwLock<Index>,
    /// Topic → the streams watching it, by stream id.
    topics: Mutex<HashMap<Topic, Vec<(u64, Waker)>>>,
    next_id: AtomicU64,
}

/// The sources' side.
#[derive(Clone)]
pub struct Store {
    shared: Arc<Shared>,
}

impl Store {
    /// Replaces the whole mesh. Cheap: the publisher compares and builds.
    pub fn publish(&self, mesh: Mesh) {
        self.pend(|p| {
            p.changes.clear();
            p.full = Some(mesh);
        });
    }

    /// Sets and removes a few services and workloads; the rest of the mesh stays.
    pub fn apply(&self, change: Change) {
        if !change.is_empty() {
            self.pend(|p| p.changes.push(change));
        }
    }

    fn pend(&self, f: impl FnOnce(&mut Pending)) {
        let mut pending = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut pending);
        pending.since.get_or_insert_with(Instant::now);
        drop(pending);
        self.shared.notify.notify_one();
    }
}

/// The streams' side: reads the index and watches topics. Cheap to clone.
#[derive(Clone)]
pub struct Reader {
    shared: Arc<Shared>,
    status: watch::Receiver<Arc<MeshStatus>>,
}

impl Reader {
    /// The index as of now. Hold the guard briefly, never across an `.await`: the publisher waits
    /// for it.
    pub fn index(&self) -> RwLockReadGuard<'_, Index> {
        self.shared.index.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The status, watched. It ends (`changed()` fails) when the publisher stops.
    pub fn status(&self) -> watch::Receiver<Arc<MeshStatus>> {
        self.status.clone()
    }

    /// A new stream's id and its waker, for [`Reader::watch`].
    pub fn waker(&self) -> (u64, Waker) {
        (self.shared.next_id.fetch_add(1, Ordering::Relaxed), Arc::new(Notify::new()))
    }

    /// Wakes `waker` on every change of `topic` until [`Reader::unwatch`]. Watch before reading
    /// the index, so that no change falls in between.
    pub fn watch(&self, topic: &Topic, id: u64, waker: &Waker) {
        let mut topics = self.shared.topics.lock().unwrap_or_else(|p| p.into_inner());
        topics.entry(topic.clone()).or_default().push((id, waker.clone()));
    }

    pub fn unwatch(&self, topic: &Topic, id: u64) {
        let mut topics = self.shared.topics.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(watchers) = topics.get_mut(topic) {
            if let Some(i) = watchers.iter().position(|(w, _)| *w == id) {
                watchers.swap_remove(i);
            }
            if watchers.is_empty() {
                topics.remove(topic);
            }
        }
    }

    /// How many topics some stream watches (for tests and metrics).
    pub fn watched_topics(&self) -> usize {
        self.shared.topics.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

/// Builds and publishes; run it with [`Publisher::run`].
pub struct Publisher {
    shared: Arc<Shared>,
    status: watch::Sender<Arc<MeshStatus>>,
    builder: Option<Builder>,
    interval: Duration,
    metrics: Arc<Metrics>,
}

/// A store, its reader (clone it per stream), and its publisher.
pub fn new(cluster_domain: &str, interval: Duration, metrics: Arc<Metrics>) -> (Store, Reader, Publisher) {
    let shared = Arc::new(Shared {
        pending: Mutex::new(Pending::default()),
        notify: Notify::new(),
        index: RwLock::new(Index::empty(cluster_domain)),
        topics: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
    });
    let (status, status_rx) = watch::channel(Arc::new(MeshStatus::default()));
    let publisher =
        Publisher { shared: shared.clone(), status, builder: Some(Builder::new(cluster_domain)), interval, metrics };
    (Store { shared: shared.clone() }, Reader { shared, status: status_rx }, publisher)
}

impl Publisher {
    /// Publishes until `shutdown`; then drops the status sender, which tells every watcher.
    pub async fn run(mut self, shutdown: CancellationToken) {
        let mut last_published: Option<Instant> = None;
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
            let Pending { full, changes, since } = {
                let mut pending = self.shared.pending.lock().unwrap_or_else(|p| p.into_inner());
                std::mem::take(&mut *pending)
            };
            if full.is_none() && changes.is_empty() {
                continue;
            }
            let since = since.unwrap_or_else(Instant::now);
            let Some(mut builder) = self.builder.take() else { return };
            // Comparing and building a large mesh is CPU work: off the runtime's threads, so the
            // streams keep flowing while it runs.
            let built = tokio::task::spawn_blocking(move || {
                let mut updates = Vec::with_capacity(changes.len() + 1);
                let whole = full.is_some();
                if let Some(mesh) = full {
                    updates.push(builder.full(mesh, since));
                }
                updates.extend(changes.into_iter().map(|c| builder.apply(c, since)));
                if whole {
                    release_free_memory();
                }
                (builder, updates)
            })
            .await;
            let Ok((builder, updates)) = built else {
                // Only a bug gets here; the model is lost with the task, so stop and let the
                // controller exit (its supervisor restarts it from the sources).
                tracing::error!("the index builder failed; stopping the publisher");
                return;
            };
            self.builder = Some(builder);
            self.publish(&updates);
            last_published = Some(Instant::now());
        }
    }

    fn publish(&self, updates: &[Update]) {
        for update in updates {
            for (service, error) in &update.errors {
                tracing::warn!(%service, annotation = error.label(), error = %error, "bad policy annotation; that field keeps its default");
                self.metrics.annotation_errors.with_label_values(&[error.label()]).inc();
            }
        }
        let trust_domain = {
            let mut index = self.shared.index.write().unwrap_or_else(|p| p.into_inner());
            for update in updates {
                index.apply(update);
            }
            index.trust_domain().to_string()
        };
        let counts = updates.last().map(Update::counts).unwrap_or_default();
        for (kind, n) in [("services", counts.services), ("endpoints", counts.endpoints), ("workloads", counts.workloads)] {
            self.metrics.watched_objects.with_label_values(&[kind]).set(i64::try_from(n).unwrap_or(i64::MAX));
        }
        let generation = self.status.borrow().generation + 1;
        self.status.send_replace(Arc::new(MeshStatus { loaded: true, generation, trust_domain, counts }));
        // After the index holds the change: a woken stream reads it.
        let changed: HashSet<&Topic> = updates.iter().flat_map(|u| &u.topics).collect();
        let topics = self.shared.topics.lock().unwrap_or_else(|p| p.into_inner());
        for topic in changed {
            for (_, waker) in topics.get(topic).into_iter().flatten() {
                waker.notify_one();
            }
        }
    }
}

/// Hands the memory freed after a whole mesh was compared back to the system. A whole mesh is
/// parsed, converted and compared on the blocking pool's threads, and glibc keeps what they freed
/// in their own arenas, where the runtime's threads never reuse it: without this, a controller
/// with a large mesh grows by a mesh's worth of memory per reloading thread. Walking the free
/// lists takes a few milliseconds for a heap of hundreds of MiB; whole meshes come rarely (a
/// mesh file edit, a Kubernetes re-list).
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free memory to the system; it takes no pointers and is
    // safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        authority::ServiceName,
        index::Resolution,
        model::{Endpoint, Protocol, Service, ServicePort},
    };

    fn service(i: usize, endpoint: &str) -> Service {
        Service {
            name: format!("s{i}"),
            namespace: "n".into(),
            cluster_ips: vec![format!("10.0.0.{i}").parse().unwrap()],
            ports: vec![ServicePort { port: 80, protocol: Protocol::Detect, target_port: None }],
            annotations: [("retry.strait.io/limit".to_string(), "x".to_string())].into(),
            endpoints: vec![Endpoint {
                address: endpoint.parse().unwrap(),
                proxy: None,
                workload: None,
                zone: None,
                weight: None,
                ports: Default::default(),
            }],
        }
    }

    fn mesh(services: usize) -> Mesh {
        Mesh { trust_domain: "td".into(), services: (0..services).map(|i| service(i, "127.0.0.1:1")).collect(), workloads: vec![] }
    }

    fn start() -> (Store, Reader, CancellationToken, tokio::task::JoinHandle<()>, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new().unwrap());
        let (store, reader, publisher) = new("cluster.local", Duration::from_millis(50), metrics.clone());
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(publisher.run(shutdown.clone()));
        (store, reader, shutdown, task, metrics)
    }

    #[tokio::test(start_paused = true)]
    async fn a_lone_change_goes_out_at_once_and_a_burst_is_coalesced() {
        let (store, reader, shutdown, task, metrics) = start();
        let mut status = reader.status();
        assert!(!status.borrow().loaded);

        let start = Instant::now();
        store.publish(mesh(1));
        status.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::ZERO, "the first change is not delayed");
        assert_eq!((status.borrow().generation, status.borrow().counts.services), (1, 1));

        // A burst right after: nothing before the interval is over, then all of it at once.
        for n in 2..=5 {
            store.publish(mesh(n));
        }
        status.changed().await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!((status.borrow().generation, status.borrow().counts.services), (2, 5));
        let topic = Topic::Service(ServiceName::new("n", "s4"));
        let Resolution::Service(s4) = reader.index().resolve_topic(&topic, 80) else { panic!("s4 is served") };
        assert_eq!(s4.changed_at(), start, "push time is measured from the burst's oldest change");

        // Long after, a lone change is again immediate.
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = Instant::now();
        store.publish(mesh(6));
        status.changed().await.unwrap();
        assert_eq!(later.elapsed(), Duration::ZERO);

        // The same bad annotation on the same service is counted once.
        let errors = metrics.annotation_errors.with_label_values(&["retry.strait.io/limit"]).get();
        assert_eq!(errors, 6);

        shutdown.cancel();
        task.await.unwrap();
        assert!(status.changed().await.is_err(), "watchers see the end of the publisher");
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_watchers_of_a_changed_topic_are_woken() {
        let (store, reader, shutdown, task, _) = start();
        let mut status = reader.status();
        store.publish(mesh(3));
        status.wait_for(|s| s.loaded).await.unwrap();

        let watcher = |topic: Topic| {
            let (id, waker) = reader.waker();
            reader.watch(&topic, id, &waker);
            waker
        };
        let by_name = watcher(Topic::Service(ServiceName::new("n", "s1")));
        let by_ip = watcher(Topic::Ip("10.0.0.1".parse().unwrap()));
        let other = watcher(Topic::Service(ServiceName::new("n", "s2")));
        let woken = |w: &Waker| {
            let w = w.clone();
            async move { tokio::time::timeout(Duration::from_millis(200), w.notified()).await.is_ok() }
        };

        let moved = Change { services: vec![(ServiceName::new("n", "s1"), Some(service(1, "127.0.0.1:2")))], workloads: vec![] };
        store.apply(moved.clone());
        assert!(woken(&by_name).await && woken(&by_ip).await);
        assert!(!woken(&other).await, "a stream that does not watch s1 sleeps on");
        let Resolution::Service(s1) = reader.index().resolve_topic(&Topic::Ip("10.0.0.1".parse().unwrap()), 80) else {
            panic!("s1 is served by its IP")
        };
        assert_eq!(s1.service().endpoints[0].address, "127.0.0.1:2");

        // The same again, or a whole mesh that changes nothing of s1, wakes nobody.
        store.apply(moved);
        assert!(!woken(&by_name).await);
        let mut whole = mesh(4);
        whole.services[1] = service(1, "127.0.0.1:2");
        store.publish(whole);
        assert!(!woken(&by_name).await && !woken(&by_ip).await);

        // Removed: woken, and it names nothing.
        store.apply(Change { services: vec![(ServiceName::new("n", "s1"), None)], workloads: vec![] });
        assert!(woken(&by_name).await && woken(&by_ip).await);
        let gone = reader.index().resolve_topic(&Topic::Service(ServiceName::new("n", "s1")), 80);
        assert_eq!(gone, Resolution::NotFound(strait_proto::discovery::v1::not_found::Reason::DoesNotExist));

        reader.unwatch(&Topic::Service(ServiceName::new("n", "s1")), 1);
        assert_eq!(reader.watched_topics(), 2);
        shutdown.cancel();
        task.await.unwrap();
    }
}
