//! Kubernetes mode: the mesh from the cluster's Services, EndpointSlices and Pods.
//!
//! Stages, one module each:
//! - [`client`]: the API client, from `--kubeconfig`, else in-cluster (or the usual kubeconfig).
//! - [`watch`]: a `runtime::watcher` and a reflector store per kind, all namespaces.
//! - [`convert`]: the stores' contents → the source-independent [`crate::model::Mesh`] (pure).
//! - [`events`]: bad annotations reported as Kubernetes Events on their Service or Pod.
//! - [`namespaces`]: the Namespaces' Strait annotations, for the injector (not part of the mesh).
//!
//! [`run`] ties them together: after the first full list of all three kinds it publishes the whole
//! mesh to the [`Store`] (which makes `/ready` answer 200). After that, each watch event marks its
//! object, and only the Services it touches are converted again: a Service itself, the Service an
//! EndpointSlice is labelled with (before and after), the Services whose endpoints a Pod backs (and
//! the Pod's workload). A re-list (after 410 Gone) rebuilds the whole mesh, which the store compares
//! with what it has. A pass takes every object marked since the last one; the store coalesces
//! bursts into pushes, so this stage adds no delay of its own.

pub mod client;
pub mod convert;
pub mod events;
pub mod namespaces;
pub mod slim;
pub mod watch;

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    path::PathBuf,
    sync::Arc,
};

use k8s_openapi::api::core::v1::Service;
use kube::{
    Api, Client,
    runtime::reflector::{ObjectRef, Store as Reflected},
};
use tokio_util::sync::CancellationToken;

use self::slim::{EndpointSlice, Pod};
use crate::{
    authority::ServiceName,
    metrics::Metrics,
    model::{Change, WorkloadRef},
    store::Store,
};

pub use convert::Settings;

/// How Kubernetes mode connects and what it assumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    /// A kubeconfig file; `None` means in-cluster configuration when run in a pod, else
    /// `$KUBECONFIG` or `~/.kube/config`.
    pub kubeconfig: Option<PathBuf>,
    /// SPIFFE trust domain of the workloads' identities.
    pub trust_domain: String,
}

