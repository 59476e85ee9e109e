//! Bad annotations, reported where users look: a `Warning` Event on their object (`kubectl
//! describe` shows it).
//!
//! - Services' policy annotations (DESIGN §5): the log line and the metric come from the store, as
//!   in embedded mode; this adds the Event.
//! - Pods' inbound-policy annotations (`config.strait.io/inbound-mode`, `…/opaque-ports`): only
//!   Kubernetes has them, so this reports them in all three ways (log, metric
//!   `strait_controller_annotation_errors_total{annotation}`, Event).
//!
//! Each problem is reported once while it lasts (again if it is fixed and comes back). Events are
//! sent by a task of their own through a bounded queue, so a slow or refusing API server never
//! delays discovery; a full queue drops the Event (the log and the metric still have it).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{ObjectReference, Service};

use super::slim::Pod;
use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder, Reporter as EventReporter},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::convert;
use crate::{metrics::Metrics, policy};

/// The Event's `reason`.
pub const REASON: &str = "InvalidAnnotation";
/// The Event's `action`.
pub const ACTION: &str = "ReadPolicy";
/// The Event's reporting controller.
pub const CONTROLLER: &str = "strait-controller";

const QUEUE: usize = 256;

/// Per object (namespace, name): the resourceVersion last looked at and its problems.
type Seen = HashMap<(String, String), (String, HashSet<String>)>;

/// Remembers what was reported and queues new problems to the Event task.
pub struct Reporter {
    tx: mpsc::Sender<(ObjectReference, String)>,
    metrics: Arc<Metrics>,
    services: Seen,
    pods: Seen,
}

impl Reporter {
    /// Starts the Event task (it ends with `shutdown`).
    pub fn start(client: Client, metrics: Arc<Metrics>, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, String)>(QUEUE);
        // `POD_NAME` tells replicas apart when the chart sets it from the downward API.
        let reporter = EventReporter { controller: CONTROLLER.into(), instance: std::env::var("POD_NAME").ok() };
        tokio::spawn(async move {
            let mut failed_before = false;
            loop {
                let (reference, note) = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    next = rx.recv() => match next { Some(n) => n, None => return },
                };
                let event = Event {
                    type_: EventType::Warning,
                    reason: REASON.into(),
                    note: Some(truncate(note, 1024)),
                    action: ACTION.into(),
                    secondary: None,
                };
                // A recorder per Event: kube's Recorder folds every later Event of the same
                // object, reason and action into the first one's series, keeping the first note,
                // so a second bad annotation would never be read. Repeats are already left out here.
                let recorder = Recorder::new(client.clone(), reporter.clone());
                match recorder.publish(&event, &reference).await {
                    Ok(()) => failed_before = false,
                    // Said once per run of failures: an API server refusing Events (RBAC) would
                    // otherwise log on every change.
                    Err(e) if !failed_before => {
                        failed_before = true;
                        tracing::warn!(error = %e, "could not create a Kubernetes Event for a bad annotation");
                    }
                    Err(e) => tracing::debug!(error = %e, "could not create a Kubernetes Event"),
                }
            }
        });
        Self { tx, metrics, services: HashMap::new(), pods: HashMap::new() }
    }

    /// Looks at every Service changed since the last call and queues an Event per new problem.
    pub fn report(&mut self, services: &[Arc<Service>]) {
        let tx = &self.tx;
        check(&mut self.services, services, service_problems, |s, _, note| queue(tx, s.object_ref(&()), note));
    }

    /// [`Reporter::report`] for a few Services by (namespace, name), `None` for a deleted one.
    pub fn report_some(&mut self, services: impl IntoIterator<Item = ((String, String), Option<Arc<Service>>)>) {
        let tx = &self.tx;
        check_some(&mut self.services, services, service_problems, |s, _, note| queue(tx, s.object_ref(&()), note));
    }

    /// Looks at every Pod changed since the last call; a new problem with its inbound-policy
    /// annotations is logged, counted and sent as an Event.
    pub fn report_pods(&mut self, pods: &[Arc<Pod>]) {
        let (tx, metrics) = (&self.tx, &self.metrics);
        check(&mut self.pods, pods, pod_problems, |p, label, note| pod_problem(tx, metrics, p, label, note));
    }

    /// [`Reporter::report_pods`] for a few Pods by (namespace, name), `None` for a deleted one.
    pub fn report_some_pods(&mut self, pods: impl IntoIterator<Item = ((String, String), Option<Arc<Pod>>)>) {
        let (tx, metrics) = (&self.tx, &self.metrics);
        check_some(&mut self.pods, pods, pod_problems, |p, label, note| pod_problem(tx, metrics, p, label, note));
    }
}

fn service_problems(s: &Service) -> Vec<(&'static str, String)> {
    let (_, errors) = policy::from_annotations(s.annotations());
    errors.iter().map(|e| (e.label(), e.to_string())).collect()
}

fn pod_problems(p: &Pod) -> Vec<(&'static str, String)> {
    convert::inbound_errors(p).iter().map(|e| (e.label(), e.to_string())).collect()
}

