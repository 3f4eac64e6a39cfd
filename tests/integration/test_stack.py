"""`make up` end to end on Docker Compose: the job finishes, each site's MLflow (through its
published port) holds its own complete run and nothing of the other site, the networks keep a
site's MLflow away from the server and the other site, the server holds no metric value, and
`make down` + `make up` keeps every earlier run."""

import re
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from checks import PROBE, SITES, accuracy_by_round, check_only_own_runs, check_site_run, files_holding, metric_strings, site_run

pytestmark = pytest.mark.docker


def running_job(stack) -> str:
    """The id of a job of the stack's name that runs now: the first one while `make up`'s job trains,
    else a new one (3 rounds: still running when `make up` looks)."""
    if not stack.first_done:
        return stack.job_ids[0]
    out = stack.make("submit", extra=["ROUNDS=3"]).stdout
    return re.search(r"Submitted job (\S+) \(", out).group(1)


def test_make_up_while_a_job_runs_submits_nothing_new_and_make_wait_follows_it_to_the_end(stack):
    job_id = running_job(stack)
    out = stack.make("up").stdout
    assert f"Job {job_id} ({stack.job_name}) is still running: not submitting another." in out, out
    result = stack.make("wait", timeout=1800)
    assert f"job {job_id} FINISHED:COMPLETED" in result.stdout, result.stdout


@pytest.fixture(scope="module")
def histories(finished_job):
    return finished_job["histories"]


def test_each_site_server_holds_its_own_complete_run(stack, histories):
    for site in SITES:
        acc = accuracy_by_round(histories[site])
        assert acc[-1] > acc[0], f"{site}: accuracy did not improve: {acc}"
        check_only_own_runs(stack.mlflow(site), site)


def mlflow_ips(stack, site: str) -> dict:
    """{network: address} of a site's MLflow: its private network and the one publishing its UI."""
    cid = stack.compose("ps", "-q", f"mlflow-{site}").stdout.strip()
    out = subprocess.run(["docker", "inspect", "-f", "{{range $n, $v := .NetworkSettings.Networks}}{{$n}}={{$v.IPAddress}} {{end}}", cid],
                         capture_output=True, text=True, check=True).stdout.split()
    nets = dict(item.split("=", 1) for item in out)
    assert set(nets) == {f"{stack.name}_{site}", f"{stack.name}_{site}-ui"}, nets
    return nets


def gateway(stack, network: str) -> str:
    return subprocess.run(["docker", "network", "inspect", f"{stack.name}_{network}", "-f", "{{(index .IPAM.Config 0).Gateway}}"],
                          capture_output=True, text=True, check=True).stdout.strip()


@pytest.mark.parametrize("site, outsiders", [(site, ["server", *(s for s in SITES if s != site)]) for site in SITES])
def test_a_sites_mlflow_is_invisible_to_the_server_and_the_other_site(stack, site, outsiders):
    ips = mlflow_ips(stack, site)
    host = gateway(stack, f"{site}-ui")
    # Nor through the host: the UI port is published on the host's loopback only.
    via_host = (f"import socket\ntry:\n socket.create_connection(('{host}', {stack.ports[site]}), 3); print('reached')\n"
                "except OSError:\n print('unreachable')")
    # Every outsider at once: each waits out its unanswered name lookup and connection attempts.
    with ThreadPoolExecutor(2 * len(outsiders)) as pool:
        probes = {s: pool.submit(stack.exec_python, s, PROBE, f"mlflow-{site}", *ips.values()) for s in outsiders}
        hosts = {s: pool.submit(stack.exec_python, s, via_host) for s in outsiders}
        for service in outsiders:
            result = probes[service].result()
            assert result.stdout.split() == ["no-resolve", *["unreachable"] * len(ips)], \
                f"{service} -> mlflow-{site} {list(ips.values())}: {result.stdout}{result.stderr}"
            assert hosts[service].result().stdout.strip() == "unreachable", f"{service} reached {site}'s UI port through the host"
    # ...while its own client resolves and reaches it on their private network.
    result = stack.exec_python(site, PROBE, f"mlflow-{site}", ips[f"{stack.name}_{site}"])
    assert result.stdout.split()[0] == "resolved" and result.stdout.split()[-1] == "reached", result.stdout


def test_the_server_holds_no_metric_value(stack, histories):
    needles = metric_strings(histories.values())
    assert len(needles) > 20
    with tempfile.TemporaryDirectory() as tmp:
        stack.copy_out("server", "/workspace", tmp)
        found_guard = files_holding(tmp, {'"analytics_events": 0'})
        assert any(name.endswith("!metric_guard.json") for name in found_guard), "no guard report in the job store"
        assert files_holding(tmp, needles) == {}
    logs = stack.compose("logs", "--no-color", "server").stdout
    assert logs and not [n for n in needles if n in logs]


def wall_seconds(run: dict) -> float:
    return (run["info"]["end_time"] - run["info"]["start_time"]) / 1000


OUTAGE = 15  # seconds: three times the stack's retry cap in the tests (DELIVERY_RETRY_CAP), so the forwarder backs off fully


