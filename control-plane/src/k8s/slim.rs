//! The parts of Pods and EndpointSlices the controller reads, deserialized straight from the API
//! server's JSON: serde skips every other field while parsing, so it is never allocated.
//!
//! A cluster has a Pod per endpoint, and k8s-openapi's types are large even when empty: `size_of`
//! gives 2.4 KiB for a `Pod` plus 2.3 KiB per `Container`, before any string, so trimming after
//! parsing still left about 7 KiB per two-container pod; a slice's `Endpoint` carries hints,
//! topology, hostname, node name and a whole `ObjectReference`. [`Pod`] keeps the metadata (without labels, owner
//! references or managed fields), the service account, the containers' names, ports and restart
//! policy, and the phase. [`EndpointSlice`] keeps the address type, the ports, and per endpoint
//! its addresses, conditions, zone and the Pod it names.

use std::borrow::Cow;

use k8s_openapi::{NamespaceResourceScope, apimachinery::pkg::apis::meta::v1::ObjectMeta};
use serde::{Deserialize, Serialize};

/// A Pod, as far as the mesh cares.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct Pod {
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: Option<PodSpec>,
    pub status: Option<PodStatus>,
    /// The `*strait.io/*` annotations, moved out of `metadata` by the watcher's trim: a map of
    /// annotations costs half a KiB even with one entry (a B-tree node), a short list does not.
    #[serde(skip)]
    pub strait_annotations: Vec<(String, String)>,
}

impl Pod {
    /// An annotation's value, from the trimmed list or, on an untrimmed Pod, the metadata.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        let trimmed = self.strait_annotations.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str());
        trimmed.or_else(|| self.metadata.annotations.as_ref()?.get(key).map(String::as_str))
    }

    /// Keeps only the `*strait.io/*` annotations, in [`Pod::strait_annotations`].
    pub fn trim_annotations(&mut self) {
        let all = self.metadata.annotations.take().unwrap_or_default();
        self.strait_annotations = all.into_iter().filter(|(k, _)| is_strait(k)).collect();
    }
}

fn is_strait(key: &str) -> bool {
    key.split_once('/').is_some_and(|(prefix, _)| prefix == "strait.io" || prefix.ends_with(".strait.io"))
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodSpec {
    pub service_account_name: Option<String>,
    /// The deprecated alias of `serviceAccountName`, still read when only it is set.
    pub service_account: Option<String>,
    #[serde(default)]
    pub containers: Vec<Container>,
    pub init_containers: Option<Vec<Container>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Container {
    pub name: String,
    pub ports: Option<Vec<ContainerPort>>,
    /// `Always` on an init container makes it a native sidecar.
    pub restart_policy: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerPort {
    pub name: Option<String>,
    pub container_port: i32,
    pub protocol: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct PodStatus {
    pub phase: Option<String>,
}

/// `kube::Resource` for a slim type of a namespaced built-in kind.
macro_rules! namespaced_resource {
    ($type:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        impl kube::Resource for $type {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(_: &()) -> Cow<'_, str> {
                $kind.into()
            }

            fn group(_: &()) -> Cow<'_, str> {
                $group.into()
            }

            fn version(_: &()) -> Cow<'_, str> {
                $version.into()
            }

            fn plural(_: &()) -> Cow<'_, str> {
                $plural.into()
            }

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

namespaced_resource!(Pod, "Pod", "", "v1", "pods");
namespaced_resource!(EndpointSlice, "EndpointSlice", "discovery.k8s.io", "v1", "endpointslices");

/// An EndpointSlice, as far as the mesh cares.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSlice {
    #[serde(default)]
    pub metadata: ObjectMeta,
    /// `IPv4`, `IPv6` or `FQDN`.
    #[serde(default)]
    pub address_type: String,
    pub endpoints: Option<Vec<Endpoint>>,
    pub ports: Option<Vec<EndpointPort>>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Endpoint {
    #[serde(default)]
    pub addresses: Vec<String>,
    pub conditions: Option<EndpointConditions>,
    pub target_ref: Option<TargetRef>,
    pub zone: Option<String>,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct EndpointConditions {
    pub ready: Option<bool>,
    pub serving: Option<bool>,
    pub terminating: Option<bool>,
}

/// An endpoint's `targetRef`: the object behind it (a Pod, for the endpoints that matter here).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct TargetRef {
    pub kind: Option<String>,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct EndpointPort {
    pub name: Option<String>,
    pub port: Option<i32>,
    pub protocol: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_real_pod_and_keeps_what_the_mesh_needs() {
        let yaml = r#"
apiVersion: v1
kind: Pod
metadata:
  name: web-1
  namespace: demo
  labels: {app: web}
  annotations: {strait.io/inject: enabled}
spec:
  serviceAccountName: web
  nodeName: node-1
  containers:
    - name: app
      image: registry.example/web:1
      env: [{name: A, value: b}]
      ports: [{name: http, containerPort: 8080}, {containerPort: 53, protocol: UDP}]
  initContainers:
    - {name: strait-proxy, image: strait/proxy, restartPolicy: Always}
status: {phase: Running, podIP: 10.1.0.11, conditions: [{type: Ready, status: "True"}]}
"#;
        let pod: Pod = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(kube::ResourceExt::name_any(&pod), "web-1");
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("web"));
        let ports = spec.containers[0].ports.as_ref().unwrap();
        assert_eq!((ports[0].name.as_deref(), ports[0].container_port, ports[1].protocol.as_deref()), (Some("http"), 8080, Some("UDP")));
        assert_eq!(spec.init_containers.as_ref().unwrap()[0].restart_policy.as_deref(), Some("Always"));
        assert_eq!(pod.status.as_ref().unwrap().phase.as_deref(), Some("Running"));
        let mut trimmed = pod.clone();
        trimmed.metadata.annotations.as_mut().unwrap().insert("other.example/x".into(), "y".into());
        trimmed.trim_annotations();
        assert_eq!(trimmed.metadata.annotations, None);
        assert_eq!(trimmed.strait_annotations, [("strait.io/inject".to_string(), "enabled".to_string())]);
        assert_eq!((trimmed.annotation("strait.io/inject"), pod.annotation("strait.io/inject")), (Some("enabled"), Some("enabled")));
    }

    #[test]
    fn reads_a_real_endpoint_slice() {
        let yaml = r#"
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x7k2p, namespace: demo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8081, protocol: TCP}]
endpoints:
  - addresses: [10.1.0.11]
    conditions: {ready: true, serving: true, terminating: false}
    hints: {forZones: [{name: zone-a}]}
    nodeName: node-1
    targetRef: {kind: Pod, namespace: demo, name: web-1, uid: 0f6c}
    zone: zone-a
"#;
        let slice: EndpointSlice = serde_yaml::from_str(yaml).unwrap();
        assert_eq!(kube::ResourceExt::name_any(&slice), "web-x7k2p");
        assert_eq!((slice.address_type.as_str(), slice.ports.as_ref().unwrap()[0].port), ("IPv4", Some(8081)));
        let e = &slice.endpoints.as_ref().unwrap()[0];
        assert_eq!((e.addresses.as_slice(), e.conditions.unwrap().terminating, e.zone.as_deref()), (&["10.1.0.11".to_string()][..], Some(false), Some("zone-a")));
        assert_eq!(e.target_ref.as_ref().unwrap().name.as_deref(), Some("web-1"));
    }
}
