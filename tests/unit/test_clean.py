"""`make clean` (stack/clean.sh) removes only what this deployment made: in KITS_ROOT and CA_DIR the names the
provisioning stamp there lists (provision/provision.sh writes it before it makes them), and only the
containers, networks and volumes of COMPOSE_PROJECT_NAME that carry this deployment's label. Anything else is
refused with one line, and nothing is removed.

clean.sh runs here for real against a fake `docker` on PATH (the unit tier runs no Docker): it answers from a
JSON file of containers, networks and volumes with their labels, records every call, and runs what clean.sh
runs as root in a container (`rm`, `ls`, `cat`) on the host folder mounted there, so the files are real."""

import json
import os
import re
import shutil
import stat
import subprocess
import sys

import pytest

from checks import SITES
from support import ROOT

ONE, TWO = SITES[:2]  # the project's sites (no other file names them)

CLEAN = os.path.join(ROOT, "stack", "clean.sh")
PROVISION = os.path.join(ROOT, "provision", "provision.sh")
PROJECT = "fedtrack"  # provision/project.yml's name: this deployment's label value
LABEL = "fedtrack.project"
KITS = (PROJECT, "secrets", ".project.sha256")  # what provisioning makes in KITS_ROOT

FAKE_DOCKER = r'''#!PYTHON
"""`docker` as stack/clean.sh calls it: the engine's containers, networks and volumes are a JSON file."""
import json, os, re, subprocess, sys

args = sys.argv[1:]
with open(os.environ["FAKE_DOCKER_LOG"], "a") as f:
    f.write(json.dumps(args) + "\n")
with open(os.environ["FAKE_DOCKER_STATE"]) as f:
    state = json.load(f)


def save():
    with open(os.environ["FAKE_DOCKER_STATE"], "w") as f:
        json.dump(state, f)


def value(option):
    return args[args.index(option) + 1]


def listing(kind):
    key, _, want = value("--filter").removeprefix("label=").partition("=")
    for name, labels in state[kind].items():
        if labels.get(key) == want:
            line = re.sub(r'\{\{\.Label "([^"]+)"\}\}', lambda m: labels.get(m[1], ""), value("--format"))
            print(line.replace("{{.Names}}", name).replace("{{.Name}}", name))


def remove(kind, names):
    for name in names:
        if name not in state[kind]:
            sys.exit(f"Error: No such {kind[:-1]}: {name}")
        del state[kind][name]
    save()


def run():
    """docker run [options] IMAGE [ARG...]: rm/ls/cat with /target the host folder mounted there."""
    opts, i = {"-v": []}, 1
    while args[i].startswith("-"):
        if args[i] == "--rm":
            i += 1
            continue
        opts.setdefault(args[i], []).append(args[i + 1]) if args[i] == "-v" else opts.__setitem__(args[i], args[i + 1])
        i += 2
    image, rest = args[i], args[i + 1:]
    mounts = {m.split(":")[1]: m.split(":")[0] for m in opts["-v"]}
    if not image.startswith("fedtrack/flare:") or opts.get("--network") != "none":
        sys.exit(f"fake docker: unexpected run: {args}")
    if opts["--entrypoint"] == "fedtrack-spool":
        print(state["spools"].get(mounts["/workspace"], 0))
        return 0
    if opts["--entrypoint"] not in ("rm", "ls", "cat") or list(mounts) != ["/target"]:
        sys.exit(f"fake docker: unexpected run: {args}")
    host = lambda p: mounts["/target"] + p[len("/target"):] if p.startswith("/target") else p
    return subprocess.run([opts["--entrypoint"], *map(host, rest)], cwd=host(opts.get("-w", "/"))).returncode


if args[:2] in (["volume", "ls"], ["network", "ls"]):
    listing(args[0] + "s")
elif args[:2] == ["ps", "-a"]:
    listing("containers")
elif args[:2] in (["volume", "rm"], ["network", "rm"]):
    remove(args[0] + "s", args[2:])
elif args[:2] == ["image", "inspect"]:
    sys.exit(0 if state["image"] else 1)
elif args[:1] == ["run"]:
    sys.exit(run())
elif args[:1] == ["compose"] and "down" in args:
    project = os.environ["COMPOSE_PROJECT_NAME"]
    for kind in ("containers", "networks") + (("volumes",) if "--volumes" in args or "-v" in args else ()):
        remove(kind, [n for n, labels in state[kind].items() if labels.get("com.docker.compose.project") == project])
else:
    sys.exit(f"fake docker: unexpected: {args}")
'''

