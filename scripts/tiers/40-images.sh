#!/usr/bin/env bash
# Images tier: builds the strait-proxy and strait-controller images from the debug binaries
# (scripts/images.sh --profile debug --no-build), loads the OCI archives into a fresh private podman
# storage, inspects them (entrypoint, user, labels, no shell) and, as root, runs them the way a pod
# does: in a network namespace of their own, read-only, no capabilities, as their UIDs —
# `--version` of both, `strait-proxy init` writing the nat rules (as root with NET_ADMIN and
# NET_RAW only), the controller answering /ready as 65532 and the proxy answering /ready as 7102,
# both stopped with SIGTERM and exiting 0.
set -euo pipefail
cd "$(dirname "$0")/../.."
tier=images
target=${CARGO_TARGET_DIR:-target}
say() { echo "[$tier] $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
# Bounds: a start on a loaded 2-core machine is a second or two; these only end a hung run.
READY_TIMEOUT_SECS=60
STOP_TIMEOUT_SECS=10

root=0; [ "$(id -u)" = 0 ] && root=1
tools=(podman=podman)
[ "$root" = 1 ] && tools+=(runc=runc ip=iproute2 curl=curl ps=procps)
rc=0; ./scripts/ensure-tools.sh "$tier" "${tools[@]}" || rc=$?
case $rc in
  0) ;;
  1) echo "SKIPPED: podman missing and not root, so it cannot be installed"; exit 0 ;;
  *) exit "$rc" ;;
esac

# 1. Build (a build failure is a failure, root or not; outside CI without root it is a skip), into a
# directory of our own: the archives `make images` left in target/images stay as they are.
log=$(mktemp); archives=$(mktemp -d)
trap 'rm -rf "$log" "$archives"' EXIT
if ! ./scripts/images.sh --profile debug --no-build --out "$archives" >"$log" 2>&1; then
  cat "$log" >&2
  if [ "$root" = 0 ] && [ "${CI:-}" != true ]; then
    echo "SKIPPED: building the images failed without root (rootless podman needs user namespaces; see above)"
    exit 0
  fi
  fail "scripts/images.sh --profile debug --no-build"
fi
cat "$log" >&2
version=$("$target/debug/strait-proxy" --version | awk '{print $2}')
proxy=docker.io/library/strait-proxy:$version
controller=docker.io/library/strait-controller:$version

# 2. Load the archives (what users get) into a storage of our own.
# shellcheck source=scripts/podman-env.sh
source scripts/podman-env.sh
podman_env_init
netns=strait-images-$$
cleanup() {
  podman_env_cleanup
  if [ "$root" = 1 ]; then ip netns del "$netns" 2>/dev/null || true; fi
  rm -rf "$log" "$archives"
}
trap cleanup EXIT
for b in strait-proxy strait-controller; do
  podman load --quiet -i "$archives/$b.oci.tar" >/dev/null || fail "podman load $b.oci.tar"
done

# 3. Inspect: entrypoint, user, labels; the file system holds no shell.
inspect() { podman image inspect --format "$2" "$1"; }
# files_of IMAGE: its file system's paths (whole, never cut short: a closed pipe hangs podman export).
files_of() {
  local id list
  id=$(podman create "$1"); list=$(mktemp)
  podman export -o "$list.tar" "$id"; tar -tf "$list.tar" >"$list"; cat "$list"
  rm -f "$list" "$list.tar"; podman rm "$id" >/dev/null
}
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
for spec in "$proxy 7102:7102 strait-proxy" "$controller 65532:65532 strait-controller"; do
  read -r image user bin <<<"$spec"
  got=$(inspect "$image" '{{json .Config.Entrypoint}} {{.Config.User}}')
  [ "$got" = "[\"/usr/local/bin/$bin\"] $user" ] || fail "$image: entrypoint and user are $got"
  labels=$(inspect "$image" '{{index .Labels "org.opencontainers.image.version"}} {{index .Labels "org.opencontainers.image.revision"}}')
  case $labels in "$version $revision"*) ;; *) fail "$image: labels version, revision are $labels (want $version $revision)" ;; esac
  files=$(files_of "$image")
  shells=$(grep -E '(^|/)(sh|bash|dash|ash|busybox)$' <<<"$files" || true)
  [ -z "$shells" ] || fail "$image holds a shell: $shells"
  grep -qx "usr/local/bin/$bin" <<<"$files" || fail "$image: no /usr/local/bin/$bin"
  grep -q 'libc.so.6$' <<<"$files" || fail "$image: no libc.so.6"
  if [ "$bin" = strait-proxy ]; then
    for f in xtables-nft-multi xtables-legacy-multi iptables-nft-restore ip6tables-legacy-save; do
      grep -qx "usr/sbin/$f" <<<"$files" || fail "$image: no /usr/sbin/$f for strait-proxy init"
    done
  fi
