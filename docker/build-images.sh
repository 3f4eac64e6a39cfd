#!/usr/bin/env bash
# Build the project's Docker images from scratch on a machine with no container registry:
#   1. docker/ensure-compose.sh   Compose v2 CLI plugin (for the compose files that use the images)
#   2. docker/base-image.sh       Python 3.11 base (pulled, or debootstrapped + imported)
#   3. docker/wheelhouse.sh       wheels for both images in build/wheelhouse/{flare,mlflow}
#   4. docker build                fedtrack/flare:<nvflare pin>, fedtrack/mlflow:<mlflow pin>
#      (context: build/context/<image>/ = hard links to its wheelhouse + docker/flare-entrypoint.sh)
# Tags come from requirements.txt. A build is skipped when an image with that tag carries a
# fedtrack.build-hash label equal to the hash of its Dockerfile, its pins, its wheelhouse stamp,
# the base image ID and its extra context files (FORCE=1 rebuilds; not passed on to steps 1-3).
#
# Environment:
#   BASE_IMAGE        preferred base (see docker/base-image.sh)
#   DOCKER_BUILDKIT   default 0 here: the engine has no buildx, the Dockerfiles need no BuildKit
#   PRUNE_BUILD_STAGE 1 drops the multi-stage `build` leftovers (wheel copy + venv: ~8.6 GB for flare,
#                     ~1 GB for mlflow). By default the newest is kept, tagged fedtrack/build-cache:<image>,
#                     so that edits to the final stage (e.g. docker/flare-entrypoint.sh) rebuild in seconds;
#                     older ones (images labelled fedtrack.stage=build) are always pruned.
#   SKIP_COMPOSE=1    do not install the Compose plugin
#   plus everything docker/wheelhouse.sh reads (TORCH_INDEX_URL, PIP_EXTRA_ARGS, ...)
set -euo pipefail

log() { printf '[build-images] %s\n' "$*" >&2; }
die() { printf '[build-images] ERROR: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="${REQUIREMENTS:-$ROOT/requirements.txt}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build}"
WHEELHOUSE_DIR="${WHEELHOUSE_DIR:-$BUILD_DIR/wheelhouse}"
export REQUIREMENTS WHEELHOUSE_DIR
export DOCKER_BUILDKIT="${DOCKER_BUILDKIT:-0}"
FORCE_BUILD="${FORCE:-0}"
unset FORCE   # FORCE=1 means "rebuild the images", not "re-download / re-debootstrap"

[[ -f "$REQUIREMENTS" ]] || die "pins file $REQUIREMENTS not found"
command -v docker >/dev/null || die "docker CLI not found: install Docker (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "cannot talk to the Docker daemon: start dockerd or check DOCKER_HOST/permissions"

pin() {  # pin NAME -> version pinned with == in requirements.txt
  local v
  v="$(sed -n -E "s/^[[:space:]]*$1(\[[^]]*\])?[[:space:]]*==[[:space:]]*([^[:space:];#]+).*/\2/Ip" "$REQUIREMENTS" | head -n1)"
  [[ -n "$v" ]] || die "no '$1==<version>' pin in $REQUIREMENTS: add one"
  echo "$v"
}
NVFLARE_VERSION="$(pin nvflare)"
MLFLOW_VERSION="$(pin mlflow)"
TORCH_VERSION="$(pin torch)"

total=$SECONDS
if [[ "${SKIP_COMPOSE:-0}" != 1 ]]; then
  log "step 1/4: ensure docker compose v2"
  "$ROOT/docker/ensure-compose.sh"
fi

log "step 2/4: ensure base image"
start=$SECONDS
BASE="$("$ROOT/docker/base-image.sh" | tail -n1)"
[[ -n "$BASE" ]] || die "docker/base-image.sh printed no image"
log "base image: $BASE ($((SECONDS - start)) s)"

log "step 3/4: ensure wheelhouse"
start=$SECONDS
"$ROOT/docker/wheelhouse.sh"
log "wheelhouse ready ($((SECONDS - start)) s)"

base_id="$(docker image inspect -f '{{.Id}}' "$BASE")"

# Extra files (besides the wheels) each image's build context needs: "source:name-in-context".
context_files() {
  local f
  case "$1" in
    flare) echo "$ROOT/docker/flare-entrypoint.sh:flare-entrypoint.sh"
           echo "$ROOT/docker/flare-health.py:flare-health.py"
           # The site code (not the benchmark), the policy, and the admin's and the job's stack modules.
           for f in "$ROOT"/job/*.py "$ROOT"/policy/*.py "$ROOT"/policy/*.json "$ROOT"/stack/flare_admin.py \
                    "$ROOT"/stack/topology.py; do
             [[ "$f" == */job/bench_* ]] || echo "$f:${f#"$ROOT"/}"
           done ;;
    mlflow) echo "$ROOT/docker/mlflow-site.py:mlflow-site.py" ;;
  esac
}

