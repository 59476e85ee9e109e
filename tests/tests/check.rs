//! `strait check` against the test API server: a healthy install (every object built here, the
//! certificates by rcgen) passes with exit code 0; each broken one fails with the check's name and
//! a hint that says what to do, in text and in `--output json`.

use std::{
    process::Command,
    time::{Duration, SystemTime},
};

use base64::{Engine, engine::general_purpose::STANDARD as B64};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType};
use serde_json::{Value, json};
use strait_tests::{
    dir::TestDir,
    kube_api::{KubeApi, Requester},
};

const NS: &str = "strait-system";
const DAY: Duration = Duration::from_secs(86400);

/// A CA: its certificate (PEM) and what signs with it.
struct Ca {
    pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// Validity from `before` ago to `after` from now (a negative `after` is in the past).
fn validity(p: &mut CertificateParams, before: Duration, after: i64) {
    let now = SystemTime::now();
    p.not_before = (now - before).into();
    let end =
        if after >= 0 { now + Duration::from_secs(after as u64) } else { now - Duration::from_secs((-after) as u64) };
    p.not_after = end.into();
}

fn ca_params(name: &str, before: Duration, after: i64) -> CertificateParams {
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, name);
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut p, before, after);
    p
}

fn new_ca(name: &str) -> Ca {
    let key = KeyPair::generate().unwrap();
    let params = ca_params(name, DAY, 365 * DAY.as_secs() as i64);
    let pem = params.self_signed(&key).unwrap().pem();
    Ca { pem, issuer: Issuer::new(params, key) }
}

/// An intermediate CA signed by `parent`, valid for `after` seconds from now: (cert PEM, key PEM).
fn issuer_signed_by(parent: &Ca, after: i64) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = ca_params("strait issuer", 30 * DAY, after);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    (p.signed_by(&key, &parent.issuer).unwrap().pem(), key.serialize_pem())
}

/// A serving certificate for `dns`, signed by `ca`: (cert PEM, key PEM).
fn serving_cert(ca: &Ca, dns: &str) -> (String, String) {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::default();
    p.distinguished_name.push(DnType::CommonName, dns);
    p.subject_alt_names = vec![SanType::DnsName(dns.try_into().unwrap())];
    validity(&mut p, DAY, 365 * DAY.as_secs() as i64);
    (p.signed_by(&key, &ca.issuer).unwrap().pem(), key.serialize_pem())
}

fn tls_secret(name: &str, ca: &str, crt: &str, key: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name, "namespace": NS}, "type": "kubernetes.io/tls",
           "data": {"ca.crt": B64.encode(ca), "tls.crt": B64.encode(crt), "tls.key": B64.encode(key)}})
}

fn pod(name: &str, namespace: &str, containers: &[&str], annotations: Value, owner: Option<(&str, &str)>) -> Value {
    let mut p = json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "annotations": annotations, "labels": {"app": "web"}},
        "spec": {"containers": containers.iter().map(|c| json!({"name": c, "image": "example/app"})).collect::<Vec<_>>()},
        "status": {"phase": "Running", "podIP": "10.1.0.7"},
    });
    if let Some((rs, hash)) = owner {
        p["metadata"]["labels"]["pod-template-hash"] = json!(hash);
        p["metadata"]["ownerReferences"] =
            json!([{"apiVersion": "apps/v1", "kind": "ReplicaSet", "name": rs, "uid": "u-rs", "controller": true}]);
    }
    p
}

/// Everything `helm install` leaves behind, healthy, plus a meshed pod in an opted-in namespace.
struct Install {
    webhook_ca: Ca,
    anchor: Ca,
}

