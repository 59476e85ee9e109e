#!/usr/bin/env bash
# `make test`: builds once into the shared target dir, then runs every tier.
# Tiers that need tools this machine lacks are installed when root, reported as skipped otherwise,
# and fail under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
summary=()

echo "== build (debug, whole workspace, one target dir)"
cargo build --workspace --bins --tests

echo "== proxy dependencies"
./scripts/check-proxy-deps.sh

echo "== tools for the loopback tiers"
# tcpdump: the mTLS test checks that a capture between two proxies holds no plaintext (needs root;
# the test prints why it skips that part otherwise).
rc=0; ./scripts/ensure-tools.sh "mtls capture" tcpdump=tcpdump || rc=$?
case $rc in
  0) summary+=("mtls packet capture: tcpdump present (the capture itself needs root)") ;;
  1) summary+=("mtls packet capture: SKIPPED (no tcpdump, not root)") ;;
  *) exit "$rc" ;;
esac

echo "== unit, integration and end-to-end tests (real processes on loopback)"
# The end-to-end tests start many processes; two test threads keep a 2-core machine responsive.
cargo test --workspace --no-fail-fast -- --test-threads="${STRAIT_TEST_THREADS:-2}"
summary+=("loopback tiers: ran")

echo "== network-namespace tier (pods as namespaces, real iptables interception)"
# Pods are network namespaces on a bridge in a "node" namespace, with the rules of
# `strait-proxy init` and the proxies as UID 7102 (tests/README.md). Root only; CI must run it.
if [ "$(id -u)" != 0 ]; then
  if [ "${CI:-}" = true ]; then
    echo "[netns] FAILED: CI=true but not root (network namespaces and iptables need root)" >&2
    exit 2
  fi
  summary+=("netns tier: SKIPPED (not root: network namespaces and iptables need root; run make test as root)")
else
  rc=0; ./scripts/ensure-tools.sh netns ip=iproute2 iptables=iptables curl=curl setpriv=util-linux || rc=$?
  case $rc in
    0) STRAIT_NETNS_TESTS=1 cargo test -p strait-tests --test interception -- --test-threads="${STRAIT_TEST_THREADS:-2}"
       summary+=("netns tier: ran ($(iptables --version 2>/dev/null || echo iptables))") ;;
    1) summary+=("netns tier: SKIPPED (ip, iptables or curl missing and cannot be installed)") ;;
    *) exit "$rc" ;;
  esac
fi

# Further tiers, one script each (scripts/tiers/NN-name.sh, run in name order). A tier script
# prints its own progress, and its last line of stdout is its summary line; it exits 0 when it ran
# or was skipped outside CI, non-zero on failure (a missing tool under CI=true is a failure).
for tier in scripts/tiers/*.sh; do
  [ -e "$tier" ] || continue
  echo "== tier $(basename "$tier" .sh)"
  out=$(mktemp); rc=0
  bash "$tier" | tee "$out" || rc=$?
  line=$(tail -n 1 "$out"); rm -f "$out"
  [ "$rc" = 0 ] || { echo "[$(basename "$tier" .sh)] FAILED (exit $rc)" >&2; exit "$rc"; }
  summary+=("$(basename "$tier" .sh | sed 's/^[0-9]*-//'): ${line}")
done

echo "== summary ($(( $(date +%s) - start ))s)"
printf '  %s\n' "${summary[@]}"