# The calls that change something: none may happen when clean.sh refuses.
CHANGES = re.compile(r'^\["(run", .*"rm"|volume", "rm"|network", "rm"|compose")')


class Engine:
    """The fake engine's state and its call log."""

    def __init__(self, tmp_path):
        self.bin = tmp_path / "bin"
        self.bin.mkdir()
        docker = self.bin / "docker"
        docker.write_text(FAKE_DOCKER.replace("PYTHON", sys.executable, 1))
        docker.chmod(0o755)
        self.state_file, self.log = tmp_path / "engine.json", tmp_path / "docker.log"
        self.log.write_text("")
        self.save({"containers": {}, "networks": {}, "volumes": {}, "spools": {}, "image": True})

    def save(self, state):
        self.state_file.write_text(json.dumps(state))

    @property
    def state(self):
        return json.loads(self.state_file.read_text())

    def add(self, kind: str, name: str, project: str, label=PROJECT, spool: int = None):
        state = self.state
        labels = {"com.docker.compose.project": project, **({LABEL: label} if label is not None else {})}
        state[kind][name] = labels
        if spool is not None:
            state["spools"][name] = spool
        self.save(state)

    def deployment(self, project: str, sites=(ONE, TWO), label=PROJECT, spools=0):
        """The containers, networks and volumes `make up` makes for compose project `project`."""
        self.add("volumes", f"{project}_server-workspace", project, label)
        self.add("containers", f"{project}-server-1", project, label)
        self.add("networks", f"{project}_fl", project, label)
        for site in sites:
            self.add("volumes", f"{project}_{site}-workspace", project, label, spool=spools)
            self.add("volumes", f"{project}_mlflow-{site}", project, label)
            self.add("containers", f"{project}-{site}-1", project, label)
            self.add("containers", f"{project}-mlflow-{site}-1", project, label)
            self.add("networks", f"{project}_{site}", project, label)
            self.add("networks", f"{project}_{site}-ui", project, label)

    def calls(self) -> list:
        return [json.loads(line) for line in self.log.read_text().splitlines()]

    def changes(self) -> list:
        return [c for c in self.calls() if CHANGES.match(json.dumps(c))]


@pytest.fixture
def engine(tmp_path):
    return Engine(tmp_path)


def clean(engine, what: str, kits, ca, project: str = "fedtrack", **env) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("COMPOSE", "CONFIRM", "DISCARD_UNDELIVERED")}
    base.update(PATH=os.pathsep.join([str(engine.bin), os.path.dirname(sys.executable), os.environ["PATH"]]),
                FAKE_DOCKER_STATE=str(engine.state_file), FAKE_DOCKER_LOG=str(engine.log),
                COMPOSE_PROJECT_NAME=project, KITS_ROOT=str(kits), CA_DIR=str(ca), NVFLARE_VERSION="2.9.0", **env)
    return subprocess.run([CLEAN, what], env=base, capture_output=True, text=True, timeout=120)


def stamp_header() -> str:
    """The first line of provision.sh's stamps, as it writes them."""
    with open(PROVISION) as f:
        return re.search(r'^STAMP_HEADER="(.*)"$', f.read(), re.M)[1]


