"""provision/project.yml cannot write the compose file: every value that reaches it, fed injection attempts
(a newline and a service of its own, quotes, Compose's ${...} and $VAR, YAML flow syntax, anchors,
aliases, comments, 10 kB, values of the wrong YAML type), is refused with one line naming the field;
a value that passes lands as one inert string; and the generator, even handed a value no check saw,
writes it as data, never as YAML text."""

import os
import subprocess
import sys

import pytest
import yaml

from fedtrack.project import Project, ProjectError
from stack.topology import compose_text
from support import ROOT

PROJECT = os.path.join(ROOT, "provision", "project.yml")
# A service of the attacker's choosing: privileged, the host's / mounted.
EVIL = "\nservices:\n  evil:\n    image: alpine\n    privileged: true\n    volumes: ['/:/host']\n"
# (participant type or "project", key, the label its error names, a valid value)
FIELDS = [
    ("project", "name", "name", "fedtrack"),
    ("server", "name", "server name", "server"),
    ("client", "name", "site name", "site-9"),
    ("admin", "name", "admin name", "admin@fedtrack.local"),
    ("server", "org", "org", "coordinator"),
    ("client", "org", "org", "site_9"),
    ("admin", "org", "org", "submitter"),
    ("admin", "role", "role", "lead"),
    ("server", "type", "type", "server"),
    ("client", "type", "type", "client"),
    ("admin", "type", "type", "admin"),
    ("server", "fed_learn_port", "fed_learn_port", 8002),
    ("client", "mlflow_port", "mlflow_port", 5009),
    ("client", "tracking_uri", "tracking_uri", "http://mlflow-site-9:5000"),
]
IDS = [f"{kind}-{key}" for kind, key, _, _ in FIELDS]


def payloads(valid) -> dict:
    """{what: value} of the attempts on a field whose valid value is valid."""
    text = str(valid)
    return {
        "newline and a service": text + EVIL, "trailing newline": text + "\n", "carriage return": text + "\r",
        "single quote": text + "' privileged: true", "double quote": text + '" privileged: true',
        "interpolation": "${HOME}", "interpolated part": text + "${HOME}", "dollar variable": "$HOME" + text,
        "flow mapping": "{a: b}", "flow list": "[x]", "anchor": "&anchor " + text, "alias": "*alias",
        "comment": text + " # comment", "10 kB": text + "a" * 10240, "space": text + " x", "unicode": text + "\u2028",
        "list": [valid], "mapping": {"a": valid}, "null": None, "true": True, "float": 5001.5,
        # The wrong kind of scalar: a port's digits as text, a name as a number.
        "other type": text if isinstance(valid, int) else 5001,
    }


def uri_payloads() -> dict:
    """A tracking URI is a scheme, a host and a port only."""
    base = "http://mlflow-site-9:5000"
    return {"userinfo": "http://user:pw@mlflow-site-9:5000", "path": base + "/api", "query": base + "/?x=1",
            "fragment": base + "#x", "bad port": "http://mlflow-site-9:99999", "port 0": "http://mlflow-site-9:0",
            "empty port": "http://mlflow-site-9:", "scheme": "file:///etc/passwd", "no host": "http://:5000",
            "host interpolation": "http://${HOST}:5000", "host with space": "http://a b:5000",
            "host underscore": "http://a_b:5000", "label too long": f"http://{'a' * 64}:5000",
            "host too long": "http://" + ".".join(["a" * 63] * 5) + ":5000", "ipv6": "http://[::1]:5000"}


def write_project(tmp_path, kind: str, key: str, value) -> str:
    """The committed project with one field set to value (written by PyYAML: the value exactly as given)."""
    with open(PROJECT) as f:
        doc = yaml.safe_load(f)
    if kind == "project":
        doc[key] = value
    else:
        next(p for p in doc["participants"] if p["type"] == kind)[key] = value
    path = tmp_path / "project.yml"
    path.write_text(yaml.safe_dump(doc, width=1 << 20))
    return str(path)


def refused(path: str, label: str):
    """The project is refused with one line that names the field."""
    with pytest.raises(ProjectError) as e:
        Project(path)
    message = str(e.value)
    assert "\n" not in message and "\r" not in message and len(message) < 400, message
    assert label in message, message


@pytest.mark.parametrize("kind, key, label, valid", FIELDS, ids=IDS)
def test_every_field_refuses_every_injection(tmp_path, kind, key, label, valid):
    attempts = payloads(valid) | (uri_payloads() if key == "tracking_uri" else {})
    for what, value in attempts.items():
        try:
            refused(write_project(tmp_path, kind, key, value), label)
        except BaseException as e:
            raise AssertionError(f"{kind} {key}, {what}: {value!r:.80} was not refused as it should be: {e}") from None


