"""Test support: the local-process system (stack/local.py) and the project's sites, for every tier."""

import json

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