# build NAME TAG BUILD_ARGS...
# Context build/context/NAME/ = wheels/ (hard links into build/wheelhouse/NAME) + context_files,
# so each build sends only its own wheels and nothing else of the repo (no .venv, no build/).
build() {
  local name="$1" tag="$2"; shift 2
  local dockerfile="$ROOT/docker/$name.Dockerfile" wheels="$WHEELHOUSE_DIR/$name"
  local ctx="$BUILD_DIR/context/$name" buildlog="$BUILD_DIR/docker-build-$name.log"
  local hash current old_id start spec src dst extra=()
  [[ -f "$dockerfile" ]] || die "$dockerfile missing"
  [[ -f "$wheels/requirements.txt" ]] || die "$wheels/requirements.txt missing: run docker/wheelhouse.sh"
  while IFS= read -r spec; do
    [[ -n "$spec" ]] || continue
    src="${spec%%:*}"
    [[ -f "$src" ]] || die "$src missing: the $name image needs it (see docker/$name.Dockerfile)"
    extra+=("$spec")
  done < <(context_files "$name")
  hash="$( { cat "$dockerfile" "$wheels/requirements.txt"; (cd "$wheels" && ls .stamp-*); echo "$base_id"
             for spec in ${extra[@]+"${extra[@]}"}; do echo "${spec##*:}"; cat "${spec%%:*}"; done; } | sha256sum | cut -c1-16)"
  current="$(docker image inspect -f '{{ index .Config.Labels "fedtrack.build-hash" }}' "$tag" 2>/dev/null || true)"
  old_id="$(docker image inspect -f '{{.Id}}' "$tag" 2>/dev/null || true)"
  if [[ "$current" == "$hash" && "$FORCE_BUILD" != 1 ]]; then
    log "$tag is up to date (build-hash $hash), skipping"
    return
  fi

  log "staging build context $ctx (hard links to $wheels)"
  rm -rf "$ctx"
  mkdir -p "$ctx"
  cp -al "$wheels" "$ctx/wheels" 2>/dev/null || cp -a "$wheels" "$ctx/wheels"
  rm -f "$ctx"/wheels/.pip-*.log
  for spec in ${extra[@]+"${extra[@]}"}; do
    src="${spec%%:*}"; dst="${spec##*:}"
    install -D -m 0755 "$src" "$ctx/$dst"
  done

  log "building $tag from docker/$name.Dockerfile ($(du -sh "$ctx" | cut -f1) context), base $BASE; log: $buildlog"
  start=$SECONDS
  # fedtrack.build-hash is set by the Dockerfile from BUILD_HASH (a CLI --label would add
  # one more slow commit step after the venv COPY with the legacy builder).
  docker build --pull=false -f "$dockerfile" -t "$tag" \
      --build-arg "BASE_IMAGE=$BASE" --build-arg "BUILD_HASH=$hash" "$@" \
      "$ctx" 2>&1 | while IFS= read -r line; do printf '%(%H:%M:%S)T %s\n' -1 "$line"; done >"$buildlog" \
    || { tail -n 30 "$buildlog" >&2
         die "docker build of $tag failed (full log: $buildlog)"; }
  log "built $tag in $((SECONDS - start)) s"
  rm -rf "$ctx"; rmdir "$BUILD_DIR/context" 2>/dev/null || true
  # The image this tag pointed at before is now untagged: drop it unless a container uses it.
  if [[ -n "$old_id" && "$old_id" != "$(docker image inspect -f '{{.Id}}' "$tag")" ]]; then
    docker rmi "$old_id" >/dev/null 2>&1 && log "removed the previous $tag (${old_id:7:12})" || true
  fi
  # Keep the `build` stage (wheels + venv) as cache: tagged, so only older ones are pruned.
  # Then a change to the entrypoint or the final stage re-runs seconds, not the pip install.
  local stage_id
  # (The legacy builder prints " ---> <id>" after each step; the stage ends at the 2nd FROM.)
  stage_id="$(awk '/ Step [0-9]+\/[0-9]+ : FROM /{n++; if (n == 2) {print id; exit}}
                   $(NF-1) == "--->" && $NF ~ /^[0-9a-f]+$/ {id=$NF}' "$buildlog")"
  if [[ "${PRUNE_BUILD_STAGE:-0}" == 1 ]]; then
    docker rmi "fedtrack/build-cache:$name" >/dev/null 2>&1 || true
    docker image prune -f --filter label=fedtrack.stage=build >/dev/null || true
    log "pruned the build-stage cache"
  elif [[ -n "$stage_id" ]] && docker tag "$stage_id" "fedtrack/build-cache:$name" 2>/dev/null; then
    docker image prune -f --filter label=fedtrack.stage=build >/dev/null || true
    log "kept build stage $stage_id as fedtrack/build-cache:$name (PRUNE_BUILD_STAGE=1 drops it)"
  else
    log "WARNING: could not find the build stage's image in $buildlog; left it untagged (not pruned)"
  fi
}

log "step 4/4: docker build"
build mlflow "fedtrack/mlflow:$MLFLOW_VERSION" --build-arg "MLFLOW_VERSION=$MLFLOW_VERSION"
build flare "fedtrack/flare:$NVFLARE_VERSION" --build-arg "NVFLARE_VERSION=$NVFLARE_VERSION" \
      --build-arg "TORCH_VERSION=$TORCH_VERSION" --build-arg "MLFLOW_VERSION=$MLFLOW_VERSION"

log "done in $((SECONDS - total)) s; images:"
docker image ls --format '{{.Repository}}:{{.Tag}}\t{{.Size}}' \
  | grep -E "^(fedtrack/flare:$NVFLARE_VERSION|fedtrack/mlflow:$MLFLOW_VERSION|${BASE//./\\.})[[:space:]]" >&2 || true