def write(path, text: str = "x"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def provisioned(kits, ca, extra=()):
    """KITS_ROOT and CA_DIR as provisioning leaves them: kits, secrets, the hash, the root CA, both stamps."""
    write(kits / PROJECT / "prod_00" / ONE / "startup" / "client.key")
    write(kits / "secrets" / ONE / "mlflow" / "admin_password")
    write(kits / ".project.sha256")
    write(kits / ".provisioned-kits", "\n".join([stamp_header(), *KITS, *extra]) + "\n")
    write(ca / "cert.json", "{}")
    write(ca / ".provisioned-ca", f"{stamp_header()}\ncert.json\n")


def tree(folder) -> list:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def refused(result, *words):
    """Non-zero, and one line on stderr that says so and names what to check."""
    lines = result.stderr.splitlines()
    assert result.returncode != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.stdout + result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


# --------------------------------------------------------------------------- KITS_ROOT and CA_DIR: the stamps


@pytest.mark.parametrize("what", ["kits", "all"])
def test_a_kits_root_without_a_provisioning_stamp_is_refused_and_nothing_removed(engine, tmp_path, what):
    """KITS_ROOT=$HOME: a secrets/ folder and a folder holding prod_00 of its owner's, and even a .project.sha256,
    but no stamp of this project's provisioning. Today's clean.sh removed all three."""
    home, ca = tmp_path / "home", tmp_path / "ca"
    write(home / "secrets" / "bank.txt", "mine")
    write(home / "work" / "prod_00" / "notes.txt", "mine")
    write(home / ".project.sha256", "mine")
    before = tree(home)
    result = clean(engine, what, home, ca)
    refused(result, f"refusing to clean {home}", ".provisioned-kits", "KITS_ROOT", "Nothing removed")
    assert tree(home) == before
    assert engine.changes() == []


def test_a_ca_dir_without_a_provisioning_stamp_is_refused_and_nothing_removed(engine, tmp_path):
    home = tmp_path / "home"
    write(home / "cert.json", "mine")
    result = clean(engine, "ca", tmp_path / "kits", home)
    refused(result, f"refusing to clean {home}", ".provisioned-ca", "CA_DIR", "Nothing removed")
    assert tree(home) == ["cert.json"] and engine.changes() == []


def test_only_the_names_the_stamps_list_are_removed(engine, tmp_path):
    """Another kits folder (with its prod_00), a file and a folder of someone else's stay, and so do the folders."""
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    write(kits / "other-project" / "prod_00" / ONE / "startup" / "client.key", "not ours")
    write(kits / "notes.txt", "mine")
    write(ca / "canary.txt", "mine")

    result = clean(engine, "kits", kits, ca)
    assert result.returncode == 0, result.stderr
    assert sorted(os.listdir(kits)) == ["notes.txt", "other-project"]
    assert (kits / "other-project" / "prod_00" / ONE / "startup" / "client.key").read_text() == "not ours"
    result = clean(engine, "ca", kits, ca)
    assert result.returncode == 0, result.stderr
    assert os.listdir(ca) == ["canary.txt"]
    # Each removal in a root container that sees only its folder, named entry by named entry, the stamp last.
    removals = [c for c in engine.calls() if c[0] == "run"]
    assert [c[c.index("-v") + 1] for c in removals] == [f"{kits}:/target", f"{ca}:/target"], removals
    assert removals[0][-4:] == [f"/target/{n}" for n in (*KITS, ".provisioned-kits")]
    assert removals[1][-2:] == ["/target/cert.json", "/target/.provisioned-ca"]


def test_folders_left_empty_go_and_a_missing_or_empty_folder_is_no_error(engine, tmp_path):
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    assert clean(engine, "kits", kits, ca).returncode == 0 and not kits.exists()
    assert clean(engine, "ca", kits, ca).returncode == 0 and not ca.exists()
    (tmp_path / "empty").mkdir()
    for folder in (tmp_path / "missing", tmp_path / "empty"):
        result = clean(engine, "all", folder, folder)
        assert result.returncode == 0, result.stderr
    assert engine.changes()[-1][0] == "compose" and (tmp_path / "empty").is_dir()


@pytest.mark.parametrize("name", ["..", ".", "../outside", "/etc", "a/b", "-rf", "x y", "*", ".provisioned-kits"])
def test_a_stamp_naming_anything_but_an_entry_of_its_own_folder_is_refused(engine, tmp_path, name):
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca, extra=[name])
    write(tmp_path / "outside", "mine")
    before = tree(tmp_path)
    result = clean(engine, "kits", kits, ca)
    refused(result, f"refusing to clean {kits}", "Nothing removed")
    assert tree(tmp_path) == before and engine.changes() == []


