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
    check_final_model,
    check_only_own_runs,
    check_site_run,
    files_holding,
    metric_strings,
    site_run,
)
from support import ROOT, load_json, run_job
from stack.mlflow_rest import MLflowREST, tags

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
    result = run_job(*site_args(mlflow_servers), "--rounds", str(ROUNDS), "--env", "prod",  # sampling: the sites' own
                     "--startup-kit", flare_system.admin_kit, "--name", name, "--timeout", "600")
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


# ------------------------------------------------------------------ the final global model, kept at each site

# A clean interpreter, run outside this checkout: what a site's people have.
LOAD_ELSEWHERE = """
import sys, mlflow.pytorch
model = mlflow.pytorch.load_model(sys.argv[1])
print(sum(float(t.double().sum()) for t in model.state_dict().values()))
"""


def check_final_models(servers, run, tmp_path):
    """Each site's run holds the final global model (checks.check_final_model), the same at every
    site, and a clean interpreter outside this checkout loads it from the site's server too."""
    weights, run_ids = {}, {}
    for site in SITES:
        mlrun = site_run(MLflowREST(servers[site].uri), f"{run['name']}-{site}", site, run["job_id"])
        weights[site], run_ids[site] = check_final_model(servers[site].uri, mlrun, site, ROUNDS), mlrun["info"]["run_id"]
    first = weights[SITES[0]]
    for site in SITES[1:]:
        assert weights[site].keys() == first.keys()
        assert all(weights[site][k].equal(first[k]) for k in first), f"{site} holds other weights than {SITES[0]}"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["MLFLOW_TRACKING_URI"] = servers[SITES[0]].uri
    loaded = subprocess.run([sys.executable, "-c", LOAD_ELSEWHERE, f"runs:/{run_ids[SITES[0]]}/model"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert loaded.returncode == 0, loaded.stderr[-3000:]
    assert abs(float(loaded.stdout.split()[-1]) - sum(float(t.double().sum()) for t in first.values())) < 1e-6


def test_simulator_sites_keep_the_final_global_model(mlflow_servers, sim_run, tmp_path):
    check_final_models(mlflow_servers, sim_run, tmp_path)


def test_provisioned_sites_keep_the_final_global_model(mlflow_servers, prod_run, tmp_path):
    check_final_models(mlflow_servers, prod_run, tmp_path)


def test_a_model_folder_outside_the_spool_is_refused_and_counted(mlflow_servers, tmp_path):
    """A `model` record uploads only a folder inside the spool's own folder (and then removes it);
    any other (outside, through '..', holding a link) is refused and counted, and the rest of the
    spool is delivered. With a registered-model name, the uploaded model gets a version there."""
    from mlflow.tracking import MlflowClient
    from nvflare.apis.analytix import AnalyticsDataType, LogWriterName
    from nvflare.apis.utils.analytix_utils import create_analytic_dxo

    from fedtrack.site.records import records_of
    from fedtrack.spool.delivery import Delivery
    from fedtrack.spool.report import counts, status
    from fedtrack.spool.writer import SpoolWriter

    site, uri = SITES[0], mlflow_servers[SITES[0]].uri
    name = f"model-folders-{os.getpid()}"
    spool_dir = tmp_path / "spool"
    w = SpoolWriter(str(spool_dir), name, {"tracking_uri": uri, "experiment_name": name, "site": site, "job_id": name,
                                           "run_name": name, "created_ms": int(time.time() * 1000)})
    secret = tmp_path / "secret"
    secret.mkdir()
    (secret / "site.key").write_text("PRIVATE KEY")
    linked = spool_dir / "model-linked"
    linked.mkdir()
    (linked / "site.key").symlink_to(secret / "site.key")
    good = spool_dir / "model-good"
    good.mkdir()
    (good / "MLmodel").write_text("flavors: {}\n")

    def model_event(key: str, folder, register: str = ""):
        # As the receiver takes it: the analytics event of client.py's flare.log(..., AnalyticsDataType.MODEL).
        dxo = create_analytic_dxo(key, str(folder), AnalyticsDataType.MODEL, writer=LogWriterName.MLFLOW,
                                  registered_model_name=register)
        w.put((dxo.to_shareable(), int(time.time() * 1000)), records_of)

    w.append("metric", "m", 1.0, 0)
    model_event("outside", secret)
    model_event("dotdot", spool_dir / ".." / "secret")
    model_event("linked", linked)
    model_event("model", good, register=name)
    w.append("metric", "m", 2.0, 1)
    w.close()
    d = Delivery(w.path)
    try:
        while not d.step():
            pass
        assert counts(str(spool_dir))["rejected_models"] == 3
        assert "3 model folder(s) refused" in status(str(spool_dir))
    finally:
        d.close()

    run = site_run(MLflowREST(uri), name, site)
    client = MlflowClient(uri)
    run_id = run["info"]["run_id"]
    assert [a.path for a in client.list_artifacts(run_id)] == ["model"]
    assert [a.path for a in client.list_artifacts(run_id, "model")] == ["model/MLmodel"]
    assert sorted(m["step"] for m in MLflowREST(uri).history(run_id, "m")) == [0, 1], "the rest was not delivered"
    assert "3 model folder(s) refused" in tags(run)["records_lost"]
    assert not good.exists() and (secret / "site.key").read_text() == "PRIVATE KEY" and linked.is_dir()
    versions = client.search_model_versions(f"name = '{name}'")
    assert [(v.run_id, v.source) for v in versions] == [(run_id, f"runs:/{run_id}/model")]


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
        [sys.executable, os.path.join(ROOT, "tests", "processes", "forwarding_control.py"), str(tmp_path), *specs],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    guards = glob.glob(os.path.join(tmp_path, "forwarding-control", "server", "**", GUARD), recursive=True)
    assert len(guards) == 1
    report = load_json(guards[0])
    assert report["analytics_events"] > 0 and report["sites"] == list(SITES), report
