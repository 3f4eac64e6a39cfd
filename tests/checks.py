"""What a site's MLflow server must hold after a job: shared by the process and Docker tests."""

import math
import os
import time
import zipfile

from fedtrack.names import METRICS  # what the training script logs at each site
from stack.mlflow_rest import MLflowREST, params, tags
from support import SITES  # provision/project.yml's clients, read once in support.py

# The experiment of each site's MLflow health check (docker/mlflow-site.py's HEALTH_EXPERIMENT), kept deleted.
HEALTH_EXPERIMENT = "fedtrack-healthcheck"

# Sampled by each site's receiver (MLflow's names, so its System metrics tab shows them); GPUs only where present.
SYSTEM_METRICS = ("system/cpu_utilization_percentage", "system/system_memory_usage_megabytes",
                  "system/system_memory_usage_percentage")


# Run in a container: `python3 -c PROBE NAME [IP ...]` prints whether NAME resolves there ("resolved" or
# "no-resolve"), then for each IP whether its port 5000 (a site's MLflow) answers ("reached" or "unreachable").
# The IPs are tried at once; a reachable one on a local bridge answers in milliseconds, so 2 s only
# bounds the wait for the unreachable ones (on an internal network the SYN goes unanswered).
PROBE = """
import socket, sys
from concurrent.futures import ThreadPoolExecutor
try:
    socket.gethostbyname(sys.argv[1]); print("resolved")
except OSError:
    print("no-resolve")
def reach(ip):
    try:
        socket.create_connection((ip, 5000), 2).close(); return "reached"
    except OSError:
        return "unreachable"
with ThreadPoolExecutor(8) as pool:
    print("\\n".join(pool.map(reach, sys.argv[2:])))
"""


def site_run(server: MLflowREST, experiment: str, site: str, job_id: str = None, wait: float = 120,
             until: tuple = ("FINISHED",)) -> dict:
    """The one run of `site` for this job in `experiment` on the site's own server, once its status
    is in `until` (the site's forwarder delivers asynchronously: wait up to `wait` seconds)."""
    deadline = time.monotonic() + wait
    while True:
        try:
            exp = server.experiment_by_name(experiment)
            runs = server.runs([exp["experiment_id"]]) if exp else []
        except OSError:
            exp, runs = None, []
        if job_id:
            runs = [r for r in runs if tags(r).get("job_id") == job_id]
        if (len(runs) == 1 and runs[0]["info"]["status"] in until) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert exp is not None, f"{site}: experiment {experiment} missing on {server.uri}"
    assert len(runs) == 1, f"{site}: expected one run in {experiment}, found {len(runs)}"
    return runs[0]


def check_site_run(server: MLflowREST, run: dict, site: str, rounds: int, dataset: str = "digits",
                   system: bool = False) -> dict:
    """Assert a site's run is complete; return its metric histories (with system: its system metrics
    too, which must then span the run)."""
    run_tags = tags(run)
    assert run["info"]["status"] == "FINISHED", run["info"]
    assert run_tags.get("site") == site
    assert run_tags.get("job_id")
    p = params(run)
    assert p.get("dataset") == dataset and p.get("rounds") == str(rounds)
    for key in ("learning_rate", "batch_size", "local_epochs"):
        assert key in p, f"{site}: param {key} missing: {p}"

    hist = {key: server.history(run["info"]["run_id"], key) for key in METRICS}
    steps = sorted(m["step"] for m in hist["train_loss"])
    assert steps, f"{site}: no train_loss"
    assert steps == list(range(len(steps))), f"{site}: train_loss steps not contiguous from 0 or duplicated"
    assert len(steps) % rounds == 0, f"{site}: {len(steps)} train_loss steps is not a whole number of rounds"
    # `accuracy`: of the global model each round received, then (step `rounds`) of the final one.
    for key, steps in (("accuracy", rounds + 1), ("local_accuracy", rounds)):
        assert sorted(m["step"] for m in hist[key]) == list(range(steps)), f"{site}: {key} steps {hist[key]}"

    if system:
        start, end = run["info"]["start_time"], run["info"]["end_time"]
        for key in SYSTEM_METRICS:
            hist[key] = server.history(run["info"]["run_id"], key)
            assert sorted(m["step"] for m in hist[key]) == list(range(len(hist[key]))) and hist[key], \
                f"{site}: {key}: {hist[key]}"
            assert all(start <= m["timestamp"] <= end for m in hist[key]), f"{site}: {key} outside the run's span"

    exp = server.experiment(run["info"]["experiment_id"])
    kind = {t["key"]: t["value"] for t in exp.get("tags", [])}.get("mlflow.experimentKind")
    assert kind == "custom_model_development", f"{site}: the UI would open {exp['name']} in GenAI mode (kind {kind!r})"

    summary = server.artifact(run, "summary.txt").decode()
    assert f"site: {site}" in summary and f"rounds: {rounds}" in summary, summary
    return hist


