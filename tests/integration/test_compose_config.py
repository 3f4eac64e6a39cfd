"""Compose itself reads the compose file the generator writes (`docker compose config`: the docker CLI
with Compose v2, which `make test` makes sure of; no engine, no stack)."""

import json
import subprocess

import pytest

from checks import devices, gpu
from fedtrack.project import Project
from stack.topology import compose_text
from support import PROJECT

pytestmark = pytest.mark.docker


def test_docker_compose_config_shows_the_gpu_reservations(tmp_path):
    """Compose itself reads the reservation on each client and on nothing else (`docker compose
    config`: the docker CLI with Compose v2, no engine)."""
    project = Project(PROJECT)
    for knob, count in (("all", "all"), ("2", 2)):
        path = tmp_path / f"gpus-{knob}.yml"
        path.write_text(compose_text(project, gpus=knob))
        result = subprocess.run(["docker", "compose", "-f", str(path), "--project-directory", str(tmp_path),
                                 "-p", "gpu-config", "--profile", "admin", "--profile", "tools", "config", "--format", "json"],
                                capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        services = json.loads(result.stdout)["services"]
        assert {"server", "admin", "provision", *project.sites, *(f"mlflow-{s}" for s in project.sites)} == set(services)
        for name, service in services.items():
            assert devices(service) == (gpu(count=count) if name in project.sites else []), (knob, name)
