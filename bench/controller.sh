#!/usr/bin/env bash
# `make bench-controller`: one strait-controller (embedded mode) with 10k services and 100k endpoints,
# as many simulated proxies as asked (10k by default) subscribed to it, and endpoint changes at a fixed
# rate: change-to-delivery latency at every subscriber, the controller's RSS and CPU. See
# bench/README.md; the report goes to bench/results/controller-latest.md and is printed.
#
# `make bench-controller-k8s` (--kubernetes, or BENCH_SOURCE=kubernetes): the same mesh, proxies and
# rate with the controller in Kubernetes mode. The load generator runs the test API server
# (tests/src/kube_api.rs) in-process, fills it with the services as 10k Services, 10k EndpointSlices
# and 100k Pods, starts `strait-controller --kubernetes` against it (pinned like the embedded one)
# and times its initial list (until /ready); each change is one EndpointSlice update. Report:
# bench/results/controller-k8s-latest.md.
#
#   bench/controller.sh [--smoke] [--kubernetes]   (--smoke: 100 services, 100 proxies, 5 s of changes)
#
# Environment (all optional):
#   BENCH_SOURCE=embedded          the controller's source: embedded (--mesh-file) or kubernetes
#   BENCH_SERVICES=10000           services, 10 endpoints each (smoke: 100)
#   BENCH_PROXIES=10000            simulated proxies, one Discovery.Watch stream each (smoke: 100)
#   BENCH_SUBSCRIPTIONS=10         services each proxy subscribes to
#   BENCH_STREAMS_PER_CONN=1       streams per HTTP/2 connection (1: a connection per proxy, like sidecars)
#   BENCH_CHANGES_PER_SEC=100      endpoint moves per second
#   BENCH_WRITE_INTERVAL_MS=200    embedded: the mesh file is rewritten this often with the changes due
#                                  (Kubernetes mode: one EndpointSlice update per change, evenly spaced)
#   BENCH_DURATION=60              seconds of changes (smoke: 5)
#   BENCH_MESHED=1                 0: plain endpoints without workloads and sidecar addresses
#   BENCH_CLIENT_CPU=0 BENCH_SUT_CPU=1   pinning: load generator / controller
#   BENCH_NICE=N                   run both under `nice -n N` (-10 as root; no help against other cgroups)
#   BENCH_NO_BUILD=1               use the release binaries as they are
#   BENCH_KEEP=1                   keep the work dir (mesh file or kubeconfig, controller log)
#   BENCH_CONTROLLER_BIN=PATH      another strait-controller binary (e.g. one built with symbols)
#   BENCH_WRAP="heaptrack -o F"    a command the controller runs under (profiling: the report's RSS
#                                  and CPU are then the wrapper's process, not the controller's, and
#                                  the clean-up stops the wrapper: check that the controller under it
#                                  exited too)
set -euo pipefail
source "$(dirname "$0")/lib.sh"   # bench_args, log, warn, die, alloc_ports, wait_ready

SOURCE=${BENCH_SOURCE:-embedded}
args=()
for arg in "$@"; do
    case "$arg" in
        --kubernetes) SOURCE=kubernetes ;;
        *) args+=("$arg") ;;
    esac
done
bench_args 30 ${args[@]+"${args[@]}"}
case "$SOURCE" in
    embedded | kubernetes) ;;
    *) die "BENCH_SOURCE=$SOURCE: must be embedded or kubernetes" ;;
esac

if [[ $MODE == smoke ]]; then
    SERVICES=${BENCH_SERVICES:-100}
    PROXIES=${BENCH_PROXIES:-100}
    DURATION=${BENCH_DURATION:-5}
else
    SERVICES=${BENCH_SERVICES:-10000}
    PROXIES=${BENCH_PROXIES:-10000}
    DURATION=${BENCH_DURATION:-60}
