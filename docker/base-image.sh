#!/usr/bin/env bash
# Make sure a Python 3.11 base image exists in the local Docker engine and print its reference.
#
#   BASE=$(docker/base-image.sh)     # last stdout line = image to pass as BASE_IMAGE
#
# 1. BASE_IMAGE (default python:3.11-slim-bookworm) already present -> use it.
# 2. FALLBACK_TAG (default fedtrack/base:bookworm-py3.11) already present -> use it (cache).
# 3. `docker pull BASE_IMAGE` works -> use it (set BASE_PULL=0 to skip trying).
# 4. Otherwise build FALLBACK_TAG from Debian packages: debootstrap a minbase bookworm with
#    python3 (3.11), python3-venv, python3-pip, ca-certificates; strip apt caches and docs;
#    `docker import` it. Needs root (installs debootstrap with apt-get if it is missing).
#
# Python lives at /usr/bin/python3 in the fallback and /usr/local/bin/python3 in python:*-slim:
# Dockerfiles must call plain `python3` (e.g. `python3 -m venv /opt/venv`).
# To rebuild the fallback: docker rmi fedtrack/base:bookworm-py3.11 (or FORCE=1).
#
# Environment: BASE_IMAGE, FALLBACK_TAG, BASE_PULL, FORCE, DEBIAN_MIRROR
#   (default http://deb.debian.org/debian), DEBIAN_SUITE (default bookworm).
set -euo pipefail

log() { printf '[base-image] %s\n' "$*" >&2; }
die() { printf '[base-image] ERROR: %s\n' "$*" >&2; exit 1; }

BASE_IMAGE="${BASE_IMAGE:-python:3.11-slim-bookworm}"
FALLBACK_TAG="${FALLBACK_TAG:-fedtrack/base:bookworm-py3.11}"
DEBIAN_MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"
DEBIAN_SUITE="${DEBIAN_SUITE:-bookworm}"
FORCE="${FORCE:-0}"

command -v docker >/dev/null || die "docker CLI not found: install Docker (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon: start dockerd or check DOCKER_HOST/permissions"

have_image() { docker image inspect "$1" >/dev/null 2>&1; }

if [[ "$FORCE" != 1 ]]; then
  if have_image "$BASE_IMAGE"; then log "$BASE_IMAGE is present locally"; echo "$BASE_IMAGE"; exit 0; fi
  if have_image "$FALLBACK_TAG"; then log "using cached fallback $FALLBACK_TAG ($BASE_IMAGE not present)"; echo "$FALLBACK_TAG"; exit 0; fi
  if [[ "${BASE_PULL:-1}" != 0 ]]; then
    log "trying docker pull $BASE_IMAGE"
    if timeout 300 docker pull -q "$BASE_IMAGE" >/dev/null 2>&1; then
      log "pulled $BASE_IMAGE"; echo "$BASE_IMAGE"; exit 0
    fi
    log "pull failed (no registry reachable?); building $FALLBACK_TAG from Debian packages instead"
  fi
fi

[[ "$(id -u)" == 0 ]] || die "building the fallback base needs root (debootstrap + apt-get); rerun as root or make $BASE_IMAGE available"
[[ "$(uname -m)" == x86_64 ]] || die "fallback base is only set up for x86_64 (got $(uname -m))"

if ! command -v debootstrap >/dev/null; then
  log "installing debootstrap with apt-get"
  export DEBIAN_FRONTEND=noninteractive
  aptlog="$(mktemp)"
  { apt-get update -qq && apt-get install -y -qq --no-install-recommends debootstrap; } >"$aptlog" 2>&1 \
    || { tail -n 15 "$aptlog" >&2; die "apt-get install debootstrap failed: check the Debian mirror in /etc/apt/sources.list*"; }
  rm -f "$aptlog"
fi