def test_a_stamp_provisioning_did_not_write_is_refused(engine, tmp_path):
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    (kits / ".provisioned-kits").write_text("secrets\n" + "\n".join(KITS) + "\n")  # no header
    before = tree(kits)
    refused(clean(engine, "kits", kits, ca), "was not written by this project's provisioning", "Nothing removed")
    assert tree(kits) == before and engine.changes() == []


def test_root_and_the_checkout_are_refused(engine, tmp_path):
    for folder in ("/", ROOT):
        refused(clean(engine, "kits", folder, tmp_path / "ca"), f"refusing to clean {folder}: it is / or this checkout")
        refused(clean(engine, "ca", tmp_path / "kits", folder), f"refusing to clean {folder}: it is / or this checkout")
    assert engine.changes() == []


# --------------------------------------------------------------------------- containers, networks, volumes: the label


@pytest.mark.parametrize("label", [None, "someone-else"])
def test_another_compose_projects_resources_are_refused_and_nothing_removed(engine, tmp_path, label):
    """`make clean COMPOSE_PROJECT_NAME=other`: other's volumes carry no label of this deployment (or another
    deployment's), so neither they nor other's containers and networks are touched; nor are the kits."""
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    engine.add("volumes", "other_pgdata", "other", label)
    before, state = tree(tmp_path / "kits"), engine.state
    result = clean(engine, "all", kits, ca, project="other", CONFIRM="yes", DISCARD_UNDELIVERED="yes")
    refused(result, "volume other_pgdata of compose project other is not this deployment's",
            f"{LABEL}={label or '<none>'}", "COMPOSE_PROJECT_NAME", "Nothing removed")
    assert engine.state == state and tree(kits) == before and engine.changes() == []


@pytest.mark.parametrize("kind", ["containers", "networks", "volumes"])
def test_one_unlabelled_resource_of_the_project_stops_everything(engine, tmp_path, kind):
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    engine.deployment("fedtrack")
    engine.add(kind, f"fedtrack_stray-{kind}", "fedtrack", None)
    state = engine.state
    result = clean(engine, "all", kits, ca, CONFIRM="yes")
    refused(result, f"{kind[:-1]} fedtrack_stray-{kind} of compose project fedtrack is not this deployment's",
            "Nothing removed")
    assert engine.state == state and engine.changes() == []


def test_this_deployment_goes_and_nothing_else(engine, tmp_path):
    """The deployment's containers, networks and volumes (a site the project no longer lists too), its kits
    and root CA; another compose project's volume, and what else is in KITS_ROOT and CA_DIR, stay."""
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    write(kits / "notes.txt", "mine")
    engine.deployment("fedtrack", sites=(ONE, TWO, "site-3"))
    engine.add("volumes", "other_pgdata", "other", None)
    engine.add("volumes", "fedtrack-2_server-workspace", "fedtrack-2")
    result = clean(engine, "all", kits, ca, CONFIRM="yes")
    assert result.returncode == 0, result.stderr
    state = engine.state
    assert {k: sorted(v) for k, v in state.items() if k in ("containers", "networks", "volumes")} == {
        "containers": [], "networks": [], "volumes": ["fedtrack-2_server-workspace", "other_pgdata"]}
    assert sorted(os.listdir(kits)) == ["notes.txt"] and not ca.exists()
    compose = [c for c in engine.calls() if c[0] == "compose"]
    assert len(compose) == 1 and "--volumes" not in compose[0], compose  # volumes: only those checked, by name


