#!/usr/bin/env bash
# Webhook tier: the controller's injector webhook over HTTPS, fed real AdmissionReview v1 JSON
# (tests/tests/webhook.rs); its JSONPatch is applied with Python's jsonpatch (another RFC 6902
# implementation than the one that wrote it) and must give the expected pod, and a second review
# of the patched pod must change nothing. Garbage (not JSON, not a Pod, 4 MiB) gets a clear answer
# and the next review still works. Also prints the review latency benchmark (p99 over 1000).
set -euo pipefail
cd "$(dirname "$0")/../.."
tools=$PWD/.tools
fail_or_skip() {
  if [ "${CI:-}" = true ]; then echo "[webhook] FAILED: $*" >&2; exit 2; fi
  echo "SKIPPED: $*"; exit 0
}
command -v python3 >/dev/null || fail_or_skip "python3 missing (the patch is applied with Python jsonpatch)"
python=$(command -v python3)
if ! "$python" -c 'import jsonpatch' 2>/dev/null; then
  venv=$tools/venv
  if ! "$venv/bin/python" -c 'import jsonpatch' 2>/dev/null; then
    [ "$(id -u)" = 0 ] || fail_or_skip "python3 has no jsonpatch and not root, so it is not installed (pip install jsonpatch)"
    echo "[webhook] installing jsonpatch into $venv" >&2
    [ -x "$venv/bin/python" ] || python3 -m venv "$venv" || fail_or_skip "python3 -m venv failed"
    "$venv/bin/pip" install -q jsonpatch >&2 || fail_or_skip "pip install jsonpatch failed"
  fi
  python=$venv/bin/python
fi
echo "[webhook] $("$python" -c 'import jsonpatch, sys; print("python", sys.version.split()[0], "jsonpatch", jsonpatch.__version__)')" >&2
out=$(mktemp)
trap 'rm -f "$out"' EXIT
STRAIT_TEST_PYTHON=$python cargo test -q -p strait-tests --test webhook -- --nocapture 2>&1 | tee "$out" >&2
grep -q "Python jsonpatch" "$out" || { echo "[webhook] FAILED: the patch was not applied with Python jsonpatch" >&2; exit 1; }
p99=$(grep -o 'p99 [^,]*' "$out" | head -1)
echo "ran: webhook over HTTPS, patch applied with Python jsonpatch, re-review empty, garbage answered; review latency ${p99:-not measured}"
