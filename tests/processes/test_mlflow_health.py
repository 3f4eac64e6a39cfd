"""A site's MLflow healthcheck (`fedtrack-mlflow health`, docker/mlflow-site.py) against a real MLflow server
behind its login, started as `fedtrack-mlflow serve` runs it in its container (here on 127.0.0.1 and a free
port): each check writes with the forwarder's account under the service name, where no experiment list shows
it; an earlier version's visible health experiment ends up hidden, the site's own work untouched; and a broken
write path fails the check with one line."""

import os
import secrets
import subprocess
import sys
import time

import pytest

from checks import HEALTH_EXPERIMENT
from stack.mlflow_rest import MLflowREST, tags
from support import ROOT, SITES, free_port, start, stop, wait_until

pytestmark = pytest.mark.processes

SITE_PY = os.path.join(ROOT, "docker", "mlflow-site.py")
HEALTH = HEALTH_EXPERIMENT
WORK = f"fedavg-site-tracking-{SITES[0]}"  # what a site's forwarder makes for a job


class Site:
    """`fedtrack-mlflow serve` with its three secret files and its own data folder."""

    def __init__(self, root):
        self.secrets = os.path.join(root, "secrets")
        os.makedirs(self.secrets)
        self.password = {}
        for name in ("admin", "flask", "forwarder"):
            value = secrets.token_urlsafe(18)
            path = os.path.join(self.secrets, f"mlflow_{name}_password" if name != "flask" else "mlflow_flask_secret")
            with open(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
                f.write(value + "\n")
            self.password[name] = value
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(root, "mlflow.log")
        os.makedirs(os.path.join(root, "data", "artifacts"))
        # The UI port is another one: the check's Host header (127.0.0.1:<port>) is admitted as the
        # service name only, as mlflow-<site>:5000 is in its container.
        self.env = dict(os.environ, SECRETS_DIR=self.secrets, MLFLOW_DATA=os.path.join(root, "data"),
                        MLFLOW_AUTH_INI=os.path.join(root, "auth.ini"), SITE_MLFLOW="127.0.0.1",
                        MLFLOW_HOST="127.0.0.1", MLFLOW_PORT=str(self.port), UI_PORT=str(free_port()),
                        # as in the image (docker/mlflow.Dockerfile)
                        MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false", MLFLOW_DISABLE_TELEMETRY="true",
                        DO_NOT_TRACK="true")
        self.admin = MLflowREST(self.uri, timeout=10, auth=("admin", self.password["admin"]))
        self.proc = None

    def start(self):
        self.proc = start([sys.executable, SITE_PY, "serve"], self.log, env=self.env)
        wait_until(self.ready, 120, f"fedtrack-mlflow serve on port {self.port} (log: {self.log})")
        return self

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"fedtrack-mlflow serve exited; see {self.log}")
        try:
            self.admin.experiments()
            return True
        except OSError:
            return False

    def forwarder(self, path: str, body: dict) -> dict:
        """A write as the site's forwarder makes it."""
        forwarder = MLflowREST(self.uri, timeout=10, auth=("forwarder", self.password["forwarder"]))
        return forwarder._call("POST", f"/api/2.0/mlflow/{path}", body=body)

    def health(self, **env) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, SITE_PY, "health"], env=dict(self.env, **env),
                              capture_output=True, text=True, timeout=60)

    def listed(self) -> list:
        """The experiment list as the UI asks for it (experiments/search, default view ACTIVE_ONLY)."""
        return sorted(e["name"] for e in self.admin.experiments())

    def health_run(self) -> dict:
        exp = self.admin.experiment_by_name(HEALTH)
        assert exp is not None and exp["lifecycle_stage"] == "deleted", exp
        (run,) = self.admin.runs([exp["experiment_id"]])
        assert run["info"]["lifecycle_stage"] == "active", run["info"]
        return run


