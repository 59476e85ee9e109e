//! Kubernetes mode of the load generator: the same mesh as Kubernetes objects in the in-process test
//! API server ([`strait_tests::kube_api`]), a controller started against it, and changes as
//! EndpointSlice updates.
//!
//! Per service `svc-<i>` in `ns-<i % 100>`: a Service (the mesh file's cluster IP, one TCP port 8080
//! named `http`), one EndpointSlice (10 ready IPv4 endpoints, each with a `targetRef` to its Pod; its
//! one port is named `http` and carries the generation-encoding number) and 10 Pods (annotation
//! `strait.io/inject: enabled` and a `strait-proxy` container, as the injector leaves them, service
//! account `svc-<i>`, an app container with port 8080, `podIP`, phase `Running`). A change of service `i` to generation `g` sets its slice's port to
//! `10000 + g`: every endpoint of the service moves at once (a slice has one port set), and the
//! highest endpoint port of a snapshot again names the generation it holds.

use std::{
    io,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use strait_tests::kube_api::KubeApi;

use super::{
    ENDPOINTS_PER_SERVICE, GENERATION_PORT_BASE, MAX_GENERATION, SERVICE_PORT, cluster_ip,
    endpoint_ip, namespace, service_name,
};

/// The kinds the controller watches, in the order the report lists them.
pub const KINDS: [&str; 3] = ["Service", "EndpointSlice", "Pod"];

/// The pod-template hash in every Pod's name and labels, as a Deployment's ReplicaSet sets it.
const TEMPLATE_HASH: &str = "6b9f7c5d8";

/// Letters the API server draws generated name suffixes from (no vowels, no look-alikes).
const SUFFIX_ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// A 5-character suffix, as `generateName` gives, unique per `n`.
fn suffix(n: usize) -> String {
    let mut n = n;
    (0..5)
        .map(|_| {
            let c = SUFFIX_ALPHABET[n % SUFFIX_ALPHABET.len()] as char;
            n /= SUFFIX_ALPHABET.len();
            c
        })
        .collect()
}

/// The name of endpoint `j`'s Pod of service `i`: `svc-<i>-<template hash>-<suffix>`.
pub fn pod_name(i: usize, j: usize) -> String {
    format!(
        "{}-{TEMPLATE_HASH}-{}",
        service_name(i),
        suffix(i * ENDPOINTS_PER_SERVICE + j)
    )
}

fn slice_name(i: usize) -> String {
    format!("{}-{}", service_name(i), suffix(i))
}

/// A deterministic uid: `kind` tells the object kinds apart, `n` the objects.
fn uid(kind: u32, n: usize) -> String {
    format!("{kind:08x}-0000-4000-8000-{n:012x}")
}

/// Pods per node (for `nodeName` and `hostIP`).
const PODS_PER_NODE: usize = 100;

fn node(pod: usize) -> (String, String) {
    let n = pod / PODS_PER_NODE;
    (
        format!("node-{n}"),
        format!("172.18.{}.{}", n / 250, n % 250 + 2),
    )
}

pub fn service(i: usize) -> Value {
    let (name, ns, ip) = (service_name(i), namespace(i), cluster_ip(i).to_string());
    json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": ns, "uid": uid(1, i), "labels": {"app": name}},
        "spec": {
            "type": "ClusterIP",
            "selector": {"app": name},
            "clusterIP": ip,
            "clusterIPs": [ip],
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "ports": [{"name": "http", "port": SERVICE_PORT, "protocol": "TCP", "targetPort": SERVICE_PORT}],
        },
    })
}

