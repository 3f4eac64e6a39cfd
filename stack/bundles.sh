#!/usr/bin/env bash
# `make bundles`: dist/<participant>/ for every participant of provision/project.yml (PARTICIPANT=name:
# that one alone), each with only its own kit (and a site's own secrets), its compose file, .env,
# README and Makefile (stack/bundle.py). BUNDLE_IMAGES=1 adds images/<image>.tar (docker save),
# written once under DIST/.images/ and hard-linked into each bundle that needs it.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${NVFLARE_VERSION:?}" "${MLFLOW_VERSION:?}" "${KITS_ROOT:?}" "${DIST:=dist}"
FLARE_IMAGE=fedtrack/flare:$NVFLARE_VERSION MLFLOW_IMAGE=fedtrack/mlflow:$MLFLOW_VERSION
die() { echo "error: $*" >&2; exit 2; }

# The compose file and the kits must match the project: as `make up` makes them.
stack/up.sh --compose-file
names=$(docker run --rm --network none --read-only --cap-drop ALL --entrypoint python3 \
  -v "$PWD/stack/topology.py:/topology.py:ro" -v "$PWD/provision/project.yml:/project.yml:ro" \
  "$FLARE_IMAGE" /topology.py participants /project.yml)
wanted=(${PARTICIPANT//,/ })
for name in "${wanted[@]}"; do
  grep -qxF -- "$name" <<<"$names" \
    || die "PARTICIPANT=$name is not in provision/project.yml; the participants are: $(echo $names | sed 's/ /, /g')"
done
$COMPOSE run --rm -T provision

mkdir -p "$DIST"
dist=$(cd "$DIST" && pwd -P) kits=$(cd "$KITS_ROOT" && pwd -P)
images=()
[ "${BUNDLE_IMAGES:-0}" != 1 ] || images=("$FLARE_IMAGE" "$MLFLOW_IMAGE")
# Root in the container: the kits' keys are readable by the containers' user alone; copies keep their owner.
docker run --rm --network none --read-only --user 0:0 --cap-drop ALL --cap-add CHOWN --cap-add DAC_OVERRIDE \
  --cap-add FOWNER --entrypoint python3 \
  -e HOST_OWNER="$(id -u):$(id -g)" -e NVFLARE_VERSION -e MLFLOW_VERSION -e BUNDLE_IMAGES_LIST="${images[*]}" ${GPUS:+-e GPUS} \
  -e DIST_SHOWN="$DIST" -v "$PWD/stack/topology.py:/stack/topology.py:ro" -v "$PWD/stack/bundle.py:/stack/bundle.py:ro" \
  -v "$PWD/provision/project.yml:/project.yml:ro" -v "$kits:/kits:ro" -v "$dist:/dist" \
  "$FLARE_IMAGE" /stack/bundle.py /project.yml /kits /dist ${wanted[@]+"${wanted[@]}"}

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
