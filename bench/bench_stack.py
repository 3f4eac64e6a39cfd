"""How fast the stack builds, starts and runs, each figure next to its baseline measured in the same
run; prints figures, asserts nothing.

    .venv/bin/python -m bench.bench_stack [--cold] [--tests] [--rounds 5]

- warm `make up` after `make down` (to the job submitted, and to `make wait` done) vs the same job
  (same knobs) on local provisioned processes: tests/support.py's FlareSystem and two local MLflow servers
- each site's MLflow, idle after the job, vs a bare `mlflow server --workers 1` in the same image
- the tracking path: bench/bench_tracking.py --quick (log call, step overhead, delivery vs raw log_batch)
- --cold: `make up` from no project image and an empty build folder (base image, wheels, both images,
  start, submit) vs `make venv`'s pip install of the same pins into a fresh venv; then `docker system df`.
  It removes this project's images (fedtrack/*) first.
- --tests: `make test`'s wall time and its ten slowest tests

Its stack is its own compose project, kits and ports, removed afterwards; nothing else is touched.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

from bench.bench_sites import memory, mib
from fedtrack.names import SITE_URI_ENV
from fedtrack.pins import pin
from fedtrack.project import Project, port_var
from stack.local import ROOT, FlareSystem, MLflowServer, free_port, run_job

SITES = Project(os.path.join(ROOT, "provision", "project.yml")).sites
MLFLOW_IMAGE = "fedtrack/mlflow:" + pin("mlflow")


def timed(cmd: list, marks: dict = None, env: dict = None, cwd: str = ROOT) -> tuple:
    """Run cmd; (seconds, output, {mark: seconds when a line first matched its pattern})."""
    t0 = time.monotonic()
    seen, lines = {}, []
    proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    for line in proc.stdout:
        lines.append(line)
        for mark, pattern in (marks or {}).items():
            if mark not in seen and re.search(pattern, line):
                seen[mark] = time.monotonic() - t0
    took = time.monotonic() - t0
    if proc.wait():
        raise SystemExit(f"{' '.join(cmd)} failed:\n{''.join(lines[-40:])}")
    return took, "".join(lines), seen


class Stack:
    """This benchmark's own compose project in the checkout (like the Docker tests' stack)."""

    def __init__(self, root: str, rounds: int):
        self.name = f"fedtrack-bench-{os.getpid()}"
        self.vars = [f"COMPOSE_PROJECT_NAME={self.name}", f"JOB_NAME=bench-{os.getpid()}", f"ROUNDS={rounds}",
                     f"KITS_ROOT={root}/kits", f"CA_DIR={root}/ca", f"DATA_DIR={root}/data",
                     *(f"{port_var(site)}={free_port()}" for site in SITES)]

    def make(self, target: str, *extra, env: dict = None) -> tuple:
        return timed(["make", "--no-print-directory", target, *self.vars, *extra], {"submitted": r"^Submitted job "},
                     env=env)

    def clean(self):
        subprocess.run(["make", "--no-print-directory", "clean", *self.vars, "CONFIRM=yes", "DISCARD_UNDELIVERED=yes"],
                       cwd=ROOT, capture_output=True)


def cold(stack: Stack, work: str) -> dict:
    """make venv's pip install (the baseline), then `make up` from no project image and no build folder."""
    venv = os.path.join(work, "venv")
    env = dict(os.environ, PIP_NO_CACHE_DIR="1")
    pip = timed(["sh", "-c", f"python3 -m venv {venv} && {venv}/bin/pip install -q --upgrade pip && "
                             f"{venv}/bin/pip install -q -r requirements.txt"], env=env)[0]
    images = subprocess.run(["docker", "images", "-q", "--filter", "reference=fedtrack/*"], capture_output=True,
                            text=True).stdout.split()
    if images:
        subprocess.run(["docker", "rmi", "-f", *images], capture_output=True)
    took, out, marks = stack.make("up", env=dict(os.environ, BUILD_DIR=os.path.join(work, "build")))
    phases = dict(re.findall(r"\[build-images\] built (fedtrack/\w+):\S+ in (\d+) s", out))
    df = subprocess.run(["docker", "system", "df"], capture_output=True, text=True).stdout
    return {"pip": pip, "up": took, "submitted": marks.get("submitted", took), "phases": phases, "df": df}


