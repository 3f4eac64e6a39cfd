"""Each site's class allow list (fedtrack/policy/install.py) refuses a class this job does not use
(README, "ConvertToFedEvent"): a config-only job whose site configuration adds nvflare's
ConvertToFedEvent, which would forward every metric to the server, is refused by every site of the
provisioned local processes, never trains there, and no metric reaches the server."""

import glob
import json
import os
import re
import time
import zipfile

import pytest

from checks import SITES
from stack.mlflow_rest import MLflowREST
from support import JOB_DIR, run_job, wait_until

pytestmark = pytest.mark.processes

FORWARDER = "nvflare.app_common.widgets.convert_to_fed_event.ConvertToFedEvent"
# What a site's job process raises when it builds a component its allow list lacks (nvflare's
# private/json_configer.py wrapping app_common/widgets/component_path_authorizer.py). In `warn` mode
# the same sentence is only logged, followed by "; allowing it because ...": the `$` tells them apart.
REFUSAL = re.compile(r"ComponentNotAuthorized: component not authorized: Component "
                     + re.escape(repr(FORWARDER)) + r" at config path '[^']+' is not in allow_list$", re.M)
GUARD = "metric_guard.json"  # fedtrack.server.guard's count of analytics records that reached the server
TERMINAL = ("FINISHED", "ABORTED", "FAILED")


def add_forwarder(job_dir: str, site: str):
    """The component as nvflare's default client configuration has it, put back at this site."""
    path = os.path.join(job_dir, f"app_{site}", "config", "config_fed_client.json")
    with open(path) as f:
        config = json.load(f)
    config["components"].append({"id": "fed_forwarder", "path": FORWARDER,
                                 "args": {"events_to_convert": ["analytix_log_stats"], "fed_event_prefix": "fed."}})
    with open(path, "w") as f:
        json.dump(config, f, indent=2)


def submit_and_wait(kit: str, job_dir: str, timeout: float) -> tuple:
    """(job id, final status) of the job folder submitted with the admin kit, as `make up` would."""
    from fedtrack.admin import session

    sess = session(kit)
    try:
        job_id = sess.submit_job(job_dir)
        deadline = time.monotonic() + timeout
        while True:
            status = sess.get_job_status(job_id)
            if status and status.startswith(TERMINAL):
                return job_id, status
            assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout:.0f} s"
            time.sleep(1)
    finally:
        sess.close()


def server_guard(storage: str, job_id: str) -> dict:
    """The server's guard report, from the job's workspace in the server's job store (saved as the job ends)."""
    archive = os.path.join(storage, "jobs-storage", job_id, "workspace")

    def saved():
        try:
            return GUARD in zipfile.ZipFile(archive).namelist()
        except (OSError, zipfile.BadZipFile):  # not there yet, or still being written
            return False

    wait_until(saved, 60, f"{GUARD} in {archive}")
    with zipfile.ZipFile(archive) as z:
        return json.loads(z.read(GUARD))


def test_every_site_refuses_a_job_that_adds_convert_to_fed_event(mlflow_servers, flare_system, tmp_path):
    name = f"allow-list-{os.getpid()}"
    t0 = time.monotonic()
    # The job as prod builds it (config only, site code installed at the sites), 1 round: kept fast.
    exported = run_job(*(a for s in SITES for a in ("--site", f"{s}={mlflow_servers[s].uri}")),
                       "--rounds", "1", "--local-epochs", "1", "--system-metrics-interval", "0",
                       "--env", "export", "--export-dir", str(tmp_path), "--site-code", JOB_DIR, "--name", name)
    assert exported.returncode == 0, exported.stdout[-3000:] + exported.stderr[-3000:]
    job_dir = os.path.join(tmp_path, name)
    for site in SITES:
        add_forwarder(job_dir, site)

    # Submitted directly: fedtrack-job's own audit (check_config_only) would refuse this folder first.
    job_id, status = submit_and_wait(flare_system.admin_kit, job_dir, 300)
    print(f"\njob {job_id} ended {status} after {time.monotonic() - t0:.1f} s")
    assert status.startswith("FINISHED:") and status != "FINISHED:COMPLETED", status

    for site in SITES:
        logs = glob.glob(os.path.join(flare_system.kit(site), job_id, "**", "log.txt"), recursive=True)
        text = "".join(open(p, errors="ignore").read() for p in logs)
        refused = REFUSAL.search(text)
        assert refused, f"{site}: no allow-list refusal of {FORWARDER} in {logs}"
        print(f"{site}: {refused.group(0)}")
        # Refused while building the job's components: the receiver never opened its spool, client.py never trained.
        assert f"tracking {site} to " not in text and f"{site}: round " not in text, f"{site} started the job"
        experiment = f"{name}-{site}"
        assert MLflowREST(mlflow_servers[site].uri).experiment_by_name(experiment) is None, \
            f"{site}: its MLflow has experiment {experiment}"

    # The server ran its side of the job; its guard counted no analytics record from any site.
    assert server_guard(flare_system.storage, job_id) == {"analytics_events": 0, "sites": []}
