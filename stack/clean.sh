#!/usr/bin/env bash
# `make clean` and its parts. Removes only what this project made, and nothing that cannot be made again
# without saying so first. Whatever it cannot tell is its own is refused: one line, and nothing removed.
#   clean.sh all    containers, networks and volumes of COMPOSE_PROJECT_NAME, each carrying this deployment's
#                   label (LABEL below: stack/compose.template.yml sets it to provision/project.yml's name),
#                   then kits and CA (below). Refuses while a site's spool holds undelivered records
#                   (DISCARD_UNDELIVERED=yes drops them) and, where a site's MLflow volume exists, unless
#                   CONFIRM=yes (its runs go too).
#   clean.sh kits   what provisioning made in KITS_ROOT, as its stamp there names it (the kits' <project name>/,
#                   secrets/, .project.sha256), then the stamp; nothing else in it
#   clean.sh ca     what provisioning made in CA_DIR, as its stamp there names it (cert.json, the root CA)
# provision/provision.sh writes each stamp before it makes what the stamp names.
set -euo pipefail
shopt -s inherit_errexit
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${COMPOSE_PROJECT_NAME:?}" "${KITS_ROOT:?}" "${CA_DIR:?}" "${NVFLARE_VERSION:?}"
IMAGE=fedtrack/flare:$NVFLARE_VERSION
KITS_STAMP=.provisioned-kits CA_STAMP=.provisioned-ca
STAMP_HEADER="# Made here by fedtrack's provisioning (provision/provision.sh); stack/clean.sh removes these names, nothing else"
LABEL=fedtrack.project
die() { echo "error: $*" >&2; exit 1; }

# in_dir ABS CMD...: CMD run in the folder ABS: here when this user may read it, else as root in a
# container that sees ABS alone (CA_DIR is root's, mode 0700).
in_dir() {
  local abs=$1; shift
  if [ -r "$abs" ] && [ -x "$abs" ]; then
    (cd "$abs" && "$@")
  else
    docker run --rm --network none --user 0:0 -v "$abs:/target:ro" -w /target --entrypoint "$1" "$IMAGE" "${@:2}"
  fi
}

# stamped DIR STAMP KNOB: what provisioning made in DIR (the names its stamp lists that are there, then the
# stamp), one a line; nothing when DIR is missing or empty. Refuses / and this checkout, a folder that holds
# anything but no stamp of this project's provisioning, and a stamp naming anything but an entry of DIR.
stamped() {
  local dir=$1 stamp=$2 knob=$3 abs entries text name
  [ -d "$dir" ] || return 0
  abs=$(cd "$dir" && pwd -P)
  [ "$abs" != / ] && [ "$abs" != "$(pwd -P)" ] || die "refusing to clean $dir: it is / or this checkout"
  entries=$(in_dir "$abs" ls -A) || die "cannot list $dir; nothing removed"
  [ -n "$entries" ] || return 0
  grep -qxF -- "$stamp" <<<"$entries" \
    || die "refusing to clean $dir: it has no $stamp, the list of what this project's provisioning made there; check $knob (what an earlier version provisioned there gets it from \`make provision\`). Nothing removed."
  text=$(in_dir "$abs" cat -- "$stamp") || die "cannot read $dir/$stamp; nothing removed"
  [ "$(head -n1 <<<"$text")" = "$STAMP_HEADER" ] \
    || die "refusing to clean $dir: $dir/$stamp was not written by this project's provisioning; check $knob. Nothing removed."
  while IFS= read -r name; do
    [ -n "$name" ] || continue
    if [[ ! $name =~ ^[A-Za-z0-9._][A-Za-z0-9._-]*$ ]] || [ "$name" = . ] || [ "$name" = .. ] || [ "$name" = "$stamp" ]; then
      die "refusing to clean $dir: its $stamp names '$name', which is not an entry of its own; check $knob. Nothing removed."
    fi
    if grep -qxF -- "$name" <<<"$entries"; then echo "$name"; fi
  done < <(tail -n +2 <<<"$text")
  echo "$stamp"
}

