#!/usr/bin/env bash
# The suite and the Makefile as a new user meets them:
# - the network-namespace tier with the binaries inside a private (0700) folder, as in a clone under
#   root's home: the proxy runs as UID 7102, which cannot reach them there (the harness copies the
#   binary it runs as that UID to a folder it can read);
# - `make demo` from a fresh clone with CARGO_TARGET_DIR pointing elsewhere.
set -euo pipefail
cd "$(dirname "$0")/../.."
repo=$PWD
target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
tmp=$(mktemp -d /tmp/strait-fresh-user.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
chmod 700 "$tmp"
ran=()

# 1. netns tier from a private folder.
tools=0; [ "$(id -u)" = 0 ] && { ./scripts/ensure-tools.sh fresh-user ip=iproute2 iptables=iptables curl=curl setpriv=util-linux || tools=$?; }
[ "$tools" -le 1 ] || exit "$tools"
if [ "$(id -u)" = 0 ] && [ "$tools" = 0 ]; then
  mkdir -m 700 "$tmp/bin"
  cp "$target"/debug/{strait-proxy,strait-controller,strait-testsrv,strait} "$tmp/bin/"
  echo "[fresh-user] netns tier with the binaries in a 0700 folder ($tmp/bin)"
  STRAIT_BIN_DIR="$tmp/bin" STRAIT_NETNS_TESTS=1 cargo test -q -p strait-tests --test interception -- \
    --test-threads=1 unmodified_curl_reaches_a_service_ip_through_both_proxies init_without_privileges_fails_clearly
  ran+=("netns tier from a 0700 folder")
elif [ "${CI:-}" = true ]; then
  echo "[fresh-user] FAILED: CI=true but not root or ip/iptables/curl missing" >&2
  exit 2
else
  echo "[fresh-user] netns part SKIPPED: needs root, ip, iptables and curl" >&2
fi

# 2. make demo from a fresh clone in a private folder, CARGO_TARGET_DIR elsewhere (the clone has no
#    ./target of its own, so a Makefile that runs ./target/debug/... fails here).
git clone -q "$repo" "$tmp/clone"
echo "[fresh-user] make demo in a fresh clone with CARGO_TARGET_DIR=$target"
out=$(cd "$tmp/clone" && CARGO_TARGET_DIR="$target" timeout 900 make demo DEMO_ARGS="--duration 8 --interval 2" 2>&1) || {
  echo "$out" | tail -40 >&2
  echo "[fresh-user] FAILED: make demo with CARGO_TARGET_DIR set" >&2
  exit 1
}
echo "$out" | tail -15
echo "$out" | grep -q "orders" || { echo "[fresh-user] FAILED: the demo printed no metrics for orders" >&2; exit 1; }
[ ! -e "$tmp/clone/target" ] || { echo "[fresh-user] FAILED: the build wrote ./target despite CARGO_TARGET_DIR" >&2; exit 1; }
ran+=("make demo with CARGO_TARGET_DIR from a 0700 clone")
echo "ran: ${ran[*]}"
