"""How every Docker test drives a deployment: `make` and `docker compose` in its folder (the checkout, a copy of
it, or one participant's bundle) with the settings that make it its own, the admin container, and each site's
MLflow, logged in."""

import os
import re
import subprocess

from stack.mlflow_rest import MLflowREST
from support import wait_until

# The stack's timers that only set how long a test waits on a fault (their production values: fedtrack/knobs.py
# STACK, pinned by tests/unit/test_timers.py): a forwarder retries a server that is back within 5 s, and a
# container turns unhealthy within three 2 s checks.
SHORT_TIMERS = {"DELIVERY_RETRY_CAP": 5, "HEALTHCHECK_INTERVAL": 2}


def run(cmd: list, cwd, timeout: float = 1800, check: bool = True, env: dict = None,
        stdin: str = None) -> subprocess.CompletedProcess:
    result = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, input=stdin)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} in {cwd} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}")
    return result


class Deployment:
    """The deployment in `folder`. `settings` are its make variables (COMPOSE_PROJECT_NAME, KITS_ROOT, ...; a
    bundle keeps its own in its .env), `env` make's environment (None: this process's), `ports` its sites' UI
    ports on the host's loopback."""

    make_timeout, compose_timeout = 1800, 1800  # seconds, for a call that names none

    def __init__(self, folder, settings: dict = None, env: dict = None, ports: dict = None):
        self.folder = str(folder)
        self.settings = {key: str(value) for key, value in (settings or {}).items()}
        self.env = env
        self.ports = dict(ports or {})
        self.name = self.settings.get("COMPOSE_PROJECT_NAME")
        self.job_name = self.settings.get("JOB_NAME")
        self.kits = self.settings.get("KITS_ROOT")

    # ------------------------------------------------------------------ make and compose

    def _make_cmd(self, target: str, extra=()) -> list:
        return ["make", "--no-print-directory", target, *(f"{k}={v}" for k, v in self.settings.items()), *extra]

    def make(self, target: str, timeout: float = None, check: bool = True, extra=()) -> subprocess.CompletedProcess:
        if target in ("down", "clean"):  # what they remove, with nothing of the tests' own left running
            self.stop_admin()
        return run(self._make_cmd(target, extra), self.folder, timeout or self.make_timeout, check, self.env)

    def start_make(self, target: str) -> subprocess.Popen:
        """`make target` in the background, its output and errors in one pipe (for hosts that start at once)."""
        return subprocess.Popen(self._make_cmd(target), cwd=self.folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.env)

    def compose(self, *args, check: bool = True, timeout: float = None) -> subprocess.CompletedProcess:
        # Compose sees the settings as it does under make, whose Makefile exports them.
        env = dict(os.environ if self.env is None else self.env, **self.settings)
        return run(["docker", "compose", *args], self.folder, timeout or self.compose_timeout, check, env)

    def exec_python(self, service: str, code: str, *args) -> subprocess.CompletedProcess:
        return self.compose("exec", "-T", service, "python3", "-c", code, *args, check=False)

    def copy_out(self, service: str, path: str, dest: str):
        """A service's folder, copied into dest; links (startup/ points into the read-only kit) skipped."""
        import io
        import tarfile

        cid = self.compose("ps", "-q", service).stdout.strip()
        tar = subprocess.run(["docker", "cp", f"{cid}:{path}", "-"], capture_output=True, check=True).stdout
        skip_links = lambda member, p: None if member.issym() else tarfile.data_filter(member, p)  # noqa: E731
        tarfile.open(fileobj=io.BytesIO(tar)).extractall(dest, filter=skip_links)

    def logs(self, *services, tail: int = None) -> str:
        """The services' logs (all, the admin's too, by default), for a post-mortem."""
        return self.compose("--profile", "admin", "logs", "--no-color", *(["--tail", str(tail)] if tail else []),
                            *services, check=False).stdout

    def down(self) -> subprocess.CompletedProcess:
        """Containers, networks and volumes gone: a bundle host's teardown."""
        self.stop_admin()
        return self.compose("--profile", "admin", "down", "--volumes", "--remove-orphans", check=False)

    def clean(self) -> subprocess.CompletedProcess:
        """`make clean` that removes everything, undelivered records and MLflow runs too: a one-host teardown."""
        return self.make("clean", check=False, extra=["CONFIRM=yes", "DISCARD_UNDELIVERED=yes"])

    def remove_containers(self):
        """Containers of this compose project that outlived `make clean` (e.g. one a test started itself)."""
        leftovers = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=com.docker.compose.project={self.name}"],
                                   capture_output=True, text=True).stdout.split()
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True)

    # ------------------------------------------------------------------ the admin

    def admin(self, *args, check: bool = True, timeout: float = 600, stdin: str = None) -> subprocess.CompletedProcess:
        """A command in the admin container (FL network only, the admin kit at /kit): one container kept
        for the tests' own admin commands, started again when it is gone (`make down`); `make` targets
        start their own, as a user's do."""
        if not self._admin_running():
            self._admin = self.compose("--profile", "admin", "run", "-d", "admin", "sleep", "infinity").stdout.strip().splitlines()[-1]
        return run(["docker", "exec", "-i", self._admin, *args], self.folder, timeout, check, stdin=stdin)

    _admin = None

    def stop_admin(self):
        if self._admin:
            subprocess.run(["docker", "rm", "-f", self._admin], capture_output=True)
            self._admin = None

    def _admin_running(self) -> bool:
        return bool(self._admin) and subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", self._admin],
                                                    capture_output=True, text=True).stdout.strip() == "true"

    def admin_python(self, code: str, *args, stdin: str = None) -> str:
        """Run `code` with an admin session `sess` (the image's fedtrack.admin) in the admin
        container (`stdin` on its standard input); its standard output."""
        body = "\n".join("    " + line for line in code.strip("\n").splitlines())
        script = ("import json, os, sys\nfrom fedtrack.admin import session\nsess = session()\n"
                  f"try:\n{body}\nfinally:\n    sess.close()\n"
                  "    sys.stdout.flush()\n    os._exit(0)\n")  # the session's threads would keep it alive
        return self.admin("python3", "-c", script, *args, stdin=stdin).stdout

    def fedtrack_job(self, name: str, rounds: int, *extra: str, wait: bool = False) -> str:
        """fedtrack-job in the admin container (each site trains on its own /data); its output."""
        return self.admin("fedtrack-job", "--env", "prod", "--startup-kit", "/kit", *([] if wait else ["--no-wait"]),
                          "--name", name, "--rounds", str(rounds), *extra).stdout

    def submit(self, name: str, rounds: int, *extra: str) -> str:
        """A job submitted (not waited for); its id."""
        return re.search(r"submitted job (\S+)", self.fedtrack_job(name, rounds, *extra)).group(1)

    # ------------------------------------------------------------------ each site's MLflow

    def uri(self, site: str) -> str:
        return f"http://127.0.0.1:{self.ports[site]}"

    def secret(self, site: str, name: str, side: str = "mlflow") -> str:
        """A site's provisioned secret (the tests run as root, like CI): under KITS_ROOT/secrets/<site>/ on one
        host, under secrets/ in a site's bundle (which has no KITS_ROOT setting)."""
        folder = os.path.join(self.kits, "secrets", site) if self.kits else os.path.join(self.folder, "secrets")
        with open(os.path.join(folder, side, name)) as f:
            return f.read().strip()

    def mlflow(self, site: str, user: str = "admin", password: str = None) -> MLflowREST:
        """The site's MLflow through its published port, logged in (as its admin by default)."""
        return MLflowREST(self.uri(site), auth=(user, password or self.secret(site, "admin_password")))

    def rounds_begun(self, site: str, name: str) -> int:
        """Rounds the site has begun in job `name` (one `accuracy` point each), as its MLflow shows now."""
        try:
            server = self.mlflow(site)
            exp = server.experiment_by_name(f"{name}-{site}")
            runs = server.runs([exp["experiment_id"]]) if exp else []
            return len(server.history(runs[0]["info"]["run_id"], "accuracy")) if runs else 0
        except OSError:
            return 0

    def wait_for_round(self, site: str, name: str, rnd: int, timeout: float = 600):
        wait_until(lambda: self.rounds_begun(site, name) >= rnd, timeout, f"round {rnd} at {site}")
