#!/usr/bin/env bash
# `make up`: images, kits, services (waiting until healthy and both clients registered), then the
# job, unless a job of the same name is still running. Returns while the job trains.
# `up.sh --check` only checks the knobs (make check, run before anything is built).
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${JOB_NAME:?}" "${ROUNDS:?}" "${DATASET:?}"
: "${MLFLOW_SITE1_PORT:?}" "${MLFLOW_SITE2_PORT:?}"
compose() { $COMPOSE "$@"; }
admin() { compose run --rm -T admin "$@"; }

# Bad input is one line saying what to fix, before anything is built or started (`make check`).
check_input() {
  local var value seen=" "
  [[ "$ROUNDS" =~ ^[0-9]+$ ]] && [ "$ROUNDS" -ge 1 ] && [ "$ROUNDS" -le 10000 ] \
    || die "ROUNDS=$ROUNDS: give a whole number of rounds from 1 to 10000"
  case "$DATASET" in digits|cifar10) ;; *) die "DATASET=$DATASET: use digits (bundled) or cifar10";; esac
  [[ "$JOB_NAME" =~ ^[a-z0-9][a-z0-9_-]{0,62}$ ]] || die "JOB_NAME=$JOB_NAME: use lowercase letters, digits, '-' and '_'"
  [[ "${TORCH_THREADS:-0}" =~ ^[0-9]+$ ]] || die "TORCH_THREADS=$TORCH_THREADS: give a whole number (0: torch's default)"
  for var in MLFLOW_SITE1_PORT MLFLOW_SITE2_PORT; do
    value=${!var}
    [[ "$value" =~ ^[0-9]+$ ]] && [ "$value" -ge 1 ] && [ "$value" -le 65535 ] \
      || die "$var=$value: give a port from 1 to 65535"
    [[ "$seen" != *" $value "* ]] || die "$var=$value: another site's MLflow already uses port $value; give each site its own"
    seen+="$value "
  done
  if [ "$DATASET" = cifar10 ] && [ ! -f "${DATA_DIR:-./data}/cifar-10-batches-py/batches.meta" ]; then
    die "CIFAR-10 not found in ${DATA_DIR:-./data}: extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there, or set DATASET=digits"
  fi
}
die() { echo "error: $*" >&2; exit 2; }
check_input
[ "${1:-}" != --check ] || exit 0

for site in 1 2; do
  port_var=MLFLOW_SITE${site}_PORT; port=${!port_var}
  # A port held by anything but this project's own MLflow is a clear error, not a half-started stack.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
     && [ "$(compose port "mlflow-site-$site" 5000 2>/dev/null)" != "127.0.0.1:$port" ]; then
    echo "error: port $port is in use on 127.0.0.1; free it or set $port_var in .env" >&2
    exit 1
  fi
done
mkdir -p "${DATA_DIR:-./data}"

compose run --rm -T provision
echo "Starting services and waiting until they are healthy (clients registered)..."
compose up -d --wait --wait-timeout "${UP_TIMEOUT:-600}" server site-1 site-2 mlflow-site-1 mlflow-site-2
admin python3 scripts/flare_admin.py clients site-1 site-2

if job_id=$(admin python3 scripts/flare_admin.py active "$JOB_NAME"); then
  echo "Job $job_id ($JOB_NAME) is still running: not submitting another."
else
  out=$(admin python3 job/job.py --env prod --startup-kit /kit --no-wait --name "$JOB_NAME" \
    --rounds "$ROUNDS" --dataset "$DATASET" --data-dir /data --torch-threads "${TORCH_THREADS:-0}" \
    --site "site-1=${SITE1_TRACKING_URI:-http://mlflow-site-1:5000}" \
    --site "site-2=${SITE2_TRACKING_URI:-http://mlflow-site-2:5000}" 2>&1) || { echo "$out" >&2; exit 1; }
  job_id=$(sed -n 's/^submitted job //p' <<<"$out" | tail -n1)
  echo "Submitted job $job_id ($JOB_NAME, $ROUNDS rounds, $DATASET)."
fi
cat <<EOT
  job id:          $job_id
  site-1 MLflow:   http://127.0.0.1:$MLFLOW_SITE1_PORT
  site-2 MLflow:   http://127.0.0.1:$MLFLOW_SITE2_PORT
Follow it with \`make status\`, wait for it with \`make wait\`.
EOT
