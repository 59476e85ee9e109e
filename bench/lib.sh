# Shared by bench/run.sh (`make bench`), bench/tls.sh and bench/policy.sh: tools, build,
# certificates, ports, processes, the setups, loads and measurements. Sourced, never run.
# See bench/README.md.

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$BENCH_DIR/.." && pwd)
cd "$ROOT"

# bench_args HELP_LAST_LINE "$@": --smoke / --help; sets MODE, REPS, DURATION, WARMUP_REQUESTS.
# The calling script's header comment (lines 2..HELP_LAST_LINE) is its --help.
bench_args() {
    local help_end=$1 arg
    shift
    MODE=full
    for arg in "$@"; do
        case "$arg" in
            --smoke) MODE=smoke ;;
            -h | --help) sed -n "2,${help_end}p" "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
            *) echo "$0: unknown argument $arg (try --help)" >&2; exit 2 ;;
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
}

# Connections the client keeps open: enough for 5000 req/s at a few ms of latency each.
RATE_CONNECTIONS=16
MAX_CONNECTIONS=32
# gRPC: h2load clients (connections) x concurrent streams per connection.
GRPC_CONNECTIONS=4
GRPC_STREAMS=8
# Whether the `strait` setup runs mutual TLS between its proxies (certificates from the controller's
# identity service). `off` only to compare with the plaintext figures of older runs.
STRAIT_TLS=${BENCH_STRAIT_TLS:-on}

TOOLS="$BENCH_DIR/.tools"
RESULTS="$BENCH_DIR/results"
OHA="$TOOLS/bin/oha"
CI=${CI:-false}

log() { printf '== %s\n' "$*" >&2; }
warn() { printf '!! %s\n' "$*" >&2; }
die() { printf '%s: %s\n' "$(basename "$0")" "$*" >&2; exit 1; }

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

ensure_base_tools() {
    need_tool python3 python3 || die "python3 is needed for the report"
    need_tool openssl openssl || die "openssl is needed for the certificates"
    need_tool taskset util-linux || die "taskset is needed for pinning"
    need_tool envsubst gettext-base || die "envsubst is needed for the peer configs"
    need_tool curl curl || die "curl is needed for readiness checks"
}

