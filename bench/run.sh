#!/usr/bin/env bash
# `make bench` / `make bench-smoke`: Strait against the direct path, an HAProxy pair and an nginx pair,
# same client, same server, same machine, same run. See bench/README.md for what is measured and how
# to read the table this writes to bench/results/latest.md.
#
#   bench/run.sh [--smoke]
#
# Environment (all optional):
#   BENCH_REPS=N             repetitions (3 full, 1 smoke)
#   BENCH_DURATION=S         seconds per measured load (20 full, 2 smoke)
#   BENCH_SETUPS="direct strait haproxy nginx"   a subset, in this order
#   BENCH_LOADS="rate1000 rate5000 max grpc"     a subset, in this order
#   BENCH_CLIENT_CPU=0 BENCH_SUT_CPU=1           pinning (see README)
#   BENCH_KEEP=1             keep the temporary work dir (configs, logs, raw output)
set -euo pipefail

BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
cd "$ROOT"

MODE=full
for arg in "$@"; do
    case "$arg" in
        --smoke) MODE=smoke ;;
        -h | --help) sed -n '2,14p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "bench/run.sh: unknown argument $arg (try --help)" >&2; exit 2 ;;
    esac
done

if [[ $MODE == smoke ]]; then
    REPS=${BENCH_REPS:-1}
    DURATION=${BENCH_DURATION:-2}
    WARMUP_REQUESTS=100
else
    REPS=${BENCH_REPS:-3}
    DURATION=${BENCH_DURATION:-20}
    WARMUP_REQUESTS=2000
fi
SETUPS=${BENCH_SETUPS:-direct strait haproxy nginx}
LOADS=${BENCH_LOADS:-rate1000 rate5000 max grpc}
# Connections the client keeps open: enough for 5000 req/s at a few ms of latency each.
RATE_CONNECTIONS=16
MAX_CONNECTIONS=32
# gRPC: h2load clients (connections) x concurrent streams per connection.
GRPC_CONNECTIONS=4
GRPC_STREAMS=8

TOOLS="$BENCH_DIR/.tools"
RESULTS="$BENCH_DIR/results"
OHA="$TOOLS/bin/oha"
CI=${CI:-false}

log() { printf '== %s\n' "$*" >&2; }
warn() { printf '!! %s\n' "$*" >&2; }
die() { printf 'bench/run.sh: %s\n' "$*" >&2; exit 1; }

# ---------------------------------------------------------------------------------------------------
# Tools

declare -A NA_SETUP=()   # setup -> reason it cannot run on this machine
declare -A NA_LOAD=()    # load  -> reason

need_tool() { # need_tool COMMAND DEBIAN_PACKAGE: install when root, else report (fatal under CI)
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null 2>&1 && return 0
    if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        if [[ -z ${APT_UPDATED:-} ]]; then
            log "apt-get update"
            apt-get update -qq >&2
            APT_UPDATED=1
        fi
        log "installing $pkg (for $cmd)"
        # policy-rc.d, where present, keeps the packaged haproxy/nginx services from starting.
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$pkg" >&2
    fi
    command -v "$cmd" >/dev/null 2>&1 && return 0
    [[ $CI == true ]] && die "$cmd (Debian package $pkg) is missing and could not be installed"
    warn "$cmd is missing (Debian package $pkg; run as root to install it)"
    return 1
}

ensure_tools() {
    need_tool python3 python3 || die "python3 is needed for the report"
    need_tool openssl openssl || die "openssl is needed for the certificates"
    need_tool taskset util-linux || die "taskset is needed for pinning"
    need_tool envsubst gettext-base || die "envsubst is needed for the peer configs"
    need_tool curl curl || die "curl is needed for readiness checks"
    need_tool haproxy haproxy || NA_SETUP[haproxy]="haproxy is not installed"
    need_tool nginx nginx || NA_SETUP[nginx]="nginx is not installed"
    need_tool h2load nghttp2-client || NA_LOAD[grpc]="h2load (nghttp2-client) is not installed"
    # The HTTP/1.1 load tool must hold a fixed rate and correct for coordinated omission. Debian's wrk
    # is the original wrk 4.x (no -R); oha has -q RATE and --latency-correction, so it is oha.
    if [[ ! -x $OHA ]]; then
        log "installing oha into bench/.tools (cargo install oha --locked)"
        cargo install oha --locked --root "$TOOLS" >&2 || die "cargo install oha failed"
    fi
}

