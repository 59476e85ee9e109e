#!/usr/bin/env bash
# Fuzz tier: every cargo-fuzz target for FUZZ_SECONDS (30 s here unless set); see scripts/fuzz.sh.
set -euo pipefail
cd "$(dirname "$0")/../.."
FUZZ_SECONDS=${FUZZ_SECONDS:-30} exec ./scripts/fuzz.sh
