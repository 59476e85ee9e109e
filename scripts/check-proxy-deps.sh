#!/usr/bin/env bash
# The sidecar runs in every pod: it must not link the Kubernetes client crates. And the whole
# workspace uses one TLS stack, rustls with the ring provider: no aws-lc-rs, no OpenSSL.
set -euo pipefail
cd "$(dirname "$0")/.."
bad=$(cargo tree -p strait-proxy -e normal,build --prefix none 2>/dev/null | grep -E '^(kube|k8s-openapi)' || true)
if [ -n "$bad" ]; then
  echo "strait-proxy links crates it must not:" >&2; echo "$bad" >&2; exit 1
fi
echo "strait-proxy links neither kube nor k8s-openapi"
bad=$(cargo tree --workspace -e normal,build --prefix none 2>/dev/null | grep -E '^(aws-lc-rs|aws-lc-sys|openssl|openssl-sys|native-tls) ' | sort -u || true)
if [ -n "$bad" ]; then
  echo "the workspace links a TLS stack other than rustls with ring:" >&2; echo "$bad" >&2; exit 1
fi
echo "the workspace links no aws-lc-rs and no OpenSSL (rustls with ring only)"