ensure_oha() {
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
    log "cargo build --release -p strait-proxy -p strait-controller -p strait-tests"
    cargo build --release -p strait-proxy -p strait-controller -p strait-tests >&2
    local target
    target=$(cargo metadata --format-version 1 --no-deps | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
    PROXY_BIN="$target/release/strait-proxy"
    CONTROLLER_BIN="$target/release/strait-controller"
    TESTSRV_BIN="$target/release/strait-testsrv"
    [[ -x $PROXY_BIN && -x $CONTROLLER_BIN && -x $TESTSRV_BIN ]] || die "release binaries missing under $target/release"
}

# One CA, one server and one client leaf, all ECDSA P-256 (the key type the Strait CA issues), for
# every peer setup that uses TLS.
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

wait_ready() { # wait_ready URL PID NAME [SECONDS]: until URL answers 2xx (e.g. an admin /ready)
    local url=$1 pid=$2 name=$3 secs=${4:-20} i
    for ((i = 0; i < secs * 10; i++)); do
        curl -fsS -o /dev/null --max-time 1 "$url" 2>/dev/null && return 0
        kill -0 "$pid" 2>/dev/null || { warn "$name exited before $url answered"; return 1; }
        sleep 0.1
    done
    warn "$name: $url did not answer 2xx within $secs s"
    return 1
}

render() { # render TEMPLATE OUT: fills in only the ${NAMES} the bench defines
    envsubst '${CERTS} ${RUN} ${APP_HTTP_PORT} ${APP_GRPC_PORT} ${APP_TCP_PORT} ${A_HTTP_PORT} ${A_GRPC_PORT} ${B_HTTP_PORT} ${B_GRPC_PORT} ${B_INBOUND_PORT} ${WEB_ANNOTATIONS} ${CLIENT_TOKEN} ${WEB_TOKEN}' \
        <"$BENCH_DIR/peers/$1" >"$2"
}

# ---------------------------------------------------------------------------------------------------
# Processes. Everything the bench starts is pinned to the SUT CPU and stopped by pid.

PIDS=()
declare -A ROLE_PID=()   # role (A, B) -> pid of that proxy process (root of its process tree)
CONTROLLER_PID=""        # the Strait setups' controller (pinned with the proxies, measured apart)

spawn() { # spawn NAME LOGFILE CMD...: starts CMD pinned to the SUT CPU, sets SPAWNED
    local name=$1 logfile=$2
    shift 2
    taskset -c "$SUT_CPU" "$@" >"$logfile" 2>&1 &
    SPAWNED=$!
    PIDS+=("$SPAWNED")
}

stop_pids() { # stop_pids PID...: TERM, up to 2 s each, then KILL
    local pid
    for pid in "$@"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "$@"; do
        for _ in {1..40}; do kill -0 "$pid" 2>/dev/null || break; sleep 0.05; done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
}

stop_all() {
    # The proxies first: a controller stopping under them would make them log a lost discovery stream.
    stop_pids "${ROLE_PID[@]}"
    stop_pids "${PIDS[@]}"
    PIDS=()
    ROLE_PID=()
    CONTROLLER_PID=""
}

cleanup() {
    stop_all
    if [[ -n ${WORK:-} && -d $WORK ]]; then
        if [[ ${BENCH_KEEP:-} == 1 ]]; then log "kept $WORK"; else rm -rf "$WORK"; fi
    fi
}

bench_start() { # common start of every script: tools, build, work dir, pinning
    CLIENT_CPU=${BENCH_CLIENT_CPU:-0}
    SUT_CPU=${BENCH_SUT_CPU:-1}
    if (($(nproc) < 2)); then CLIENT_CPU=0 SUT_CPU=0; fi
    build
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/strait-bench.XXXXXX")
    trap cleanup EXIT
    trap 'exit 130' INT TERM
    grpc_body
    LOADAVG_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg)
    if [[ $MODE == full ]] && awk '{exit !($1 > 1)}' /proc/loadavg; then
        warn "load average ${LOADAVG_BEFORE%% *} before the run: other work shares the cores, figures will be noisy"
    fi
}

start_app() { # the real application: HTTP (1 KiB from /bytes/1024) and gRPC echo; TCP echo: start_tcp_app
    alloc_ports APP_HTTP_PORT APP_GRPC_PORT APP_TCP_PORT
    spawn app-http "$RUN/app-http.log" "$TESTSRV_BIN" http --listen "127.0.0.1:$APP_HTTP_PORT" --name bench
    wait_port "$APP_HTTP_PORT" "$SPAWNED" "strait-testsrv http" || return 1
    spawn app-grpc "$RUN/app-grpc.log" "$TESTSRV_BIN" grpc --listen "127.0.0.1:$APP_GRPC_PORT" --name bench
    wait_port "$APP_GRPC_PORT" "$SPAWNED" "strait-testsrv grpc" || return 1
}

start_tcp_app() { # an opaque TCP application (echo) on the APP_TCP_PORT start_app reserved
    spawn app-tcp "$RUN/app-tcp.log" "$TESTSRV_BIN" tcp-echo --listen "127.0.0.1:$APP_TCP_PORT" --name bench
    wait_port "$APP_TCP_PORT" "$SPAWNED" "strait-testsrv tcp-echo" || return 1
}

# Each setup_* starts the app and its proxies, and sets what the client talks to:
#   HTTP_URL, HTTP_PROXY_URL (empty: none), GRPC_URL, GRPC_AUTHORITY (empty: the URL's).
# Setup names may contain '-' (setup_ functions use '_'), never '.'.

setup_direct() {
    start_app || return 1
    HTTP_URL="http://web.bench:8080/bytes/1024" HTTP_PROXY_URL=""
    HTTP_CONNECT_TO="web.bench:8080:127.0.0.1:$APP_HTTP_PORT"   # same request line and Host as the others
    GRPC_URL="http://127.0.0.1:$APP_GRPC_PORT/strait.test.echo.Echo/Unary" GRPC_AUTHORITY=""
}

# --- Strait: a controller in embedded mode and two proxies, all pinned to the SUT CPU ----------------

