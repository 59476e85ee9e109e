//! The test API server's storage: objects, the global resourceVersion counter, and the history of
//! changes that watches replay, with etcd-like compaction.

use std::{collections::BTreeMap, ops::Bound};

use serde_json::{Value, json};

/// The resources the server knows: (apiVersion, plural, kind, namespaced). The URL of a resource
/// is `/api/v1/<plural>` for the core group and `/apis/<group>/<version>/<plural>` otherwise.
pub const RESOURCES: [(&str, &str, &str, bool); 12] = [
    ("v1", "services", "Service", true),
    ("v1", "pods", "Pod", true),
    ("v1", "namespaces", "Namespace", false),
    ("v1", "configmaps", "ConfigMap", true),
    ("discovery.k8s.io/v1", "endpointslices", "EndpointSlice", true),
    ("events.k8s.io/v1", "events", "Event", true),
    ("v1", "events", "Event", true),
    ("apps/v1", "deployments", "Deployment", true),
    ("v1", "secrets", "Secret", true),
    ("admissionregistration.k8s.io/v1", "mutatingwebhookconfigurations", "MutatingWebhookConfiguration", false),
    ("rbac.authorization.k8s.io/v1", "clusterroles", "ClusterRole", false),
    ("rbac.authorization.k8s.io/v1", "clusterrolebindings", "ClusterRoleBinding", false),
];

/// One resource type, e.g. `discovery.k8s.io/v1` `endpointslices`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Resource {
    pub api_version: &'static str,
    pub plural: &'static str,
    pub kind: &'static str,
    pub namespaced: bool,
}

impl Resource {
    pub fn by_plural(api_version: &str, plural: &str) -> Option<Self> {
        Self::find(|(v, p, _, _)| v == api_version && p == plural)
    }

    /// By kind, and apiVersion when given (`Event` exists in two groups; without an apiVersion
    /// the first listed, `events.k8s.io/v1`, is meant).
    pub fn by_kind(api_version: Option<&str>, kind: &str) -> Option<Self> {
        Self::find(|(v, _, k, _)| k == kind && api_version.is_none_or(|a| a == v))
    }

    fn find(matches: impl Fn((&str, &str, &str, bool)) -> bool) -> Option<Self> {
        RESOURCES.iter().find(|r| matches(**r)).map(|&(api_version, plural, kind, namespaced)| Self {
            api_version,
            plural,
            kind,
            namespaced,
        })
    }

    /// The collection's URL path, in a namespace or across all.
    pub fn path(&self, namespace: Option<&str>) -> String {
        let base = if self.api_version.contains('/') {
            format!("/apis/{}", self.api_version)
        } else {
            format!("/api/{}", self.api_version)
        };
        match namespace {
            Some(ns) if self.namespaced => format!("{base}/namespaces/{ns}/{}", self.plural),
            _ => format!("{base}/{}", self.plural),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Key {
    pub resource: Resource,
    pub namespace: String,
    pub name: String,
}

/// A watch event type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, as the history keeps it for watches.
#[derive(Debug, Clone)]
pub struct Change {
    pub revision: u64,
    pub key: Key,
    pub event: EventType,
    /// The object after the change (for a deletion: the last state, with the deletion's version).
    pub object: Value,
    /// The object before the change, to tell selector transitions apart.
    pub previous: Option<Value>,
}

/// What a list or watch selects: a namespace (or all) and label/field selectors.
#[derive(Debug, Clone, Default)]
pub struct Selection {
    pub namespace: Option<String>,
    pub labels: Vec<Requirement>,
    pub fields: Vec<Requirement>,
}

/// One selector requirement: `k=v`, `k!=v`, `k` (exists), `!k` (does not exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    NotExists(String),
}

/// Parses the equality-based selector syntax; set-based (`in`, `notin`) is refused.
pub fn parse_selector(s: &str) -> Result<Vec<Requirement>, String> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let r = if let Some((k, v)) = part.split_once("!=") {
            Requirement::NotEquals(k.trim().into(), v.trim().into())
        } else if let Some((k, v)) = part.split_once("==").or_else(|| part.split_once('=')) {
            Requirement::Equals(k.trim().into(), v.trim().into())
        } else if part.contains(' ') || part.contains('(') {
            return Err(format!("selector {part:?}: only equality-based requirements are supported by the test server"));
        } else if let Some(k) = part.strip_prefix('!') {
            Requirement::NotExists(k.into())
        } else {
            Requirement::Exists(part.into())
        };
        out.push(r);
    }
    Ok(out)
}

