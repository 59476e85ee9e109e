//! Kubernetes mode: the mesh from the cluster's Services, EndpointSlices and Pods.
//!
//! Stages, one module each:
//! - [`client`]: the API client, from `--kubeconfig`, else in-cluster (or the usual kubeconfig).
//! - [`watch`]: a `runtime::watcher` and a reflector store per kind, all namespaces.
//! - [`convert`]: the stores' contents → the source-independent [`crate::model::Mesh`] (pure).
//! - [`events`]: bad annotations reported as Kubernetes Events on their Service or Pod.
//!
//! [`run`] ties them together: after the first full list of all three kinds it publishes a mesh to
//! the [`Store`] (which makes `/ready` answer 200), then one per change; bursts are coalesced the same
//! way the store coalesces pushes (a lone change at once, then at most one build per interval), and
//! a rebuild that changes nothing (a pod's status, a slice's unused field) publishes nothing.

pub mod client;
pub mod convert;
pub mod events;
pub mod watch;

use std::{path::PathBuf, sync::Arc, time::Duration};

use k8s_openapi::api::{core::v1::Pod, core::v1::Service, discovery::v1::EndpointSlice};
use kube::{Api, Client};
use tokio::{sync::Notify, time::Instant};
use tokio_util::sync::CancellationToken;

use crate::{metrics::Metrics, model::Mesh, store::Store};

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
    interval: Duration,
    shutdown: CancellationToken,
) {
    let changed = Arc::new(Notify::new());
    let watcher = |kind| watch::Watcher { kind, changed: changed.clone(), metrics: metrics.clone(), shutdown: shutdown.clone() };
    let (services, services_task) = watcher(KINDS[0]).start(Api::<Service>::all(client.clone()), watch::trim_service);
    let (slices, slices_task) = watcher(KINDS[1]).start(Api::<EndpointSlice>::all(client.clone()), watch::trim_slice);
    let (pods, pods_task) = watcher(KINDS[2]).start(Api::<Pod>::all(client.clone()), watch::trim_pod);
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
        let mut last: Option<Mesh> = None;
        loop {
            let built = Instant::now();
            for (kind, n) in KINDS.iter().zip([services.len(), slices.len(), pods.len()]) {
                metrics.watched_objects.with_label_values(&[kind]).set(i64::try_from(n).unwrap_or(i64::MAX));
            }
            let (service_objects, pod_objects) = (services.state(), pods.state());
            let mesh = convert::mesh(&service_objects, &slices.state(), &pod_objects, &settings);
            reporter.report(&service_objects);
            reporter.report_pods(&pod_objects);
            if last.as_ref() != Some(&mesh) {
                let (services, endpoints, workloads) = mesh.counts();
                tracing::debug!(services, endpoints, workloads, "Kubernetes mesh changed");
                last = Some(mesh.clone());
                store.publish(mesh);
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = changed.notified() => {}
            }
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = tokio::time::sleep_until(built + interval) => {}
            }
        }
    }
    for task in tasks {
        task.abort();
    }
}