# ---------------------------------------------------------------------------------------------------
# Build, certificates, ports

build() {
    log "cargo build --release -p strait-proxy -p strait-tests"
    cargo build --release -p strait-proxy -p strait-tests >&2
    local target
    target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    PROXY_BIN="$target/release/strait-proxy"
    TESTSRV_BIN="$target/release/strait-testsrv"
    [[ -x $PROXY_BIN && -x $TESTSRV_BIN ]] || die "release binaries missing under $target/release"
}

# One CA, one server and one client leaf, all ECDSA P-256, for every setup that uses TLS.
make_certs() {
    CERTS="$WORK/certs"
    mkdir -p "$CERTS"
    (
        cd "$CERTS"
        local ec=(-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes)
        openssl req -x509 "${ec[@]}" -keyout ca.key -out ca.pem -days 2 -subj /CN=strait-bench-ca \
            -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
        local leaf san eku
        for leaf in server client; do
            if [[ $leaf == server ]]; then san=DNS:web.bench eku=serverAuth; else san=DNS:client.bench eku=clientAuth; fi
            openssl req "${ec[@]}" -keyout "$leaf.key" -out "$leaf.csr" -subj "/CN=$leaf.bench" 2>/dev/null
            printf 'subjectAltName=%s\nextendedKeyUsage=%s\nkeyUsage=critical,digitalSignature\nbasicConstraints=CA:FALSE\n' \
                "$san" "$eku" >"$leaf.ext"
            openssl x509 -req -in "$leaf.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
                -extfile "$leaf.ext" -out "$leaf.crt" 2>/dev/null
            cat "$leaf.crt" "$leaf.key" >"$leaf.pem"   # HAProxy wants certificate and key in one file
        done
        openssl verify -CAfile ca.pem server.crt client.crt >/dev/null
    )
}

port_in_use() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

NEXT_PORT=$((20000 + RANDOM % 8000))   # below Linux's ephemeral range (32768+)
alloc_ports() { # alloc_ports VAR...: sets and exports each VAR to a free loopback port
    local var
    for var in "$@"; do
        while port_in_use "$NEXT_PORT"; do NEXT_PORT=$((NEXT_PORT + 1)); done
        printf -v "$var" '%s' "$NEXT_PORT"
        export "${var?}"
        NEXT_PORT=$((NEXT_PORT + 1))
    done
}

wait_port() { # wait_port PORT PID NAME
    local port=$1 pid=$2 name=$3 i
    for ((i = 0; i < 200; i++)); do
        port_in_use "$port" && return 0
        kill -0 "$pid" 2>/dev/null || { warn "$name exited before listening on $port"; return 1; }
        sleep 0.05
    done
    warn "$name did not listen on $port within 10 s"
    return 1
}

render() { # render TEMPLATE OUT: fills in only the ${NAMES} the bench defines
    envsubst '${CERTS} ${RUN} ${APP_HTTP_PORT} ${APP_GRPC_PORT} ${A_HTTP_PORT} ${A_GRPC_PORT} ${B_HTTP_PORT} ${B_GRPC_PORT} ${B_INBOUND_PORT}' \
        <"$BENCH_DIR/peers/$1" >"$2"
}

# ---------------------------------------------------------------------------------------------------
# Processes. Everything the bench starts is pinned to the SUT CPU and stopped by pid.

