#!/usr/bin/env bash
# Prometheus tier: the dashboards and rules against a real Prometheus (Debian `prometheus`, which
# also provides promtool). `promtool check rules` and `promtool test rules` (a unit test per alert,
# since alerts do not fire in a healthy mesh); the JSON is what scripts/dashboards.py generates;
# then tests/prometheus/dashboards_live.py runs `strait demo`, a Prometheus on loopback scraping
# every proxy and the controller each second, `promtool check metrics` on every /metrics, and every
# panel query read from charts/strait/dashboards/*.json plus every recording rule through the HTTP
# API, each of which must return data; the overview's success rate must match the load generator's
# counts within 2 points. About a minute.
set -euo pipefail
cd "$(dirname "$0")/../.."
rc=0; ./scripts/ensure-tools.sh prometheus prometheus=prometheus promtool=prometheus python3=python3 || rc=$?
case $rc in
  0) ;;
  1) echo "SKIPPED: prometheus/promtool missing and not root"; exit 0 ;;
  *) exit "$rc" ;;
esac
bin=${CARGO_TARGET_DIR:-$PWD/target}/debug
for b in strait strait-proxy strait-controller; do
  [ -x "$bin/$b" ] || { echo "[prometheus] FAILED: $bin/$b missing (cargo build --workspace --bins)" >&2; exit 1; }
done
echo "[prometheus] $(prometheus --version 2>&1 | head -1)" >&2
python3 scripts/dashboards.py --check
promtool check rules charts/strait/rules/*.yaml >&2
promtool test rules tests/prometheus/*.test.yaml >&2
out=${CARGO_TARGET_DIR:-$PWD/target}/prometheus-tier
rm -rf "$out"
python3 tests/prometheus/dashboards_live.py "$bin" "$out"
