#!/usr/bin/env bash
# bench/tls.sh (`make bench-tls`): what mutual TLS costs the Strait pair (issue 4), written to
# bench/results/tls-latest.md. Same harness, pinning and app as bench/run.sh; see bench/README.md.
#   1. The Strait pair with identity (mTLS) against the same pair without (plaintext HTTP/2), same
#      loads, same run: added latency of mTLS; handshakes per 1000 requests (connection reuse).
#   2. New connections: opaque TCP through CONNECT, one new proxy-to-proxy connection (so one mTLS
#      handshake) per client connection, open throttle: handshakes per CPU-second of each proxy.
#
#   bench/tls.sh [--smoke]
#
# Environment (all optional):
#   BENCH_REPS=N  BENCH_DURATION=S  BENCH_CLIENT_CPU  BENCH_SUT_CPU  BENCH_KEEP   as for bench/run.sh
#   BENCH_LOADS="rate1000 rate5000 max"   the HTTP/1.1 loads of part 1
#   BENCH_CHURN_DURATION=S          seconds of part 2 per repetition (10 full, 2 smoke)
#   BENCH_CHURN_CONCURRENCY=N       client connections in flight in part 2 (16)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_args 16 "$@"

SETUPS="strait-plain strait"
LOADS=${BENCH_LOADS:-rate1000 rate5000 max}
STRAIT_TLS=on
if [[ $MODE == smoke ]]; then CHURN_DURATION=${BENCH_CHURN_DURATION:-2}; else CHURN_DURATION=${BENCH_CHURN_DURATION:-10}; fi
CHURN_CONCURRENCY=${BENCH_CHURN_CONCURRENCY:-16}

setup_strait_tcp() { start_strait on '{}' && start_tcp_app; }
setup_strait_tcp_plain() { start_strait off '{}' && start_tcp_app; }

churn() { # churn SECONDS: CONNECT churn against A's outbound listener, from the client CPU
    client python3 "$BENCH_DIR/connchurn.py" --proxy "127.0.0.1:$A_OUTBOUND_PORT" --target tcp.bench:9000 \
        --concurrency "$CHURN_CONCURRENCY" --duration "$1"
}

# Samples which handshakes were resumptions: tcpdump on loopback (root only) during one unmeasured
# second of churn, ServerHellos from B's inbound port parsed by tlsresume.py.
sample_resumption() { # sample_resumption OUTDIR
    local out=$1 pid
    [[ $(id -u) == 0 ]] && command -v tcpdump >/dev/null 2>&1 || { echo "resumption not sampled: needs root and tcpdump" >>"$out/note"; return 0; }
    taskset -c "$CLIENT_CPU" tcpdump -i lo -n -s 256 -w "$RUN/sample.pcap" "tcp src port $B_INBOUND_PORT" >"$RUN/tcpdump.log" 2>&1 &
    pid=$!
    sleep 0.5
    churn 1 >/dev/null || true
    kill -INT "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    python3 "$BENCH_DIR/tlsresume.py" "$RUN/sample.pcap" "$B_INBOUND_PORT" >"$out/resumption.json" 2>>"$out/note" ||
        rm -f "$out/resumption.json"
}

measure_churn() { # measure_churn SETUP REP
    local setup=$1 rep=$2
    local out="$RAW/handshake-rate/$setup.$rep"
    mkdir -p "$out"
    RUN="$WORK/run/$setup.churn.$rep"
    mkdir -p "$RUN"
    A_ADMIN_PORT="" B_ADMIN_PORT=""
    setup_or_na "$setup" "$out" || return 0
    churn 1 >/dev/null || true   # warm-up: discovery, first handshake, session tickets
    [[ $setup == strait-tcp ]] && sample_resumption "$out"
    snapshot_ticks "$out/ticks.before"
    snapshot_handshakes "$out/handshakes.before"
    churn "$CHURN_DURATION" >"$out/churn.json" 2>"$out/churn.err" || echo "connchurn exited $?" >>"$out/note"
    record_proxies "$out/ticks.before" "$out/proxies.txt"
    snapshot_handshakes "$out/handshakes.after"
    stop_all
    note_proxy_logs "$out"
}

main() {
    ensure_base_tools
    ensure_oha
    bench_start
    RAW="$RESULTS/raw-tls"
    rm -rf "$RAW"
    mkdir -p "$RAW"
    log "mode $MODE: $REPS repetition(s); part 1: ${DURATION} s per load, setups $SETUPS, loads $LOADS"
    log "part 2: ${CHURN_DURATION} s of CONNECT churn, $CHURN_CONCURRENCY connections in flight"
    log "pinning: load tool on CPU $CLIENT_CPU; proxies, controller and servers on CPU $SUT_CPU"
    run_matrix
    local rep setup
    for ((rep = 1; rep <= REPS; rep++)); do
        for setup in strait-tcp-plain strait-tcp; do
            log "rep $rep/$REPS  connection churn  $setup"
            measure_churn "$setup" "$rep"
        done
    done
    write_meta "$RAW/meta.env" baseline=strait-plain "title=Strait bench: the cost of mutual TLS between the proxies" \
        sections=handshake-rate churn_duration="$CHURN_DURATION" churn_concurrency="$CHURN_CONCURRENCY" \
        "notes=part 2 client: bench/connchurn.py (Python asyncio, one thread) on CPU $CLIENT_CPU, $CHURN_CONCURRENCY connections in flight, ${CHURN_DURATION} s per repetition"
    python3 "$BENCH_DIR/report.py" "$RAW" >"$RESULTS/tls-latest.md"
    cat "$RESULTS/tls-latest.md"
    log "written: bench/results/tls-latest.md (raw output: bench/results/raw-tls/)"
}

main
