//! One `runtime::watcher` per kind, feeding a reflector store, over all namespaces.
//!
//! The watcher lists (in pages of 500), then watches from the list's resourceVersion with
//! bookmarks; when the API server ends a watch with 410 Gone (the version is too old) it lists
//! again. The reflector swaps the new list in only once it is complete, so a re-list never shows
//! proxies a half-empty cluster. Errors are retried with kube's default backoff (from 0.8 s, jittered,
//! up to 30 s) and counted.

use std::{
    collections::HashSet,
    fmt::Debug,
    future::Future,
    sync::{Arc, Mutex},
};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Service;

use super::slim::{EndpointSlice, Pod};
use kube::{
    Api, Resource, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use serde::de::DeserializeOwned;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// Written by `kubectl apply`: a copy of the whole object, read by nothing here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// What changed in the stores since [`Dirty::take`] was last called.
#[derive(Debug, Default)]
pub struct Changed {
    /// A kind was listed (again): everything is rebuilt from the stores.
    pub relisted: bool,
    /// Per kind (the watcher's `slot`): the (namespace, name) of the objects added, modified or
    /// deleted.
    pub keys: [HashSet<(String, String)>; 3],
}

/// Where the watch tasks note what changed, for the task that turns it into mesh changes.
#[derive(Debug, Default)]
pub struct Dirty {
    changed: Mutex<Changed>,
    notify: Notify,
}

impl Dirty {
    fn mark(&self, slot: usize, key: (String, String)) {
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).keys[slot].insert(key);
        self.notify.notify_one();
    }

    fn relisted(&self) {
        self.changed.lock().unwrap_or_else(|p| p.into_inner()).relisted = true;
        self.notify.notify_one();
    }

    /// What changed since the last call.
    pub fn take(&self) -> Changed {
        std::mem::take(&mut *self.changed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Until something changes (at once if something did since the last wait).
    pub async fn wait(&self) {
        self.notify.notified().await;
    }
}

/// What a watch task reports to.
pub struct Watcher {
    pub kind: &'static str,
    /// This kind's index in [`Changed::keys`].
    pub slot: usize,
    /// Told of each change to the store, after the store holds it.
    pub dirty: Arc<Dirty>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
}

impl Watcher {
    /// The store, and the task that fills it (run it until `shutdown`). `trim` drops what the
    /// conversion never reads before an object is stored, to keep the controller's memory small.
    pub fn start<K>(self, api: Api<K>, trim: fn(&mut K)) -> (reflector::Store<K>, impl Future<Output = ()> + Send + 'static)
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    {
        let (reader, writer) = reflector::store();
        let store = reader.clone();
        let stream = watcher(api, watcher::Config::default()).default_backoff().modify(trim).reflect(writer);
        let task = async move {
            let Self { kind, slot, dirty, metrics, shutdown } = self;
            let mut stream = std::pin::pin!(stream);
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    event = stream.next() => event,
                };
                match event {
                    None => return,
                    Some(Ok(watcher::Event::Init)) => tracing::debug!(kind, "listing"),
                    Some(Ok(watcher::Event::InitApply(_))) => {}
                    Some(Ok(watcher::Event::InitDone)) => {
                        metrics.watch_lists.with_label_values(&[kind]).inc();
                        tracing::info!(kind, objects = reader.len(), "listed");
                        dirty.relisted();
                    }
                    Some(Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o))) => {
                        dirty.mark(slot, (o.namespace().unwrap_or_default(), o.name_any()));
                    }
                    Some(Err(watcher::Error::WatchError(status))) if status.code == 410 => {
                        metrics.watch_errors.with_label_values(&[kind]).inc();
                        tracing::info!(kind, message = %status.message, "watch expired (410 Gone); listing again");
                    }
                    Some(Err(e)) => {
                        metrics.watch_errors.with_label_values(&[kind]).inc();
                        tracing::warn!(kind, error = %e, "watch failed; retrying with backoff, the last known objects keep serving");
                    }
                }
            }
        };
        (store, task)
    }
}

fn trim_meta<K: ResourceExt>(object: &mut K) {
    object.managed_fields_mut().clear();
    object.annotations_mut().remove(LAST_APPLIED);
}

/// Services: everything but the bookkeeping (annotations carry the policy).
pub fn trim_service(s: &mut Service) {
    trim_meta(s);
    s.status = None;
}

/// EndpointSlices: [`EndpointSlice`] keeps only what the conversion reads; of the metadata, only the
/// label naming the Service stays.
pub fn trim_slice(s: &mut EndpointSlice) {
    trim_meta(s);
    s.metadata.annotations = None;
    if let Some(labels) = &mut s.metadata.labels {
        labels.retain(|k, _| k == super::convert::SERVICE_NAME_LABEL);
    }
    s.metadata.owner_references = None;
    s.metadata.generate_name = None;
    s.metadata.creation_timestamp = None;
}

/// Pods: [`Pod`] already leaves out all but what the conversion reads; of the metadata, labels,
/// owner references and the annotations of other tools go too (only `*strait.io/*` ones are read).
pub fn trim_pod(p: &mut Pod) {
    trim_meta(p);
    p.trim_annotations();
    p.metadata.labels = None;
    p.metadata.owner_references = None;
    p.metadata.generate_name = None;
    p.metadata.creation_timestamp = None;
}
