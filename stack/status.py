"""Per-site tracking status, read from each site's MLflow through its published UI port, logged in as
the site's MLflow admin (passwords from the secrets `make provision` made).

    python3 -m stack.status [--secrets DIR] SITE=http://127.0.0.1:PORT ...     (from the checkout's root)
"""

import argparse
import os
import sys

from fedtrack.names import METRICS
from stack.mlflow_rest import MLflowREST, tags


def admin_login(secrets: str, site: str):
    """(user, password) of the site's MLflow admin, or None where the secrets are not readable."""
    if not secrets:
        return None
    try:
        with open(os.path.join(secrets, site, "mlflow", "admin_password")) as f:
            return ("admin", f.read().strip())
    except OSError:
        return None


def site_status(site: str, uri: str, auth=None) -> str:
    server = MLflowREST(uri, timeout=10, auth=auth)
    try:
        runs = server.runs()
    except OSError as e:
        reason = getattr(e, "reason", e)
        if getattr(e, "code", None) == 401:
            reason = "it needs a login: run `make status` as a user who can read the kits' secrets (e.g. root)"
        return f"{site} {uri}: not answering ({reason})"
    if not runs:
        return f"{site} {uri}: no runs yet"
    latest = max(runs, key=lambda r: r["info"]["start_time"])
    counts = ", ".join(f"{len(server.history(latest['info']['run_id'], k))} {k}" for k in METRICS)
    job = tags(latest).get("job_id", "?")
    return f"{site} {uri}: {len(runs)} run(s); latest (job {job}) {latest['info']['status']}: {counts}"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--secrets", help="the folder of the sites' secrets (KITS_ROOT/secrets)")
    p.add_argument("sites", nargs="+", metavar="SITE=URI")
    args = p.parse_args(argv)
    for spec in args.sites:
        site, _, uri = spec.partition("=")
        print(site_status(site, uri, admin_login(args.secrets, site)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
