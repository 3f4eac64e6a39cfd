"""Each test is marked by its tier's folder (tests/processes: `processes`, tests/integration: `docker`), so
`-m "not processes and not docker"` and `make test-unit` mean the same tests."""

import os

import pytest

TIERS = {"processes": pytest.mark.processes, "integration": pytest.mark.docker}


def pytest_collection_modifyitems(items):
    for item in items:
        tier = TIERS.get(os.path.basename(os.path.dirname(str(item.fspath))))
        if tier is not None:
            item.add_marker(tier)