def local_job(work: str, rounds: int) -> float:
    """The same job on local provisioned processes: seconds from submission to finished."""
    servers = {site: MLflowServer(site, os.path.join(work, f"local-mlflow-{site}")).start() for site in SITES}
    os.makedirs(os.path.join(work, "local-flare"))
    system = FlareSystem(os.path.join(work, "local-flare"),
                         {s: {SITE_URI_ENV: servers[s].uri} for s in SITES}).start()
    try:
        site_args = [a for site in SITES for a in ("--site", f"{site}={servers[site].uri}")]
        t0 = time.monotonic()
        r = run_job(*site_args, "--rounds", str(rounds), "--env", "prod", "--startup-kit", system.admin_kit,
                    "--name", f"local-{os.getpid()}", "--torch-threads", "1", "--timeout", "900")
        took = time.monotonic() - t0
        if r.returncode or "FINISHED:COMPLETED" not in r.stdout:
            raise SystemExit(f"the local job failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return took
    finally:
        system.stop()
        for s in servers.values():
            s.stop()


def bare_mlflow_mib() -> float:
    """Idle memory of `mlflow server --workers 1` (SQLite, no login) in the MLflow image."""
    cid = subprocess.run(["docker", "run", "-d", "--rm", "--network", "none", "--entrypoint", "mlflow", MLFLOW_IMAGE,
                          "server", "--workers", "1", "--backend-store-uri", "sqlite:////tmp/m.db"],
                         capture_output=True, text=True, check=True).stdout.strip()
    try:
        probe = 'import urllib.request as u; u.urlopen("http://127.0.0.1:5000/health", timeout=2)'
        deadline = time.monotonic() + 120
        while subprocess.run(["docker", "exec", cid, "python3", "-c", probe], capture_output=True).returncode:
            if time.monotonic() > deadline:
                raise SystemExit("the bare MLflow server did not answer in 120 s")
            time.sleep(0.5)
        time.sleep(10)  # idle, as the sites' are when measured
        out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.MemUsage}}", cid], capture_output=True,
                             text=True, check=True).stdout
        return mib(out.split("/")[0])
    finally:
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True)


def make_test() -> tuple:
    took, out, _ = timed(["make", "--no-print-directory", "test"])
    slowest = out.split("slowest 10 durations", 1)[-1].split("\n\n", 1)[0].strip().splitlines()[1:]
    return took, slowest


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cold", action="store_true", help="also build from no image (removes this project's images)")
    p.add_argument("--tests", action="store_true", help="also time `make test`")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as work:
        stack = Stack(work, args.rounds)
        try:
            if args.cold:
                c = cold(stack, work)
                rows.append(("cold `make up`, no image → job submitted", f"{c['submitted']:.0f} s", "`make venv` (pip, no cache)",
                             f"{c['pip']:.0f} s", f"{c['submitted'] / c['pip']:.2f}x (goal ≤ 2.5x, ≤ 330 s)"))
                rows.append(("  of which image builds", ", ".join(f"{k} {v} s" for k, v in c["phases"].items()), "", "", ""))
            else:
                stack.make("up")
            stack.make("wait")
            stack.make("down")
            up, _, marks = stack.make("up")
            wait = stack.make("wait")[0]
            time.sleep(10)
            idle = memory(stack.name)
        finally:
            stack.clean()
        local = local_job(work, args.rounds)
        bare = bare_mlflow_mib()
    submitted = marks.get("submitted", up)
    rows.append(("warm `make up` after `make down` → job submitted", f"{submitted:.1f} s", "the job on local processes",
                 f"{local:.1f} s", f"{submitted / local:.2f}x (goal ≤ 20 s)"))
    rows.append(("warm `make up` → `make wait` done", f"{up + wait:.1f} s (up returns at {up:.1f} s)",
                 "the job on local processes", f"{local:.1f} s", f"{(up + wait) / local:.2f}x (goal ≤ 1.3x)"))
    mlflow = max(v for k, v in idle.items() if k.startswith("mlflow-"))
    rows.append(("MLflow idle memory per site (login, artifacts)", f"{mlflow:.0f} MiB", "bare `mlflow server --workers 1`",
                 f"{bare:.0f} MiB", f"{mlflow / bare:.2f}x (goal ≤ 300 MiB)"))
    if args.tests:
        took, slowest = make_test()
        rows.append(("`make test`, warm engine", f"{took / 60:.1f} min", "", "", "goal ≤ 8 min"))
    print("| what | ours | baseline | baseline's figure | ratio |\n| --- | --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    if args.cold:
        print("\n`docker system df` after the cold build:\n" + c["df"])
    if args.tests:
        print("ten slowest tests:\n" + "\n".join(slowest))
    print("\ntracking (bench/bench_tracking.py --quick):", flush=True)
    subprocess.run([sys.executable, "-m", "bench.bench_tracking", "--quick"], cwd=ROOT)
    return 0


if __name__ == "__main__":
    sys.exit(main())