fi
SUBSCRIPTIONS=${BENCH_SUBSCRIPTIONS:-10}
STREAMS_PER_CONN=${BENCH_STREAMS_PER_CONN:-1}
RATE=${BENCH_CHANGES_PER_SEC:-100}
WRITE_INTERVAL_MS=${BENCH_WRITE_INTERVAL_MS:-200}
MESHED=${BENCH_MESHED:-1}
CLIENT_CPU=${BENCH_CLIENT_CPU:-0}
SUT_CPU=${BENCH_SUT_CPU:-1}
NICE=${BENCH_NICE:-0}
if [[ $SOURCE == kubernetes ]]; then
    REPORT="$RESULTS/controller-k8s-latest.md"
else
    REPORT="$RESULTS/controller-latest.md"
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
BIN="$TARGET_DIR/release"
CONTROLLER_BIN=${BENCH_CONTROLLER_BIN:-$BIN/strait-controller}
read -ra WRAP <<< "${BENCH_WRAP:-}"

pinned() { # pinned CPU CMD...: CMD on that CPU, at the asked priority
    local cpu=$1
    shift
    nice -n "$NICE" taskset -c "$cpu" "$@"
}

command -v taskset >/dev/null || die "taskset is missing (Debian package util-linux)"
command -v curl >/dev/null || die "curl is missing"

if [[ -z ${BENCH_NO_BUILD:-} ]]; then
    log "building release binaries"
    cargo build --release -p strait-controller -p strait-tests >&2
fi
for b in strait-controller strait-bench-controller; do
    [[ -x $BIN/$b ]] || die "$BIN/$b is missing: run cargo build --release -p strait-controller -p strait-tests"
done

# File descriptors: the generator holds one socket per connection, the controller the other end.
connections=$(( (PROXIES + STREAMS_PER_CONN - 1) / STREAMS_PER_CONN ))
want_fds=$(( connections + 1024 ))
if (( $(ulimit -n) < want_fds )); then
    ulimit -n "$want_fds" 2>/dev/null || ulimit -n "$(ulimit -Hn)"
fi
FD_LIMIT=$(ulimit -n)
(( FD_LIMIT >= want_fds )) || warn "open files limited to $FD_LIMIT (< $want_fds wanted): connections beyond it will fail"

WORK=$(mktemp -d "${TMPDIR:-/tmp}/strait-bench-controller.XXXXXX")
CONTROLLER_PID=
finish() {
    # Kubernetes mode: the load generator started the controller and stops it; should the generator
    # have died first, its pid file says which process to stop.
    if [[ -z $CONTROLLER_PID && -s $WORK/controller.pid ]]; then
        CONTROLLER_PID=$(<"$WORK/controller.pid")
    fi
    if [[ -n $CONTROLLER_PID ]] && kill -0 "$CONTROLLER_PID" 2>/dev/null; then
        kill "$CONTROLLER_PID" 2>/dev/null || true
        wait "$CONTROLLER_PID" 2>/dev/null || true
    fi
    if [[ ${BENCH_KEEP:-} == 1 ]]; then
        log "kept $WORK"
    else
        rm -rf "$WORK"
    fi
}
trap finish EXIT

alloc_ports DISCOVERY_PORT ADMIN_PORT IDENTITY_PORT WEBHOOK_PORT

LOADAVG=$(cut -d' ' -f1-3 /proc/loadavg)
log "mode $MODE, source $SOURCE: $SERVICES services, $PROXIES proxies x $SUBSCRIPTIONS subscriptions, $RATE changes/s for $DURATION s"
log "load average before the run: $LOADAVG (others' work on these cores shows in the figures)"

MESHED_ARG=$([[ $MESHED == 1 ]] && echo true || echo false)
LISTEN=(--discovery-addr "127.0.0.1:$DISCOVERY_PORT" --admin-addr "127.0.0.1:$ADMIN_PORT"
    --identity-addr "127.0.0.1:$IDENTITY_PORT" --webhook-addr "127.0.0.1:$WEBHOOK_PORT")
