"""The topology from provision/project.yml: the committed compose file is the generator's, N sites
get N of everything, bundles hold one participant's services, GPUS reaches each site's client and
nothing else, and bad projects and knobs are one-line errors."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from fedtrack import pins
from fedtrack.project import UI_VIEW, Project, ProjectError, gpu_request, port_var, ui_ports
from stack.bundle import bundle_files
from stack.topology import compose_text
from checks import devices, gpu
from support import ROOT

PROJECT = os.path.join(ROOT, "provision", "project.yml")


def project_with(tmp_path, clients: list, **server) -> Project:
    with open(PROJECT) as f:
        doc = yaml.safe_load(f)
    doc["participants"] = [p for p in doc["participants"] if p["type"] != "client"] + \
        [{"type": "client", "org": "o", **c} for c in clients]
    for p in doc["participants"]:
        if p["type"] == "server":
            p.update(server)
    path = tmp_path / "project.yml"
    path.write_text(yaml.safe_dump(doc))
    return Project(str(path))


def test_committed_compose_file_is_the_generators():
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        committed = f.read()
    assert committed == compose_text(Project(PROJECT)), \
        "docker-compose.yml differs from provision/project.yml's: run `make compose-file GPUS=` and commit it"


def test_the_compose_file_merges_its_named_bases():
    """The generated file keeps the template's x- bases, each written once and merged by name."""
    with open(os.path.join(ROOT, "docker-compose.yml")) as f:
        committed = f.read()
    assert re.findall(r"&(\S+)", committed) == ["hardened", "flare", "client", "mlflow"]
    assert set(re.findall(r"<<: \*(\S+)", committed)) == {"hardened", "flare", "client", "mlflow"}


