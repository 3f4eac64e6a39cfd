#!/usr/bin/env bash
# `make up`: the compose file from provision/project.yml, kits, services, then the job (unless a job
# of the same name is still running) as soon as the server and every site's client answer; then it
# waits for every site's MLflow. Returns while the job trains. `up.sh --submit` submits another job
# to the running stack (`make submit`). `up.sh --urls` prints each site's UI link. `up.sh --knobs` checks
# the knobs and the project on the host (before the images are built); `--check` too, and, with GPUS and
# the FLARE image present, that containers get the GPUs; `--compose-file` only writes the compose file.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${JOB_NAME:?}" "${ROUNDS:=}" "${DATASET:?}" "${NVFLARE_VERSION:?}"
compose() { $COMPOSE "$@"; }
admin() { compose run --rm -T admin "$@"; }
die() { echo "error: $*" >&2; exit 2; }
# Each site's UI, where compose published it (`make up` ends with these, `make wait` too: `--urls`).
ui_urls() {
  local site url view
  view=$(python3 -m stack.topology ui-view)  # the model-training view (fedtrack/project.py UI_VIEW)
  for site in $(compose config --services | sed -n 's/^mlflow-//p'); do
    url=$(compose port "mlflow-$site" 5000 2>/dev/null) && url="http://$url$view" || url="not running (make up)"
    printf '  %-16s %s\n' "$site MLflow:" "$url"
  done
  echo "  log in with an account from: make mlflow-user SITE=<site> USER=<you>"
}
[ "${1:-}" != --urls ] || { ui_urls; exit 0; }
FLARE_IMAGE=fedtrack/flare:$NVFLARE_VERSION

# The compose generator runs on the host (python3 with PyYAML; it says so in one line when PyYAML is
# missing). It reads GPUS and MLFLOW_PORT_<SITE> from the environment (the Makefile exports them).
topology() {
  python3 -m stack.topology "$@" provision/project.yml
}

# Bad input is one line saying what to fix, before anything is built or started (`make check`).
check_knobs() {
  # Every knob of the job (ROUNDS, LR, ...) as fedtrack-job checks it: fedtrack/knobs.py, stdlib only.
  python3 -m fedtrack.knobs || exit 2
  # The compose generator reads GPUS: its own check, as `docker run --gpus` takes it.
  if [ -n "${GPUS:-}" ]; then GPU_FLAG=$(python3 -m stack.topology gpus) || exit 2; fi
  if [ "$DATASET" = cifar10 ] && [ ! -f "${DATA_DIR:-./data}/cifar-10-batches-py/batches.meta" ]; then
    die "CIFAR-10 not found in ${DATA_DIR:-./data}: extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there, or set DATASET=digits"
  fi
}

# The sites and their UI ports (project.yml's, or MLFLOW_PORT_<SITE> from .env or the command line).
check_project() {
  local spec
  SITES=() PORTS=()
  spec=$(topology check) || exit 2
  for spec in $spec; do SITES+=("${spec%%=*}") PORTS+=("${spec#*=}"); done
}

# GPUS: one throwaway container with the same device request, so that a host that cannot give
# containers its GPUs, or an image whose torch has no CUDA, stops here rather than training on CPU.
check_gpus() {
  local out rc=0
  [ -n "${GPUS:-}" ] || return 0
  out=$(docker run --rm --network none --read-only --tmpfs /tmp --cap-drop ALL --gpus "$GPU_FLAG" \
    --entrypoint python3 "$FLARE_IMAGE" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 3)' 2>&1) \
    || rc=$?
  [ "$rc" != 3 ] || die "GPUS=$GPUS: containers get the GPUs but the FLARE image's torch finds no CUDA device (a CPU-only torch, e.g. from TORCH_INDEX_URL, or a driver older than torch's CUDA): rebuild the image with PyPI's torch, or leave GPUS empty"
  [ "$rc" = 0 ] || die "GPUS=$GPUS: Docker cannot give containers these GPUs ($(grep -m1 '^docker: ' <<<"$out" || tail -n1 <<<"$out")): the host needs the NVIDIA driver and the NVIDIA Container Toolkit (README \"GPUs\"), or leave GPUS empty"
}

# The job as the knobs give it; empty knobs take the job's defaults (job/recipe.py DEFAULTS).
job_args() {
  echo --env prod --startup-kit /kit --no-wait --name "$JOB_NAME" ${ROUNDS:+--rounds "$ROUNDS"} --dataset "$DATASET" \
    ${TORCH_THREADS:+--torch-threads "$TORCH_THREADS"} ${LR:+--lr "$LR"} \
    ${LOCAL_EPOCHS:+--local-epochs "$LOCAL_EPOCHS"} ${BATCH_SIZE:+--batch-size "$BATCH_SIZE"}
}