@pytest.fixture
def site(tmp_path):
    s = Site(str(tmp_path))
    try:
        yield s.start()
    finally:
        if s.proc:
            stop(s.proc)


def healthy(site: Site) -> float:
    """Run the check, which must pass in silence and leave no experiment of its own in the list; the
    time its write stamped on the health run."""
    result = site.health()
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result
    assert HEALTH not in site.listed()
    return float(tags(site.health_run())["last_write_check"])


def test_each_health_check_writes_where_no_experiment_list_shows_it(site):
    before = time.time()
    first = healthy(site)
    second = healthy(site)
    assert before - 1 <= first < second <= time.time() + 1  # one new write per check
    assert site.listed() == ["Default"]

    # The site's work is all its list holds, also while the checks go on.
    site.forwarder("experiments/create", {"name": WORK})
    healthy(site)
    assert site.listed() == sorted(["Default", WORK])

    # A check cut short (the container's healthcheck has a timeout) leaves what the next one finishes:
    # after restoring the experiment, before deleting it again ...
    run = site.health_run()
    site.forwarder("experiments/restore", {"experiment_id": run["info"]["experiment_id"]})
    assert site.listed() == sorted(["Default", HEALTH, WORK])
    healthy(site)
    assert site.listed() == sorted(["Default", WORK])
    # ... or after deleting it, with its run, before restoring the run.
    site.forwarder("runs/delete", {"run_id": run["info"]["run_id"]})
    healthy(site)
    assert site.health_run()["info"]["run_id"] == run["info"]["run_id"]


def test_an_earlier_versions_visible_health_experiment_is_hidden_and_the_sites_work_untouched(site):
    # A volume from an earlier version: the check's experiment (a tag, no runs) beside the site's work.
    old_id = site.forwarder("experiments/create", {"name": HEALTH})["experiment_id"]
    site.forwarder("experiments/set-experiment-tag", {"experiment_id": old_id, "key": "last_write_check", "value": "1"})
    work_id = site.forwarder("experiments/create", {"name": WORK})["experiment_id"]
    run_id = site.forwarder("runs/create", {"experiment_id": work_id, "start_time": 1})["run"]["info"]["run_id"]
    site.forwarder("runs/log-metric", {"run_id": run_id, "key": "train_loss", "value": 0.5, "timestamp": 1, "step": 0})
    assert site.listed() == sorted(["Default", HEALTH, WORK])  # what users saw
    work = site.admin.experiment(work_id), site.admin.runs([work_id])

    healthy(site)
    healthy(site)

    assert site.listed() == sorted(["Default", WORK])
    assert site.admin.experiment_by_name(HEALTH)["experiment_id"] == old_id  # the same one, now deleted
    assert (site.admin.experiment(work_id), site.admin.runs([work_id])) == work


def test_health_fails_with_one_line_when_the_write_path_is_broken(site):
    healthy(site)
    wrong = os.path.join(os.path.dirname(site.secrets), "wrong-secrets")
    os.makedirs(wrong)
    for name in os.listdir(site.secrets):
        with open(os.path.join(site.secrets, name)) as f:
            value = f.read() if name != "mlflow_forwarder_password" else secrets.token_urlsafe(18)
        with open(os.open(os.path.join(wrong, name), os.O_WRONLY | os.O_CREAT, 0o600), "w") as f:
            f.write(value)
    cases = {
        "401": {"SECRETS_DIR": wrong},  # the forwarder's password is not the server's
        "403": {"SITE_MLFLOW": "localhost"},  # a name the server's host check does not admit
        "Connection refused": {"MLFLOW_PORT": str(free_port())},  # no server there
    }
    for expected, env in cases.items():
        result = site.health(**env)
        assert result.returncode == 1 and result.stdout == "", (env, result)
        assert len(result.stderr.splitlines()) == 1 and expected in result.stderr, (env, result.stderr)
        assert result.stderr.startswith("unhealthy: the forwarder's write was not taken: "), result.stderr
    assert site.listed() == ["Default"]