# remove DIR NAME...: the named entries of DIR as root, in a container that sees DIR alone (generated files
# belong to the containers' users), the last one last; then DIR itself if nothing else is left in it.
remove() {
  local dir=$1 abs; shift
  [ $# -gt 0 ] || return 0
  abs=$(cd "$dir" && pwd -P)
  docker run --rm --network none --user 0:0 -v "$abs:/target" --entrypoint rm "$IMAGE" -rf -- "${@/#//target/}"
  echo "removed ${*/#/$dir/}"
  rmdir "$abs" 2>/dev/null || true  # only when empty: whatever else is in it stays
}

need_image() {
  docker image inspect "$IMAGE" >/dev/null 2>&1 || die "$* needs the image $IMAGE; run \`make images\` first. Nothing removed."
}

# ours KIND: the containers, volumes or networks (KIND) of COMPOSE_PROJECT_NAME, one a line, each checked to
# carry this deployment's label; one that does not is refused.
ours() {
  local kind=$1 list name value
  if [ "$kind" = container ]; then
    list=$(docker ps -a --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --format "{{.Names}} {{.Label \"$LABEL\"}}")
  else
    list=$(docker "$kind" ls --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" --format "{{.Name}} {{.Label \"$LABEL\"}}")
  fi
  while read -r name value; do
    [ -n "$name" ] || continue
    [ "$value" = "$PROJECT" ] \
      || die "$kind $name of compose project $COMPOSE_PROJECT_NAME is not this deployment's (label $LABEL=${value:-<none>}, not $PROJECT): check COMPOSE_PROJECT_NAME; if it is this deployment's, made before that label, remove it yourself (docker $kind rm $name). Nothing removed."
    echo "$name"
  done <<<"$list"
}

# undelivered VOLUME: the records a site's spool still holds, read in a throwaway container.
undelivered() {
  docker run --rm --network none -v "$1:/workspace" --entrypoint fedtrack-spool "$IMAGE" count
}

clean_all() {
  local kits ca vols
  PROJECT=$(python3 -c 'from fedtrack.project import Project; print(Project("provision/project.yml").name)') \
    || die "cannot read this deployment's name (provision/project.yml); nothing removed"
  kits=$(stamped "$KITS_ROOT" "$KITS_STAMP" KITS_ROOT)
  ca=$(stamped "$CA_DIR" "$CA_STAMP" CA_DIR)
  ours container >/dev/null
  ours network >/dev/null
  vols=$(ours volume)
  if [ -n "$vols" ]; then
    need_image "looking into the sites' spools"
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
  [ -z "$kits$ca" ] || need_image "removing the kits and the root CA"
  # Everything checked: now remove. The containers (and the networks the compose file names) ...
  $COMPOSE --profile admin --profile tools down --remove-orphans
  # ... the volumes checked above, also those of sites the project no longer lists (their spools too) ...
  [ -z "$vols" ] || docker volume rm $vols >/dev/null
  # ... and the networks left (those of sites the project no longer lists), each checked again.
  local left; left=$(ours network)
  [ -z "$left" ] || docker network rm $left >/dev/null
  remove "$KITS_ROOT" $kits
  remove "$CA_DIR" $ca
}

clean_dir() {
  local names; names=$(stamped "$1" "$2" "$3")
  [ -z "$names" ] || need_image "removing what provisioning made in $1"
  remove "$1" $names
}

case "${1:-}" in
  all) clean_all ;;
  kits) clean_dir "$KITS_ROOT" "$KITS_STAMP" KITS_ROOT ;;
  ca) clean_dir "$CA_DIR" "$CA_STAMP" CA_DIR ;;
  *) die "usage: clean.sh all|kits|ca" ;;
esac