fn install(api: &KubeApi) -> Install {
    let rbac = "rbac.authorization.k8s.io/v1";
    let name = format!("strait-controller-{NS}");
    api.apply(json!({"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": name}, "rules": [
        {"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]},
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["tokenreviews"], "verbs": ["create"]},
        {"apiGroups": ["events.k8s.io"], "resources": ["events"], "verbs": ["create", "patch"]},
    ]}));
    api.apply(json!({"apiVersion": rbac, "kind": "ClusterRoleBinding", "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": "strait-controller", "namespace": NS}]}));
    api.apply(json!({"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "strait-controller", "namespace": NS},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app.kubernetes.io/name": "strait-controller"}},
            "template": {"metadata": {"labels": {"app.kubernetes.io/name": "strait-controller"}},
                         "spec": {"containers": [{"name": "controller", "image": "strait-controller:dev"}]}}},
        "status": {"replicas": 2, "readyReplicas": 2, "availableReplicas": 2}}));
    api.apply(json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "strait-controller-x1", "namespace": NS, "labels": {"kubernetes.io/service-name": "strait-controller"}},
        "addressType": "IPv4",
        "endpoints": [{"addresses": ["10.0.0.5"], "conditions": {"ready": true}}, {"addresses": ["10.0.0.6"], "conditions": {"ready": true}}],
        "ports": [{"name": "webhook", "port": 8443, "protocol": "TCP"}]}));

    let webhook_ca = new_ca("strait-webhook-ca");
    let (crt, key) = serving_cert(&webhook_ca, &format!("strait-controller.{NS}.svc"));
    api.apply(tls_secret("strait-webhook-tls", &webhook_ca.pem, &crt, &key));
    api.apply(webhook_config(&webhook_ca.pem));

    let anchor = new_ca("strait identity trust anchor");
    let (crt, key) = issuer_signed_by(&anchor, 180 * DAY.as_secs() as i64);
    api.apply(tls_secret("strait-identity-issuer", &anchor.pem, &crt, &key));

    api.apply(json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "demo", "annotations": {"strait.io/inject": "enabled"}}}));
    api.apply(json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "plain"}}));
    let injected = json!({"strait.io/injected": env!("CARGO_PKG_VERSION")});
    api.apply(pod("web-5d8f-q2x7z", "demo", &["app", "strait-proxy"], injected, Some(("web-5d8f", "5d8f"))));
    // Not asked for: not meshed, and not a failure.
    api.apply(pod("other-0", "plain", &["app"], json!({}), None));
    Install { webhook_ca, anchor }
}

fn webhook_config(ca_pem: &str) -> Value {
    json!({"apiVersion": "admissionregistration.k8s.io/v1", "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": format!("strait-injector-{NS}")},
        "webhooks": [{"name": "inject.strait.io", "admissionReviewVersions": ["v1"], "sideEffects": "None",
            "clientConfig": {"service": {"name": "strait-controller", "namespace": NS, "path": "/inject", "port": 443},
                             "caBundle": B64.encode(ca_pem)}}]})
}

/// Runs `strait check ARGS` against `api`: (exit code, stdout, stderr).
async fn strait_check(api: &KubeApi, dir: &TestDir, args: &[&str]) -> (i32, String, String) {
    let kubeconfig = api.write_kubeconfig(dir);
    let mut command = Command::new(strait_tests::bin("strait"));
    command.arg("check").arg("--kubeconfig").arg(&kubeconfig).args(["--namespace", NS]).args(args);
    // Not the user's cluster, whatever the environment says.
    command.env_remove("KUBECONFIG");
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let code = out.status.code().unwrap_or(-1);
    (code, String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

/// `strait check --output json`, parsed: (exit code, report).
async fn check_json(api: &KubeApi, dir: &TestDir, extra: &[&str]) -> (i32, Value) {
    let mut args = vec!["--output", "json"];
    args.extend_from_slice(extra);
    let (code, stdout, stderr) = strait_check(api, dir, &args).await;
    let report: Value = serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}\n{stderr}"));
    (code, report)
}

/// The check named `name` in a JSON report.
fn find<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["checks"].as_array().unwrap())
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no check {name} in {report:#}"))
}

fn failed(report: &Value) -> Vec<String> {
    report["groups"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|g| g["checks"].as_array().unwrap())
        .filter(|c| c["status"] == "fail")
        .map(|c| c["name"].as_str().unwrap().to_string())
        .collect()
}

