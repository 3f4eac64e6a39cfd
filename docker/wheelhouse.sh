#!/usr/bin/env bash
# Download the wheels the Docker images install, exactly the files their locks name, so `docker build`
# needs no network and installs nothing unverified.
#
#   docker/wheelhouse.sh [SET...]           SET: tools, mlflow, flare (default: all three, in that order)
#   docker/wheelhouse.sh --lock [SET...]    write docker/SET.lock again from requirements.txt (`make lock`)
#   docker/wheelhouse.sh --verify DIR LOCK  check that DIR holds exactly LOCK's wheels, each with a locked
#                                           sha256 (docker/build-images.sh runs it before each build)
#
#   build/wheelhouse/flare/   every pin in requirements.txt except the test-only (pytest) and build-only (uv, setuptools) ones
#   build/wheelhouse/mlflow/  just the mlflow pin, with its dependencies
#   build/wheelhouse/tools/   the build tools: uv installs those sets into the images' venvs, setuptools builds fedtrack
#
# The locks (docker/tools.lock, docker/mlflow.lock, docker/flare.lock) list every package of a set,
# dependencies included, pinned `==` with the sha256 of each wheel that installs on the images'
# platform: linux x86_64 / CPython 3.11 / glibc <= 2.36 (Debian bookworm), whatever the host's own
# Python is. `--lock` makes them with `uv pip compile` (uv from the pins: .venv's, after `make venv`);
# a set's download is `pip download --require-hashes` of its lock, checked again file by file, and
# each directory gets a copy of its lock as requirements.txt. The images install their committed lock
# with `--require-hashes`. Versions come only from requirements.txt: a lock made from other pins than
# requirements.txt's, a wheel whose bytes differ from its locked hash, a wheel missing or one too many
# stop the download or the build with one line.
#
# Environment:
#   WHEELHOUSE_DIR   output root (default: <repo>/build/wheelhouse)
#   REQUIREMENTS     pins file (default: <repo>/requirements.txt)
#   LOCK_DIR         where the locks are (default: <repo>/docker)
#   PYTHON           python used to run pip (default: python3)
#   UV               uv for --lock (default: uv of <repo>/.venv, then uv on PATH)
#   TORCH_INDEX_URL  extra index for torch/torchvision, e.g. https://download.pytorch.org/whl/cpu
#                    (for the flare set only; pip then prefers the index's torch==X+cpu over PyPI's CUDA
#                    build: ~1 GB smaller, no nvidia-* wheels). The flare lock records the index it was
#                    made with: `make lock TORCH_INDEX_URL=...` first (the committed lock has none).
#   PIP_EXTRA_ARGS   further pip arguments, word-split, e.g. "--index-url https://mirror/simple"
#                    (given to uv for --lock too: use options both take)
#   FORCE=1          download again even if the stamp says the wheelhouse is current
set -euo pipefail

log() { printf '[wheelhouse] %s\n' "$*" >&2; }
die() { printf '[wheelhouse] ERROR: %s\n' "$*" >&2; exit 1; }

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
REQUIREMENTS="${REQUIREMENTS:-$ROOT/requirements.txt}"
WHEELHOUSE_DIR="${WHEELHOUSE_DIR:-$ROOT/build/wheelhouse}"
LOCK_DIR="${LOCK_DIR:-$ROOT/docker}"
PYTHON="${PYTHON:-python3}"
NOT_IN_IMAGES_RE='^(pytest|uv|setuptools)([=<>!~ ;[]|$)'

# The locks' reader, for `verify DIR LOCK` and `seed FROM DIR LOCK` (stdlib only: the host's python3 runs it).
#   verify: one line and exit 1 at the first file (or locked package) that does not match. Every file of DIR
#           but requirements.txt and dot files must be a wheel of a locked package whose sha256 is one the
#           lock lists for it; every locked package must have exactly one wheel in DIR.
#   seed:   hard-link into DIR each wheel of FROM whose sha256 LOCK lists (pip then downloads only the rest).
read -r -d '' LOCK_PY <<'EOF' || true   # (read ends at the heredoc's end: status 1)
import hashlib, os, re, shutil, sys

mode, *paths = sys.argv[1:]
folder, lock = paths[-2:]
canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()

def fail(problems):
    more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
    sys.exit(f"[wheelhouse] ERROR: {problems[0]}{more}")

def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()

def wheels(folder):  # (path, canonical package or None) of each file but requirements.txt and dot files
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if not name.startswith(".") and name != "requirements.txt" and os.path.isfile(path):
            yield path, canonical(name.split("-", 1)[0]) if name.endswith(".whl") else None

locked = {}
try:
    with open(lock) as f:
        text = f.read().replace("\\\n", " ")
except OSError as e:
    fail([f"{lock}: {e.strerror}; run make lock"])