fn satisfied(requirements: &[Requirement], get: impl Fn(&str) -> Option<String>) -> bool {
    requirements.iter().all(|r| match r {
        Requirement::Equals(k, v) => get(k).as_deref() == Some(v),
        Requirement::NotEquals(k, v) => get(k).as_deref() != Some(v),
        Requirement::Exists(k) => get(k).is_some(),
        Requirement::NotExists(k) => get(k).is_none(),
    })
}

impl Selection {
    pub fn matches(&self, key: &Key, object: &Value) -> bool {
        if self.namespace.as_ref().is_some_and(|ns| *ns != key.namespace) {
            return false;
        }
        // Without selectors (the common case: a whole collection) nothing of the object is read.
        if self.labels.is_empty() && self.fields.is_empty() {
            return true;
        }
        let labels = &object["metadata"]["labels"];
        satisfied(&self.labels, |k| labels[k].as_str().map(String::from))
            && satisfied(&self.fields, |path| {
                let mut v = object;
                for part in path.split('.') {
                    v = &v[part];
                }
                match v {
                    Value::String(s) => Some(s.clone()),
                    Value::Null => None,
                    other => Some(other.to_string()),
                }
            })
    }
}

/// All objects and the history since the last compaction.
#[derive(Debug, Default)]
pub struct Storage {
    /// The last resourceVersion given out; one counter for every resource, as etcd has.
    pub revision: u64,
    pub objects: BTreeMap<Key, Value>,
    /// Every change with a revision above `compacted`, in order.
    pub history: Vec<Change>,
    /// Changes up to this revision are forgotten: a watch from an older version gets 410 Gone.
    pub compacted: u64,
    uids: u64,
}

/// When objects say they were created (the test server's clock does not move).
pub const CREATION_TIMESTAMP: &str = "2026-01-01T00:00:00Z";

impl Storage {
    pub fn key(object: &Value) -> Result<Key, String> {
        let kind = object["kind"].as_str().ok_or("the object has no kind")?;
        let resource = Resource::by_kind(object["apiVersion"].as_str(), kind)
            .ok_or_else(|| format!("{}/{kind} is not a resource this test server knows", object["apiVersion"]))?;
        let name = object["metadata"]["name"].as_str().ok_or("the object has no metadata.name")?.to_string();
        let namespace = match object["metadata"]["namespace"].as_str() {
            _ if !resource.namespaced => String::new(),
            Some(ns) => ns.to_string(),
            None => "default".to_string(),
        };
        Ok(Key { resource, namespace, name })
    }

    /// Creates or replaces `object`; returns the change's revision and its event type.
    pub fn put(&mut self, mut object: Value) -> Result<(u64, EventType), String> {
        let key = Self::key(&object)?;
        let previous = self.objects.get(&key).cloned();
        self.revision += 1;
        let meta = object["metadata"].as_object_mut().ok_or("metadata is not an object")?;
        if key.resource.namespaced {
            meta.insert("namespace".into(), json!(key.namespace));
        }
        meta.insert("resourceVersion".into(), json!(self.revision.to_string()));
        match &previous {
            Some(p) => {
                // Identity and birth stay with the object across updates.
                for field in ["uid", "creationTimestamp"] {
                    meta.insert(field.into(), p["metadata"][field].clone());
                }
            }
            None => {
                if !meta.contains_key("uid") {
                    self.uids += 1;
                    meta.insert("uid".into(), json!(format!("00000000-0000-4000-8000-{:012x}", self.uids)));
                }
                meta.entry("creationTimestamp").or_insert(json!(CREATION_TIMESTAMP));
            }
        }
        let event = if previous.is_some() { EventType::Modified } else { EventType::Added };
        self.objects.insert(key.clone(), object.clone());
        self.history.push(Change { revision: self.revision, key, event, object, previous });
        Ok((self.revision, event))
    }

