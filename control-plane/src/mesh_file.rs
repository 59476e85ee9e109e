//! The mesh file source (embedded mode): reads the file into the [`Mesh`] model, then polls it and
//! feeds every good edit to the store. A bad edit is reported with its line and the last good mesh
//! keeps serving.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    hash::{Hash, Hasher},
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use strait_proto::mesh::{self as file, MeshFile};
use tokio_util::sync::CancellationToken;

use crate::{
    identity::auth::BootstrapTokens,
    metrics::Metrics,
    model::{Endpoint, InboundMode, Mesh, Protocol, Service, ServicePort, Workload, WorkloadRef},
    store::Store,
};

/// How often the mesh file is checked for changes. Polling (stat, read, hash) works the same on
/// every filesystem, through editors' rename-on-save, symlink swaps (ConfigMap mounts) and
/// bind mounts where inotify misses events; reading a mesh file of a few kilobytes 5 times a second
/// costs next to nothing, and 200 ms keeps an edit's propagation well under a second.
pub const DEFAULT_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// A poll reads the file only when its metadata changed (device, inode, size, modification and
/// change times; the change time cannot be set back by any tool), and in any case every this many
/// polls (5 s at the default interval): two same-size writes within one tick of the kernel's
/// coarse file clock leave the metadata equal. A 10 MiB mesh is not re-read and hashed 5 times a
/// second for nothing.
pub const DEFAULT_FULL_READ_EVERY: u32 = 25;

#[derive(Debug, thiserror::Error)]
pub enum MeshFileError {
    #[error("reading mesh file {path}: {source}")]
    Read { path: String, source: std::io::Error },
    #[error("mesh file {path}: {source}")]
    Parse { path: String, source: file::ParseError },
    #[error("mesh file {path}: {message}")]
    Invalid { path: String, message: String },
}

impl MeshFileError {
    /// The 1-based line of the error, when known.
    pub fn line(&self) -> Option<usize> {
        match self {
            Self::Parse { source, .. } => source.line,
            _ => None,
        }
    }
}

/// What the file looked like when last read: a change in any part means "read it again".
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fingerprint {
    Contents { modified: Option<SystemTime>, len: u64, hash: u64 },
    Unreadable(std::io::ErrorKind),
}

/// What a mesh file gives: the mesh discovery serves, and the workloads' bootstrap tokens, which
/// only the identity service sees.
#[derive(Debug)]
pub struct Loaded {
    pub mesh: Mesh,
    pub tokens: BootstrapTokens,
}

/// Reads and converts the mesh file once.
pub async fn load(path: &Path) -> Result<(Loaded, Fingerprint), MeshFileError> {
    let (fingerprint, bytes) = read(path).await;
    let bytes = bytes.map_err(|source| MeshFileError::Read { path: path.display().to_string(), source })?;
    Ok((parse(path, &bytes)?, fingerprint))
}

/// What a stat says of the file (following symlinks, as a ConfigMap mount needs); `None` when it
/// cannot be read.
async fn stat(path: &Path) -> Option<[i64; 7]> {
    use std::os::unix::fs::MetadataExt;
    let m = tokio::fs::metadata(path).await.ok()?;
    Some([m.dev() as i64, m.ino() as i64, m.size() as i64, m.mtime(), m.mtime_nsec(), m.ctime(), m.ctime_nsec()])
}

async fn read(path: &Path) -> (Fingerprint, std::io::Result<Vec<u8>>) {
    let read = async {
        let meta = tokio::fs::metadata(path).await?;
        let bytes = tokio::fs::read(path).await?;
        Ok::<_, std::io::Error>((meta, bytes))
    };
    match read.await {
        Ok((meta, bytes)) => {
            let mut h = std::collections::hash_map::DefaultHasher::new();
            bytes.hash(&mut h);
            let fingerprint =
                Fingerprint::Contents { modified: meta.modified().ok(), len: bytes.len() as u64, hash: h.finish() };
            (fingerprint, Ok(bytes))
        }
        Err(e) => (Fingerprint::Unreadable(e.kind()), Err(e)),
    }
}

