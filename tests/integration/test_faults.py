"""Faults a deployment meets, on the shared stack (run after the other Docker tests: marker
`faults`): an admin's abort, a killed client, a full spool volume, a server that stops or restarts,
and `make clean` while something would be lost. Every job ends in a true state, at the server, in
`make wait` and in each site's MLflow run; no healthcheck reads a log."""

import json
import os
import re
import subprocess
import time

import pytest

from checks import SITES, site_run
from integration.deployment import Deployment
from support import ROOT, wait_until

pytestmark = [pytest.mark.docker, pytest.mark.faults]

ENDED = ("FINISHED", "FAILED", "KILLED")
SITE, OTHER = SITES[:2]  # the site these faults hit, and a site that runs on beside it

# For the full-spool test only: SITE's tracking spool on a 16 MiB tmpfs, so that a test can fill it
# (never the host's disk) and watch records fail, be counted, and resume. A compose overlay.
SMALL_SPOOL = f"""services:
  {SITE}:
    tmpfs:
      - /tmp:size=512m
      - /home/flare:size=64m
      - /workspace/tracking-spool:size=16m,uid=10001,gid=10001,mode=0700
    environment:
      # No system metrics (the site's setting): their count would depend on the job's length; the sum below
      # counts what the script logs.
      FEDTRACK_SYSTEM_METRICS_INTERVAL: "0"
"""


LOST_AFTER = "12"  # seconds of a site's silence that fail a job here (production: 60, fedtrack.names.LOST_AFTER)


def job_in_round_2(stack, suffix: str) -> tuple:
    """(name, job id) of a new 30-round job, once SITE has begun its round 2."""
    name = f"{stack.job_name}-{suffix}"
    job_id = stack.submit(name, 30, "--lost-after", LOST_AFTER)
    stack.wait_for_round(SITE, name, 2)
    return name, job_id


def ended_run(stack, site: str, name: str, job_id: str, wait: float = 300) -> dict:
    return site_run(stack.mlflow(site), f"{name}-{site}", site, job_id, wait=wait, until=ENDED)


def health(stack, service: str) -> str:
    cid = stack.compose("ps", "-q", service).stdout.strip()
    return subprocess.run(["docker", "inspect", "-f", "{{.State.Health.Status}}", cid],
                          capture_output=True, text=True).stdout.strip()


def spool_line(stack, site: str) -> str:
    return stack.compose("exec", "-T", site, "fedtrack-spool", "status").stdout.strip()


def make_wait_fails(stack, job_id: str, status: str) -> str:
    result = stack.make("wait", timeout=900, check=False)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    line = next((l for l in out.splitlines() if f"error: job {job_id} did not complete: {status}" in l), None)
    assert line, out
    return line


# --------------------------------------------------------------------------- make clean while something would be lost


def test_make_clean_refuses_while_a_spool_holds_records_then_an_abort_ends_both_runs_killed(stack, idle):
    """SITE's MLflow is down, so its spool holds the job's records: `make clean` refuses and
    removes nothing; an admin's abort_job then ends the job, and both sites' runs end KILLED."""
    name = f"{stack.job_name}-abort"
    stack.compose("stop", f"mlflow-{SITE}")
    try:
        job_id = stack.submit(name, 30)
        stack.wait_for_round(OTHER, name, 1)
        wait_until(lambda: int(stack.compose("exec", "-T", SITE, "fedtrack-spool", "count").stdout.strip() or 0) > 0, 300,
                   f"records in {SITE}'s spool")
        volumes = stack.compose("config", "--volumes").stdout.split()
        refused = stack.make("clean", check=False, extra=["CONFIRM=yes"])
        assert refused.returncode != 0
        # SITE's spool holds the job's records; OTHER's may hold the few its forwarder has not sent yet
        assert re.search(rf"error: undelivered tracking records \([^)]*{re.escape(SITE)}-workspace: [1-9]\d*", refused.stderr), \
            refused.stderr
        assert "DISCARD_UNDELIVERED=yes" in refused.stderr and "Nothing removed" in refused.stderr
        mlflow_only = stack.make("clean", check=False, extra=["DISCARD_UNDELIVERED=yes"])
        assert mlflow_only.returncode != 0 and "make clean CONFIRM=yes" in mlflow_only.stderr, mlflow_only.stderr
        left = subprocess.run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={stack.name}"],
                              capture_output=True, text=True).stdout.split()
        assert sorted(f"{stack.name}_{v}" for v in volumes) == sorted(left), "make clean removed a volume it refused"
        assert stack.rounds_begun(OTHER, name) >= 1 and stack.compose("ps", "-q", SITE).stdout.strip()

        stack.admin_python("print(sess.abort_job(sys.argv[1]))", job_id)
        make_wait_fails(stack, job_id, "FINISHED:ABORTED")
    finally:
        stack.compose("start", f"mlflow-{SITE}")
    for site in SITES:
        run = ended_run(stack, site, name, job_id)
        assert run["info"]["status"] == "KILLED", f"{site}: {run['info']}"


# --------------------------------------------------------------------------- a client killed mid-job


