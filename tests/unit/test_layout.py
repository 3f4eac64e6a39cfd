"""The code's layout keeps its promises: one installed package, no path tricks, small files, no import
cycle, and every fact shared by two processes stated in one place (the test names the place)."""

import ast
import glob
import os
import re
import subprocess

import pytest

from support import ROOT

CODE_DIRS = ("fedtrack", "job", "stack", "bench", "docker")


def tracked() -> list:
    out = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True).stdout
    if not out:
        pytest.fail("not a git checkout: cannot list the project's files")
    return sorted(p for p in out.split() if os.path.isfile(os.path.join(ROOT, p)) and not os.path.islink(os.path.join(ROOT, p)))


def python_files(outside_tests: bool = True) -> list:
    return [p for p in tracked() if p.endswith(".py") and not (outside_tests and p.startswith("tests/"))]


def read(rel: str) -> str:
    with open(os.path.join(ROOT, rel), errors="ignore") as f:
        return f.read()


def code_strings(rel: str) -> list:
    """The string literals of a Python file that are not docstrings (prose may name a fact; code may not)."""
    tree = ast.parse(read(rel))
    docs = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docs.add(id(first.value))
    return [n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs]


def code_lines(rel: str) -> list:
    """A shell, Makefile, Dockerfile or YAML file's lines without its comments."""
    return [line for line in read(rel).splitlines() if not line.lstrip().startswith("#")]


def places(needle: str) -> set:
    """Every file outside tests/ and the README whose code (not its comments or docstrings) holds needle."""
    found = set()
    for rel in tracked():
        if rel.startswith("tests/") or rel.endswith(".md"):
            continue
        if rel.endswith(".py"):
            hit = any(needle in s for s in code_strings(rel))
        elif rel.endswith((".sh", ".yml", ".yaml", ".toml", ".txt", ".json", ".env", "Dockerfile", "Makefile")) \
                or os.path.basename(rel) in ("Makefile", ".env"):
            hit = any(needle in line for line in code_lines(rel))
        else:
            continue
        if hit:
            found.add(rel)
    return found


def test_no_sys_path_insert_outside_tests():
    bad = [p for p in python_files() if re.search(r"sys\.path\s*(\.insert|\.append|\[|\+=|=)", read(p))]
    assert not bad, f"code found by path tricks instead of the installed package: {bad}"


def test_no_python_file_outside_tests_over_450_lines():
    long = {p: n for p in python_files() if (n := read(p).count("\n")) > 450}
    assert not long, f"split these by what they do: {long}"


def first_party_imports(rel: str) -> set:
    """The fedtrack/stack/bench modules a file imports (anywhere in it)."""
    out = set()
    for node in ast.walk(ast.parse(read(rel))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in out if m.split(".")[0] in ("fedtrack", "stack", "bench")}


def module_of(rel: str) -> str:
    name = rel[:-3].replace("/", ".").removesuffix(".__init__")
    return "fedtrack." + name if rel.startswith("job/") else name


def test_the_import_graph_has_no_cycle():
    modules = {module_of(p): p for p in python_files() if p.split("/")[0] in ("fedtrack", "job", "stack", "bench")}
    graph = {m: {i for i in first_party_imports(p) if i in modules and i != m} for m, p in modules.items()}
    state, cycle = {}, []

    def visit(m, path):
        state[m] = "open"
        for n in sorted(graph[m]):
            if state.get(n) == "open":
                cycle.append(path[path.index(n):] + [n] if n in path else [m, n])
            elif n not in state:
                visit(n, path + [n])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    assert not cycle, f"import cycles: {cycle}"


def test_each_top_level_folder_says_what_lives_there_and_where_it_runs():
    for folder, first in (("fedtrack", "__init__.py"), ("job", "__init__.py"), ("stack", "README.md"),
                          ("bench", "README.md"), ("docker", "README.md"), ("tests", "README.md"),
                          ("provision", "project.yml")):
        text = read(os.path.join(folder, first))
        assert re.search(r"\bruns?\b", text[:600], re.I), f"{folder}/{first} does not say where its code runs"