/// Parses the file's bytes into the model.
pub fn parse(path: &Path, bytes: &[u8]) -> Result<Loaded, MeshFileError> {
    let p = || path.display().to_string();
    let text = std::str::from_utf8(bytes)
        .map_err(|e| MeshFileError::Invalid { path: p(), message: format!("not UTF-8: {e}") })?;
    let parsed = MeshFile::parse(text).map_err(|source| MeshFileError::Parse { path: p(), source })?;
    let mesh = to_model(&parsed).map_err(|message| MeshFileError::Invalid { path: p(), message })?;
    Ok(Loaded { mesh, tokens: BootstrapTokens::from_file(&parsed) })
}

/// Converts a parsed mesh file, refusing what the schema check lets through but the mesh cannot
/// mean: duplicate services, ports, cluster IPs or workloads, and unknown inbound modes.
pub fn to_model(mesh: &MeshFile) -> Result<Mesh, String> {
    let mut workloads = Vec::with_capacity(mesh.workloads.len());
    let mut seen = HashSet::new();
    for w in &mesh.workloads {
        if !seen.insert((w.namespace.as_str(), w.name.as_str())) {
            return Err(format!("workload {}.{} is listed twice", w.name, w.namespace));
        }
        let inbound_mode = match w.inbound_mode.as_deref() {
            None | Some("permissive") => InboundMode::Permissive,
            Some("strict") => InboundMode::Strict,
            Some(other) => {
                return Err(format!(
                    "workload {}.{}: inboundMode {other:?} is not one of permissive, strict",
                    w.name, w.namespace
                ));
            }
        };
        let opaque_ports = w.opaque_ports.iter().copied().collect::<BTreeSet<_>>().into_iter().collect();
        workloads.push(Workload {
            name: w.name.clone(),
            namespace: w.namespace.clone(),
            service_account: w.service_account.clone(),
            inbound_mode,
            opaque_ports,
        });
    }

    let mut services = Vec::with_capacity(mesh.services.len());
    let mut names = HashSet::new();
    let mut cluster_ips: BTreeMap<IpAddr, String> = BTreeMap::new();
    let lookup = WorkloadLookup::new(mesh);
    for s in &mesh.services {
        let id = format!("{}.{}", s.name, s.namespace);
        if !names.insert((s.namespace.as_str(), s.name.as_str())) {
            return Err(format!("service {id} is listed twice"));
        }
        let mut ips = Vec::new();
        if let Some(ip) = &s.cluster_ip {
            let ip: IpAddr = ip.parse().map_err(|_| format!("service {id}: clusterIP {ip:?} is not an IP address"))?;
            if let Some(other) = cluster_ips.insert(ip, id.clone()) {
                return Err(format!("services {other} and {id} have the same clusterIP {ip}"));
            }
            ips.push(ip);
        }
        let mut ports: Vec<ServicePort> = Vec::with_capacity(s.ports.len());
        for p in &s.ports {
            if p.port == 0 || ports.iter().any(|q| q.port == p.port) {
                return Err(format!("service {id}: port {} is zero or listed twice", p.port));
            }
            let protocol = protocol(&p.protocol).ok_or_else(|| {
                format!("service {id} port {}: protocol {:?} is not one of http, http2, grpc, opaque", p.port, p.protocol)
            })?;
            ports.push(ServicePort { port: p.port, protocol, target_port: p.target_port.filter(|&t| t != 0) });
        }
        let endpoints = s
            .endpoints
            .iter()
            .map(|e| endpoint(&lookup, s, e).map_err(|m| format!("service {id}: {m}")))
            .collect::<Result<_, _>>()?;
        services.push(Service {
            name: s.name.clone(),
            namespace: s.namespace.clone(),
            cluster_ips: ips,
            ports,
            annotations: s.annotations.clone(),
            endpoints,
        });
    }
    Ok(Mesh { trust_domain: mesh.trust_domain.clone(), services, workloads })
}

