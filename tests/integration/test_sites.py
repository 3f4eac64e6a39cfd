"""N sites from one list: three sites on one host, from a project.yml with three sites. A stack of
its own, since another project is another compose file and other kits: a copy of the checkout."""

import os
import re
from concurrent.futures import ThreadPoolExecutor

import pytest

from checks import PROBE, check_only_own_runs, check_site_run, site_run
from integration.deployment import SHORT_TIMERS, Deployment, run
from support import ROOT, copy_checkout, free_port, write_project

pytestmark = pytest.mark.docker

NEW_SITES = ("north", "south", "east")  # names no file of the checkout uses
ROUNDS = 1  # a round shows every claim here: each site's run complete, in its own MLflow only


@pytest.fixture(scope="module")  # (a shuffled tier that runs the two tests apart makes it twice)
def three_sites(tmp_path_factory):
    """A stack of its own: another project (three sites) is another compose file, other kits."""
    root = tmp_path_factory.mktemp("three-sites")
    checkout = str(root / "checkout")
    copy_checkout(checkout)
    ports = {s: free_port() for s in NEW_SITES}
    write_project(os.path.join(checkout, "provision", "project.yml"), ports)
    sites = Deployment(checkout, {"COMPOSE_PROJECT_NAME": f"fedtrack-sites-{os.getpid()}", "JOB_NAME": f"three-{os.getpid()}",
                                  "ROUNDS": ROUNDS, "KITS_ROOT": root / "kits", "CA_DIR": root / "ca", "DATA_DIR": root / "data",
                                  **SHORT_TIMERS},
                       ports=ports)
    try:
        sites.up_out = sites.make("up").stdout  # the kits for three sites, their services, a job
        yield sites
    finally:
        if os.environ.get("FEDTRACK_DUMP_LOGS"):
            print(sites.logs(tail=200)[-20000:])
        sites.clean()


def test_three_sites_on_one_host(three_sites):
    out = three_sites.up_out
    assert "docker-compose.yml: written again from provision/project.yml (sites: north south east)" in out, out
    job_id = re.search(r"job id:\s+(\S+)", out).group(1)
    for site, port in three_sites.ports.items():
        assert f"{site} MLflow:" in out and f"http://127.0.0.1:{port}" in out, out
    waited = three_sites.make("wait").stdout
    assert f"job {job_id} FINISHED:COMPLETED" in waited, waited

    for site in three_sites.ports:
        server = three_sites.mlflow(site)
        run_ = site_run(server, f"{three_sites.job_name}-{site}", site, job_id)
        check_site_run(server, run_, site, ROUNDS)
        check_only_own_runs(server, site, NEW_SITES)
        # Unreachable from the server and from the other two sites, on every network it is on.
        cid = three_sites.compose("ps", "-q", f"mlflow-{site}").stdout.strip()
        ips = run(["docker", "inspect", "-f", "{{range .NetworkSettings.Networks}}{{.IPAddress}} {{end}}", cid], ROOT).stdout.split()
        assert len(ips) == 2, ips
        outsiders = ["server", *[s for s in NEW_SITES if s != site]]
        with ThreadPoolExecutor(len(outsiders)) as pool:  # each waits out its unanswered lookup and dials
            probes = pool.map(lambda o: (o, three_sites.exec_python(o, PROBE, f"mlflow-{site}", *ips)), outsiders)
            for outsider, probe in probes:
                assert probe.stdout.split() == ["no-resolve", "unreachable", "unreachable"], \
                    f"{outsider} -> mlflow-{site}: {probe.stdout}{probe.stderr}"
        own = three_sites.exec_python(site, PROBE, f"mlflow-{site}")
        assert own.stdout.split() == ["resolved"], own.stdout
    # Every run delivered (FINISHED above): `make status` shows each site, nothing left in a spool.
    status = three_sites.make("status").stdout
    for site, port in three_sites.ports.items():
        assert f"{site} http://127.0.0.1:{port}: 1 run(s); latest (job {job_id}) FINISHED" in status, status
        assert re.search(rf"(?m)^{site} tracking spool: 0 record\(s\) spooled and undelivered", status), status


def test_removing_a_site_asks_for_new_kits(three_sites):
    project = os.path.join(three_sites.folder, "provision", "project.yml")
    with open(project) as f:
        kept = f.read()
    write_project(project, {s: p for s, p in three_sites.ports.items() if s != "east"})
    try:
        result = three_sites.make("up", check=False)
        assert result.returncode != 0
        assert "provision/project.yml changed since the kits were made; run `make clean-kits`, then `make up`" in result.stderr, result.stderr
    finally:
        with open(project, "w") as f:
            f.write(kept)
