"""Test support: the local-process system (stack/local.py) and the project's sites, for every tier."""

import json
import time

from fedtrack.project import Project
from stack.local import (  # noqa: F401 - re-exported for the tests
    BIN, JOB_DIR, JOB_PY, PROJECT, ROOT, FlareSystem, MLflowServer, copy_checkout, free_port, run_job, start, stop,
    wait_until, write_project,
)

# The sites are the project's clients: no test spells a site's name (checks.py re-exports this).
SITES = tuple(Project(PROJECT).sites)


def load_json(path: str):
    with open(path) as f:
        return json.load(f)


def new_spool(tmp_path, uri: str, name: str, site: str = SITES[0], **kw):
    """A spool writer in tmp_path/spool for job `name` at `site`, delivering to `uri`."""
    from fedtrack.spool.writer import SpoolWriter

    meta = {"tracking_uri": uri, "experiment_name": name, "site": site, "job_id": name, "run_name": name,
            "created_ms": int(time.time() * 1000)}
    return SpoolWriter(str(tmp_path / "spool"), name, meta, **kw)
