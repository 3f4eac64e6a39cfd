"""The Docker tier: one stack per test session, under a unique compose project name, free host
ports and its own kits, brought up with `make up` and always removed with `make clean`."""

import os
import re
import shutil
import subprocess

import pytest

from checks import SITES
from mlflow_rest import MLflowREST
from support import ROOT, free_port
from topology import port_var


def pytest_collection_modifyitems(items):
    """Tests that break the shared stack on purpose (marker `faults`) run after the other Docker tests."""
    faults = [i for i in items if i.get_closest_marker("faults")]
    rest = [i for i in items if not i.get_closest_marker("faults")]
    last_docker = max((n for n, i in enumerate(rest) if i.get_closest_marker("docker")), default=len(rest) - 1)
    items[:] = rest[: last_docker + 1] + faults + rest[last_docker + 1:]


class Stack:
    def __init__(self, root: str):
        self.name = f"fedtrack-test-{os.getpid()}"
        self.job_name = f"it-{os.getpid()}"
        self.kits = os.path.join(root, "kits")
        self.ca = os.path.join(root, "ca")
        self.data = os.path.join(root, "data")
        self.ports = {site: free_port() for site in SITES}  # MLFLOW_PORT_<SITE> overrides project.yml's
        self.rounds = 3
        self.job_ids = []
        self.vars = [
            f"COMPOSE_PROJECT_NAME={self.name}",
            f"JOB_NAME={self.job_name}",
            f"ROUNDS={self.rounds}",
            f"KITS_ROOT={self.kits}",
            f"CA_DIR={self.ca}",
            f"DATA_DIR={self.data}",
            *(f"{port_var(site)}={port}" for site, port in self.ports.items()),
        ]
        self.env = dict(os.environ, COMPOSE_PROJECT_NAME=self.name, KITS_ROOT=self.kits, CA_DIR=self.ca, DATA_DIR=self.data,
                        **{port_var(site): str(port) for site, port in self.ports.items()})

    def uri(self, site: str) -> str:
        return f"http://127.0.0.1:{self.ports[site]}"

    def secret(self, site: str, name: str, side: str = "mlflow") -> str:
        """A site's provisioned secret (the tests run as root, like CI)."""
        with open(os.path.join(self.kits, "secrets", site, side, name)) as f:
            return f.read().strip()

    def mlflow(self, site: str, user: str = "admin", password: str = None) -> MLflowREST:
        """The site's MLflow through its published port, logged in (as its admin by default)."""
        return MLflowREST(self.uri(site), auth=(user, password or self.secret(site, "admin_password")))

    def admin(self, *args, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
        """A command in the admin container (FL network only, the admin kit at /kit)."""
        return self.compose("--profile", "admin", "run", "--rm", "-T", "admin", *args, check=check, timeout=timeout)

    def admin_python(self, code: str, *args) -> str:
        """Run `code` with an admin session `sess` (the image's stack/flare_admin.py) in the admin
        container; its standard output."""
        body = "\n".join("    " + line for line in code.strip("\n").splitlines())
        script = ("import json, os, sys\nsys.path.insert(0, 'stack')\nfrom flare_admin import session\nsess = session()\n"
                  f"try:\n{body}\nfinally:\n    sess.close()\n"
                  "    sys.stdout.flush()\n    os._exit(0)\n")  # the session's threads would keep it alive
        return self.admin("python3", "-c", script, *args).stdout

    def make(self, target: str, timeout: float = 3600, check: bool = True, extra: list = ()) -> subprocess.CompletedProcess:
        result = subprocess.run(["make", "--no-print-directory", target, *self.vars, *extra], cwd=ROOT,
                                capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"make {target} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
        return result

    def up(self) -> str:
        out = self.make("up").stdout
        job_id = re.search(r"job id:\s+(\S+)", out).group(1)
        self.job_ids.append(job_id)
        return out

    def compose(self, *args, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess:
        result = subprocess.run(["docker", "compose", *args], cwd=ROOT, env=self.env, capture_output=True, text=True,
                                timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"docker compose {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}")
        return result

    def exec_python(self, service: str, code: str) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, "python3", "-c", code, check=False)


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if shutil.which("docker") is None:
        pytest.fail("the Docker tier needs docker; install Docker Engine (see README)")
    s = Stack(str(tmp_path_factory.mktemp("stack")))
    failed = True
    try:
        s.up()
        failed = False
        yield s
    finally:
        if failed or os.environ.get("FEDTRACK_DUMP_LOGS"):
            print(s.compose("--profile", "admin", "logs", "--no-color", "--tail", "300", check=False).stdout[-20000:])
        s.make("clean", check=False, extra=["CONFIRM=yes", "DISCARD_UNDELIVERED=yes"])
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={s.name}"],
                                   capture_output=True, text=True).stdout.split()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True)
