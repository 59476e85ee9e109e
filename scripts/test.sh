#!/usr/bin/env bash
# `make test`: builds once into the shared target dir, then runs every tier.
# Tiers that need tools this machine lacks are installed when root, reported as skipped otherwise,
# and fail under CI=true.
set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
summary=()

echo "== build (debug, whole workspace, one target dir)"
cargo build --workspace --bins --tests

echo "== proxy dependencies"
./scripts/check-proxy-deps.sh

echo "== unit, integration and end-to-end tests (real processes on loopback)"
# The end-to-end tests start many processes; two test threads keep a 2-core machine responsive.
cargo test --workspace --no-fail-fast -- --test-threads="${STRAIT_TEST_THREADS:-2}"
summary+=("loopback tiers: ran")

echo "== summary ($(( $(date +%s) - start ))s)"
printf '  %s\n' "${summary[@]}"
