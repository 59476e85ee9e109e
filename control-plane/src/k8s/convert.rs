//! From the watched Kubernetes objects to the source-independent [`Mesh`]: a pure function of the
//! three reflector stores' contents, so every rule below is unit-tested without a cluster.
//!
//! - A Service is served under its name (every authority form) and its cluster IPs; a headless one
//!   (`clusterIP: None`) only under its name. An `ExternalName` Service is left out: the proxy then
//!   hears `NotFound(DOES_NOT_EXIST)` and resolves the name with DNS, which answers with the external
//!   name, as for any name outside the mesh. Only TCP ports are served.
//! - Endpoints come from the EndpointSlices labelled `kubernetes.io/service-name`, per service port
//!   (the slice port of the same name), with the conditions read as kube-proxy reads them: `ready`
//!   endpoints serve; when a port has none, the `serving` and `terminating` ones serve instead (a
//!   rollout's last pods drain gracefully); anything else is dropped. Unset conditions mean ready,
//!   serving = ready, not terminating (the API's documented defaults).
//! - The endpoint's port is the slice's port (the EndpointSlice controller writes the resolved target
//!   port there). A slice port without a number (hand-written slices may omit it) falls back to the
//!   Service's target port, a named one resolved from the container ports of the endpoint's Pod.
//! - An endpoint is meshed when its Pod runs the sidecar: a container (or native sidecar init
//!   container, `restartPolicy: Always`) named `strait-proxy`. The opt-in annotation
//!   `strait.io/inject: enabled` alone does not mesh a pod: it only asks the injector to add the
//!   proxy, and a pod created before the webhook ran (or one it skipped) has none. Its proxy is then
//!   `<endpoint IP>:7143` and its identity `spiffe://<trust domain>/ns/<ns>/sa/<serviceAccountName>`.
//! - Policy stays in the Service's annotations; the index reads them (and reports bad values).
//! - A meshed Pod is a workload: its inbound policy comes from its annotations
//!   `config.strait.io/inbound-mode` (`permissive`, the default, or `strict`) and
//!   `config.strait.io/opaque-ports` (e.g. `25,3306`, ranges `4000-4010`, or the names of the pod's
//!   container ports). A bad value leaves that field at its default; [`inbound_errors`] says why
//!   (the watcher reports it).

use std::{
    collections::{BTreeMap, HashMap},
    net::{IpAddr, SocketAddr},
    sync::Arc,
};

use k8s_openapi::{
    api::{
        core::v1::{Service as KubeService, ServicePort as KubeServicePort},
    },
    apimachinery::pkg::util::intstr::IntOrString,
};

use super::slim::{Container, Endpoint as KubeEndpoint, EndpointSlice, Pod};
use crate::model::{Endpoint, InboundMode, Mesh, Protocol, Service, ServicePort, Workload, WorkloadRef};

/// The label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// The annotation that meshes a pod (or, on a namespace or workload, asks the injector to).
pub const INJECT_ANNOTATION: &str = "strait.io/inject";
/// The name of the sidecar container the injector adds.
pub const PROXY_CONTAINER: &str = "strait-proxy";
/// The proxy's inbound port in every meshed pod (DESIGN §3).
pub const DEFAULT_PROXY_INBOUND_PORT: u16 = 7143;
/// Pod annotation: `permissive` (mesh TLS or plaintext) or `strict` (mesh TLS only).
pub const INBOUND_MODE_ANNOTATION: &str = "config.strait.io/inbound-mode";
/// Pod annotation: the pod's ports that are opaque on its inbound side (server-speaks-first
/// protocols): numbers, ranges (`4000-4010`) and container port names, separated by commas.
pub const OPAQUE_PORTS_ANNOTATION: &str = "config.strait.io/opaque-ports";
/// At most this many opaque ports per pod (ranges counted in full): the list travels in every
/// inbound policy and the proxy looks ports up in it per connection.
pub const MAX_OPAQUE_PORTS: usize = 1024;

