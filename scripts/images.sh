#!/usr/bin/env bash
# `make images`: the strait-proxy and strait-controller container images, as OCI archives in
# ${CARGO_TARGET_DIR:-target}/images/ (strait-proxy.oci.tar, strait-controller.oci.tar; image names
# strait-proxy:<version>, strait-controller:<version>, in full docker.io/library/strait-proxy:<version>).
#
#   scripts/images.sh [--profile release|debug] [--no-build] [--out DIR]
#
# release (default): `cargo build --release` of the two binaries first (fat LTO: slow).
# debug: the binaries already in target/debug (`make build` or `make test` built them; built with
#   `cargo build --workspace --bins` only when missing). --no-build: never run cargo.
# --out DIR: write the archives there instead.
#
# No registry is needed: each image is FROM scratch plus a root file system staged here from this
# machine's files — the binary, exactly the shared objects `ldd` says it loads (glibc's libc, libm,
# libgcc_s and the ELF interpreter, the same files the binary was linked against), for the proxy
# also the iptables tools `strait-proxy init` runs (dlopen'd xtables extensions included), and
# /etc/passwd and /etc/group with the image's user. A debootstrapped Debian base would bring a
# shell, a package manager and ~100 MB, and a second glibc to keep in step with the build host's.
# podman builds and saves with a private configuration and storage (scripts/podman-env.sh); the
# build has no RUN step, so it needs no container runtime.
set -euo pipefail
cd "$(dirname "$0")/.."

profile=${PROFILE:-release}
build=1
out=
while [ $# -gt 0 ]; do
  case $1 in
    --profile) profile=${2:?--profile needs release or debug}; shift 2 ;;
    --profile=*) profile=${1#*=}; shift ;;
    --no-build) build=0; shift ;;
    --out) out=${2:?--out needs a directory}; shift 2 ;;
    -h|--help) sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "images: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
case $profile in release|debug) ;; *) echo "images: --profile is release or debug, not $profile" >&2; exit 2 ;; esac

target=${CARGO_TARGET_DIR:-target}
bindir=$target/$profile
out=${out:-$target/images}
say() { echo "[images] $*" >&2; }

# The proxy image carries the iptables tools of `strait-proxy init`; they come from Debian's iptables.
rc=0; ./scripts/ensure-tools.sh images podman=podman || rc=$?
[ "$rc" = 0 ] || { say "podman is needed to build the images"; exit "$rc"; }
if [ ! -x /usr/sbin/xtables-nft-multi ] || [ ! -x /usr/sbin/xtables-legacy-multi ]; then
  if [ "$(id -u)" = 0 ]; then
    PATH=/usr/sbin:$PATH ./scripts/ensure-tools.sh images xtables-nft-multi=iptables || exit $?
  else
    say "the proxy image needs Debian's iptables (/usr/sbin/xtables-nft-multi): apt-get install iptables"
    exit 1
  fi
fi

bins=(strait-proxy strait-controller)
if [ "$build" = 1 ]; then
  if [ "$profile" = release ]; then
    say "cargo build --release (fat LTO: minutes)"
    cargo build --release -p strait-proxy -p strait-controller
  else
    for b in "${bins[@]}"; do
      [ -x "$bindir/$b" ] || { say "$bindir/$b missing: cargo build --workspace --bins"; cargo build --workspace --bins; break; }
    done
  fi
fi
for b in "${bins[@]}"; do
  [ -x "$bindir/$b" ] || { say "$bindir/$b not built (make build, or make images without --no-build)"; exit 1; }
done

# One fact in one place: the version is what the binary says it is.
version=$("$bindir/strait-proxy" --version | awk '{print $2}')
cversion=$("$bindir/strait-controller" --version | awk '{print $2}')
[ "$version" = "$cversion" ] || { say "version mismatch: proxy $version, controller $cversion"; exit 1; }
revision=$(git rev-parse HEAD 2>/dev/null || echo unknown)
if [ "$revision" != unknown ] && ! git diff --quiet HEAD -- 2>/dev/null; then revision="$revision-dirty"; fi
source=$(git config --get remote.origin.url 2>/dev/null || git rev-parse --show-toplevel 2>/dev/null || pwd)
# The last commit's time, so two builds of one commit carry the same dates (and file times).
epoch=$(git log -1 --format=%ct 2>/dev/null || date +%s)
created=$(date -u -d "@$epoch" +%Y-%m-%dT%H:%M:%SZ)

