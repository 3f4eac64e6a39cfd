"""The exported job: per-site trainers and receivers with typed settings only, nothing forwarded to the
server, no host path or tracking URI baked in. No server or Docker needed."""

import json
import os

import pytest

from checks import SITES
from support import ROOT, run_job

URIS = {site: f"http://mlflow-{site}:5000" for site in SITES}
SITE_ARGS = [a for s, u in URIS.items() for a in ("--site", f"{s}={u}")]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    out = tmp_path_factory.mktemp("export")
    result = run_job(*SITE_ARGS, "--env", "export", "--export-dir", str(out), "--rounds", "4", "--name", "exp")
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "exp"


def client_config(job_dir, site):
    with open(job_dir / f"app_{site}" / "config" / "config_fed_client.json") as f:
        return json.load(f)


def test_each_site_gets_one_receiver_that_names_its_run_and_no_tracking_server(exported):
    """Where a site's metrics go is the site's (FEDTRACK_TRACKING_URI): the job names the run only."""
    for site, uri in URIS.items():
        config = client_config(exported, site)
        receivers = [c for c in config["components"] if c["path"].endswith("SiteMLflowReceiver")]
        assert len(receivers) == 1
        assert receivers[0]["args"] == {"site": site, "experiment_name": f"exp-{site}", "run_name": "exp"}
        assert not [u for u in URIS.values() if u in json.dumps(config)], "a tracking URI is in the job"


def test_every_app_of_the_job_passes_its_participants_deploy_check(exported):
    from fedtrack.policy.validator import check_app

    for app in sorted(os.listdir(exported)):
        if app.startswith("app_"):
            assert check_app(str(exported / app), is_server=app == "app_server") == "", app


def test_no_client_forwards_analytics_to_the_server(exported):
    from fedtrack.job.audit import forwarding_components

    assert forwarding_components(str(exported)) == []
    for site in URIS:
        text = json.dumps(client_config(exported, site))
        assert "ConvertToFedEvent" not in text and "fed.analytix" not in text
        executor = client_config(exported, site)["executors"][0]["executor"]
        # The site's own executor, which runs its training script in-process (no fed events) whatever the job says.
        assert executor["path"] == "fedtrack.site.trainer.SiteTrainer"
        assert not {"execution_mode", "command", "task_script_path"} & set(executor["args"])


def test_server_has_the_guard_and_no_receiver(exported):
    with open(exported / "app_server" / "config" / "config_fed_server.json") as f:
        server = json.load(f)
    paths = [c["path"] for c in server["components"]]
    assert "fedtrack.server.guard.MetricLeakGuard" in paths
    assert not [p for p in paths if "Receiver" in p]
    assert "mlflow" not in json.dumps(server).lower()


def test_no_host_specific_path_in_the_job(exported):
    for dirpath, _, files in os.walk(exported):
        for f in files:
            with open(os.path.join(dirpath, f), errors="ignore") as fh:
                text = fh.read()
            for path in (ROOT, str(exported.parent), os.path.expanduser("~")):
                assert path not in text, f"{f} contains {path}"


def test_the_job_is_configuration_only(exported):
    """No code travels with the job (every site refuses custom code), and no argument names a path: each
    site runs the training script, receiver and model installed in its image."""
    from fedtrack.job.audit import custom_code
    from fedtrack.policy.validator import TRAINING

    assert custom_code(str(exported)) == []
    assert not [d for d, _, _ in os.walk(exported) if os.path.basename(d) == "custom"]
    for site in URIS:
        executor = client_config(exported, site)["executors"][0]["executor"]["args"]
        assert set(executor) <= set(TRAINING) and "/" not in json.dumps(executor)


def test_the_job_uses_only_the_classes_each_sites_policy_allows(exported):
    from fedtrack.policy.install import CLIENT_CLASSES, SERVER_CLASSES

    def paths(node):
        if isinstance(node, dict):
            if "path" in node:
                yield node["path"]
            for v in node.values():
                yield from paths(v)
        elif isinstance(node, list):
            for v in node:
                yield from paths(v)

    for site in URIS:
        assert set(paths(client_config(exported, site))) <= set(CLIENT_CLASSES)
    with open(exported / "app_server" / "config" / "config_fed_server.json") as f:
        assert set(paths(json.load(f))) <= set(SERVER_CLASSES)


@pytest.mark.parametrize("flag,value,var", [("--data-dir", "/data", "FEDTRACK_DATA_DIR"),
                                            ("--spool-limit", "10", "FEDTRACK_SPOOL_LIMIT"),
                                            ("--system-metrics-interval", "0", "FEDTRACK_SYSTEM_METRICS_INTERVAL")])
def test_a_sites_own_setting_given_to_a_deployed_job_is_a_one_line_error(tmp_path, flag, value, var):
    result = run_job(*SITE_ARGS, "--env", "export", "--export-dir", str(tmp_path), flag, value)
    assert result.returncode == 2 and not os.listdir(tmp_path), result.stderr
    assert result.stderr.strip() == f"error: {flag} is each site's own setting, not the job's: set {var} at the site " \
                                    f"({var[len('FEDTRACK_'):]} in .env for this stack)"


def test_without_site_flags_the_job_takes_every_site_and_uri_from_the_project(tmp_path):
    import yaml

    from support import PROJECT

    with open(PROJECT) as f:
        doc = yaml.safe_load(f)
    doc["participants"] = [p for p in doc["participants"] if p["type"] != "client"] + [
        {"name": "north", "type": "client", "org": "n"},
        {"name": "south", "type": "client", "org": "s", "tracking_uri": "https://mlflow.south.example:8443"}]
    project = tmp_path / "project.yml"
    project.write_text(yaml.safe_dump(doc))
    result = run_job("--project", str(project), "--env", "export", "--export-dir", str(tmp_path), "--name", "proj")
    assert result.returncode == 0, result.stderr[-3000:]
    apps = sorted(a for a in os.listdir(tmp_path / "proj") if a.startswith("app_"))
    assert apps == ["app_north", "app_server", "app_south"]
    for site in ("north", "south"):  # each site's URI is its own setting (the compose file's), not in the job
        assert "mlflow" not in json.dumps(client_config(tmp_path / "proj", site)["executors"]).lower()
        assert "example" not in json.dumps(client_config(tmp_path / "proj", site))
