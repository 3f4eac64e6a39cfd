"""A job whose training fails ends in a true state (README, "Every job ends in a true state", the row
"training or the server's workflow fails"): a FINISHED: failure status at the server, and each
site's MLflow run FAILED, neither FINISHED nor left RUNNING. On the provisioned local processes."""

import glob
import os
import re

import pytest

from checks import SITES, site_run
from stack.mlflow_rest import MLflowREST
from support import run_job

pytestmark = pytest.mark.processes


def test_training_that_fails_at_every_site_ends_failed(mlflow_servers, flare_system, tmp_path):
    """The vetted client.py raises at each site: --dataset cifar10 names a folder without CIFAR-10
    (only the simulator checks that before it starts). Each site's receiver has opened its run by then:
    it starts with the job, the training script after it."""
    name = f"fails-{os.getpid()}"
    # The sites' own data folder (their ./data: FEDTRACK_DATA_DIR is not set) holds no CIFAR-10.
    assert not any(os.path.exists(os.path.join(flare_system.kit(s), "data", "cifar-10-batches-py")) for s in SITES)
    result = run_job(*(a for s in SITES for a in ("--site", f"{s}={mlflow_servers[s].uri}")),
                     "--rounds", "1", "--local-epochs", "1", "--dataset", "cifar10",
                     "--env", "prod", "--startup-kit", flare_system.admin_kit, "--name", name, "--timeout", "300")
    out = result.stdout[-3000:] + result.stderr[-3000:]
    submitted = re.search(r"submitted job (\S+)", result.stdout)
    assert submitted, out
    job_id = submitted.group(1)
    ended = re.search(rf"job {job_id} did not complete: (FINISHED:\w+)", result.stderr)
    assert result.returncode == 1 and ended and ended.group(1) != "FINISHED:COMPLETED", out
    print(f"\nthe job ended {ended.group(1)}")
    for site in SITES:
        # The failure is the one made here, in the training script at this site.
        logs = glob.glob(os.path.join(flare_system.kit(site), job_id, "**", "log.txt"), recursive=True)
        assert any("CIFAR-10 not found" in open(p, errors="ignore").read() for p in logs), f"{site}: {logs}"
        run = site_run(MLflowREST(mlflow_servers[site].uri), f"{name}-{site}", site, job_id,
                       until=("FINISHED", "FAILED", "KILLED"))
        assert run["info"]["status"] == "FAILED", f"{site}: {run['info']}"
