#!/usr/bin/env bash
# `make up`: images, kits, services (waiting until healthy and both clients registered), then the
# job, unless a job of the same name is still running. Returns while the job trains.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${JOB_NAME:?}" "${ROUNDS:?}" "${DATASET:?}"
: "${MLFLOW_SITE1_PORT:?}" "${MLFLOW_SITE2_PORT:?}"
compose() { $COMPOSE "$@"; }
admin() { compose run --rm -T admin "$@"; }

for site in 1 2; do
  port_var=MLFLOW_SITE${site}_PORT; port=${!port_var}
  # A port held by anything but this project's own MLflow is a clear error, not a half-started stack.
  if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null \
     && [ "$(compose port "mlflow-site-$site" 5000 2>/dev/null)" != "127.0.0.1:$port" ]; then
    echo "error: port $port is in use on 127.0.0.1; free it or set $port_var in .env" >&2
    exit 1
  fi
done
if [ "$DATASET" = cifar10 ] && [ ! -f "${DATA_DIR:-./data}/cifar-10-batches-py/batches.meta" ]; then
  echo "error: CIFAR-10 not found in ${DATA_DIR:-./data}: extract https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz there, or set DATASET=digits" >&2
  exit 1
fi
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