PIDS=()
declare -A ROLE_PID=()   # role (A, B) -> pid of that proxy process (root of its process tree)

spawn() { # spawn NAME LOGFILE CMD...: starts CMD pinned to the SUT CPU, sets SPAWNED
    local name=$1 logfile=$2
    shift 2
    taskset -c "$SUT_CPU" "$@" >"$logfile" 2>&1 &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}

stop_all() {
    local pid
    for pid in "${PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do
        for _ in {1..40}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    PIDS=()
    ROLE_PID=()
}

cleanup() {
    stop_all
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if [[ ${BENCH_KEEP:-} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
}

start_app() { # the real application: HTTP (1 KiB from /bytes/1024) and gRPC echo
    alloc_ports APP_HTTP_PORT APP_GRPC_PORT
    spawn app-http "$RUN/app-http.log" "$TESTSRV_BIN" http --listen "127.0.0.1:$APP_HTTP_PORT" --name bench
    wait_port "$APP_HTTP_PORT" "$SPAWNED" "strait-testsrv http" || return 1
    spawn app-grpc "$RUN/app-grpc.log" "$TESTSRV_BIN" grpc --listen "127.0.0.1:$APP_GRPC_PORT" --name bench
    wait_port "$APP_GRPC_PORT" "$SPAWNED" "strait-testsrv grpc" || return 1
}

# Each setup_* starts the app and its proxies, and sets what the client talks to:
#   HTTP_URL, HTTP_PROXY_URL (empty: none), GRPC_URL, GRPC_AUTHORITY (empty: the URL's).

setup_direct() {
    start_app || return 1
    HTTP_URL="http://web.bench:8080/bytes/1024" HTTP_PROXY_URL=""
    HTTP_CONNECT_TO="web.bench:8080:127.0.0.1:$APP_HTTP_PORT"   # same request line and Host as the others
    GRPC_URL="http://127.0.0.1:$APP_GRPC_PORT/strait.test.echo.Echo/Unary" GRPC_AUTHORITY=""
}

setup_strait() {
    start_app || return 1
    alloc_ports B_INBOUND_PORT
    render strait-mesh.yaml.tmpl "$RUN/mesh.yaml"
    local role out in admin
    for role in B A; do
        alloc_ports out in admin
        [[ $role == B ]] && in=$B_INBOUND_PORT
        [[ $role == A ]] && A_OUTBOUND_PORT=$out
        spawn "strait-$role" "$RUN/strait-$role.log" env \
            STRAIT_DISCOVERY_FILE="$RUN/mesh.yaml" STRAIT_NAMESPACE=bench \
            STRAIT_OUTBOUND_ADDR="127.0.0.1:$out" STRAIT_INBOUND_ADDR="127.0.0.1:$in" \
            STRAIT_ADMIN_ADDR="127.0.0.1:$admin" STRAIT_WORKER_THREADS=1 STRAIT_LOG=warn \
            "$PROXY_BIN"
        ROLE_PID[$role]=$SPAWNED
        wait_port "$in" "$SPAWNED" "strait-proxy $role" || return 1
        wait_port "$out" "$SPAWNED" "strait-proxy $role" || return 1
    done
    # Explicit HTTP proxy mode: the client sends absolute-form requests to A's outbound listener.
    HTTP_URL="http://web.bench:8080/bytes/1024" HTTP_PROXY_URL="http://127.0.0.1:$A_OUTBOUND_PORT"
    # h2c with prior knowledge to A's outbound listener, naming the service in :authority.
    GRPC_URL="http://127.0.0.1:$A_OUTBOUND_PORT/strait.test.echo.Echo/Unary" GRPC_AUTHORITY="grpc.bench:9090"
}

start_pair() { # start_pair haproxy|nginx: B first (it serves A), then A
    local kind=$1 role conf
    start_app || return 1
    alloc_ports A_HTTP_PORT A_GRPC_PORT B_HTTP_PORT B_GRPC_PORT
    export CERTS
    for role in B A; do
        local rundir="$RUN/$kind-$role"
        mkdir -p "$rundir"
        if [[ $kind == haproxy ]]; then
            conf="$rundir/haproxy.cfg"
            RUN=$rundir render "haproxy-${role,,}.cfg.tmpl" "$conf"
            # -db: stay in the foreground, one process; -Ws is not needed without reloads.
            spawn "haproxy-$role" "$rundir/haproxy.log" haproxy -db -f "$conf"
        else
            conf="$rundir/nginx.conf"
            RUN=$rundir render "nginx-${role,,}.conf.tmpl" "$conf"
            spawn "nginx-$role" "$rundir/nginx.log" nginx -p "$rundir" -c "$conf" -e "$rundir/error.log" -g 'daemon off;'
        fi
        ROLE_PID[$role]=$SPAWNED
        if [[ $role == B ]]; then
            wait_port "$B_HTTP_PORT" "$SPAWNED" "$kind B" && wait_port "$B_GRPC_PORT" "$SPAWNED" "$kind B" || return 1
        else
            wait_port "$A_HTTP_PORT" "$SPAWNED" "$kind A" && wait_port "$A_GRPC_PORT" "$SPAWNED" "$kind A" || return 1
        fi
    done
    HTTP_URL="http://web.bench:8080/bytes/1024" HTTP_PROXY_URL=""
    HTTP_CONNECT_TO="web.bench:8080:127.0.0.1:$A_HTTP_PORT"
    GRPC_URL="http://127.0.0.1:$A_GRPC_PORT/strait.test.echo.Echo/Unary" GRPC_AUTHORITY="web.bench:8080"
}

setup_haproxy() { start_pair haproxy; }
setup_nginx() { start_pair nginx; }

# ---------------------------------------------------------------------------------------------------
# Measuring the proxies: CPU ticks (utime+stime) and peak RSS (VmHWM) of each process tree.

CLK_TCK=$(getconf CLK_TCK)

tree_pids() { # the pid and its descendants (nginx: master + worker)
    local pid=$1 child
    echo "$pid"
    for child in $(pgrep -P "$pid" 2>/dev/null || true); do tree_pids "$child"; done
}

proc_ticks() { # sum of utime+stime over the tree, in clock ticks
    local total=0 pid stat
    for pid in $(tree_pids "$1"); do
        stat=$(cat "/proc/$pid/stat" 2>/dev/null) || continue
        stat=${stat##*) }              # fields after "(comm) "; utime and stime are fields 14, 15
        read -r -a f <<<"$stat"
        total=$((total + f[11] + f[12]))
    done
    echo "$total"
}

proc_hwm_kb() { # sum of VmHWM over the tree
    local total=0 pid kb
    for pid in $(tree_pids "$1"); do
        kb=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

snapshot_ticks() { # snapshot_ticks FILE
    local role
    : >"$1"
    for role in "${!ROLE_PID[@]}"; do echo "$role $(proc_ticks "${ROLE_PID[$role]}")" >>"$1"; done
}

record_proxies() { # record_proxies BEFORE OUT: "role cpu_seconds peak_rss_kb" per proxy
    local before=$1 out=$2 role t0 t1
    : >"$out"
    for role in "${!ROLE_PID[@]}"; do
        t0=$(awk -v r="$role" '$1 == r {print $2}' "$before")
        t1=$(proc_ticks "${ROLE_PID[$role]}")
        kill -0 "${ROLE_PID[$role]}" 2>/dev/null || echo "$role died" >>"$out.note"
        echo "$role $(python3 -c "print(($t1 - $t0) / $CLK_TCK)") $(proc_hwm_kb "${ROLE_PID[$role]}")" >>"$out"
    done
}

# ---------------------------------------------------------------------------------------------------
# Loads. The client always runs pinned to the client CPU.

client() { taskset -c "$CLIENT_CPU" "$@"; }
# One runtime thread for oha: it has one CPU. No DNS: the service name is resolved by the proxy (or --connect-to).
oha() { client "$OHA" --no-tui --worker-threads 1 --no-pre-lookup "$@"; }

oha_target_args() { # how the client reaches the setup
    OHA_ARGS=()
    [[ -n $HTTP_PROXY_URL ]] && OHA_ARGS+=(-x "$HTTP_PROXY_URL")
    [[ -n ${HTTP_CONNECT_TO:-} ]] && OHA_ARGS+=(--connect-to "$HTTP_CONNECT_TO")
    OHA_ARGS+=("$HTTP_URL")
}

grpc_body() { # one pre-framed gRPC message: EchoRequest{message: "bench"}
    GRPC_BODY="$WORK/grpc-request.bin"
    # 0 = uncompressed, 4-byte big-endian length 7, then field 1 (string) "bench": 0a 05 'bench'
    printf '\x00\x00\x00\x00\x07\x0a\x05bench' >"$GRPC_BODY"
}

h2load_args() {
    H2_ARGS=(-d "$GRPC_BODY" -H 'content-type: application/grpc' -H 'te: trailers')
    [[ -n $GRPC_AUTHORITY ]] && H2_ARGS+=(-H ":authority: $GRPC_AUTHORITY")
    H2_ARGS+=("$GRPC_URL")
}

warm_up() { # warm_up LOAD: a few requests of the same kind, not measured
    if [[ $1 == grpc ]]; then
        client h2load -n "$WARMUP_REQUESTS" -c "$GRPC_CONNECTIONS" -m "$GRPC_STREAMS" "${H2_ARGS[@]}" >/dev/null 2>&1 || true
    else
        oha -n "$WARMUP_REQUESTS" -c "$RATE_CONNECTIONS" "${OHA_ARGS[@]}" >/dev/null 2>&1 || true
    fi
}

run_load() { # run_load LOAD OUTDIR
    local load=$1 out=$2
    case $load in
        rate*)
            oha --output-format json -z "${DURATION}s" -w \
                -q "${load#rate}" --latency-correction -c "$RATE_CONNECTIONS" "${OHA_ARGS[@]}" \
                >"$out/oha.json" 2>"$out/oha.err" || echo "oha exited $?" >>"$out/note"
            ;;
        max)
            oha --output-format json -z "${DURATION}s" -w \
                -c "$MAX_CONNECTIONS" "${OHA_ARGS[@]}" \
                >"$out/oha.json" 2>"$out/oha.err" || echo "oha exited $?" >>"$out/note"
            ;;
        grpc)
            client h2load -D "$DURATION" -c "$GRPC_CONNECTIONS" -m "$GRPC_STREAMS" \
                --log-file="$out/h2load.log" "${H2_ARGS[@]}" \
                >"$out/h2load.txt" 2>&1 || echo "h2load exited $?" >>"$out/note"
            ;;
    esac
}

measure() { # measure SETUP LOAD REP
    local setup=$1 load=$2 rep=$3
    local out="$RAW/$setup.$load.$rep"
    mkdir -p "$out"
    if [[ -n ${NA_SETUP[$setup]:-} ]]; then echo "${NA_SETUP[$setup]}" >"$out/na"; return; fi
    if [[ -n ${NA_LOAD[$load]:-} ]]; then echo "${NA_LOAD[$load]}" >"$out/na"; return; fi
    RUN="$WORK/run/$setup.$load.$rep"
    mkdir -p "$RUN"
    HTTP_CONNECT_TO=""
    if ! "setup_$setup"; then
        echo "setup failed to start (logs: $(tail -n 3 "$RUN"/*.log "$RUN"/*/error.log 2>/dev/null | tr '\n' ' ' | cut -c1-300))" >"$out/na"
        warn "$setup did not start; see $RUN"
        stop_all
        return
    fi
    oha_target_args
    h2load_args
    warm_up "$load"
    snapshot_ticks "$out/ticks.before"
    run_load "$load" "$out"
    record_proxies "$out/ticks.before" "$out/proxies.txt"
    stop_all
    note_proxy_logs "$out"
}

note_proxy_logs() { # warnings and errors the proxies logged during the run go under the table
    local out=$1 logfile count first
    for logfile in "$RUN"/strait-*.log "$RUN"/*/haproxy.log "$RUN"/*/error.log; do
        [[ -f $logfile ]] || continue
        count=$(sed 's/\x1b\[[0-9;]*m//g' "$logfile" | grep -cE 'WARN|ERROR|ALERT|\[(warn|error|crit|alert|emerg)\]' || true)
        ((count > 0)) || continue
        first=$(sed 's/\x1b\[[0-9;]*m//g' "$logfile" | grep -m1 -E 'WARN|ERROR|ALERT|\[(warn|error|crit|alert|emerg)\]' | cut -c1-200)
        echo "${logfile#"$RUN"/}: $count warning/error line(s), first: $first" >>"$out/note"
    done
}

# ---------------------------------------------------------------------------------------------------

main() {
    CLIENT_CPU=${BENCH_CLIENT_CPU:-0}
    SUT_CPU=${BENCH_SUT_CPU:-1}
    if (($(nproc) < 2)); then CLIENT_CPU=0 SUT_CPU=0; fi

    ensure_tools
    build
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/strait-bench.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    RAW="$RESULTS/raw"
    rm -rf "$RAW"
    mkdir -p "$RAW"
    make_certs
    grpc_body

    LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    if [[ $MODE == full ]] && awk '{exit !($1 > 1)}' /proc/loadavg; then
        warn "load average ${LOADAVG_BEFORE%% *} before the run: other work shares the cores, figures will be noisy"
    fi
    log "mode $MODE: $REPS repetition(s), ${DURATION} s per load; setups: $SETUPS; loads: $LOADS"
    log "pinning: load tool on CPU $CLIENT_CPU; proxies and server on CPU $SUT_CPU"
    local rep setup load
    for ((rep = 1; rep <= REPS; rep++)); do
        for load in $LOADS; do
            for setup in $SETUPS; do
                log "rep $rep/$REPS  $load  $setup"
                measure "$setup" "$load" "$rep"
            done
        done
    done

    cat >"$RAW/meta.env" <<EOF
mode=$MODE
reps=$REPS
duration=$DURATION
setups=$SETUPS
loads=$LOADS
client_cpu=$CLIENT_CPU
sut_cpu=$SUT_CPU
rate_connections=$RATE_CONNECTIONS
max_connections=$MAX_CONNECTIONS
grpc_connections=$GRPC_CONNECTIONS
grpc_streams=$GRPC_STREAMS
commit=$(git describe --always --dirty --abbrev=12 2>/dev/null || echo unknown)
date=$(date -u '+%Y-%m-%d %H:%M UTC')
nproc=$(nproc)
cpu=$(awk -F': ' '/^model name/ {print $2; exit}' /proc/cpuinfo)
kernel=$(uname -sr)
memory=$(awk '/^MemTotal:/ {printf "%.0f GiB", $2 / 1048576}' /proc/meminfo)
oha=$("$OHA" --version 2>/dev/null | head -n1)
h2load=$(h2load --version 2>/dev/null | head -n1 || true)
haproxy=$(haproxy -v 2>/dev/null | head -n1 | cut -d' ' -f1-3 || true)
nginx=$(nginx -v 2>&1 | head -n1 || true)
strait_tls=off
loadavg_before=$LOADAVG_BEFORE
loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)
EOF
    mkdir -p "$RESULTS"
    python3 "$BENCH_DIR/report.py" "$RAW" >"$RESULTS/latest.md"
    cat "$RESULTS/latest.md"
    log "written: bench/results/latest.md (raw output: bench/results/raw/)"
}

main
