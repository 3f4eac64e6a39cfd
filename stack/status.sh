#!/usr/bin/env bash
# `make status`: services, the job's state (why one did not complete), and per site (the sites of the
# compose file: every `mlflow-<site>` service) the metric counts in its MLflow and its tracking spool.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${COMPOSE:=docker compose}" "${KITS_ROOT:?}"
compose() { $COMPOSE "$@"; }

compose ps --format 'table {{.Service}}\t{{.Status}}\t{{.Ports}}'
compose run --rm -T admin fedtrack-admin status
for site in $(compose config --services | sed -n 's/^mlflow-//p'); do
  if addr=$(compose port "mlflow-$site" 5000 2>/dev/null) && [ -n "$addr" ]; then
    python3 -m stack.status --secrets "$KITS_ROOT/secrets" "$site=http://$addr"
  else
    echo "$site: its MLflow is not running"
  fi
  printf '%s tracking spool: ' "$site"
  compose exec -T "$site" fedtrack-spool status || echo "(site not running)"
done
