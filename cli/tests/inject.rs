//! `strait inject` / `strait uninject`, the real binary on a multi-document file
//! (tests/fixtures/inject/): documents it does not inject come out byte-identical, workloads get
//! the proxy, every skip is explained on stderr, and uninject gives the input back.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Output, Stdio},
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/inject").join(name)
}

fn strait(args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_strait"));
    cmd.args(args).stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("running strait");
    if let Some(input) = stdin {
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> (String, String) {
    let (stdout, stderr) =
        (String::from_utf8(out.stdout.clone()).unwrap(), String::from_utf8(out.stderr.clone()).unwrap());
    assert!(out.status.success(), "strait failed: {stderr}");
    (stdout, stderr)
}

/// The documents of a stream; the fixture has no `---` line inside a document.
fn docs(s: &str) -> Vec<&str> {
    s.split("\n---\n").collect()
}

fn yaml(s: &str) -> serde_yaml::Value {
    serde_yaml::from_str(s).unwrap()
}

fn names(v: &serde_yaml::Value) -> Vec<String> {
    v.as_sequence().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn injects_workloads_and_leaves_every_other_document_byte_identical() {
    let input = std::fs::read_to_string(fixture("workloads.yaml")).unwrap();
    let file = fixture("workloads.yaml");
    let (config, anchors) = (fixture("injector-config.yaml"), fixture("trust-anchors.pem"));
    let out = strait(
        &[
            "inject",
            "-f",
            file.to_str().unwrap(),
            "--injector-config",
            config.to_str().unwrap(),
            "--trust-anchors",
            anchors.to_str().unwrap(),
        ],
        None,
    );
    let (stdout, stderr) = ok(&out);
    let (ins, outs) = (docs(&input), docs(&stdout));
    assert_eq!(ins.len(), outs.len(), "{stdout}");
    // ConfigMap, the StatefulSet (not annotated), the hostNetwork Pod and the Service: untouched text.
    for i in [0, 2, 4, 6] {
        assert_eq!(outs[i], ins[i], "document {i} changed");
    }
    let deploy = yaml(outs[1]);
    let pod = &deploy["spec"]["template"];
    assert_eq!(names(&pod["spec"]["initContainers"]), ["strait-init", "strait-proxy"]);
    let proxy = &pod["spec"]["initContainers"][1];
    assert_eq!(proxy["image"].as_str(), Some("registry.example/strait-proxy:9.9.9"));
    assert_eq!(proxy["restartPolicy"].as_str(), Some("Always"));
    assert_eq!(proxy["resources"]["limits"]["cpu"].as_str(), Some("500m"));
    assert_eq!(proxy["resources"]["requests"]["memory"].as_str(), Some("20Mi"));
    let env = proxy["env"].as_sequence().unwrap();
    let pem = env.iter().find(|e| e["name"].as_str() == Some("STRAIT_TRUST_ANCHORS_PEM")).unwrap();
    assert!(pem["value"].as_str().unwrap().contains("not+a+real+certificate"));
    assert_eq!(pod["metadata"]["annotations"]["strait.io/injected"].as_str(), Some(env!("CARGO_PKG_VERSION")));
    assert_eq!(
        pod["spec"]["containers"][0]["readinessProbe"]["httpGet"]["path"].as_str(),
        Some("/app-probe/web/readiness")
    );
    // Keys stay in the input's order.
    assert!(outs[1].starts_with("apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n"), "{}", outs[1]);
    let cron = yaml(outs[3]);
    assert_eq!(
        names(&cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]["initContainers"]),
        ["strait-init", "strait-proxy"]
    );
    let list = yaml(outs[5]);
    assert_eq!(names(&list["items"][0]["spec"]["template"]["spec"]["initContainers"]), ["strait-init", "strait-proxy"]);
    for want in [
        "deployment/web injected",
        "deployment/web: warning: annotation config.strait.io/proxy-memory-request=\"lots\"",
        "statefulset/db: skipped: not annotated",
        "cronjob/report injected",
        "pod/node-agent: skipped: hostNetwork",
        "daemonset/logs injected",
    ] {
        assert!(stderr.lines().any(|l| l.starts_with(want)), "{want:?} missing from stderr:\n{stderr}");
    }

    // And back: the injected documents come back as they were, the others byte-identical.
    let (back, stderr) = ok(&strait(&["uninject", "-f", "-"], Some(&stdout)));
    let backs = docs(&back);
    assert_eq!(backs.len(), ins.len());
    for (i, (b, orig)) in backs.iter().zip(&ins).enumerate() {
        if [0, 2, 4, 6].contains(&i) {
            assert_eq!(b, orig, "document {i} changed");
        } else {
            assert_eq!(yaml(b), yaml(orig), "document {i}");
        }
    }
    assert!(stderr.contains("deployment/web uninjected"), "{stderr}");
}

#[test]
fn classic_sidecar_before_1_29_and_enable_without_the_annotation() {
    let input = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: plain}\nspec:\n  template:\n    spec:\n      containers: [{name: app, image: app:1}]\n";
    let (stdout, stderr) =
        ok(&strait(&["inject", "-f", "-", "--kubernetes-version", "v1.28.5", "--enable"], Some(input)));
    let d = yaml(&stdout);
    let pod = &d["spec"]["template"];
    assert_eq!(names(&pod["spec"]["containers"]), ["strait-proxy", "app"]);
    assert_eq!(names(&pod["spec"]["initContainers"]), ["strait-init"]);
    assert_eq!(pod["metadata"]["annotations"]["strait.io/inject"].as_str(), Some("enabled"));
    assert!(stderr.contains("no --trust-anchors"), "{stderr}");
    // An explicit opt-out still wins over --enable.
    let disabled = input.replace(
        "    spec:\n      containers",
        "    metadata: {annotations: {strait.io/inject: disabled}}\n    spec:\n      containers",
    );
    let (stdout, stderr) = ok(&strait(&["inject", "-f", "-", "--enable"], Some(&disabled)));
    assert_eq!(stdout, disabled);
    assert!(stderr.contains("opted out"), "{stderr}");

    let bad = strait(&["inject", "-f", "-", "--kubernetes-version", "new"], Some(input));
    assert!(!bad.status.success());
}