def test_a_killed_client_fails_the_job_and_both_runs_end_failed_losing_nothing(stack, idle):
    name, job_id = job_in_round_2(stack, "kill")
    stack.compose("kill", SITE)
    killed = time.monotonic()
    stack.compose("up", "-d", "--no-deps", SITE)  # back, as a restart policy or a host reboot would bring it
    out = make_wait_fails(stack, job_id, "FINISHED:")
    print(f"\nthe job ended {time.monotonic() - killed:.0f} s after {SITE}'s client was killed: {out}")
    for site in SITES:
        run = ended_run(stack, site, name, job_id)
        assert run["info"]["status"] == "FAILED", f"{site}: {run['info']}"
        # Nothing logged before the kill is lost, nothing doubled: the global step runs from 0 without a gap.
        steps = sorted(m["step"] for m in stack.mlflow(site).history(run["info"]["run_id"], "train_loss"))
        assert steps and steps == list(range(len(steps))), f"{site}: train_loss steps have gaps or repeats"
    wait_until(lambda: health(stack, SITE) == "healthy", 300, f"{SITE} healthy again")


# --------------------------------------------------------------------------- the server stops, the server restarts


def test_a_server_restart_mid_job_ends_the_job_and_the_next_make_up_runs_a_new_one(stack, idle):
    """The server stops in round 2 (the clients turn unhealthy) and starts again (healthy again): the
    job is marked ABANDONED, both runs end KILLED (README), and `make up` runs a new job to the end."""
    name, job_id = job_in_round_2(stack, "restart")
    stack.compose("stop", "server")
    stopped = time.monotonic()
    try:
        wait_until(lambda: all(health(stack, s) == "unhealthy" for s in SITES), 120, "both clients unhealthy")
        unhealthy_after = time.monotonic() - stopped
    finally:
        stack.compose("start", "server")
    back = time.monotonic()
    print(f"\nboth clients unhealthy {unhealthy_after:.0f} s after the server stopped")
    assert unhealthy_after <= 60, f"the clients turned unhealthy only after {unhealthy_after:.0f} s"  # a stall detector
    out = make_wait_fails(stack, job_id, "FINISHED:ABANDONED")
    took = time.monotonic() - back
    print(f"\nthe job was marked ended {took:.0f} s after the server was back")
    assert "the FL server restarted while the job ran" in out, out
    assert took <= 120, f"the job stayed unfinished {took:.0f} s after the server's return"
    assert re.search(rf"job {job_id} {name} FINISHED:ABANDONED: the FL server restarted", stack.make("status").stdout)
    wait_until(lambda: all(health(stack, s) == "healthy" for s in ("server", *SITES)), 300, "all healthy again")
    for site in SITES:
        run = ended_run(stack, site, name, job_id)
        print(f"{site}: run {run['info']['status']}")
        assert run["info"]["status"] == "KILLED", f"{site}: {run['info']}"
    stack.up("ROUNDS=1")  # the stack's own job name: none runs, so this submits
    assert f"job {stack.job_ids[-1]} FINISHED:COMPLETED" in stack.make("wait", timeout=900).stdout


# --------------------------------------------------------------------------- make clean removes only its own


