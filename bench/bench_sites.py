"""`make up` to the job finished, for N sites on this host, and what each site's pair of containers
(client and MLflow server) takes in memory: for each N, a copy of the checkout whose project lists N
sites, its own compose project, kits and free ports, removed afterwards (`make clean`).

    .venv/bin/python -m bench.bench_sites [--sites 2 3 4] [--rounds 5]

Needs the images (`make images`); nothing else of this host's stacks is touched.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile
import threading
import time

from stack.local import copy_checkout, free_port, write_project

UNITS = {"B": 1 / 2**20, "KiB": 1 / 1024, "MiB": 1, "GiB": 1024, "kB": 1 / 1024, "MB": 1, "GB": 1024}


def mib(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)\s*([A-Za-z]+)", text.strip()).groups()
    return float(value) * UNITS[unit]


def memory(project: str) -> dict:
    """{service: MiB} of the compose project's running containers."""
    out = subprocess.run(["docker", "stats", "--no-stream", "--format", "{{.Name}}\t{{.MemUsage}}"],
                         capture_output=True, text=True).stdout
    usage = {}
    for line in out.splitlines():
        name, mem = line.split("\t")
        if name.startswith(project + "-"):
            usage[name[len(project) + 1:].rsplit("-", 1)[0]] = mib(mem.split("/")[0])
    return usage


def measure(n: int, rounds: int, workdir: str) -> dict:
    checkout = os.path.join(workdir, f"sites-{n}")
    copy_checkout(checkout)
    sites = [f"s{i}" for i in range(1, n + 1)]
    write_project(os.path.join(checkout, "provision", "project.yml"), {s: free_port() for s in sites})
    project = f"fedtrack-bench-{n}-{os.getpid()}"
    make_vars = [f"COMPOSE_PROJECT_NAME={project}", f"JOB_NAME=bench-{n}", f"ROUNDS={rounds}",
                 f"KITS_ROOT={workdir}/kits-{n}", f"CA_DIR={workdir}/ca-{n}", f"DATA_DIR={workdir}/data"]

    def make(target, *extra):
        result = subprocess.run(["make", "--no-print-directory", target, *make_vars, *extra], cwd=checkout,
                                capture_output=True, text=True, timeout=3600)
        if result.returncode:
            raise SystemExit(f"make {target} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
        return result.stdout

    peak, stop = {}, threading.Event()

    def sample():
        while not stop.is_set():
            for service, value in memory(project).items():
                peak[service] = max(peak.get(service, 0), value)
            stop.wait(2)

    try:
        start = time.monotonic()
        make("up")
        submitted = time.monotonic()
        sampler = threading.Thread(target=sample)
        sampler.start()
        out = make("wait")
        finished = time.monotonic()
        stop.set()
        sampler.join()
        assert "FINISHED:COMPLETED" in out, out
        time.sleep(10)
        idle = memory(project)
        pair = lambda usage, s: usage.get(s, 0) + usage.get(f"mlflow-{s}", 0)  # noqa: E731
        return {"n": n, "up": submitted - start, "job": finished - submitted,
                "pair_peak": max(pair(peak, s) for s in sites), "pair_idle": sum(pair(idle, s) for s in sites) / n,
                "client_peak": max(peak.get(s, 0) for s in sites), "mlflow_idle": max(idle.get(f"mlflow-{s}", 0) for s in sites),
                "server_peak": peak.get("server", 0)}
    finally:
        stop.set()
        make("clean", "CONFIRM=yes", "DISCARD_UNDELIVERED=yes")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sites", type=int, nargs="+", default=[2, 3, 4])
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for n in args.sites:
            rows.append(measure(n, args.rounds, workdir))
            print(f"{n} sites measured", file=sys.stderr)
    base = rows[0]
    print(f"| sites | make up (kits made, services healthy, job submitted) | job ({args.rounds} rounds) | up to finished "
          f"| vs {base['n']} sites | per site pair: peak / idle | client peak | MLflow idle | server peak |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        total = r["up"] + r["job"]
        print(f"| {r['n']} | {r['up']:.0f} s | {r['job']:.0f} s | {total:.0f} s | {total / (base['up'] + base['job']):.2f}x "
              f"| {r['pair_peak']:.0f} / {r['pair_idle']:.0f} MiB | {r['client_peak']:.0f} MiB | {r['mlflow_idle']:.0f} MiB "
              f"| {r['server_peak']:.0f} MiB |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
