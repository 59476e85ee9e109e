//! Adding the proxy to a pod template, and taking it out again. Works on the JSON itself (not on
//! typed structs), so every field injection does not touch is kept as it was and the webhook's
//! JSONPatch only adds what injection adds.
//!
//! Added: the `strait-init` init container (iptables rules, NET_ADMIN and NET_RAW only, with an
//! emptyDir on /run for the legacy back end's xtables lock as the root filesystem is read-only);
//! the `strait-proxy` container, as a native sidecar (an init container with `restartPolicy:
//! Always` and a startup probe on `/ready`, so later init containers and the app start once the
//! proxy is ready, and Jobs complete) or, before Kubernetes 1.29, first in `containers` with a
//! postStart hook (`strait-proxy await-ready`) that holds the app until the proxy is ready; a
//! projected ServiceAccount token (audience `identity.strait.io`) for the identity service; the
//! annotation `strait.io/injected: <version>`; app probes rewritten through the admin port.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::{
    Context, Outcome,
    overrides::{self, Annotations, Overrides},
    probes,
};

pub const INJECT_ANNOTATION: &str = "strait.io/inject";
pub const INJECTED_ANNOTATION: &str = "strait.io/injected";
pub const PROXY_CONTAINER: &str = "strait-proxy";
pub const INIT_CONTAINER: &str = "strait-init";
pub const TOKEN_VOLUME: &str = "strait-identity-token";
pub const XTABLES_VOLUME: &str = "strait-xtables-lock";
pub const TOKEN_DIR: &str = "/var/run/secrets/strait.io/identity";
pub const TOKEN_AUDIENCE: &str = "identity.strait.io";
/// The binary in the proxy image (its entrypoint).
pub const PROXY_BINARY: &str = "/usr/local/bin/strait-proxy";
pub const INBOUND_PORT: u16 = 7143;
pub const OUTBOUND_PORT: u16 = 7140;
pub const ADMIN_PORT: u16 = 7191;
/// The projected token's lifetime; the kubelet refreshes it at 80%, the proxy reads it at each renewal.
const TOKEN_EXPIRATION_SECONDS: u64 = 3600;

/// The version written in `strait.io/injected`.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

fn unchanged(reason: impl Into<String>) -> Outcome {
    Outcome::Unchanged { reason: reason.into() }
}

/// Every container of the pod spec, init containers first.
fn all_containers(spec: &Map<String, Value>) -> impl Iterator<Item = &Value> {
    ["initContainers", "containers"].into_iter().filter_map(|k| spec.get(k).and_then(Value::as_array)).flatten()
}

fn container_name(c: &Value) -> Option<&str> {
    c.get("name").and_then(Value::as_str)
}

/// Whether an init container keeps running beside the app (a native sidecar).
fn is_native_sidecar(c: &Value) -> bool {
    c.get("restartPolicy").and_then(Value::as_str) == Some("Always")
}

