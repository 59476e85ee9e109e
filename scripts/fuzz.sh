#!/usr/bin/env bash
# `make fuzz` and the fuzz tier: every cargo-fuzz target in fuzz/ for FUZZ_SECONDS each (default 60),
# starting from its seed corpus (fuzz/seeds/<target>, from fixtures) plus what earlier runs found
# (fuzz/corpus/<target>, not committed). A crash fails the run and names the input to turn into a
# regression test. Needs the nightly toolchain (for the fuzz crate only) and cargo-fuzz.
set -euo pipefail
cd "$(dirname "$0")/.."
seconds=${FUZZ_SECONDS:-60}
if ! rustup toolchain list 2>/dev/null | grep -q '^nightly'; then
  if [ "${CI:-}" = true ]; then echo "[fuzz] FAILED: no nightly toolchain (rustup toolchain install nightly)" >&2; exit 2; fi
  echo "SKIPPED: no nightly toolchain (cargo fuzz needs it; rustup toolchain install nightly)"; exit 0
fi
if ! command -v cargo-fuzz >/dev/null 2>&1; then
  echo "[fuzz] cargo install --locked cargo-fuzz" >&2
  cargo install --locked -q cargo-fuzz >&2
fi
cd fuzz
echo "[fuzz] building the targets (nightly, address sanitizer)" >&2
cargo +nightly fuzz build -O >&2
targets=$(cargo +nightly fuzz list)
ran=0; runs_total=0
for t in $targets; do
  mkdir -p "corpus/$t"
  seeds=(); [ -d "seeds/$t" ] && seeds=("seeds/$t")
  dict=(); [ -f "dicts/$t.dict" ] && dict=("-dict=dicts/$t.dict")
  log=$(mktemp)
  echo "[fuzz] $t for ${seconds}s" >&2
  if ! cargo +nightly fuzz run -O "$t" "corpus/$t" "${seeds[@]}" -- -max_total_time="$seconds" \
      -print_final_stats=1 "${dict[@]}" >"$log" 2>&1; then
    tail -60 "$log" >&2
    echo "[fuzz] FAILED: $t crashed; the input is under fuzz/artifacts/$t/ (make it a regression test)" >&2
    exit 1
  fi
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo 0)
  echo "[fuzz] $t: $runs runs, 0 crashes" >&2
  runs_total=$((runs_total + runs)); ran=$((ran + 1)); rm -f "$log"
done
echo "ran: $ran targets, ${seconds}s each, $runs_total runs, 0 crashes"