@pytest.mark.parametrize("kind, key, label, valid", FIELDS, ids=IDS)
def test_the_valid_value_passes(tmp_path, kind, key, label, valid):
    """The positive control: each field's valid value is accepted (so a refusal above is the value's)."""
    project = Project(write_project(tmp_path, kind, key, valid))
    check_shape(project, compose_text(project))


# ------------------------------------------------------------------------------ the output's shape

HARDENED = {"cap_drop", "security_opt", "read_only", "logging", "labels"}
FLARE = HARDENED | {"image", "entrypoint", "restart", "init", "stop_grace_period", "tmpfs", "dns"}
KEYS = {
    "provision": HARDENED | {"image", "entrypoint", "user", "cap_add", "tmpfs", "environment", "volumes",
                             "network_mode", "restart", "profiles"},
    "server": FLARE | {"mem_limit", "pids_limit", "volumes", "networks", "healthcheck"},
    "site": FLARE | {"mem_limit", "pids_limit", "healthcheck", "depends_on", "environment", "secrets", "volumes", "networks"},
    "mlflow": HARDENED | {"image", "restart", "command", "dns", "mem_limit", "cpu_shares", "pids_limit", "tmpfs", "healthcheck",
                          "environment", "secrets", "volumes", "ports", "networks"},
    "admin": FLARE | {"restart", "profiles", "mem_limit", "pids_limit", "tmpfs", "working_dir", "command", "volumes", "networks"},
}


def check_shape(project: Project, text: str) -> dict:
    """The one-host compose file holds exactly the deployment's services, networks, volumes and secrets,
    each service exactly its keys, hardened, with no host root and no privilege beyond provisioning's."""
    doc = yaml.safe_load(text)
    sites = project.sites
    assert set(doc) == {"x-hardened", "x-flare", "x-client", "x-mlflow", "services", "networks", "volumes", "secrets"}
    services = doc["services"]
    roles = {"provision": "provision", "server": "server", "admin": "admin",
             **{s: "site" for s in sites}, **{f"mlflow-{s}": "mlflow" for s in sites}}
    assert set(services) == set(roles)
    assert set(doc["networks"]) == {"fl", *sites, *(f"{s}-ui" for s in sites)}
    assert set(doc["volumes"]) == {"server-workspace", *(f"{s}-workspace" for s in sites), *(f"mlflow-{s}" for s in sites)}
    secrets = ("mlflow-admin", "mlflow-flask", "mlflow-forwarder", "forwarder")
    assert set(doc["secrets"]) == {f"{s}-{x}" for s in sites for x in secrets}
    for name, service in services.items():
        assert set(service) == KEYS[roles[name]], name
        assert service["cap_drop"] == ["ALL"] and service["security_opt"] == ["no-new-privileges:true"]
        assert service["read_only"] is True and service["image"].startswith(("fedtrack/flare:", "fedtrack/mlflow:"))
        assert service.get("cap_add", ["CHOWN", "DAC_OVERRIDE", "FOWNER"]) == ["CHOWN", "DAC_OVERRIDE", "FOWNER"]
        assert set(service.get("networks", [])) <= set(doc["networks"])
        assert set(service.get("depends_on", {})) <= set(services)
        for volume in service["volumes"]:
            source = volume["source"] if isinstance(volume, dict) else volume.split(":")[0]
            assert source in doc["volumes"] or source.startswith(("./", "${")), (name, volume)
    for secret in doc["secrets"].values():
        assert set(secret) == {"file"} and secret["file"].startswith("${KITS_ROOT:-./provision/workspace}/secrets/")
    return doc


def test_the_committed_project_has_the_expected_shape():
    project = Project(PROJECT)
    check_shape(project, compose_text(project))