def test_a_sites_mlflow_outage_loses_nothing(stack, histories, first_job, idle):
    """The absent site's MLflow is down before the job starts and back only after it ends; the
    paused site's is stopped during round 2 and started again OUTAGE s later. Nothing is lost,
    nothing doubled."""
    paused, absent = SITES[:2]
    name = f"{stack.job_name}-outage"
    stack.compose("stop", f"mlflow-{absent}")
    job_id = stack.submit(name, stack.rounds)
    stack.wait_for_round(paused, name, 2)
    stack.compose("stop", f"mlflow-{paused}")
    stopped = time.monotonic()
    status = stack.make("status").stdout
    assert re.search(rf"{re.escape(absent)} tracking spool: [1-9]\d* record\(s\) spooled and undelivered", status), status
    time.sleep(max(0.0, OUTAGE - (time.monotonic() - stopped)))
    stack.compose("start", f"mlflow-{paused}")
    assert f"job {job_id} FINISHED:COMPLETED" in stack.make("wait", timeout=1800).stdout
    stack.compose("start", f"mlflow-{absent}")
    for site in SITES:
        server = stack.mlflow(site)
        run = site_run(server, f"{name}-{site}", site, job_id, wait=300)  # delivered after the outage
        hist = check_site_run(server, run, site, stack.rounds)
        assert len(hist["train_loss"]) == len(histories[site]["train_loss"]), f"{site}: points lost"
        # A stall, not noise: the outage job's wall time (each run spans its job at the site) stays
        # within twice the normal job's plus 120 s. The two jobs run at different times on a shared
        # 2-core machine, this one beside `make status` and the outage's restarts: with a CPU hog on
        # one core it took 88-95 s against 18-19 s. Training that waited on tracking would take
        # minutes more (the stock receiver blocks about 247 s per failed flush) or never end
        # (the absent site's server is back only after the job).
        normal = site_run(server, f"{stack.job_name}-{site}", site, first_job)
        took, baseline = wall_seconds(run), wall_seconds(normal)
        bound = 2 * baseline + 120
        print(f"\n{site}: outage job {took:.1f} s, normal job {baseline:.1f} s, ratio {took / baseline:.2f} (bound {bound:.1f} s)")
        assert took <= bound, f"{site}: the outage job took {took:.1f} s vs {baseline:.1f} s for the normal job"
    status = stack.make("status").stdout
    for site in SITES:
        assert f"{site} tracking spool: 0 record(s) spooled" in status, status


def test_down_then_up_keeps_every_earlier_run(stack, histories, first_job, idle):
    before = {site: {r["info"]["run_id"] for r in stack.mlflow(site).runs()} for site in SITES}
    stack.make("down")
    assert stack.compose("ps", "-q").stdout.strip() == ""
    stack.up("ROUNDS=1")  # no job runs, so this submits another (1 round: `idle` waits for it)
    assert stack.job_ids[-1] != first_job
    for site in SITES:
        server = stack.mlflow(site)
        after = {r["info"]["run_id"] for r in server.runs()}
        assert before[site] <= after, f"{site} lost runs across down/up"
        old = site_run(server, f"{stack.job_name}-{site}", site, first_job)
        assert len(server.history(old["info"]["run_id"], "train_loss")) == len(histories[site]["train_loss"])


def test_make_submit_runs_another_job_with_its_knobs_and_make_status_counts_it(stack, idle):
    """On the running stack: ROUNDS=0 is one line and submits nothing; ROUNDS=2 LR=0.05 becomes a new
    run at each site with those params, and `make status` counts its points at each site."""
    count_jobs = "print(len(sess.list_jobs()))"
    before = int(stack.admin_python(count_jobs))
    bad = stack.make("submit", check=False, extra=["ROUNDS=0"])
    lines = [l for l in bad.stderr.splitlines() if l.strip() and not l.startswith("make")]
    assert bad.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: ROUNDS=0"), bad.stderr
    assert int(stack.admin_python(count_jobs)) == before, "a bad knob submitted a job"

    out = stack.make("submit", extra=["ROUNDS=2", "LR=0.05"]).stdout
    job_id = re.search(r"Submitted job (\S+) \(", out).group(1)
    assert job_id not in stack.job_ids and "2 rounds" in out and "lr 0.05" in out, out
    assert f"job {job_id} FINISHED:COMPLETED" in stack.make("wait", timeout=1800).stdout
    for site in SITES:
        server = stack.mlflow(site)
        run = site_run(server, f"{stack.job_name}-{site}", site, job_id)
        check_site_run(server, run, site, 2)
        assert {p["key"]: p["value"] for p in run["data"]["params"]}["learning_rate"] == "0.05"
        assert len(server.runs()) >= 2, f"{site}: every earlier run stays next to the new one"
    status = stack.make("status").stdout
    for site in SITES:
        server = stack.mlflow(site)
        run = site_run(server, f"{stack.job_name}-{site}", site, job_id)
        n = len(server.history(run["info"]["run_id"], "train_loss"))
        assert n > 0 and f"{site} {stack.uri(site)}: {len(server.runs())} run(s); latest (job {job_id}) FINISHED: {n} train_loss" in status, status