fn protocol(name: &str) -> Option<Protocol> {
    match name {
        "http" => Some(Protocol::Detect),
        "http2" => Some(Protocol::Http2),
        "grpc" => Some(Protocol::Grpc),
        "opaque" => Some(Protocol::Opaque),
        _ => None,
    }
}

fn endpoint(lookup: &WorkloadLookup<'_>, service: &file::Service, e: &file::Endpoint) -> Result<Endpoint, String> {
    let address: SocketAddr = e.address.parse().map_err(|_| format!("endpoint address {:?} is not ip:port", e.address))?;
    let proxy = match &e.proxy {
        Some(p) => Some(p.parse::<SocketAddr>().map_err(|_| format!("endpoint proxy {p:?} is not ip:port"))?),
        None => None,
    };
    Ok(Endpoint {
        address,
        proxy,
        workload: e.workload.as_deref().map(|name| lookup.find(&service.namespace, name)),
        zone: e.zone.clone().filter(|z| !z.is_empty()),
        weight: e.weight,
        ports: BTreeMap::new(),
    })
}

/// An endpoint names its workload by name: the one in the service's namespace, else the only one
/// of that name in the file. An unknown name stays in the service's namespace (and has no identity).
/// Built once per load: a mesh has as many endpoints as workloads times replicas, so a scan per
/// endpoint would be quadratic.
struct WorkloadLookup<'a> {
    by_key: HashMap<(&'a str, &'a str), &'a file::Workload>,
    /// The namespace of the only workload of a name, or `None` when several share it.
    by_name: HashMap<&'a str, Option<&'a str>>,
}

impl<'a> WorkloadLookup<'a> {
    fn new(mesh: &'a MeshFile) -> Self {
        let mut by_key = HashMap::new();
        let mut by_name: HashMap<&str, Option<&str>> = HashMap::new();
        for w in &mesh.workloads {
            by_key.insert((w.namespace.as_str(), w.name.as_str()), w);
            by_name
                .entry(w.name.as_str())
                .and_modify(|ns| *ns = None)
                .or_insert(Some(w.namespace.as_str()));
        }
        WorkloadLookup { by_key, by_name }
    }

    fn find(&self, namespace: &str, name: &str) -> WorkloadRef {
        let ns = match self.by_key.get(&(namespace, name)) {
            Some(_) => namespace,
            None => self.by_name.get(name).copied().flatten().unwrap_or(namespace),
        };
        WorkloadRef { namespace: ns.to_string(), name: name.to_string() }
    }
}