fn pod_problem(tx: &mpsc::Sender<(ObjectReference, String)>, metrics: &Metrics, p: &Pod, label: &'static str, note: &str) {
    tracing::warn!(
        pod = %p.name_any(),
        namespace = %p.namespace().unwrap_or_default(),
        annotation = label,
        error = note,
        "bad inbound policy annotation; that field keeps its default"
    );
    metrics.annotation_errors.with_label_values(&[label]).inc();
    queue(tx, p.object_ref(&()), note);
}

/// Calls `new` for every problem of a changed object that was not there before, and remembers
/// the current problems of every object (forgetting deleted objects).
fn check<K: Resource<DynamicType = ()>>(
    seen: &mut Seen,
    objects: &[Arc<K>],
    problems: impl Fn(&K) -> Vec<(&'static str, String)>,
    mut new: impl FnMut(&K, &'static str, &str),
) {
    let mut current = HashMap::with_capacity(objects.len());
    for o in objects {
        let key = (o.namespace().unwrap_or_default(), o.name_any());
        let previous = seen.remove(&key);
        if let Some(looked) = look(previous, &**o, &problems, &mut new) {
            current.insert(key, looked);
        }
    }
    *seen = current;
}

/// [`check`] for a few objects by key, `None` for one that is gone; the others stay as they were.
fn check_some<K: Resource<DynamicType = ()>>(
    seen: &mut Seen,
    objects: impl IntoIterator<Item = ((String, String), Option<Arc<K>>)>,
    problems: impl Fn(&K) -> Vec<(&'static str, String)>,
    mut new: impl FnMut(&K, &'static str, &str),
) {
    for (key, object) in objects {
        let previous = seen.remove(&key);
        if let Some(o) = object
            && let Some(looked) = look(previous, &*o, &problems, &mut new)
        {
            seen.insert(key, looked);
        }
    }
}

/// One object's current problems, calling `new` for those it did not have at its previous look.
/// `None` when it has none: only objects with problems are remembered (a cluster's pods are
/// nearly all fine, and 100,000 entries of nothing would cost megabytes).
fn look<K: Resource<DynamicType = ()>>(
    previous: Option<(String, HashSet<String>)>,
    o: &K,
    problems: &impl Fn(&K) -> Vec<(&'static str, String)>,
    new: &mut impl FnMut(&K, &'static str, &str),
) -> Option<(String, HashSet<String>)> {
    let version = o.resource_version().unwrap_or_default();
    let looked = match previous {
        Some((v, known)) if v == version => (version, known),
        previous => {
            let before = previous.map(|(_, p)| p).unwrap_or_default();
            let mut now = HashSet::new();
            for (label, note) in problems(o) {
                if !before.contains(&note) {
                    new(o, label, &note);
                }
                now.insert(note);
            }
            (version, now)
        }
    };
    (!looked.1.is_empty()).then_some(looked)
}

fn queue(tx: &mpsc::Sender<(ObjectReference, String)>, reference: ObjectReference, note: &str) {
    let (name, namespace) = (reference.name.clone().unwrap_or_default(), reference.namespace.clone().unwrap_or_default());
    if tx.try_send((reference, note.to_string())).is_err() {
        tracing::debug!(%name, %namespace, "Event queue full; the Event is dropped");
    }
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, version: &str, mode: &str) -> Arc<Pod> {
        let yaml = format!(
            "metadata: {{name: {name}, namespace: demo, resourceVersion: '{version}', annotations: {{strait.io/inject: enabled, config.strait.io/inbound-mode: '{mode}'}}}}\nspec: {{containers: [{{name: strait-proxy}}]}}"
        );
        Arc::new(serde_yaml::from_str(&yaml).unwrap())
    }

    /// Runs one pass over `pods` and returns the (pod, note) pairs reported as new.
    fn pass(seen: &mut Seen, pods: &[Arc<Pod>]) -> Vec<(String, String)> {
        let problems = |p: &Pod| convert::inbound_errors(p).iter().map(|e| (e.label(), e.to_string())).collect();
        let mut new = Vec::new();
        check(seen, pods, problems, |p, _, note| new.push((p.name_any(), note.to_string())));
        new
    }

    #[test]
    fn each_problem_is_reported_once_while_it_lasts() {
        let mut seen = Seen::new();
        let new = pass(&mut seen, &[pod("a", "1", "nope"), pod("b", "1", "strict")]);
        assert_eq!(new.len(), 1);
        assert_eq!(new[0].0, "a");
        assert!(new[0].1.contains("\"nope\" is not one of permissive, strict"), "{}", new[0].1);
        // Unchanged, or changed with the same problem: nothing new.
        assert!(pass(&mut seen, &[pod("a", "1", "nope"), pod("b", "1", "strict")]).is_empty());
        assert!(pass(&mut seen, &[pod("a", "2", "nope"), pod("b", "1", "strict")]).is_empty());
        // Another problem is new; a fixed one that comes back is new again.
        assert_eq!(pass(&mut seen, &[pod("a", "3", "NOPE")]).len(), 1);
        assert!(pass(&mut seen, &[pod("a", "4", "strict")]).is_empty());
        assert_eq!(pass(&mut seen, &[pod("a", "5", "NOPE")]).len(), 1);
        // A deleted pod is forgotten: a new one of the same name is reported.
        assert!(pass(&mut seen, &[]).is_empty());
        assert_eq!(pass(&mut seen, &[pod("a", "7", "NOPE")]).len(), 1);
    }
}