/// A bad inbound-policy annotation on a Pod; that field keeps its default.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PodAnnotationError {
    #[error("{INBOUND_MODE_ANNOTATION}: {value:?} is not one of permissive, strict")]
    InboundMode { value: String },
    #[error(
        "{OPAQUE_PORTS_ANNOTATION}: {item:?} (in {value:?}) is not a port from 1 to 65535, a range such as 4000-4010, or the name of one of the pod's TCP container ports"
    )]
    OpaquePort { value: String, item: String },
    #[error("{OPAQUE_PORTS_ANNOTATION}: {value:?} names {count} ports; at most {MAX_OPAQUE_PORTS} may be opaque")]
    TooManyOpaquePorts { value: String, count: usize },
}

impl PodAnnotationError {
    /// The annotation key, bounded for use as a metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Self::InboundMode { .. } => INBOUND_MODE_ANNOTATION,
            Self::OpaquePort { .. } | Self::TooManyOpaquePorts { .. } => OPAQUE_PORTS_ANNOTATION,
        }
    }
}

/// What the conversion needs besides the objects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// SPIFFE trust domain of the workloads' identities.
    pub trust_domain: String,
    /// The port every meshed pod's proxy accepts inbound mTLS on.
    pub proxy_inbound_port: u16,
}

impl Default for Settings {
    fn default() -> Self {
        Self { trust_domain: "cluster.local".into(), proxy_inbound_port: DEFAULT_PROXY_INBOUND_PORT }
    }
}

/// The mesh the three stores describe. Deterministic: the same objects in any order give an
/// equal mesh, so an unrelated change (a pod's status) can be recognised as no change.
pub fn mesh(
    services: &[Arc<KubeService>],
    slices: &[Arc<EndpointSlice>],
    pods: &[Arc<Pod>],
    settings: &Settings,
) -> Mesh {
    let pods_by_name: HashMap<(&str, &str), &Arc<Pod>> =
        pods.iter().filter_map(|p| Some(((p.metadata.namespace.as_deref()?, p.metadata.name.as_deref()?), p))).collect();
    let pod = |ns: &str, name: &str| pods_by_name.get(&(ns, name)).map(|p| Arc::clone(p));
    let mut slices_by_service: HashMap<(&str, &str), Vec<&EndpointSlice>> = HashMap::new();
    for slice in slices {
        let owner = slice.metadata.labels.as_ref().and_then(|l| l.get(SERVICE_NAME_LABEL));
        if let (Some(ns), Some(service)) = (slice.metadata.namespace.as_deref(), owner) {
            slices_by_service.entry((ns, service.as_str())).or_default().push(slice);
        }
    }
    let mut out: Vec<Service> = services
        .iter()
        .filter_map(|s| {
            let key = (s.metadata.namespace.as_deref()?, s.metadata.name.as_deref()?);
            let slices = slices_by_service.get(&key).map_or(&[][..], Vec::as_slice);
            service(s, slices, &pod, settings)
        })
        .collect();
    out.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let mut workloads: Vec<Workload> = pods.iter().filter_map(|p| workload(p)).collect();
    workloads.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Mesh { trust_domain: settings.trust_domain.clone(), services: out, workloads }
}

/// Whether the pod runs the Strait sidecar: only the proxy container itself counts, never the
/// opt-in annotation (a request to the injector, not a sign it ran).
pub fn has_sidecar(pod: &Pod) -> bool {
    containers(pod).any(|c| c.name == PROXY_CONTAINER)
}

/// The pod's long-running containers: its containers and its native sidecars (init containers
/// with `restartPolicy: Always`, where the injector puts the proxy).
fn containers(pod: &Pod) -> impl Iterator<Item = &Container> {
    let spec = pod.spec.as_ref();
    let main = spec.into_iter().flat_map(|s| s.containers.iter());
    let sidecars = spec
        .and_then(|s| s.init_containers.as_ref())
        .into_iter()
        .flatten()
        .filter(|c| c.restart_policy.as_deref() == Some("Always"));
    main.chain(sidecars)
}

/// Whether the pod is a workload of the mesh: meshed, and not finished.
fn is_workload(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    has_sidecar(pod) && !matches!(phase, Some("Succeeded" | "Failed"))
}

