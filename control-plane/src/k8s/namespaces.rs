//! The Namespaces' Strait annotations, for the injector.
//!
//! The webhook must answer a review without calling the API server (a review that waits on the API
//! server is one more way to block pod creation, and the API server is the caller), yet namespace-level
//! opt-in (`strait.io/inject: enabled` on the Namespace) and `config.strait.io/*` defaults live on the
//! Namespace. So the controller watches Namespaces like the other kinds (a `runtime::watcher` into a
//! reflector store) and keeps of each only its name and its `strait.io/*` annotations: a few hundred
//! bytes per namespace. The mesh never depends on Namespaces, so their changes mark nothing dirty.

use std::{collections::BTreeMap, future::Future, sync::Arc};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Namespace;
use kube::{
    Api, Client, ResourceExt,
    runtime::{WatchStreamExt, reflector, watcher},
};
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// The watch metrics' `kind` label.
pub const KIND: &str = "Namespace";

/// Read side: the annotations of every namespace listed so far.
#[derive(Clone)]
pub struct Namespaces(reflector::Store<Namespace>);

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Namespaces").field("listed", &self.0.len()).finish()
    }
}

impl Namespaces {
    /// The Strait annotations of `namespace`; `None` before the first list or for a namespace that
    /// does not exist (yet).
    pub fn annotations(&self, namespace: &str) -> Option<BTreeMap<String, String>> {
        let ns = self.0.get(&reflector::ObjectRef::new(namespace))?;
        Some(ns.metadata.annotations.clone().unwrap_or_default())
    }

    /// Whether the first full list is in.
    pub fn is_ready(&self) -> bool {
        self.0.wait_until_ready().now_or_never_ready()
    }

    /// A store filled by hand, for tests of what reads it.
    pub fn from_annotations<'a>(items: impl IntoIterator<Item = (&'a str, BTreeMap<String, String>)>) -> Self {
        let (reader, mut writer) = reflector::store();
        writer.apply_watcher_event(&watcher::Event::Init);
        for (name, annotations) in items {
            let mut ns = Namespace::default();
            ns.metadata.name = Some(name.to_string());
            ns.metadata.annotations = Some(annotations);
            writer.apply_watcher_event(&watcher::Event::InitApply(ns));
        }
        writer.apply_watcher_event(&watcher::Event::InitDone);
        Self(reader)
    }
}

/// `wait_until_ready` as a non-blocking check.
trait NowOrNever {
    fn now_or_never_ready(self) -> bool;
}

impl<F: Future<Output = Result<(), reflector::store::WriterDropped>>> NowOrNever for F {
    fn now_or_never_ready(self) -> bool {
        matches!(futures_util::FutureExt::now_or_never(self), Some(Ok(())))
    }
}

/// Keeps the name and the Strait annotations only (`strait.io/*`, `config.strait.io/*`).
pub fn trim_namespace(ns: &mut Namespace) {
    ns.managed_fields_mut().clear();
    if let Some(annotations) = &mut ns.metadata.annotations {
        annotations.retain(|k, _| is_strait_key(k));
    }
    ns.metadata.labels = None;
    ns.metadata.owner_references = None;
    ns.metadata.finalizers = None;
    ns.spec = None;
    ns.status = None;
}

fn is_strait_key(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, _)| prefix == "strait.io" || prefix.ends_with(".strait.io"))
}

/// The store, and the task that fills it (run it until `shutdown`).
pub fn watch(
    client: Client,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) -> (Namespaces, impl Future<Output = ()> + Send + 'static) {
    let (reader, writer) = reflector::store();
    let stream = watcher(Api::<Namespace>::all(client), watcher::Config::default())
        .default_backoff()
        .modify(trim_namespace)
        .reflect(writer);
    let store = reader.clone();
    let task = async move {
        let mut stream = std::pin::pin!(stream);
        loop {
            let event = tokio::select! {
                _ = shutdown.cancelled() => return,
                event = stream.next() => event,
            };
            match event {
                None => return,
                Some(Ok(watcher::Event::InitDone)) => {
                    metrics.watch_lists.with_label_values(&[KIND]).inc();
                    tracing::debug!(namespaces = reader.len(), "namespaces listed");
                }
                Some(Ok(_)) => {}
                Some(Err(e)) => {
                    metrics.watch_errors.with_label_values(&[KIND]).inc();
                    tracing::warn!(error = %e, "namespace watch failed; retrying with backoff");
                }
            }
        }
    };
    (Namespaces(store), task)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_strait_annotations_are_kept() {
        let mut ns: Namespace = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "shop", "labels": {"a": "b"}, "annotations": {
                "strait.io/inject": "enabled", "config.strait.io/proxy-log-level": "debug",
                "kubectl.kubernetes.io/last-applied-configuration": "{}", "notstrait.io/x": "y"}},
            "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": "Active"}
        }))
        .unwrap();
        trim_namespace(&mut ns);
        let kept: Vec<_> = ns.annotations().keys().cloned().collect();
        assert_eq!(kept, ["config.strait.io/proxy-log-level", "strait.io/inject"]);
        assert!(ns.spec.is_none() && ns.status.is_none() && ns.metadata.labels.is_none());
    }

    #[test]
    fn a_filled_store_answers_by_name() {
        let store = Namespaces::from_annotations([("shop", BTreeMap::from([("strait.io/inject".into(), "enabled".into())]))]);
        assert!(store.is_ready());
        assert_eq!(store.annotations("shop").unwrap()["strait.io/inject"], "enabled");
        assert!(store.annotations("other").is_none());
    }
}