pub fn inject(template: &Value, ctx: &Context<'_>) -> Outcome {
    let Some(root) = template.as_object() else { return unchanged("not a pod template: not a JSON object") };
    let metadata = match root.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m),
        Some(_) => return unchanged("not a pod template: metadata is not an object"),
    };
    let pod_annotations = match metadata.and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => None,
        Some(Value::Object(a)) => Some(a),
        Some(_) => return unchanged("not a pod template: metadata.annotations is not an object"),
    };
    let Some(spec) = root.get("spec").and_then(Value::as_object) else {
        return unchanged("not a pod template: no spec");
    };
    if !spec.get("containers").is_some_and(Value::is_array) {
        return unchanged("not a pod template: spec.containers is not a list");
    }
    if spec.get("initContainers").is_some_and(|v| !v.is_array() && !v.is_null()) {
        return unchanged("not a pod template: spec.initContainers is not a list");
    }
    if spec.get("volumes").is_some_and(|v| !v.is_array() && !v.is_null()) {
        return unchanged("not a pod template: spec.volumes is not a list");
    }
    if all_containers(spec).any(|c| container_name(c) == Some(PROXY_CONTAINER)) {
        return unchanged(format!("already injected (it has a {PROXY_CONTAINER} container)"));
    }
    let annotations = Annotations { pod: pod_annotations, namespace: ctx.namespace_annotations };
    let mut warnings = Vec::new();
    // The pod's own choice wins; a value that is neither word is reported and the namespace decides.
    let pod_choice = match pod_annotations.and_then(|a| a.get(INJECT_ANNOTATION)) {
        None => None,
        Some(Value::String(v)) if v.trim() == "enabled" => Some(true),
        Some(Value::String(v)) if v.trim() == "disabled" => Some(false),
        Some(v) => {
            warnings.push(format!("annotation {INJECT_ANNOTATION}={v} on the pod ignored: not enabled or disabled"));
            None
        }
    };
    let ns_choice = match ctx.namespace_annotations.and_then(|a| a.get(INJECT_ANNOTATION)).map(|v| v.trim()) {
        None => None,
        Some("enabled") => Some(true),
        Some("disabled") => Some(false),
        Some(v) => {
            warnings.push(format!(
                "annotation {INJECT_ANNOTATION}={v:?} on namespace {} ignored: not enabled or disabled",
                ctx.namespace
            ));
            None
        }
    };
    let also = |w: &[String]| if w.is_empty() { String::new() } else { format!(" ({})", w.join("; ")) };
    match (pod_choice, ns_choice) {
        (Some(false), _) => return unchanged(format!("opted out: the pod has {INJECT_ANNOTATION}: disabled")),
        (None, Some(false)) => {
            return unchanged(format!(
                "opted out: namespace {} has {INJECT_ANNOTATION}: disabled{}",
                ctx.namespace,
                also(&warnings)
            ));
        }
        (None, None) if ctx.namespace_annotations.is_none() => {
            return unchanged(format!("not annotated: the pod has no {INJECT_ANNOTATION}: enabled{}", also(&warnings)));
        }
        (None, None) => {
            return unchanged(format!(
                "not annotated: neither the pod nor namespace {} has {INJECT_ANNOTATION}: enabled{}",
                ctx.namespace,
                also(&warnings)
            ));
        }
        (Some(true), _) | (None, Some(true)) => {}
    }
    if spec.get("hostNetwork").and_then(Value::as_bool) == Some(true) {
        return unchanged("hostNetwork pod: its iptables rules would be the node's, so it is not injected");
    }

    let mut out = template.clone();
    let Some(root) = out.as_object_mut() else { return unchanged("not a pod template") };
    let app_named_ports: BTreeMap<String, u16> =
        spec.get("containers").and_then(Value::as_array).into_iter().flatten().flat_map(probes::named_ports).collect();
    let ov = overrides::read(&annotations, ctx.config, &app_named_ports, &mut warnings);
    for c in all_containers(spec) {
        for p in c.get("ports").and_then(Value::as_array).into_iter().flatten() {
            if let Some(port) =
                p.get("containerPort").and_then(Value::as_u64).filter(|p| [7140, 7143, 7191].contains(p))
            {
                warnings.push(format!(
                    "container {} declares port {port}, which the proxy uses (outbound 7140, inbound 7143, admin 7191)",
                    container_name(c).unwrap_or("?")
                ));
            }
        }
    }

    let Some(spec) = root.get_mut("spec").and_then(Value::as_object_mut) else {
        return unchanged("not a pod template");
    };
    let mut rewritten = probes::Rewritten::default();
    if ov.rewrite_probes {
        if let Some(cs) = spec.get_mut("containers").and_then(Value::as_array_mut) {
            cs.iter_mut().for_each(|c| probes::rewrite(c, &mut rewritten, &mut warnings));
        }
        if let Some(cs) = spec.get_mut("initContainers").and_then(Value::as_array_mut) {
            cs.iter_mut()
                .filter(|c| is_native_sidecar(c))
                .for_each(|c| probes::rewrite(c, &mut rewritten, &mut warnings));
        }
    }
    if !ctx.native_sidecars && matches!(spec.get("restartPolicy").and_then(Value::as_str), Some("Never" | "OnFailure"))
    {
        warnings.push(
            "the cluster has no native sidecars (Kubernetes < 1.29): the proxy keeps running after the app exits, \
             so a Job's pod does not complete by itself"
                .into(),
        );
    }

    let init = init_container(ctx, &ov);
    let proxy = proxy_container(ctx, &ov, &rewritten.app_probes);
    let inits = spec.entry("initContainers").or_insert_with(|| Value::Array(Vec::new()));
    if inits.is_null() {
        *inits = Value::Array(Vec::new());
    }
    if let Some(inits) = inits.as_array_mut() {
        inits.insert(0, init);
        if ctx.native_sidecars {
            inits.insert(1, proxy.clone());
        }
    }
    if let (false, Some(cs)) = (ctx.native_sidecars, spec.get_mut("containers").and_then(Value::as_array_mut)) {
        cs.insert(0, proxy);
    }
    let volumes = spec.entry("volumes").or_insert_with(|| Value::Array(Vec::new()));
    if volumes.is_null() {
        *volumes = Value::Array(Vec::new());
    }
    if let Some(volumes) = volumes.as_array_mut() {
        volumes.retain(|v| !matches!(container_name(v), Some(TOKEN_VOLUME | XTABLES_VOLUME)));
        volumes.push(json!({
            "name": TOKEN_VOLUME,
            "projected": {"sources": [{"serviceAccountToken": {
                "audience": TOKEN_AUDIENCE, "expirationSeconds": TOKEN_EXPIRATION_SECONDS, "path": "token"
            }}]}
        }));
        volumes.push(json!({"name": XTABLES_VOLUME, "emptyDir": {}}));
    }

    let metadata = root.entry("metadata").or_insert_with(|| Value::Object(Map::new()));
    if !metadata.is_object() {
        *metadata = Value::Object(Map::new());
    }
    if let Some(m) = metadata.as_object_mut() {
        let a = m.entry("annotations").or_insert_with(|| Value::Object(Map::new()));
        if !a.is_object() {
            *a = Value::Object(Map::new());
        }
        if let Some(a) = a.as_object_mut() {
            a.insert(INJECTED_ANNOTATION.into(), VERSION.into());
            if !rewritten.originals.is_empty() {
                a.insert(
                    probes::ORIGINAL_PROBES_ANNOTATION.into(),
                    Value::Object(rewritten.originals).to_string().into(),
                );
            }
        }
    }
    Outcome::Injected { template: out, warnings }
}

