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
#   BENCH_SETUPS="direct strait haproxy nginx"   a subset, in this order (also: strait-plain, strait-policy)
#   BENCH_LOADS="rate1000 rate5000 max grpc"     a subset, in this order
#   BENCH_CLIENT_CPU=0 BENCH_SUT_CPU=1           pinning (see README)
#   BENCH_STRAIT_TLS=on      off: the strait setup without identity (plaintext between its proxies)
#   BENCH_KEEP=1             keep the temporary work dir (configs, logs, raw output)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_args 15 "$@"

SETUPS=${BENCH_SETUPS:-direct strait haproxy nginx}
LOADS=${BENCH_LOADS:-rate1000 rate5000 max grpc}

main() {
    ensure_base_tools
    need_tool haproxy haproxy || NA_SETUP[haproxy]="haproxy is not installed"
    need_tool nginx nginx || NA_SETUP[nginx]="nginx is not installed"
    need_tool h2load nghttp2-client || NA_LOAD[grpc]="h2load (nghttp2-client) is not installed"
    ensure_oha
    bench_start
    RAW="$RESULTS/raw"
    rm -rf "$RAW"
    mkdir -p "$RAW"
    make_certs

    log "mode $MODE: $REPS repetition(s), ${DURATION} s per load; setups: $SETUPS; loads: $LOADS"
    log "pinning: load tool on CPU $CLIENT_CPU; proxies, controller and server on CPU $SUT_CPU"
    run_matrix
    write_meta "$RAW/meta.env"
    mkdir -p "$RESULTS"
    python3 "$BENCH_DIR/report.py" "$RAW" >"$RESULTS/latest.md"
    cat "$RESULTS/latest.md"
    log "written: bench/results/latest.md (raw output: bench/results/raw/)"
}

main