/// Asserts that `name` and only it failed, with a hint containing `hint`.
fn assert_fails_alone(code: i32, report: &Value, name: &str, hint: &str) {
    assert_eq!(code, 1, "{report:#}");
    assert_eq!(report["status"], "fail");
    assert_eq!(failed(report), [name], "{report:#}");
    let check = find(report, name);
    let got = check["hint"].as_str().unwrap_or_else(|| panic!("{name} has no hint: {check:#}"));
    assert!(got.contains(hint), "hint of {name}: {got:?} should contain {hint:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_healthy_install_passes() {
    let dir = TestDir::new("check-healthy");
    let api = KubeApi::start().await;
    install(&api);
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["status"], "ok", "{report:#}");
    let groups: Vec<&str> = report["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(groups, ["kubernetes-api", "rbac", "controller", "webhook", "identity", "data-plane"]);
    for (name, detail) in [
        ("api-version", "1.31"),
        ("controller-ready", "2 of 2"),
        ("webhook-ca-bundle", "ca.crt"),
        ("webhook-cert-name", "strait-controller.strait-system.svc"),
        ("issuer-chain", "trust anchor"),
        ("proxy-versions", "1 meshed pods"),
    ] {
        let c = find(&report, name);
        assert_eq!((c["status"].as_str(), c["hint"].is_null()), (Some("ok"), true), "{c:#}");
        assert!(c["detail"].as_str().unwrap().contains(detail), "{c:#}");
    }
    // The text form says the same to a person.
    let (code, text, _) = strait_check(&api, &dir, &[]).await;
    assert_eq!(code, 0, "{text}");
    assert!(text.contains("webhook\n") && text.contains("[ok]   webhook-cert-chain:"), "{text}");
    assert!(text.ends_with("status: ok\n"), "{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_rbac_the_rbac_checks_fail_and_pre_needs_install_rights() {
    let dir = TestDir::new("check-rbac");
    let api = KubeApi::start().await;
    install(&api);
    let name = format!("strait-controller-{NS}");
    api.delete("ClusterRoleBinding", "", &name);
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_fails_alone(code, &report, "controller-cluster-role-binding", "helm upgrade --install strait charts/strait");
    api.delete("ClusterRole", "", &name);
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_eq!(code, 1);
    assert_eq!(failed(&report), ["controller-cluster-role", "controller-cluster-role-binding"], "{report:#}");
    // A role that lacks a right the controller needs.
    api.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["services", "pods", "namespaces"], "verbs": ["list", "watch"]}]}));
    let (_, report) = check_json(&api, &dir, &[]).await;
    let role = find(&report, "controller-cluster-role");
    assert_eq!(role["status"], "fail");
    assert!(role["detail"].as_str().unwrap().contains("list endpointslices.discovery.k8s.io"), "{role:#}");
    assert!(role["detail"].as_str().unwrap().contains("create tokenreviews.authentication.k8s.io"), "{role:#}");

    // Before an install: the user (no binding names it) may not install.
    let (code, report) = check_json(&api, &dir, &["--pre"]).await;
    assert_fails_alone(code, &report, "install-rights", "ask a cluster admin");
    let groups: Vec<&str> = report["groups"].as_array().unwrap().iter().map(|g| g["name"].as_str().unwrap()).collect();
    assert_eq!(groups, ["kubernetes-api", "rbac"], "--pre checks only what applies before an install");
    assert!(
        find(&report, "install-rights")["detail"]
            .as_str()
            .unwrap()
            .contains("create clusterroles.rbac.authorization.k8s.io")
    );
    // An admin may.
    api.apply(json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "cluster-admin"},
        "rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]}));
    api.apply(
        json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "ops"},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": "cluster-admin"},
        "subjects": [{"kind": "Group", "name": "ops"}]}),
    );
    api.set_requester(Requester { username: "ann".into(), groups: vec!["ops".into(), "system:authenticated".into()] });
    let (code, report) = check_json(&api, &dir, &["--pre"]).await;
    assert_eq!((code, report["status"].as_str()), (0, Some("ok")), "{report:#}");
    // A cluster older than the oldest supported version fails even before an install.
    api.set_version("1", "27");
    let (code, report) = check_json(&api, &dir, &["--pre"]).await;
    assert_fails_alone(code, &report, "api-version", "1.28");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_webhook_certificate_from_another_ca_fails() {
    let dir = TestDir::new("check-webhook");
    let api = KubeApi::start().await;
    let pki = install(&api);
    // tls.crt from another CA than ca.crt (and the caBundle).
    let other = new_ca("someone else");
    let (crt, key) = serving_cert(&other, &format!("strait-controller.{NS}.svc"));
    api.apply(tls_secret("strait-webhook-tls", &pki.webhook_ca.pem, &crt, &key));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_fails_alone(code, &report, "webhook-cert-chain", "delete secret strait-webhook-tls");
    assert!(find(&report, "webhook-cert-chain")["hint"].as_str().unwrap().contains("refuse the webhook's certificate"));

    // The Secret renewed, but the caBundle still the old CA's.
    let (crt, key) = serving_cert(&other, &format!("strait-controller.{NS}.svc"));
    api.apply(tls_secret("strait-webhook-tls", &other.pem, &crt, &key));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_fails_alone(code, &report, "webhook-ca-bundle", "helm upgrade strait");

    // A certificate for another name.
    api.apply(webhook_config(&other.pem));
    let (crt, key) = serving_cert(&other, "strait-controller.elsewhere.svc");
    api.apply(tls_secret("strait-webhook-tls", &other.pem, &crt, &key));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_fails_alone(code, &report, "webhook-cert-name", "strait-controller.strait-system.svc");

    // No webhook configuration at all.
    api.delete("MutatingWebhookConfiguration", "", &format!("strait-injector-{NS}"));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_eq!(code, 1);
    assert!(failed(&report).contains(&"webhook-config".to_string()), "{report:#}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_expired_issuer_fails_and_one_about_to_expire_warns() {
    let dir = TestDir::new("check-issuer");
    let api = KubeApi::start().await;
    let pki = install(&api);
    let (crt, key) = issuer_signed_by(&pki.anchor, -3600);
    api.apply(tls_secret("strait-identity-issuer", &pki.anchor.pem, &crt, &key));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_fails_alone(code, &report, "issuer-expiry", "rotate the issuer");
    assert!(find(&report, "issuer-expiry")["detail"].as_str().unwrap().contains("expired"));

    // Three days left: a warning, and the exit code stays 0.
    let (crt, key) = issuer_signed_by(&pki.anchor, 3 * DAY.as_secs() as i64);
    api.apply(tls_secret("strait-identity-issuer", &pki.anchor.pem, &crt, &key));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_eq!((code, report["status"].as_str()), (0, Some("warn")), "{report:#}");
    assert_eq!(find(&report, "issuer-expiry")["status"], "warn");

    // The chart's generated identity: one self-signed CA that is anchor and issuer at once.
    // `strait check` does not read the key: any will do.
    let key = KeyPair::generate().unwrap().serialize_pem();
    api.apply(tls_secret("strait-identity-issuer", &pki.anchor.pem, &pki.anchor.pem, &key));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_eq!((code, report["status"].as_str()), (0, Some("ok")), "{report:#}");

    // An issuer from an anchor the proxies do not have.
    let stranger = new_ca("another anchor");
    let (crt, key) = issuer_signed_by(&stranger, 180 * DAY.as_secs() as i64);
    api.apply(tls_secret("strait-identity-issuer", &pki.anchor.pem, &crt, &key));
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_fails_alone(code, &report, "issuer-chain", "rotate the issuer");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_annotated_pod_without_the_proxy_fails_with_the_restart_command() {
    let dir = TestDir::new("check-pods");
    let api = KubeApi::start().await;
    install(&api);
    // In the opted-in namespace, created while the injector was down.
    api.apply(pod("orders-7c9d-abcde", "demo", &["app"], json!({}), Some(("orders-7c9d", "7c9d"))));
    // Annotated itself, in a namespace that is not.
    api.apply(pod("batch-1", "plain", &["app"], json!({"strait.io/inject": "enabled"}), None));
    // Opted out: fine.
    let mut opted_out = pod("legacy-0", "demo", &["app"], json!({}), None);
    opted_out["metadata"]["labels"]["strait.io/inject"] = json!("disabled");
    api.apply(opted_out);
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_fails_alone(
        code,
        &report,
        "pods-without-proxy",
        "restart it: kubectl rollout restart deployment/orders -n demo",
    );
    let check = find(&report, "pods-without-proxy");
    let detail = check["detail"].as_str().unwrap();
    assert!(detail.contains("demo/orders-7c9d-abcde") && detail.contains("plain/batch-1"), "{check:#}");
    assert!(!detail.contains("legacy-0"), "{check:#}");
    assert!(check["hint"].as_str().unwrap().contains("kubectl delete pod batch-1 -n plain"), "{check:#}");

    // A proxy of another version is a warning, with the restart that upgrades it.
    api.delete("Pod", "demo", "orders-7c9d-abcde");
    api.delete("Pod", "plain", "batch-1");
    api.modify("Pod", "demo", "web-5d8f-q2x7z", |p| {
        p["metadata"]["annotations"]["strait.io/injected"] = json!("0.0.1")
    });
    let (code, report) = check_json(&api, &dir, &[]).await;
    assert_eq!(code, 0, "{report:#}");
    let versions = find(&report, "proxy-versions");
    assert_eq!(versions["status"], "warn");
    assert!(
        versions["hint"].as_str().unwrap().contains("kubectl rollout restart deployment/web -n demo"),
        "{versions:#}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_api_server_fails_first_and_alone() {
    let dir = TestDir::new("check-unreachable");
    let api = KubeApi::start().await;
    let kubeconfig = api.write_kubeconfig(&dir);
    drop(api);
    // Nothing listens there any more.
    let mut command = Command::new(strait_tests::bin("strait"));
    command.args(["check", "--output", "json", "--kubeconfig"]).arg(&kubeconfig);
    let out = tokio::task::spawn_blocking(move || command.output().unwrap()).await.unwrap();
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(failed(&report), ["api-reachable"], "{report:#}");
    assert_eq!(report["groups"].as_array().unwrap().len(), 1);
}
