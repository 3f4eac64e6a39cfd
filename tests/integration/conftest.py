"""The Docker tier: one stack per test session, under a unique compose project name, free host
ports and its own kits, brought up with `make up` and always removed with `make clean` when the tier
ends. Each test states what it needs of the stack (`first_job`, `idle`) and leaves it as it found it,
so the tier passes in any order: `--shuffle SEED` runs its tests in a seeded random order."""

import os
import random
import re
import shutil
import time

import pytest

from checks import SITES, check_site_run, metric_strings, site_run
from fedtrack.project import port_var
from integration.deployment import SHORT_TIMERS, Deployment
from support import ROOT, free_port


def pytest_collection_modifyitems(config, items):
    """Tests that break the shared stack on purpose (marker `faults`) run after the other Docker tests,
    unless --shuffle mixes them all."""
    here = os.path.dirname(__file__)
    docker = [i for i in items if os.path.dirname(str(i.fspath)) == here]
    if not docker:
        return
    first = items.index(docker[0])
    rest = [i for i in items if i not in docker]
    seed = config.getoption("--shuffle")
    if seed is None:
        ordered = [i for i in docker if not i.get_closest_marker("faults")] + [i for i in docker if i.get_closest_marker("faults")]
    else:
        ordered = docker[:]
        random.Random(seed).shuffle(ordered)
        print(f"\nthe Docker tier's {len(ordered)} tests in an order shuffled with seed {seed}")
    items[:] = rest[:first] + ordered + rest[first:]


class SharedStack(Deployment):
    """The checkout as the session's stack: its own kits, CA and data under root, free UI ports
    (MLFLOW_PORT_<SITE> overrides project.yml's), and the ids of the jobs `make up` submitted."""

    make_timeout, compose_timeout = 3600, 300

    def __init__(self, root: str):
        self.rounds, self.job_ids, self.first_done = 3, [], False
        self.ca, self.data = os.path.join(root, "ca"), os.path.join(root, "data")
        ports = {site: free_port() for site in SITES}
        super().__init__(ROOT, {"COMPOSE_PROJECT_NAME": f"fedtrack-test-{os.getpid()}", "JOB_NAME": f"it-{os.getpid()}",
                                "ROUNDS": self.rounds, "KITS_ROOT": os.path.join(root, "kits"), "CA_DIR": self.ca,
                                "DATA_DIR": self.data, **{port_var(site): port for site, port in ports.items()},
                                **SHORT_TIMERS},
                         ports=ports)

    def up(self, *extra: str) -> str:
        out = self.make("up", extra=extra).stdout
        self.job_ids.append(re.search(r"job id:\s+(\S+)", out).group(1))
        return out


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if shutil.which("docker") is None:
        pytest.fail("the Docker tier needs docker; install Docker Engine (see README)")
    s = SharedStack(str(tmp_path_factory.mktemp("stack")))
    failed = True
    try:
        started = time.monotonic()
        out = s.up()
        # A fresh `make up` (new kits, new volumes), its lines stamped with the seconds since it began.
        os.makedirs(os.path.join(ROOT, "build", "test-output"), exist_ok=True)
        with open(os.path.join(ROOT, "build", "test-output", "make-up.txt"), "w") as f:
            f.write(f"make up with new kits: {time.monotonic() - started:.1f} s\n{out}")
        failed = False
        yield s
    finally:
        if failed or os.environ.get("FEDTRACK_DUMP_LOGS"):
            print(s.logs(tail=300)[-20000:])
        s.clean()
        s.remove_containers()


@pytest.fixture(scope="session")
def first_job(stack) -> str:
    """The job `make up` submitted, ended: `make wait` follows it to FINISHED:COMPLETED. Every test
    that submits a job needs this first (through `idle`), so the first job is the newest one here."""
    result = stack.make("wait")
    assert f"job {stack.job_ids[0]} FINISHED:COMPLETED" in result.stdout, result.stdout
    stack.first_done = True
    return stack.job_ids[0]


@pytest.fixture
def idle(stack, first_job):
    """No job runs when the test starts (every test that submits one uses this, or waits for it itself),
    and none is left running when it ends."""
    yield
    stack.make("wait", check=False)


@pytest.fixture(scope="session")
def finished_job(stack, first_job):
    """The stack's first job, finished: each site's checked run's histories, the text forms of every metric
    value its sites logged, and their accuracy values."""
    histories = {}
    for site in SITES:
        server = stack.mlflow(site)
        run = site_run(server, f"{stack.job_name}-{site}", site, first_job)
        histories[site] = check_site_run(server, run, site, stack.rounds)
    accuracies = sorted({float(p["value"]) for h in histories.values() for k in ("accuracy", "local_accuracy")
                         for p in h.get(k, [])})
    return {"job_id": first_job, "histories": histories, "needles": metric_strings(list(histories.values())),
            "accuracies": accuracies}
