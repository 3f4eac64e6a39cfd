"""The exported job: per-site receivers at each site's own URI, nothing forwarded to the server,
no host path baked in. No server or Docker needed."""

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


def test_each_site_gets_one_receiver_at_its_own_uri(exported):
    for site, uri in URIS.items():
        comps = client_config(exported, site)["components"]
        receivers = [c for c in comps if c["path"].endswith("SiteMLflowReceiver")]
        assert len(receivers) == 1
        args = receivers[0]["args"]
        assert args["site"] == site and args["tracking_uri"] == uri
        assert args["events"] == ["analytix_log_stats"]  # local events only
        assert args["experiment_name"] == f"exp-{site}"
        other = next(u for s, u in URIS.items() if s != site)
        assert other not in json.dumps(client_config(exported, site))


def test_no_client_forwards_analytics_to_the_server(exported):
    from fedtrack.job.audit import forwarding_components

    assert forwarding_components(str(exported)) == []
    for site in URIS:
        text = json.dumps(client_config(exported, site))
        assert "ConvertToFedEvent" not in text and "fed.analytix" not in text
        executor = client_config(exported, site)["executors"][0]["executor"]["args"]
        assert executor["execution_mode"] == "in_process"


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
    """No code travels with the job (every site refuses custom code): the sites run the training
    script, receiver and model installed in their image, named by path and module."""
    from fedtrack.job.audit import custom_code
    from fedtrack.job.recipe import SITE_CODE

    assert custom_code(str(exported)) == []
    assert not [d for d, _, _ in os.walk(exported) if os.path.basename(d) == "custom"]
    for site in URIS:
        executor = client_config(exported, site)["executors"][0]["executor"]["args"]
        assert executor["task_script_path"] == f"{SITE_CODE}/client.py"


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


def test_a_relative_site_code_path_is_a_one_line_error(tmp_path):
    """A relative --site-code would make the training script travel with the job: refused."""
    result = run_job(*SITE_ARGS, "--env", "export",
                     "--export-dir", str(tmp_path), "--site-code", "job")
    assert result.returncode == 2 and "error: --site-code 'job': give the absolute path" in result.stderr


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
    uris = {}
    for site in ("north", "south"):
        receiver = next(c for c in client_config(tmp_path / "proj", site)["components"] if c["path"].endswith("SiteMLflowReceiver"))
        uris[site] = receiver["args"]["tracking_uri"]
    assert uris == {"north": "http://mlflow-north:5000", "south": "https://mlflow.south.example:8443"}