# The full resilience policy of DESIGN §5 on the `web` service (setup strait-policy), as a YAML flow
# mapping; the balancer stays at its default (peak-EWMA).
POLICY_ANNOTATIONS='{"timeout.strait.io/request": "2s", "retry.strait.io/http": "5xx", "retry.strait.io/timeout": "1s", "circuit.strait.io/consecutive-failures": "5", "bulkhead.strait.io/max-concurrent": "1000"}'

# start_controller: the mesh file must already be at $RUN/mesh.yaml. Sets CTL_* ports, STATE_DIR,
# CONTROLLER_PID. Waits for the controller's /ready (mesh loaded, identity served).
start_controller() {
    alloc_ports CTL_DISCOVERY_PORT CTL_IDENTITY_PORT CTL_ADMIN_PORT CTL_WEBHOOK_PORT
    STATE_DIR="$RUN/state"
    spawn controller "$RUN/controller.log" env STRAIT_LOG=warn "$CONTROLLER_BIN" \
        --mesh-file "$RUN/mesh.yaml" --state-dir "$STATE_DIR" \
        --discovery-addr "127.0.0.1:$CTL_DISCOVERY_PORT" --identity-addr "127.0.0.1:$CTL_IDENTITY_PORT" \
        --admin-addr "127.0.0.1:$CTL_ADMIN_PORT" --webhook-addr "127.0.0.1:$CTL_WEBHOOK_PORT"
    CONTROLLER_PID=$SPAWNED
    wait_ready "http://127.0.0.1:$CTL_ADMIN_PORT/ready" "$SPAWNED" strait-controller 30 || return 1
}

# start_strait_proxy ROLE TLS: A = the client's sidecar (workload bench-client, service account
# client), B = the server's (workload bench-web, service account web). TLS=on: it gets its identity
# from the controller and is ready only once certified. Sets ROLE_PID, A_OUTBOUND_PORT, *_ADMIN_PORT.
start_strait_proxy() {
    local role=$1 tls=$2 out in admin workload sa token
    alloc_ports out in admin
    if [[ $role == B ]]; then
        in=$B_INBOUND_PORT workload=bench-web sa=web token=$WEB_TOKEN
        B_ADMIN_PORT=$admin
    else
        A_OUTBOUND_PORT=$out workload=bench-client sa=client token=$CLIENT_TOKEN
        A_ADMIN_PORT=$admin
    fi
    local env=(
        STRAIT_DISCOVERY_ADDR="127.0.0.1:$CTL_DISCOVERY_PORT"
        STRAIT_NAMESPACE=bench STRAIT_WORKLOAD="$workload" STRAIT_SERVICE_ACCOUNT="$sa"
        STRAIT_OUTBOUND_ADDR="127.0.0.1:$out" STRAIT_INBOUND_ADDR="127.0.0.1:$in"
        STRAIT_ADMIN_ADDR="127.0.0.1:$admin" STRAIT_WORKER_THREADS=1 STRAIT_LOG="${BENCH_PROXY_LOG:-warn}"
    )
    if [[ $tls == on ]]; then
        printf '%s' "$token" >"$RUN/token-$role"
        env+=(
            STRAIT_IDENTITY_ADDR="127.0.0.1:$CTL_IDENTITY_PORT"
            STRAIT_TRUST_ANCHORS="$STATE_DIR/trust-anchors.pem"
            STRAIT_IDENTITY_TOKEN_FILE="$RUN/token-$role"
        )
    fi
    spawn "strait-$role" "$RUN/strait-$role.log" env "${env[@]}" "$PROXY_BIN"
    ROLE_PID[$role]=$SPAWNED
    wait_port "$in" "$SPAWNED" "strait-proxy $role" || return 1
    wait_port "$out" "$SPAWNED" "strait-proxy $role" || return 1
    # /ready: listeners up and, with TLS, the first certificate in.
    wait_ready "http://127.0.0.1:$admin/ready" "$SPAWNED" "strait-proxy $role" 30 || return 1
}

