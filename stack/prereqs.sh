#!/usr/bin/env bash
# What `make test` needs beyond the venv, checked before any test starts: a Docker engine that
# answers, Compose v2 (installed by docker/ensure-compose.sh when missing) and Chromium (the UI tests).
# One line per missing thing, `error: <what>; <how to get it>`, then exit 2; nothing printed when all are there.
set -euo pipefail

case "$0" in */*) here="${0%/*}" ;; *) here=. ;; esac  # no dirname: it runs on a bare PATH too
missing=0
fail() { printf 'error: %s\n' "$*" >&2; missing=1; }

compose_v2() {
  local version
  version="$(docker compose version --short 2>/dev/null)" || return 1
  [[ "${version#v}" =~ ^([2-9]|[1-9][0-9]+)\. ]]
}

if ! command -v docker >/dev/null; then
  fail "Docker not found; install Docker Engine: apt-get install docker.io (Debian/Ubuntu) or https://docs.docker.com/engine/install/"
else
  if ! docker info >/dev/null 2>&1; then
    fail "no Docker engine answers (docker info failed); start it (systemctl start docker) or get access to its socket (the docker group, DOCKER_HOST)"
  fi
  if ! compose_v2; then
    # The same install `make compose` does; its log is shown only as the reason when it fails.
    if out="$("$here/../docker/ensure-compose.sh" 2>&1)" && compose_v2; then
      printf 'prereqs: Docker Compose v2 installed by docker/ensure-compose.sh\n' >&2
    else
      fail "Docker Compose v2 not found and docker/ensure-compose.sh could not install it (${out##*$'\n'}); install it: apt-get install docker-compose-plugin (Debian/Ubuntu)"
    fi
  fi
fi

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && ! command -v google-chrome >/dev/null; then
  fail "Chromium not found; the UI tests need it: apt-get install chromium (Debian/Ubuntu)"
fi

if (( missing )); then
  exit 2
fi
