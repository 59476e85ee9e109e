//! The injector's behaviour on whole pods.

use std::collections::BTreeMap;

use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn config() -> InjectorConfig {
    InjectorConfig::default()
}

fn ctx<'a>(config: &'a InjectorConfig, native: bool, ns: Option<&'a BTreeMap<String, String>>) -> Context<'a> {
    Context {
        config,
        trust_anchors_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
        namespace: "shop",
        namespace_annotations: ns,
        native_sidecars: native,
    }
}

fn pod(annotations: Value) -> Value {
    json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-1", "namespace": "shop", "annotations": annotations},
        "spec": {
            "serviceAccountName": "web",
            "containers": [{
                "name": "web",
                "image": "web:1",
                "ports": [{"name": "http", "containerPort": 8080}],
                "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"}, "periodSeconds": 5},
                "livenessProbe": {"tcpSocket": {"port": 8080}}
            }]
        }
    })
}

fn injected(o: Outcome) -> (Value, Vec<String>) {
    match o {
        Outcome::Injected { template, warnings } => (template, warnings),
        Outcome::Unchanged { reason } => panic!("not injected: {reason}"),
    }
}

fn reason(o: Outcome) -> String {
    match o {
        Outcome::Unchanged { reason } => reason,
        Outcome::Injected { .. } => panic!("injected"),
    }
}

fn env_of(c: &Value) -> BTreeMap<String, Value> {
    c["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (e["name"].as_str().unwrap().to_string(), e.get("value").cloned().unwrap_or_else(|| e["valueFrom"].clone()))
        })
        .collect()
}

