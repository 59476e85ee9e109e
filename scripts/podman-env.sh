# shellcheck shell=bash
# Sourced by scripts/images.sh and scripts/tiers/40-images.sh: podman with a configuration and a
# storage of its own in a fresh temporary directory (CONTAINERS_CONF, CONTAINERS_STORAGE_CONF), so
# the host's containers.conf, storage.conf and images are never read or changed, and nothing is left
# behind. Each setting below is what a bare machine (this kind of VM, a CI runner) needs:
#
# - storage driver vfs: plain directories, no mounts, works on any file system and inside another
#   container (overlay on overlay does not); the images are small, so copying layers costs little.
# - cgroup_manager cgroupfs, events_logger file: no systemd as PID 1 and no journald needed.
# - runtime runc when installed: crun 1.8 (Debian 12) refuses a hybrid cgroup layout with "crun:
#   cgroups in hybrid mode not supported, drop all controllers from cgroupv2"; runc handles v1,
#   hybrid and v2.
# - default_ulimits: as root, podman asks for nofile=1048576, which fails without
#   CAP_SYS_RESOURCE ("setrlimit `RLIMIT_NOFILE`: Operation not permitted"); containers get the
#   caller's own open-files limit and a process limit a proxy or controller never reaches.
#
#   podman_env_init            creates the directory, writes the files, exports the variables
#   podman_env_cleanup         removes every container and image in it, then the directory (and
#                              ends rootless podman's pause process)
#   PODMAN_ENV_DIR             the directory

# A proxy or controller runs a few threads; the limit only has to be below what the caller may set.
PODMAN_ENV_NPROC=4096

podman_env_init() {
  PODMAN_ENV_DIR=$(mktemp -d "${TMPDIR:-/tmp}/strait-podman.XXXXXX")
  local nofile nproc runtime
  nofile=$(ulimit -Hn); [ "$nofile" = unlimited ] && nofile=1048576
  nproc=$(ulimit -Hu); { [ "$nproc" = unlimited ] || [ "$nproc" -gt "$PODMAN_ENV_NPROC" ]; } && nproc=$PODMAN_ENV_NPROC
  runtime=crun; command -v runc >/dev/null 2>&1 && runtime=runc
  mkdir -p "$PODMAN_ENV_DIR"/{graph,run,tmp,networks}
  cat >"$PODMAN_ENV_DIR/containers.conf" <<EOF
[containers]
default_ulimits = ["nofile=${nofile}:${nofile}", "nproc=${nproc}:${nproc}"]
[engine]
cgroup_manager = "cgroupfs"
events_logger = "file"
events_logfile_path = "$PODMAN_ENV_DIR/events.log"
runtime = "$runtime"
tmp_dir = "$PODMAN_ENV_DIR/tmp"
[network]
network_config_dir = "$PODMAN_ENV_DIR/networks"
EOF
  cat >"$PODMAN_ENV_DIR/storage.conf" <<EOF
[storage]
driver = "vfs"
graphroot = "$PODMAN_ENV_DIR/graph"
# Rootless podman reads this one instead of graphroot.
rootless_storage_path = "$PODMAN_ENV_DIR/graph"
runroot = "$PODMAN_ENV_DIR/run"
EOF
  export CONTAINERS_CONF="$PODMAN_ENV_DIR/containers.conf"
  export CONTAINERS_STORAGE_CONF="$PODMAN_ENV_DIR/storage.conf"
  # No registry is ever asked: an empty registries.conf, whatever the machine's says.
  export CONTAINERS_REGISTRIES_CONF="$PODMAN_ENV_DIR/registries.conf"
  : >"$CONTAINERS_REGISTRIES_CONF"
  # Rootless podman keeps its runtime files in XDG_RUNTIME_DIR (else /tmp/podman-run-UID) and its
  # blob cache in XDG_DATA_HOME: here too. (As root, that cache is /var/lib/containers/cache, which
  # no variable moves; it only records where blobs were seen.)
  if [ "$(id -u)" != 0 ]; then
    mkdir -m 0700 "$PODMAN_ENV_DIR/xdg" "$PODMAN_ENV_DIR/data"
    [ -n "${XDG_RUNTIME_DIR:-}" ] || export XDG_RUNTIME_DIR="$PODMAN_ENV_DIR/xdg"
    export XDG_DATA_HOME="$PODMAN_ENV_DIR/data"
  fi
}

podman_env_cleanup() {
  [ -n "${PODMAN_ENV_DIR:-}" ] && [ -d "$PODMAN_ENV_DIR" ] || return 0
  podman rm --all --force >/dev/null 2>&1 || true
  podman rmi --all --force >/dev/null 2>&1 || true
  # vfs makes no mounts, but a container's /dev/shm is one: make sure none is left before removing.
  local m
  for m in $(findmnt -rn -o TARGET 2>/dev/null | grep -F "$PODMAN_ENV_DIR" | sort -r); do umount "$m" 2>/dev/null || true; done
  # Rootless podman leaves a pause process holding its user namespace; its pid is in tmp_dir.
  local pause
  pause=$(cat "$PODMAN_ENV_DIR/tmp/pause.pid" 2>/dev/null || true)
  [ -n "$pause" ] && kill "$pause" 2>/dev/null
  rm -rf "$PODMAN_ENV_DIR"
}