for line in text.splitlines():
    line = line.split(" #", 1)[0].strip()
    if not line or line.startswith("#"):
        continue
    m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)==(\S+)((?:\s+--hash=\S+)*)", line)
    if not m:
        fail([f"{lock}: not a pin with hashes: {line[:80]!r}; run make lock"])
    hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})(?=\s|$)", m[3])
    if not hashes or len(hashes) != len(m[3].split()):
        fail([f"{lock}: {m[1]}=={m[2]} has no sha256 hash (or one that is not sha256); run make lock"])
    locked[canonical(m[1])] = (f"{m[1]}=={m[2]}", set(hashes))
if not locked:
    fail([f"{lock}: no pin; run make lock"])

if mode == "seed":
    for path, package in wheels(paths[0]):
        if package in locked and sha256(path) in locked[package][1]:
            target = os.path.join(folder, os.path.basename(path))
            try:
                os.link(path, target)
            except OSError:
                shutil.copyfile(path, target)
    sys.exit(0)

problems, seen = [], {}
for path, package in wheels(folder):
    if package not in locked:
        problems.append(f"{path}: not in {lock}: remove it (or run make lock if requirements.txt changed)")
        continue
    pin, hashes = locked[package]
    digest = sha256(path)
    if digest not in hashes:
        problems.append(f"{path}: sha256 {digest} is not a hash {lock} lists for {pin}: "
                        "the file changed; delete it and download the set again")
    elif package in seen:
        problems.append(f"{path}: a second wheel of {pin} (with {seen[package]}): remove one")
    seen[package] = os.path.basename(path)
problems += [f"{folder}: no wheel of {pin} ({lock}): download the set again"
             for package, (pin, _) in sorted(locked.items()) if package not in seen]
if problems:
    fail(problems)
EOF
verify() { "$PYTHON" -c "$LOCK_PY" verify "$1" "$2"; }   # verify DIR LOCK