if [[ $SOURCE == embedded ]]; then
    MESH="$WORK/mesh.yaml"
    pinned "$CLIENT_CPU" "$BIN/strait-bench-controller" mesh --services "$SERVICES" --meshed "$MESHED_ARG" --out "$MESH"

    log "starting strait-controller on CPU $SUT_CPU"
    # nice and taskset exec the controller, so $! is its pid.
    STRAIT_LOG=${STRAIT_LOG:-info} nice -n "$NICE" taskset -c "$SUT_CPU" "${WRAP[@]}" "$CONTROLLER_BIN" \
        --mesh-file "$MESH" --state-dir "$WORK/state" "${LISTEN[@]}" \
        >"$WORK/controller.log" 2>&1 &
    CONTROLLER_PID=$!
    started=$SECONDS
    wait_ready "http://127.0.0.1:$ADMIN_PORT/ready" "$CONTROLLER_PID" strait-controller 600 \
        || { tail -20 "$WORK/controller.log" >&2; die "the controller did not become ready"; }
    log "controller ready after $(( SECONDS - started )) s (pid $CONTROLLER_PID)"
    SOURCE_ARGS=(--source embedded --out "$MESH" --controller-pid "$CONTROLLER_PID")
    CONTROLLER_NOTE="controller pinned to CPU $SUT_CPU"
else
    # The load generator fills its API server first, then starts the controller with this command:
    # taskset pins it to the SUT CPU (env and taskset exec, so the generator knows its pid), and it
    # inherits the generator's nice value.
    SOURCE_ARGS=(--source kubernetes --kubeconfig "$WORK/kubeconfig"
        --controller-log "$WORK/controller.log" --controller-pid-file "$WORK/controller.pid"
        -- env "STRAIT_LOG=${STRAIT_LOG:-info}" taskset -c "$SUT_CPU" "${WRAP[@]}" "$CONTROLLER_BIN"
        --kubernetes --kubeconfig "$WORK/kubeconfig" --trust-domain cluster.local "${LISTEN[@]}")
    CONTROLLER_NOTE="controller (Kubernetes mode, started by the load generator once its API server was filled) pinned to CPU $SUT_CPU"
fi

COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
DIRTY=$(git status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ", with uncommitted changes in the tree" || true)
mkdir -p "$RESULTS"
log "starting the load generator on CPU $CLIENT_CPU"
status=0
# The source's arguments go last: in Kubernetes mode they end with the controller's command.
pinned "$CLIENT_CPU" "$BIN/strait-bench-controller" run \
    --services "$SERVICES" --meshed "$MESHED_ARG" \
    --discovery "127.0.0.1:$DISCOVERY_PORT" --admin "127.0.0.1:$ADMIN_PORT" \
    --proxies "$PROXIES" --streams-per-connection "$STREAMS_PER_CONN" --subscriptions "$SUBSCRIPTIONS" \
    --rate "$RATE" --write-interval-ms "$WRITE_INTERVAL_MS" --duration "$DURATION" \
    --report "$REPORT" \
    --note "mode: $MODE; $(date -u '+%Y-%m-%d %H:%M UTC'); commit $COMMIT$DIRTY" \
    --note "machine: $(nproc) CPUs ($(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//')), $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), Linux $(uname -r); load average before the run $LOADAVG; open files limit $FD_LIMIT" \
    --note "$CONTROLLER_NOTE (so one runtime worker thread), load generator to CPU $CLIENT_CPU (one runtime thread); both on loopback, nice $NICE" \
    "${SOURCE_ARGS[@]}" \
    || status=$?

warnings=$(grep -cE ' (WARN|ERROR) ' "$WORK/controller.log" || true)
if (( warnings > 0 )); then
    {
        echo
        echo "The controller logged $warnings warnings or errors; the first ones:"
        echo
        echo '```'
        grep -E ' (WARN|ERROR) ' "$WORK/controller.log" | head -5 | cut -c1-300
        echo '```'
    } | tee -a "$REPORT"
fi
log "written: bench/results/$(basename "$REPORT")"
exit "$status"
