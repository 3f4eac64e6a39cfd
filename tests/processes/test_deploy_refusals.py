"""Each site and the server decide what runs (fedtrack/policy/validator.py): a job built as an attacker
holding the admin kit would build it, from the real exported job with one edit, is refused at deploy by
the participant it targets, with the reason in the job's deploy detail, on the provisioned local
processes under the deployment's policy. None of them runs anywhere: no file of theirs at any site,
no experiment in any site's MLflow. The same attacks on the Docker stack: tests/integration/test_attacks.py."""

import glob
import os
import shutil
import time

import pytest

from attacks import ATTACKS, MARKER, load, write
from checks import SITES
from stack.mlflow_rest import MLflowREST
from support import run_job

pytestmark = pytest.mark.processes

TERMINAL = ("FINISHED", "ABORTED", "FAILED")


@pytest.fixture(scope="module")
def exported(tmp_path_factory, mlflow_servers):
    """The job as `make submit` builds it: 1 round, 1 epoch (an attack that got through would run fast)."""
    out = tmp_path_factory.mktemp("refusals")
    result = run_job(*(a for s in SITES for a in ("--site", f"{s}={mlflow_servers[s].uri}")), "--rounds", "1",
                     "--local-epochs", "1", "--env", "export", "--export-dir", str(out), "--name", "base")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "base"


def submit_and_wait(kit: str, job_dir, timeout: float = 120) -> tuple:
    """(job id, final status, deploy detail) of the job folder submitted with the admin kit."""
    from fedtrack.admin import session

    sess = session(kit)
    try:
        job_id = sess.submit_job(str(job_dir))
        deadline = time.monotonic() + timeout
        while not (status := sess.get_job_status(job_id) or "").startswith(TERMINAL):
            assert time.monotonic() < deadline, f"job {job_id} still {status} after {timeout:.0f} s"
            time.sleep(0.5)
        return job_id, status, sess.get_job_meta(job_id).get("job_deploy_detail", [])
    finally:
        sess.close()


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_the_targeted_participant_refuses_the_job_at_deploy(attack, exported, flare_system, mlflow_servers, tmp_path):
    edit, refuser, reason = ATTACKS[attack]
    job_dir = tmp_path / f"attack-{list(ATTACKS).index(attack)}"
    shutil.copytree(exported, job_dir)
    config = load(job_dir)
    config["meta.json"]["name"] = name = f"attack-{list(ATTACKS).index(attack)}-{os.getpid()}"
    edit(config)
    write(config, job_dir)

    job_id, status, detail = submit_and_wait(flare_system.admin_kit, job_dir)
    print(f"\n{attack}: {status}; {detail}")
    assert status == "FINISHED:FAILED_TO_RUN", (status, detail)
    refusal = [d for d in detail if d.startswith(f"{refuser}: ")]
    assert refusal and reason in refusal[0], f"{refuser} gave no refusal naming {reason!r}: {detail}"
    # Refused before anything was built: no participant ran it, no site opened a run or wrote a file.
    for site in SITES:
        assert not glob.glob(os.path.join(flare_system.kit(site), job_id, "**", MARKER), recursive=True)
        assert not glob.glob(os.path.join(flare_system.kit(site), "**", MARKER), recursive=True)
        assert MLflowREST(mlflow_servers[site].uri).experiment_by_name(f"{name}-{site}") is None


def test_the_unedited_job_passes_every_check_and_its_sites_filter_their_results(exported, flare_system, tmp_path):
    """The control: the same exported job, unedited, completes; each site's log shows its privacy
    filter (local/privacy.json) was applied to the results it sent."""
    from fedtrack.site.filters import APPLIED

    job_dir = tmp_path / "control"
    shutil.copytree(exported, job_dir)
    config = load(job_dir)
    config["meta.json"]["name"] = f"control-{os.getpid()}"
    write(config, job_dir)
    job_id, status, detail = submit_and_wait(flare_system.admin_kit, job_dir, timeout=300)
    assert status == "FINISHED:COMPLETED", (status, detail)
    for site in SITES:
        logs = glob.glob(os.path.join(flare_system.kit(site), job_id, "**", "log.txt"), recursive=True)
        assert any(APPLIED in open(p, errors="ignore").read() for p in logs), f"{site}: no sign of its filter in {logs}"