# Work dir on real disk (debootstrap needs device nodes / exec, so no noexec tmpfs).
work="$(mktemp -d "${TMPDIR:-/var/tmp}/fedtrack-base.XXXXXX")"
rootfs="$work/rootfs"
cleanup() {
  # debootstrap bind-mounts /dev, /proc, /sys into the target: never rm -rf across a mount.
  if [[ -d "$rootfs" ]]; then
    awk -v r="$rootfs" '$5 == r || index($5, r "/") == 1 {print $5}' /proc/self/mountinfo | sort -r \
      | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  fi
  rm -rf --one-file-system "$work"
}
trap cleanup EXIT

log "debootstrap --variant=minbase $DEBIAN_SUITE from $DEBIAN_MIRROR into $rootfs"
start=$SECONDS
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    "$DEBIAN_SUITE" "$rootfs" "$DEBIAN_MIRROR" >"$work/debootstrap.log" 2>&1 \
  || { tail -n 20 "$work/debootstrap.log" >&2; [[ -f "$rootfs/debootstrap/debootstrap.log" ]] && tail -n 20 "$rootfs/debootstrap/debootstrap.log" >&2
       die "debootstrap failed: check DEBIAN_MIRROR=$DEBIAN_MIRROR is reachable"; }
log "debootstrap done in $((SECONDS - start)) s"

py_version="$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])')" \
  || die "python3 does not run inside the debootstrapped tree"
[[ "$py_version" == 3.11.* ]] || die "debootstrap gave Python $py_version, need 3.11 (cp311 wheels): use DEBIAN_SUITE=bookworm"
chroot "$rootfs" python3 -m venv --help >/dev/null || die "python3 -m venv is missing in the debootstrapped tree"

log "stripping apt caches, lists, docs, man pages and locales (python $py_version)"
rm -rf "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/cache/apt/archives/partial/* \
       "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/log/* "$rootfs"/debootstrap \
       "$rootfs"/usr/share/man/* "$rootfs"/usr/share/info/* "$rootfs"/usr/share/locale/* \
       "$rootfs"/usr/share/doc-base "$rootfs"/usr/share/lintian "$rootfs"/tmp/* "$rootfs"/var/tmp/*
find "$rootfs/usr/share/doc" -mindepth 1 -not -name copyright -not -type d -delete 2>/dev/null || true
find "$rootfs/usr/share/doc" -mindepth 1 -type d -empty -delete 2>/dev/null || true
# Like the official images: keep apt from re-filling the caches in derived images.
cat >"$rootfs/etc/apt/apt.conf.d/docker-clean" <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache ""; Dir::Cache::srcpkgcache "";
EOF
printf 'deb %s %s main\ndeb %s %s-updates main\n' "$DEBIAN_MIRROR" "$DEBIAN_SUITE" "$DEBIAN_MIRROR" "$DEBIAN_SUITE" \
  >"$rootfs/etc/apt/sources.list"
: >"$rootfs/etc/hostname"
: >"$rootfs/etc/resolv.conf"

log "importing $(du -sh --one-file-system "$rootfs" | cut -f1) rootfs as $FALLBACK_TAG"
start=$SECONDS
created="$(date -u +%Y-%m-%dT%H:%M:%SZ)"
tar --numeric-owner --one-file-system -C "$rootfs" -c . | docker import \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV PYTHONUNBUFFERED=1' \
    --change 'WORKDIR /' \
    --change 'CMD ["python3"]' \
    --change "LABEL org.opencontainers.image.title=fedtrack-base org.opencontainers.image.base.name=debian:$DEBIAN_SUITE org.opencontainers.image.created=$created fedtrack.python.version=$py_version" \
    --message "debootstrap --variant=minbase $DEBIAN_SUITE + python3 $py_version" \
    - "$FALLBACK_TAG" >/dev/null || die "docker import failed: check free space in the Docker root dir"
docker run --rm "$FALLBACK_TAG" python3 -c 'import ssl, venv, ensurepip' >/dev/null 2>&1 \
  || die "imported $FALLBACK_TAG cannot run python3 with ssl/venv/ensurepip"
log "imported in $((SECONDS - start)) s: $FALLBACK_TAG ($(docker image inspect -f '{{.Size}}' "$FALLBACK_TAG" | awk '{printf "%.0f MB", $1/1e6}'))"
echo "$FALLBACK_TAG"