if [[ "${1:-}" == --verify ]]; then
  [[ $# == 3 ]] || die "usage: docker/wheelhouse.sh --verify DIR LOCK"
  [[ -d "$2" ]] || die "$2: no such wheel directory"
  verify "$2" "$3"
  log "$2: $(find "$2" -maxdepth 1 -name '*.whl' | wc -l) wheels, each with the sha256 $3 lists"
  exit 0
fi
MODE=download
if [[ "${1:-}" == --lock ]]; then MODE=lock; shift; fi

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
# The same platform for uv's resolver (--lock): wheels of other platforms get no hash in the lock.
UV_PLATFORM_ARGS=(--only-binary :all: --python-version 3.11 --python-platform x86_64-manylinux_2_36)

EXTRA_ARGS=()
if [[ -n "${PIP_EXTRA_ARGS:-}" ]]; then read -r -a EXTRA_ARGS <<<"$PIP_EXTRA_ARGS"; fi
TORCH_ARGS=()   # only for the flare set: the mlflow image has no torch
if [[ -n "${TORCH_INDEX_URL:-}" ]]; then TORCH_ARGS=(--extra-index-url "$TORCH_INDEX_URL"); fi

# The lock's header: what it was made from; the download refuses a lock made from anything else.
header() {  # header NAME PINS
  printf '# %s.lock: every package of the %s set (docker/wheelhouse.sh), dependencies included, pinned, with the\n' "$1" "$1"
  printf '# sha256 of each wheel for linux x86_64 / CPython 3.11 / glibc <= 2.36. Written by `make lock`; do not edit.\n'
  printf '# from: %s\n' "$(printf '%s\n' "$2" | paste -sd ' ')"
  [[ "$1" != flare ]] || printf '# torch index: %s\n' "${TORCH_INDEX_URL:-none}"
}

# lock NAME PINS [UV ARGS...]: write LOCK_DIR/NAME.lock from uv's resolution for the images' platform.
lock() {
  local name="$1" pins="$2" out="$LOCK_DIR/$1.lock" tmp
  shift 2
  tmp="$(mktemp -d)"
  printf '%s\n' "$pins" >"$tmp/requirements.in"
  log "$name: resolving $(printf '%s\n' "$pins" | paste -sd ' ') for linux x86_64 / CPython 3.11"
  "$UV" pip compile --quiet --no-config --generate-hashes "${UV_PLATFORM_ARGS[@]}" \
      ${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} "$@" --format pylock.toml -o "$tmp/pylock.$name.toml" \
      "$tmp/requirements.in" 2>"$tmp/uv.log" \
    || { tail -n 20 "$tmp/uv.log" >&2; rm -rf "$tmp"; die "$name: uv pip compile failed (above)"; }
  # pylock.toml names each wheel the target can install, with its sha256: requirements.txt form, hashes only.
  { header "$name" "$pins"
    "$PYTHON" - "$tmp/pylock.$name.toml" <<'EOF'
import sys, tomllib
with open(sys.argv[1], "rb") as f:
    packages = tomllib.load(f)["packages"]
for p in sorted(packages, key=lambda p: p["name"]):
    hashes = sorted(w["hashes"]["sha256"] for w in p.get("wheels", []))
    if not hashes:
        sys.exit(f"[wheelhouse] ERROR: {p['name']}=={p['version']} has no wheel for linux x86_64 / CPython 3.11")
    print(f"{p['name']}=={p['version']} \\\n" + " \\\n".join(f"    --hash=sha256:{h}" for h in hashes))
EOF
  } >"$tmp/$name.lock" || { rm -rf "$tmp"; die "$name: could not write the lock (needs Python 3.11+ for tomllib: set PYTHON)"; }
  mv "$tmp/$name.lock" "$out"
  rm -rf "$tmp"
  log "$name: $(grep -c '^[A-Za-z0-9]' "$out") packages in $out"
}

# fetch NAME PINS [PIP ARGS...]: download LOCK_DIR/NAME.lock's wheels into WHEELHOUSE_DIR/NAME unless its stamp matches.
fetch() {
  local name="$1" pins="$2" dest="$WHEELHOUSE_DIR/$1" lockfile="$LOCK_DIR/$1.lock" stamp key partial want have
  shift 2
  local args=(${EXTRA_ARGS[@]+"${EXTRA_ARGS[@]}"} "$@")
  [[ -f "$lockfile" ]] || die "$lockfile missing: run make lock"
  want="$(header "$name" "$pins" | grep -E '^# (from|torch index):')"
  have="$(grep -E '^# (from|torch index):' "$lockfile" || true)"
  [[ "$want" == "$have" ]] \
    || die "$lockfile was made from other pins than $REQUIREMENTS (or another TORCH_INDEX_URL): run make lock"
  key="$(printf '%s\n' "$(cat "$lockfile")" "${PLATFORM_ARGS[*]}" "${args[*]:-}" | sha256sum | cut -c1-16)"
  stamp="$dest/.stamp-$key"
  if [[ -f "$stamp" && "${FORCE:-0}" != 1 ]]; then
    log "$name: up to date ($(find "$dest" -name '*.whl' | wc -l) wheels, stamp $key), skipping"
    return
  fi
  partial="$dest.partial"   # kept across interrupted runs of the same lock: pip skips files already there
  cmp -s "$lockfile" "$partial/requirements.txt" 2>/dev/null || rm -rf "$partial"
  mkdir -p "$partial"
  cp "$lockfile" "$partial/requirements.txt"
  # The wheels of the previous wheelhouse that the lock still lists, byte for byte, are not downloaded again.
  [[ ! -d "$dest" ]] || "$PYTHON" -c "$LOCK_PY" seed "$dest" "$partial" "$lockfile"
  log "$name: downloading the $(grep -c '^[A-Za-z0-9]' "$lockfile") wheels of $lockfile into $partial"
  "$PYTHON" -m pip download --disable-pip-version-check --no-input --progress-bar off --require-hashes \
      --find-links "$partial" ${args[@]+"${args[@]}"} "${PLATFORM_ARGS[@]}" \
      -d "$partial" -r "$partial/requirements.txt" >"$partial/.pip-download.log" 2>&1 \
    || { tail -n 20 "$partial/.pip-download.log" >&2
         die "$name: pip download failed (full log: $partial/.pip-download.log); check network/index or PIP_EXTRA_ARGS"; }
  verify "$partial" "$lockfile"
  log "$name: checking the wheel set resolves offline (--no-index --require-hashes)"
  "$PYTHON" -m pip install --disable-pip-version-check --no-input --dry-run --ignore-installed --require-hashes \
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

if [[ "$MODE" == lock ]]; then
  UV="${UV:-}"
  if [[ -z "$UV" ]]; then
    if [[ -x "$ROOT/.venv/bin/uv" ]]; then UV="$ROOT/.venv/bin/uv"; else UV="$(command -v uv || true)"; fi
  fi
  [[ -n "$UV" ]] && command -v "$UV" >/dev/null \
    || die "no uv to resolve with${UV:+ ($UV)}: run make venv (it installs requirements.txt's uv) or set UV"
  for name in ${@:-tools mlflow flare}; do
    case "$name" in
      tools) lock tools "$TOOL_PINS" ;;
      mlflow) lock mlflow "$MLFLOW_PINS" ;;
      # Like pip (which prefers the index's torch==X+cpu): take the best version across both indexes.
      flare) lock flare "$FLARE_PINS" ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"} ${TORCH_ARGS[@]+--index-strategy unsafe-best-match} ;;
      *) die "unknown wheel set $name: use tools, mlflow or flare" ;;
    esac
  done
  exit 0
fi

for name in ${@:-tools mlflow flare}; do
  case "$name" in
    tools) fetch tools "$TOOL_PINS" ;;
    mlflow) fetch mlflow "$MLFLOW_PINS" ;;
    flare) fetch flare "$FLARE_PINS" ${TORCH_ARGS[@]+"${TORCH_ARGS[@]}"} ;;
    *) die "unknown wheel set $name: use tools, mlflow or flare" ;;
  esac
done
log "done: $WHEELHOUSE_DIR"