def test_undelivered_records_and_mlflow_runs_are_still_refused_without_their_word(engine, tmp_path):
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    engine.deployment("fedtrack", spools=3)
    state, before = engine.state, tree(kits)
    refused(clean(engine, "all", kits, ca, CONFIRM="yes"),
            f"undelivered tracking records ({ONE}-workspace: 3, {TWO}-workspace: 3)", "DISCARD_UNDELIVERED=yes")
    refused(clean(engine, "all", kits, ca, DISCARD_UNDELIVERED="yes"), "make clean CONFIRM=yes", "Nothing removed")
    assert engine.state == state and tree(kits) == before and engine.changes() == []
    assert clean(engine, "all", kits, ca, DISCARD_UNDELIVERED="yes", CONFIRM="yes").returncode == 0
    assert engine.state["volumes"] == {}


def test_without_the_image_nothing_is_removed(engine, tmp_path):
    kits, ca = tmp_path / "kits", tmp_path / "ca"
    provisioned(kits, ca)
    state = engine.state
    engine.save({**state, "image": False})
    before = tree(kits)
    refused(clean(engine, "all", kits, ca), "make images", "Nothing removed")
    assert tree(kits) == before and engine.changes() == []


# --------------------------------------------------------------------------- provision.sh's stamps, as clean.sh reads them


def local_provision(tmp_path) -> str:
    """provision/provision.sh with its folders (/provision/...) moved under tmp_path; the real nvflare, as root."""
    if os.geteuid() != 0:
        pytest.skip("provision.sh hands the kits to the containers' users (chown): run as root, as CI does")
    root = tmp_path / "provision"
    (root / "workspace").mkdir(parents=True)
    shutil.copy(os.path.join(ROOT, "provision", "project.yml"), root / "project.yml")
    script = root / "provision.sh"
    with open(PROVISION) as f:
        script.write_text(f.read().replace("/provision/", f"{root}/"))
    return str(script)


def test_what_provisioning_makes_is_what_clean_removes_and_nothing_else(engine, tmp_path):
    script = local_provision(tmp_path)
    kits, ca = tmp_path / "provision" / "workspace", tmp_path / "provision" / "ca"
    write(kits / "notes.txt", "mine")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(os.listdir(kits)) == sorted([*KITS, ".provisioned-kits", "notes.txt"])
    assert stat.S_IMODE(os.stat(ca).st_mode) == 0o700 and sorted(os.listdir(ca)) == [".provisioned-ca", "cert.json"]

    # Kits an earlier version made (no stamps): `make provision` lists them, the root CA with them.
    (kits / ".provisioned-kits").unlink()
    (ca / ".provisioned-ca").unlink()
    refused(clean(engine, "kits", kits, ca), "no .provisioned-kits", "make provision")
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "Skipping provisioning" in done.stdout, done.stdout + done.stderr

    root_ca = (ca / "cert.json").read_text()
    result = clean(engine, "all", kits, ca)
    assert result.returncode == 0, result.stderr
    assert os.listdir(kits) == ["notes.txt"] and not ca.exists()

    # The root CA put back (README: to add a participant) signs the new kits, and is listed again.
    write(ca / "cert.json", root_ca)
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads((ca / "cert.json").read_text())["root_cert"] == json.loads(root_ca)["root_cert"]
    assert (ca / ".provisioned-ca").read_text() == f"{stamp_header()}\ncert.json\n"


@pytest.mark.parametrize("theirs", [PROJECT, "secrets"])
def test_provisioning_never_lists_a_folder_it_did_not_make(engine, tmp_path, theirs):
    """KITS_ROOT=$HOME holding its owner's ~/fedtrack (a checkout of this project, say) or ~/secrets: provisioning
    refuses to make kits there, and lists nothing, so `make clean` can never take them."""
    script = local_provision(tmp_path)
    kits, ca = tmp_path / "provision" / "workspace", tmp_path / "provision" / "ca"
    write(kits / theirs / "README.md", "mine")
    env = dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    done = subprocess.run(["bash", script], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode != 0 and f"KITS_ROOT/{theirs} is there already" in done.stderr, done.stdout + done.stderr
    assert os.listdir(kits) == [theirs]
    refused(clean(engine, "kits", kits, ca), "no .provisioned-kits")
    assert tree(kits) == [theirs, f"{theirs}/README.md"]
