#!/usr/bin/env bash
# Build the project's Docker images from scratch on a machine with no container registry:
#   1. docker/ensure-compose.sh   Compose v2 CLI plugin (for the compose files that use the images)
#   2. docker/base-image.sh       Python 3.11 base (pulled, or debootstrapped + imported)
#   3. docker/wheelhouse.sh       wheels for both images in build/wheelhouse/{tools,mlflow,flare},
#                                 exactly the files of docker/{tools,mlflow,flare}.lock
#   4. docker build                fedtrack/mlflow:<mlflow pin> and fedtrack/flare:<nvflare pin>
#   Steps 2-4 overlap: each starts as soon as what it needs is there (see below).
#      (context: build/context/<image>/ = locks/ (its lock and tools.lock) + rootfs/ with the repo files it holds)
# Each build installs its venv once, in one RUN, with uv from wheels served by a throwaway
# container that has no network (see docker/flare.Dockerfile); no build stage or cache image is kept.
# Right before a build, its wheel directories are checked against the committed locks (every file's
# sha256, `docker/wheelhouse.sh --verify`): a changed, missing or extra wheel stops it with one line
# naming the file; inside, pip and uv install the same locks with --require-hashes.
# Tags come from requirements.txt. A build is skipped when an image with that tag carries a
# fedtrack.build-hash label equal to the hash of its Dockerfile, its locks, its wheelhouse stamps,
# the base image ID and its rootfs files (FORCE=1 rebuilds; not passed on to steps 1-3). After an
# edit of those files only the last two steps run again: the venv layer is reused.
#
# Environment:
#   BASE_IMAGE        preferred base (see docker/base-image.sh)
#   SKIP_COMPOSE=1    do not install the Compose plugin
#   CONTEXT_OUT=DIR   also copy each build context (what the daemon is sent) to DIR/<image>/
#   plus everything docker/wheelhouse.sh reads (TORCH_INDEX_URL, PIP_EXTRA_ARGS, ...)
# The legacy builder is used (DOCKER_BUILDKIT=0) whatever the environment says: BuildKit cannot
# share a container's network namespace, which is how the build reaches the wheels.
set -euo pipefail

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="${REQUIREMENTS:-$ROOT/requirements.txt}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
WHEELHOUSE_DIR="${WHEELHOUSE_DIR:-$BUILD_DIR/wheelhouse}"
LOCK_DIR="${LOCK_DIR:-$ROOT/docker}"
export REQUIREMENTS WHEELHOUSE_DIR LOCK_DIR
export DOCKER_BUILDKIT=0
FORCE_BUILD="${FORCE:-0}"
unset FORCE   # FORCE=1 means "rebuild the images", not "re-download / re-debootstrap"

[[ -f "$REQUIREMENTS" ]] || die "pins file $REQUIREMENTS not found"
command -v docker >/dev/null || die "docker CLI not found: install Docker (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon: start dockerd or check DOCKER_HOST/permissions"

pin() {  # pin NAME -> version pinned with == in requirements.txt (fedtrack/pins.py, the one reader)
  (cd "$ROOT" && python3 -m fedtrack.pins "$1") || die "fix the pins in $REQUIREMENTS (see above)"
}
NVFLARE_VERSION="$(pin nvflare)"
MLFLOW_VERSION="$(pin mlflow)"
TORCH_VERSION="$(pin torch)"

total=$SECONDS
if [[ "${SKIP_COMPOSE:-0}" != 1 ]]; then
  log "step 1/4: ensure docker compose v2"
  "$ROOT/docker/ensure-compose.sh"
fi

# Pipelined: the base image is made while the wheels download; the MLflow image builds while the
# FLARE wheels (the bulk) download; the FLARE image builds as soon as they are there.
log "steps 2-4/4: base image, wheelhouse and images, side by side"
BASE_OUT="$(mktemp)"
trap 'rm -f "$BASE_OUT"' EXIT
start=$SECONDS
"$ROOT/docker/base-image.sh" >"$BASE_OUT" &
base_pid=$!
"$ROOT/docker/wheelhouse.sh" tools mlflow || { wait "$base_pid" || true; die "docker/wheelhouse.sh failed"; }
wait "$base_pid" || die "docker/base-image.sh failed"
BASE="$(tail -n1 "$BASE_OUT")"
[[ -n "$BASE" ]] || die "docker/base-image.sh printed no image"
log "base image: $BASE ($((SECONDS - start)) s)"
base_id="$(docker image inspect -f '{{.Id}}' "$BASE")"

