#!/usr/bin/env bash
# Makes sure the tools a test tier needs are present.
#   ensure-tools.sh TIER TOOL[=DEBIAN_PACKAGE]...
# As root, missing Debian packages are installed (apt-get update runs once per machine boot).
# Otherwise the tier is reported as skipped, and the script exits 1 so the caller can skip it.
# Under CI=true a tool that is still missing is a failure (exit 2), never a silent skip.
set -uo pipefail
tier=$1; shift
missing=()
for spec in "$@"; do
  tool=${spec%%=*}; pkg=${spec#*=}
  command -v "$tool" >/dev/null 2>&1 || missing+=("$tool=$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  stamp=/tmp/.strait-apt-updated
  if [ ! -e "$stamp" ]; then
    echo "[$tier] apt-get update" >&2
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >&2 && touch "$stamp"
  fi
  pkgs=(); for m in "${missing[@]}"; do pkgs+=("${m#*=}"); done
  echo "[$tier] installing ${pkgs[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >&2
  still=(); for m in "${missing[@]}"; do command -v "${m%%=*}" >/dev/null 2>&1 || still+=("${m%%=*}"); done
  missing=("${still[@]+"${still[@]}"}")
  [ ${#missing[@]} -eq 0 ] && exit 0
fi
names=(); for m in "${missing[@]}"; do names+=("${m%%=*}"); done
if [ "${CI:-}" = true ]; then
  echo "[$tier] FAILED: missing ${names[*]} (CI must run every tier)" >&2
  exit 2
fi
echo "[$tier] SKIPPED: missing ${names[*]} and not root, so they cannot be installed" >&2
exit 1