impl Default for Options {
    fn default() -> Self {
        Self { kubeconfig: None, trust_domain: "cluster.local".into() }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubeconfig {path}: {source}")]
    Kubeconfig { path: String, source: kube::config::KubeconfigError },
    #[error("no Kubernetes configuration (neither in-cluster nor a kubeconfig): {0}")]
    Infer(#[from] kube::config::InferConfigError),
    #[error("Kubernetes client: {0}")]
    Client(#[from] kube::Error),
}

/// The Kubernetes kinds watched, as they label `strait_controller_watched_objects{kind}` and the
/// watch metrics.
pub const KINDS: [&str; 3] = ["Service", "EndpointSlice", "Pod"];

/// Watches the cluster and publishes its mesh to `store` until `shutdown`.
pub async fn run(
    client: Client,
    settings: Settings,
    store: Store,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let dirty = Arc::new(watch::Dirty::default());
    let watcher =
        |slot: usize| watch::Watcher { kind: KINDS[slot], slot, dirty: dirty.clone(), metrics: metrics.clone(), shutdown: shutdown.clone() };
    let (services, services_task) = watcher(0).start(Api::<Service>::all(client.clone()), watch::trim_service);
    let (slices, slices_task) = watcher(1).start(Api::<EndpointSlice>::all(client.clone()), watch::trim_slice);
    let (pods, pods_task) = watcher(2).start(Api::<Pod>::all(client.clone()), watch::trim_pod);
    let tasks = [tokio::spawn(services_task), tokio::spawn(slices_task), tokio::spawn(pods_task)];

    let synced = async {
        services.wait_until_ready().await.is_ok()
            && slices.wait_until_ready().await.is_ok()
            && pods.wait_until_ready().await.is_ok()
    };
    let synced = tokio::select! {
        _ = shutdown.cancelled() => false,
        ok = synced => ok,
    };
    if synced {
        tracing::info!(services = services.len(), endpoint_slices = slices.len(), pods = pods.len(), "Kubernetes objects listed; serving");
        let mut reporter = events::Reporter::start(client, metrics.clone(), shutdown.clone());
        let stores = Stores { services, slices, pods };
        let mut relations = Relations::default();
        let mut whole = true;
        loop {
            let changed = dirty.take();
            for (kind, n) in KINDS.iter().zip([stores.services.len(), stores.slices.len(), stores.pods.len()]) {
                metrics.watched_objects.with_label_values(&[kind]).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            if whole || changed.relisted {
                let (service_objects, slice_objects, pod_objects) = (stores.services.state(), stores.slices.state(), stores.pods.state());
                let mesh = convert::mesh(&service_objects, &slice_objects, &pod_objects, &settings);
                reporter.report(&service_objects);
                reporter.report_pods(&pod_objects);
                relations = Relations::of(&slice_objects);
                let (services, endpoints, workloads) = mesh.counts();
                tracing::debug!(services, endpoints, workloads, "Kubernetes mesh built whole");
                store.publish(mesh);
                whole = false;
            } else {
                let change = relations.change(&changed, &stores, &settings, &mut reporter);
                tracing::trace!(services = change.services.len(), workloads = change.workloads.len(), "Kubernetes mesh changed");
                store.apply(change);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = dirty.wait() => {}
            }
        }
    }
    for task in tasks {
        task.abort();
    }
}

/// The three reflector stores.
struct Stores {
    services: Reflected<Service>,
    slices: Reflected<EndpointSlice>,
    pods: Reflected<Pod>,
}

/// (namespace, name) of a Kubernetes object.
type Key = (String, String);

fn get<K: kube::Resource<DynamicType = ()> + Clone>(store: &Reflected<K>, (namespace, name): &Key) -> Option<Arc<K>> {
    store.get(&ObjectRef::new(name).within(namespace))
}

/// Which objects a change to another touches: kept from one pass to the next, so that a watch event
/// is turned into a mesh change without looking at the rest of the cluster.
#[derive(Debug, Default)]
struct Relations {
    /// EndpointSlice → the Service it is labelled with.
    slice_owner: HashMap<Key, Key>,
    /// Service → the names of its EndpointSlices (in its namespace).
    slices_of: HashMap<Key, BTreeSet<String>>,
    /// Pod (by [`pod_hash`]) → the Services whose endpoints it backs (a list: nearly always one).
    /// A cluster has a pod per endpoint; keyed by hash, with the services shared, this costs tens
    /// of bytes per pod instead of a hundred and more. Two pods with one hash only make a change
    /// convert a Service more than needed.
    services_of_pod: HashMap<u64, Vec<Arc<Key>>>,
    /// Service → the hashes of the Pods its endpoints name (to take it out of `services_of_pod`).
    pods_of: HashMap<Arc<Key>, Vec<u64>>,
}

fn pod_hash(namespace: &str, name: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::hash::DefaultHasher::new();
    (namespace, name).hash(&mut h);
    h.finish()
}

impl Relations {
    /// The relations of the cluster's slices.
    fn of(slices: &[Arc<EndpointSlice>]) -> Self {
        let mut r = Self::default();
        let mut by_owner: HashMap<Key, Vec<&EndpointSlice>> = HashMap::new();
        for slice in slices {
            let owner = slice.metadata.labels.as_ref().and_then(|l| l.get(convert::SERVICE_NAME_LABEL));
            if let (Some(ns), Some(name), Some(owner)) = (&slice.metadata.namespace, &slice.metadata.name, owner) {
                let owner = (ns.clone(), owner.clone());
                r.set_slice((ns.clone(), name.clone()), Some(owner.clone()));
                by_owner.entry(owner).or_default().push(slice);
            }
        }
        for (service, slices) in by_owner {
            r.set_pods(service, &slices);
        }
        r
    }

    /// Records a slice's owner; returns the previous one.
    fn set_slice(&mut self, slice: Key, owner: Option<Key>) -> Option<Key> {
        let before = self.slice_owner.remove(&slice);
        if let Some(b) = &before
            && let Some(names) = self.slices_of.get_mut(b)
        {
            names.remove(&slice.1);
            if names.is_empty() {
                self.slices_of.remove(b);
            }
        }
        if let Some(o) = owner {
            self.slices_of.entry(o.clone()).or_default().insert(slice.1.clone());
            self.slice_owner.insert(slice, o);
        }
        before
    }

    /// Records the Pods its slices' endpoints name as behind a service: every one, also those the
    /// conversion left out (a Pod not seen yet, whose container ports would resolve a named target
    /// port), so that the Pod's arrival converts the service again.
    fn set_pods(&mut self, service: Key, slices: &[&EndpointSlice]) {
        for pod in self.pods_of.remove(&service).into_iter().flatten() {
            if let Some(services) = self.services_of_pod.get_mut(&pod) {
                services.retain(|s| **s != service);
                if services.is_empty() {
                    self.services_of_pod.remove(&pod);
                }
            }
        }
        let mut pods: Vec<u64> = slices
            .iter()
            .flat_map(|slice| {
                let ns = slice.metadata.namespace.as_deref().unwrap_or_default();
                slice.endpoints.iter().flatten().filter_map(move |e| {
                    let r = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"))?;
                    Some(pod_hash(r.namespace.as_deref().unwrap_or(ns), r.name.as_deref()?))
                })
            })
            .collect();
        pods.sort_unstable();
        pods.dedup();
        if pods.is_empty() {
            return;
        }
        let service = Arc::new(service);
        for pod in &pods {
            let services = self.services_of_pod.entry(*pod).or_default();
            if !services.contains(&service) {
                services.push(service.clone());
            }
        }
        self.pods_of.insert(service, pods);
    }

    /// The mesh change for the objects marked since the last pass; reports their annotations.
    fn change(&mut self, changed: &watch::Changed, stores: &Stores, settings: &Settings, reporter: &mut events::Reporter) -> Change {
        let [services, slices, pods] = &changed.keys;
        let mut dirty: HashSet<Key> = services.clone();
        for key in slices {
            let slice = get(&stores.slices, key);
            let owner = slice
                .as_ref()
                .and_then(|s| s.metadata.labels.as_ref()?.get(convert::SERVICE_NAME_LABEL).cloned())
                .map(|name| (key.0.clone(), name));
            dirty.extend(owner.clone());
            dirty.extend(self.set_slice(key.clone(), owner));
        }
        let mut change = Change::default();
        let mut pods_seen = Vec::with_capacity(pods.len());
        for key in pods {
            let pod = get(&stores.pods, key);
            let workload = pod.as_deref().and_then(convert::workload);
            change.workloads.push((WorkloadRef { namespace: key.0.clone(), name: key.1.clone() }, workload));
            dirty.extend(self.services_of_pod.get(&pod_hash(&key.0, &key.1)).into_iter().flatten().map(|s| (**s).clone()));
            pods_seen.push((key.clone(), pod));
        }
        let pod = |ns: &str, name: &str| stores.pods.get(&ObjectRef::new(name).within(ns));
        let mut services_seen = Vec::with_capacity(dirty.len());
        for key in dirty {
            let object = get(&stores.services, &key);
            let slice_objects: Vec<Arc<EndpointSlice>> = self
                .slices_of
                .get(&key)
                .into_iter()
                .flatten()
                .filter_map(|name| get(&stores.slices, &(key.0.clone(), name.clone())))
                .collect();
            let slice_refs: Vec<&EndpointSlice> = slice_objects.iter().map(|s| &**s).collect();
            let model = object.as_deref().and_then(|o| convert::service(o, &slice_refs, &pod, settings));
            self.set_pods(key.clone(), &slice_refs);
            change.services.push((ServiceName::new(&key.0, &key.1), model));
            services_seen.push((key, object));
        }
        reporter.report_some(services_seen);
        reporter.report_some_pods(pods_seen);
        change
    }
}