/// The workload a Pod is, when it is meshed and running.
pub fn workload(pod: &Pod) -> Option<Workload> {
    if !is_workload(pod) {
        return None;
    }
    let (inbound_mode, opaque_ports, _) = inbound(pod);
    let spec = pod.spec.as_ref();
    let service_account = spec
        .and_then(|s| s.service_account_name.as_deref().or(s.service_account.as_deref()))
        .filter(|sa| !sa.is_empty())
        .unwrap_or("default");
    Some(Workload {
        name: pod.metadata.name.clone()?,
        namespace: pod.metadata.namespace.clone()?,
        service_account: service_account.to_string(),
        inbound_mode,
        opaque_ports,
    })
}

/// The bad inbound-policy annotations of a workload's Pod (none for a pod that is not a workload:
/// its annotations are not read).
pub fn inbound_errors(pod: &Pod) -> Vec<PodAnnotationError> {
    if !is_workload(pod) {
        return Vec::new();
    }
    inbound(pod).2
}

/// The pod's inbound mode and opaque ports (sorted, deduplicated) from its annotations, and what
/// was wrong with them.
fn inbound(pod: &Pod) -> (InboundMode, Vec<u16>, Vec<PodAnnotationError>) {
    let annotation = |key| pod.annotation(key).map(str::trim).filter(|v| !v.is_empty());
    let mut errors = Vec::new();
    let mode = match annotation(INBOUND_MODE_ANNOTATION) {
        None | Some("permissive") => InboundMode::Permissive,
        Some("strict") => InboundMode::Strict,
        Some(other) => {
            errors.push(PodAnnotationError::InboundMode { value: other.to_string() });
            InboundMode::Permissive
        }
    };
    let ports = match annotation(OPAQUE_PORTS_ANNOTATION).map(|v| opaque_ports(v, pod)) {
        None => Vec::new(),
        Some(Ok(ports)) => ports,
        Some(Err(e)) => {
            errors.push(e);
            Vec::new()
        }
    };
    (mode, ports, errors)
}

fn opaque_ports(value: &str, pod: &Pod) -> Result<Vec<u16>, PodAnnotationError> {
    let port = |s: &str| s.trim().parse::<u16>().ok().filter(|&p| p != 0);
    let mut ports = std::collections::BTreeSet::new();
    let mut count = 0usize;
    for item in value.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let bad = || PodAnnotationError::OpaquePort { value: value.to_string(), item: item.to_string() };
        let range = match item.split_once('-') {
            Some((a, b)) => match (port(a), port(b)) {
                (Some(a), Some(b)) if a <= b => a..=b,
                _ => return Err(bad()),
            },
            None => {
                let p = match port(item) {
                    Some(p) => p,
                    None if item.bytes().all(|b| b.is_ascii_digit()) => return Err(bad()),
                    None => containers(pod)
                        .flat_map(|c| c.ports.iter().flatten())
                        .find(|p| p.name.as_deref() == Some(item) && is_tcp(p.protocol.as_deref()))
                        .and_then(|p| u16::try_from(p.container_port).ok())
                        .filter(|&p| p != 0)
                        .ok_or_else(bad)?,
                };
                p..=p
            }
        };
        count += range.len();
        if count > MAX_OPAQUE_PORTS {
            return Err(PodAnnotationError::TooManyOpaquePorts { value: value.to_string(), count: count_ports(value) });
        }
        ports.extend(range);
    }
    Ok(ports.into_iter().collect())
}

/// How many ports the numbers and ranges of an opaque-ports value name (for the error message).
fn count_ports(value: &str) -> usize {
    value
        .split(',')
        .map(|i| match i.trim().split_once('-') {
            Some((a, b)) => match (a.trim().parse::<usize>(), b.trim().parse::<usize>()) {
                (Ok(a), Ok(b)) if a <= b => b - a + 1,
                _ => 1,
            },
            None => usize::from(!i.trim().is_empty()),
        })
        .sum()
}

fn is_tcp(protocol: Option<&str>) -> bool {
    protocol.is_none_or(|p| p == "TCP")
}