# The repo files each image holds: "source:path-in-image" (staged as rootfs/<path-in-image>).
image_files() {
  local f
  case "$1" in
    flare) echo "$ROOT/docker/flare-entrypoint.sh:usr/local/bin/fedtrack-entrypoint"
           # The fedtrack package's source (pyproject.toml names what it holds), installed by the Dockerfile.
           echo "$ROOT/pyproject.toml:opt/fedtrack-src/pyproject.toml"
           # (fedtrack/job links to job/: staged as the files themselves.)
           while IFS= read -r f; do echo "$ROOT/$f:opt/fedtrack-src/fedtrack/${f#fedtrack/}"; done \
             < <(cd "$ROOT" && find fedtrack job -path fedtrack/job -prune -o \( -name '*.py' -o -name '*.json' \) -print \
                 | LC_ALL=C sort) ;;
    mlflow) echo "$ROOT/docker/mlflow-site.py:usr/local/bin/fedtrack-mlflow" ;;
  esac
}

# serve_wheels: start a container, with no network, serving WHEELHOUSE_DIR on its 127.0.0.1:8765; prints its ID.
serve_wheels() {
  local id i
  id="$(docker run -d --rm --network none --read-only -v "$WHEELHOUSE_DIR:/wheels:ro" -w /wheels \
          --label fedtrack.role=wheel-server "$BASE" python3 -m http.server 8765 --bind 127.0.0.1)"
  for i in $(seq 50); do
    docker exec "$id" python3 -c 'import urllib.request as u; u.urlopen("http://127.0.0.1:8765/tools/")' \
      >/dev/null 2>&1 && { echo "$id"; return; }
    sleep 0.2
  done
  docker rm -f "$id" >/dev/null 2>&1 || true
  die "the wheel server container did not start"
}

# build_ticker TAG LOG OWNER_PID (run it in the background while `docker build` writes LOG): every 20 s
# one line on stderr, the tag, the newest legacy-builder step in LOG ("Step 7/12 : RUN ..." gives
# "step 7/12 (RUN)") and the time since it started. Quiet between ticks; ends on SIGTERM (its sleep
# too) or at the first tick after OWNER_PID is gone.
build_ticker() {
  local tag="$1" buildlog="$2" owner="$3" began=$SECONDS sleeper="" line step elapsed
  trap 'kill "$sleeper" 2>/dev/null; exit 0' TERM
  while :; do
    sleep 20 & sleeper=$!
    wait "$sleeper" || true
    kill -0 "$owner" 2>/dev/null || exit 0
    line="$(grep -E '^[0-9:]+ Step [0-9]+/[0-9]+ : ' "$buildlog" 2>/dev/null | tail -n 1 || true)"
    step="no step yet"
    if [[ "$line" =~ \ Step\ ([0-9]+/[0-9]+)\ :\ ([A-Za-z]+) ]]; then
      step="step ${BASH_REMATCH[1]} (${BASH_REMATCH[2]^^})"
    fi
    elapsed=$((SECONDS - began))
    log "$(printf '%s: %s, %dm%02ds' "$tag" "$step" $((elapsed / 60)) $((elapsed % 60)))"
  done
}

