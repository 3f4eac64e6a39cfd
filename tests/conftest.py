"""Each test is marked by its tier's folder (tests/processes: `processes`, tests/integration: `docker`), so
`-m "not processes and not docker"` and `make test-unit` mean the same tests."""

import os

import pytest


def pytest_addoption(parser):
    # Here, not in tests/integration/conftest.py, so that any pytest command line takes it.
    parser.addoption("--shuffle", type=int, default=None, metavar="SEED",
                     help="run the Docker tier's tests in an order shuffled with SEED (they must not depend on order)")


TIERS = {"processes": pytest.mark.processes, "integration": pytest.mark.docker}


def pytest_collection_modifyitems(items):
    for item in items:
        tier = TIERS.get(os.path.basename(os.path.dirname(str(item.fspath))))
        if tier is not None:
            item.add_marker(tier)