@pytest.mark.parametrize("kind, key, value", [
    ("client", "tracking_uri", "https://mlflow.site-9.example:443/"), ("client", "tracking_uri", "http://10.0.0.7:5000"),
    ("client", "tracking_uri", "https://MLflow.Example"), ("admin", "name", "ops.team-1_x@fl.example.org"),
    ("client", "org", "Org_1-x"), ("admin", "role", "project_admin"), ("project", "name", "fed_track-2"),
    ("client", "mlflow_port", 65535), ("server", "fed_learn_port", 1),
])
def test_unusual_valid_values_land_as_inert_strings(tmp_path, kind, key, value):
    project = Project(write_project(tmp_path, kind, key, value))
    doc = check_shape(project, compose_text(project))
    site = project.sites[0]
    assert doc["services"][site]["environment"]["FEDTRACK_TRACKING_URI"] == project.uris[site]
    admin_kit = doc["services"]["admin"]["volumes"][0]["source"]
    assert admin_kit == f"${{KITS_ROOT:-./provision/workspace}}/{project.name}/prod_00/{project.admin['name']}"


# Aimed at where a site's tracking URI sat in the text-pasted file: ends the site's service, adds one.
AIMED = "http://x:1\n  evil:\n    image: alpine\n    privileged: true\n    volumes: ['/:/host']\n    environment:\n      X: y"


@pytest.mark.parametrize("field, evil", [
    ("tracking_uri", "http://x:1" + EVIL + "  # ' \" ${HOME} $HOME {a: b} [x] &anchor *alias"),
    ("tracking_uri", AIMED), ("name", "p" + EVIL)], ids=["uri", "uri-aimed", "project-name"])
def test_the_generator_writes_even_an_unchecked_value_as_data(field, evil):
    """Past the checks (a value set on the object directly), a value is still one string in the output:
    the generator never pastes text."""
    project = Project(PROJECT)
    site = project.sites[0]
    if field == "name":
        project.name = evil
    else:
        project.uris[site] = evil
    for part in (None, site):
        doc = yaml.safe_load(compose_text(project, part))
        assert "evil" not in doc["services"] and not any("privileged" in s for s in doc["services"].values())
        assert doc["services"][site]["environment"]["FEDTRACK_TRACKING_URI"] == project.uris[site]
    kit = check_shape(project, compose_text(project))["services"][site]["volumes"][0]["source"]
    assert kit == f"${{KITS_ROOT:-./provision/workspace}}/{project.name}/prod_00/{site}"


# ------------------------------------------------------------------------------ the CLI

def topology(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "stack.topology", *args], cwd=ROOT, capture_output=True, text=True)


@pytest.mark.parametrize("command", ["check", "compose", "plan", "participants"])
def test_cli_refuses_an_injection_with_one_line(tmp_path, command):
    bad = write_project(tmp_path, "client", "tracking_uri", "http://mlflow-site-9:5000" + EVIL)
    result = topology(command, bad)
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: {bad}: site "), result.stderr
    assert 'tracking_uri "http://mlflow-site-9:5000\\nservices:' in result.stderr, result.stderr  # escaped, cut short


def test_make_check_refuses_a_bad_project_before_any_image_exists(tmp_path):
    """`make check` reads the project on the host: with an image tag no engine holds, a bad tracking_uri is
    still its one line, and nothing is written or started."""
    from support import copy_checkout

    checkout = tmp_path / "checkout"
    copy_checkout(str(checkout))
    bad = write_project(tmp_path, "client", "tracking_uri", "http://mlflow-site-9:5000" + EVIL)
    os.replace(bad, checkout / "provision" / "project.yml")
    before = (checkout / "docker-compose.yml").read_text()
    result = subprocess.run(["make", "--no-print-directory", "check", "NVFLARE_VERSION=absent-0", "GPUS="],
                            cwd=checkout, capture_output=True, text=True, timeout=120)
    said = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert result.returncode != 0 and len(said) == 1, result.stderr
    assert said[0].startswith("error: provision/project.yml: site ") and "tracking_uri" in said[0], said
    assert (checkout / "docker-compose.yml").read_text() == before


def test_a_ui_port_set_in_env_reaches_make_check(tmp_path):
    """MLFLOW_PORT_<SITE> in .env is exported by the Makefile to stack/up.sh (its check and its readiness
    wait use the same port as Compose): a bad one there is refused like one on the command line."""
    from fedtrack.project import port_var
    from support import copy_checkout

    checkout = tmp_path / "checkout"
    copy_checkout(str(checkout))
    var = port_var(Project(PROJECT).sites[0])
    with open(checkout / ".env", "a") as f:
        f.write(f"{var}=70000\n")
    result = subprocess.run(["make", "--no-print-directory", "check", "GPUS="], cwd=checkout, capture_output=True,
                            text=True, timeout=120)
    said = [line for line in result.stderr.splitlines() if line.strip() and not line.startswith("make")]
    assert result.returncode != 0 and said == [f"error: {var}=70000: give a port from 1 to 65535"], result.stderr
