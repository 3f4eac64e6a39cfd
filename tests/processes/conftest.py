"""Shared fixtures: real MLflow servers and a real provisioned FL system, as local processes."""

import pytest

from support import SITES, FlareSystem, MLflowServer


@pytest.fixture(scope="session")
def mlflow_servers(tmp_path_factory):
    """Two real MLflow tracking servers, one per site, on free loopback ports."""
    root = tmp_path_factory.mktemp("mlflow")
    servers = {}
    try:
        for site in SITES:
            servers[site] = MLflowServer(site, str(root / site)).start()
        yield servers
    finally:
        for server in servers.values():
            server.stop()


@pytest.fixture(scope="session")
def flare_system(tmp_path_factory):
    system = FlareSystem(str(tmp_path_factory.mktemp("flare")))
    try:
        yield system.start()
    finally:
        system.stop()