    /// Deletes an object; returns the deletion's revision, `None` when there was no such object.
    pub fn delete(&mut self, key: &Key) -> Option<u64> {
        let mut object = self.objects.remove(key)?;
        self.revision += 1;
        object["metadata"]["resourceVersion"] = json!(self.revision.to_string());
        let previous = Some(object.clone());
        self.history.push(Change { revision: self.revision, key: key.clone(), event: EventType::Deleted, object, previous });
        Some(self.revision)
    }

    /// Forgets the history up to now, as etcd compaction does.
    pub fn compact(&mut self) {
        self.compacted = self.revision;
        self.history.clear();
    }

    /// The objects of `resource` that `selection` selects, in storage order (namespace, name).
    pub fn list<'a>(&'a self, resource: Resource, selection: &'a Selection) -> impl Iterator<Item = (&'a Key, &'a Value)> {
        self.list_after(resource, selection, None)
    }

    /// [`Storage::list`] from after the object `after` (namespace, name), which need not exist:
    /// the next page of a paginated list. Objects are kept in key order (resource, namespace,
    /// name), so this reads only the resource's (or the namespace's) objects from there on,
    /// however many other objects the storage holds.
    pub fn list_after<'a>(
        &'a self,
        resource: Resource,
        selection: &'a Selection,
        after: Option<(&str, &str)>,
    ) -> impl Iterator<Item = (&'a Key, &'a Value)> {
        let first = Key { resource, namespace: selection.namespace.clone().unwrap_or_default(), name: String::new() };
        let start = match after {
            Some((namespace, name)) if (namespace, name) >= (first.namespace.as_str(), "") => {
                Bound::Excluded(Key { resource, namespace: namespace.to_string(), name: name.to_string() })
            }
            _ => Bound::Included(first),
        };
        self.objects
            .range((start, Bound::Unbounded))
            .take_while(move |(k, _)| {
                k.resource == resource && selection.namespace.as_ref().is_none_or(|ns| *ns == k.namespace)
            })
            .filter(move |(k, v)| selection.matches(k, v))
    }

    /// The watch events after revision `after` for `resource` and `selection`, as a watcher must see
    /// them: an object entering the selection is ADDED, one leaving it DELETED.
    pub fn events_after(&self, after: u64, resource: Resource, selection: &Selection) -> Vec<(EventType, Value)> {
        let start = self.history.partition_point(|c| c.revision <= after);
        self.history[start..]
            .iter()
            .filter(|c| c.key.resource == resource)
            .filter_map(|c| {
                let now = c.event != EventType::Deleted && selection.matches(&c.key, &c.object);
                let before = c.previous.as_ref().is_some_and(|p| selection.matches(&c.key, p));
                let event = match (c.event, before, now) {
                    (EventType::Deleted, true, _) => EventType::Deleted,
                    (EventType::Deleted, false, _) => return None,
                    (_, false, true) => EventType::Added,
                    (_, true, true) => EventType::Modified,
                    (_, true, false) => EventType::Deleted,
                    (_, false, false) => return None,
                };
                Some((event, c.object.clone()))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, labels: Value) -> Value {
        json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": "n", "labels": labels}})
    }

    #[test]
    fn one_counter_for_every_resource_and_compaction() {
        let mut s = Storage::default();
        assert_eq!(s.put(service("a", json!({}))).unwrap(), (1, EventType::Added));
        let pod = json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}});
        assert_eq!(s.put(pod).unwrap(), (2, EventType::Added));
        assert_eq!(s.put(service("a", json!({"x": "1"}))).unwrap(), (3, EventType::Modified));
        let services = Resource::by_plural("v1", "services").unwrap();
        let all = Selection::default();
        let events: Vec<_> = s.events_after(0, services, &all).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, [EventType::Added, EventType::Modified]);
        let key = Storage::key(&service("a", json!({}))).unwrap();
        assert_eq!(s.delete(&key), Some(4));
        assert_eq!(s.delete(&key), None);
        s.compact();
        assert_eq!((s.compacted, s.history.len()), (4, 0));
        let pods = Resource::by_plural("v1", "pods").unwrap();
        assert_eq!(s.list(pods, &all).next().unwrap().0.namespace, "default");
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let mut s = Storage::default();
        s.put(service("a", json!({"app": "web"}))).unwrap();
        s.put(service("a", json!({"app": "api"}))).unwrap();
        s.put(service("a", json!({"app": "web"}))).unwrap();
        let selection = Selection { labels: parse_selector("app=web").unwrap(), ..Default::default() };
        let services = Resource::by_plural("v1", "services").unwrap();
        let events: Vec<_> = s.events_after(0, services, &selection).into_iter().map(|(e, _)| e).collect();
        assert_eq!(events, [EventType::Added, EventType::Deleted, EventType::Added]);
    }

    #[test]
    fn pages_start_after_the_given_object() {
        let mut s = Storage::default();
        let pod = |ns: &str, name: &str| json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "namespace": ns}});
        for (ns, name) in [("a", "p1"), ("a", "p2"), ("b", "p1"), ("b", "p3"), ("c", "p1")] {
            s.put(pod(ns, name)).unwrap();
        }
        s.put(service("z", json!({}))).unwrap();
        let pods = Resource::by_plural("v1", "pods").unwrap();
        let names = |selection: &Selection, after| {
            s.list_after(pods, selection, after).map(|(k, _)| format!("{}/{}", k.namespace, k.name)).collect::<Vec<_>>()
        };
        let all = Selection::default();
        assert_eq!(names(&all, None), ["a/p1", "a/p2", "b/p1", "b/p3", "c/p1"]);
        assert_eq!(names(&all, Some(("a", "p2"))), ["b/p1", "b/p3", "c/p1"]);
        assert_eq!(names(&all, Some(("b", "p2"))), ["b/p3", "c/p1"], "after an object that does not exist");
        assert_eq!(names(&all, Some(("c", "p1"))), Vec::<String>::new());
        let in_b = Selection { namespace: Some("b".into()), ..Default::default() };
        assert_eq!(names(&in_b, None), ["b/p1", "b/p3"]);
        assert_eq!(names(&in_b, Some(("a", "p9"))), ["b/p1", "b/p3"], "a key before the namespace");
        assert_eq!(names(&in_b, Some(("b", "p1"))), ["b/p3"]);
        assert_eq!(names(&in_b, Some(("c", ""))), Vec::<String>::new(), "a key after the namespace");
    }

    #[test]
    fn selectors() {
        assert_eq!(
            parse_selector("a=1, b==2,c!=3,d,!e").unwrap(),
            [
                Requirement::Equals("a".into(), "1".into()),
                Requirement::Equals("b".into(), "2".into()),
                Requirement::NotEquals("c".into(), "3".into()),
                Requirement::Exists("d".into()),
                Requirement::NotExists("e".into()),
            ]
        );
        assert!(parse_selector("env in (a,b)").is_err());
        let fields = Selection { fields: parse_selector("metadata.name=a").unwrap(), ..Default::default() };
        let key = Storage::key(&service("a", json!({}))).unwrap();
        assert!(fields.matches(&key, &service("a", json!({}))));
        assert!(!fields.matches(&key, &service("b", json!({}))));
    }

    #[test]
    fn paths() {
        let slices = Resource::by_kind(Some("discovery.k8s.io/v1"), "EndpointSlice").unwrap();
        assert_eq!(slices.path(None), "/apis/discovery.k8s.io/v1/endpointslices");
        assert_eq!(slices.path(Some("demo")), "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices");
        assert_eq!(Resource::by_kind(None, "Namespace").unwrap().path(Some("x")), "/api/v1/namespaces");
    }
}