# start_strait TLS ANNOTATIONS [MESH_TEMPLATE]: app, controller, B, then A.
start_strait() {
    local tls=$1 template=${3:-strait-mesh.yaml.tmpl}
    WEB_ANNOTATIONS=$2
    start_app || return 1
    alloc_ports B_INBOUND_PORT
    CLIENT_TOKEN=$(openssl rand -hex 16) WEB_TOKEN=$(openssl rand -hex 16)
    export WEB_ANNOTATIONS CLIENT_TOKEN WEB_TOKEN
    render "$template" "$RUN/mesh.yaml"
    [[ -n ${MESH_EXTRA:-} ]] && "$MESH_EXTRA" >>"$RUN/mesh.yaml"
    start_controller || return 1
    if [[ $tls == on && ! -s $STATE_DIR/trust-anchors.pem ]]; then
        warn "the controller wrote no $STATE_DIR/trust-anchors.pem: this build serves no identity"
        echo "no identity: strait-controller wrote no trust-anchors.pem in --state-dir" >"$RUN/na-reason"
        return 1
    fi
    start_strait_proxy B "$tls" || return 1
    start_strait_proxy A "$tls" || return 1
    # Explicit HTTP proxy mode: the client sends absolute-form requests to A's outbound listener.
    HTTP_URL="http://web.bench:8080/bytes/1024" HTTP_PROXY_URL="http://127.0.0.1:$A_OUTBOUND_PORT"
    # h2c with prior knowledge to A's outbound listener, naming the service in :authority.
    GRPC_URL="http://127.0.0.1:$A_OUTBOUND_PORT/strait.test.echo.Echo/Unary" GRPC_AUTHORITY="grpc.bench:9090"
}

setup_strait() { start_strait "$STRAIT_TLS" '{}'; }                     # like-for-like with the peers
setup_strait_plain() { start_strait off '{}'; }                        # no identity: plaintext HTTP/2
setup_strait_policy() { start_strait "$STRAIT_TLS" "$POLICY_ANNOTATIONS"; }   # + the full policy stack

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

