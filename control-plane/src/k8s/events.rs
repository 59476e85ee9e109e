//! Bad policy annotations, reported where users look: a `Warning` Event on the Service
//! (`kubectl describe service` shows it). The log line and the metric come from the store, as in
//! embedded mode; this adds the Event.
//!
//! Each problem is reported once while it lasts (again if it is fixed and comes back). Events are
//! sent by a task of their own through a bounded queue, so a slow or refusing API server never
//! delays discovery; a full queue drops the Event (the log and the metric still have it).

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use k8s_openapi::api::core::v1::{ObjectReference, Service};
use kube::{
    Client, Resource, ResourceExt,
    runtime::events::{Event, EventType, Recorder, Reporter as EventReporter},
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::policy;

/// The Event's `reason`.
pub const REASON: &str = "InvalidAnnotation";
/// The Event's `action`.
pub const ACTION: &str = "ReadPolicy";
/// The Event's reporting controller.
pub const CONTROLLER: &str = "strait-controller";

const QUEUE: usize = 256;

/// Remembers what was reported and queues new problems to the Event task.
pub struct Reporter {
    tx: mpsc::Sender<(ObjectReference, String)>,
    /// Per Service (namespace, name): the resourceVersion last looked at and its problems.
    seen: HashMap<(String, String), (String, HashSet<String>)>,
}

impl Reporter {
    /// Starts the Event task (it ends with `shutdown`).
    pub fn start(client: Client, shutdown: CancellationToken) -> Self {
        let (tx, mut rx) = mpsc::channel::<(ObjectReference, String)>(QUEUE);
        // `POD_NAME` tells replicas apart when the chart sets it from the downward API.
        let reporter = EventReporter { controller: CONTROLLER.into(), instance: std::env::var("POD_NAME").ok() };
        let recorder = Recorder::new(client, reporter);
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
        Self { tx, seen: HashMap::new() }
    }

    /// Looks at every Service changed since the last call and queues an Event per new problem.
    pub fn report(&mut self, services: &[Arc<Service>]) {
        let mut current = HashMap::with_capacity(services.len());
        for s in services {
            let key = (s.namespace().unwrap_or_default(), s.name_any());
            let version = s.resource_version().unwrap_or_default();
            let problems = match self.seen.remove(&key) {
                Some((v, problems)) if v == version => problems,
                previous => {
                    let (_, errors) = policy::from_annotations(s.annotations());
                    let problems: HashSet<String> = errors.iter().map(ToString::to_string).collect();
                    let before = previous.map(|(_, p)| p).unwrap_or_default();
                    for note in problems.difference(&before) {
                        if self.tx.try_send((s.object_ref(&()), note.clone())).is_err() {
                            tracing::debug!(service = %key.1, namespace = %key.0, "Event queue full; the Event is dropped");
                        }
                    }
                    problems
                }
            };
            current.insert(key, (version, problems));
        }
        self.seen = current;
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