#[test]
fn native_sidecar_after_the_init_container() {
    let c = config();
    let (p, warnings) = injected(inject_template(&pod(json!({"strait.io/inject": "enabled"})), &ctx(&c, true, None)));
    assert!(warnings.is_empty(), "{warnings:?}");
    let inits = p["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 2);
    let (init, proxy) = (&inits[0], &inits[1]);
    assert_eq!(init["name"], "strait-init");
    assert_eq!(
        init["args"],
        json!([
            "init",
            "--proxy-uid",
            "7102",
            "--inbound-port",
            "7143",
            "--outbound-port",
            "7140",
            "--admin-port",
            "7191"
        ])
    );
    assert_eq!(init["securityContext"]["capabilities"], json!({"add": ["NET_ADMIN", "NET_RAW"], "drop": ["ALL"]}));
    assert_eq!(init["securityContext"]["runAsUser"], 0);
    assert_eq!(init["securityContext"]["runAsNonRoot"], false);
    assert_eq!(init["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(proxy["name"], "strait-proxy");
    assert_eq!(proxy["restartPolicy"], "Always");
    assert_eq!(proxy["startupProbe"]["httpGet"], json!({"path": "/ready", "port": 7191}));
    assert!(proxy.get("lifecycle").is_none());
    let sc = &proxy["securityContext"];
    assert_eq!((sc["runAsUser"].as_u64(), sc["runAsNonRoot"].as_bool()), (Some(7102), Some(true)));
    assert_eq!(sc["allowPrivilegeEscalation"], false);
    assert_eq!(sc["capabilities"], json!({"drop": ["ALL"]}));
    let env = env_of(proxy);
    assert_eq!(env["STRAIT_ADMIN_ADDR"], "0.0.0.0:7191");
    assert_eq!(env["STRAIT_DISCOVERY_ADDR"], "strait-controller.strait-system.svc:8086");
    assert_eq!(env["STRAIT_IDENTITY_ADDR"], "strait-controller.strait-system.svc:8080");
    assert!(env["STRAIT_TRUST_ANCHORS_PEM"].as_str().unwrap().starts_with("-----BEGIN CERTIFICATE-----"));
    assert_eq!(env["STRAIT_NAMESPACE"], json!({"fieldRef": {"fieldPath": "metadata.namespace"}}));
    assert_eq!(env["STRAIT_WORKLOAD"], json!({"fieldRef": {"fieldPath": "metadata.name"}}));
    assert_eq!(env["STRAIT_POD_IP"], json!({"fieldRef": {"fieldPath": "status.podIP"}}));
    assert_eq!(env["STRAIT_SERVICE_ACCOUNT"], json!({"fieldRef": {"fieldPath": "spec.serviceAccountName"}}));
    assert_eq!(env["STRAIT_IDENTITY_TOKEN_FILE"], "/var/run/secrets/strait.io/identity/token");
    assert_eq!(proxy["resources"], c.resources);
    let volumes = p["spec"]["volumes"].as_array().unwrap();
    let token = volumes.iter().find(|v| v["name"] == "strait-identity-token").unwrap();
    assert_eq!(token["projected"]["sources"][0]["serviceAccountToken"]["audience"], "identity.strait.io");
    assert_eq!(p["metadata"]["annotations"]["strait.io/injected"], env!("CARGO_PKG_VERSION"));
    // The app container is the only one in containers.
    assert_eq!(p["spec"]["containers"].as_array().unwrap().len(), 1);
}

#[test]
fn classic_sidecar_first_with_a_hold_until_ready() {
    let c = config();
    let mut job = pod(json!({"strait.io/inject": "enabled"}));
    job["spec"]["restartPolicy"] = "Never".into();
    let (p, warnings) = injected(inject_template(&job, &ctx(&c, false, None)));
    let inits = p["spec"]["initContainers"].as_array().unwrap();
    assert_eq!(inits.len(), 1);
    let proxy = &p["spec"]["containers"][0];
    assert_eq!(proxy["name"], "strait-proxy");
    assert_eq!(
        proxy["lifecycle"]["postStart"]["exec"]["command"],
        json!(["/usr/local/bin/strait-proxy", "await-ready"])
    );
    assert!(proxy.get("restartPolicy").is_none() && proxy.get("startupProbe").is_none());
    assert_eq!(p["spec"]["containers"][1]["name"], "web");
    assert!(warnings.iter().any(|w| w.contains("Job")), "{warnings:?}");
}

#[test]
fn injecting_twice_changes_nothing_and_uninject_restores_the_pod() {
    let c = config();
    for native in [true, false] {
        let original = pod(json!({"strait.io/inject": "enabled"}));
        let (once, _) = injected(inject_template(&original, &ctx(&c, native, None)));
        assert!(reason(inject_template(&once, &ctx(&c, native, None))).contains("already injected"));
        assert_eq!(uninject_template(&once), original);
        assert_eq!(uninject_template(&original), original);
    }
    // Other init containers and volumes are kept, after ours.
    let mut p = pod(json!({"strait.io/inject": "enabled"}));
    p["spec"]["initContainers"] = json!([{"name": "migrate", "image": "m"}]);
    p["spec"]["volumes"] = json!([{"name": "data", "emptyDir": {}}]);
    let (once, _) = injected(inject_template(&p, &ctx(&c, true, None)));
    let names: Vec<&str> =
        once["spec"]["initContainers"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["strait-init", "strait-proxy", "migrate"]);
    assert_eq!(uninject_template(&once), p);
}

#[test]
fn opt_in_and_opt_out_pod_wins_over_namespace() {
    let c = config();
    let enabled = BTreeMap::from([("strait.io/inject".to_string(), "enabled".to_string())]);
    let disabled = BTreeMap::from([("strait.io/inject".to_string(), "disabled".to_string())]);
    assert!(reason(inject_template(&pod(json!({})), &ctx(&c, true, None))).contains("not annotated"));
    injected(inject_template(&pod(json!({})), &ctx(&c, true, Some(&enabled))));
    assert!(reason(inject_template(&pod(json!({})), &ctx(&c, true, Some(&disabled)))).contains("opted out"));
    let r = reason(inject_template(&pod(json!({"strait.io/inject": "disabled"})), &ctx(&c, true, Some(&enabled))));
    assert!(r.contains("the pod has strait.io/inject: disabled"), "{r}");
    injected(inject_template(&pod(json!({"strait.io/inject": "enabled"})), &ctx(&c, true, Some(&disabled))));
    // A value that is neither word: reported, and the namespace decides.
    let (_, w) = injected(inject_template(&pod(json!({"strait.io/inject": "yes"})), &ctx(&c, true, Some(&enabled))));
    assert!(w.iter().any(|w| w.contains("strait.io/inject") && w.contains("yes")), "{w:?}");
    assert!(reason(inject_template(&pod(json!({"strait.io/inject": "yes"})), &ctx(&c, true, None))).contains("yes"));
}

#[test]
fn host_network_pods_are_skipped() {
    let c = config();
    let mut p = pod(json!({"strait.io/inject": "enabled"}));
    p["spec"]["hostNetwork"] = true.into();
    assert!(reason(inject_template(&p, &ctx(&c, true, None))).contains("hostNetwork"));
}

#[test]
fn overrides_from_pod_and_namespace() {
    let c = config();
    let ns = BTreeMap::from([
        ("config.strait.io/proxy-log-level".to_string(), "debug".to_string()),
        ("config.strait.io/proxy-memory-limit".to_string(), "256Mi".to_string()),
    ]);
    let p = pod(json!({
        "strait.io/inject": "enabled",
        "config.strait.io/proxy-log-level": "warn,strait_proxy=debug",
        "config.strait.io/proxy-cpu-request": "100m",
        "config.strait.io/proxy-cpu-limit": "1",
        "config.strait.io/skip-inbound-ports": "22, 8000-8010",
        "config.strait.io/skip-outbound-ports": "5432",
        "config.strait.io/opaque-ports": "3306,http",
        "config.strait.io/proxy-log-format": "json"
    }));
    let (out, warnings) = injected(inject_template(&p, &ctx(&c, true, Some(&ns))));
    assert!(warnings.is_empty(), "{warnings:?}");
    let init = &out["spec"]["initContainers"][0];
    let args: Vec<&str> = init["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--skip-inbound-ports", "22,8000-8010"]), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--skip-outbound-ports", "5432"]), "{args:?}");
    let proxy = &out["spec"]["initContainers"][1];
    let env = env_of(proxy);
    assert_eq!(env["STRAIT_LOG"], "warn,strait_proxy=debug");
    assert_eq!(env["STRAIT_LOG_FORMAT"], "json");
    assert_eq!(env["STRAIT_INBOUND_OPAQUE_PORTS"], "3306,8080");
    assert_eq!(
        proxy["resources"],
        json!({"requests": {"cpu": "100m", "memory": "20Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
    );
}

#[test]
fn bad_override_values_use_the_default_with_a_warning() {
    let c = config();
    let p = pod(json!({
        "strait.io/inject": "enabled",
        "config.strait.io/proxy-cpu-request": "lots",
        "config.strait.io/proxy-memory-request": "1Gi",
        "config.strait.io/proxy-log-level": "loud=yes",
        "config.strait.io/skip-inbound-ports": "99999",
        "config.strait.io/opaque-ports": "grpc",
        "config.strait.io/rewrite-probes": "maybe"
    }));
    let (out, warnings) = injected(inject_template(&p, &ctx(&c, true, None)));
    for want in [
        "proxy-cpu-request=\"lots\"",
        "proxy-log-level=\"loud=yes\"",
        "99999",
        "\"grpc\"",
        "maybe",
        "memory request 1Gi",
    ] {
        assert!(warnings.iter().any(|w| w.contains(want)), "{want} missing from {warnings:?}");
    }
    let proxy = &out["spec"]["initContainers"][1];
    // The memory request above the 128Mi limit would make the API server refuse the pod.
    assert_eq!(proxy["resources"]["requests"], json!({"cpu": "10m", "memory": "128Mi"}));
    assert_eq!(env_of(proxy)["STRAIT_LOG"], "info");
    assert!(!env_of(proxy).contains_key("STRAIT_INBOUND_OPAQUE_PORTS"));
    assert_eq!(out["spec"]["initContainers"][0]["args"].as_array().unwrap().len(), 9);
    // rewrite-probes fell back to true.
    assert_eq!(out["spec"]["containers"][0]["livenessProbe"]["httpGet"]["port"], 7191);
}

#[test]
fn probes_are_rewritten_through_the_admin_port() {
    let c = config();
    let (out, _) = injected(inject_template(&pod(json!({"strait.io/inject": "enabled"})), &ctx(&c, false, None)));
    let app = &out["spec"]["containers"][1];
    assert_eq!(
        app["readinessProbe"],
        json!({"httpGet": {"port": 7191, "path": "/app-probe/web/readiness"}, "periodSeconds": 5})
    );
    assert_eq!(app["livenessProbe"], json!({"httpGet": {"port": 7191, "path": "/app-probe/web/liveness"}}));
    let env = env_of(&out["spec"]["containers"][0]);
    let probes: Value = serde_json::from_str(env["STRAIT_APP_PROBES"].as_str().unwrap()).unwrap();
    assert_eq!(
        probes,
        json!({
            "web/readiness": {"port": 8080, "path": "/ready", "timeoutSeconds": 1},
            "web/liveness": {"port": 8080, "tcp": true, "timeoutSeconds": 1}
        })
    );
    // Opted out: left alone, and no STRAIT_APP_PROBES.
    let p = pod(json!({"strait.io/inject": "enabled", "config.strait.io/rewrite-probes": "false"}));
    let (out, _) = injected(inject_template(&p, &ctx(&c, false, None)));
    assert_eq!(out["spec"]["containers"][1]["readinessProbe"], p["spec"]["containers"][0]["readinessProbe"]);
    assert!(!env_of(&out["spec"]["containers"][0]).contains_key("STRAIT_APP_PROBES"));
}

#[test]
fn input_it_does_not_understand_is_left_alone() {
    let c = config();
    for odd in [
        json!(null),
        json!([]),
        json!("pod"),
        json!({"metadata": 1, "spec": {"containers": []}}),
        json!({"metadata": {"annotations": "x"}, "spec": {"containers": []}}),
        json!({"metadata": {"annotations": {"strait.io/inject": "enabled"}}}),
        json!({"metadata": {"annotations": {"strait.io/inject": "enabled"}}, "spec": {"containers": {}}}),
        json!({"metadata": {"annotations": {"strait.io/inject": "enabled"}}, "spec": {"containers": [], "volumes": 3}}),
    ] {
        reason(inject_template(&odd, &ctx(&c, true, None)));
        uninject_template(&odd);
    }
    // Odd but acceptable: injected, odd parts kept.
    let (out, w) = injected(inject_template(
        &json!({"metadata": {"annotations": {"strait.io/inject": 7}}, "spec": {"containers": [1, {"name": 2, "livenessProbe": {"httpGet": {}}}]}}),
        &ctx(&c, true, Some(&BTreeMap::from([("strait.io/inject".to_string(), "enabled".to_string())]))),
    ));
    assert!(!w.is_empty());
    assert_eq!(out["spec"]["containers"][0], 1);
}

#[test]
fn kubernetes_versions() {
    assert_eq!(parse_kubernetes_version("v1.29.3"), Some((1, 29)));
    assert_eq!(parse_kubernetes_version("1.31"), Some((1, 31)));
    assert_eq!(parse_kubernetes_version("v1.30.2-eks-1234"), Some((1, 30)));
    assert_eq!(parse_kubernetes_version("1.28+"), Some((1, 28)));
    assert_eq!(parse_kubernetes_version("one"), None);
    assert_eq!(parse_kubernetes_version("1"), None);
    assert!(native_sidecars_supported((1, 29)) && native_sidecars_supported((2, 0)));
    assert!(!native_sidecars_supported((1, 28)));
}

#[test]
fn manifests_keep_untouched_documents_byte_identical() {
    let c = config();
    let input = "# a comment\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}   # odd spacing\ndata:\n  k: |\n    ---\n---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  template:\n    metadata:\n      annotations:\n        strait.io/inject: enabled\n    spec:\n      containers:\n      - name: web\n        image: web:1\n---\nkind: Job\nmetadata: {name: plain}\nspec: {template: {spec: {containers: [{name: j}]}}}\n";
    let (out, report) =
        manifest::process(input.as_bytes(), manifest::Mode::Inject { ctx: ctx(&c, true, None), enable: false })
            .unwrap();
    assert!(out.starts_with("# a comment\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: c}   # odd spacing\ndata:\n  k: |\n    ---\n---\n"), "{out}");
    assert!(
        out.ends_with("---\nkind: Job\nmetadata: {name: plain}\nspec: {template: {spec: {containers: [{name: j}]}}}\n"),
        "{out}"
    );
    assert!(out.contains("strait-proxy"));
    assert!(report.iter().any(|l| l == "deployment/web injected"), "{report:?}");
    assert!(report.iter().any(|l| l.starts_with("job/plain: skipped: not annotated")), "{report:?}");
    // Keys keep the input's order; the proxy's container starts with its name.
    let deploy = out.split("\n---\n").nth(1).unwrap();
    assert!(deploy.starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n"), "{deploy}");
    assert!(deploy.contains("- name: strait-init\n"), "{deploy}");
    let (back, _) = manifest::process(out.as_bytes(), manifest::Mode::Uninject).unwrap();
    let again: Vec<serde_yaml::Value> = back.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap()).collect();
    let want: Vec<serde_yaml::Value> = input.split("\n---\n").map(|d| serde_yaml::from_str(d).unwrap()).collect();
    assert_eq!(again, want);
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        prop_oneof![
            Just("enabled".to_string()),
            Just("disabled".to_string()),
            Just("Always".to_string()),
            Just("http".to_string()),
            Just("strait-proxy".to_string()),
            "[a-z0-9.,-]{0,6}"
        ]
        .prop_map(Value::from),
    ];
    let keys = prop_oneof![
        Just("metadata".to_string()),
        Just("annotations".to_string()),
        Just("strait.io/inject".to_string()),
        Just("config.strait.io/proxy-cpu-request".to_string()),
        Just("config.strait.io/opaque-ports".to_string()),
        Just("spec".to_string()),
        Just("containers".to_string()),
        Just("initContainers".to_string()),
        Just("volumes".to_string()),
        Just("name".to_string()),
        Just("ports".to_string()),
        Just("containerPort".to_string()),
        Just("livenessProbe".to_string()),
        Just("httpGet".to_string()),
        Just("tcpSocket".to_string()),
        Just("port".to_string()),
        Just("hostNetwork".to_string()),
        Just("restartPolicy".to_string()),
        "[a-z]{1,4}",
    ];
    leaf.prop_recursive(6, 64, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::from),
            prop::collection::btree_map(keys.clone(), inner, 0..5).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    /// Whatever the JSON: no panic; an injected result is injected once and uninjects cleanly.
    #[test]
    fn odd_json_never_panics(v in json_value(), native in any::<bool>()) {
        let c = config();
        let ns = BTreeMap::from([("strait.io/inject".to_string(), "enabled".to_string())]);
        for template in [v.clone(), json!({"metadata": {"annotations": {"strait.io/inject": "enabled"}}, "spec": v.clone()})] {
            if let Outcome::Injected { template: out, .. } = inject_template(&template, &ctx(&c, native, Some(&ns))) {
                let is_unchanged = matches!(inject_template(&out, &ctx(&c, native, Some(&ns))), Outcome::Unchanged { .. });
                prop_assert!(is_unchanged);
                uninject_template(&out);
            }
            uninject_template(&template);
        }
    }
}