def test_image_versions_follow_the_pins(tmp_path, monkeypatch):
    """The images' tags come from requirements.txt (fedtrack/pins.py), in the compose files and the bundles."""
    requirements = tmp_path / "requirements.txt"
    requirements.write_text("nvflare==9.8.7\nmlflow[auth]==6.5.4  # a comment\n")
    monkeypatch.setattr(pins, "REQUIREMENTS", str(requirements))
    project = project_with(tmp_path, [{"name": "north"}])
    services = yaml.safe_load(compose_text(project))["services"]
    assert services["server"]["image"] == services["provision"]["image"] == "fedtrack/flare:${NVFLARE_VERSION:-9.8.7}"
    assert services["mlflow-north"]["image"] == "fedtrack/mlflow:${MLFLOW_VERSION:-6.5.4}"
    env = bundle_files(project, "north", [])[".env"]
    assert "\nNVFLARE_VERSION=9.8.7\n" in env and "\nMLFLOW_VERSION=6.5.4\n" in env
    monkeypatch.undo()
    result = subprocess.run([sys.executable, "-m", "fedtrack.pins", "mlflow"], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0 and result.stdout == pins.pin("mlflow") + "\n"
    with open(os.path.join(ROOT, "requirements.txt")) as f:
        assert f"mlflow[auth]=={pins.pin('mlflow')}\n" in f.read()


def test_no_other_file_names_a_site():
    """Only the project (and the compose file made from it) spell the sites' names."""
    sites = Project(PROJECT).sites
    tracked = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not tracked:
        pytest.fail("not a git checkout: cannot list the project's files")
    allowed = {"provision/project.yml", "docker-compose.yml", "README.md"}
    naming = {}
    for rel in tracked:
        if rel in allowed or not os.path.isfile(os.path.join(ROOT, rel)):
            continue
        with open(os.path.join(ROOT, rel), errors="ignore") as f:
            text = f.read()
        hits = [s for s in sites if s in text]
        if hits:
            naming[rel] = hits
    assert not naming, f"files that name a site (take the sites from provision/project.yml): {naming}"


def test_three_sites_get_three_of_everything(tmp_path):
    project = project_with(tmp_path, [{"name": "north"}, {"name": "south", "mlflow_port": 7002},
                                      {"name": "east", "tracking_uri": "https://mlflow.east.example:8443/"}])
    compose = yaml.safe_load(compose_text(project))
    services, networks = compose["services"], compose["networks"]
    for site in ("north", "south", "east"):
        assert services[site]["networks"] == ["fl", site]
        assert services[f"mlflow-{site}"]["networks"] == [site, f"{site}-ui"]
        label = {"labels": {"fedtrack.project": project.name}}
        assert networks[site] == {"internal": True, **label} and networks[f"{site}-ui"] == label
        assert f"{site}-workspace" in compose["volumes"] and f"mlflow-{site}" in compose["volumes"]
        assert services[site]["depends_on"] == {"server": {"condition": "service_started"},
                                                f"mlflow-{site}": {"condition": "service_started"}}
    # Site N's UI on 5000+N unless set; the tracking URI is the site's own service unless set.
    assert services["mlflow-north"]["ports"] == [f"127.0.0.1:${{{port_var('north')}:-5001}}:5000"]
    assert services["mlflow-south"]["ports"] == [f"127.0.0.1:${{{port_var('south')}:-7002}}:5000"]
    assert services["mlflow-east"]["ports"] == [f"127.0.0.1:${{{port_var('east')}:-5003}}:5000"]
    assert services["north"]["environment"]["FEDTRACK_TRACKING_URI"] == "http://mlflow-north:5000"
    assert services["east"]["environment"]["FEDTRACK_TRACKING_URI"] == "https://mlflow.east.example:8443"
    assert networks["fl"] == {"internal": True, "labels": {"fedtrack.project": project.name}}
    assert services["server"]["networks"] == ["fl"] and services["admin"]["networks"] == ["fl"]


def test_bundles_hold_one_participants_services(tmp_path):
    project = project_with(tmp_path, [{"name": "north"}, {"name": "south"}], fed_learn_port=8102)
    site = yaml.safe_load(bundle_files(project, "south", [])["docker-compose.yml"])
    assert sorted(site["services"]) == ["mlflow-south", "south"]
    assert site["services"]["south"]["extra_hosts"] == [
        "server:${FL_SERVER_ADDRESS:?set FL_SERVER_ADDRESS in .env to the FL server host's address}"]
    assert "server" not in site["services"]["south"]["depends_on"]
    label = {"fedtrack.project": project.name}
    assert site["networks"]["fl"] == {"labels": label} and site["networks"]["south"] == {"internal": True, "labels": label}
    assert all(s["file"].startswith("./secrets/") for s in site["secrets"].values())
    server = yaml.safe_load(bundle_files(project, "server", [])["docker-compose.yml"])
    assert sorted(server["services"]) == ["server"]
    assert server["services"]["server"]["ports"] == ["${FL_BIND:-0.0.0.0}:8102:8102"]
    admin_files = bundle_files(project, "admin@fedtrack.local", [])
    admin = yaml.safe_load(admin_files["docker-compose.yml"])
    assert sorted(admin["services"]) == ["admin"] and "project.yml" in admin_files
    assert "submit:" in admin_files["Makefile"] and "wait:" in admin_files["Makefile"]
    for files in (bundle_files(project, p, []) for p in project.participants()):
        assert {"docker-compose.yml", ".env", "Makefile", "README.md"} <= set(files)


def test_bundle_makefiles_take_the_projects_knobs_and_the_images_commands(tmp_path):
    """The admin's `make submit` offers the knobs of the project's `make submit`, each listed in its .env;
    every command is one the FLARE image installs (no script path)."""
    project = project_with(tmp_path, [{"name": "north"}, {"name": "south"}])
    admin = bundle_files(project, project.admin["name"], [])
    submit = admin["Makefile"].split("\nsubmit:")[1].split("\nwait:")[0]
    assert "$(ADMIN) fedtrack-job --env prod --startup-kit /kit" in submit
    for knob, flag in (("JOB_NAME", "--name"), ("ROUNDS", "--rounds"), ("LR", "--lr"), ("LOCAL_EPOCHS", "--local-epochs"),
                       ("BATCH_SIZE", "--batch-size"), ("DATASET", "--dataset"), ("TORCH_THREADS", "--torch-threads")):
        assert f'{flag} "$({knob})"' in submit and re.search(rf"(?m)^{knob}=", admin[".env"]), knob
    for command in ("$(ADMIN) fedtrack-admin clients north south", "$(ADMIN) fedtrack-admin status",
                    "$(ADMIN) fedtrack-admin wait --progress"):
        assert command in admin["Makefile"], command
    site = bundle_files(project, "south", [])
    assert "$(COMPOSE) exec -T south fedtrack-spool status /workspace/tracking-spool" in site["Makefile"]
    assert f"http://127.0.0.1:{project.ports['south']}{UI_VIEW}" in site["README.md"]
    for part in project.participants():
        assert "python3" not in bundle_files(project, part, [])["Makefile"], part
    assert yaml.safe_load(admin["docker-compose.yml"])["services"]["admin"]["command"] == ["fedtrack-admin", "status"]


def test_ui_view_is_printed_for_stack_up():
    """stack/up.sh takes the UI link's path from the generator (one place: fedtrack/project.py)."""
    result = topology("ui-view")
    assert result.returncode == 0 and result.stdout == UI_VIEW + "\n"


@pytest.mark.parametrize("knob, selector", [
    ("all", {"count": "all"}), ("2", {"count": 2}), ("device=0,GPU-8a1f", {"device_ids": ["0", "GPU-8a1f"]}),
])
def test_gpus_are_reserved_for_each_sites_client_only(tmp_path, knob, selector):
    project = project_with(tmp_path, [{"name": "north"}, {"name": "south"}, {"name": "east"}])
    services = yaml.safe_load(compose_text(project, gpus=knob))["services"]
    assert {name for name, s in services.items() if devices(s)} == {"north", "south", "east"}
    assert all(devices(services[site]) == gpu(**selector) for site in project.sites)
    # A site's bundle reserves them for its client too; the server's and the admin's bundles never.
    bundle = yaml.safe_load(compose_text(project, "south", gpus=knob))["services"]
    assert devices(bundle["south"]) == gpu(**selector) and devices(bundle["mlflow-south"]) == []
    for part in (project.server["name"], project.admin["name"]):
        assert "nvidia" not in compose_text(project, part, gpus=knob)
    # Without GPUS, no service asks for a device: a host without GPUs starts as before.
    assert "nvidia" not in compose_text(project) and "deploy:" not in compose_text(project)


@pytest.mark.parametrize("knob", ["abc", "0", "-1", "1.5", "ALL", "0,1", "device=", "device=0,,1"])
def test_bad_gpus_are_one_line_errors(knob):
    with pytest.raises(ProjectError, match=rf"^GPUS={re.escape(knob)}: give all, a number of GPUs \(1 or more\) or "
                                           r"device=ID\[,ID\.\.\.\] \(e\.g\. device=0,1\); leave it empty for none$"):
        gpu_request(knob)


def topology(*args, **env) -> subprocess.CompletedProcess:
    """`python3 -m stack.topology ARGS` as stack/up.sh runs it: from the checkout's root."""
    return subprocess.run([sys.executable, "-m", "stack.topology", *args], cwd=ROOT, env=dict(os.environ, **env),
                          capture_output=True, text=True)


def test_gpus_as_docker_run_takes_them():
    """`make up` tries GPUS with `docker run --gpus` (stack/up.sh) before anything starts."""
    for knob, flag in (("", ""), ("all", "all"), ("3", "3"), ("device=0,2", '"device=0,2"')):
        result = topology("gpus", GPUS=knob)
        assert result.returncode == 0 and result.stdout == flag + "\n", (knob, result)
    result = topology("gpus", GPUS="x")
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and result.stderr.startswith("error: GPUS=x: ")


@pytest.mark.parametrize("clients, server, error", [
    ([], {}, "at least one participant of type client"),
    ([{"name": "Site_1"}], {}, "site name 'Site_1': use lowercase letters, digits and '-'"),
    ([{"name": "a"}, {"name": "a"}], {}, "site a is listed twice"),
    ([{"name": "a", "mlflow_port": 5005}, {"name": "b", "mlflow_port": 5005}], {}, "mlflow_port 5005 is a's too"),
    ([{"name": "a", "mlflow_port": 70000}], {}, "mlflow_port 70000: give a port from 1 to 65535"),
    ([{"name": "a", "tracking_uri": "ftp://x"}], {}, "tracking_uri 'ftp://x': give http(s)://HOST:PORT"),
])
def test_bad_projects_are_one_line_errors(tmp_path, clients, server, error):
    with pytest.raises(ProjectError, match=error.replace("(", r"\(").replace(")", r"\)")):
        project_with(tmp_path, clients, **server)


def test_cli_errors_are_one_line(tmp_path):
    bad = tmp_path / "project.yml"
    bad.write_text("name: x\nparticipants: [{name: s, type: server}]\n")
    result = topology("compose", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("error: "), result.stderr


def test_ui_ports_follow_the_project_unless_overridden(tmp_path):
    project = project_with(tmp_path, [{"name": "a"}, {"name": "b", "mlflow_port": 7000}])
    assert ui_ports(project, {}) == {"a": 5001, "b": 7000}
    assert ui_ports(project, {port_var("a"): "6001"}) == {"a": 6001, "b": 7000}
    with pytest.raises(ProjectError, match=r"^MLFLOW_PORT_A=0: give a port from 1 to 65535$"):
        ui_ports(project, {port_var("a"): "0"})
    with pytest.raises(ProjectError, match=r"^MLFLOW_PORT_B=5001: a's MLflow already uses port 5001; give each site its own$"):
        ui_ports(project, {port_var("b"): "5001"})