# copy_libs ROOT FILE...: every shared object ldd says each file loads (the ELF interpreter
# included) into ROOT at the path ldd found it, symbolic links resolved.
copy_libs() {
  local root=$1 f lib; shift
  for f in "$@"; do
    ldd "$f" >/dev/null 2>&1 || continue # statically linked
    for lib in $(ldd "$f" | awk '$2 == "=>" && $3 ~ /^\// {print $3} $1 ~ /^\// {print $1}'); do
      [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
  done
}

# copy_elf ROOT FILE...: each file into ROOT at its own path, with its shared objects.
copy_elf() {
  local root=$1 f; shift
  for f in "$@"; do install -D -m 0755 "$f" "$root$f"; done
  copy_libs "$root" "$@"
}

# base_files ROOT UID NAME: users and groups, name lookup through files only, /tmp.
base_files() {
  local root=$1 uid=$2 name=$3
  mkdir -p "$root/etc" "$root/tmp" "$root/run"
  chmod 1777 "$root/tmp"
  printf '%s\n' "root:x:0:0:root:/root:/sbin/nologin" "$name:x:$uid:$uid:$name:/nonexistent:/sbin/nologin" \
    "nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin" >"$root/etc/passwd"
  printf '%s\n' "root:x:0:" "$name:x:$uid:" "nobody:x:65534:" >"$root/etc/group"
  printf '%s\n' "passwd: files" "group: files" "hosts: files dns" >"$root/etc/nsswitch.conf"
}

# iptables ROOT: the nft and legacy multi-call binaries under the names `strait-proxy init` looks
# for, their extensions (loaded with dlopen, so ldd cannot see them) and /etc/protocols.
iptables_files() {
  local root=$1 xt m fam tool
  xt=$(dpkg -L iptables 2>/dev/null | grep -m1 '/xtables$' || true)
  if [ -z "$xt" ] || [ ! -d "$xt" ]; then say "iptables extensions not found (dpkg -L iptables)"; exit 1; fi
  copy_elf "$root" /usr/sbin/xtables-nft-multi /usr/sbin/xtables-legacy-multi "$xt"/*.so
  for m in nft legacy; do
    for fam in iptables ip6tables; do
      for tool in "$fam-$m" "$fam-$m-save" "$fam-$m-restore"; do ln -sf "xtables-$m-multi" "$root/usr/sbin/$tool"; done
    done
  done
  [ -e /etc/protocols ] && install -m 0644 /etc/protocols "$root/etc/protocols"
  return 0
}

# shellcheck source=scripts/podman-env.sh
source scripts/podman-env.sh
podman_env_init
stage=$(mktemp -d "${TMPDIR:-/tmp}/strait-images.XXXXXX")
trap 'podman_env_cleanup; rm -rf "$stage"' EXIT
mkdir -p "$out"

for b in "${bins[@]}"; do
  case $b in
    strait-proxy) dir=proxy; uid=7102 ;;
    strait-controller) dir=controller; uid=65532 ;;
  esac
  # Kubernetes reads an image name without a registry, `strait-proxy:0.1.0`, as
  # docker.io/library/strait-proxy:0.1.0: the archive carries that name, so an image loaded into a
  # node's containerd (kind load image-archive, ctr images import) is found under it.
  ref=docker.io/library/$b:$version
  root=$stage/$dir/rootfs
  mkdir -p "$root/usr/local/bin"
  install -m 0755 "$bindir/$b" "$root/usr/local/bin/$b"
  copy_libs "$root" "$bindir/$b"
  base_files "$root" "$uid" "$b"
  [ "$b" = strait-proxy ] && iptables_files "$root"
  say "building $b:$version ($profile, $(du -sh "$root" | cut -f1) staged)"
  podman build --quiet --format oci --timestamp "$epoch" -f "images/$dir/Containerfile" -t "$ref" \
    --build-arg VERSION="$version" --build-arg REVISION="$revision" --build-arg SOURCE="$source" \
    --build-arg CREATED="$created" --build-arg PROFILE="$profile" "$stage/$dir" >/dev/null
  rm -f "$out/$b.oci.tar"
  podman save --quiet --format oci-archive -o "$out/$b.oci.tar" "$ref"
  echo "$out/$b.oci.tar  $ref  $(du -h "$out/$b.oci.tar" | cut -f1)"
done