def check_final_model(uri: str, run: dict, site: str, rounds: int, dataset: str = "digits", data_dir: str = "data"):
    """The final global model in a site's run: it loads with mlflow.pytorch.load_model from the
    site's own server and, on the site's test split, scores the run's `accuracy` at step `rounds`.
    Returns its state_dict (every site must hold the same)."""
    from unittest import mock

    import mlflow.pytorch
    import torch
    from torch.utils.data import DataLoader

    from fedtrack.job.data import load_site_data

    with mock.patch.dict(os.environ, {"MLFLOW_TRACKING_URI": uri}):
        model = mlflow.pytorch.load_model(f"runs:/{run['info']['run_id']}/model")
    _, test_set = load_site_data(dataset, SITES.index(site), len(SITES), data_dir)
    correct = total = 0
    with torch.no_grad():  # an exported graph: always in eval mode (it has no .eval())
        for x, y in DataLoader(test_set, batch_size=256):
            correct += (model(x).argmax(dim=1) == y).sum().item()
            total += y.size(0)
    logged = {m["step"]: m["value"] for m in MLflowREST(uri).history(run["info"]["run_id"], "accuracy")}
    assert abs(correct / total - logged[rounds]) <= 1e-6, f"{site}: the stored model scores {correct / total}, " \
                                                         f"the run says {logged[rounds]} at step {rounds}"
    return model.state_dict()


def check_only_own_runs(server: MLflowREST, site: str, sites: tuple = SITES):
    """Every run on a site's server is that site's: no other site's run, experiment or tag
    (`sites`: the project's sites, unless a test brings its own project)."""
    runs = server.runs()
    assert runs, f"{site}: no runs at all on {server.uri}"
    # The site's own health check's run (docker/mlflow-site.py) is listed for a moment after a check
    # was cut short (before it deleted its experiment again): it holds no site's data.
    health = server.experiment_by_name(HEALTH_EXPERIMENT)
    foreign = [r["info"]["run_id"] for r in runs if tags(r).get("site") != site
               and not (health and r["info"]["experiment_id"] == health["experiment_id"])]
    assert not foreign, f"{site}'s server holds runs of other sites: {foreign}"
    for exp in server.experiments():
        for other in sites:
            if other != site:
                assert other not in exp["name"], f"{site}'s server has experiment {exp['name']}"


def accuracy_by_round(hist: dict, key: str = "accuracy") -> list:
    return [m["value"] for m in sorted(hist[key], key=lambda m: m["step"])]


def metric_strings(histories: list) -> set:
    """Distinctive text forms of every logged metric value. Short ones like 0.5 would match by chance, and
    so would round binary fractions: a float32 loss of 9375/4096 prints as 2.288818359375, which is also
    2,400,000 bytes in MiB in nvflare's transfer stats (a CI run found it there)."""
    out = set()
    for hist in histories:
        for points in hist.values():
            for m in points:
                value = float(m["value"])
                text = repr(value)
                if len(text) >= 8 and math.isfinite(value) and not (value * 2**16).is_integer():
                    out.add(text)
    return out


def file_texts(root: str):
    """(name, text) of every file under root and of every member of a zip among them (links skipped),
    decoded as far as it is text."""
    for dirpath, _, files in os.walk(root):
        for f in files:
            path = os.path.join(dirpath, f)
            if os.path.islink(path):
                continue
            with open(path, "rb") as fh:
                yield path, fh.read().decode("utf-8", errors="ignore")
            if zipfile.is_zipfile(path):
                with zipfile.ZipFile(path) as z:
                    for member in z.namelist():
                        yield f"{path}!{member}", z.read(member).decode("utf-8", errors="ignore")


def files_holding(root: str, needles: set) -> dict:
    """{file: [needle, ...]} for every file under root (and every member of a zip) holding a needle."""
    found = {}
    for name, text in file_texts(root):
        hits = [n for n in needles if n in text]
        if hits:
            found[name] = hits
    return found


def devices(service: dict) -> list:
    """A service's device reservations, "all" as Compose writes it (-1) or as we do."""
    found = service.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])
    return [{**d, "count": "all"} if d.get("count") == -1 else d for d in found]


def gpu(**selector) -> list:
    return [{"driver": "nvidia", "capabilities": ["gpu"], **selector}]
