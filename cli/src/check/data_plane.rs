//! The data plane: which pods run the proxy and which version the injector gave them, and which
//! pods asked to be meshed but run without it (created while the injector was down or before it
//! was installed: the webhook's failurePolicy is Ignore, so they started anyway, unmeshed).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::{Api, api::ListParams};

use super::{Check, Ctx, Group, describe, read_hint};

/// The contract with the injector (notes: the proxy container's name, its version annotation) and
/// the user's opt-in.
pub const PROXY_CONTAINER: &str = "strait-proxy";
pub const INJECTED_ANNOTATION: &str = "strait.io/injected";
pub const INJECT_ANNOTATION: &str = "strait.io/inject";
/// Namespaces the chart's webhook never injects into (besides the release namespace).
const NEVER_INJECTED: &[&str] = &["kube-system"];

fn has_proxy(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| {
        s.containers.iter().chain(s.init_containers.iter().flatten()).any(|c| c.name == PROXY_CONTAINER)
    })
}

fn meta_value<'a>(map: &'a Option<BTreeMap<String, String>>, key: &str) -> Option<&'a str> {
    map.as_ref().and_then(|m| m.get(key)).map(String::as_str)
}

/// Whether the user asked for `pod` to be meshed: its own annotation, else its namespace's; an
/// opt-out (`disabled`, as annotation or label) on the pod wins.
fn wants_proxy(pod: &Pod, namespaces: &BTreeMap<String, bool>) -> bool {
    let m = &pod.metadata;
    let own = meta_value(&m.annotations, INJECT_ANNOTATION);
    if own == Some("disabled") || meta_value(&m.labels, INJECT_ANNOTATION) == Some("disabled") {
        return false;
    }
    own == Some("enabled") || namespaces.get(m.namespace.as_deref().unwrap_or("")).copied().unwrap_or(false)
}

/// How to get `pod` recreated (through the webhook this time): a rollout restart of what owns it.
fn restart_command(pod: &Pod) -> String {
    let m = &pod.metadata;
    let ns = m.namespace.as_deref().unwrap_or("default");
    let name = m.name.as_deref().unwrap_or("");
    let owner = m.owner_references.iter().flatten().find(|o| o.controller == Some(true));
    match owner.map(|o| (o.kind.as_str(), o.name.as_str())) {
        Some(("ReplicaSet", rs)) => {
            let hash = meta_value(&m.labels, "pod-template-hash").unwrap_or("");
            match rs.strip_suffix(&format!("-{hash}")).filter(|_| !hash.is_empty()) {
                Some(deployment) => format!("kubectl rollout restart deployment/{deployment} -n {ns}"),
                None => format!("kubectl delete pod {name} -n {ns} (its ReplicaSet {rs} recreates it)"),
            }
        }
        Some(("StatefulSet", owner)) => format!("kubectl rollout restart statefulset/{owner} -n {ns}"),
        Some(("DaemonSet", owner)) => format!("kubectl rollout restart daemonset/{owner} -n {ns}"),
        Some((kind, owner)) => format!("kubectl delete pod {name} -n {ns} (its {kind} {owner} recreates it)"),
        None => format!("kubectl delete pod {name} -n {ns}, then create it again"),
    }
}

/// Rollout restarts (one per workload, however many pods) before the one-pod commands.
fn rollouts_first(commands: BTreeSet<String>) -> Vec<String> {
    let mut commands: Vec<String> = commands.into_iter().collect();
    commands.sort_by_key(|c| !c.starts_with("kubectl rollout restart"));
    commands
}

fn pod_name(pod: &Pod) -> String {
    format!("{}/{}", pod.metadata.namespace.as_deref().unwrap_or(""), pod.metadata.name.as_deref().unwrap_or(""))
}

