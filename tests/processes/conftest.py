"""Shared fixtures: real MLflow servers and a real provisioned FL system, as local processes."""

import pytest

from fedtrack.names import SITE_URI_ENV
from fedtrack.site.settings import SYSTEM_METRICS_ENV

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
def flare_system(tmp_path_factory, mlflow_servers):
    """The provisioned system; each site's own settings as a deployed site has them: its MLflow, and
    system metrics every second (these short jobs would get few samples at the default 10 s)."""
    site_env = {s: {SITE_URI_ENV: mlflow_servers[s].uri, SYSTEM_METRICS_ENV: "1"} for s in SITES}
    system = FlareSystem(str(tmp_path_factory.mktemp("flare")), site_env)
    try:
        yield system.start()
    finally:
        system.stop()