/// What a port speaks: from its `appProtocol`, else from its name's first word (`grpc-api`,
/// `http2`, `tcp-redis`), as Istio and Linkerd users name ports. Anything HTTP-like or unknown is
/// detected from the first bytes.
pub fn protocol(app_protocol: Option<&str>, port_name: Option<&str>) -> Protocol {
    let hint = app_protocol.filter(|p| !p.is_empty()).or_else(|| port_name.map(|n| n.split('-').next().unwrap_or(n)));
    match hint.map(str::to_ascii_lowercase).as_deref() {
        Some("grpc") => Protocol::Grpc,
        Some("kubernetes.io/h2c" | "h2c" | "http2") => Protocol::Http2,
        // Server-speaks-first or binary protocols: forwarded without waiting for detection.
        Some("tcp" | "opaque" | "mysql" | "smtp" | "postgresql" | "postgres" | "redis" | "mongodb" | "memcached"
        | "amqp" | "kafka") => Protocol::Opaque,
        _ => Protocol::Detect,
    }
}

/// How an EndpointSlice condition set is used (see the module comment).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Condition {
    Ready,
    /// Serving but terminating: used only when a port has no ready endpoint.
    Draining,
    Dropped,
}

fn condition(e: &KubeEndpoint) -> Condition {
    let c = e.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    match (ready, serving && terminating) {
        (true, _) => Condition::Ready,
        (false, true) => Condition::Draining,
        (false, false) => Condition::Dropped,
    }
}

/// One Service with the EndpointSlices labelled with its name; `pods` finds a Pod by namespace
/// and name. `None` for a Service that is not served (ExternalName, or without a spec).
pub fn service(
    s: &KubeService,
    slices: &[&EndpointSlice],
    pods: &impl Fn(&str, &str) -> Option<Arc<Pod>>,
    settings: &Settings,
) -> Option<Service> {
    let spec = s.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    let namespace = s.metadata.namespace.clone()?;
    let name = s.metadata.name.clone()?;
    let mut cluster_ips: Vec<IpAddr> = match &spec.cluster_ips {
        Some(ips) if !ips.is_empty() => ips.iter().filter_map(|ip| ip.parse().ok()).collect(),
        _ => spec.cluster_ip.iter().filter_map(|ip| ip.parse().ok()).collect(),
    };
    cluster_ips.dedup();

    let kube_ports: Vec<(&KubeServicePort, u16)> = spec
        .ports
        .iter()
        .flatten()
        .filter(|p| is_tcp(p.protocol.as_deref()))
        .filter_map(|p| Some((p, u16::try_from(p.port).ok().filter(|&n| n != 0)?)))
        .collect();
    let mut endpoints: BTreeMap<IpAddr, Endpoint> = BTreeMap::new();
    for &(kp, port) in &kube_ports {
        let mut ready = Vec::new();
        let mut draining = Vec::new();
        for &slice in slices {
            if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
                continue; // FQDN slices name hosts, not addresses.
            }
            let wanted = kp.name.as_deref().unwrap_or("");
            let Some(slice_port) = slice
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref().unwrap_or("") == wanted && is_tcp(p.protocol.as_deref()))
            else {
                continue; // This slice's endpoints do not serve that port.
            };
            for e in slice.endpoints.iter().flatten() {
                let Some(ip) = e.addresses.first().and_then(|a| a.parse::<IpAddr>().ok()) else { continue };
                let slice_ns = slice.metadata.namespace.as_deref().unwrap_or_default();
                let pod = pod_of(e, slice_ns, pods);
                let target = match slice_port.port {
                    Some(n) => u16::try_from(n).ok().filter(|&n| n != 0),
                    None => target_port(kp, pod.as_deref()),
                };
                let Some(target) = target else { continue };
                match condition(e) {
                    Condition::Ready => ready.push((ip, target, e, slice_ns, pod)),
                    Condition::Draining => draining.push((ip, target, e, slice_ns, pod)),
                    Condition::Dropped => {}
                }
            }
        }
        let serving = if ready.is_empty() { draining } else { ready };
        for (ip, target, e, slice_ns, pod) in serving {
            let endpoint = endpoints.entry(ip).or_insert_with(|| Endpoint {
                address: SocketAddr::new(ip, target),
                proxy: pod.filter(|p| has_sidecar(p)).map(|_| SocketAddr::new(ip, settings.proxy_inbound_port)),
                workload: workload_ref(e, slice_ns),
                zone: e.zone.clone().filter(|z| !z.is_empty()),
                weight: None,
                ports: BTreeMap::new(),
            });
            endpoint.ports.entry(port).or_insert(target);
        }
    }

    Some(Service {
        namespace,
        name,
        cluster_ips,
        ports: kube_ports
            .iter()
            .map(|&(kp, port)| ServicePort {
                port,
                protocol: protocol(kp.app_protocol.as_deref(), kp.name.as_deref()),
                target_port: None,
            })
            .collect(),
        annotations: s.metadata.annotations.clone().unwrap_or_default(),
        endpoints: endpoints.into_values().collect(),
    })
}

