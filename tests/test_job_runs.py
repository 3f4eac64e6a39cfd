"""The job end to end, without Docker: two real MLflow servers, the simulator and a real provisioned
FL system (server and two clients as processes, mTLS startup kits), then every check through each
site's MLflow REST API, plus the privacy proof on the server side."""

import glob
import os
import re
import subprocess
import sys
import time

import pytest

from checks import (
    SITES,
    accuracy_by_round,
    check_only_own_runs,
    check_site_run,
    files_holding,
    metric_strings,
    site_run,
)
from support import JOB_DIR, ROOT, load_json, run_job
from mlflow_rest import MLflowREST

pytestmark = pytest.mark.processes

ROUNDS = 3
GUARD = "metric_guard.json"
SAMPLE_OFTEN = ("--system-metrics-interval", "1")  # these short jobs would get few samples at the default 10 s


def site_args(servers):
    return [arg for site in SITES for arg in ("--site", f"{site}={servers[site].uri}")]


@pytest.fixture(scope="module")
def sim_run(mlflow_servers, tmp_path_factory):
    workspace = tmp_path_factory.mktemp("sim")
    name = f"sim-{os.getpid()}"
    t0 = time.monotonic()
    result = run_job(*site_args(mlflow_servers), "--rounds", str(ROUNDS), "--env", "sim", *SAMPLE_OFTEN,
                     "--workspace", str(workspace), "--name", name)
    print(f"\nsimulator, {ROUNDS} rounds: {time.monotonic() - t0:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return {"name": name, "workspace": str(workspace), "job_id": None}


@pytest.fixture(scope="module")
def prod_run(mlflow_servers, flare_system):
    name = f"prod-{os.getpid()}"
    t0 = time.monotonic()
    result = run_job(*site_args(mlflow_servers), "--rounds", str(ROUNDS), "--env", "prod", *SAMPLE_OFTEN,
                     "--startup-kit", flare_system.admin_kit, "--site-code", JOB_DIR, "--name", name, "--timeout", "600")
    print(f"\nprovisioned processes, {ROUNDS} rounds: {time.monotonic() - t0:.1f} s")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", result.stdout).group(1)
    assert f"job {job_id} FINISHED:COMPLETED" in result.stdout
    return {"name": name, "job_id": job_id, "system": flare_system}


def check_run_everywhere(servers, run):
    histories = {}
    for site in SITES:
        server = MLflowREST(servers[site].uri)
        mlrun = site_run(server, f"{run['name']}-{site}", site, run["job_id"])
        histories[site] = check_site_run(server, mlrun, site, ROUNDS, system=True)
        if run["job_id"]:
            assert mlrun["data"]["tags"] and {"key": "job_id", "value": run["job_id"]} in mlrun["data"]["tags"]
        acc = accuracy_by_round(histories[site])
        assert acc[-1] > acc[0], f"{site}: accuracy did not improve over {ROUNDS} rounds: {acc}"
        # The other site's server has no experiment for this site.
        other = next(s for s in SITES if s != site)
        assert MLflowREST(servers[other].uri).experiment_by_name(f"{run['name']}-{site}") is None
    return histories


def test_simulator_run_lands_in_each_sites_own_server(mlflow_servers, sim_run):
    sim_run["histories"] = check_run_everywhere(mlflow_servers, sim_run)


def test_provisioned_run_lands_in_each_sites_own_server(mlflow_servers, prod_run):
    prod_run["histories"] = check_run_everywhere(mlflow_servers, prod_run)


def test_each_server_holds_only_its_own_sites_runs(mlflow_servers, sim_run, prod_run):
    for site in SITES:
        check_only_own_runs(MLflowREST(mlflow_servers[site].uri), site)


# ------------------------------------------------------------------ privacy: nothing reaches the server


def all_histories(servers, run):
    return [
        check_site_run(MLflowREST(servers[s].uri), site_run(MLflowREST(servers[s].uri), f"{run['name']}-{s}", s, run["job_id"]), s, ROUNDS,
                       system=True)  # the sites' hardware figures must not reach the server either
        for s in SITES
    ]


def test_simulator_server_received_and_holds_no_metric(mlflow_servers, sim_run):
    server_ws = os.path.join(sim_run["workspace"], sim_run["name"], "server")
    guards = glob.glob(os.path.join(server_ws, "**", GUARD), recursive=True)
    assert len(guards) == 1, f"server guard report missing under {server_ws}"
    assert load_json(guards[0]) == {"analytics_events": 0, "sites": []}
    needles = metric_strings(all_histories(mlflow_servers, sim_run))
    assert len(needles) > 20, "too few metric values to search for"
    assert files_holding(server_ws, needles) == {}


def test_provisioned_server_received_and_holds_no_metric(mlflow_servers, prod_run):
    system = prod_run["system"]
    job_store = os.path.join(system.storage, "jobs-storage", prod_run["job_id"])
    assert os.path.isdir(job_store), f"job {prod_run['job_id']} not in the server's job store"
    found = files_holding(job_store, {'"analytics_events": 0'})
    assert any(name.endswith("!" + GUARD) for name in found), "server guard report missing or non-zero"
    needles = metric_strings(all_histories(mlflow_servers, prod_run))
    assert len(needles) > 20
    # The whole server side: its kit folder, workspace, logs and job store.
    assert files_holding(system.server_dir, needles) == {}
    assert files_holding(system.storage, needles) == {}
    with open(os.path.join(system.root, "server.log"), errors="ignore") as f:
        log = f.read()
    assert not [n for n in needles if n in log]
    assert "analytix" not in log


def test_guard_catches_forwarding_when_it_is_switched_back_on(mlflow_servers, tmp_path):
    """Positive control: with nvflare's default ConvertToFedEvent restored, the guard counts records."""
    specs = [f"{s}={mlflow_servers[s].uri}" for s in SITES]
    result = subprocess.run(
        [sys.executable, os.path.join(ROOT, "tests", "forwarding_control.py"), str(tmp_path), *specs],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    guards = glob.glob(os.path.join(tmp_path, "forwarding-control", "server", "**", GUARD), recursive=True)
    assert len(guards) == 1
    report = load_json(guards[0])
    assert report["analytics_events"] > 0 and report["sites"] == list(SITES), report
