#!/usr/bin/env python3
"""Checks a rendered chart (multi-document YAML on stdin) for what a security review would ask, beyond
schema validity: least-privilege RBAC, a webhook whose caBundle is the CA that signed its serving
certificate for the Service's DNS name, a webhook that never sees kube-system or the chart's own
namespace, and containers that run as non-root, read-only, with no capabilities.

Usage: policy.py NAMESPACE [--cert-manager] < rendered.yaml   (exit 1 on any finding)
"""
import base64
import datetime
import sys

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

# The controller's whole need: watchers, TokenReview, Warning Events. Anything more is a finding.
EXPECTED_RULES = {
    ("", "services", "list"), ("", "services", "watch"),
    ("", "pods", "list"), ("", "pods", "watch"),
    ("", "namespaces", "list"), ("", "namespaces", "watch"),
    ("discovery.k8s.io", "endpointslices", "list"), ("discovery.k8s.io", "endpointslices", "watch"),
    ("authentication.k8s.io", "tokenreviews", "create"),
    ("events.k8s.io", "events", "create"), ("events.k8s.io", "events", "patch"),
}

findings = []


def finding(msg):
    findings.append(msg)
    print(f"[helm] policy: {msg}", file=sys.stderr)


def by_kind(docs, kind):
    return [d for d in docs if d.get("kind") == kind]


def check_rbac(docs, ns):
    roles = by_kind(docs, "ClusterRole") + by_kind(docs, "Role")
    if [r["metadata"]["name"] for r in roles] != [f"strait-controller-{ns}"]:
        finding(f"expected exactly ClusterRole strait-controller-{ns}, got {[r['metadata']['name'] for r in roles]}")
    for role in roles:
        got = set()
        for rule in role.get("rules", []):
            for key in ("resourceNames", "nonResourceURLs"):
                if rule.get(key):
                    finding(f"{role['metadata']['name']}: unexpected {key}")
            for g in rule.get("apiGroups", []):
                for r in rule.get("resources", []):
                    for v in rule.get("verbs", []):
                        got.add((g, r, v))
        if any("*" in t for t in got):
            finding(f"{role['metadata']['name']}: wildcard in {sorted(t for t in got if '*' in t)}")
        if got - EXPECTED_RULES:
            finding(f"{role['metadata']['name']}: more than needed: {sorted(got - EXPECTED_RULES)}")
        if EXPECTED_RULES - got:
            finding(f"{role['metadata']['name']}: missing: {sorted(EXPECTED_RULES - got)}")
    for b in by_kind(docs, "ClusterRoleBinding"):
        subjects = [(s.get("kind"), s.get("name"), s.get("namespace")) for s in b.get("subjects", [])]
        if subjects != [("ServiceAccount", "strait-controller", ns)]:
            finding(f"{b['metadata']['name']} binds {subjects}")


def verify_signed_by(cert, ca):
    key = ca.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(cert.signature_hash_algorithm))
    else:
        raise ValueError(f"unexpected CA key type {type(key)}")


def check_webhook(docs, ns, cert_manager):
    mwcs = by_kind(docs, "MutatingWebhookConfiguration")
    if [m["metadata"]["name"] for m in mwcs] != [f"strait-injector-{ns}"]:
        finding(f"expected MutatingWebhookConfiguration strait-injector-{ns}")
        return
    mwc = mwcs[0]
    hooks = mwc.get("webhooks", [])
    if [h.get("name") for h in hooks] != ["inject.strait.io"]:
        finding(f"webhooks: {[h.get('name') for h in hooks]}")
        return
    hook = hooks[0]
    if hook.get("sideEffects") != "None":
        finding("webhook sideEffects is not None")
    excluded = set()
    for e in hook.get("namespaceSelector", {}).get("matchExpressions", []):
        if e.get("key") == "kubernetes.io/metadata.name" and e.get("operator") == "NotIn":
            excluded |= set(e.get("values", []))
    if not {"kube-system", ns} <= excluded:
        finding(f"webhook namespaceSelector excludes {sorted(excluded)}, not kube-system and {ns}")
    svc = hook.get("clientConfig", {}).get("service", {})
    if (svc.get("name"), svc.get("namespace"), svc.get("path")) != ("strait-controller", ns, "/inject"):
        finding(f"webhook service is {svc}")
    if cert_manager:
        if "cert-manager.io/inject-ca-from" not in mwc["metadata"].get("annotations", {}):
            finding("cert-manager mode without cert-manager.io/inject-ca-from")
        return
    bundle = hook.get("clientConfig", {}).get("caBundle")
    if not bundle:
        finding("caBundle is empty")
        return
    secrets = [s for s in by_kind(docs, "Secret") if s["metadata"]["name"] == "strait-webhook-tls"]
    if len(secrets) != 1:
        finding("no Secret strait-webhook-tls")
        return
    data = secrets[0]["data"]
    if data.get("ca.crt") != bundle:
        finding("caBundle differs from the webhook Secret's ca.crt")
    ca = x509.load_pem_x509_certificate(base64.b64decode(bundle))
    cert = x509.load_pem_x509_certificate(base64.b64decode(data["tls.crt"]))
    try:
        verify_signed_by(cert, ca)
    except Exception as e:  # noqa: BLE001 - any failure is the finding
        finding(f"the serving certificate is not signed by caBundle's CA: {e!r}")
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    if f"strait-controller.{ns}.svc" not in names:
        finding(f"the serving certificate does not name strait-controller.{ns}.svc: {names}")
    if cert.not_valid_after_utc < datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=30):
        finding("the serving certificate expires within 30 days")


def check_containers(docs):
    for d in by_kind(docs, "Deployment"):
        spec = d["spec"]["template"]["spec"]
        pod_sc = spec.get("securityContext", {})
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            sc = c.get("securityContext", {})
            where = f"{d['metadata']['name']}/{c['name']}"
            if not (sc.get("runAsNonRoot") or pod_sc.get("runAsNonRoot")):
                finding(f"{where} may run as root")
            if not sc.get("readOnlyRootFilesystem"):
                finding(f"{where} has a writable root filesystem")
            if sc.get("allowPrivilegeEscalation") is not False:
                finding(f"{where} allows privilege escalation")
            if sc.get("capabilities", {}).get("drop") != ["ALL"] or sc.get("capabilities", {}).get("add"):
                finding(f"{where} keeps capabilities")
            if not c.get("resources", {}).get("requests"):
                finding(f"{where} has no resource requests")
            if not (c.get("livenessProbe") and c.get("readinessProbe")):
                finding(f"{where} lacks liveness or readiness probe")


def main():
    ns = sys.argv[1]
    cert_manager = "--cert-manager" in sys.argv[2:]
    docs = [d for d in yaml.safe_load_all(sys.stdin) if d]
    check_rbac(docs, ns)
    check_webhook(docs, ns, cert_manager)
    check_containers(docs)
    if not by_kind(docs, "PodDisruptionBudget"):
        finding("no PodDisruptionBudget")
    print(f"[helm] policy ({'cert-manager' if cert_manager else 'generated certs'}): "
          f"{len(findings)} findings in {len(docs)} objects", file=sys.stderr)
    sys.exit(1 if findings else 0)


if __name__ == "__main__":
    main()