# build NAME TAG BUILD_ARGS... (exits 3 when a wheel does not match its lock: that one line says it all)
build() {
  local name="$1" tag="$2"; shift 2
  local dockerfile="$ROOT/docker/$name.Dockerfile" wheels="$WHEELHOUSE_DIR/$name"
  local locks=("$LOCK_DIR/$name.lock" "$LOCK_DIR/tools.lock")
  local ctx="$BUILD_DIR/context/$name" buildlog="$BUILD_DIR/docker-build-$name.log"
  local hash current old_id start spec src server ticker verified rc=0 files=()
  [[ -f "$dockerfile" ]] || die "$dockerfile missing"
  [[ -f "${locks[0]}" && -f "${locks[1]}" ]] || die "${locks[*]}: a lock is missing: run make lock"
  [[ -f "$wheels/requirements.txt" ]] || die "$wheels/requirements.txt missing: run docker/wheelhouse.sh"
  while IFS= read -r spec; do
    [[ -n "$spec" ]] || continue
    src="${spec%%:*}"
    [[ -f "$src" ]] || die "$src missing: the $name image needs it (see docker/$name.Dockerfile)"
    files+=("$spec")
  done < <(image_files "$name")
  hash="$( { cat "$dockerfile" "${locks[@]}"; (cd "$WHEELHOUSE_DIR" && ls "$name"/.stamp-* tools/.stamp-*)
             echo "$base_id"; for spec in "${files[@]}"; do echo "${spec##*:}"; cat "${spec%%:*}"; done; } \
           | sha256sum | cut -c1-16)"
  current="$(docker image inspect -f '{{ index .Config.Labels "fedtrack.build-hash" }}' "$tag" 2>/dev/null || true)"
  old_id="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  if [[ "$current" == "$hash" && "$FORCE_BUILD" != 1 ]]; then
    log "$tag is up to date (build-hash $hash), skipping"
    return
  fi

  # The wheels the build will install are the locked ones, byte for byte (whatever the stamps say).
  start=$SECONDS
  verified="$(mktemp)"
  "$ROOT/docker/wheelhouse.sh" --verify "$WHEELHOUSE_DIR/tools" "${locks[1]}" 2>"$verified" \
    && "$ROOT/docker/wheelhouse.sh" --verify "$wheels" "${locks[0]}" 2>"$verified" \
    || { cat "$verified" >&2 || true; rm -f "$verified"; exit 3; }
  rm -f "$verified"
  log "$name: every wheel has the sha256 its lock lists ($((SECONDS - start)) s)"

  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs" "$ctx/locks"
  cp "${locks[@]}" "$ctx/locks/"
  for spec in "${files[@]}"; do
    install -D -m 0755 "${spec%%:*}" "$ctx/rootfs/${spec##*:}"
  done
  # CONTEXT_OUT: a copy of exactly what the daemon is sent (the secret scan's test reads it).
  [[ -z "${CONTEXT_OUT:-}" ]] || { mkdir -p "$CONTEXT_OUT"; cp -a "$ctx" "$CONTEXT_OUT/$name"; }
  server="$(serve_wheels)"
  log "building $tag from docker/$name.Dockerfile, base $BASE, wheels from container ${server:0:12}; log: $buildlog"
  start=$SECONDS
  # A line every 20 s while it builds (the two builds run side by side: each names its tag).
  build_ticker "$tag" "$buildlog" "$BASHPID" &
  ticker=$!
  # fedtrack.build-hash is set by the Dockerfile from BUILD_HASH (a CLI --label would add
  # one more slow commit step after the venv with the legacy builder).
  docker build --pull=false --network "container:$server" -f "$dockerfile" -t "$tag" \
      --build-arg "BASE_IMAGE=$BASE" --build-arg "BUILD_HASH=$hash" "$@" \
      "$ctx" 2>&1 | while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done >"$buildlog" \
    || rc=$?
  kill "$ticker" 2>/dev/null || true
  wait "$ticker" 2>/dev/null || true
  docker rm -f "$server" >/dev/null 2>&1 || true
  if (( rc != 0 )); then
    tail -n 30 "$buildlog" >&2
    die "docker build of $tag failed (full log: $buildlog)"
  fi
  log "built $tag in $((SECONDS - start)) s"
  rm -rf "$ctx"; rmdir "$BUILD_DIR/context" 2>/dev/null || true
  # The image this tag pointed at before is now untagged: drop it unless a container uses it
  # (its venv layer stays: the new image is built on it).
  if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 && log "removed the previous $tag (${old_id:7:12})" || true
  fi
  # Builds before this one kept their build stage (~9 GB for flare): gone for good.
  docker rmi "fedtrack/build-cache:$name" >/dev/null 2>&1 && log "removed the old fedtrack/build-cache:$name" || true
}

# not_built RC WHAT: stop after a failed build; a wheel that failed its lock (3) has said so in one line.
not_built() {
  (( $1 != 3 )) || exit 1
  die "the $2 image was not built (see above)"
}
build mlflow "fedtrack/mlflow:$MLFLOW_VERSION" --build-arg "MLFLOW_VERSION=$MLFLOW_VERSION" &
mlflow_pid=$!
"$ROOT/docker/wheelhouse.sh" flare || { wait "$mlflow_pid" || true; die "docker/wheelhouse.sh failed"; }
log "wheelhouse ready ($((SECONDS - start)) s)"
build flare "fedtrack/flare:$NVFLARE_VERSION" --build-arg "NVFLARE_VERSION=$NVFLARE_VERSION" \
      --build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "MLFLOW_VERSION=$MLFLOW_VERSION" &
flare_pid=$!
wait "$mlflow_pid" || { rc=$?; wait "$flare_pid" || true; not_built "$rc" MLflow; }
wait "$flare_pid" || not_built "$?" FLARE
docker image prune -f --filter label=fedtrack.stage=build >/dev/null 2>&1 || true  # stages of older builds

log "done in $((SECONDS - total)) s; images:"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E "^(fedtrack/flare:$NVFLARE_VERSION|fedtrack/mlflow:$MLFLOW_VERSION|${BASE//./\\.})[[:space:]]" >&2 || true