proc_kb() { # proc_kb PID FIELD: sum of a /proc/PID/status field (VmHWM, VmRSS) over the tree
    local total=0 pid kb
    for pid in $(tree_pids "$1"); do
        kb=$(awk -v f="$2:" '$1 == f {print $2}' "/proc/$pid/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

proc_hwm_kb() { proc_kb "$1" VmHWM; }

snapshot_ticks() { # snapshot_ticks FILE
    local role
    : >"$1"
    for role in "${!ROLE_PID[@]}"; do echo "$role $(proc_ticks "${ROLE_PID[$role]}")" >>"$1"; done
    [[ -n $CONTROLLER_PID ]] && echo "controller $(proc_ticks "$CONTROLLER_PID")" >>"$1"
    return 0
}

ticks_to_s() { python3 -c "print(($2 - $1) / $CLK_TCK)"; }

record_proxies() { # record_proxies BEFORE OUT: "role cpu_seconds peak_rss_kb" per proxy (+ controller.txt)
    local before=$1 out=$2 role t0 t1
    : >"$out"
    for role in "${!ROLE_PID[@]}"; do
        t0=$(awk -v r="$role" '$1 == r {print $2}' "$before")
        t1=$(proc_ticks "${ROLE_PID[$role]}")
        kill -0 "${ROLE_PID[$role]}" 2>/dev/null || echo "$role died" >>"$out.note"
        echo "$role $(ticks_to_s "$t0" "$t1") $(proc_hwm_kb "${ROLE_PID[$role]}")" >>"$out"
    done
    if [[ -n $CONTROLLER_PID ]]; then
        t0=$(awk '$1 == "controller" {print $2}' "$before")
        t1=$(proc_ticks "$CONTROLLER_PID")
        echo "controller $(ticks_to_s "$t0" "$t1") $(proc_hwm_kb "$CONTROLLER_PID")" >"$(dirname "$out")/controller.txt"
    fi
}

# scrape_handshakes ADMIN_PORT DIRECTION: strait_tls_handshakes_total{direction, result="ok"} (0 if none)
scrape_handshakes() {
    curl -fsS --max-time 2 "http://127.0.0.1:$1/metrics" 2>/dev/null | awk -v d="$2" '
        /^strait_tls_handshakes_total\{/ && index($0, "direction=\"" d "\"") && index($0, "result=\"ok\"") { n += $NF }
        END { printf "%d\n", n }'
}

# snapshot_handshakes FILE: "A_outbound B_inbound" ok-handshake counters of a Strait pair
snapshot_handshakes() {
    [[ -n ${A_ADMIN_PORT:-} && -n ${B_ADMIN_PORT:-} ]] || return 0
    echo "$(scrape_handshakes "$A_ADMIN_PORT" outbound) $(scrape_handshakes "$B_ADMIN_PORT" inbound)" >"$1"
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

setup_or_na() { # setup_or_na SETUP OUTDIR: starts the setup; on failure writes OUTDIR/na and stops
    local setup=$1 out=$2
    if ! "setup_${setup//-/_}"; then
        local reason="setup failed to start"
        [[ -f $RUN/na-reason ]] && reason=$(cat "$RUN/na-reason")
        echo "$reason (logs: $(tail -n 3 "$RUN"/*.log "$RUN"/*/error.log 2>/dev/null | tr '\n' ' ' | cut -c1-300))" >"$out/na"
        warn "$setup did not start; see $RUN"
        stop_all
        return 1
    fi
}

measure() { # measure SETUP LOAD REP
    local setup=$1 load=$2 rep=$3
    local out="$RAW/$setup.$load.$rep"
    mkdir -p "$out"
    if [[ -n ${NA_SETUP[$setup]:-} ]]; then echo "${NA_SETUP[$setup]}" >"$out/na"; return; fi
    if [[ -n ${NA_LOAD[$load]:-} ]]; then echo "${NA_LOAD[$load]}" >"$out/na"; return; fi
    RUN="$WORK/run/$setup.$load.$rep"
    mkdir -p "$RUN"
    HTTP_CONNECT_TO="" A_ADMIN_PORT="" B_ADMIN_PORT=""
    setup_or_na "$setup" "$out" || return 0
    oha_target_args
    h2load_args
    warm_up "$load"
    snapshot_ticks "$out/ticks.before"
    snapshot_handshakes "$out/handshakes.before"
    run_load "$load" "$out"
    record_proxies "$out/ticks.before" "$out/proxies.txt"
    snapshot_handshakes "$out/handshakes.after"
    echo "$WARMUP_REQUESTS" >"$out/warmup"
    stop_all
    note_proxy_logs "$out"
}

note_proxy_logs() { # warnings and errors the proxies logged during the run go under the table
    local out=$1 logfile count first
    for logfile in "$RUN"/strait-*.log "$RUN"/controller.log "$RUN"/*/haproxy.log "$RUN"/*/error.log; do
        [[ -f $logfile ]] || continue
        count=$(sed 's/\x1b\[[0-9;]*m//g' "$logfile" | grep -cE 'WARN|ERROR|ALERT|\[(warn|error|crit|alert|emerg)\]' || true)
        ((count > 0)) || continue
        first=$(sed 's/\x1b\[[0-9;]*m//g' "$logfile" | grep -m1 -E 'WARN|ERROR|ALERT|\[(warn|error|crit|alert|emerg)\]' | cut -c1-200)
        echo "${logfile#"$RUN"/}: $count warning/error line(s), first: $first" >>"$out/note"
    done
}

run_matrix() { # run_matrix: every (rep, load, setup) of $REPS, $LOADS, $SETUPS, interleaved
    local rep setup load
    for ((rep = 1; rep <= REPS; rep++)); do
        for load in $LOADS; do
            for setup in $SETUPS; do
                log "rep $rep/$REPS  $load  $setup"
                measure "$setup" "$load" "$rep"
            done
        done
    done
}

write_meta() { # write_meta FILE [KEY=VALUE...]: the run's facts for report.py
    local file=$1
    shift
    cat >"$file" <<EOF
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
warmup_requests=$WARMUP_REQUESTS
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
strait_tls=$STRAIT_TLS
loadavg_before=$LOADAVG_BEFORE
loadavg_after=$(cut -d' ' -f1-3 /proc/loadavg)
EOF
    local kv
    for kv in "$@"; do echo "$kv" >>"$file"; done
}
