#!/usr/bin/env bash
# The sidecar runs in every pod: it must not link the Kubernetes client crates.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(cargo tree -p strait-proxy -e normal,build --prefix none 2>/dev/null | grep -E '^(kube|k8s-openapi)' || true)
if [ -n "$bad" ]; then
  echo "strait-proxy links crates it must not:" >&2; echo "$bad" >&2; exit 1
fi
echo "strait-proxy links neither kube nor k8s-openapi"