fn init_container(ctx: &Context<'_>, ov: &Overrides) -> Value {
    let uid = ctx.config.proxy_uid.to_string();
    let mut args: Vec<String> = vec![
        "init".into(),
        "--proxy-uid".into(),
        uid,
        "--inbound-port".into(),
        INBOUND_PORT.to_string(),
        "--outbound-port".into(),
        OUTBOUND_PORT.to_string(),
        "--admin-port".into(),
        ADMIN_PORT.to_string(),
    ];
    for (flag, v) in
        [("--skip-inbound-ports", &ov.skip_inbound_ports), ("--skip-outbound-ports", &ov.skip_outbound_ports)]
    {
        if let Some(v) = v {
            args.extend([flag.to_string(), v.clone()]);
        }
    }
    json!({
        "name": INIT_CONTAINER,
        "image": ctx.config.proxy_image,
        "imagePullPolicy": ctx.config.proxy_image_pull_policy,
        "args": args,
        "resources": ov.resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]},
            "privileged": false,
            "readOnlyRootFilesystem": true,
            "runAsNonRoot": false,
            "runAsUser": 0,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": XTABLES_VOLUME, "mountPath": "/run"}]
    })
}

fn field_env(name: &str, path: &str) -> Value {
    json!({"name": name, "valueFrom": {"fieldRef": {"fieldPath": path}}})
}

fn env(name: &str, value: impl Into<String>) -> Value {
    json!({"name": name, "value": value.into()})
}