fn pod_of(e: &KubeEndpoint, slice_ns: &str, pods: &impl Fn(&str, &str) -> Option<Arc<Pod>>) -> Option<Arc<Pod>> {
    let r = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"))?;
    let ns = r.namespace.as_deref().unwrap_or(slice_ns);
    pods(ns, r.name.as_deref()?)
}

fn workload_ref(e: &KubeEndpoint, slice_ns: &str) -> Option<WorkloadRef> {
    let r = e.target_ref.as_ref().filter(|r| r.kind.as_deref() == Some("Pod"))?;
    Some(WorkloadRef { namespace: r.namespace.clone().unwrap_or_else(|| slice_ns.to_string()), name: r.name.clone()? })
}

/// The Service's target port for an endpoint whose slice gives no number: the number itself, the
/// named container port of the endpoint's Pod, or the service port when no target is set.
fn target_port(kp: &KubeServicePort, pod: Option<&Pod>) -> Option<u16> {
    let n = match &kp.target_port {
        None => kp.port,
        Some(IntOrString::Int(n)) => *n,
        Some(IntOrString::String(name)) => match name.parse::<i32>() {
            Ok(n) => n,
            Err(_) => containers(pod?)
                .flat_map(|c| c.ports.iter().flatten())
                .find(|p| p.name.as_deref() == Some(name.as_str()) && is_tcp(p.protocol.as_deref()))?
                .container_port,
        },
    };
    u16::try_from(n).ok().filter(|&n| n != 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, de::DeserializeOwned};

    fn objects<K: DeserializeOwned>(yaml: &str, kind: &str) -> Vec<Arc<K>> {
        serde_yaml::Deserializer::from_str(yaml)
            .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
            .filter(|v| v["kind"].as_str() == Some(kind))
            .map(|v| Arc::new(serde_yaml::from_value(v).unwrap()))
            .collect()
    }

    /// The manifests the end-to-end tests serve from the test API server.
    const FIXTURES: [&str; 3] = [
        include_str!("../../../tests/fixtures/k8s/web.yaml"),
        include_str!("../../../tests/fixtures/k8s/cache.yaml"),
        include_str!("../../../tests/fixtures/k8s/other.yaml"),
    ];

    fn convert(yaml: &str) -> Mesh {
        let settings = Settings { trust_domain: "example.org".into(), ..Settings::default() };
        mesh(&objects(yaml, "Service"), &objects(yaml, "EndpointSlice"), &objects(yaml, "Pod"), &settings)
    }

    fn fixtures() -> Mesh {
        convert(&FIXTURES.join("\n---\n"))
    }

    fn find<'a>(m: &'a Mesh, ns: &str, name: &str) -> &'a Service {
        m.services.iter().find(|s| s.namespace == ns && s.name == name).unwrap_or_else(|| panic!("{name}.{ns} missing"))
    }

    /// An endpoint's IP, its port per service port, and its proxy.
    type Summary = (String, Vec<(u16, u16)>, Option<String>);

    fn endpoints(s: &Service) -> Vec<Summary> {
        s.endpoints
            .iter()
            .map(|e| {
                (e.address.ip().to_string(), e.ports.iter().map(|(&a, &b)| (a, b)).collect(), e.proxy.map(|p| p.to_string()))
            })
            .collect()
    }

    fn sock(s: &str) -> Option<String> {
        Some(s.to_string())
    }

    #[test]
    fn the_fixtures_become_the_expected_mesh() {
        let m = fixtures();
        assert_eq!(m.trust_domain, "example.org");
        let names: Vec<_> = m.services.iter().map(|s| format!("{}.{}", s.name, s.namespace)).collect();
        // billing (ExternalName) is left out; the headless cache stays.
        assert_eq!(names, ["kubernetes.default", "cache.demo", "checkout.demo", "web.demo"]);

        let web = find(&m, "demo", "web");
        assert_eq!(web.cluster_ips, ["10.96.0.10".parse::<IpAddr>().unwrap()]);
        assert_eq!(
            web.ports,
            [
                ServicePort { port: 8080, protocol: Protocol::Detect, target_port: None },
                ServicePort { port: 9090, protocol: Protocol::Grpc, target_port: None },
            ]
        );
        // web-3 (serving, terminating) is not used while ready endpoints exist; web-4 is not ready.
        assert_eq!(
            endpoints(web),
            [
                ("10.1.0.11".into(), vec![(8080, 8081), (9090, 9091)], sock("10.1.0.11:7143")),
                ("10.1.0.12".into(), vec![(8080, 8081), (9090, 9091)], sock("10.1.0.12:7143")),
                ("10.1.0.15".into(), vec![(8080, 8081)], None),
            ]
        );
        let e = &web.endpoints[0];
        assert_eq!(e.workload, Some(WorkloadRef { namespace: "demo".into(), name: "web-7d9f8-abcde".into() }));
        assert_eq!(e.zone.as_deref(), Some("zone-a"));
        assert_eq!(web.annotations.get("retry.strait.io/http").map(String::as_str), Some("5xx,connect-failure"));

        // Only draining endpoints left: they serve.
        let checkout = find(&m, "demo", "checkout");
        assert_eq!(endpoints(checkout), [("10.1.0.21".into(), vec![(80, 8080)], None)]);

        let cache = find(&m, "demo", "cache");
        assert!(cache.cluster_ips.is_empty(), "headless");
        assert_eq!(cache.ports[0].protocol, Protocol::Opaque);
        assert_eq!(endpoints(cache), [("10.1.0.31".into(), vec![(6379, 6379)], sock("10.1.0.31:7143"))]);

        let workloads: Vec<_> =
            m.workloads.iter().map(|w| (w.namespace.as_str(), w.name.as_str(), w.service_account.as_str())).collect();
        assert_eq!(
            workloads,
            [
                ("demo", "cache-0", "cache"),
                ("demo", "web-7d9f8-abcde", "web"),
                ("demo", "web-7d9f8-fghij", "web"),
                ("demo", "web-7d9f8-klmno", "web"),
                ("demo", "web-7d9f8-pqrst", "web"),
            ]
        );
    }

    #[test]
    fn the_result_does_not_depend_on_the_order_of_the_objects() {
        let yaml = FIXTURES.join("\n---\n");
        let mut docs: Vec<&str> = yaml.split("\n---\n").collect();
        docs.reverse();
        assert_eq!(convert(&docs.join("\n---\n")), fixtures());
    }

    const BASE: &str = r#"