/// The service's EndpointSlice with its one port at `port`.
pub fn slice(i: usize, port: u16) -> Value {
    let (name, ns) = (service_name(i), namespace(i));
    let endpoints: Vec<Value> = (0..ENDPOINTS_PER_SERVICE)
        .map(|j| {
            let n = i * ENDPOINTS_PER_SERVICE + j;
            json!({
                "addresses": [endpoint_ip(i, j).to_string()],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": node(n).0,
                "targetRef": {"kind": "Pod", "namespace": ns, "name": pod_name(i, j), "uid": uid(3, n)},
            })
        })
        .collect();
    json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": slice_name(i),
            "generateName": format!("{name}-"),
            "namespace": ns,
            "uid": uid(2, i),
            "labels": {
                "kubernetes.io/service-name": name,
                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                "app": name,
            },
            "ownerReferences": [{
                "apiVersion": "v1", "kind": "Service", "name": name, "uid": uid(1, i),
                "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": port, "protocol": "TCP"}],
        "endpoints": endpoints,
    })
}

/// Endpoint `j`'s Pod of service `i`; `meshed`: with the injector's annotation.
pub fn pod(i: usize, j: usize, meshed: bool) -> Value {
    let (name, ns) = (service_name(i), namespace(i));
    let n = i * ENDPOINTS_PER_SERVICE + j;
    let (node_name, host_ip) = node(n);
    let ip = endpoint_ip(i, j).to_string();
    let mut metadata = json!({
        "name": pod_name(i, j),
        "generateName": format!("{name}-{TEMPLATE_HASH}-"),
        "namespace": ns,
        "uid": uid(3, n),
        "labels": {"app": name, "pod-template-hash": TEMPLATE_HASH},
        "ownerReferences": [{
            "apiVersion": "apps/v1", "kind": "ReplicaSet", "name": format!("{name}-{TEMPLATE_HASH}"),
            "uid": uid(4, i), "controller": true, "blockOwnerDeletion": true,
        }],
    });
    let mut containers = vec![json!({
        "name": "app",
        "image": "registry.bench.local/app:1.0.0",
        "ports": [{"name": "http", "containerPort": SERVICE_PORT, "protocol": "TCP"}],
    })];
    if meshed {
        metadata["annotations"] = json!({"strait.io/inject": "enabled"});
        containers.push(json!({"name": "strait-proxy", "image": "strait-proxy:0.1.0"}));
    }
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {
            "serviceAccountName": name,
            "nodeName": node_name,
"containers": containers,
        },
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}], "hostIP": host_ip},
    })
}

/// The test API server on its own thread (and runtime), filled with the mesh.
pub struct Cluster {
    pub api: KubeApi,
    generations: Vec<u32>,
    /// Objects per kind, in [`KINDS`] order.
    pub counts: [usize; 3],
    /// Bytes of one object of each kind as JSON (as stored, before the server adds its fields).
    pub sizes: [usize; 3],
    /// The resourceVersion after the fill.
    pub revision: u64,
    pub fill_time: Duration,
}

/// Applies between two compactions while filling: the server keeps every change for watches, and
/// no watch runs yet.
const COMPACT_EVERY: usize = 10_000;

impl Cluster {
    /// Starts the server on a thread of its own and fills it.
    pub fn start(services: usize, meshed: bool) -> Result<Self, String> {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("kube-api".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("tokio runtime");
                runtime.block_on(async move {
                    let _ = tx.send(KubeApi::start().await);
                    // The server's tasks run on this runtime for as long as the process lives.
                    std::future::pending::<()>().await
                })
            })
            .map_err(|e| format!("starting the API server's thread: {e}"))?;
        let api = rx
            .recv()
            .map_err(|_| "the API server did not start".to_string())?;
        let started = Instant::now();
        let sizes = [
            service(0).to_string().len(),
            slice(0, SERVICE_PORT).to_string().len(),
            pod(0, 0, meshed).to_string().len(),
        ];
        let mut applied = 0usize;
        let mut applied_one = |object: Value| {
            api.apply(object);
            applied += 1;
            if applied.is_multiple_of(COMPACT_EVERY) {
                api.compact();
            }
        };
        for i in 0..services {
            applied_one(service(i));
            for j in 0..ENDPOINTS_PER_SERVICE {
                applied_one(pod(i, j, meshed));
            }
            applied_one(slice(i, SERVICE_PORT));
        }
        api.compact();
        Ok(Self {
            revision: api.revision(),
            counts: [services, services, services * ENDPOINTS_PER_SERVICE],
            sizes,
            generations: vec![0; services],
            fill_time: started.elapsed(),
            api,
        })
    }

    /// Moves service `i` to its next generation: one update of its EndpointSlice, whose port
    /// becomes `10000 + g`. Returns `g`; `before_update` runs just before the update is stored.
    pub fn change(&mut self, i: usize, before_update: impl FnOnce(u32)) -> u32 {
        let g = self.generations[i] + 1;
        assert!(
            g <= MAX_GENERATION,
            "service {i} changed more than {MAX_GENERATION} times"
        );
        self.generations[i] = g;
        let port = GENERATION_PORT_BASE + g;
        before_update(g);
        self.api
            .modify("EndpointSlice", &namespace(i), &slice_name(i), |s| {
                s["ports"][0]["port"] = json!(port)
            });
        g
    }

    /// List requests (pages) per kind the server answered, in [`KINDS`] order.
    pub fn lists(&self) -> [usize; 3] {
        KINDS.map(|k| self.api.lists_of(k))
    }
}

