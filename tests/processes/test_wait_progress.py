"""`make wait` on a terminal and on a pipe: the round count, as the FL server reports it, advances to
the total; a bar redrawn in place on a terminal, a line per round on a pipe; then each site's URL.

The recipe runs on this host against a provisioned system of local processes: `ADMIN=` runs
flare_admin.py here with the admin kit (KIT) instead of in the admin container, and COMPOSE is a
stub that answers the recipe's two questions (the services, a site's published port) as Docker
would. The Docker tier's `make wait` calls run the real ones, on a pipe."""

import os
import pty
import re
import stat
import subprocess
import threading
import time

import pytest

from fedtrack.admin import BAR_WIDTH
from fedtrack.server.progress import NO_FORMATTER
from support import BIN, ROOT, SITES, run_job, stop

pytestmark = pytest.mark.processes

ROUNDS = 3
PORTS = {site: 6001 + i for i, site in enumerate(SITES)}  # what the stub says compose published
STATUS = r"job (\S+) [A-Z_:]+"
ROUND = r"job (\S+) RUNNING round (\d+)/(\d+), (\d+:\d\d) elapsed"
URL = r"  (\S+) MLflow: +http://127\.0\.0\.1:(\d+)/#/experiments\?workflowType=machine_learning"  # the model-training view
HINT = r"  log in with an account from: make mlflow-user SITE=<site> USER=<you>"  # the next step, after the links


@pytest.fixture(scope="module")
def compose_stub(tmp_path_factory):
    """`docker compose` as the recipe asks it: the services, and where a site's MLflow is published."""
    path = tmp_path_factory.mktemp("compose") / "compose"
    services = " ".join(["server", *SITES, *(f"mlflow-{s}" for s in SITES)])
    ports = "".join(f'  "port mlflow-{s}") echo 127.0.0.1:{p};;\n' for s, p in PORTS.items())
    path.write_text(f'#!/bin/sh\ncase "$1 $2" in\n  "config --services") printf \'%s\\n\' {services};;\n{ports}  *) exit 1;;\nesac\n')
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def make_wait(kit: str, compose: str, **popen) -> subprocess.Popen:
    env = dict(os.environ, KIT=kit, PATH=f"{BIN}:{os.environ['PATH']}")  # python3: this venv's, with nvflare
    return subprocess.Popen(["make", "--no-print-directory", "-C", ROOT, "wait", "ADMIN=", f"COMPOSE={compose}"],
                            env=env, start_new_session=True, **popen)


def read_all(fd: int, into: list):
    while True:
        try:
            data = os.read(fd, 4096)
        except OSError:  # EIO: every process holding the terminal's other end has exited
            return
        if not data:
            return
        into.append(data)


def test_make_wait_shows_the_rounds_on_a_terminal_and_on_a_pipe(mlflow_servers, flare_system, compose_stub):
    """Both watchers follow the same job, started together: one job (about 45 s here) gives both
    modes, and each must see every round of it from its first poll to the job's end."""
    name = f"progress-{os.getpid()}"
    sites = [a for s in SITES for a in ("--site", f"{s}={mlflow_servers[s].uri}")]
    result = run_job(*sites, "--rounds", str(ROUNDS), "--env", "prod", "--startup-kit", flare_system.admin_kit,
                     "--name", name, "--no-wait")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    job_id = re.search(r"submitted job (\S+)", result.stdout).group(1)

    t0 = time.monotonic()
    master, slave = pty.openpty()
    chunks, procs = [], []
    try:
        procs.append(make_wait(flare_system.admin_kit, compose_stub, stdin=slave, stdout=slave, stderr=slave))
        os.close(slave)
        slave = None
        reader = threading.Thread(target=read_all, args=(master, chunks), daemon=True)
        reader.start()
        procs.append(make_wait(flare_system.admin_kit, compose_stub, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True))
        piped, piped_err = procs[1].communicate(timeout=600)
        procs[0].wait(timeout=60)
        reader.join(timeout=10)
    finally:
        for proc in procs:
            stop(proc)
        if slave is not None:
            os.close(slave)
        os.close(master)
    print(f"\n{ROUNDS} rounds watched in {time.monotonic() - t0:.1f} s")
    terminal = b"".join(chunks).decode(errors="replace")

    # A pipe: a line per round, in order, up to the total; only statuses, rounds and URLs.
    assert procs[1].returncode == 0, piped + piped_err
    assert "\r" not in piped and "[#" not in piped, piped
    lines = piped.splitlines()
    assert all(re.fullmatch(f"{ROUND}|{STATUS}|{URL}|{HINT}", line) for line in lines), piped
    rounds = [m.groups() for m in map(re.compile(ROUND).fullmatch, lines) if m]
    assert rounds, f"no round: the server's job stats (show_stats) reported none\n{piped}"
    assert {r[0] for r in rounds} == {job_id} and {r[2] for r in rounds} == {str(ROUNDS)}, piped
    seen = [int(r[1]) for r in rounds]
    assert seen == sorted(set(seen)) and seen[0] < seen[-1] == ROUNDS, piped  # increasing, one line each, to the total
    check_the_end(lines, job_id, piped)

    # A terminal: one line redrawn with \r, its round advancing to the total, the bar full at the end.
    assert procs[0].returncode == 0, terminal
    drawn = [(int(a), int(b)) for a, b in re.findall(r"\] round (\d+)/(\d+)", terminal)]
    assert drawn and drawn == sorted(drawn) and drawn[0][0] < drawn[-1][0] == ROUNDS and drawn[-1][1] == ROUNDS, terminal
    assert "\r[" in terminal and f"[{'#' * BAR_WIDTH}] round {ROUNDS}/{ROUNDS}" in terminal, terminal
    assert not re.search(ROUND, terminal), terminal  # no per-round lines: the bar says it
    check_the_end(terminal.replace("\r\n", "\n").split("\n"), job_id, terminal)

    # Asked each second, the server logs no warning per question (CrossSiteModelEval's: job/progress.py).
    with open(os.path.join(flare_system.root, "server.log"), errors="ignore") as f:
        log = f.read()
    assert job_id in log and NO_FORMATTER not in log, [l for l in log.splitlines() if NO_FORMATTER in l][:3]


def check_the_end(lines: list, job_id: str, out: str):
    """The job's final status, then each site's UI URL, as compose published it, then how to log in."""
    lines = [l.rsplit("\r", 1)[-1] for l in lines if l.strip()]
    assert lines[-2 - len(SITES)] == f"job {job_id} FINISHED:COMPLETED", out
    assert [re.fullmatch(URL, l).groups() for l in lines[-1 - len(SITES):-1]] == [(s, str(p)) for s, p in PORTS.items()], out
    assert re.fullmatch(HINT, lines[-1]), out
