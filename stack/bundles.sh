#!/usr/bin/env bash
# `make bundles`: dist/<participant>/ for every participant of provision/project.yml (PARTICIPANT=name:
# that one alone), each with only its own kit (and a site's own secrets), its compose file, .env,
# README and Makefile (stack/bundle.py). BUNDLE_IMAGES=1 adds images/<image>.tar (docker save),
# written once under DIST/.images/ and hard-linked into each bundle that needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${KITS_ROOT:?}" "${DIST:=dist}"
die() { echo "error: $*" >&2; exit 2; }
# The images' tags: the pins (requirements.txt).
NVFLARE_VERSION=$(python3 -m fedtrack.pins nvflare) MLFLOW_VERSION=$(python3 -m fedtrack.pins mlflow)
FLARE_IMAGE=fedtrack/flare:$NVFLARE_VERSION MLFLOW_IMAGE=fedtrack/mlflow:$MLFLOW_VERSION

# The compose file and the kits must match the project: as `make up` makes them.
stack/up.sh --compose-file
names=$(python3 -m stack.topology participants provision/project.yml)
IFS=", " read -r -a wanted <<<"${PARTICIPANT:-}"
for name in "${wanted[@]}"; do
  grep -qxF -- "$name" <<<"$names" \
    || die "PARTICIPANT=$name is not in provision/project.yml; the participants are: ${names//$'\n'/, }"
done
$COMPOSE run --rm -T provision

mkdir -p "$DIST"
dist=$(cd "$DIST" && pwd -P) kits=$(cd "$KITS_ROOT" && pwd -P)
images=()
[ "${BUNDLE_IMAGES:-0}" != 1 ] || images=("$FLARE_IMAGE" "$MLFLOW_IMAGE")
# The bundles' text files, on the host (stack/bundle.py): each participant's in $stage/<name>/.
stage=$(mktemp -d "$dist/.stage.XXXXXX")
trap 'rm -rf "$stage"' EXIT
parts=$(BUNDLE_IMAGES_LIST="${images[*]}" python3 -m stack.bundle provision/project.yml "$kits" "$stage" \
  ${wanted[@]+"${wanted[@]}"})

# Root, in a throwaway container with no Python of ours: the kits' keys and the sites' secrets are
# readable by the containers' users alone, and an old bundle holds files only root may remove. Per
# participant (NAME KIT [SECRETS], paths in KITS): copy its text files, kit and secrets with their
# owners and modes into dist/.<name>.new, check that it holds its own private key and no other, then
# swap it for dist/<name>.
# shellcheck disable=SC2016 # the container's sh expands these
COPY='set -eu
owner=$1; shift
while read -r name kit secrets; do
  new=/dist/.$name.new old=/dist/.$name.old
  rm -rf "$new" "$old"
  cp -a "/stage/$name" "$new"
  cp -a "/kits/$kit" "$new/kit"
  [ -z "$secrets" ] || cp -a "/kits/$secrets" "$new/secrets"
  chown "$owner" "$new"
  keys=$(cd "$new" && find . -name "*.key" | sort | tr "\n" " ")
  case "$keys" in
    "./kit/startup/client.key " | "./kit/startup/server.key ") ;;
    *) echo "error: the bundle of $name would hold these private keys: $keys(only its own)" >&2; rm -rf "$new"; exit 1 ;;
  esac
  [ ! -e "/dist/$name" ] || mv "/dist/$name" "$old"
  mv "$new" "/dist/$name"
  rm -rf "$old"
done'
docker run --rm -i --network none --read-only --user 0:0 --cap-drop ALL --cap-add CHOWN --cap-add DAC_OVERRIDE \
  --cap-add FOWNER -v "$kits:/kits:ro" -v "$stage:/stage:ro" -v "$dist:/dist" --entrypoint sh \
  "$FLARE_IMAGE" -c "$COPY" sh "$(id -u):$(id -g)" <<<"$parts"
while read -r name _; do echo "bundle for $name: $DIST/$name"; done <<<"$parts"

[ ${#images[@]} -gt 0 ] || exit 0
mkdir -p "$dist/.images"
for image in "${images[@]}"; do
  file=$(basename "${image%%:*}").tar id=$(docker image inspect -f '{{.Id}}' "$image")
  # One archive per image ID: saved once, however many bundles carry it.
  if [ "$(cat "$dist/.images/$file.id" 2>/dev/null)" != "$id" ]; then
    echo "saving $image to $DIST/.images/$file (docker save)"
    docker save -o "$dist/.images/$file.partial" "$image"
    mv "$dist/.images/$file.partial" "$dist/.images/$file" && echo "$id" > "$dist/.images/$file.id"
  fi
done
for bundle in "$dist"/*/; do
  [ -f "$bundle/Makefile" ] || continue
  for file in $(grep -o 'images/[a-z]*\.tar' "$bundle/Makefile" | sort -u); do
    mkdir -p "$bundle/images"
    ln -f "$dist/.images/${file#images/}" "$bundle/$file" 2>/dev/null || cp "$dist/.images/${file#images/}" "$bundle/$file"
  done
done
echo "images in each bundle's images/ (hard links to $DIST/.images/)"
