#!/usr/bin/env bash
# bench/policy.sh (`make bench-policy`): what the resilience policy stack costs (issue 7), written to
# bench/results/policy-latest.md. Same harness, pinning and app as bench/run.sh; see bench/README.md.
#   1. The Strait pair (mTLS) with the full policy stack on the service (request timeout 2s, retries
#      on 5xx with a 1s per-try timeout, circuit breaker after 5 consecutive failures, bulkhead of
#      1000, default balancer) against the same pair with no policy, same rates, same run.
#   2. Memory per destination service stack: proxy A talks to N services (one request each).
#
#   bench/policy.sh [--smoke]
#
# Environment (all optional):
#   BENCH_REPS=N  BENCH_DURATION=S  BENCH_CLIENT_CPU  BENCH_SUT_CPU  BENCH_KEEP   as for bench/run.sh
#   BENCH_LOADS="rate1000 rate5000"   the loads of part 1
#   BENCH_SERVICES=N                  services in part 2 (1000 full, 100 smoke)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
bench_args 14 "$@"

SETUPS="strait strait-policy"
LOADS=${BENCH_LOADS:-rate1000 rate5000}
STRAIT_TLS=${BENCH_STRAIT_TLS:-on}
if [[ $MODE == smoke ]]; then SERVICES=${BENCH_SERVICES:-100}; else SERVICES=${BENCH_SERVICES:-1000}; fi

mesh_services() { # N more services svc0..svcN-1 in the mesh file, all served by the bench app behind B
    local i
    for ((i = 0; i < SERVICES; i++)); do
        printf '  - name: svc%d\n    namespace: bench\n    ports: [{port: 8080, protocol: http}]\n    annotations: %s\n    endpoints:\n      - address: "127.0.0.1:%s"\n        proxy: "127.0.0.1:%s"\n        workload: bench-web\n' \
            "$i" "$SERVICE_ANNOTATIONS" "$APP_HTTP_PORT" "$B_INBOUND_PORT"
    done
}

measure_memory() { # measure_memory none|policy REP
    local variant=$1 rep=$2
    local out="$RAW/memory/$variant.$rep.json"
    RUN="$WORK/run/memory.$variant.$rep"
    mkdir -p "$RUN" "$RAW/memory"
    if [[ $variant == policy ]]; then SERVICE_ANNOTATIONS=$POLICY_ANNOTATIONS; else SERVICE_ANNOTATIONS='{}'; fi
    A_ADMIN_PORT="" B_ADMIN_PORT=""
    if ! MESH_EXTRA=mesh_services start_strait "$STRAIT_TLS" "$SERVICE_ANNOTATIONS"; then
        warn "memory $variant: the Strait pair did not start; see $RUN"
        echo "{\"services\": $SERVICES, \"ok\": 0, \"errors\": $SERVICES, \"first_error\": \"setup failed to start\", \"rss_first_kb\": 0, \"rss_after_kb\": 0}" >"$out"
        stop_all
        return 0
    fi
    client python3 "$BENCH_DIR/fanout.py" --proxy "127.0.0.1:$A_OUTBOUND_PORT" --services "$SERVICES" \
        --pid "${ROLE_PID[A]}" >"$out.tmp" 2>"$RUN/fanout.err" || warn "fanout.py exited $?"
    python3 - "$out.tmp" "$(proc_kb "$CONTROLLER_PID" VmRSS)" "$(scrape_handshakes "$A_ADMIN_PORT" outbound)" >"$out" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
r["controller_rss_kb"] = int(sys.argv[2])
r["handshakes"] = int(sys.argv[3])
print(json.dumps(r))
PY
    rm -f "$out.tmp"
    stop_all
}

main() {
    ensure_base_tools
    ensure_oha
    bench_start
    RAW="$RESULTS/raw-policy"
    rm -rf "$RAW"
    mkdir -p "$RAW"
    log "mode $MODE: $REPS repetition(s); part 1: ${DURATION} s per load, setups $SETUPS, loads $LOADS"
    log "part 2: $SERVICES services"
    log "pinning: load tool on CPU $CLIENT_CPU; proxies, controller and server on CPU $SUT_CPU"
    run_matrix
    local rep variant
    for ((rep = 1; rep <= REPS; rep++)); do
        for variant in none policy; do
            log "rep $rep/$REPS  memory per service ($SERVICES services)  $variant"
            measure_memory "$variant" "$rep"
        done
    done
    write_meta "$RAW/meta.env" baseline=strait "title=Strait bench: the cost of the resilience policy stack" \
        services="$SERVICES" \
        "notes=policy annotations of \`Strait + policy\`: $POLICY_ANNOTATIONS (balancer: default peak-EWMA); no request fails or is slow here, so this is the stack's cost on the happy path"
    python3 "$BENCH_DIR/report.py" "$RAW" >"$RESULTS/policy-latest.md"
    cat "$RESULTS/policy-latest.md"
    log "written: bench/results/policy-latest.md (raw output: bench/results/raw-policy/)"
}

main