def test_make_clean_removes_only_what_the_project_made(stack, tmp_path):
    """KITS_ROOT and CA_DIR that hold other files, another project's kits among them: only the names
    provisioning listed go (its stamps, written here as provision.sh writes them); a folder without a
    stamp is refused, and so is the checkout. Its own compose project name: the shared stack is not touched."""
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    for folder in (kits / "fedtrack" / "prod_00" / SITE, kits / "other" / "prod_00" / SITE, kits / "secrets" / SITE, ca):
        folder.mkdir(parents=True)
    (kits / ".project.sha256").write_text("x")
    (kits / "secrets" / SITE / "p").write_text("x")
    (ca / "cert.json").write_text("{}")
    (kits / "canary.txt").write_text("mine")
    (ca / "canary.txt").write_text("mine")
    with open(os.path.join(ROOT, "provision", "provision.sh")) as f:
        header = re.search(r'^STAMP_HEADER="(.*)"$', f.read(), re.M).group(1)
    (kits / ".provisioned-kits").write_text(f"{header}\nfedtrack\nsecrets\n.project.sha256\n")
    (ca / ".provisioned-ca").write_text(f"{header}\ncert.json\n")
    canary = Deployment(ROOT, {"COMPOSE_PROJECT_NAME": f"fedtrack-canary-{os.getpid()}", "KITS_ROOT": kits, "CA_DIR": ca})
    result = canary.make("clean", timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(os.listdir(kits)) == ["canary.txt", "other"] and sorted(os.listdir(ca)) == ["canary.txt"]
    (kits / "secrets").mkdir()  # e.g. ~/secrets under KITS_ROOT=$HOME: no stamp names it now
    refused = canary.make("clean-kits", timeout=120, check=False)
    assert refused.returncode != 0 and "no .provisioned-kits" in refused.stderr, refused.stderr
    assert sorted(os.listdir(kits)) == ["canary.txt", "other", "secrets"]
    refused = Deployment(ROOT, {"KITS_ROOT": "."}).make("clean-kits", timeout=120, check=False)
    assert refused.returncode != 0 and "refusing to clean ." in refused.stderr, refused.stderr


def test_make_clean_refuses_another_compose_projects_volume(stack, tmp_path):
    """`make clean COMPOSE_PROJECT_NAME=<other>` removes nothing without this deployment's label; the shared
    stack's volumes carry it."""
    other = f"fedtrack-other-{os.getpid()}"
    volume = f"{other}_pgdata"
    subprocess.run(["docker", "volume", "create", "--label", f"com.docker.compose.project={other}", volume],
                   check=True, capture_output=True)
    try:
        result = Deployment(ROOT, {"COMPOSE_PROJECT_NAME": other, "KITS_ROOT": tmp_path / "k", "CA_DIR": tmp_path / "c"}
                            ).make("clean", timeout=300, check=False, extra=["CONFIRM=yes"])
        assert result.returncode != 0 and f"volume {volume} of compose project {other} is not this deployment's" \
            in result.stderr, result.stderr
        assert subprocess.run(["docker", "volume", "inspect", volume], capture_output=True).returncode == 0
        ours = subprocess.run(["docker", "volume", "inspect", f"{stack.name}_server-workspace"], capture_output=True,
                              text=True).stdout
        assert json.loads(ours)[0]["Labels"]["fedtrack.project"] == "fedtrack"
    finally:
        subprocess.run(["docker", "volume", "rm", volume], capture_output=True)


# --------------------------------------------------------------------------- a full spool volume


def test_a_full_spool_volume_is_counted_makes_the_client_unhealthy_and_delivery_resumes(stack, first_job, idle, tmp_path):
    """SITE's spool folder is a 16 MiB tmpfs here (the SMALL_SPOOL overlay: never the host's disk),
    filled before the job: every record fails until the filler is removed mid-job; then spooling
    resumes, and delivered + counted-as-lost adds up to what the site logged."""
    overlay = tmp_path / "small-spool.yml"
    overlay.write_text(SMALL_SPOOL)
    files = ["-f", os.path.join(ROOT, "docker-compose.yml"), "-f", str(overlay)]
    name = f"{stack.job_name}-full"
    rounds = 8  # long enough that the filler goes while it trains
    stack.compose(*files, "up", "-d", "--no-deps", "--wait", SITE, timeout=600)
    try:
        check_full_spool(stack, name, rounds, first_job)
    finally:  # SITE back on its spool volume, as the other tests expect it
        stack.make("wait", check=False)
        stack.compose("up", "-d", "--no-deps", "--wait", SITE, timeout=600)


def check_full_spool(stack, name: str, rounds: int, first_job: str):
    stack.compose("exec", "-T", SITE, "sh", "-c", "cat /dev/zero > /workspace/tracking-spool/filler", check=False)
    wait_until(lambda: health(stack, SITE) == "unhealthy", 60, f"{SITE} unhealthy with a full spool")
    job_id = stack.submit(name, rounds)
    stack.wait_for_round(OTHER, name, 2)
    wait_until(lambda: "FAILING now" in spool_line(stack, SITE), 120, f"{SITE}'s failed writes in its status")
    status = stack.make("status").stdout
    lost_then = int(re.search(rf"{re.escape(SITE)} tracking spool: .* (\d+) lost \(spool write failed\); "
                              r"spool writes are FAILING now", status).group(1))
    assert lost_then > 0, status
    assert stack.rounds_begun(OTHER, name) < rounds - 2, "the job ended before space returned: give it more rounds"
    stack.compose("exec", "-T", SITE, "rm", "/workspace/tracking-spool/filler")
    wait_until(lambda: health(stack, SITE) == "healthy", 60, f"{SITE} healthy once space returns")
    assert f"job {job_id} FINISHED:COMPLETED" in stack.make("wait", timeout=900).stdout
    run = ended_run(stack, SITE, name, job_id)
    server = stack.mlflow(SITE)
    delivered = sum(len(server.history(run["info"]["run_id"], k)) for k in ("train_loss", "accuracy", "local_accuracy"))
    lost = int(re.search(r"(\d+) lost \(spool write failed\)", spool_line(stack, SITE)).group(1))
    # What SITE logged: per round one accuracy, one local_accuracy and its train_loss steps (as at SITE in
    # the stack's first job), then the final model's accuracy.
    first = site_run(server, f"{stack.job_name}-{SITE}", SITE, first_job)
    steps_per_round = len(server.history(first["info"]["run_id"], "train_loss")) // stack.rounds
    params_and_tags = 7  # the params logged at round 0, lost too while the volume was full
    print(f"\n{SITE}: {delivered} points delivered, {lost} records lost (with the full volume: {lost_then})")
    assert lost >= lost_then and delivered > 0
    assert delivered + lost == rounds * (steps_per_round + 2) + 1 + params_and_tags, (delivered, lost, steps_per_round)
    assert run["info"]["status"] == "FINISHED"
    assert json.dumps(run["data"].get("tags", [])).count("records_lost") == 1, "the run does not say it lost records"
