"""The system as local processes on this host (no Docker): real MLflow servers and a real provisioned FL
system under the sites' policy, and the helpers to start and stop them. Used by the tests and the benchmarks."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import time

from fedtrack.project import Project
from fedtrack.policy import install as policy
from stack.mlflow_rest import MLflowREST

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOB_DIR = os.path.join(ROOT, "job")
JOB_PY = os.path.join(JOB_DIR, "job.py")
BIN = os.path.dirname(sys.executable)
PROJECT = os.path.join(ROOT, "provision", "project.yml")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until(predicate, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def stop(proc: subprocess.Popen):
    """Stop a process and everything it started (it leads its own session)."""
    if proc.poll() is None:
        for sig, wait in ((signal.SIGTERM, 15), (signal.SIGKILL, 10)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(wait)
                return
            except subprocess.TimeoutExpired:
                continue


def start(cmd: list, log_path: str, cwd: str = None, env: dict = None) -> subprocess.Popen:
    log = open(log_path, "ab")
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=cwd, env=env, start_new_session=True)


def run_job(*args, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, JOB_PY, *args], capture_output=True, text=True, timeout=timeout, cwd=ROOT
    )


class MLflowServer:
    def __init__(self, site: str, root: str):
        self.site = site
        self.root = root
        self.port = free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.log = os.path.join(root, "mlflow.log")
        self.proc = None

    def start(self):
        os.makedirs(self.root, exist_ok=True)
        env = dict(os.environ, MLFLOW_SERVER_ENABLE_JOB_EXECUTION="false")
        self.proc = start(
            [
                os.path.join(BIN, "mlflow"), "server",
                "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
                "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
                "--artifacts-destination", f"{self.root}/artifacts",
            ],
            self.log,
            env=env,
        )
        wait_until(self.ready, 120, f"MLflow server of {self.site} on port {self.port}")
        return self

    def ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"MLflow server of {self.site} exited; see {self.log}")
        try:
            MLflowREST(self.uri, timeout=2).experiments()
            return True
        except OSError:
            return False

    def stop(self):
        if self.proc:
            stop(self.proc)


class FlareSystem:
    """A provisioned FL server and its sites as local processes, like `start.sh` runs them, under
    the deployment's local policy (fedtrack.policy) and with the fedtrack package installed, as the
    FLARE image has it: jobs submitted here carry configuration only. Each site's own settings
    (fedtrack.site.settings: its tracking URI, ...) are its process's environment, from site_env."""

    def __init__(self, root: str, site_env: dict = None):
        self.root = root
        self.site_env = site_env or {}
        self.port = free_port()
        self.procs = {}
        self.kits = os.path.join(root, "ws", "fedtrack", "prod_00")
        self.storage = os.path.join(self.kits, "localhost", "store")
        self.sites = Project(PROJECT).sites

    def kit(self, name: str) -> str:
        return os.path.join(self.kits, name)

    @property
    def admin_kit(self) -> str:
        return self.kit("admin@fedtrack.local")

    @property
    def server_dir(self) -> str:
        return self.kit("localhost")

    def provision(self):
        with open(PROJECT) as f:
            project = f.read()
        # Local processes dial the server as localhost, on a free port.
        project = project.replace("- name: server\n", "- name: localhost\n").replace(
            "fed_learn_port: 8002", f"fed_learn_port: {self.port}"
        )
        project_file = os.path.join(self.root, "project.yml")
        with open(project_file, "w") as f:
            f.write(project)
        subprocess.run(
            [os.path.join(BIN, "nvflare"), "provision", "-p", project_file, "-w", os.path.join(self.root, "ws"), "--force"],
            check=True, capture_output=True, cwd=self.root,
        )
        # Each kit is its own workspace here: the policy goes into its local/ (the server's job store
        # into its folder, not /tmp/nvflare).
        for name in ("localhost", *self.sites):
            policy.install(self.kit(name), self.kit(name))

    def launch(self, name: str) -> list:
        """The kit's own launch command (module, uid, org), as its start script would run it."""
        with open(os.path.join(self.kit(name), "startup", "sub_start.sh")) as f:
            line = next(l for l in f if "-m nvflare.private.fed.app." in l and l.strip().startswith("exec "))
        argv = line.split()[1:]
        return [sys.executable, *argv[1:]]  # python3 -u -m ... with this interpreter

    def start(self):
        self.provision()
        for kit, proc in (("localhost", "server"), *((s, s) for s in self.sites)):
            cmd = [a.replace('"$WORKSPACE"', self.kit(kit)) for a in self.launch(kit)]
            env = dict(os.environ, **self.site_env.get(proc, {}))
            self.procs[proc] = start(cmd, os.path.join(self.root, f"{proc}.log"), cwd=self.kit(kit), env=env)
        wait_until(lambda: all(self.registered(s) for s in self.sites), 180, "every client to register with the server")
        return self

    def registered(self, site: str) -> bool:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited; see {self.root}/{name}.log")
        with open(os.path.join(self.root, "server.log"), errors="ignore") as f:
            return f"client {site} registered" in f.read()

    def stop(self):
        for proc in self.procs.values():
            stop(proc)


def copy_checkout(dest: str):
    """The project's files (not its venv, images' build folder, kits or data); build/ is shared so
    that `make up` finds the images up to date."""
    skip = {".git", ".venv", "build", "dist", "data", "jobs", "workspace", "ca", "__pycache__", ".pytest_cache"}
    shutil.copytree(ROOT, dest, ignore=lambda d, names: [n for n in names if n in skip])
    os.makedirs(os.path.join(ROOT, "build"), exist_ok=True)  # an empty engine: the copy's build fills it
    os.symlink(os.path.join(ROOT, "build"), os.path.join(dest, "build"))


def write_project(path: str, sites: dict):
    """project.yml with these sites ({name: UI port}) instead of the checkout's."""
    import yaml

    with open(PROJECT) as f:
        doc = yaml.safe_load(f)
    doc["participants"] = [p for p in doc["participants"] if p["type"] != "client"] + [
        {"name": s, "type": "client", "org": s, "mlflow_port": port} for s, port in sites.items()]
    with open(path, "w") as f:
        yaml.safe_dump(doc, f, sort_keys=False)
