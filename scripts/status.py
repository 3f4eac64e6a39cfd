"""Per-site tracking status, read from each site's MLflow through its published UI port.

    python3 scripts/status.py site-1=http://127.0.0.1:5001 site-2=http://127.0.0.1:5002
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mlflow_rest import MLflowREST, tags  # noqa: E402

METRICS = ("train_loss", "accuracy", "local_accuracy")


def site_status(site: str, uri: str) -> str:
    server = MLflowREST(uri, timeout=10)
    try:
        runs = server.runs()
    except OSError as e:
        return f"{site} {uri}: not answering ({getattr(e, 'reason', e)})"
    if not runs:
        return f"{site} {uri}: no runs yet"
    latest = max(runs, key=lambda r: r["info"]["start_time"])
    counts = ", ".join(f"{len(server.history(latest['info']['run_id'], k))} {k}" for k in METRICS)
    job = tags(latest).get("job_id", "?")
    return f"{site} {uri}: {len(runs)} run(s); latest (job {job}) {latest['info']['status']}: {counts}"


def main(specs) -> int:
    for spec in specs:
        site, _, uri = spec.partition("=")
        print(site_status(site, uri))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