check_knobs
[ "${1:-}" != --knobs ] || { check_project; exit 0; }
if [ "${1:-}" = --submit ]; then
  [ -n "$(compose ps -q --status running server 2>/dev/null)" ] || die "the stack is not running: \`make up\` first"
  # shellcheck disable=SC2046 # job_args's words are the knobs checked above: no spaces, no globs
  out=$(admin fedtrack-job $(job_args) 2>&1) || { echo "$out" >&2; exit 1; }
  echo "Submitted job $(sed -n 's/^submitted job //p' <<<"$out" | tail -n1) ($(sed -n 's/^job plan: //p' <<<"$out")): a new run at each site."
  echo "Wait for it with \`make wait\`."
  exit 0
fi
if [ "${1:-}" = --check ]; then
  check_project
  if docker image inspect "$FLARE_IMAGE" >/dev/null 2>&1; then check_gpus; fi
  exit 0
fi
# Bundles (--compose-file) are for other hosts: only the host that starts the services is checked.
[ "${1:-}" = --compose-file ] || check_gpus

# One run of the generator checks the project and writes the compose file; written again only when it changed
# (the sites, GPUS, or stack/compose.template.yml).
topology plan > .docker-compose.yml.new || { rm -f .docker-compose.yml.new; exit 2; }
SITES=() PORTS=()
for spec in $(head -n1 .docker-compose.yml.new); do SITES+=("${spec%%=*}") PORTS+=("${spec#*=}"); done
sed -i 1d .docker-compose.yml.new
if cmp -s .docker-compose.yml.new docker-compose.yml; then
  rm .docker-compose.yml.new
else
  mv .docker-compose.yml.new docker-compose.yml
  echo "docker-compose.yml: written again from provision/project.yml (sites: ${SITES[*]}${GPUS:+; GPUS=$GPUS})"
fi
[ "${1:-}" != --compose-file ] || exit 0

for i in "${!SITES[@]}"; do
  site=${SITES[$i]} port=${PORTS[$i]}
  # A port held by anything but this project's own MLflow is a clear error, not a half-started stack.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
     && [ "$(compose port "mlflow-$site" 5000 2>/dev/null)" != "127.0.0.1:$port" ]; then
    die "port $port ($site's MLflow UI) is in use on 127.0.0.1; free it, or give $site another: mlflow_port in provision/project.yml or MLFLOW_PORT_$(tr 'a-z-' 'A-Z_' <<<"$site")"
  fi
done
mkdir -p "${DATA_DIR:-./data}"

# </dev/null: compose asks before it recreates a volume whose settings changed (an older deployment's,
# without its label); no answer is "no", so a site's runs are never deleted by `make up`.
compose run --rm -T provision </dev/null
echo "Starting services; the job goes in as soon as the server and every site's client answer..."
# --remove-orphans: a site no longer in the project stops (its volumes stay, for `make clean` to check).
compose up -d --remove-orphans </dev/null
# One admin session: it waits for the sites while the job is built, then submits it unless a job of
# this name still runs. The job takes its sites from the project (mounted there).
# shellcheck disable=SC2046 # as in --submit
out=$(admin fedtrack-job $(job_args) --once --ready-timeout "${UP_TIMEOUT:-600}" 2>&1) || { echo "$out" >&2; exit 1; }
if job_id=$(sed -n 's/^running job //p' <<<"$out") && [ -n "$job_id" ]; then
  echo "Job $job_id ($JOB_NAME) is still running: not submitting another."
else
  job_id=$(sed -n 's/^submitted job //p' <<<"$out" | tail -n1)
  echo "Submitted job $job_id ($(sed -n 's/^job plan: //p' <<<"$out"))."
fi

# Each site's MLflow: ready when its UI port answers /health (the job does not wait for it: each site
# spools its records until then). A service that exits or restarts instead is an error, at once.
deadline=$((SECONDS + ${UP_TIMEOUT:-600})) tries=0
for i in "${!SITES[@]}"; do
  # (A subshell: Docker's port proxy accepts before MLflow listens, and a write to it may raise SIGPIPE.)
  until (exec 3<>"/dev/tcp/127.0.0.1/${PORTS[$i]}" && printf 'GET /health HTTP/1.0\r\n\r\n' >&3 \
         && grep -q '^HTTP/1.[01] 200' <&3) 2>/dev/null; do
    if [ $SECONDS -gt "$deadline" ]; then die "${SITES[$i]}'s MLflow does not answer on 127.0.0.1:${PORTS[$i]}: see \`make logs\`"; fi
    ((++tries % 10)) || bad=$(compose ps -a --format '{{.Service}} {{.State}}' | awk '$2 ~ /^(exited|restarting|dead)$/ {print $1}')
    [ -z "${bad:-}" ] || die "service(s) $(echo $bad) stopped or keep restarting: see \`make logs\` (the job was submitted)"
    sleep 0.3
  done
done
echo "  job id:          $job_id"
ui_urls
echo "Follow it with \`make status\`, wait for it with \`make wait\`."