done
size() { du -h "$archives/$1.oci.tar" | cut -f1; }
built="strait-proxy:$version ($(size strait-proxy)) and strait-controller:$version ($(size strait-controller)) built from the debug binaries, loaded, inspected (entrypoint, user, labels, no shell)"

if [ "$root" = 0 ]; then
  echo "ran: $built; SKIPPED running them (not root: the runs use a network namespace and a rootful runtime)"
  exit 0
fi

# 4. Run, as a pod would: a network namespace of its own, only loopback, nothing on the host's.
ip netns add "$netns"
ip -n "$netns" link set lo up
in_pod() { ip netns exec "$netns" "$@"; }
restricted=(--network "ns:/run/netns/$netns" --read-only --cap-drop ALL --security-opt no-new-privileges)

for spec in "$proxy strait-proxy" "$controller strait-controller"; do
  read -r image bin <<<"$spec"
  out=$(podman run --rm "${restricted[@]}" "$image" --version 2>&1) || fail "$bin --version in the container: $out"
  [ "$out" = "$bin $version" ] || fail "$bin --version printed: $out"
done

# The init container: root, NET_ADMIN and NET_RAW, nothing else.
out=$(podman run --rm "${restricted[@]}" --user 0:0 --cap-add NET_ADMIN --cap-add NET_RAW "$proxy" init 2>&1) \
  || fail "strait-proxy init in the container: $out"
say "init: $(tr '\n' ' ' <<<"$out")"
mode=$(sed -n 's/.*iptables back end: \([a-z]*\).*/\1/p' <<<"$out" | head -n 1)
case $mode in nft|legacy) ;; *) fail "init did not say which iptables back end it chose: $out" ;; esac
rules=$(podman run --rm "${restricted[@]}" --user 0:0 --cap-add NET_ADMIN --cap-add NET_RAW \
  --entrypoint "iptables-$mode-save" "$proxy" -t nat 2>&1) || fail "iptables-$mode-save in the container: $rules"
grep -q -- '-A STRAIT_OUTPUT .*--uid-owner 7102 .*-j RETURN' <<<"$rules" || fail "no owner exemption for 7102 in: $rules"
grep -q -- '-A STRAIT_INBOUND .*--to-ports 7143' <<<"$rules" || fail "no inbound redirect in: $rules"

mesh=$(mktemp -d)
trap 'cleanup; rm -rf "$mesh"' EXIT
cat >"$mesh/mesh.yaml" <<'EOF'
trustDomain: cluster.local
services:
  - name: web
    namespace: demo
    ports: [{port: 8080, protocol: http}]
    endpoints:
      - address: 127.0.0.1:18080
EOF
chmod 0644 "$mesh/mesh.yaml"

# ready NAME PORT UID: the container is up, /ready answers 200, its process runs as UID.
ready() {
  local name=$1 port=$2 uid=$3 code="" i pid
  for ((i = 0; i < READY_TIMEOUT_SECS * 4; i++)); do
    code=$(in_pod curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port/ready" || true)
    [ "$code" = 200 ] && break
    [ "$(podman inspect --format '{{.State.Running}}' "$name")" = true ] || break
    sleep 0.25
  done
  if [ "$code" != 200 ]; then podman logs "$name" >&2 || true; fail "$name: /ready on :$port answered '${code:-nothing}'"; fi
  pid=$(podman inspect --format '{{.State.Pid}}' "$name")
  [ "$(ps -o uid= -p "$pid" | tr -d ' ')" = "$uid" ] || fail "$name runs as UID $(ps -o uid= -p "$pid"), not $uid"
}
# stopped NAME: SIGTERM ends it cleanly (exit 0), well within the bound.
stopped() {
  podman stop --time "$STOP_TIMEOUT_SECS" "$1" >/dev/null
  local code; code=$(podman inspect --format '{{.State.ExitCode}}' "$1")
  if [ "$code" != 0 ]; then podman logs "$1" >&2 || true; fail "$1 exited $code after SIGTERM"; fi
  podman rm "$1" >/dev/null
}

podman run -d --name strait-controller "${restricted[@]}" --tmpfs /tmp -v "$mesh/mesh.yaml:/etc/strait/mesh.yaml:ro" \
  "$controller" --mesh-file /etc/strait/mesh.yaml --state-dir /tmp/state >/dev/null
ready strait-controller 9990 65532
podman run -d --name strait-proxy "${restricted[@]}" -v "$mesh/mesh.yaml:/etc/strait/mesh.yaml:ro" \
  -e STRAIT_DISCOVERY_FILE=/etc/strait/mesh.yaml -e STRAIT_SHUTDOWN_GRACE_PERIOD=1s "$proxy" >/dev/null
ready strait-proxy 7191 7102
stopped strait-proxy
stopped strait-controller

echo "ran: $built; run read-only without capabilities in a network namespace: --version of both, init's nat rules ($mode), controller /ready as 65532, proxy /ready as 7102, both exit 0 on SIGTERM ($(podman --version), $(podman info --format '{{.Host.OCIRuntime.Name}}'))"