/// `proxy-versions`, `pods-without-proxy`.
pub async fn pods(ctx: &Ctx) -> Group {
    let mut checks = Vec::new();
    let pods: Api<Pod> = Api::all(ctx.client.clone());
    let pods = match pods.list(&ListParams::default()).await {
        Ok(list) => list.items,
        Err(e) => {
            let (detail, code) = describe(&e);
            checks.push(Check::fail("proxy-versions", detail, read_hint(code, "Pods (all namespaces)")));
            return Group { name: "data-plane", checks };
        }
    };
    let namespaces: Api<Namespace> = Api::all(ctx.client.clone());
    let opted_in: BTreeMap<String, bool> = match namespaces.list(&ListParams::default()).await {
        Ok(list) => list
            .items
            .iter()
            .map(|n| {
                let enabled = meta_value(&n.metadata.annotations, INJECT_ANNOTATION) == Some("enabled")
                    || meta_value(&n.metadata.labels, INJECT_ANNOTATION) == Some("enabled");
                (n.metadata.name.clone().unwrap_or_default(), enabled)
            })
            .collect(),
        Err(e) => {
            let (detail, code) = describe(&e);
            checks.push(Check::warn(
                "pods-without-proxy",
                format!("namespaces: {detail}; only pods' own annotations are looked at"),
                read_hint(code, "Namespaces"),
            ));
            BTreeMap::new()
        }
    };
    let running = |p: &&Pod| {
        p.metadata.deletion_timestamp.is_none()
            && !matches!(p.status.as_ref().and_then(|s| s.phase.as_deref()), Some("Succeeded" | "Failed"))
    };

    // Versions of the meshed pods.
    let ours = env!("CARGO_PKG_VERSION");
    let mut versions: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut outdated = BTreeSet::new();
    for pod in pods.iter().filter(running).filter(|p| has_proxy(p)) {
        let version = meta_value(&pod.metadata.annotations, INJECTED_ANNOTATION).unwrap_or("unknown").to_string();
        if version != ours {
            outdated.insert(restart_command(pod));
        }
        versions.entry(version).or_default().push(pod_name(pod));
    }
    let meshed: usize = versions.values().map(Vec::len).sum();
    let summary = versions.iter().map(|(v, p)| format!("{v} ×{}", p.len())).collect::<Vec<_>>().join(", ");
    checks.push(if meshed == 0 {
        Check::ok("proxy-versions", "no meshed pods yet (annotate a namespace with strait.io/inject=enabled)")
    } else if outdated.is_empty() {
        Check::ok("proxy-versions", format!("{meshed} meshed pods, proxy {summary}"))
    } else {
        let others: Vec<String> = versions
            .iter()
            .filter(|(v, _)| v.as_str() != ours)
            .map(|(v, pods)| format!("{v}: {}", pods.join(", ")))
            .collect();
        Check::warn(
            "proxy-versions",
            format!("{meshed} meshed pods, proxy {summary}; not {ours}: {}", others.join("; ")),
            format!("restart them to get the current proxy: {}", rollouts_first(outdated).join("; ")),
        )
    });

    // Pods that asked for the proxy and run without it.
    let excluded = |p: &&Pod| {
        let ns = p.metadata.namespace.as_deref().unwrap_or("");
        ns == ctx.namespace || NEVER_INJECTED.contains(&ns)
    };
    let mut without = Vec::new();
    let mut restarts = BTreeSet::new();
    let mut host_network = Vec::new();
    for pod in pods.iter().filter(running).filter(|p| !excluded(p)) {
        if has_proxy(pod) || !wants_proxy(pod, &opted_in) {
            continue;
        }
        if pod.spec.as_ref().and_then(|s| s.host_network).unwrap_or(false) {
            host_network.push(pod_name(pod));
            continue;
        }
        without.push(pod_name(pod));
        restarts.insert(restart_command(pod));
    }
    if !without.is_empty() {
        checks.push(Check::fail(
            "pods-without-proxy",
            format!("annotated for injection, running without {PROXY_CONTAINER}: {}", without.join(", ")),
            format!(
                "they started while the injector was not answering (failurePolicy Ignore); restart it: {}",
                rollouts_first(restarts).join("; ")
            ),
        ));
    } else if !checks.iter().any(|c| c.name == "pods-without-proxy") {
        checks.push(Check::ok("pods-without-proxy", "every pod annotated for injection runs the proxy"));
    }
    if !host_network.is_empty() {
        checks.push(Check::warn(
            "host-network-pods",
            format!("annotated for injection but hostNetwork, so never injected: {}", host_network.join(", ")),
            "a hostNetwork pod shares the node's network, which the proxy cannot intercept: remove the annotation, \
             or run it without hostNetwork",
        ));
    }
    Group { name: "data-plane", checks }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(yaml: &str) -> Pod {
        serde_yaml::from_str(yaml).unwrap()
    }

    #[test]
    fn restart_commands_name_the_owner() {
        let p = pod("metadata: {name: web-7d9f-abcde, namespace: demo, labels: {pod-template-hash: 7d9f}, \
                     ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f, uid: u, controller: true}]}");
        assert_eq!(restart_command(&p), "kubectl rollout restart deployment/web -n demo");
        let p = pod("metadata: {name: db-0, namespace: data, \
                     ownerReferences: [{apiVersion: apps/v1, kind: StatefulSet, name: db, uid: u, controller: true}]}");
        assert_eq!(restart_command(&p), "kubectl rollout restart statefulset/db -n data");
        let p = pod("metadata: {name: lone, namespace: demo}");
        assert!(restart_command(&p).starts_with("kubectl delete pod lone -n demo"));
    }

    #[test]
    fn opt_in_and_out() {
        let ns = BTreeMap::from([("demo".to_string(), true), ("other".to_string(), false)]);
        assert!(wants_proxy(&pod("metadata: {name: a, namespace: demo}"), &ns));
        assert!(!wants_proxy(&pod("metadata: {name: a, namespace: other}"), &ns));
        assert!(wants_proxy(
            &pod("metadata: {name: a, namespace: other, annotations: {strait.io/inject: enabled}}"),
            &ns
        ));
        assert!(!wants_proxy(&pod("metadata: {name: a, namespace: demo, labels: {strait.io/inject: disabled}}"), &ns));
        let native =
            pod("metadata: {name: a}\nspec: {containers: [{name: app}], initContainers: [{name: strait-proxy}]}");
        assert!(has_proxy(&native));
        assert!(!has_proxy(&pod("metadata: {name: a}\nspec: {containers: [{name: app}]}")));
    }
}