fn proxy_container(ctx: &Context<'_>, ov: &Overrides, app_probes: &Map<String, Value>) -> Value {
    let c = ctx.config;
    let mut envs = vec![
        env("STRAIT_DISCOVERY_ADDR", &c.discovery_addr),
        env("STRAIT_IDENTITY_ADDR", &c.identity_addr),
        env("STRAIT_IDENTITY_SERVER_ID", &c.identity_server_id),
        env("STRAIT_TRUST_DOMAIN", &c.trust_domain),
        env("STRAIT_TRUST_ANCHORS_PEM", ctx.trust_anchors_pem),
        env("STRAIT_IDENTITY_TOKEN_FILE", format!("{TOKEN_DIR}/token")),
        field_env("STRAIT_NAMESPACE", "metadata.namespace"),
        field_env("STRAIT_WORKLOAD", "metadata.name"),
        field_env("STRAIT_POD_NAME", "metadata.name"),
        field_env("STRAIT_POD_IP", "status.podIP"),
        field_env("STRAIT_SERVICE_ACCOUNT", "spec.serviceAccountName"),
        env("STRAIT_ADMIN_ADDR", format!("0.0.0.0:{ADMIN_PORT}")),
        env("STRAIT_LOG", ov.log_level.clone().unwrap_or_else(|| c.log_level.clone())),
    ];
    if let Some(f) = &ov.log_format {
        envs.push(env("STRAIT_LOG_FORMAT", f));
    }
    if let Some(p) = &ov.opaque_ports {
        envs.push(env("STRAIT_INBOUND_OPAQUE_PORTS", p));
    }
    if !app_probes.is_empty() {
        envs.push(env("STRAIT_APP_PROBES", Value::Object(app_probes.clone()).to_string()));
    }
    let http = |path: &str| json!({"httpGet": {"path": path, "port": ADMIN_PORT}});
    let mut proxy = json!({
        "name": PROXY_CONTAINER,
        "image": c.proxy_image,
        "imagePullPolicy": c.proxy_image_pull_policy,
        "env": envs,
        "ports": [
            {"name": "strait-inbound", "containerPort": INBOUND_PORT, "protocol": "TCP"},
            {"name": "strait-admin", "containerPort": ADMIN_PORT, "protocol": "TCP"}
        ],
        "resources": ov.resources,
        "securityContext": {
            "allowPrivilegeEscalation": false,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": true,
            "runAsGroup": c.proxy_uid,
            "runAsNonRoot": true,
            "runAsUser": c.proxy_uid,
            "seccompProfile": {"type": "RuntimeDefault"}
        },
        "livenessProbe": http("/live"),
        "readinessProbe": http("/ready"),
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": TOKEN_VOLUME, "mountPath": TOKEN_DIR, "readOnly": true}]
    });
    if let Some(p) = proxy.as_object_mut() {
        if ctx.native_sidecars {
            p.insert("restartPolicy".into(), "Always".into());
            let mut startup = http("/ready");
            if let Some(s) = startup.as_object_mut() {
                s.insert("periodSeconds".into(), 1.into());
                s.insert("failureThreshold".into(), 120.into());
            }
            p.insert("startupProbe".into(), startup);
        } else {
            p.insert("lifecycle".into(), json!({"postStart": {"exec": {"command": [PROXY_BINARY, "await-ready"]}}}));
        }
    }
    proxy
}

/// Takes out everything [`inject`] added; a template without it comes back unchanged.
pub fn uninject(template: &Value) -> Value {
    let mut out = template.clone();
    let Some(root) = out.as_object_mut() else { return out };
    let annotations = root.get("metadata").and_then(|m| m.get("annotations")).and_then(Value::as_object);
    let originals: Option<Map<String, Value>> = annotations
        .and_then(|a| a.get(probes::ORIGINAL_PROBES_ANNOTATION))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str::<Map<String, Value>>(s).ok());
    let Some(spec) = root.get_mut("spec").and_then(Value::as_object_mut) else { return out };
    let app_probes: Option<Map<String, Value>> = all_containers(spec)
        .filter(|c| container_name(c) == Some(PROXY_CONTAINER))
        .filter_map(|c| c.get("env")?.as_array())
        .flatten()
        .find(|e| e.get("name").and_then(Value::as_str) == Some("STRAIT_APP_PROBES"))
        .and_then(|e| e.get("value")?.as_str())
        .and_then(|s| serde_json::from_str(s).ok());
    for key in ["initContainers", "containers"] {
        let Some(cs) = spec.get_mut(key).and_then(Value::as_array_mut) else { continue };
        cs.retain(|c| !matches!(container_name(c), Some(PROXY_CONTAINER | INIT_CONTAINER)));
        probes::restore(cs, originals.as_ref(), app_probes.as_ref());
        if key == "initContainers" && cs.is_empty() {
            spec.remove(key);
        }
    }
    if let Some(vs) = spec.get_mut("volumes").and_then(Value::as_array_mut) {
        vs.retain(|v| !matches!(container_name(v), Some(TOKEN_VOLUME | XTABLES_VOLUME)));
        if vs.is_empty() {
            spec.remove("volumes");
        }
    }
    let Some(m) = root.get_mut("metadata").and_then(Value::as_object_mut) else { return out };
    if let Some(a) = m.get_mut("annotations").and_then(Value::as_object_mut) {
        a.remove(INJECTED_ANNOTATION);
        a.remove(probes::ORIGINAL_PROBES_ANNOTATION);
        if a.is_empty() {
            m.remove("annotations");
        }
    }
    out
}