/// The controller, started by the load generator once the API server is filled.
pub struct Controller {
    child: Child,
    pub pid: u32,
}

impl Controller {
    /// Runs `command` (e.g. `taskset -c 1 strait-controller --kubernetes --kubeconfig …`; `taskset`
    /// and `env` exec, so the pid is the controller's) with its output appended to `log`, and
    /// writes its pid to `pid_file` (for the script's clean-up should this process die first).
    pub fn spawn(
        command: &[String],
        log: &Path,
        pid_file: Option<&PathBuf>,
    ) -> Result<Self, String> {
        let (program, args) = command
            .split_first()
            .ok_or("no controller command given (after --)")?;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out.try_clone().map_err(|e| e.to_string())?;
        let child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {program}: {e}"))?;
        let pid = child.id();
        if let Some(f) = pid_file {
            std::fs::write(f, format!("{pid}\n")).map_err(|e| format!("{}: {e}", f.display()))?;
        }
        Ok(Self { child, pid })
    }

    /// Whether it is still running (`Err` with how it ended otherwise).
    pub fn running(&mut self) -> Result<(), String> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(format!("the controller exited ({status})")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// SIGTERM, up to 5 s, then SIGKILL.
    pub fn stop(&mut self) -> io::Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        // SAFETY: kill(2) on the pid of a child not yet reaped.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if self.child.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child.kill()?;
        self.child.wait().map(|_| ())
    }
}

impl Drop for Controller {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_valid() {
        let mut seen = std::collections::HashSet::new();
        for n in 0..100_000 {
            let s = suffix(n);
            assert_eq!(s.len(), 5);
            assert!(seen.insert(s));
        }
        let name = pod_name(12, 3);
        assert!(name.starts_with("svc-12-6b9f7c5d8-"), "{name}");
        assert!(
            name.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        );
    }

    #[test]
    fn objects_point_at_each_other() {
        let s = slice(7, 10_003);
        assert_eq!(
            s["metadata"]["labels"]["kubernetes.io/service-name"],
            "svc-7"
        );
        assert_eq!(
            s["ports"][0],
            json!({"name": "http", "port": 10_003, "protocol": "TCP"})
        );
        let e = &s["endpoints"][3];
        let p = pod(7, 3, true);
        assert_eq!(e["targetRef"]["name"], p["metadata"]["name"]);
        assert_eq!(e["targetRef"]["uid"], p["metadata"]["uid"]);
        assert_eq!(e["addresses"][0], p["status"]["podIP"]);
        assert_eq!(p["metadata"]["annotations"]["strait.io/inject"], "enabled");
        assert!(pod(7, 3, false)["metadata"]["annotations"].is_null());
        assert_eq!(service(7)["spec"]["clusterIP"], cluster_ip(7).to_string());
    }
}