/// Polls the file every `interval` until `shutdown`, publishing each good edit to `store` (and its
/// bootstrap tokens to `tokens`).
pub async fn watch(
    path: PathBuf,
    interval: Duration,
    mut last: Fingerprint,
    store: Store,
    tokens: tokio::sync::watch::Sender<Arc<BootstrapTokens>>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_stat, mut unread_polls) = (None, 0);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = ticker.tick() => {}
        }
        let now = stat(&path).await;
        if now.is_some() && now == last_stat && unread_polls < DEFAULT_FULL_READ_EVERY {
            unread_polls += 1;
            continue;
        }
        (last_stat, unread_polls) = (now, 0);
        let (fingerprint, bytes) = read(&path).await;
        if fingerprint == last {
            continue;
        }
        last = fingerprint;
        // Parsing a large mesh takes a while (a 10 MiB file: ~0.4 s); off the runtime's threads,
        // so discovery streams keep being served meanwhile.
        let p = path.clone();
        let loaded = match bytes {
            Err(source) => Err(MeshFileError::Read { path: path.display().to_string(), source }),
            Ok(b) => match tokio::task::spawn_blocking(move || parse(&p, &b)).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "mesh file parser task failed");
                    continue;
                }
            },
        };
        match loaded {
            Ok(loaded) => {
                let (services, endpoints, workloads) = loaded.mesh.counts();
                tracing::info!(path = %path.display(), services, endpoints, workloads, "mesh file reloaded");
                metrics.config_reloads.with_label_values(&["ok"]).inc();
                tokens.send_replace(Arc::new(loaded.tokens));
                store.publish(loaded.mesh);
            }
            Err(e) => {
                tracing::warn!(path = %path.display(), line = e.line(), error = %e, "mesh file not reloaded; the last good one keeps serving");
                metrics.config_reloads.with_label_values(&["error"]).inc();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(yaml: &str) -> Result<Mesh, String> {
        to_model(&MeshFile::parse(yaml).map_err(|e| e.to_string())?)
    }

    #[test]
    fn converts_the_design_example() {
        let m = model(
            r#"
trustDomain: example.org
workloads:
  - {name: orders-v1, namespace: demo, serviceAccount: orders, inboundMode: strict, opaquePorts: [3306, 25, 3306]}
services:
  - name: orders
    namespace: demo
    clusterIP: 10.96.0.20
    ports: [{port: 8080, protocol: http, targetPort: 18080}, {port: 9000, protocol: opaque}]
    annotations: {retry.strait.io/http: "5xx"}
    endpoints:
      - {address: "127.0.0.1:18081", proxy: "127.0.0.1:17143", workload: orders-v1, zone: a, weight: 3}
      - {address: "127.0.0.1:18082"}
"#,
        )
        .unwrap();
        assert_eq!(m.trust_domain, "example.org");
        assert_eq!(m.workloads[0].inbound_mode, InboundMode::Strict);
        assert_eq!(m.workloads[0].opaque_ports, [25, 3306]);
        let s = &m.services[0];
        assert_eq!(s.cluster_ips, ["10.96.0.20".parse::<IpAddr>().unwrap()]);
        assert_eq!(s.ports[0], ServicePort { port: 8080, protocol: Protocol::Detect, target_port: Some(18080) });
        assert_eq!(s.ports[1].protocol, Protocol::Opaque);
        assert_eq!(s.endpoints[0].proxy, Some("127.0.0.1:17143".parse().unwrap()));
        assert_eq!(s.endpoints[0].workload, Some(WorkloadRef { namespace: "demo".into(), name: "orders-v1".into() }));
        assert_eq!((s.endpoints[0].zone.as_deref(), s.endpoints[0].weight), (Some("a"), Some(3)));
        assert_eq!(s.endpoints[1].proxy, None);
        assert_eq!(m.counts(), (1, 2, 1));
    }

    #[test]
    fn endpoints_find_their_workload_in_another_namespace_when_it_is_the_only_one() {
        let m = model(
            r#"
workloads: [{name: w, namespace: other, serviceAccount: sa}]
services: [{name: s, namespace: demo, endpoints: [{address: "127.0.0.1:1", workload: w}]}]
"#,
        )
        .unwrap();
        assert_eq!(m.services[0].endpoints[0].workload.as_ref().unwrap().namespace, "other");
    }

    #[test]
    fn refuses_what_cannot_be_meant() {
        let cases = [
            ("services: [{name: a, namespace: n}, {name: a, namespace: n}]", "listed twice"),
            ("services: [{name: a, namespace: n, clusterIP: 10.0.0.1}, {name: b, namespace: n, clusterIP: 10.0.0.1}]", "same clusterIP"),
            ("services: [{name: a, namespace: n, ports: [{port: 80}, {port: 80}]}]", "port 80"),
            ("workloads: [{name: w, namespace: n, serviceAccount: s}, {name: w, namespace: n, serviceAccount: t}]", "listed twice"),
            ("workloads: [{name: w, namespace: n, serviceAccount: s, inboundMode: lax}]", "inboundMode"),
        ];
        for (yaml, want) in cases {
            let e = model(yaml).unwrap_err();
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn parse_errors_carry_the_line() {
        let e = parse(Path::new("mesh.yaml"), b"services:\n  - name: a\n    namespace: b\n    ports: [{port: x}]\n").unwrap_err();
        assert_eq!(e.line(), Some(4));
        assert!(e.to_string().starts_with("mesh file mesh.yaml: line 4:"), "{e}");
    }
}
