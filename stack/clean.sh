#!/usr/bin/env bash
# `make clean` and its parts. Removes only what this project made, and nothing that cannot be made again
# without saying so first:
#   clean.sh all    containers, networks and volumes of COMPOSE_PROJECT_NAME, then kits and CA (below).
#                   Refuses while a site's spool holds undelivered records (DISCARD_UNDELIVERED=yes drops
#                   them) and, where a site's MLflow volume exists, unless CONFIRM=yes (its runs go too).
#   clean.sh kits   KITS_ROOT's <project name>/ (kits), secrets/ and .project.sha256, nothing else in it
#   clean.sh ca     CA_DIR's cert.json (the root CA), nothing else in it
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${COMPOSE_PROJECT_NAME:?}" "${KITS_ROOT:?}" "${CA_DIR:?}" "${NVFLARE_VERSION:?}"
IMAGE=fedtrack/flare:$NVFLARE_VERSION
die() { echo "error: $*" >&2; exit 1; }

# remove_as_root DIR NAME...: generated files belong to the containers' users; remove the named
# entries of DIR as root in a container that sees DIR alone, then DIR itself if nothing else is left.
remove_as_root() {
  local dir=$1; shift
  [ -d "$dir" ] || return 0
  local abs; abs=$(cd "$dir" && pwd -P)
  [ "$abs" != / ] && [ "$abs" != "$(pwd -P)" ] || die "refusing to clean $dir: it is / or this checkout"
  local present=() name
  for name in "$@"; do [ -e "$abs/$name" ] && present+=("/target/$name"); done
  if [ ${#present[@]} -gt 0 ]; then
    docker run --rm --network none --user 0:0 -v "$abs:/target" --entrypoint rm "$IMAGE" -rf -- "${present[@]}"
    echo "removed ${present[*]/#\/target/$dir}"
  fi
  rmdir "$abs" 2>/dev/null || true  # only when empty: whatever else is in it stays
}

volumes() { docker volume ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME"; }

# undelivered VOLUME: the records a site's spool still holds, read in a throwaway container.
undelivered() {
  docker run --rm --network none -v "$1:/workspace" --entrypoint fedtrack-spool "$IMAGE" count
}

clean_all() {
  local vols; vols=$(volumes)
  if [ -n "$vols" ]; then
    docker image inspect "$IMAGE" >/dev/null 2>&1 \
      || die "cannot look into the sites' spools without the image $IMAGE; run \`make images\` first"
    local vol n held=()
    for vol in $(grep -- '-workspace$' <<<"$vols" | grep -v -- '_server-workspace$' || true); do
      n=$(undelivered "$vol") || die "could not read the spool in volume $vol; nothing removed"
      [ "$n" -gt 0 ] && held+=("${vol#"${COMPOSE_PROJECT_NAME}_"}: $n")
    done
    if [ ${#held[@]} -gt 0 ] && [ "${DISCARD_UNDELIVERED:-}" != yes ]; then
      local list; list=$(printf '%s, ' "${held[@]}")
      die "undelivered tracking records (${list%, }): \`make up\` delivers them (see \`make status\`); or add DISCARD_UNDELIVERED=yes to drop them. Nothing removed."
    fi
    local mlflow; mlflow=$(grep -- '_mlflow-' <<<"$vols" | tr '\n' ' ' || true)
    if [ -n "$mlflow" ] && [ "${CONFIRM:-}" != yes ]; then
      die "this deletes every site's MLflow runs (volumes $mlflow); run \`make clean CONFIRM=yes\` to go on, or \`make down\` to keep them. Nothing removed."
    fi
  fi
  $COMPOSE --profile admin --profile tools down --volumes --remove-orphans
  # Volumes and networks of sites the project no longer lists (the compose file does not name
  # them; their spools were checked above).
  local left; left=$(volumes)
  [ -z "$left" ] || docker volume rm $left >/dev/null
  left=$(docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME")
  [ -z "$left" ] || docker network rm $left >/dev/null
  clean_kits
  clean_ca
}

# The kits' folder is named after the project (project.yml's `name`): the one holding prod_00/.
clean_kits() {
  local kits=()
  [ ! -d "$KITS_ROOT" ] || kits=($(cd "$KITS_ROOT" && { ls -d -- */prod_00 2>/dev/null || true; } | cut -d/ -f1))
  remove_as_root "$KITS_ROOT" ${kits[@]+"${kits[@]}"} secrets .project.sha256
}
clean_ca() { remove_as_root "$CA_DIR" cert.json; }

case "${1:-}" in
  all) clean_all ;;
  kits) clean_kits ;;
  ca) clean_ca ;;
  *) die "usage: clean.sh all|kits|ca" ;;
esac