kind: Service
apiVersion: v1
metadata: {name: s, namespace: n}
spec:
  clusterIP: 10.96.1.1
  clusterIPs: [10.96.1.1, "fd00::1"]
  ports:
    - {name: http, port: 80, targetPort: web}
    - {name: dns, port: 53, protocol: UDP}
---
kind: Pod
apiVersion: v1
metadata: {name: p, namespace: n, annotations: {strait.io/inject: enabled}}
spec:
  serviceAccountName: ""
  containers: [{name: app, ports: [{name: web, containerPort: 8000}]}, {name: strait-proxy}]
"#;

    fn slice(endpoints: &str, port: &str) -> String {
        format!(
            r#"
---
kind: EndpointSlice
apiVersion: discovery.k8s.io/v1
metadata: {{name: s-1, namespace: n, labels: {{kubernetes.io/service-name: s}}}}
addressType: IPv4
ports: [{port}]
endpoints: {endpoints}
"#
        )
    }

    #[test]
    fn a_slice_port_without_a_number_resolves_the_named_target_port_from_the_pod() {
        let m = convert(&format!(
            "{BASE}{}",
            slice(r#"[{addresses: [10.0.0.1], targetRef: {kind: Pod, name: p}}, {addresses: [10.0.0.2]}]"#, "{name: http}")
        ));
        let s = find(&m, "n", "s");
        assert_eq!(s.cluster_ips.len(), 2);
        assert_eq!(s.ports.len(), 1, "UDP ports are not served");
        // The pod-less endpoint cannot resolve a named port, so it is left out.
        assert_eq!(endpoints(s), [("10.0.0.1".into(), vec![(80, 8000)], sock("10.0.0.1:7143"))]);
        assert_eq!(m.workloads[0].service_account, "default");
    }

    #[test]
    fn conditions_follow_kube_proxy() {
        let eps = r#"[
          {addresses: [10.0.0.1]},
          {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}},
          {addresses: [10.0.0.3], conditions: {ready: false}},
          {addresses: [10.0.0.4], conditions: {ready: false, serving: true}}]"#;
        let m = convert(&format!("{BASE}{}", slice(eps, "{name: http, port: 9000}")));
        let ips: Vec<_> = endpoints(find(&m, "n", "s")).into_iter().map(|e| e.0).collect();
        assert_eq!(ips, ["10.0.0.1"], "unset conditions mean ready; the draining one waits");

        let eps = r#"[
          {addresses: [10.0.0.2], conditions: {ready: false, serving: true, terminating: true}},
          {addresses: [10.0.0.5], conditions: {ready: false, serving: false, terminating: true}}]"#;
        let m = convert(&format!("{BASE}{}", slice(eps, "{name: http, port: 9000}")));
        let ips: Vec<_> = endpoints(find(&m, "n", "s")).into_iter().map(|e| e.0).collect();
        assert_eq!(ips, ["10.0.0.2"], "no ready endpoint: the serving terminating ones serve");
    }

    #[test]
    fn slices_of_other_ports_or_address_types_do_not_serve_the_port() {
        let mut yaml = format!("{BASE}{}", slice("[{addresses: [10.0.0.1]}]", "{name: metrics, port: 9100}"));
        yaml.push_str(&slice("[{addresses: [db.example.com]}]", "{name: http, port: 80}").replace("IPv4", "FQDN"));
        let m = convert(&yaml);
        assert!(find(&m, "n", "s").endpoints.is_empty());
    }

    #[test]
    fn protocols_from_app_protocol_or_port_name() {
        assert_eq!(protocol(Some("kubernetes.io/h2c"), Some("web")), Protocol::Http2);
        assert_eq!(protocol(Some("grpc"), None), Protocol::Grpc);
        assert_eq!(protocol(Some("http"), Some("grpc")), Protocol::Detect, "appProtocol wins");
        assert_eq!(protocol(None, Some("grpc-api")), Protocol::Grpc);
        assert_eq!(protocol(None, Some("tcp-redis")), Protocol::Opaque);
        assert_eq!(protocol(Some("mysql"), None), Protocol::Opaque);
        assert_eq!(protocol(None, Some("http")), Protocol::Detect);
        assert_eq!(protocol(None, None), Protocol::Detect);
    }

    fn annotated_pod(annotations: &str) -> Pod {
        serde_yaml::from_str(&format!(
            r#"
metadata: {{name: db-0, namespace: data, annotations: {{strait.io/inject: enabled, {annotations}}}}}
spec:
  containers:
    - {{name: mysql, ports: [{{name: mysql, containerPort: 3306}}, {{name: dns, containerPort: 53, protocol: UDP}}]}}
    - {{name: strait-proxy}}
"#
        ))
        .unwrap()
    }

    #[test]
    fn pod_annotations_give_the_inbound_mode_and_opaque_ports() {
        let pod = annotated_pod("config.strait.io/inbound-mode: strict, config.strait.io/opaque-ports: ' 25, 3306,4000-4002,mysql,25,'");
        assert_eq!(inbound(&pod), (InboundMode::Strict, vec![25, 3306, 4000, 4001, 4002], vec![]));
        assert_eq!(inbound(&annotated_pod("a: b")), (InboundMode::Permissive, vec![], vec![]));
        let pod = annotated_pod("config.strait.io/inbound-mode: permissive, config.strait.io/opaque-ports: ''");
        assert_eq!(inbound(&pod), (InboundMode::Permissive, vec![], vec![]));

        // Through the whole conversion: the workload carries them.
        let m = convert(&format!("{BASE}\n---\nkind: Pod\n{}", serde_yaml::to_string(&annotated_pod("config.strait.io/opaque-ports: '25,mysql'")).unwrap()));
        let w = m.workloads.iter().find(|w| w.name == "db-0").unwrap();
        assert_eq!((w.inbound_mode, w.opaque_ports.as_slice()), (InboundMode::Permissive, &[25, 3306][..]));
    }

    #[test]
    fn a_bad_inbound_annotation_leaves_its_field_at_the_default_and_says_why() {
        let mode = |v: &str| inbound(&annotated_pod(&format!("config.strait.io/inbound-mode: '{v}', config.strait.io/opaque-ports: '25'")));
        for bad in ["Strict", "enforcing", "strict,permissive"] {
            let (m, ports, errors) = mode(bad);
            assert_eq!((m, ports), (InboundMode::Permissive, vec![25]), "{bad}: the other annotation still counts");
            assert_eq!(errors, [PodAnnotationError::InboundMode { value: bad.into() }]);
            assert_eq!(errors[0].label(), INBOUND_MODE_ANNOTATION);
        }
        let ports = |v: &str| inbound(&annotated_pod(&format!("config.strait.io/inbound-mode: strict, config.strait.io/opaque-ports: '{v}'")));
        for (value, item) in
            [("25,0", "0"), ("65536", "65536"), ("5-3", "5-3"), ("25, dns", "dns"), ("web", "web"), ("-5", "-5"), ("3306-", "3306-"), ("1-2-3", "1-2-3")]
        {
            let (m, opaque, errors) = ports(value);
            assert_eq!((m, opaque), (InboundMode::Strict, vec![]), "{value}: the whole annotation is ignored");
            assert_eq!(errors, [PodAnnotationError::OpaquePort { value: value.into(), item: item.into() }], "{value}");
            assert_eq!(errors[0].label(), OPAQUE_PORTS_ANNOTATION);
            assert!(errors[0].to_string().contains("is not a port from 1 to 65535"), "{}", errors[0]);
        }
        let (_, opaque, errors) = ports("25,1000-3000");
        assert!(opaque.is_empty());
        assert_eq!(errors, [PodAnnotationError::TooManyOpaquePorts { value: "25,1000-3000".into(), count: 2002 }]);
        assert_eq!(ports("1-1024").1.len(), MAX_OPAQUE_PORTS, "the limit itself is allowed");

        // Reported for workloads only: a pod without the sidecar, or a finished one, is not read.
        let bad = "config.strait.io/inbound-mode: nope";
        assert_eq!(inbound_errors(&annotated_pod(bad)).len(), 1);
        let mut plain = annotated_pod(bad);
        plain.spec.as_mut().unwrap().containers.retain(|c| c.name != PROXY_CONTAINER);
        assert!(inbound_errors(&plain).is_empty());
        let mut done = annotated_pod(bad);
        done.status = Some(super::super::slim::PodStatus { phase: Some("Succeeded".into()) });
        assert!(inbound_errors(&done).is_empty());
    }

    #[test]
    fn the_sidecar_is_seen_as_container_or_native_sidecar_never_by_the_opt_in_annotation() {
        let pod = |yaml: &str| -> Pod { serde_yaml::from_str(yaml).unwrap() };
        // Asking for injection is not having a proxy: the webhook may not have run.
        assert!(!has_sidecar(&pod("metadata: {annotations: {strait.io/inject: enabled}}")));
        assert!(!has_sidecar(&pod("metadata: {annotations: {strait.io/inject: enabled}}\nspec: {containers: [{name: app}]}")));
        assert!(!has_sidecar(&pod("metadata: {annotations: {strait.io/inject: disabled}}")));
        // A plain init container of that name has finished before the app starts: not a sidecar.
        assert!(!has_sidecar(&pod("metadata: {}\nspec: {containers: [{name: app}], initContainers: [{name: strait-proxy}]}")));
        assert!(has_sidecar(&pod("metadata: {}\nspec: {containers: [{name: app}, {name: strait-proxy}]}")));
        assert!(has_sidecar(&pod(
            "metadata: {}\nspec: {containers: [{name: app}], initContainers: [{name: strait-proxy, restartPolicy: Always}]}"
        )));
        assert!(!has_sidecar(&pod("metadata: {}\nspec: {containers: [{name: app}], initContainers: [{name: strait-init}]}")));
    }
}
