#!/usr/bin/env bash
# Download the wheels the Docker images install, so `docker build` needs no network.
#
#   docker/wheelhouse.sh [SET...]   SET: tools, mlflow, flare (default: all three, in that order)
#
#   build/wheelhouse/flare/   every pin in requirements.txt except the test-only (pytest) and build-only (uv) ones
#   build/wheelhouse/mlflow/  just the mlflow pin, with its dependencies
#   build/wheelhouse/tools/   the build tools: uv installs those sets into the images' venvs, setuptools builds fedtrack
#
# Each directory also gets a requirements.txt holding exactly the pins it was made for;
# the Dockerfiles install `-r /wheels/requirements.txt --no-index --find-links /wheels`.
# Wheels are for linux x86_64 / CPython 3.11 / glibc <= 2.36 (Debian bookworm), whatever the
# host's own Python is. Versions come only from requirements.txt.
#
# Environment:
#   WHEELHOUSE_DIR   output root (default: <repo>/build/wheelhouse)
#   REQUIREMENTS     pins file (default: <repo>/requirements.txt)
#   PYTHON           python used to run pip (default: python3)
#   TORCH_INDEX_URL  extra index for torch/torchvision, e.g. https://download.pytorch.org/whl/cpu
#                    (passed as --extra-index-url for the flare set only; pip then prefers the
#                    index's torch==X+cpu over PyPI's CUDA build: ~1 GB smaller, no nvidia-* wheels)
#   PIP_EXTRA_ARGS   further pip arguments, word-split, e.g. "--index-url https://mirror/simple"
#   FORCE=1          download again even if the stamp says the wheelhouse is current
set -euo pipefail

log() { printf '[wheelhouse] %s\n' "$*" >&2; }
die() { printf '[wheelhouse] ERROR: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="${REQUIREMENTS:-$ROOT/requirements.txt}"
WHEELHOUSE_DIR="${WHEELHOUSE_DIR:-$ROOT/build/wheelhouse}"
PYTHON="${PYTHON:-python3}"
NOT_IN_IMAGES_RE='^(pytest|uv|setuptools)([=<>!~ ;[]|$)'

[[ -f "$REQUIREMENTS" ]] || die "pins file $REQUIREMENTS not found: run from the repo or set REQUIREMENTS"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3 with pip or set PYTHON"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work: install pip (apt-get install python3-pip) or set PYTHON"

# Pins: requirement lines without comments/blank lines/inline comments.
pins() { sed -e 's/[[:space:]]#.*$//' -e 's/^#.*$//' -e 's/[[:space:]]*$//' "$REQUIREMENTS" | grep -v '^[[:space:]]*$' || true; }
# The FLARE image needs no extra of mlflow's (`auth` is for the tracking server only).
FLARE_PINS="$(pins | grep -Eiv "$NOT_IN_IMAGES_RE" | sed -E 's/^mlflow\[[^]]*\]/mlflow/' || true)"
MLFLOW_PINS="$(pins | grep -Ei '^mlflow(\[[^]]*\])?[[:space:]]*[=<>!~]' || true)"
[[ -n "$FLARE_PINS" ]] || die "no pins found in $REQUIREMENTS"
TOOL_PINS="$(pins | grep -Ei '^(uv|setuptools)[[:space:]]*==' || true)"
[[ -n "$MLFLOW_PINS" ]] || die "no 'mlflow==...' pin in $REQUIREMENTS: add one"
[[ -n "$TOOL_PINS" ]] || die "no 'uv==...' pin in $REQUIREMENTS: add one (it installs the images' venvs)"

# Target platform: CPython 3.11 on x86_64 Linux with glibc up to 2.36 (bookworm).
PLATFORM_ARGS=(--only-binary=:all: --python-version 3.11 --implementation cp
               --abi cp311 --abi abi3 --abi none --platform linux_x86_64
               --platform manylinux1_x86_64 --platform manylinux2010_x86_64 --platform manylinux2014_x86_64)
for minor in $(seq 5 36); do PLATFORM_ARGS+=(--platform "manylinux_2_${minor}_x86_64"); done

EXTRA_ARGS=()
if [[ -n "${PIP_EXTRA_ARGS:-}" ]]; then read -r -a EXTRA_ARGS <<<"$PIP_EXTRA_ARGS"; fi
TORCH_ARGS=()   # only for the flare set: the mlflow image has no torch
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then TORCH_ARGS=(--extra-index-url "$TORCH_INDEX_URL"); fi

# fetch NAME PINS [PIP ARGS...]: download into WHEELHOUSE_DIR/NAME unless its stamp matches.
fetch() {
  local name="$1" pins="$2" dest="$WHEELHOUSE_DIR/$1" stamp key partial
  shift 2
  local args=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} "$@")
  key="$(printf '%s\n' "$pins" "${PLATFORM_ARGS[*]}" "${args[*]:-}" | sha256sum | cut -c1-16)"
  stamp="$dest/.stamp-$key"
  if [[ -f "$stamp" && "${FORCE:-0}" != 1 ]]; then
    log "$name: up to date ($(find "$dest" -name '*.whl' | wc -l) wheels, stamp $key), skipping"
    return
  fi
  partial="$dest.partial"   # kept across interrupted runs: pip skips files already there
  mkdir -p "$partial"
  printf '%s\n' "$pins" >"$partial/requirements.txt"
  log "$name: downloading wheels for $(echo "$pins" | tr '\n' ' ')into $partial"
  "$PYTHON" -m pip download --disable-pip-version-check --no-input --progress-bar off \
      --find-links "$partial" ${args[@]+"${args[@]}"} "${PLATFORM_ARGS[@]}" \
      -d "$partial" -r "$partial/requirements.txt" >"$partial/.pip-download.log" 2>&1 \
    || { tail -n 20 "$partial/.pip-download.log" >&2
         die "$name: pip download failed (full log: $partial/.pip-download.log); check network/index or PIP_EXTRA_ARGS"; }
  log "$name: checking the wheel set resolves offline (--no-index)"
  "$PYTHON" -m pip install --disable-pip-version-check --no-input --dry-run --ignore-installed \
      --no-index --find-links "$partial" "${PLATFORM_ARGS[@]}" --target "$partial/.dry-run-target" \
      -r "$partial/requirements.txt" >"$partial/.pip-offline-check.log" 2>&1 \
    || { tail -n 20 "$partial/.pip-offline-check.log" >&2
         die "$name: the downloaded wheels do not install offline (log: $partial/.pip-offline-check.log); rerun with FORCE=1"; }
  rm -rf "$partial/.dry-run-target" "$partial"/.stamp-*
  touch "$partial/.stamp-$key"
  rm -rf "$dest"
  mv "$partial" "$dest"
  log "$name: $(find "$dest" -name '*.whl' | wc -l) wheels, $(du -sh "$dest" | cut -f1) in $dest"
}

for name in ${@:-tools mlflow flare}; do
  case "$name" in
    tools) fetch tools "$TOOL_PINS" ;;
    mlflow) fetch mlflow "$MLFLOW_PINS" ;;
    flare) fetch flare "$FLARE_PINS" ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"} ;;
    *) die "unknown wheel set $name: use tools, mlflow or flare" ;;
  esac
done
log "done: $WHEELHOUSE_DIR"