# Facts that two processes (or a process and a person) must agree on: each stated once.
@pytest.mark.parametrize("needle, home", [
    ("tracking-spool", {"fedtrack/names.py"}),                          # a site's spool folder
    ("fedtrack_end_reason", {"fedtrack/names.py"}),                     # why the server ended a job
    ("FEDTRACK_TRACKING_URI", {"fedtrack/names.py", "stack/compose.template.yml", "docker-compose.yml"}),  # site -> its code
    ("workflowType=machine_learning", {"fedtrack/project.py"}),         # the UI link's view
    ("fedtrack.run_outcome", {"fedtrack/names.py"}),                    # server -> site: how the run ended
    ("2.9.0", {"requirements.txt", "docker-compose.yml"}),              # the nvflare pin (the compose file is generated)
    ("3.18.0", {"requirements.txt", "docker-compose.yml"}),             # the mlflow pin
])
def test_a_shared_fact_is_stated_in_one_place(needle, home):
    assert places(needle) <= home, f"{needle!r} is spelled outside {sorted(home)}: {sorted(places(needle) - home)}"


def test_a_site_trains_with_the_training_script_installed_with_its_package():
    """SiteTrainer names no path a job gave: the client.py of the fedtrack.job installed beside it."""
    import fedtrack.job.client
    from fedtrack.site.trainer import TRAINING_SCRIPT

    assert os.path.samefile(TRAINING_SCRIPT, fedtrack.job.client.__file__)


def test_every_env_knob_is_read_by_something():
    """.env holds only knobs that the Makefile, a script or the compose template reads."""
    readers = "\n".join(read(p) for p in ("Makefile", "stack/up.sh", "stack/status.sh", "stack/clean.sh",
                                          "stack/bundles.sh", "stack/compose.template.yml", "fedtrack/knobs.py"))
    knobs = re.findall(r"^([A-Z_][A-Z0-9_]*)=", read(".env"), re.M)
    assert knobs, ".env lists no knob"
    unread = [k for k in knobs if not re.search(rf"\b{k}\b", readers)]
    assert not unread, f".env knobs nothing reads: {unread}"


def test_the_secrets_layout_agrees_across_provisioning_compose_and_mlflow():
    """The sites' secrets are a contract of three files: provision/provision.sh writes them, the compose
    template hands them to the containers, docker/mlflow-site.py (and the client's password file) reads them."""
    import yaml

    from fedtrack.project import Project
    from stack.topology import compose_text

    project = Project(os.path.join(ROOT, "provision", "project.yml"))
    compose = yaml.safe_load(compose_text(project))
    written = set(re.findall(r'write\(f"\{root\}/\{site\}/([a-z]+/[a-z_]+)"', read("provision/provision.sh")))
    read_by_mlflow = set(re.findall(r'secret\(["\']([a-z_]+)["\']\)', read("docker/mlflow-site.py")))
    assert written and read_by_mlflow
    for site in project.sites:
        files = {name: s["file"] for name, s in compose["secrets"].items() if name.startswith(f"{site}-")}
        assert {f.split(f"/secrets/{site}/", 1)[1] for f in files.values()} == written, files
        targets = {s["target"] for s in compose["services"][f"mlflow-{site}"]["secrets"]}
        assert targets == read_by_mlflow, (targets, read_by_mlflow)
        client = compose["services"][site]
        password_file = client["environment"]["FEDTRACK_MLFLOW_PASSWORD_FILE"]
        assert password_file == "/run/secrets/" + client["secrets"][0]["target"], password_file


def test_the_unit_tier_runs_no_docker_command():
    """`make test-unit` works on a machine without Docker: a test that needs the docker CLI lives in
    tests/integration (a fake `docker` script on PATH is fine)."""
    found = []
    for path in glob.glob(os.path.join(ROOT, "tests", "unit", "*.py")):
        with open(path) as f:
            found += [f"{os.path.basename(path)}: {line.strip()}" for line in f if re.search(r"""\[\s*["']docker["']\s*,""", line)]
    assert found == [], found


def test_every_test_the_readme_names_as_a_proof_exists():
    """README's table of promises and their proofs names real tests (a renamed test updates it)."""
    with open(os.path.join(ROOT, "README.md")) as f:
        readme = f.read()
    table = readme.split("### Each promise and the test that proves it", 1)[1].split("\n#", 1)[0]
    named = re.findall(r"`(tests/[\w/]+\.py)(?:::(\w+))?`", table)
    assert len(named) >= 20, named
    for path, test in named:
        assert os.path.isfile(os.path.join(ROOT, path)), path
        if test:
            with open(os.path.join(ROOT, path)) as f:
                assert re.search(rf"^def {test}\(", f.read(), re.M), f"{path} has no {test}"
