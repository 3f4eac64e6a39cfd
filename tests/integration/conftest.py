"""The Docker tier: one stack per test session, under a unique compose project name, free host
ports and its own kits, brought up with `make up` and always removed with `make clean`."""

import os
import re
import shutil

import pytest

from checks import SITES
from fedtrack.project import port_var
from integration.deployment import Deployment
from support import ROOT, free_port


def pytest_collection_modifyitems(items):
    """Tests that break the shared stack on purpose (marker `faults`) run after the other Docker tests."""
    faults = [i for i in items if i.get_closest_marker("faults")]
    rest = [i for i in items if not i.get_closest_marker("faults")]
    last_docker = max((n for n, i in enumerate(rest) if i.get_closest_marker("docker")), default=len(rest) - 1)
    items[:] = rest[: last_docker + 1] + faults + rest[last_docker + 1:]


class SharedStack(Deployment):
    """The checkout as the session's stack: its own kits, CA and data under root, free UI ports
    (MLFLOW_PORT_<SITE> overrides project.yml's), and the ids of the jobs `make up` submitted."""

    make_timeout, compose_timeout = 3600, 300

    def __init__(self, root: str):
        self.rounds, self.job_ids = 3, []
        self.ca, self.data = os.path.join(root, "ca"), os.path.join(root, "data")
        ports = {site: free_port() for site in SITES}
        super().__init__(ROOT, {"COMPOSE_PROJECT_NAME": f"fedtrack-test-{os.getpid()}", "JOB_NAME": f"it-{os.getpid()}",
                                "ROUNDS": self.rounds, "KITS_ROOT": os.path.join(root, "kits"), "CA_DIR": self.ca,
                                "DATA_DIR": self.data, **{port_var(site): port for site, port in ports.items()}},
                         ports=ports)

    def up(self) -> str:
        out = self.make("up").stdout
        self.job_ids.append(re.search(r"job id:\s+(\S+)", out).group(1))
        return out


@pytest.fixture(scope="session")
def stack(tmp_path_factory):
    if shutil.which("docker") is None:
        pytest.fail("the Docker tier needs docker; install Docker Engine (see README)")
    s = SharedStack(str(tmp_path_factory.mktemp("stack")))
    failed = True
    try:
        s.up()
        failed = False
        yield s
    finally:
        if failed or os.environ.get("FEDTRACK_DUMP_LOGS"):
            print(s.logs(tail=300)[-20000:])
        s.clean()
        s.remove_containers()
